"""Logic tasks: tracking swapped objects (BIG-Bench Hard's tracking_shuffled_objects, asked as "who holds X
at the end") and ProntoQA-style deduction (Saparov & He 2023) over fictional categories, so that world
knowledge cannot shortcut the chain of rules.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from tutorlm.tasks.base import Example, answer_sentence
from tutorlm.tasks.symbolic import NAMES
from tutorlm.verify import LETTERS

COLORS = "red blue green yellow purple orange white black pink brown gray teal".split()

# Made-up category names in the ProntoQA manner, and adjectives for the final property.
CATEGORIES = (
    "wumpus yumpus zumpus dumpus rompus numpus tumpus vumpus impus jompus gorpus shumpus lempus sterpus "
    "grimpus lorpus brimpus florpus quimpus snerpus"
).split()
PROPERTIES = "bitter bright cold dull fast happy hot large liquid metallic opaque red shy small sour sweet wooden".split()


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass
class ObjectTracking:
    """N people hold balls; pairs swap in rounds; who holds a given ball at the end? (multiple choice)"""

    num_people: int = 3
    num_swaps: int = 3

    answer_type: ClassVar[str] = "choice"

    def __post_init__(self) -> None:
        if not 2 <= self.num_people <= len(COLORS):
            raise ValueError(f"num_people must be between 2 and {len(COLORS)}, got {self.num_people}")
        if self.num_swaps < 1:
            raise ValueError(f"num_swaps must be at least 1, got {self.num_swaps}")

    def draw(self, rng: random.Random) -> Example:
        people = rng.sample(NAMES, self.num_people)
        colors = rng.sample(COLORS, self.num_people)
        holding = dict(zip(people, colors))
        start = ", ".join(f"{person} has {_article(color)} {color} ball" for person, color in holding.items())
        swaps = [tuple(rng.sample(people, 2)) for _ in range(self.num_swaps)]
        target = rng.choice(colors)
        ordinals = ["First", "Then", "Next", "After that", "Finally"]
        swap_text = " ".join(
            f"{ordinals[min(i, 3) if i < self.num_swaps - 1 else 4]}, {a} and {b} swap balls."
            for i, (a, b) in enumerate(swaps)
        )
        question = f"{', '.join(people[:-1])} and {people[-1]} each hold a ball: {start}. {swap_text} " \
                   f"At the end, who has the {target} ball?"
        steps = [f"At the start: {start}."]
        for a, b in swaps:
            holding[a], holding[b] = holding[b], holding[a]
            state = ", ".join(f"{person} has {color}" for person, color in holding.items())
            steps.append(f"{a} and {b} swap: {state}.")
        owner = next(person for person, color in holding.items() if color == target)
        letter = LETTERS[people.index(owner)]
        steps.append(f"So the {target} ball is with {owner}, option ({letter}).")
        steps.append(answer_sentence(letter, "choice"))
        return Example(id="", question=question, answer=letter, choices=list(people), rationale="\n".join(steps))


@dataclass
class Deduction:
    """ProntoQA-style: a chain of "Every A is a B." rules with fictional names; true or false?"""

    hops: int = 3
    distractors: int = 2

    answer_type: ClassVar[str] = "boolean"

    def __post_init__(self) -> None:
        if not 1 <= self.hops <= len(CATEGORIES) - 2:
            raise ValueError(f"hops must be between 1 and {len(CATEGORIES) - 2}, got {self.hops}")
        if not 0 <= self.distractors <= len(CATEGORIES) - self.hops - 1:
            raise ValueError(f"distractors must be between 0 and {len(CATEGORIES) - self.hops - 1}, got {self.distractors}")

    def draw(self, rng: random.Random) -> Example:
        names = rng.sample(CATEGORIES, self.hops + 1 + self.distractors)
        chain, others = names[: self.hops + 1], names[self.hops + 1 :]
        entity = rng.choice(NAMES)
        prop = rng.choice(PROPERTIES)
        prop_holds = rng.random() < 0.5
        rules = [f"Every {a} is a {b}." for a, b in zip(chain, chain[1:])]
        rules.append(f"Every {chain[-1]} is {'' if prop_holds else 'not '}{prop}.")
        # Distractors: rules about categories the entity never belongs to, some with the opposite property.
        for other in others:
            rules.append(f"Every {other} is {'not ' if rng.random() < 0.5 else ''}{prop}.")
        rng.shuffle(rules)
        asked_positive = rng.random() < 0.5
        claim = f"{entity} is {'' if asked_positive else 'not '}{prop}."
        question = " ".join(rules) + f" {entity} is a {chain[0]}. True or false: {claim}"
        steps = [f"{entity} is a {chain[0]}."]
        for a, b in zip(chain, chain[1:]):
            steps.append(f"Every {a} is a {b}, so {entity} is a {b}.")
        steps.append(
            f"Every {chain[-1]} is {'' if prop_holds else 'not '}{prop}, "
            f"so {entity} is {'' if prop_holds else 'not '}{prop}."
        )
        answer = "True" if prop_holds == asked_positive else "False"
        steps.append(f'The claim "{claim}" is therefore {answer.lower()}.')
        steps.append(answer_sentence(answer))
        return Example(id="", question=question, answer=answer, rationale="\n".join(steps), meta={"hops": self.hops})
