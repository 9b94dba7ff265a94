"""Students that compute with Python against students that write their arithmetic out, at the same teacher budget.

    pip install -e ".[teacher]"
    python benchmarks/tools.py [--arms tools,cot]

Both arms are shipped recipes run as a user runs them (`tutorlm run tools`, `tutorlm run real-teacher`): the same
teacher (Qwen2.5-Coder-1.5B-Instruct, int8), the same 200 training questions of multistep arithmetic, the same
student (SmolLM2-135M-Instruct), training and 100 held-out questions. The tool arm's teacher computes with a
```python block (one demonstration of the format), the student learns its transcripts and is evaluated with the
sandbox; the CoT arm's teacher writes its steps out. A finished run is reused (the pipeline skips current stages).

Per arm: the student's and the teacher's accuracy with 95% intervals, the teacher's completion tokens (its budget
in tokens), and with the tool the calls per answer, the share of failed calls and seconds in the sandbox per answer;
then the paired bootstrap of tool student minus CoT student over the same questions, and the sandbox's cost of one
call (`print(1)`). Results: benchmarks/results/tools.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

from _common import commit, machine, tutorlm_run, versions

from tutorlm import metrics
from tutorlm.tools.sandbox import isolation, run_python

ROOT = Path(__file__).resolve().parent.parent
ARMS = {"tools": "tools", "cot": "real-teacher"}  # arm -> recipe (its run directory: runs/<recipe>)


def eval_rows(run: Path, label: str) -> dict[str, dict]:
    path = run / "eval" / f"{label}.jsonl"
    return {row["example_id"]: row for row in map(json.loads, path.read_text().splitlines())}


def arm_figures(run: Path) -> dict:
    summary = json.loads((run / "eval" / "summary.json").read_text())
    manifest = json.loads((run / "manifest.json").read_text())
    generate = manifest["stages"]["generate"]["stats"]
    figures = {"teacher_completion_tokens": generate.get("completion_tokens_total", generate.get("completion_tokens"))}
    for label in ("base", "student", "teacher"):
        s = summary[label]
        figures[label] = {key: s[key] for key in ("accuracy", "accuracy_ci95", "mean_completion_tokens", "truncation_rate")}
        for key in ("tool_use_rate", "tool_calls_per_answer", "tool_error_rate", "tool_seconds_per_answer"):
            if key in s:
                figures[label][key] = round(s[key], 4)
    figures["curate"] = manifest["stages"]["curate"]["stats"]
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
    parser.add_argument("--arms", default="tools,cot", help=f"of {', '.join(ARMS)}")
    args = parser.parse_args()
    chosen = args.arms.split(",")
    if unknown := set(chosen) - set(ARMS):
        parser.error(f"--arms: unknown {', '.join(sorted(unknown))}")
    results = {"benchmark": "tools", "machine": machine(), "versions": versions(), "date": datetime.date.today().isoformat(),
               "commit": commit(), "arms": {}}
    for arm in chosen:
        started = time.perf_counter()
        tutorlm_run(ARMS[arm])
        results["arms"][arm] = {"recipe": ARMS[arm], "wall_s": round(time.perf_counter() - started, 1),
                                **arm_figures(ROOT / "runs" / ARMS[arm])}
        print(arm, json.dumps(results["arms"][arm]["student"]), flush=True)
    if {"tools", "cot"} <= set(chosen):
        tools, cot = eval_rows(ROOT / "runs" / "tools", "student"), eval_rows(ROOT / "runs" / "real-teacher", "student")
        results["paired"] = metrics.paired_scores({q: float(row["correct"]) for q, row in cot.items()},
                                                  {q: float(row["correct"]) for q, row in tools.items()})
        results["paired"]["what"] = "tool student minus CoT student, same questions"
        print("paired", json.dumps(results["paired"]), flush=True)
    results["sandbox"] = {"isolation": isolation(), "print_1_ms": sandbox_call_ms()}
    out = ROOT / "benchmarks" / "results" / "tools.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
