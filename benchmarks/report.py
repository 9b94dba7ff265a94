"""Write the README's benchmark table from benchmarks/results/*.json (never typed by hand).

    python benchmarks/report.py          # rewrites the block between the benchmark markers in README.md
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"


def rows() -> list[str]:
    lines = ["| benchmark | machine | date | tutorlm | peer | ratio | notes |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        result = json.loads(path.read_text())
        name = result["benchmark"]
        if name == "generate_http":
            lines.append(
                f"| generate over HTTP ({result['server']}, {result['requests']} requests, concurrency {result['concurrency']}) "
                f"| {result['machine']} | {result['date']} | {result['tutorlm_completions_per_s']} completions/s "
                f"| bare asyncio client: {result['bare_client_completions_per_s']} completions/s | {result['ratio']}× "
                f"| rerun made {result['rerun_teacher_calls']} teacher calls |"
            )
        elif name == "generate_hf":
            for prompt_set, label in (("task", "task prompts, short answers"), ("long", "open-ended prompts, decode-bound")):
                part = result[prompt_set]
                lines.append(
                    f"| hf backend, {result['model']} {result['dtype']} on {result['device']} ({label}, {result['prompts']} prompts, "
                    f"{result['max_tokens']} max tokens) | {result['machine']} | {result['date']} "
                    f"| {part['hf_backend_tokens_per_s']} tokens/s | one-at-a-time `generate`: {part['plain_loop_tokens_per_s']} tokens/s "
                    f"| {part['ratio']}× | batch {result['batch_size']} |"
                )
    return lines


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    readme.write_text(before + START + "\n" + "\n".join(rows()) + "\n" + END + after)
    print("\n".join(rows()))


if __name__ == "__main__":
    main()
