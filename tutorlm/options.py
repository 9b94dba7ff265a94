"""`option`: a configuration dataclass field with its help text, shared by every config module."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def option(default: Any, help: str, *, keyed_when_set: bool = False) -> Any:
    """A dataclass field with help text (shown by `--help` and in docs). `keyed_when_set`: a setting added after runs
    existed, left out of stage keys while it has its default (`stage_key`), so that those runs stay current."""
    metadata = {"help": help, "keyed_when_set": keyed_when_set}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)
