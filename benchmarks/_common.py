"""What the benchmarks share: the machine's description, and one side of a comparison run in its own process."""

from __future__ import annotations

import json
import os
import platform
import subprocess

RESULT = "RESULT "  # a side's stdout line that carries its figures


def machine(device: str = "cpu") -> str:
    if device == "cuda":
        import torch

        return f"{torch.cuda.get_device_name()}, {os.cpu_count()} CPUs"
    return f"{platform.machine()}, {os.cpu_count()} CPUs"


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
