"""The first-error finder (tasks/steps.py): the first line whose arithmetic is wrong, or that computes a value no
step of the right solution has; never a right line, on the reference rationales of the tasks that have them."""

from __future__ import annotations

import pytest

from tutorlm.config import TaskConfig
from tutorlm.tasks import load_task
from tutorlm.tasks.steps import equation_values, first_error, first_wrong_line, subexpression_values


@pytest.mark.parametrize("line,wrong", [
    ("3 * 4 = 12.", False),
    ("3 * 4 = 13.", True),
    ("((3 * -5) - (-5 + 6)) = -15 - 1 = -16.", False),
    ("((3 * -5) - (-5 + 6)) = -15 - 1 = -17.", True),  # the last link of a chain
    ("She has 3 * 4 = 14 apples.", True),  # words around the arithmetic
    ("Total: $1,200 + $300 = $1,500.", False),  # dollars and thousands commas
    ("He pays 300 x 1/5 = 60 dollars", False),  # x as times between numbers
    ("Emma has 120 – 80 - 15 = 25 more points.", False),  # an en dash as minus
    ("2 × 3 = 7", True),
    ("half of 20 + 4 = 14", False),  # a word that changes the arithmetic: not checked
    ("50% of 20 = 10", False),
    ("x = 12", False),  # a bare value says nothing
    ("the chances are 3 / 6 = 50%.", False),  # a percentage: of what?
    ("Janeth pays $2000x 10/100 = $200.", False),
    ("Alex: 5+(4x-13)=4x-8", False),  # algebra
    ("X + X + 80 = 100", False),  # algebra: the left side starts in words
    ("The answer is 18.", False),
])
def test_a_line_is_wrong_only_when_two_sides_of_its_equation_differ(line, wrong):
    assert (first_wrong_line(line) == 0) is wrong, equation_values(line)


def test_the_first_wrong_line_of_an_arithmetic_trace():
    trace = "Work from the innermost parentheses outwards.\n3 * -5 = -15.\n-5 + 6 = 2.\n" \
            "((3 * -5) - (-5 + 6)) = -15 - 2 = -17.\nThe answer is -17."
    assert first_wrong_line(trace) == 2


def test_right_arithmetic_on_a_wrong_operand_is_found_by_the_solutions_values():
    values = subexpression_values("((3 * -5) - (-5 + 6))")
    assert values == [3, -5, -15, -5, 6, 1, -16]
    trace = "3 * 5 = 15.\n-5 + 6 = 1.\n15 - 1 = 14.\nThe answer is 14."  # copied 5 for -5: every line's arithmetic holds
    assert first_wrong_line(trace) is None and first_wrong_line(trace, values) == 0


@pytest.mark.parametrize("task", ["multistep_arithmetic", "last_letters"])
def test_no_reference_rationale_is_found_wrong(task):
    examples = load_task(TaskConfig(source=task)).examples("train", 300)
    assert all(first_error(example, example.rationale) is None for example in examples if example.rationale)


def test_an_arithmetic_attempt_is_checked_against_its_question():
    example = load_task(TaskConfig(source="multistep_arithmetic")).examples("test", 1)[0]
    lines = example.rationale.split("\n")
    assert first_error(example, example.rationale) is None
    step = next(i for i, line in enumerate(lines) if "=" in line)
    *head, value = lines[step].rstrip(".").split("= ")
    lines[step] = "= ".join(head) + f"= {int(value) + 1}."
    assert first_error(example, "\n".join(lines)) == step
