"""The reference "teacher": a built-in task's own step-by-step solution, for offline, deterministic runs.

Every sample of an example is the same reference rationale (the solver is deterministic), so `n > 1`
only repeats it; curation's deduplication then keeps one.

With the Python tool (task.tools python) the reference computes with it: a task whose examples carry their expression
(the arithmetic tasks) is answered by a ```python block that prints it, the sandbox's ```output and the answer line.
"""

from __future__ import annotations

import time
from typing import Any

from tutorlm.backends.base import Completion, OnResult, Request, Sampling, Unanswerable
from tutorlm.tools.loop import worked_answer


class ReferenceBackend:
    kind = "reference"
    precision = None  # no model

    def __init__(self, task: Any) -> None:
        self.task = task
        self.model_name = f"reference:{task.name}" if task is not None else "reference"
        self.counters: dict[str, int] = {}
        self._rationales: dict[str, str | None] = {}
        self._examples: dict[str, Any] = {}

    def add_examples(self, examples: list[Any]) -> None:
        """Make these examples' rationales available; generation calls this before `run`."""
        for example in examples:
            self._rationales[example.id] = example.rationale
            self._examples[example.id] = example

    def _with_tool(self, request: Request) -> tuple[str | None, list[dict[str, Any]]]:
        """A rationale that computes the example's solution with Python (`worked_answer`), and its call; (None, [])
        without one."""
        example = self._examples.get(request.example_id)
        worked = worked_answer(example) if example is not None else None
        if worked is None:
            return None, []
        return worked[0], [worked[1].to_dict()]

    def run(self, requests: list[Request], sampling: Sampling, on_result: OnResult) -> None:
        for request in requests:
            started = time.perf_counter()
            rationale = self._rationales.get(request.example_id)
            if request.prefix is not None and sampling.tool_calls is None:  # with the tool: its computation follows any start
                on_result(request, Unanswerable("the reference solver writes whole solutions; it cannot continue an "
                                                 "answer from a given start (use a model teacher to correct)"))
                continue
            if not rationale:
                on_result(request, Unanswerable(f"example {request.example_id} has no reference solution"))
                continue
            meta: dict[str, Any] = {"token_count": "words"}
            if sampling.tool_calls is not None:
                worked, calls = self._with_tool(request)
                example = self._examples.get(request.example_id)
                if worked is not None:
                    rationale = worked
                elif example is None or "task" not in example.meta:  # in a mix of tasks it answers the others in words
                    on_result(request, Unanswerable(f"example {request.example_id}: no solution the reference solver can "
                                                     "compute with Python (an arithmetic expression, or a GSM8K program "
                                                     "that prints the gold)"))
                    continue
                meta["tools"] = calls
            words = rationale.split()
            on_result(request, Completion(
                text=rationale, finish_reason="stop",
                prompt_tokens=sum(len(m["content"].split()) for m in request.messages), completion_tokens=len(words),
                latency_s=time.perf_counter() - started, meta=meta,
            ))

    def close(self) -> None:
        pass
