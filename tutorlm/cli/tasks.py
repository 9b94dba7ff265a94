"""`tutorlm tasks list | show | export` and `tutorlm verify`: the tasks, their examples, and the verifier on one answer."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from tutorlm import verify
from tutorlm.cli.common import console, recipe_from, settings_epilog
from tutorlm.config import ConfigError, TaskConfig
from tutorlm.run import atomic_write_text
from tutorlm.tasks import BENCHMARKS, GENERATORS, format_question, generator_settings, load_task
from tutorlm.tasks.benchmarks import INSTALL, PACKAGE, installed


def cmd_tasks_list(args: argparse.Namespace, extra: list[str]) -> int:

    table = Table(title="Built-in tasks", show_lines=True)
    table.add_column("name", style="bold cyan")
    table.add_column("answer")
    table.add_column("settings (--task.options.KEY VALUE)")
    table.add_column("description")
    for name, cls in GENERATORS.items():
        settings = ", ".join(f"{key}={json.dumps(value)}" for key, value in generator_settings(name).items())
        table.add_row(name, cls.answer_type, settings, (cls.__doc__ or "").strip())
    console.print(table)
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
        "directory, hf:ORG/NAME). Several tasks as one: --task.source multistep_arithmetic,coin_flip "
        "(each example prompted and graded by its own task). See `tutorlm tasks show --help`."
    )
    return 0


def task_recipe(args: argparse.Namespace, extra: list[str]) -> Any:
    """The recipe for `tasks show/export`: the task named as an argument, or by --task.source, or by --recipe."""
    if args.name is None and args.recipe is None and not any(arg.split("=", 1)[0] == "--task.source" for arg in extra):
        raise ConfigError("command line: name a task (tutorlm tasks show last_letters), or give --task.source or --recipe")
    return recipe_from(args, extra, args.name)


def cmd_tasks_show(args: argparse.Namespace, extra: list[str]) -> int:
    recipe = task_recipe(args, extra)
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
    recipe = task_recipe(args, extra)
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


def cmd_verify(args: argparse.Namespace, extra: list[str]) -> int:
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


def add_parsers(commands: Any, formatter: type) -> None:
    """The tasks command group and verify."""
    tasks = commands.add_parser("tasks", help="list, show and export reasoning tasks", formatter_class=formatter)
    task_commands = tasks.add_subparsers(dest="tasks_command", metavar="ACTION", required=True)
    listing = task_commands.add_parser("list", help="built-in tasks and their settings")
    listing.set_defaults(handler=cmd_tasks_list)

    epilog = settings_epilog({"task": TaskConfig})
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
