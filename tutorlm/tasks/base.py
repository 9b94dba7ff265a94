"""What every task shares: the `Example` record, prompts with a fixed answer line, grading, and splits.

Splits are disjoint by construction: an example belongs to the split that a hash of its question
assigns it to (10% test, 10% validation, 80% train), whatever the seed. A generator draws candidates
from a seeded RNG and keeps those that hash into the requested split, so changing the seed gives new
examples but never moves a test question into train.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from tutorlm import verify
from tutorlm.errors import ConfigError, DataError

SPLITS = ("train", "validation", "test")
# Buckets out of 100, by hash of the question: test 0-9, validation 10-19, train 20-99.
_SPLIT_BUCKETS = {"test": range(0, 10), "validation": range(10, 20), "train": range(20, 100)}

ANSWER_LINE = "The answer is"


@dataclass
class Example:
    """One question with a checkable gold answer."""

    id: str
    question: str
    answer: str  # the gold answer, as text; for multiple choice the letter ("A", "B", ...)
    choices: list[str] | None = None
    rationale: str | None = None  # a step-by-step solution ending in the answer line, when one is known
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Example":
        return cls(
            id=str(row["id"]),
            question=row["question"],
            answer=str(row["answer"]),
            choices=row.get("choices"),
            rationale=row.get("rationale"),
            meta=dict(row.get("meta") or {}),
        )


def question_hash(question: str) -> str:
    return hashlib.sha256(question.encode("utf-8")).hexdigest()


def split_of(question: str) -> str:
    """The split a question belongs to, from its hash alone."""
    bucket = int(question_hash(question)[:8], 16) % 100
    return next(name for name, buckets in _SPLIT_BUCKETS.items() if bucket in buckets)


def example_id(task_name: str, question: str) -> str:
    """A stable id: the same question gets the same id in every run, so caches and evals line up."""
    return f"{task_name}-{question_hash(question)[:12]}"


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def sample_split(
    task_name: str,
    draw: Callable[[random.Random], Example],
    *,
    split: str,
    n: int,
    seed: int,
    max_draws_per_example: int = 200,
) -> list[Example]:
    """`n` distinct examples of one split, drawn with `draw` from an RNG seeded by (task, split, seed)."""
    check_split(split)
    rng = random.Random(f"{task_name}/{split}/{seed}")
    examples: list[Example] = []
    seen: set[str] = set()
    draws = 0
    while len(examples) < n:
        draws += 1
        if draws > max_draws_per_example * max(n, 10):
            raise DataError(
                f"task {task_name!r} could only make {len(examples)} distinct {split} examples of the {n} asked for: "
                "its settings allow too few different questions; raise the difficulty settings or ask for fewer"
            )
        example = draw(rng)
        if example.question in seen or split_of(example.question) != split:
            continue
        seen.add(example.question)
        example.id = example_id(task_name, example.question)
        examples.append(example)
    return examples


def format_question(example: Example) -> str:
    """The question with its lettered choices, as the model sees it."""
    if not example.choices:
        return example.question
    options = "\n".join(f"({verify.LETTERS[i]}) {choice}" for i, choice in enumerate(example.choices))
    return f"{example.question}\n\nOptions:\n{options}"


# The tool's note, before the answer instruction when a task's models may run Python (task.tools python)
TOOL_NOTE = ("You can run Python: put code in a ```python block that prints what you need, and its output will appear "
             "in an ```output block after it.")


def answer_instruction(answer_type: str, tools: bool = False) -> str:
    """The instruction after every question: one answer line for all tasks, asked for without a placeholder; with
    `tools`, the Python tool's note before it.

    Worded "finish with the line "The answer is X." where X is ...", SmolLM2-135M-Instruct wrote a literal
    "X" as its answer in 65% of multistep-arithmetic answers; "followed by ..." took that to 0% and its
    accuracy from 0% to 7% (benchmarks/prompt_wording.py).
    """
    if answer_type == "choice":
        what = "the letter of your choice in parentheses"
    elif answer_type == "boolean":
        what = "Yes or No"
    else:
        what = "your final answer"
    note = f"{TOOL_NOTE} " if tools else ""
    return f'{note}Think step by step, then finish with a line that says "{ANSWER_LINE}" followed by {what}.'


def build_prompt(
    example: Example,
    answer_type: str,
    *,
    system_prompt: str | None = None,
    few_shot: Sequence[Example] = (),
    instruction: str | None = None,
) -> list[dict[str, str]]:
    """Chat messages asking for a step-by-step answer that ends with the task's answer line.

    Few-shot examples become earlier user/assistant turns; each needs a rationale.
    """
    instruction = instruction or answer_instruction(answer_type)
    messages: list[dict[str, str]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    for shot in few_shot:
        if not shot.rationale:
            raise DataError(f"few-shot example {shot.id} has no rationale to show")
        messages.append({"role": "user", "content": f"{format_question(shot)}\n\n{instruction}"})
        messages.append({"role": "assistant", "content": shot.rationale})
    messages.append({"role": "user", "content": f"{format_question(example)}\n\n{instruction}"})
    return messages


def answer_sentence(answer: str, answer_type: str = "text") -> str:
    """The closing line of a reference rationale, in the shape the prompt asks for."""
    if answer_type == "choice":
        return f"{ANSWER_LINE} ({answer})."
    return f"{ANSWER_LINE} {answer}."


class Task:
    """A source of examples plus the rules for prompting and grading them.

    Built-in generators and file datasets both become a `Task`; they differ only in `load`, the
    function that returns `n` examples of a split for a seed.
    """

    def __init__(
        self,
        name: str,
        answer_type: str,
        load: Callable[[str, int | None, int], list[Example]],
        *,
        fallback: bool = True,
        drop_articles: bool = True,
        description: str = "",
        tools: str = "none",
        tool_calls: int = 4,
    ) -> None:
        if answer_type not in verify.ANSWER_TYPES:
            raise ConfigError(f"unknown answer type {answer_type!r}; choose one of {', '.join(verify.ANSWER_TYPES)}")
        self.name = name
        self.answer_type = answer_type
        self.fallback = fallback
        self.drop_articles = drop_articles
        self.description = description
        self.tools, self.tool_calls = tools, tool_calls  # task.tools: "python" when models may run code
        self._load = load

    def examples(self, split: str = "train", n: int | None = None, seed: int = 0) -> list[Example]:
        """Examples of one split: the first `n` (all when None; built-in tasks need `n`)."""
        check_split(split)
        return self._load(split, n, seed)

    def part_of(self, example: Example) -> "Task":
        """The task an example comes from: itself, or one of a mix's tasks (tasks/mixed.py)."""
        return self

    def answer_type_of(self, example: Example) -> str:
        if self.answer_type == "auto":
            return verify.infer_answer_type(example.answer, example.choices)
        return self.answer_type

    def instruction(self, example: Example) -> str:
        """What follows the question in every prompt: the answer line's instruction (and the tool's note)."""
        return answer_instruction(self.answer_type_of(example), self.tools == "python")

    def prompt(self, example: Example, **options: Any) -> list[dict[str, str]]:
        return build_prompt(example, self.answer_type_of(example), instruction=self.instruction(example), **options)

    def grade(self, example: Example, completion: str, *, timeout: float = 5.0) -> verify.Verdict:
        return verify.grade(
            completion,
            example.answer,
            answer_type=self.answer_type_of(example),  # type: ignore[arg-type]
            choices=example.choices,
            fallback=self.fallback,
            drop_articles=self.drop_articles,
            timeout=timeout,
        )
