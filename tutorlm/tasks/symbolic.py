"""Symbolic reasoning tasks from Wei et al. 2022 (chain-of-thought): last-letter concatenation and coin flip.

Both are the tasks Fine-tune-CoT (Ho et al. 2023) distils on. Questions are drawn from a word list and
a name list that ship with the project, so every example is exact and reproducible from its seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from importlib import resources
from typing import ClassVar

from tutorlm.tasks.base import Example, answer_sentence

NAMES = (
    "Alice Bob Claire Dave Eve Frank Grace Hank Irene Jack Karen Leo Maria Nick Olga Paul Quinn Rosa Sam Tina "
    "Umar Vera Walt Xena Yuri Zoe Amir Bella Carlos Diana Elena Felix Gina Hugo Ivan Julia Kevin Lena Mason Nora "
    "Oscar Priya Ravi Sofia Tomas Uma Victor Wendy Yasmin Zack"
).split()


def _words() -> list[str]:
    return resources.files("tutorlm.tasks").joinpath("words.txt").read_text(encoding="utf-8").split()


@dataclass
class LastLetters:
    """Concatenate the last letters of N English words (Wei et al. 2022)."""

    num_words: int = 4

    answer_type: ClassVar[str] = "text"

    def __post_init__(self) -> None:
        if not 1 <= self.num_words <= 20:
            raise ValueError(f"num_words must be between 1 and 20, got {self.num_words}")
        self._words = _words()

    def draw(self, rng: random.Random) -> Example:
        words = rng.sample(self._words, self.num_words)
        quoted = ", ".join(f'"{word}"' for word in words)
        question = f"Take the last letter of each word in {quoted} and concatenate them."
        answer = "".join(word[-1] for word in words)
        steps = [f'The last letter of "{word}" is "{word[-1]}".' for word in words]
        steps.append(f'Concatenating them in order gives "{answer}".')
        steps.append(answer_sentence(answer))
        return Example(id="", question=question, answer=answer, rationale="\n".join(steps), meta={"words": words})


@dataclass
class CoinFlip:
    """A coin starts heads up; N people each flip it or not. Is it still heads up? (Wei et al. 2022)"""

    num_people: int = 4

    answer_type: ClassVar[str] = "boolean"

    def __post_init__(self) -> None:
        if not 1 <= self.num_people <= len(NAMES):
            raise ValueError(f"num_people must be between 1 and {len(NAMES)}, got {self.num_people}")

    def draw(self, rng: random.Random) -> Example:
        people = rng.sample(NAMES, self.num_people)
        flips = [rng.random() < 0.5 for _ in people]
        sentences = [
            f"{person} flips the coin." if flipped else f"{person} does not flip the coin."
            for person, flipped in zip(people, flips)
        ]
        question = "A coin is heads up. " + " ".join(sentences) + " Is the coin still heads up?"
        heads = True
        steps = ["The coin starts heads up."]
        for person, flipped in zip(people, flips):
            if flipped:
                heads = not heads
                steps.append(f"{person} flips it, so it is now {'heads' if heads else 'tails'} up.")
            else:
                steps.append(f"{person} does not flip it, so it stays {'heads' if heads else 'tails'} up.")
        answer = "Yes" if heads else "No"
        steps.append(f"The coin ends {'heads' if heads else 'tails'} up.")
        steps.append(answer_sentence(answer))
        return Example(
            id="", question=question, answer=answer, rationale="\n".join(steps), meta={"flips": sum(flips)}
        )
