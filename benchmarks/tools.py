"""Students that compute with Python against students that write their arithmetic out, at the same teacher budget.

    pip install -e ".[teacher]"
    python benchmarks/tools.py [--testbed arith|gsm8k] [--arms tools,cot]
    python benchmarks/tools.py --student qwen2.5-coder-0.5b-instruct --lr 1e-5 --tag qwen0.5b   # another student

Both arms are shipped recipes run as a user runs them, with the same teacher (Qwen2.5-Coder-1.5B-Instruct, int8),
training questions, student and held-out questions:
- arith: `tutorlm run tools` against `tutorlm run real-teacher`: 200 questions of multistep arithmetic, SmolLM2-135M-
  Instruct, 100 held-out questions. Results: benchmarks/results/tools.json.
- gsm8k: `tutorlm run tools-gsm8k` against `tutorlm run gsm8k`: 300 of tutorlm's GSM8K training questions,
  Qwen2.5-Coder-0.5B-Instruct, the split's 250 test questions. Results: benchmarks/results/tools_gsm8k.json.
- mix (`--arms tools`): `tutorlm run tools-mix`, DualDistill on multistep arithmetic and coin flip: per task, the
  student's accuracy and share of answers with Python. Results: benchmarks/results/tools_mix.json.
The tool arm's teacher computes with ```python blocks (demonstrations of the format), the student learns its
transcripts and is evaluated with the sandbox; the CoT arm's teacher writes its steps out. A finished run is reused
(the pipeline skips current stages). `--student` puts another student in both arms (runs `<recipe>-<tag>`, results
`tools_<tag>.json`; `--lr` sets both arms' learning rate); the teacher's answers come from the cache.

Per arm: the student's and the teacher's accuracy with 95% intervals, the teacher's completion tokens (its budget
in tokens), and with the tool the calls per answer, the share of failed calls and seconds in the sandbox per answer;
then the paired bootstrap of tool student minus CoT student over the same questions (and of each run's student
against its base), and the sandbox's cost of one call (`print(1)`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

from _common import commit, machine, tutorlm_run, versions

from tutorlm import metrics
from tutorlm.report import question_scores
from tutorlm.run import read_jsonl
from tutorlm.tools.sandbox import isolation, run_python

ROOT = Path(__file__).resolve().parent.parent
TESTBEDS = {  # testbed -> arm -> recipe (its run directory: runs/<recipe>)
    "arith": {"tools": "tools", "cot": "real-teacher"},
    "gsm8k": {"tools": "tools-gsm8k", "cot": "gsm8k"},
    "mix": {"tools": "tools-mix"},  # DualDistill on a mix of tasks: one run, both teachers; where the student used Python
}
RESULTS = {"arith": "tools.json", "gsm8k": "tools_gsm8k.json", "mix": "tools_mix.json"}


def scores(run: Path, label: str) -> dict[str, float]:
    """A model's score per question in a run's evaluation (1 right, 0 wrong)."""
    return question_scores(run / "eval" / f"{label}.jsonl")


def arm_figures(run: Path) -> dict:
    summary = json.loads((run / "eval" / "summary.json").read_text())
    manifest = json.loads((run / "manifest.json").read_text())
    generate = manifest["stages"]["generate"]["stats"]
    figures = {"teacher_completion_tokens": generate.get("completion_tokens_total", generate.get("completion_tokens"))}
    for label in ("base", "student", "teacher"):
        if label not in summary:  # the gsm8k recipes leave the teacher out of their evaluation (its baseline is measured)
            continue
        s = summary[label]
        figures[label] = {key: s[key] for key in ("accuracy", "accuracy_ci95", "mean_completion_tokens", "truncation_rate")}
        for key in ("tool_use_rate", "tool_calls_per_answer", "tool_error_rate", "tool_seconds_per_answer", "by_task"):
            if key in s:
                figures[label][key] = s[key] if key == "by_task" else round(s[key], 4)
    figures["curate"] = manifest["stages"]["curate"]["stats"]
    kept: dict[str, int] = {}  # what the student learned from: per task (a mix), teacher, and whether it used Python
    for row in read_jsonl(run / "curated.jsonl"):
        way = "python" if row.get("tools") else "words"
        key = "/".join([row["example_id"].rsplit("-", 1)[0], row.get("teacher") or "teacher", way])
        kept[key] = kept.get(key, 0) + 1
    figures["kept_by_task"] = dict(sorted(kept.items()))
    figures["stage_seconds"] = {name: stage.get("seconds") for name, stage in manifest["stages"].items()}
    return figures


def sandbox_call_ms(repeats: int = 20) -> float:
    run_python("print(1)")
    started = time.perf_counter()
    for _ in range(repeats):
        run_python("print(1)")
    return round((time.perf_counter() - started) / repeats * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--testbed", choices=TESTBEDS, default="arith", help="the task, student and recipes (default arith)")
    parser.add_argument("--arms", default="tools,cot", help="of tools, cot")
    parser.add_argument("--student", help="another student for both arms (a model spec); needs --tag")
    parser.add_argument("--lr", type=float, help="both arms' learning rate (default: the recipes')")
    parser.add_argument("--tag", help="names the arms' runs (<recipe>-<tag>) and the results (tools_<tag>.json)")
    args = parser.parse_args()
    if args.student and not args.tag:
        parser.error("--student needs --tag (the runs of another student must not overwrite the recipes' own)")
    arms = TESTBEDS[args.testbed]
    runs = {arm: f"{recipe}-{args.tag}" if args.tag else recipe for arm, recipe in arms.items()}
    overrides = [*(["--student.model", args.student] if args.student else []), *(["--train.lr", str(args.lr)] if args.lr else [])]
    chosen = args.arms.split(",")
    if unknown := set(chosen) - set(arms):
        parser.error(f"--arms: unknown {', '.join(sorted(unknown))}")
    results = {"benchmark": "tools", "testbed": args.testbed, "machine": machine(), "versions": versions(),
               "date": datetime.date.today().isoformat(), "commit": commit(), "arms": {},
               **({"student": args.student} if args.student else {}), **({"lr": args.lr} if args.lr else {})}
    for arm in chosen:
        started = time.perf_counter()
        tutorlm_run(arms[arm], *overrides, *(["--run.name", runs[arm]] if args.tag else []))
        run = ROOT / "runs" / runs[arm]
        results["arms"][arm] = {"recipe": arms[arm], "run": runs[arm], "wall_s": round(time.perf_counter() - started, 1), **arm_figures(run)}
        results["arms"][arm]["vs_base"] = metrics.paired_scores(scores(run, "base"), scores(run, "student"))
        print(arm, json.dumps(results["arms"][arm]["student"]), flush=True)
    if {"tools", "cot"} <= set(chosen):
        results["paired"] = metrics.paired_scores(scores(ROOT / "runs" / runs["cot"], "student"),
                                                  scores(ROOT / "runs" / runs["tools"], "student"))
        results["paired"]["what"] = "tool student minus CoT student, same questions"
        print("paired", json.dumps(results["paired"]), flush=True)
    results["sandbox"] = {"isolation": isolation(), "print_1_ms": sandbox_call_ms()}
    out = ROOT / "benchmarks" / "results" / (f"tools_{args.tag}.json" if args.tag else RESULTS[args.testbed])
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
