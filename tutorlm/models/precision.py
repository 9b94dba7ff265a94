"""Which precision to compute in: bf16 where the hardware has a fast bf16 path, fp32 where it does not.

    from tutorlm.models.precision import resolve_precision
    resolve_precision("auto", device)   # Choice(precision="bf16", reason="cpu: bf16 matmul 4.3x fp32 (measured)")

On CUDA the answer is `torch.cuda.is_bf16_supported()`. On a CPU it is measured, because CPUs of one
machine kind differ: an AMD EPYC with AVX512-BF16 ran bf16 matmuls 4.4x faster than fp32, while one
with AVX2 only ran them ~360x slower (torch falls back to a scalar path). A short matmul in each
precision (about a second in all) decides, and the result is cached per CPU model, thread count and
torch version (and the CPU's flags) in $TUTORLM_CACHE_DIR/precision.json, so only the first run on a machine pays for it.
The CPU's bf16 flags (avx512_bf16, amx_bf16) are read too and reported, but the measurement decides.

Training in bf16 means autocast with fp32 master weights and optimizer state, as on GPUs; inference
in bf16 means bf16 weights. Forcing bf16 where it is slow is allowed but warned about, with the
measured slowdown.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from tutorlm.config import default_cache_path
from tutorlm.run import atomic_write_text

# bf16 must beat fp32 by this factor to be chosen: autocast adds casts, and a tie is not worth the rounding.
FAST_ENOUGH = 1.2
_MATMUL_SIZE = 512


@dataclass(frozen=True)
class CpuBf16:
    """What was measured on this CPU."""

    fast: bool
    fp32_gflops: float
    bf16_gflops: float
    flags: tuple[str, ...]  # bf16-related CPU flags found (empty where /proc/cpuinfo is absent or has none)
    cpu: str

    @property
    def speedup(self) -> float:
        return self.bf16_gflops / self.fp32_gflops if self.fp32_gflops else 0.0

    def describe(self) -> str:
        flags = ", ".join(self.flags) or "no bf16 CPU flags"
        return (f"bf16 matmul {self.bf16_gflops:.0f} vs fp32 {self.fp32_gflops:.0f} GFLOP/s "
                f"({self.speedup:.2g}x; {flags})")


@dataclass(frozen=True)
class Choice:
    precision: str  # "bf16" or "fp32"
    reason: str


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> tuple[str, ...]:
    """Every flag /proc/cpuinfo lists for the first CPU (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    return tuple(sorted(set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))))


def cpu_bf16_flags() -> tuple[str, ...]:
    """The bf16-related flags among them (avx512_bf16, amx_bf16, ...)."""
    return tuple(flag for flag in cpu_flags() if "bf16" in flag)


def measure_matmul_gflops(dtype: Any, size: int = _MATMUL_SIZE, min_seconds: float = 0.25,
                          shape: tuple[int, int, int] | None = None, min_calls: int = 3) -> float:
    """GFLOP/s of a (rows x inner) @ (inner x cols) matmul in `dtype` on the CPU (square `size` unless `shape` is
    given), at torch's current thread count: the fastest of the timed calls (at least `min_calls`, for at least
    `min_seconds` in all), so a call that another process preempted does not decide the rate."""
    import torch

    rows, inner, cols = shape or (size, size, size)
    a = torch.randn(rows, inner).to(dtype)
    b = torch.randn(inner, cols).to(dtype)
    a @ b  # warm-up: the first call picks kernels
    fastest, calls, started = float("inf"), 0, time.perf_counter()
    while True:
        before = time.perf_counter()
        a @ b
        now = time.perf_counter()
        fastest, calls = min(fastest, now - before), calls + 1
        # a slow path (scalar bf16) takes up to a second per 512^3 call: a few seconds bound the whole measurement
        if (calls >= min_calls and now - started >= min_seconds) or now - started >= 5.0:
            return 2 * rows * inner * cols / max(fastest, 1e-9) / 1e9


def verdict_key() -> str:
    """The key of this CPU's verdict in precision.json. Machines of one kind report the same model name ("AMD EPYC")
    with and without AVX512-BF16: the flags go into the key, so a verdict measured on one never answers for the other."""
    import torch

    flags_digest = hashlib.sha256(" ".join(cpu_flags()).encode()).hexdigest()[:12]
    return f"{cpu_name()} | flags {flags_digest} | {torch.get_num_threads()} threads | torch {torch.__version__}"


def verdict_path() -> Path:
    """precision.json, next to the teacher cache."""
    return default_cache_path().parent / "precision.json"


def cpu_bf16(*, refresh: bool = False) -> CpuBf16:
    """This CPU's bf16 and fp32 matmul rates and the verdict, measured once per CPU and cached."""
    import torch

    key = verdict_key()
    path = verdict_path()
    try:
        cached = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, json.JSONDecodeError):
        cached = {}
    if not refresh and key in cached:
        entry = cached[key]
        return CpuBf16(entry["fast"], entry["fp32_gflops"], entry["bf16_gflops"], tuple(entry["flags"]), entry["cpu"])
    # Where bf16 is emulated a 512^3 matmul takes about a second; a smaller one is enough to tell.
    fp32 = measure_matmul_gflops(torch.float32)
    probe = measure_matmul_gflops(torch.bfloat16, size=128, min_seconds=0.0, min_calls=5)
    bf16 = measure_matmul_gflops(torch.bfloat16) if probe > fp32 / 20 else probe
    result = CpuBf16(bf16 >= FAST_ENOUGH * fp32, round(fp32, 1), round(bf16, 2), cpu_bf16_flags(), cpu_name())
    cached[key] = {"fast": result.fast, "fp32_gflops": result.fp32_gflops, "bf16_gflops": result.bf16_gflops,
                   "flags": list(result.flags), "cpu": result.cpu}
    try:
        atomic_write_text(path, json.dumps(cached, indent=2) + "\n")
    except OSError:
        pass  # a read-only home only costs the measurement next time
    return result


def resolve_precision(requested: str, device: Any, *, warn: Any = None) -> Choice:
    """The precision to compute in on `device` ("cpu", "cuda", a torch.device) for a setting of auto/fp32/bf16.

    `warn(message)` is called when bf16 is forced where it is slow (default: print to stderr).
    """
    import torch

    device_type = torch.device(device).type
    requested = {"float32": "fp32", "bfloat16": "bf16"}.get(requested, requested)
    if device_type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        if requested == "auto":
            return Choice("bf16" if supported else "fp32", f"cuda: bf16 {'supported' if supported else 'not supported'}")
        return Choice(requested, f"{requested} requested")
    if device_type != "cpu":
        return Choice("fp32" if requested == "auto" else requested, f"{device_type}: fp32 unless asked")
    if requested == "fp32":
        return Choice("fp32", "fp32 requested")
    measured = cpu_bf16()
    if requested == "auto":
        return Choice("bf16" if measured.fast else "fp32", f"cpu: {measured.describe()}")
    if not measured.fast:
        message = (f"bf16 was requested, but this CPU has no fast bf16 path: {measured.describe()}, so bf16 runs "
                   f"{1 / max(measured.speedup, 1e-9):.0f}x slower than fp32 here. Use precision auto or fp32.")
        if warn is None:
            import sys

            print(f"warning: {message}", file=sys.stderr)
        else:
            warn(message)
    return Choice("bf16", "bf16 requested")
