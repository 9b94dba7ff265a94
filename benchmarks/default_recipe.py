"""Wall time of `tutorlm run` (the default recipe) by stage, and the before/after accuracy.

    python benchmarks/default_recipe.py [--recipe default] [--base-max-tokens 512]

Runs the command exactly as a user would, in a fresh temporary directory with an empty teacher
cache, and reads the stage timings and results from the run's manifest and eval/summary.json.
Then it evaluates the base student again with a generous token budget (`--base-max-tokens`, 0 to
skip), so the before/after comparison can be read against a base that was not cut off early.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "default_recipe.json"))
    parser.add_argument("--base-max-tokens", type=int, default=512, help="budget of the base's second evaluation (0: skip)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TUTORLM_CACHE_DIR": f"{tmp}/cache", "COLUMNS": "120"}
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "tutorlm", "run", args.recipe], cwd=tmp, env=env,
                                capture_output=True, text=True)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"tutorlm run failed:\n{result.stderr[-3000:]}")
        run = next(Path(tmp, "runs").iterdir())
        manifest = json.loads((run / "manifest.json").read_text())
        summary = json.loads((run / "eval" / "summary.json").read_text())
        generous = None
        if args.base_max_tokens:
            label = f"base-{args.base_max_tokens}"  # labels keep letters, digits, dot, dash and underscore
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "tutorlm", "eval", "--out", str(run), "--model", f"{label}=base",
                            "--eval.max_tokens", str(args.base_max_tokens)], cwd=tmp, env=env, check=True,
                           capture_output=True, text=True)
            seconds = time.perf_counter() - started
            again = json.loads((run / "eval" / "summary.json").read_text())[label]
            generous = {"max_tokens": args.base_max_tokens, "accuracy": round(again["accuracy"], 4),
                        "accuracy_ci95": [round(v, 4) for v in again["accuracy_ci95"]],
                        "truncation_rate": again["truncation_rate"], "seconds": round(seconds, 1)}
    stages = {name: record["seconds"] for name, record in manifest["stages"].items()}
    output = {
        "benchmark": "default_recipe", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
        "recipe": args.recipe, "wall_s": round(wall, 1), "stage_seconds": stages,
        "accuracy": {label: round(s["accuracy"], 4) for label, s in summary.items()},
        "accuracy_ci95": {label: [round(v, 4) for v in s["accuracy_ci95"]] for label, s in summary.items()},
        "questions": summary["student"]["examples"],
        "truncation_rate": {label: s["truncation_rate"] for label, s in summary.items()},
        "max_tokens": summary["student"].get("max_tokens"),
        "base_generous_budget": generous,
    }
    print(json.dumps(output, indent=2))
    Path(args.out).write_text(json.dumps(output, indent=2) + "\n")


if __name__ == "__main__":
    main()
