"""Text generation backends: one small interface for teachers now and evaluated models later.

A backend takes a list of `Request`s (chat messages plus a sample index) and `Sampling` settings and
calls `on_result(request, completion_or_error)` once per request, as each one finishes, from the
calling thread. That lets the caller commit each result to the cache the moment it exists.

- `openai`:    any OpenAI-compatible chat-completions server (vLLM, SGLang, llama.cpp, Ollama, APIs)
- `hf`:        a local transformers model (hub id, directory, or GGUF file), batched
- `reference`: a built-in task's reference solver: offline and deterministic

Errors: `FatalBackendError` stops the whole run (bad key, unknown model); `Unanswerable` passed to `on_result` is a
request the teacher can never answer (left out, not retried); any other exception is a per-request failure that a
rerun retries.
"""

from __future__ import annotations

from typing import Any

from tutorlm.backends.base import Backend, Completion, OnResult, Request, RequestFailed, Sampling, Unanswerable
from tutorlm.errors import ConfigError, FatalBackendError

__all__ = ["Backend", "Completion", "FatalBackendError", "OnResult", "Request", "RequestFailed", "Sampling", "Unanswerable",
           "make_backend"]


def make_backend(config: Any, task: Any = None) -> Backend:
    """The backend a TeacherConfig (or eval model config) describes."""
    if config.backend == "openai":
        from tutorlm.backends.openai import OpenAIBackend

        return OpenAIBackend(config)
    if config.backend == "hf":
        from tutorlm.backends.hf import HFBackend

        return HFBackend(config)
    if config.backend == "reference":
        from tutorlm.backends.reference import ReferenceBackend

        return ReferenceBackend(task)
    raise ConfigError(f"unknown backend {config.backend!r}: choose openai, hf or reference")
