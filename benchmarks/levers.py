"""Which training lever moves the student: variants of one recipe, each against the recipe's own settings.

    python benchmarks/levers.py --recipe real-teacher --baseline-run runs/real-teacher \\
        --variant "lr 3e-4=--train.lr 3e-4" --variant "4 epochs=--train.epochs 4"

Each variant is the recipe run again with its settings (in runs/lever-<recipe>-<slug>) and the student
evaluated on the recipe's held-out questions; the baseline is the recipe as written (`--baseline-run` reads a
finished run of it instead of training it again). Every variant is compared with the baseline on the same
questions: the paired difference in accuracy with a 95% bootstrap interval, and the share of resamples in
which the variant is not better. Teacher answers come from the cache (a variant that asks for new ones,
e.g. more samples per question, pays for those and says how many calls it made). Results:
benchmarks/results/levers_<recipe>.json (levers_<recipe>-<tag>.json with `--tag`); variants measured earlier with the same settings on the same machine
against the same baseline run (its directory and when its student was evaluated) are kept, so variants can be
run one at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

from _common import machine, tutorlm_run, versions

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tutorlm.metrics import paired_scores  # noqa: E402
from tutorlm.report import question_scores  # noqa: E402


def run_variant(recipe: str, name: str, settings: list[str]) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    run_name = f"lever-{Path(recipe).stem}-{slug}"
    tutorlm_run(recipe, "--run.name", run_name, "--eval.models", "[student]", *settings)
    return ROOT / "runs" / run_name


def scores(run: Path) -> dict[str, float]:
    """Per held-out question: the share of the student's samples that were correct."""
    return question_scores(run / "eval" / "student.jsonl")


def describe(run: Path, name: str, settings: list[str], wall_s: float | None) -> dict:
    manifest = json.loads((run / "manifest.json").read_text())
    stages = manifest["stages"]
    summary = json.loads((run / "eval" / "summary.json").read_text())["student"]
    return {
        "name": name, "settings": settings, "run": os.path.relpath(run, ROOT),
        "curated": stages["curate"]["stats"]["funnel"]["kept"],
        "train_steps": stages["train"]["stats"].get("steps"), "train_s": stages["train"]["stats"].get("wall_s"),
        "teacher_calls": stages["generate"]["stats"]["calls_made"],
        "accuracy": summary["accuracy"], "accuracy_ci95": summary["accuracy_ci95"],
        "truncation_rate": summary["truncation_rate"], "wall_s": wall_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="real-teacher", help="a recipe name or YAML file")
    parser.add_argument("--baseline-run", help="a finished run of the recipe as written (else it is run)")
    parser.add_argument("--baseline-label", default="the recipe",
                        help="what the baseline is, for the README's table (e.g. '1 of 4 samples per question')")
    parser.add_argument("--tag", help="results go to levers_<recipe>-<tag>.json: comparisons against another "
                                      "baseline (e.g. a run with other settings) keep their own file")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=SETTINGS",
                        help='a name and the settings that make it, e.g. "lr 3e-4=--train.lr 3e-4" (repeatable)')
    args = parser.parse_args()
    variants = []
    for text in args.variant:
        # the settings start with "--", so a name may hold "=" ("T=0.7=--generate.temperature 0.7")
        name, sep, settings = text.partition("=--") if "=--" in text else text.partition("=")
        settings = f"--{settings}" if sep == "=--" else settings
        if not sep or not name.strip() or not settings.strip():
            raise SystemExit(f"--variant {text!r}: write NAME=SETTINGS, e.g. \"lr 3e-4=--train.lr 3e-4\"")
        variants.append((name.strip(), shlex.split(settings)))

    if args.baseline_run:
        baseline_run, baseline_wall = Path(args.baseline_run).resolve(), None
        if not (baseline_run / "eval" / "student.jsonl").exists():
            raise SystemExit(f"{args.baseline_run}: no eval/student.jsonl (not a finished run of {args.recipe})")
    else:
        started = time.perf_counter()
        baseline_run = run_variant(args.recipe, "baseline", [])
        baseline_wall = round(time.perf_counter() - started, 1)
    baseline = describe(baseline_run, "baseline", [], baseline_wall)
    # which run of the baseline: a directory rerun since (another recipe version) is another baseline
    baseline["evaluated"] = json.loads((baseline_run / "manifest.json").read_text())["stages"]["eval:student"]["started"]
    baseline_scores = scores(baseline_run)
    print(f"baseline: {baseline['accuracy']:.0%} ({baseline['run']})", flush=True)

    tag = f"-{args.tag}" if args.tag else ""
    out = ROOT / "benchmarks" / "results" / f"levers_{Path(args.recipe).stem}{tag}.json"
    earlier = json.loads(out.read_text()) if out.exists() else {}
    kept = earlier.get("variants", []) if earlier.get("machine") == machine() else []
    measured = []
    for name, settings in variants:
        started = time.perf_counter()
        run = run_variant(args.recipe, name, settings)
        point = describe(run, name, settings, round(time.perf_counter() - started, 1))
        variant_scores = scores(run)
        if set(variant_scores) != set(baseline_scores):
            raise SystemExit(f"{point['run']} was evaluated on other questions than {baseline['run']}")
        point["vs_baseline"] = paired_scores(baseline_scores, variant_scores)
        measured.append(point)
        low, high = point["vs_baseline"]["difference_ci95"]
        print(f"{name}: {point['accuracy']:.0%}, {point['vs_baseline']['difference']:+.0%} vs baseline "
              f"({low:+.0%} to {high:+.0%}), {point['curated']} rationales, train {point['train_s']} s, "
              f"teacher calls {point['teacher_calls']}", flush=True)
    names = {point["name"] for point in measured}
    result = {"benchmark": "levers", "recipe": args.recipe, "machine": machine(), "versions": versions(), "date": time.strftime("%Y-%m-%d"),
              "baseline": baseline, "baseline_label": args.baseline_label,
              "variants": [p for p in kept if p["name"] not in names and p.get("baseline_run") == baseline["run"]
                           and p.get("baseline_evaluated") == baseline["evaluated"]]
              + [{**p, "baseline_run": baseline["run"], "baseline_evaluated": baseline["evaluated"]} for p in measured]}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
