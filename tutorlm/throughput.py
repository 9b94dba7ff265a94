"""Speeds measured on this machine, kept for `tutorlm run --dry-run`'s time estimates.

Every generate and eval stage that made model calls records the generated tokens per second and the mean
completion length of that model (by backend, model name and precision); every training run records its
tokens per second. They go to $TUTORLM_CACHE_DIR/throughput.json, keyed by the machine (CPU model and
threads, or the GPU's name), newest measurement first. An estimate is only ever a measured speed times an
amount of work, and says when there is no measurement to go on.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tutorlm.config import default_cache_path
from tutorlm.progress import format_duration


def _path() -> Path:
    return default_cache_path().parent / "throughput.json"


def machine_key(device: str = "cpu") -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}"
    from tutorlm.models.precision import cpu_name

    return f"{cpu_name()} | {torch.get_num_threads()} threads"


def _key(kind: str, model: str, precision: str | None, device: str) -> str:
    return f"{kind} | {model} | {(precision or '').split(' ')[0]} | {machine_key(device)}"


def record(kind: str, model: str, precision: str | None, *, tokens: int, seconds: float, items: int,
           device: str = "cpu") -> None:
    """Keep one measurement (tokens made or trained on in `seconds`, over `items` completions or examples)."""
    if tokens <= 0 or seconds <= 0 or items <= 0:
        return
    path = _path()
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, json.JSONDecodeError):
        data = {}
    data[_key(kind, model, precision, device)] = {
        "tokens_per_s": round(tokens / seconds, 2), "tokens_per_item": round(tokens / items, 1),
        "measured": time.strftime("%Y-%m-%d %H:%M"), "tokens": tokens, "seconds": round(seconds, 1),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(partial, path)


def lookup(kind: str, model: str, precision: str | None, device: str = "cpu") -> dict[str, Any] | None:
    path = _path()
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, json.JSONDecodeError):
        return None
    return data.get(_key(kind, model, precision, device))


def estimate(kind: str, model: str, precision: str | None, items: int, *, tokens_per_item: float | None = None,
             device: str = "cpu") -> str:
    """'~12 min (41 tokens/s measured here 2026-11-26)' or 'no measurement of MODEL on this machine yet'."""
    if items <= 0:
        return "nothing to do"
    measured = lookup(kind, model, precision, device)
    if measured is None:
        return f"time unknown: no {kind} measurement of {model} here yet"
    per_item = tokens_per_item or measured["tokens_per_item"]
    seconds = items * per_item / measured["tokens_per_s"]

    return f"~{format_duration(seconds)} ({measured['tokens_per_s']:.0f} tokens/s measured here {measured['measured'][:10]})"


def estimate_generate(backend: Any, calls: int) -> str:
    """How long `calls` generations by `backend` would take here, in words (a script's answers take seconds)."""
    if backend.kind == "reference":
        return "seconds (a script)"
    return estimate("generate", backend.model_name, backend.precision, calls)
