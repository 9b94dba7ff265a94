"""Symbolic equivalence of two LaTeX answers, with a hard time bound.

The check runs in a helper subprocess (`python -m tutorlm._symbolic`) that reads one JSON request per
line on stdin and writes one JSON verdict per line on stdout. When a request overruns its time bound
the subprocess is killed and the answers count as different; the next request starts a new one. This
works from any thread and from daemonic worker processes (which may not fork multiprocessing
children), where `signal.alarm` does not.

Backends: HF math-verify's LaTeX parser when installed (its `ExprExtractionConfig` is not used: it
calls sympy's `parse_expr`, which evaluates its input), else `parse_latex_subset` below, a
recursive-descent parser for the arithmetic part of LaTeX that builds sympy objects directly.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from typing import Any

_STARTUP_TIMEOUT = 60.0
_MEMORY_LIMIT_BYTES = 2 * 1024**3


class _Helper:
    """One long-lived helper subprocess, restarted after a timeout or crash. Calls are serialised."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self._replies: queue.Queue[str | None] = queue.Queue()

    def _start(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tutorlm._symbolic"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        self._replies = queue.Queue()
        threading.Thread(target=self._read, args=(self._process, self._replies), daemon=True).start()
        ready = self._replies.get(timeout=_STARTUP_TIMEOUT)
        if ready != "ready":
            raise RuntimeError("the symbolic-check helper process did not start")

    @staticmethod
    def _read(process: subprocess.Popen[str], replies: queue.Queue[str | None]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            replies.put(line.strip())
        replies.put(None)

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def check(self, predicted: str, gold: str, backend: str, timeout: float) -> bool:
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                try:
                    self._start()
                except (queue.Empty, RuntimeError, OSError):
                    self._kill()
                    return False
            assert self._process is not None and self._process.stdin is not None
            try:
                self._process.stdin.write(json.dumps({"predicted": predicted, "gold": gold, "backend": backend}) + "\n")
                self._process.stdin.flush()
                reply = self._replies.get(timeout=timeout)
            except (queue.Empty, BrokenPipeError, OSError):
                self._kill()
                return False
            if reply is None:  # the helper died (memory limit, crash)
                self._kill()
                return False
            return bool(json.loads(reply)["equal"])


_HELPER = _Helper()


def symbolic_equal(predicted: str, gold: str, *, timeout: float = 5.0, backend: str = "auto") -> bool:
    """Whether two LaTeX answers are mathematically equal; False on parse failure or after `timeout` seconds.

    backend: "auto" (math-verify when installed, then the sympy subset parser), "math-verify" or "sympy".
    """
    if len(predicted) > 300 or len(gold) > 300:
        return False
    return _HELPER.check(predicted, gold, backend, timeout)


# ---------------------------------------------------------------------------------------------------
# What runs inside the helper process
# ---------------------------------------------------------------------------------------------------


class LatexSubsetError(ValueError):
    pass


_COMMANDS = ("frac", "dfrac", "tfrac", "sqrt", "pi", "cdot", "times", "div", "left", "right", "infty")


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char.isspace() or text.startswith("\\,", position) or text.startswith("\\!", position):
            position += 1 if char.isspace() else 2
            continue
        if char == "\\":
            end = position + 1
            while end < len(text) and text[end].isalpha():
                end += 1
            command = text[position + 1 : end]
            if command not in _COMMANDS:
                raise LatexSubsetError(f"unsupported command \\{command}")
            if command not in ("left", "right"):
                tokens.append("\\" + command)
            position = end
            continue
        if char.isdigit() or char == ".":
            end = position
            while end < len(text) and (text[end].isdigit() or text[end] == "."):
                end += 1
            tokens.append(text[position:end])
            position = end
            continue
        if char.isalpha() or char in "+-*/^(){}[]":
            tokens.append(char)
            position += 1
            continue
        raise LatexSubsetError(f"unexpected character {char!r}")
    return tokens


def parse_latex_subset(text: str) -> Any:
    """A sympy expression for LaTeX arithmetic: numbers, one-letter symbols, \\pi, + - * / ^, \\frac,
    \\sqrt (with an optional index), \\cdot, \\times, \\div, parentheses and implicit multiplication."""
    import sympy

    tokens = _tokenize(text.replace("−", "-"))
    position = 0

    def peek() -> str | None:
        return tokens[position] if position < len(tokens) else None

    def take(expected: str | None = None) -> str:
        nonlocal position
        token = peek()
        if token is None or (expected is not None and token != expected):
            raise LatexSubsetError(f"expected {expected or 'more input'}, found {token}")
        position += 1
        return token

    def expression() -> Any:
        value = term()
        while peek() in ("+", "-"):
            value = value + term() if take() == "+" else value - term()
        return value

    def term() -> Any:
        value = unary()
        while True:
            token = peek()
            if token in ("*", "\\cdot", "\\times"):
                take()
                value = value * unary()
            elif token in ("/", "\\div"):
                take()
                value = value / unary()
            elif token is not None and token not in ("+", "-", ")", "}", "]", "^"):
                value = value * power()  # implicit multiplication: 2x, 3\pi, 2(x+1)
            else:
                return value

    def unary() -> Any:
        if peek() == "-":
            take()
            return -unary()
        if peek() == "+":
            take()
            return unary()
        return power()

    def power() -> Any:
        base = atom()
        if peek() == "^":
            take()
            return sympy.Pow(base, unary() if peek() != "{" else atom(), evaluate=False)
        return base

    def atom() -> Any:
        token = take()
        if token in ("(", "{", "["):
            value = expression()
            take({"(": ")", "{": "}", "[": "]"}[token])
            return value
        if token in ("\\frac", "\\dfrac", "\\tfrac"):
            numerator, denominator = group(), group()
            return numerator / denominator
        if token == "\\sqrt":
            index = 2
            if peek() == "[":
                take("[")
                index = expression()
                take("]")
            return sympy.root(group(), index)
        if token == "\\pi":
            return sympy.pi
        if token == "\\infty":
            return sympy.oo
        if token[0].isdigit() or token[0] == ".":
            return sympy.Rational(token)
        if token.isalpha():
            return sympy.Symbol(token)
        raise LatexSubsetError(f"unexpected {token}")

    def group() -> Any:
        if peek() == "{":
            take("{")
            value = expression()
            take("}")
            return value
        token = take()  # \frac12 and \sqrt2: a single digit or letter
        if token[0].isdigit() and len(token) > 1:  # "12" of \frac12 is two arguments: keep the rest for the next
            tokens.insert(position, token[1:])
        return sympy.Rational(token[0]) if token[0].isdigit() else sympy.Symbol(token[0])

    result = expression()
    if position != len(tokens):
        raise LatexSubsetError(f"unexpected {tokens[position]}")
    return result


def _equal_sympy(predicted: str, gold: str) -> bool:
    import sympy

    try:
        left, right = parse_latex_subset(predicted), parse_latex_subset(gold)
    except (LatexSubsetError, ValueError, TypeError, ZeroDivisionError, RecursionError):
        return False
    try:
        return bool(sympy.simplify(left - right) == 0)
    except (TypeError, ValueError, RecursionError):
        return False


def _equal_math_verify(predicted: str, gold: str) -> bool:
    from math_verify import LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(boxed_match_priority=0)]
    wrap = lambda text: text if "$" in text or "\\boxed" in text else f"${text}$"  # noqa: E731
    gold_parsed = parse(wrap(gold), extraction_config=config, parsing_timeout=None)
    predicted_parsed = parse(wrap(predicted), extraction_config=config, parsing_timeout=None)
    if not gold_parsed or not predicted_parsed:
        return False
    return bool(verify(gold_parsed, predicted_parsed, timeout_seconds=None))


def _serve() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (_MEMORY_LIMIT_BYTES, _MEMORY_LIMIT_BYTES))
    try:
        import math_verify  # noqa: F401

        have_math_verify = True
    except ImportError:
        have_math_verify = False
    import logging

    logging.disable(logging.CRITICAL)  # math-verify logs parse failures; the verdict says enough
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        backend = request["backend"]
        # "auto" asks both when math-verify is installed: each is conservative (a parse failure is
        # "not equal"), and each proves some equalities the other misses (math-verify leaves x/2 + x/2
        # unsimplified; the subset parser knows no sets, intervals or matrices).
        checks = {"math-verify": [_equal_math_verify], "sympy": [_equal_sympy]}.get(
            backend, [_equal_math_verify, _equal_sympy] if have_math_verify else [_equal_sympy]
        )
        equal = False
        for check in checks:
            try:
                equal = check(request["predicted"], request["gold"])
            except Exception:  # noqa: BLE001 - any failure inside a parser means "not shown equal"
                equal = False
            if equal:
                break
        print(json.dumps({"equal": equal}), flush=True)


if __name__ == "__main__":
    _serve()
