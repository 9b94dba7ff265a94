"""Which of a teacher's correct rationales to train on: correctness only, the shortest, or the student's best fit.

    pip install -e ".[teacher]"
    python benchmarks/student_fit.py [--recipe real-teacher] [--n 4] [--temperature 0.7] [--k 1]

The recipe's teacher (Qwen2.5-Coder-1.5B-Instruct for `real-teacher`) writes `--n` rationales per training
question at `--temperature` (once: the teacher cache serves every later run, so the selections below cost
no teacher call). From the same verified rationales, each selection keeps `--k` per question, so every
student trains on the same number of examples (up to the questions with fewer correct ones):
- correct: a seeded random choice among the correct ones (`--curate.max_per_question k`), the baseline;
- shortest: the k shortest (`--curate.shortest_k k`; DAP/LiteCoT, DRP);
- student fit: the k the starting student finds most likely (`--curate.select student_fit`; In Their Own Words).
Each is the recipe run again with those settings (runs/fit-<recipe>-<name>), its student evaluated on the
recipe's held-out questions, and compared with the baseline on the same questions: the paired difference
with a 95% bootstrap interval. Results: benchmarks/results/student_fit_<recipe>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import machine, versions
from levers import describe, run_variant, scores

ROOT = Path(__file__).resolve().parent.parent

from tutorlm.metrics import paired_scores  # noqa: E402  (levers put the repository on sys.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="real-teacher", help="a recipe name or YAML file")
    parser.add_argument("--n", type=int, default=4, help="teacher samples per training question")
    parser.add_argument("--temperature", type=float, default=0.7, help="the teacher's sampling temperature")
    parser.add_argument("--k", type=int, default=1, help="rationales kept per question by every selection")
    parser.add_argument("--selection", action="append", choices=("correct", "shortest", "student_fit"),
                        help="repeatable; default: all three (the first run pays for the teacher's samples)")
    args = parser.parse_args()
    if args.n < 2 or args.temperature <= 0 or args.k < 1 or args.k >= args.n:
        raise SystemExit("--n must be at least 2, --temperature positive and 1 <= --k < --n (else there is nothing to select)")
    sampling = ["--generate.n", str(args.n), "--generate.temperature", str(args.temperature)]
    selections = {
        "correct": ["--curate.max_per_question", str(args.k)],
        "shortest": ["--curate.shortest_k", str(args.k)],
        "student_fit": ["--curate.select", "student_fit", "--curate.select_k", str(args.k)],
    }
    out = ROOT / "benchmarks" / "results" / f"student_fit_{Path(args.recipe).stem}.json"
    earlier = json.loads(out.read_text()) if out.exists() else {}
    same = earlier.get("machine") == machine() and earlier.get("sampling") == sampling and earlier.get("k") == args.k
    points = {point["name"]: point for point in earlier.get("selections", [])} if same else {}
    per_question: dict[str, dict[str, float]] = {}
    for name in ["correct"] + [s for s in (args.selection or selections) if s != "correct"]:
        started = time.perf_counter()
        run = run_variant(args.recipe, f"fit {name} n{args.n} k{args.k}", sampling + selections[name])
        point = describe(run, name, sampling + selections[name], round(time.perf_counter() - started, 1))
        manifest = json.loads((run / "manifest.json").read_text())
        curate_stats = manifest["stages"]["curate"]["stats"]
        point["funnel"] = curate_stats["funnel"]
        point["generate_s"] = manifest["stages"]["generate"]["stats"]["wall_s"]
        if "student_fit" in curate_stats:
            point["student_fit"] = curate_stats["student_fit"]
        per_question[name] = scores(run)
        if name != "correct":
            if set(per_question[name]) != set(per_question["correct"]):
                raise SystemExit(f"{point['run']} was evaluated on other questions than the baseline")
            point["vs_correct"] = paired_scores(per_question["correct"], per_question[name])
        points[name] = point
        difference = point.get("vs_correct")
        versus = (f", {difference['difference']:+.0%} vs correct ({difference['difference_ci95'][0]:+.0%} to "
                  f"{difference['difference_ci95'][1]:+.0%})" if difference else "")
        print(f"{name}: {point['accuracy']:.0%} ({point['accuracy_ci95'][0]:.0%}-{point['accuracy_ci95'][1]:.0%}), "
              f"{point['curated']} rationales, train {point['train_s']:.0f} s, teacher calls {point['teacher_calls']}"
              f"{versus}", flush=True)
    result = {"benchmark": "student_fit", "recipe": args.recipe, "machine": machine(), "versions": versions(), "date": time.strftime("%Y-%m-%d"),
              "sampling": sampling, "n": args.n, "temperature": args.temperature, "k": args.k,
              "selections": list(points.values())}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
