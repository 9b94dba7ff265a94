"""Reading recipes: YAML files and `--SECTION.FIELD VALUE` overrides into the dataclasses of config.py,
with every key and value checked, and the fields described for `--help`."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import re
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from tutorlm.config import ConfigError, Recipe

# ---------------------------------------------------------------------------------------------------
# Dicts <-> dataclasses, with checks
# ---------------------------------------------------------------------------------------------------


def _type_name(expected: Any) -> str:
    origin = typing.get_origin(expected)
    if origin is Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(expected))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(expected))
    if expected is type(None):
        return "null"
    if origin is list:
        return "a list"
    if origin is dict or dataclasses.is_dataclass(expected):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "text", bool: "true or false"}.get(expected, str(expected))


def check_value(value: Any, expected: Any, key: str, where: str) -> Any:
    """`value` if it fits `expected` (ints are accepted as floats), else a ConfigError naming `key`."""
    origin = typing.get_origin(expected)
    args = typing.get_args(expected)
    fits = False
    if expected is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return check_value(value, arg, key, where)
            except ConfigError:
                continue
    elif origin is Literal:
        fits = value in args
    elif expected is type(None):
        fits = value is None
    elif expected is bool:
        fits = isinstance(value, bool)
    elif expected is int:
        fits = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 (PyYAML) reads 1e-4 without a decimal point as text; accept it for number fields.
        if isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", value.strip()):
            return float(value)
    elif expected is str:
        fits = isinstance(value, str)
    elif origin is list:
        if isinstance(value, list):
            return [check_value(item, args[0], f"{key}[{i}]", where) for i, item in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            return {str(k): check_value(v, args[1], f"{key}.{k}", where) for k, v in value.items()}
    elif dataclasses.is_dataclass(expected):
        if isinstance(value, dict):
            return from_dict(expected, value, where, prefix=f"{key}.")
    if not fits:
        raise ConfigError(f"{where}: {key} must be {_type_name(expected)}, got {value!r} ({type(value).__name__})")
    return value


def from_dict(cls: type, data: dict[str, Any], where: str, prefix: str = "") -> Any:
    """An instance of dataclass `cls` from `data`; unknown keys and wrong types name the key and `where`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'the recipe'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"{where}: unknown key {prefix}{key}{hint}")
        values[name] = check_value(value, hints[name], prefix + name, where)
    try:
        return cls(**values)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{where}: {prefix.rstrip('.') or cls.__name__}: {error}") from None


# ---------------------------------------------------------------------------------------------------
# Overrides from the command line, and recipe files
# ---------------------------------------------------------------------------------------------------


def parse_override_args(args: list[str]) -> list[tuple[str, str]]:
    """[("task.options.num_words", "5"), ...] from ["--task.options.num_words", "5", "--run.name=x", ...]."""
    pairs = []
    position = 0
    while position < len(args):
        arg = args[position]
        if not arg.startswith("--") or "." not in arg:
            raise ConfigError(f"command line: unexpected argument {arg!r}; settings look like --SECTION.FIELD VALUE")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            position += 1
        else:
            if position + 1 >= len(args):
                raise ConfigError(f"command line: {arg} needs a value")
            key, value = arg[2:], args[position + 1]
            position += 2
        pairs.append((key.replace("-", "_"), value))
    return pairs


def _read_text_value(text: str, expected: Any) -> Any:
    """A command-line string read as the field's type would be written in YAML."""
    if expected is str or (typing.get_origin(expected) is Literal and all(isinstance(a, str) for a in typing.get_args(expected))):
        return text
    if typing.get_origin(expected) in (typing.Union, types.UnionType):  # `str | None`: text unless it says null
        args = [arg for arg in typing.get_args(expected) if arg is not type(None)]
        if type(None) in typing.get_args(expected) and text.lower() in ("none", "null", "~"):
            return None
        if args == [str]:
            return text
    if typing.get_origin(expected) is list and not text.lstrip().startswith("["):
        # `--eval.models base` or `--eval.models base,student`: a bare word or a comma list is a list
        return [item.strip() for item in text.split(",") if item.strip()]
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[tuple[str, str]], cls: type = Recipe) -> dict[str, Any]:
    """`data` (a recipe as plain dicts) with each dotted key set; values are read by the field's type."""
    for key, text in overrides:
        parts = key.split(".")
        target_cls: Any = cls
        node = data
        depth = -1
        while depth < len(parts) - 1:
            depth += 1
            part = parts[depth]
            last = depth == len(parts) - 1
            if isinstance(node, list):  # an item of a list of sections, by its index: --teachers.0.n 2
                if not part.isdigit() or int(part) >= len(node) or last:
                    raise ConfigError(f"command line: --{key}: name an item of {parts[depth - 1]} by its index (0 to "
                                      f"{len(node) - 1}) and one of its fields, e.g. --{parts[depth - 1]}.0.name")
                node = node[int(part)]
                continue
            if dataclasses.is_dataclass(target_cls):
                hints = typing.get_type_hints(target_cls)
                if part not in hints:
                    names = list(hints)
                    close = difflib.get_close_matches(part, names, n=1)
                    where = ".".join(parts[:depth])
                    hint = f" (did you mean --{where + '.' if where else ''}{close[0]}?)" if close else f"; known: {', '.join(names)}"
                    raise ConfigError(f"command line: unknown setting --{key}{hint}")
                expected = hints[part]
            else:  # inside a dict field: free-form keys, YAML values
                expected = Any
            if last:
                node[part] = _read_text_value(text, expected)
            elif typing.get_origin(expected) is list and dataclasses.is_dataclass(typing.get_args(expected)[0]):
                child = node.get(part)
                if not isinstance(child, list) or not child:
                    raise ConfigError(f"command line: --{key}: the recipe has no {part} list to change; write it in the "
                                      "recipe file")
                node = child
                target_cls = typing.get_args(expected)[0]
            else:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = {}
                    node[part] = child
                node = child
                target_cls = expected if dataclasses.is_dataclass(expected) else None
    return data


def _drop_options_of_another_task(data: dict[str, Any], overrides: list[tuple[str, str]]) -> None:
    """A command line that names another task.source drops the recipe's task.options: they belong to the old task.

    `tutorlm run --task.source last_letters` on the default recipe (coin_flip, {num_people: 4}) must not
    hand num_people to last_letters. Options given on the command line are applied after this.
    """
    task = data.get("task")
    sources = [value for key, value in overrides if key == "task.source"]
    if isinstance(task, dict) and sources and sources[-1] != task.get("source"):
        task.pop("options", None)


def load_recipe(
    path: str | Path | None = None, overrides: list[tuple[str, str]] = (), cls: type = Recipe,
    base: dict[str, Any] | None = None, base_name: str = "",
) -> Any:
    """A checked config from a YAML file or a shipped recipe's name (or `base`, or the defaults) plus command-line
    overrides."""
    data: dict[str, Any] = copy.deepcopy(base) if base is not None and path is None else {}
    where = base_name if base is not None and path is None else "command line"
    if path is not None:
        path = resolve_recipe(str(path))
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such recipe file")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: invalid YAML: {error}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a recipe must be a mapping of stage sections, got {type(data).__name__}")
        if data.get("teachers") and "teacher" in data:
            raise ConfigError(f"{path}: give either teacher (one) or teachers (a list), not both; with teachers, the "
                              "last one is the teacher that is evaluated")
    if data.get("teachers") and any(key.startswith("teacher.") for key, _ in overrides):
        raise ConfigError(f"{where}: --teacher.* settings do not apply to a recipe with several teachers; set each "
                          "one's fields in its teachers entry")
    if overrides:
        _drop_options_of_another_task(data, overrides)
        data = apply_overrides(data, list(overrides), cls)
        where = f"{where} + command line" if path is not None else where
    return from_dict(cls, data, where)


def describe_fields(cls: type, prefix: str) -> list[tuple[str, str, str]]:
    """(flag, default, help) for every field of a config section, for `--help` texts and docs."""
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append((f"--{prefix}.{f.name}", json.dumps(default), f.metadata.get("help", "")))
    return rows


def default_recipe_path() -> Path:
    """recipes/default.yaml, shipped inside the package so `tutorlm run` works from any directory."""
    return Path(str(resources.files("tutorlm").joinpath("recipes/default.yaml")))


def resolve_recipe(name: str | None) -> Path:
    """A recipe file: a path, the name of a shipped recipe (default, openai-teacher, ...), or the default."""
    shipped = default_recipe_path().parent
    if name is None:
        return default_recipe_path()
    if Path(name).exists():
        return Path(name)
    candidate = shipped / f"{name.removesuffix('.yaml')}.yaml"
    if candidate.exists():
        return candidate
    names = ", ".join(shipped_recipes())
    raise ConfigError(f"{name}: no such recipe file, and not a shipped recipe ({names})")


def shipped_recipes() -> list[str]:
    """The names of the recipes shipped in tutorlm/recipes/."""
    return sorted(path.stem for path in default_recipe_path().parent.glob("*.yaml"))
