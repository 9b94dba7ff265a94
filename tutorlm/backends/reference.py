"""The reference "teacher": a built-in task's own step-by-step solution, for offline, deterministic runs.

Every sample of an example is the same reference rationale (the solver is deterministic), so `n > 1`
only repeats it; curation's deduplication then keeps one.
"""

from __future__ import annotations

import time
from typing import Any

from tutorlm.backends.base import Completion, OnResult, Request, RequestFailed, Sampling


class ReferenceBackend:
    kind = "reference"
    precision = None  # no model

    def __init__(self, task: Any) -> None:
        self.task = task
        self.model_name = f"reference:{task.name}" if task is not None else "reference"
        self.counters: dict[str, int] = {}
        self._rationales: dict[str, str | None] = {}

    def add_examples(self, examples: list[Any]) -> None:
        """Make these examples' rationales available; generation calls this before `run`."""
        for example in examples:
            self._rationales[example.id] = example.rationale

    def run(self, requests: list[Request], sampling: Sampling, on_result: OnResult) -> None:
        for request in requests:
            started = time.perf_counter()
            rationale = self._rationales.get(request.example_id)
            if request.prefix is not None:
                on_result(request, RequestFailed("the reference solver writes whole solutions; it cannot continue an "
                                                 "answer from a given start (use a model teacher to correct)"))
                continue
            if not rationale:
                on_result(request, RequestFailed(f"example {request.example_id} has no reference solution"))
                continue
            words = rationale.split()
            on_result(request, Completion(
                text=rationale, finish_reason="stop",
                prompt_tokens=sum(len(m["content"].split()) for m in request.messages), completion_tokens=len(words),
                latency_s=time.perf_counter() - started, meta={"token_count": "words"},
            ))

    def close(self) -> None:
        pass
