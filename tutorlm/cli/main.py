"""The `tutorlm` command.

    tutorlm run [RECIPE]                                 the whole pipeline (default recipe: offline, CPU)
    tutorlm generate | curate | train | eval | report    one stage, with --out RUN_DIR
    tutorlm tasks list                                   built-in tasks, benchmarks and their settings
    tutorlm tasks show last_letters --n 3 --split test   examples with their reference solutions
    tutorlm tasks export arithmetic --split test --n 500 --out test.jsonl
    tutorlm verify --gold 42 "... The answer is 42."     extracted answer and verdict (exit 1 when wrong)
    tutorlm doctor                                       python, torch, devices, optional extras
    tutorlm serve --model runs/NAME/student              an OpenAI-compatible server (the teacher helps: --teacher)

Stage settings use one scheme everywhere: `--SECTION.FIELD VALUE`, the same keys as a YAML recipe
(`--task.options.num_words 5`). Every `TutorlmError` prints one line naming the file, line or key:
exit status 2 for bad input, 1 for a teacher or backend failure (see tutorlm/errors.py). Each command group
registers its own parser (cli/stages.py, cli/tasks.py, cli/doctor.py, cli/serve.py), as TRL's cli/commands do.
"""

from __future__ import annotations

import argparse
import sys

from rich.markup import escape

from tutorlm import __version__
from tutorlm.cli import doctor, serve, stages, tasks
from tutorlm.cli.common import error_console, split_settings
from tutorlm.errors import TutorlmError


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="tutorlm", description="Teach small language models to reason by learning from larger ones.",
        formatter_class=formatter, epilog="Run `tutorlm COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"tutorlm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    tasks.add_parsers(commands, formatter)
    stages.add_parsers(commands, formatter)
    doctor.add_parsers(commands, formatter)
    serve.add_parsers(commands, formatter)
    return parser


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
