"""Where a rationale first goes wrong: the first line whose arithmetic does not hold, or (with the task's own
solver) the first line that computes a value no step of the right solution has.

    first_wrong_line("3 * 4 = 12.\\n12 + 5 = 18.\\nThe answer is 18.")   # -> 1

SCoRe ("From Correction to Mastery") has the teacher continue a student's attempt from the verified prefix
before its first critical error; finding that error is this module's job where a program can do it. A line is
checked equation by equation: in `a = b = c` each side that is plain arithmetic (numbers, + - * / × ÷,
parentheses; `$`, thousands commas and a trailing `.` are tolerated) is evaluated, and two neighbouring sides
that both evaluate and differ make the line wrong. Text around the arithmetic is ignored ("She has 3 * 4 = 12
apples." checks 3 * 4 = 12); a left side is checked only when it is an operation (a bare "x = 12" says
nothing) not led by a word that changes it ("half of 20 + 4 = 14"), and a line without a checkable equation is
never wrong by itself: the finder errs towards missing an error, never towards inventing one.

`values`, when given, are the values a right solution computes (for multistep arithmetic, the value of every
sub-expression): a line whose equation ends in a value outside them computed the wrong thing, even with its
arithmetic right (the student copied a wrong operand).
"""

from __future__ import annotations

import ast
import re
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from tutorlm.tasks.base import Example

# The characters a side's arithmetic is made of, once the unicode operators have become Python's.
_ARITHMETIC = re.compile(r"[-+*/().\d\s$,]+")
_OPERATORS = {"×": "*", "÷": "/", "−": "-", "–": "-"}  # times, divide, minus sign, en dash
_TOLERANCE = 1e-6
_TIMES = re.compile(r"(?<=[\d)])\s+[xX]\s+(?=[-\d($])")  # "300 x 1/5": x as times between numbers ("4x" is algebra)
# Words that change the arithmetic after them ("half of 20 + 4 = 14"): such a left side is not checked.
_MODIFIER = re.compile(r"(\b(of|times|twice|half|double|triple|per|each)|x|%)\s*$", re.IGNORECASE)


def _evaluate(side: str) -> float | None:
    """The value of one side's plain arithmetic (operators already Python's), or None when it is not that (a bare number
    counts)."""
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", side).replace("$", "").strip().rstrip(".").strip()
    if not text or not re.search(r"\d", text):
        return None
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return None
    try:
        return float(_value(tree.body))
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def _value(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _value(node.operand)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        return left / right
    raise ValueError("not plain arithmetic")


def equation_values(line: str) -> list[float | None]:
    """Each side of the line's equation chain evaluated (None where a side is not arithmetic): the first side is the
    arithmetic that ends the text before the first '=', the last the arithmetic that starts the text after the last."""
    for symbol, python in _OPERATORS.items():
        line = line.replace(symbol, python)
    line = _TIMES.sub(" * ", line)
    parts = line.split("=")
    if len(parts) < 2:
        return []
    values = []
    for index, part in enumerate(parts):
        if index == 0:  # the arithmetic at its end, when it is an operation not led by a word that changes it
            runs = list(_ARITHMETIC.finditer(part))
            side = runs[-1].group() if runs and runs[-1].end() >= len(part.rstrip()) else ""
            before = part[: runs[-1].start()] if side else ""
            fragment = re.match(r"\s*([+*/]|-\s)", side)  # the tail of an operation that starts in words ("X + 80")
            if not re.search(r"\d\s*[-+*/]", side) or fragment or _MODIFIER.search(before) or (
                    re.search(r"\w$", before) and not side[:1].isspace()):  # glued to a word: "X2 + 3"
                side = ""
        elif index == len(parts) - 1:  # the arithmetic at its start, unless a percentage ("= 40%": of what?)
            found = _ARITHMETIC.match(part)
            side = found.group() if found and not part[found.end():].startswith("%") else ""
        else:
            side = part
        values.append(_evaluate(_balanced(side, index == 0)))
    return values


def _balanced(side: str, leading: bool) -> str:
    """The side with the unmatched parentheses its cut left removed ('(so 3 * 4' -> '3 * 4')."""
    text = side
    while text.count("(") > text.count(")"):
        at = text.index("(") if leading else text.rindex("(")
        text = text[:at] + text[at + 1:]
    while text.count(")") > text.count("("):
        at = text.rindex(")")
        text = text[:at] + text[at + 1:]
    return text


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= _TOLERANCE * max(1.0, abs(a), abs(b))


def line_is_wrong(line: str, values: Iterable[float] | None = None) -> bool:
    sides = equation_values(line)
    for left, right in zip(sides, sides[1:]):
        if left is not None and right is not None and not _close(left, right):
            return True
    if values is not None and sides and sides[-1] is not None:
        return not any(_close(sides[-1], value) for value in values)
    return False


def first_wrong_line(text: str, values: Iterable[float] | None = None) -> int | None:
    """The index of the first line of `text` that is wrong (see the module's docstring), or None."""
    known = list(values) if values is not None else None
    for index, line in enumerate(text.split("\n")):
        if line_is_wrong(line, known):
            return index
    return None


def subexpression_values(expression: str) -> list[float]:
    """The value of every sub-expression of plain arithmetic text, innermost first (the values its steps compute)."""
    found: list[float] = []

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.BinOp):
            walk(node.left)
            walk(node.right)
        value = _value(node)
        found.append(float(value))
        return value

    walk(ast.parse(expression, mode="eval").body)
    return found


def first_error(example: "Example", text: str) -> int | None:
    """The first wrong line of an attempt at `example`: by its arithmetic, and where the example carries its
    expression (the arithmetic tasks), by the values a right solution computes."""
    expression = example.meta.get("expression")
    values = None
    if expression:
        try:
            values = subexpression_values(expression)
        except (SyntaxError, ValueError, ZeroDivisionError):
            values = None
    return first_wrong_line(text, values)


# Where no line's arithmetic is wrong (GSM8K's errors are mostly in the plan), a teacher can be asked which line is
# the first wrong one (`teacher.locate: teacher`): shown the question, the gold answer and the attempt's numbered
# lines, it answers with a number. The gold answer is in this prompt only, never in the prompt the student learns.
LOCATE_TOKENS = 8  # the teacher's reply is a line number


def locate_messages(example: "Example", text: str) -> list[dict[str, str]]:
    """The prompt asking a teacher for the first wrong line of `text`, an attempt at `example` (its non-empty lines
    numbered from 1)."""
    numbered = "\n".join(f"{number}: {line}" for number, (_, line) in enumerate(_numbered_lines(text), start=1))
    return [{"role": "user", "content": (
        f"Question: {example.question}\nThe correct final answer is {example.answer}.\n\n"
        f"A student's solution, its lines numbered:\n{numbered}\n\n"
        "The student's final answer is wrong. Which line is the first one with a mistake (a wrong number, a wrong "
        "operation or a wrong plan)? Reply with the line number only.")}]


def judged_line(reply: str, text: str) -> int | None:
    """The index in `text.split("\\n")` of the line a teacher's `reply` to `locate_messages` names, or None when the
    reply names no line of it (no number, 0, or past the last line)."""
    found = re.search(r"\d+", reply)
    lines = _numbered_lines(text)
    if found is None or not 1 <= int(found.group()) <= len(lines):
        return None
    return lines[int(found.group()) - 1][0]


def _numbered_lines(text: str) -> list[tuple[int, str]]:
    """(index in text.split("\\n"), line) of each non-empty line."""
    return [(index, line) for index, line in enumerate(text.split("\n")) if line.strip()]
