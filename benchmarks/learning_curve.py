"""Student accuracy against the number of training questions: "cannot learn this" vs "needs more data".

    python benchmarks/learning_curve.py --recipe arith-sft --sizes 100,300,1000            # reference solver
    python benchmarks/learning_curve.py --recipe real-teacher --sizes 50,100,200 --into runs/real-teacher

Each point is the recipe run again with `generate.limit N` (the first N training questions, with the
recipe's samples per question, curation and training settings) in runs/curve-<recipe>-<N>, evaluated on
the recipe's held-out questions (student only; the base student and the teacher are the same at every
point). With `--into RUN`, the point whose N is RUN's own generate.limit is RUN itself, not retrained. Teacher calls go through the cache: the questions of a smaller point are the first ones of a larger
one, so a curve over a model teacher pays for its rationales once (and nothing at all after the recipe's
own run), and a teacher whose answers are all cached is never loaded. Reported per point: curated
rationales, held-out accuracy with a 95% Wilson interval, train time. `--into RUN` also writes the curve
to RUN/learning_curve.json, which the run's report plots. Results: benchmarks/results/learning_curve_<recipe>.json
(points of other sizes already there, measured with the same settings on the same machine, are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import machine, versions

ROOT = Path(__file__).resolve().parent.parent


def run_point(recipe: str, size: int, extra: list[str], into: Path | None) -> dict:
    started = time.perf_counter()
    run = into.resolve() if into is not None else None
    if run is None or _limit(run) != size or extra:
        name = f"curve-{Path(recipe).stem}-{size}"
        command = [sys.executable, "-m", "tutorlm", "run", recipe, "--run.name", name, "--generate.limit", str(size),
                   "--eval.models", "[student]", *extra]
        result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
        run = ROOT / "runs" / name
    # else: the recipe's own run is this point (same recipe, same number of questions): read, not redone
    manifest = json.loads((run / "manifest.json").read_text())
    summary = json.loads((run / "eval" / "summary.json").read_text())["student"]
    stages = manifest["stages"]
    return {
        "questions": size, "run": os.path.relpath(run, ROOT),
        "curated": stages["curate"]["stats"]["funnel"]["kept"],
        "accuracy": summary["accuracy"], "accuracy_ci95": summary["accuracy_ci95"],
        "no_answer_rate": summary["no_answer_rate"], "truncation_rate": summary["truncation_rate"],
        "train_s": stages["train"]["stats"].get("wall_s"), "wall_s": round(time.perf_counter() - started, 1),
        "teacher_calls": stages["generate"]["stats"]["calls_made"],
    }


def _limit(run: Path) -> int | None:
    manifest = run / "manifest.json"
    if not manifest.exists():
        return None
    return json.loads(manifest.read_text())["stages"]["generate"]["config"]["generate"]["limit"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="arith-sft", help="a recipe name or YAML file")
    parser.add_argument("--sizes", default="100,300,1000", help="numbers of training questions, comma-separated")
    parser.add_argument("--into", help="a run of the same recipe: write RUN/learning_curve.json for its report")
    parser.add_argument("settings", nargs="*", help="more --SECTION.FIELD VALUE settings for every point")
    args, extra = parser.parse_known_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    points = []
    for size in sizes:
        point = run_point(args.recipe, size, [*args.settings, *extra], Path(args.into) if args.into else None)
        points.append(point)
        low, high = point["accuracy_ci95"]
        print(f"{size:>6} questions, {point['curated']:>5} rationales: {point['accuracy']:.0%} ({low:.0%}-{high:.0%}), "
              f"train {point['train_s']} s, teacher calls {point['teacher_calls']}", flush=True)
    out = ROOT / "benchmarks" / "results" / f"learning_curve_{Path(args.recipe).stem}.json"
    settings = [*args.settings, *extra]
    if out.exists():  # points of other sizes measured earlier with the same settings stay in the curve
        earlier = json.loads(out.read_text())
        if earlier.get("settings") == settings and earlier.get("machine") == machine():
            measured = {point["questions"] for point in points}
            points = sorted([p for p in earlier["points"] if p["questions"] not in measured] + points,
                            key=lambda point: point["questions"])
    result = {"benchmark": "learning_curve", "recipe": args.recipe, "machine": machine(), "versions": versions(), "date": time.strftime("%Y-%m-%d"),
              "settings": settings, "points": points}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    if args.into:
        target = Path(args.into) / "learning_curve.json"
        target.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
