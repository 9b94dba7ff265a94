"""What the benchmarks share: the machine's description, and one side of a comparison run in its own process."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

RESULT = "RESULT "  # a side's stdout line that carries its figures


def machine(device: str = "cpu") -> str:
    if device == "cuda":
        import torch

        return f"{torch.cuda.get_device_name()}, {os.cpu_count()} CPUs"
    return f"{platform.machine()}, {os.cpu_count()} CPUs{_bf16_flags()}"


def commit() -> str:
    """The repository's commit (short), or "" outside a git checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=root)
    return result.stdout.strip()


def versions() -> dict[str, str]:
    """The code's commit and the installed versions of the packages a figure depends on (from their metadata, nothing
    imported): results from one machine kind on different days differ when these do."""
    from importlib import metadata

    found = {"commit": commit()}
    for name in ("torch", "transformers", "peft", "accelerate", "trl"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _bf16_flags() -> str:
    """The CPU's bf16 instructions, which decide what `precision: auto` picks and how fast training runs: figures
    from a CPU with them and one without are not comparable, so the machine's name says which it is."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        return ""
    found = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]
    return f", {'+'.join(found)}" if found else ""


def report_side(result: dict) -> None:
    """In a side's process: hand its figures to `run_side`."""
    print(RESULT + json.dumps(result), flush=True)


def run_side(side: str, command: list[str], env) -> tuple[dict, int]:
    """Run one side's command; (its reported figures, its peak RSS in KB). A failed side stops the benchmark."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    line = next((l for l in output.splitlines() if l.startswith(RESULT)), None)
    if status != 0 or line is None:
        raise SystemExit(f"{side} failed (status {status}):\n{output[-2000:]}")
    return json.loads(line[len(RESULT):]), usage.ru_maxrss


def time_steps(trainer) -> list[float]:
    """Train a transformers Trainer (TRL's among them); the seconds of each optimizer step it took."""
    from transformers import TrainerCallback

    marks: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            marks.append(time.perf_counter())

        def on_step_end(self, *_, **__):
            marks.append(time.perf_counter())

    trainer.add_callback(Timer())
    trainer.train()
    return [marks[i + 1] - marks[i] for i in range(0, len(marks) - 1, 2)]


def summarize_steps(result: dict, max_rss_kb: int, warmup: int) -> dict:
    """A side's step times (median after `warmup`), peak memory, and tutorlm's sampling and scoring shares."""
    import statistics

    measured = result["step_s"][warmup:]
    summary = {"step_s_median": round(statistics.median(measured), 3), "step_s": [round(s, 3) for s in result["step_s"]],
               "peak_rss_mb": round(max_rss_kb / 1024)}
    for key, share in (("sampling_s", "sampling_share"), ("scoring_s", "scoring_share")):
        if key in result:
            summary[share] = round(statistics.median(result[key][warmup:]) / summary["step_s_median"], 3)
    if "completion_tokens" in result:
        summary["completion_tokens_mean"] = round(statistics.mean(result["completion_tokens"]), 1)
    if "peak_gpu_mb" in result:
        summary["peak_gpu_mb"] = result["peak_gpu_mb"]
    return summary


def chosen_sides(parser, args, sides: tuple[str, ...]) -> list[str]:
    """Check a comparison's --device, --warmup and --steps, and return its --sides (an unknown one is a usage error)."""
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device")
    if not 0 <= args.warmup < args.steps:
        parser.error("--warmup must be at least 0 and less than --steps")
    chosen = args.sides.split(",")
    if unknown := set(chosen) - set(sides):
        parser.error(f"--sides: unknown {', '.join(sorted(unknown))}; choose from {', '.join(sides)}")
    return chosen


def tutorlm_run(*arguments: str) -> None:
    """`tutorlm run ARGUMENTS` from the repository root, as a user would; a failure stops the benchmark with its
    error output."""
    import sys
    from pathlib import Path

    command = [sys.executable, "-m", "tutorlm", "run", *arguments]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"},
                            cwd=Path(__file__).resolve().parent.parent)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
