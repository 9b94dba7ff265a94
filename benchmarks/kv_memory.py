"""The hf backend's KV buffer: allocated for max_tokens up front vs grown as rows need it.

    python benchmarks/kv_memory.py [--model runs/default/student] [--questions 100] [--max-tokens 256,2048]

The continuous-batching engine keeps keys and values in buffers of batch x columns per layer. It used
to allocate room for the longest prompt + max_tokens at once; it now starts with room for
`INITIAL_NEW_TOKENS` generated tokens and doubles when rows need more. This runs the same evaluation
prompts (a built-in task's test questions, greedy, batch 64) both ways for each max_tokens, each in
its own subprocess, and reports the KV buffers' peak bytes, peak RSS (large blocks mmapped, so RSS
follows live tensors), wall time and generated tokens/s; the two ways' completions must be identical.
Default model: the default recipe's student (short answers: max_tokens is a safety bound there).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

from _common import machine, report_side, run_side, versions

ROOT = Path(__file__).resolve().parent.parent


def side(args: argparse.Namespace) -> None:
    from tutorlm.models import engine as batching
    from tutorlm.backends import Request, Sampling
    from tutorlm.backends.hf import HFBackend
    from tutorlm.config import TaskConfig, TeacherConfig
    from tutorlm.models.load import load_model, load_tokenizer
    from tutorlm.tasks import load_task

    if args.side == "preallocated":  # the former behaviour: room for every generated token from the start
        batching.INITIAL_NEW_TOKENS = args.max_tokens
    engines = []
    run = batching.Engine.run

    def keep(engine, *positional, **options):
        engines.append(engine)
        return run(engine, *positional, **options)

    batching.Engine.run = keep
    task = load_task(TaskConfig(source=args.task))
    examples = task.examples("test", args.questions)
    model, tokenizer = load_model(args.model, device="cpu", dtype="float32"), load_tokenizer(args.model)
    backend = HFBackend(TeacherConfig(backend="hf", model=args.model, batch_size=args.batch_size), model=model, tokenizer=tokenizer)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    completions = {}
    started = time.perf_counter()
    backend.run([Request(task.prompt(e), 0, e.id) for e in examples], Sampling(max_tokens=args.max_tokens),
                lambda request, completion: completions.__setitem__(request.example_id, completion))
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tokens = sum(c.completion_tokens for c in completions.values())
    counters = engines[0].counters
    report_side({
        "seconds": round(seconds, 1), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
        "kv_peak_mb": round(counters["kv_bytes_peak"] / 2**20), "kv_growths": counters["growths"],
        "rss_peak_mb": round(peak / 2**20), "rss_above_model_mb": round((peak - before) / 2**20),
        "texts": [completions[e.id].text for e in examples],
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/default/student")
    parser.add_argument("--task", default="coin_flip")
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-tokens", default="256,2048", help="comma-separated")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kv_memory.json"))
    parser.add_argument("--side", choices=("preallocated", "grown"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        args.max_tokens = int(args.max_tokens)
        side(args)
        return
    try:
        limits = [int(value) for value in args.max_tokens.split(",")]
    except ValueError:
        parser.error(f"--max-tokens: comma-separated integers, not {args.max_tokens!r}")
    if min([args.questions, args.batch_size, *limits]) < 1:
        parser.error("--questions, --batch-size and --max-tokens must be at least 1")
    if not Path(args.model).exists() and "/" in args.model:
        parser.error(f"--model {args.model}: no such directory (`tutorlm run` writes runs/default/student)")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    runs = []
    for max_tokens in limits:
        measured = {}
        for way in ("preallocated", "grown"):
            command = [sys.executable, __file__, "--side", way, "--model", args.model, "--task", args.task,
                       "--questions", str(args.questions), "--batch-size", str(args.batch_size), "--max-tokens", str(max_tokens)]
            measured[way], _ = run_side(way, command, env)
        texts = [measured[way].pop("texts") for way in ("preallocated", "grown")]
        row = {"max_tokens": max_tokens, **measured, "identical_completions": texts[0] == texts[1],
               "ratio_kv": round(measured["grown"]["kv_peak_mb"] / max(measured["preallocated"]["kv_peak_mb"], 1), 3),
               "ratio_rss_above_model": round(measured["grown"]["rss_above_model_mb"]
                                              / max(measured["preallocated"]["rss_above_model_mb"], 1), 3),
               "ratio_time": round(measured["grown"]["seconds"] / measured["preallocated"]["seconds"], 3)}
        runs.append(row)
        print(json.dumps(row), flush=True)
        if not row["identical_completions"]:
            raise SystemExit(f"max_tokens {max_tokens}: the two ways generated different completions")
    result = {
        "benchmark": "kv_memory", "date": time.strftime("%Y-%m-%d"), "machine": machine(), "versions": versions(),
        "model": args.model, "task": args.task, "questions": args.questions, "batch_size": args.batch_size, "runs": runs,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
