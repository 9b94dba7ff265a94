"""A local teacher's generation speed and answers in fp32, dynamic int8 (`teacher.dtype int8`) and bf16, same prompts.

    python benchmarks/teacher_speed.py [--model qwen2.5-coder-1.5b-instruct] [--prompts 32] [--max-tokens 128] \
        [--dtypes float32,int8,bfloat16]

Each precision runs in its own process (so peak memory is its own), through the hf backend that `generate`
and `eval` use (continuous batching, batch `--batch-size`), greedy, on the same multistep-arithmetic prompts.
Reported: load time (GGUF de-quantization plus, for int8, quantization), generated tokens/s, peak RSS, and
how the answers compare: share of completions identical to fp32's, and accuracy of each with the task's
verifier. bf16 pays only on a CPU with a fast bf16 path (avx512_bf16 or AMX; `tutorlm doctor` says), where
its matmuls outrun int8's. Results go to benchmarks/results/teacher_speed.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import machine, report_side, run_side, versions

ROOT = Path(__file__).resolve().parent.parent


def side(args: argparse.Namespace) -> None:
    import torch

    from tutorlm.backends import Request, Sampling
    from tutorlm.backends.hf import HFBackend
    from tutorlm.config import TaskConfig, TeacherConfig
    from tutorlm.tasks import load_task

    torch.manual_seed(0)
    task = load_task(TaskConfig(source="multistep_arithmetic"))
    examples = task.examples("test", args.prompts)
    backend = HFBackend(TeacherConfig(backend="hf", model=args.model, dtype=args.side, batch_size=args.batch_size))
    started = time.perf_counter()
    backend._load()
    load_s = time.perf_counter() - started
    completions: dict[str, object] = {}
    started = time.perf_counter()
    backend.run([Request(task.prompt(example), 0, example.id) for example in examples], Sampling(max_tokens=args.max_tokens),
                lambda request, completion: completions.__setitem__(request.example_id, completion))
    wall = time.perf_counter() - started
    tokens = sum(c.completion_tokens for c in completions.values())
    report_side({
        "load_s": round(load_s, 1), "generate_s": round(wall, 1), "tokens": tokens, "tokens_per_s": round(tokens / wall, 2),
        "accuracy": sum(task.grade(example, completions[example.id].text).correct for example in examples) / len(examples),
        "texts": {example.id: completions[example.id].text for example in examples},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtypes", default="float32,int8,bfloat16", help="comma-separated, from float32, int8, bfloat16; "
                                                                         "the first is the reference the others compare with")
    parser.add_argument("--side", choices=["float32", "int8", "bfloat16"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        side(args)
        return
    dtypes = [name.strip() for name in args.dtypes.split(",") if name.strip()]
    if not dtypes or set(dtypes) - {"float32", "int8", "bfloat16"}:
        parser.error(f"--dtypes {args.dtypes!r}: choose from float32, int8, bfloat16")
    results = {}
    for precision in dtypes:
        command = [sys.executable, __file__, "--side", precision, "--model", args.model, "--prompts", str(args.prompts),
                   "--max-tokens", str(args.max_tokens), "--batch-size", str(args.batch_size)]
        figures, peak_kb = run_side(precision, command, None)
        figures["peak_rss_mb"] = round(peak_kb / 1024)
        results[precision] = figures
        print(f"{precision}: load {figures['load_s']} s, {figures['tokens_per_s']} tokens/s ({figures['tokens']} tokens in "
              f"{figures['generate_s']} s), peak RSS {figures['peak_rss_mb']} MB, accuracy {figures['accuracy']:.0%}")
    reference = results[dtypes[0]]
    comparisons = {}
    for precision in dtypes[1:]:
        figures = results[precision]
        same = sum(reference["texts"][key] == figures["texts"][key] for key in reference["texts"]) / len(reference["texts"])
        comparisons[precision] = {"speedup": round(figures["tokens_per_s"] / reference["tokens_per_s"], 2),
                                  "memory_ratio": round(figures["peak_rss_mb"] / reference["peak_rss_mb"], 2),
                                  "identical_completions": round(same, 3)}
        print(f"{precision} / {dtypes[0]}: {comparisons[precision]['speedup']:.2f}x tokens/s, "
              f"{comparisons[precision]['memory_ratio']:.2f}x memory; {same:.0%} of completions identical")
    for figures in results.values():
        figures.pop("texts")
    out = ROOT / "benchmarks" / "results" / "teacher_speed.json"
    out.write_text(json.dumps({
        "benchmark": "teacher_speed", "machine": machine(), "versions": versions(), "date": time.strftime("%Y-%m-%d"), "model": args.model,
        "prompts": args.prompts, "max_tokens": args.max_tokens, "batch_size": args.batch_size, "results": results,
        "reference": dtypes[0], "vs_reference": comparisons,
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
