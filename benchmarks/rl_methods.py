"""Learning from the verifier after distillation: GRPO, KDRL and DPO from the same student, side by side.

    tutorlm run real-teacher                            # once: the distilled student every method starts from
    python benchmarks/rl_methods.py                     # runs the grpo, kdrl and dpo recipes (current runs: nothing)
    python benchmarks/rl_methods.py --run grpo=runs/grpo-t03 --method grpo --method dpo

Each method is its packaged recipe, run with `tutorlm run METHOD` (a run whose stages are current does
nothing again; `--run METHOD=DIR` reads a finished run instead, and its settings are recorded as they
were). Every recipe starts from `runs/real-teacher/student` and evaluates it (`base`) and the trained
student on the same 100 held-out questions (greedy, 320 tokens), so each method gets the paired difference
to its own start: the mean difference, a 95% bootstrap interval and the share of resamples in which the
method is not better.

Equal wall time: the recipes are set for about the same cost on a 2-core CPU, and the cost is measured,
not assumed: `method_s` is the training stage (sampling, grading and updating for GRPO and KDRL) plus, for
DPO, the generate stage that samples the student's own answers for its pairs. The spread of `method_s`
is printed; a method that got much more time than another is flagged. Results:
benchmarks/results/rl_methods.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from _common import machine, tutorlm_run, versions

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tutorlm.metrics import paired_scores  # noqa: E402
from tutorlm.report import question_scores  # noqa: E402

METHODS = ("grpo", "kdrl", "dpo")


def run_recipe(method: str) -> tuple[Path, float]:
    started = time.perf_counter()
    tutorlm_run(method)
    return ROOT / "runs" / method, round(time.perf_counter() - started, 1)


def describe(method: str, run: Path) -> dict:
    manifest = json.loads((run / "manifest.json").read_text())
    stages = manifest["stages"]
    train = stages["train"]
    stats, config = train["stats"], train["config"]["train"]
    summary = json.loads((run / "eval" / "summary.json").read_text())
    method_s = stats["wall_s"] + (stages["generate"]["stats"]["wall_s"] if config["objective"] == "dpo" else 0.0)
    base, student = question_scores(run / "eval" / "base.jsonl"), question_scores(run / "eval" / "student.jsonl")
    if not base or set(base) != set(student):
        raise SystemExit(f"{run}: base and student were not evaluated on the same questions (eval.models [base, student])")
    settings = {key: value for key, value in config.items()
                if key in ("objective", "max_steps", "epochs", "batch_size", "lr", "kd_teacher", "kd_teacher_dtype")
                or key.startswith(config["objective"] + "_")}
    point = {
        "method": method, "run": os.path.relpath(run, ROOT), "start": stages["train"]["config"]["student"]["model"],
        "settings": settings, "steps": stats.get("steps"), "train_s": stats["wall_s"], "method_s": round(method_s, 1),
        "base_accuracy": summary["base"]["accuracy"], "base_accuracy_ci95": summary["base"]["accuracy_ci95"],
        "accuracy": summary["student"]["accuracy"], "accuracy_ci95": summary["student"]["accuracy_ci95"],
        "vs_start": paired_scores(base, student),
    }
    if "grpo_totals" in stats:
        totals = stats["grpo_totals"]
        point["rl"] = {key: totals[key] for key in ("samples", "sample_accuracy", "groups", "all_equal_groups", "sampling_s",
                                                    "scoring_s")}
    if "dpo" in stats:
        point["pairs"] = stats["dpo"]["pairs"]
    return point


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", action="append", choices=METHODS, help="repeatable; default: all three")
    parser.add_argument("--run", action="append", default=[], metavar="METHOD=DIR",
                        help="read a finished run of METHOD's recipe instead of running it")
    args = parser.parse_args()
    given = {}
    for text in args.run:
        method, sep, directory = text.partition("=")
        if not sep or method not in METHODS:
            raise SystemExit(f"--run {text!r}: write METHOD=DIR with METHOD one of {', '.join(METHODS)}")
        if not (Path(directory) / "eval" / "summary.json").exists():
            raise SystemExit(f"--run {text!r}: {directory} has no eval/summary.json (not a finished run)")
        given[method] = Path(directory).resolve()

    points = []
    for method in args.method or METHODS:
        run, wall = (given[method], None) if method in given else run_recipe(method)
        point = {**describe(method, run), "wall_s": wall}
        points.append(point)
        difference = point["vs_start"]
        low, high = difference["difference_ci95"]
        print(f"{method}: {point['base_accuracy']:.0%} -> {point['accuracy']:.0%} ({difference['difference']:+.0%}, "
              f"{low:+.0%} to {high:+.0%}; not better in {difference['p_not_better']:.0%} of resamples), "
              f"{point['method_s']:.0f} s of training{' and sampling' if method == 'dpo' else ''}", flush=True)
    times = [point["method_s"] for point in points]
    spread = max(times) / min(times) if times and min(times) > 0 else None
    if spread and spread > 1.5:
        print(f"note: the methods' times differ {spread:.1f}x: not an equal-time comparison", flush=True)
    out = ROOT / "benchmarks" / "results" / "rl_methods.json"
    result = {"benchmark": "rl_methods", "machine": machine(), "versions": versions(), "date": time.strftime("%Y-%m-%d"),
              "task": "multistep_arithmetic", "questions": points[0]["vs_start"]["questions"] if points else 0,
              "time_spread": round(spread, 2) if spread else None, "methods": points}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
