"""Several tasks as one (`task.source: multistep_arithmetic,coin_flip`): a split takes its examples from each task in
turn, and every example is prompted, demonstrated and graded by its own task. Agentic-R1's DualDistill trains one
student on such a mix, so that it can learn which way of answering suits which kind of question; evaluation
reports each task's figures (`by_task` in the eval summary).

Each example keeps its own task's id (`multistep_arithmetic-<hash>`), so a mixed run reuses the cached answers and
evaluations of the single-task runs it shares questions with, and `meta["task"]` names the task it came from.
"""

from __future__ import annotations

import dataclasses

from tutorlm import verify
from tutorlm.tasks.base import Example, Task


class MixedTask(Task):
    """Tasks taken in turn: of `n` examples of a split the i-th task gives every k-th, starting at the i-th (the
    first n of a split are a prefix of the first n + 1, as for a single task)."""

    def __init__(self, name: str, parts: dict[str, Task]) -> None:
        super().__init__(name, "auto", self._load_mixed,
                         description="a mix of " + ", ".join(parts) + ": each example prompted and graded by its own task")
        self.parts = parts

    def _load_mixed(self, split: str, n: int | None, seed: int) -> list[Example]:
        k = len(self.parts)
        each = [part.examples(split, None if n is None else n // k + (i < n % k), seed)
                for i, part in enumerate(self.parts.values())]
        mixed = [dataclasses.replace(examples[j], meta={**examples[j].meta, "task": name})
                 for j in range(max(map(len, each), default=0))
                 for name, examples in zip(self.parts, each) if j < len(examples)]
        return mixed if n is None else mixed[:n]

    def part_of(self, example: Example) -> Task:
        name = example.meta.get("task") or example.id.rsplit("-", 1)[0]
        try:
            return self.parts[name]
        except KeyError:
            raise KeyError(f"example {example.id} is not from any task of the mix ({', '.join(self.parts)})") from None

    def answer_type_of(self, example: Example) -> str:
        return self.part_of(example).answer_type_of(example)

    def grade(self, example: Example, completion: str, *, timeout: float = 5.0) -> verify.Verdict:
        return self.part_of(example).grade(example, completion, timeout=timeout)
