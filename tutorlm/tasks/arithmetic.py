"""Arithmetic tasks: multi-digit add/subtract/multiply worked in columns, and nested expressions
(BIG-Bench Hard's multistep_arithmetic_two, with configurable depth).

Reference solutions spell out the column work (carries, borrows, partial products) or evaluate the
innermost parentheses first, so they can teach a small model the procedure, not only the result.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import ClassVar

from tutorlm.tasks.base import Example, answer_sentence

_SYMBOLS = {"+": "+", "-": "-", "*": "*"}


def _addition_steps(a: int, b: int) -> list[str]:
    digits_a, digits_b = str(a)[::-1], str(b)[::-1]
    steps, carry = [f"Add {a} and {b} column by column, starting from the ones."], 0
    for position in range(max(len(digits_a), len(digits_b))):
        x = int(digits_a[position]) if position < len(digits_a) else 0
        y = int(digits_b[position]) if position < len(digits_b) else 0
        total = x + y + carry
        carried = f" + {carry}" if carry else ""
        steps.append(f"{x} + {y}{carried} = {total}: write {total % 10}, carry {total // 10}.")
        carry = total // 10
    if carry:
        steps.append(f"Write the final carry {carry}.")
    return steps


def _subtraction_steps(a: int, b: int) -> list[str]:
    """Steps for a - b with a >= b >= 0."""
    digits_a, digits_b = str(a)[::-1], str(b)[::-1]
    steps, borrow = [f"Subtract {b} from {a} column by column, starting from the ones."], 0
    for position in range(len(digits_a)):
        x = int(digits_a[position]) - borrow
        y = int(digits_b[position]) if position < len(digits_b) else 0
        if x < y:
            steps.append(f"{x} is less than {y}, so borrow: {x + 10} - {y} = {x + 10 - y}.")
            borrow = 1
        else:
            steps.append(f"{x} - {y} = {x - y}.")
            borrow = 0
    return steps


def _multiplication_steps(a: int, b: int) -> list[str]:
    parts = [int(d) * 10**k for k, d in enumerate(str(b)[::-1]) if d != "0"]
    steps = [f"Split {b} into {' + '.join(str(p) for p in reversed(parts))}."]
    products = []
    for part in parts:
        products.append(a * part)
        steps.append(f"{a} * {part} = {a * part}.")
    running = products[0]
    for product in products[1:]:
        steps.append(f"{running} + {product} = {running + product}.")
        running += product
    return steps


@dataclass
class Arithmetic:
    """Two multi-digit numbers added, subtracted or multiplied."""

    digits: int = 3
    operations: list[str] = field(default_factory=lambda: ["+", "-", "*"])

    answer_type: ClassVar[str] = "number"

    def __post_init__(self) -> None:
        if not 1 <= self.digits <= 12:
            raise ValueError(f"digits must be between 1 and 12, got {self.digits}")
        unknown = [op for op in self.operations if op not in _SYMBOLS]
        if unknown or not self.operations:
            raise ValueError(f"operations must be a non-empty list of '+', '-', '*'; got {self.operations}")

    def draw(self, rng: random.Random) -> Example:
        low = 10 ** (self.digits - 1) if self.digits > 1 else 0
        a, b = rng.randint(low, 10**self.digits - 1), rng.randint(low, 10**self.digits - 1)
        op = rng.choice(self.operations)
        question = f"What is {a} {op} {b}?"
        if op == "+":
            answer, steps = a + b, _addition_steps(a, b)
        elif op == "-":
            answer = a - b
            if a >= b:
                steps = _subtraction_steps(a, b)
            else:
                steps = [f"{b} is larger than {a}, so the result is negative: {a} - {b} = -({b} - {a})."]
                steps += _subtraction_steps(b, a)
        else:
            answer, steps = a * b, _multiplication_steps(a, b)
        steps.append(f"So {a} {op} {b} = {answer}.")
        steps.append(answer_sentence(str(answer)))
        return Example(id="", question=question, answer=str(answer), rationale="\n".join(steps),
                       meta={"operation": op, "expression": f"{a} {op} {b}"})


def _render(node: int | tuple) -> str:
    if isinstance(node, int):
        return str(node)
    left, op, right = node
    return f"({_render(left)} {op} {_render(right)})"


def _evaluate(node: int | tuple, steps: list[str]) -> int:
    """Value of an expression tree, appending one step per operator, innermost first."""
    if isinstance(node, int):
        return node
    left, op, right = node
    x, y = _evaluate(left, steps), _evaluate(right, steps)
    value = x + y if op == "+" else x - y if op == "-" else x * y
    steps.append(f"{x} {op} {y} = {value}." if isinstance(left, int) and isinstance(right, int) else
                 f"{_render(node)} = {x} {op} {y} = {value}.")
    return value


@dataclass
class MultistepArithmetic:
    """Nested expressions with +, - and * and parentheses, e.g. ((-3 + 5) * (7 - -2))."""

    depth: int = 2
    max_operand: int = 9

    answer_type: ClassVar[str] = "number"

    def __post_init__(self) -> None:
        if not 1 <= self.depth <= 5:
            raise ValueError(f"depth must be between 1 and 5, got {self.depth}")
        if self.max_operand < 1:
            raise ValueError(f"max_operand must be at least 1, got {self.max_operand}")

    def _tree(self, rng: random.Random, depth: int) -> int | tuple:
        if depth == 0:
            return rng.randint(-self.max_operand, self.max_operand)
        return (self._tree(rng, depth - 1), rng.choice("+-*"), self._tree(rng, depth - 1))

    def draw(self, rng: random.Random) -> Example:
        tree = self._tree(rng, self.depth)
        expression = _render(tree)
        steps = ["Work from the innermost parentheses outwards."]
        answer = _evaluate(tree, steps)
        steps.append(answer_sentence(str(answer)))
        return Example(
            id="", question=f"What is the value of {expression}?", answer=str(answer), rationale="\n".join(steps),
            meta={"expression": expression},
        )
