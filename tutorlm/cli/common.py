"""What every command shares: the consoles, the recipe a command runs with, the run-directory flags, and the
help text of --SECTION.FIELD settings."""

from __future__ import annotations

import argparse
import ast
import os
from importlib import util
from pathlib import Path
from typing import Any

from rich.console import Console

from tutorlm.recipe_io import describe_fields, load_recipe, parse_override_args
from tutorlm.run import RunDir

console = Console()
error_console = Console(stderr=True)


def recipe_from(args: argparse.Namespace, extra: list[str], source: str | None = None, *, from_run: bool = False) -> Any:
    """The recipe for a command: a recipe file or, with `from_run`, the recipe the run directory's manifest
    recorded last (so `tutorlm curate --out runs/x` needs no repeated flags); then the command-line settings."""
    overrides = parse_override_args(extra)
    if source is not None:
        overrides.insert(0, ("task.source", source))
    recipe_path = getattr(args, "recipe", None)
    recipe = load_recipe(recipe_path, overrides)
    if from_run and recipe_path is None:
        run = RunDir(recipe.run.path)
        stages = run.manifest()["stages"]
        if stages:
            latest = max(stages.values(), key=lambda record: record["started"])
            return load_recipe(None, overrides, base=latest["config"], base_name=str(run.manifest_path))
    return recipe


def apply_run_flags(args: argparse.Namespace, settings: list[str]) -> list[str]:
    """--out DIR and --no-cache are shorthands for run.output_dir/run.name and generate.cache."""
    settings = list(settings)
    if getattr(args, "out", None):
        out = Path(args.out)
        settings += [f"--run.output_dir={out.parent}", f"--run.name={out.name}"]
    if getattr(args, "no_cache", False):
        settings.append("--generate.cache=false")
    return settings


def other_process(stage: str) -> bool:
    """True in a launcher's non-main process (torchrun, `accelerate launch`), which leaves `stage` to the main one.

    Training is the data-parallel stage; the others would only do the same work N times over the same files.
    """
    if int(os.environ.get("RANK", "0")) != 0:
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        error_console.print(f"{stage}: runs on the main process only (of {os.environ['WORLD_SIZE']}); training is the data-parallel stage")
    return False


def settings_epilog(sections: dict[str, type]) -> str:
    lines = ["settings (also accepted as keys of a YAML recipe):"]
    for prefix, cls in sections.items():
        for flag, default, help_text in describe_fields(cls, prefix):
            lines.append(f"  {flag} (default {default})\n      {help_text}")
    return "\n".join(lines)


def stage_arguments(parser: argparse.ArgumentParser, recipe_help: str, out_help: str) -> None:
    """The arguments every stage command shares: an optional recipe, the run directory, --force."""
    parser.add_argument("recipe", nargs="?", help=recipe_help)
    parser.add_argument("--out", help=out_help)
    parser.add_argument("--force", action="store_true", help="redo the stage even if the manifest says it is current")


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


def module_doc(name: str) -> str:
    """A module's docstring, read from its source without importing it (a stage's import brings in torch)."""
    return ast.get_docstring(ast.parse(Path(util.find_spec(name).origin).read_text(encoding="utf-8"))) or ""
