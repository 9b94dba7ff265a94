"""Wall time of `tutorlm run` (the default recipe) by stage, and the before/after accuracy.

    python benchmarks/default_recipe.py [--recipe default] [--base-max-tokens 512]
    python benchmarks/default_recipe.py --recipe real-teacher --base-max-tokens 0 --out benchmarks/results/real_teacher.json
    python benchmarks/default_recipe.py --from-run runs/real-teacher --wall-s 1756 --out ...   # a run made as a user would
    python benchmarks/default_recipe.py --recipe mentor-fast --base-max-tokens 0 --out benchmarks/results/mentor_fast.json

Runs the command exactly as a user would, in a fresh temporary directory with an empty teacher
cache, and reads the stage timings and results from the run's manifest and eval/summary.json.
Then it evaluates the base student again with a generous token budget (`--base-max-tokens`, 0 to
skip), so the before/after comparison can be read against a base that was not cut off early.
`--from-run` reads a run that was already made that way (`TUTORLM_CACHE_DIR` empty, `time tutorlm run
NAME`), with the wall time it took, instead of running the recipe again. The results include accuracy
recovered with its paired-bootstrap interval when the teacher was evaluated. A chained recipe's stage
times include those of the runs it made first (`run.requires`).
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

from _common import machine, versions

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "default_recipe.json"))
    parser.add_argument("--base-max-tokens", type=int, default=512, help="budget of the base's second evaluation (0: skip)")
    parser.add_argument("--from-run", help="a finished run made from an empty cache, read instead of running the recipe")
    parser.add_argument("--wall-s", type=float, help="with --from-run: the wall time `tutorlm run` took")
    args = parser.parse_args()
    if args.from_run:
        if args.wall_s is None:
            raise SystemExit("--from-run needs --wall-s (the time the run took)")
        run = Path(args.from_run)
        manifest = json.loads((run / "manifest.json").read_text())
        summary = json.loads((run / "eval" / "summary.json").read_text())
        write(args, manifest, summary, args.wall_s, None, run)
        return
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TUTORLM_CACHE_DIR": f"{tmp}/cache", "COLUMNS": "120"}
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "tutorlm", "run", args.recipe], cwd=tmp, env=env,
                                capture_output=True, text=True)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"tutorlm run failed:\n{result.stderr[-3000:]}")
        # a chained recipe leaves the runs it required beside its own, which is named after the recipe
        runs = Path(tmp, "runs")
        run = runs / Path(args.recipe).stem if (runs / Path(args.recipe).stem).is_dir() else next(runs.iterdir())
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
        write(args, manifest, summary, wall, generous, run)


def write(args: argparse.Namespace, manifest: dict, summary: dict, wall: float, generous: dict | None, run: Path) -> None:
    from tutorlm.report import paired_intervals

    stages = {}
    # a chained recipe (run.requires): the runs it made first are part of its time
    resolved = next(iter(manifest["stages"].values()), {}).get("config", {})
    for name in resolved.get("run", {}).get("requires", []):
        required = run.parent / name / "manifest.json"
        if required.exists():
            stages.update({f"{name} {stage}": record["seconds"]
                           for stage, record in json.loads(required.read_text())["stages"].items()})
    stages.update({name: record["seconds"] for name, record in manifest["stages"].items()})
    paired = paired_intervals(run / "eval")
    output = {
        "benchmark": "default_recipe", "date": time.strftime("%Y-%m-%d"), "machine": machine(), "versions": versions(),
        "recipe": Path(args.from_run).name if args.from_run else args.recipe, "wall_s": round(wall, 1), "stage_seconds": stages,
        "accuracy": {label: round(s["accuracy"], 4) for label, s in summary.items()},
        "accuracy_ci95": {label: [round(v, 4) for v in s["accuracy_ci95"]] for label, s in summary.items()},
        "questions": summary["student"]["examples"],
        "truncation_rate": {label: s["truncation_rate"] for label, s in summary.items()},
        "max_tokens": summary["student"].get("max_tokens"),
        "base_generous_budget": generous,
        "mean_completion_tokens": {label: round(s["mean_completion_tokens"], 1) for label, s in summary.items()},
        "paired": paired,
    }
    print(json.dumps(output, indent=2))
    Path(args.out).write_text(json.dumps(output, indent=2) + "\n")


if __name__ == "__main__":
    main()
