"""A training loss alone, plain (full logits) vs tutorlm's chunked version: peak memory, time, agreement.

    python benchmarks/loss_memory.py                       # SFT cross-entropy, Qwen2.5-0.5B's vocabulary and width, CPU
    python benchmarks/loss_memory.py --loss kd             # logit KD (forward KL to a teacher of the same width)
    python benchmarks/loss_memory.py --loss kd-topk        # logit KD against a stored top-20 (with its tail bucket)
    python benchmarks/loss_memory.py --device cuda --tokens 5760 --dtype bf16

For N labelled tokens with hidden states (N, H) and a vocabulary projection (V, H), forward and
backward of the mean loss:
- `--loss ce`, plain: logits = h W^T materialized, upcast to float32, `F.cross_entropy` (what a
  model's own labels loss does); fused: `tutorlm.train.losses.linear_cross_entropy` (chunks of rows,
  gradients formed in the forward).
- `--loss kd`, plain: the student's and the teacher's full logits, log-softmax, forward KL (what
  TRL's GKD trainer computes); fused: `tutorlm.train.losses.linear_kd_loss` (chunks of rows under
  activation checkpointing, the teacher's logits formed a chunk at a time from its hidden states).
- `--loss kd-topk`, plain: the student's full logits, log-softmax, `topk_divergence` against the
  teacher's top 20 ids and log-probs; fused: `linear_kd_loss` given the same top-k (chunked, checkpointed).
Each variant runs in its own subprocess. Peak memory above the inputs is peak RSS with large blocks
mmapped (so RSS follows live tensors) on CPU, `torch.cuda.max_memory_allocated` on CUDA. The two
losses and gradients are compared, so a fast wrong answer cannot pass.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import machine, report_side, run_side, versions

ROOT = Path(__file__).resolve().parent.parent


def inputs(args: argparse.Namespace):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.tokens, args.hidden, generator=generator).to(args.device).requires_grad_()
    weight = (torch.randn(args.vocab, args.hidden, generator=generator) * 0.02).to(args.device).requires_grad_()
    targets = torch.randint(0, args.vocab, (args.tokens,), generator=generator).to(args.device)
    # The teacher's final hidden states and projection (for --loss kd): no gradient.
    teacher_hidden = torch.randn(args.tokens, args.hidden, generator=generator).to(args.device)
    teacher_weight = (torch.randn(args.vocab, args.hidden, generator=generator) * 0.02).to(args.device)
    if args.loss == "kd-topk":  # what a trace stores: the teacher's top 20 at each token, not its logits
        ids, values = [], []
        with torch.no_grad():  # a few rows at a time, so that making the inputs does not set the peak measured
            for start in range(0, args.tokens, 64):
                top = F.log_softmax((teacher_hidden[start:start + 64] @ teacher_weight.T).float(), dim=-1).topk(20, dim=-1)
                ids.append(top.indices)
                values.append(top.values)
        teacher_hidden, teacher_weight = torch.cat(ids), torch.cat(values)
    return hidden, weight, targets, teacher_hidden, teacher_weight


def loss_of(loss: str, variant: str, hidden, weight, targets, teacher_hidden, teacher_weight):
    from tutorlm.train.losses import divergence, linear_cross_entropy, linear_kd_loss, topk_divergence

    if loss == "ce":
        if variant == "fused":
            return linear_cross_entropy(hidden, weight, targets)
        return F.cross_entropy((hidden @ weight.T).float(), targets)
    if loss == "kd-topk":  # teacher_hidden, teacher_weight: the top-k ids and log-probs
        if variant == "fused":
            return linear_kd_loss(hidden, weight, (teacher_hidden, teacher_weight), kind="forward_kl")
        return topk_divergence(F.log_softmax((hidden @ weight.T).float(), dim=-1), teacher_hidden, teacher_weight).mean()
    if variant == "fused":
        def teacher_logprobs(start, end):
            return F.log_softmax((teacher_hidden[start:end] @ teacher_weight.T).float(), dim=-1)

        return linear_kd_loss(hidden, weight, teacher_logprobs, kind="forward_kl")
    with torch.no_grad():
        teacher = F.log_softmax((teacher_hidden @ teacher_weight.T).float(), dim=-1)
    return divergence(F.log_softmax((hidden @ weight.T).float(), dim=-1), teacher, "forward_kl").mean()


def side(args: argparse.Namespace) -> None:
    cuda = args.device == "cuda"
    hidden, weight, targets, teacher_hidden, teacher_weight = inputs(args)
    autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(args.repeats + 1):  # the first is warm-up
        hidden.grad = weight.grad = None
        started = time.perf_counter()
        with autocast:
            loss = loss_of(args.loss, args.side, hidden, weight, targets, teacher_hidden, teacher_weight)
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.save({"loss": loss.detach().cpu(), "hidden": hidden.grad.cpu(), "weight": weight.grad.cpu()}, args.save)
    report_side({"ms": round(min(times[1:]) * 1e3, 1), "peak_above_inputs_mb": round((peak - base) / 2**20)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--tokens", type=int, default=1440, help="labelled tokens (a batch of 16 with 90 each)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: under autocast")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--loss", choices=("ce", "kd", "kd-topk"), default="ce",
                        help="ce: SFT cross-entropy; kd: forward KL to a teacher; kd-topk: to a teacher's stored top-20")
    parser.add_argument("--out", help="result file (default: benchmarks/results/loss_memory.json, or kd_loss.json for --loss kd)")
    parser.add_argument("--side", choices=("plain", "fused"), help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        side(args)
        return
    args.out = args.out or str(ROOT / "benchmarks" / "results" / {"ce": "loss_memory.json", "kd": "kd_loss.json",
                                                                   "kd-topk": "kd_topk_loss.json"}[args.loss])
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if min(args.vocab, args.hidden, args.tokens, args.repeats) < 1:
        parser.error("--vocab, --hidden, --tokens and --repeats must be at least 1")
    results, saved = {}, {}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    for variant in ("plain", "fused"):
        save = Path(args.out).with_suffix(f".{variant}.pt")
        command = [sys.executable, __file__, "--side", variant, "--save", str(save)] + [
            f"--{name}={getattr(args, name)}" for name in ("vocab", "hidden", "tokens", "device", "dtype", "repeats", "loss")]
        results[variant], _ = run_side(variant, command, env)
        saved[variant] = torch.load(save)
        save.unlink()
        print(variant, results[variant], flush=True)
    tolerance = 1e-4 if args.dtype == "fp32" else 2e-2
    agree = {key: bool(torch.allclose(saved["plain"][key], saved["fused"][key], rtol=tolerance, atol=tolerance * 1e-2))
             for key in ("loss", "hidden", "weight")}
    output = {
        "benchmark": "loss_memory", "loss": args.loss, "date": time.strftime("%Y-%m-%d"),
        "machine": machine(args.device), "versions": versions(),
        "device": args.device, "dtype": args.dtype, "vocab": args.vocab, "hidden": args.hidden, "tokens": args.tokens,
        "variants": results, "loss_and_gradients_agree": agree,
        "ratio_memory": round(results["fused"]["peak_above_inputs_mb"] / max(results["plain"]["peak_above_inputs_mb"], 1), 3),
        "ratio_time": round(results["fused"]["ms"] / results["plain"]["ms"], 3),
    }
    print(json.dumps(output, indent=2))
    if not all(agree.values()):
        raise SystemExit(f"the fused loss disagrees with the plain one: {agree}")
    Path(args.out).write_text(json.dumps(output, indent=2) + "\n")


if __name__ == "__main__":
    main()
