"""The KD loss alone, plain (full logits) vs chunked: peak memory, time, equal values and gradients.

    python benchmarks/kd_loss.py                  # both teacher forms, Qwen2.5-0.5B's vocabulary and width, CPU
    python benchmarks/kd_loss.py --device cuda --tokens 5760

Runs `loss_memory.py --loss kd` (a teacher known by its full logits, as a local teacher with the
student's vocabulary gives them) and `--loss kd-topk` (a teacher known by a stored top-20), each plain
and chunked in their own subprocesses, and writes benchmarks/results/kd_loss.json with both. Extra
arguments go to loss_memory.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        print(__doc__)
        return
    results = {}
    for loss in ("kd", "kd-topk"):
        out = HERE / "results" / f".{loss}.json"
        subprocess.run([sys.executable, str(HERE / "loss_memory.py"), "--loss", loss, "--out", str(out), *sys.argv[1:]], check=True)
        results[loss] = json.loads(out.read_text())
        out.unlink()
    summary = {"benchmark": "kd_loss", "full_teacher": results["kd"], "topk_teacher": results["kd-topk"]}
    (HERE / "results" / "kd_loss.json").write_text(json.dumps(summary, indent=2) + "\n")
    for name, result in (("full teacher", results["kd"]), ("top-20 teacher", results["kd-topk"])):
        print(f"{name}: chunked/plain memory {result['ratio_memory']}x, time {result['ratio_time']}x, agree {result['loss_and_gradients_agree']}")


if __name__ == "__main__":
    main()
