"""Reverse speculative decoding against the teacher's own rationales, for a student of the teacher's family.

    pip install -e ".[teacher,teacher-small]"
    python benchmarks/rsd.py [--floor 0.01] [--limit 100] [--epochs 1]

RSD needs a student that shares the teacher's vocabulary, so the student here is Qwen2.5-Coder-0.5B-Instruct
(merged LoRA) and the teacher the real-teacher recipe's Qwen2.5-Coder-1.5B-Instruct (int8), on its task
(multistep arithmetic). Two runs of the real-teacher recipe with that student, greedy, one rationale per
question, the same questions:
- teacher: the teacher's own rationales (correct ones kept);
- rsd: the teacher writes, and every token the starting student gives less than `--floor` is redrawn from
  the teacher's distribution over the tokens the student accepts (`--generate.rsd_floor`).
Each student is evaluated on the recipe's held-out questions and compared on the same questions: the paired
difference with a 95% bootstrap interval. An int8 teacher's greedy texts depend on which rows share its batch,
so every redrawn token also changes the other rows' texts: `--second-draw CACHE` trains a third student on
another greedy draw of the teacher's own rationales (read from a teacher cache filled by another run over
more questions, e.g. benchmarks/cascade.py's runs/cascade-bench-strong-200/cache.sqlite), which measures
how far two draws of plain rationales differ. Also recorded: how many rationales verified, the share of tokens
redrawn, rationale length, the generate time, and the base student's accuracy (evaluated once).
Results: benchmarks/results/rsd.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import machine, tutorlm_run, versions
from levers import describe, run_variant, scores

ROOT = Path(__file__).resolve().parent.parent

from tutorlm.metrics import paired_scores  # noqa: E402  (levers put the repository on sys.path)

STUDENT = ["--student.model", "qwen2.5-coder-0.5b-instruct", "--train.method", "lora", "--train.merge", "true",
           "--train.lr", "2e-4"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--floor", type=float, default=0.01, help="RSD's probability floor under the student")
    parser.add_argument("--limit", type=int, default=100, help="training questions")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--second-draw", metavar="CACHE", help="a teacher cache holding another greedy draw")
    args = parser.parse_args()
    common = STUDENT + ["--generate.limit", str(args.limit), "--train.epochs", str(args.epochs)]
    points = {}
    per_question: dict[str, dict[str, float]] = {}
    sides = [("teacher", "teacher", []), ("rsd", "rsd", ["--generate.rsd_floor", str(args.floor)])]
    if args.second_draw:
        sides.append(("teacher, another draw", "teacher-b", ["--generate.cache_path", args.second_draw]))
    for name, slug, extra in sides:
        started = time.perf_counter()
        run = run_variant("real-teacher", f"rsd-bench {slug} {args.limit}q {args.epochs}ep", common + extra)
        point = describe(run, name, common + extra, round(time.perf_counter() - started, 1))
        manifest = json.loads((run / "manifest.json").read_text())
        generate = manifest["stages"]["generate"]["stats"]
        funnel = manifest["stages"]["curate"]["stats"]["funnel"]
        point.update(generate_s=generate["wall_s"], funnel=funnel, verified_share=round(funnel["kept"] / funnel["generated"], 4),
                     mean_rationale_tokens=round(generate["completion_tokens_total"] / max(generate["samples_written"], 1), 1),
                     redrawn_share=generate.get("redrawn_share"))
        per_question[name] = scores(run)
        if name != "teacher":
            point["vs_teacher"] = paired_scores(per_question["teacher"], per_question[name])
        points[name] = point
        print(f"{name}: {point['accuracy']:.0%} ({point['accuracy_ci95'][0]:.0%}-{point['accuracy_ci95'][1]:.0%}), "
              f"{point['curated']} of {funnel['generated']} rationales verified, redrawn {point['redrawn_share']}, "
              f"generate {point['generate_s']:.0f} s, train {point['train_s']:.0f} s", flush=True)
    if "teacher, another draw" in points:  # RSD against the other draw of plain rationales too
        points["rsd"]["vs_another_draw"] = paired_scores(per_question["teacher, another draw"], per_question["rsd"])
    base_run = ROOT / "runs" / "lever-real-teacher-rsd-bench-teacher-{}q-{}ep".format(args.limit, args.epochs)
    tutorlm_run("real-teacher", "--run.name", base_run.name, "--eval.models", "[base]", *common)  # stages are current
    base = json.loads((base_run / "eval" / "summary.json").read_text())["base"]
    result = {"benchmark": "rsd", "machine": machine(), "versions": versions(), "date": time.strftime("%Y-%m-%d"), "floor": args.floor,
              "limit": args.limit, "epochs": args.epochs, "base_accuracy": base["accuracy"],
              "base_accuracy_ci95": base["accuracy_ci95"], "points": list(points.values())}
    out = ROOT / "benchmarks" / "results" / "rsd.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"base student: {base['accuracy']:.0%}; wrote {out}")


if __name__ == "__main__":
    main()
