"""`tutorlm run` and the stage commands: generate, curate, train, eval, report. Each imports its stage when it runs,
so that `tutorlm --help` and the light commands start without torch."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from tutorlm.cli.common import (
    apply_run_flags,
    console,
    error_console,
    module_doc,
    other_process,
    recipe_from,
    settings_epilog,
    stage_arguments,
)
from tutorlm.config import (
    ConfigError,
    CurateConfig,
    EvalConfig,
    GenerateConfig,
    RunConfig,
    StudentConfig,
    TaskConfig,
    TeacherConfig,
    TrainConfig,
)
from tutorlm.recipe_io import load_recipe, parse_override_args, resolve_recipe, shipped_recipes
from tutorlm.run import STAGES
from tutorlm.tasks import GENERATORS, generator_settings, load_task


def cmd_generate(args: argparse.Namespace, extra: list[str]) -> int:
    from tutorlm.generate import generate

    if other_process("generate"):
        return 0
    recipe = recipe_from(args, apply_run_flags(args, extra), from_run=True)
    generate(recipe, force=args.force, console=error_console)
    return 0


def cmd_curate(args: argparse.Namespace, extra: list[str]) -> int:
    from tutorlm.curate import curate

    if other_process("curate"):
        return 0
    recipe = recipe_from(args, apply_run_flags(args, extra), from_run=True)
    curate(recipe, force=args.force, export=args.export, console=error_console)
    return 0


def cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    from tutorlm.train.loop import train

    recipe = recipe_from(args, apply_run_flags(args, extra), from_run=True)
    train(recipe, resume=args.resume, force=args.force, console=error_console)
    return 0


def cmd_eval(args: argparse.Namespace, extra: list[str]) -> int:
    from tutorlm.evaluate import evaluate

    if other_process("eval"):
        return 0
    if args.tasks:
        return eval_tasks(args, extra)
    if not args.out and not any(arg.startswith("--run.") for arg in extra):
        # An evaluation with no run directory gets its own (runs/eval-<task>), never another run's eval/.
        task_source = load_recipe(args.recipe, parse_override_args(extra)).task.source
        extra = [*extra, f"--run.name=eval-{re.sub(r'[^A-Za-z0-9._-]+', '_', Path(task_source).stem)}"]
    recipe = recipe_from(args, apply_run_flags(args, extra), from_run=True)
    specs = args.model or recipe.eval.models
    if not specs:
        raise ConfigError("command line: name at least one model with --model (e.g. --model base --model student)")
    evaluate(recipe, specs, force=args.force, console=error_console)
    return 0


def eval_tasks(args: argparse.Namespace, extra: list[str]) -> int:
    """`--tasks a,b,c`: one recipe per task (results in runs/eval-<task>, or OUT/<task> with --out), each model
    loaded once. A built-in task takes those of the given task.options it has (num_people goes to coin_flip and
    object_tracking), and its defaults for the rest."""
    from tutorlm.evaluate import evaluate_tasks
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
    for recipe in recipes:  # every task is checked before the first is evaluated
        load_task(recipe.task)
    specs = args.model or base.eval.models
    if not specs:
        raise ConfigError("command line: name at least one model with --model (e.g. --model base --model student)")
    evaluate_tasks(recipes, specs, force=args.force, console=error_console)
    return 0


def cmd_report(args: argparse.Namespace, extra: list[str]) -> int:
    from tutorlm.report import report

    if other_process("report"):
        return 0
    recipe = recipe_from(args, apply_run_flags(args, extra), from_run=True)
    path = report(recipe.run.path)
    console.print(f"report: {path} (and report.md)")
    return 0


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    from tutorlm.pipeline import dry_run, run_pipeline

    args.recipe = str(resolve_recipe(args.recipe))
    recipe = recipe_from(args, apply_run_flags(args, extra))
    if args.dry_run:
        dry_run(recipe, console=console)
        return 0
    run_pipeline(recipe, force=set(args.force or []), console=error_console)
    return 0


def add_parsers(commands: Any, formatter: type) -> None:
    """The stage commands and run."""
    generate = commands.add_parser(
        "generate", help="have a teacher write step-by-step rationales (traces.jsonl)", formatter_class=formatter,
        description="Have a teacher write step-by-step rationales for a task's questions, through a durable cache. "
        "Settings come from an optional YAML recipe, then --SECTION.FIELD flags.",
        epilog=settings_epilog({"task": TaskConfig, "teacher": TeacherConfig, "generate": GenerateConfig, "run": RunConfig}),
    )
    stage_arguments(generate, "a YAML recipe (optional)",
                     "run directory, e.g. runs/letters (same as --run.output_dir runs --run.name letters)")
    generate.add_argument("--no-cache", action="store_true", help="neither read nor write the teacher cache")
    generate.set_defaults(handler=cmd_generate)

    curate = commands.add_parser(
        "curate", help="keep verified, deduplicated, length-pruned rationales (curated.jsonl)", formatter_class=formatter,
        description="Filter RUN_DIR/traces.jsonl into RUN_DIR/curated.jsonl: correct answers only, no truncation, "
        "deduplicated, length-pruned, capped per question. Prints and records what each filter removed.",
        epilog=settings_epilog({"curate": CurateConfig, "task": TaskConfig, "run": RunConfig}),
    )
    stage_arguments(curate, "a YAML recipe (optional; the run's manifest is used otherwise)",
                     "run directory holding traces.jsonl, e.g. runs/letters")
    curate.add_argument("--export", choices=["parquet"], help="also write curated.parquet")
    curate.set_defaults(handler=cmd_curate)

    train = commands.add_parser(
        "train", help="fine-tune the student on curated rationales (full or LoRA)", formatter_class=formatter,
        description="Supervised fine-tuning of the student on RUN_DIR/curated.jsonl, loss on completion tokens only. "
        "Writes RUN_DIR/student/ (save_pretrained) and RUN_DIR/train_log.jsonl. Runs on one CPU as is; "
        "`accelerate launch --multi_gpu --num_processes N -m tutorlm train ...` trains data-parallel on GPUs, "
        "`ACCELERATE_USE_CPU=true torchrun --nproc_per_node N -m tutorlm train ...` on CPUs.",
        epilog=settings_epilog({"student": StudentConfig, "train": TrainConfig, "run": RunConfig}),
    )
    stage_arguments(train, "a YAML recipe (optional; the run's manifest is used otherwise)",
                     "run directory holding curated.jsonl, e.g. runs/letters")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of an interrupted run")
    train.set_defaults(handler=cmd_train)

    eval_doc = module_doc("tutorlm.evaluate")

    evaluate = commands.add_parser(
        "eval", help="evaluate models on a task split with the shared verifier", formatter_class=formatter,
        description=eval_doc.split("Every model gets")[0],
        epilog=settings_epilog({"eval": EvalConfig, "task": TaskConfig, "run": RunConfig}),
    )
    stage_arguments(evaluate, "a YAML recipe (optional; the run's manifest is used otherwise)",
                     "run directory (results go to OUT/eval/; default runs/eval-<task>)")
    evaluate.add_argument("--model", action="append", help="a model spec; repeat for a comparison table")
    evaluate.add_argument("--tasks", metavar="A,B,...", help="evaluate on several tasks in one call, loading each model "
                          "once (results in runs/eval-<task>, or OUT/<task> with --out)")
    evaluate.set_defaults(handler=cmd_eval)

    pipeline_doc = module_doc("tutorlm.pipeline")

    run = commands.add_parser(
        "run", help="the whole pipeline: generate, curate, train, eval, report", formatter_class=formatter,
        description=pipeline_doc, epilog=f"Shipped recipes: {', '.join(shipped_recipes())}. "
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
