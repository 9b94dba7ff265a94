"""Answer extraction and equivalence: the one verifier that curation, evaluation and RL rewards share.

    from tutorlm.verify import grade
    grade("... so 12 + 30 = 42. The answer is 42.", "42").correct   # True

Extraction (`extract_answer`) works on the text after reasoning blocks are removed:

0. `<think>…</think>` (also `<thinking>`, `<reasoning>`, `<reflection>`) blocks are dropped. A completion that
   has only a closing `</think>` (its template opened the block in the prompt) keeps what follows it. A
   completion that ends inside an unclosed block has no answer: the model ran out of tokens while thinking.
1. "The (final) answer is X"            last occurrence
2. `\\boxed{X}` / `\\fbox{X}`             last occurrence, braces balanced
3. "#### X"                              last occurrence (GSM8K)
4. "Answer: X" / "Final answer: X"       last occurrence, at a line start
5. fallback, unless the task switches it off (`fallback=False`): for multiple choice a final line that
   is only a letter or only an option's text, else the last "(X)" letter; for yes/no answers the last
   yes/no/true/false word; otherwise the last number, unless the text ends mid-expression ("7 *").

The first rule that matches wins, and within a rule the last statement (also when two share a line);
the captured text is cleaned ($…$, \\text{}, **bold**, a final period). A statement that hedges or
negates ("not 6", "between 5 and 6", "yes and no", "B or C") states no answer. Extraction is linear
in the length of the text: a megabyte of repeated unclosed `\\boxed{` or `<think>` grades in well
under a second.

Equivalence (`answers_match`) depends on the answer type, which a task states or `infer_answer_type`
reads off the gold answer:

- number:  exact rational comparison after removing thousands separators, currency and % signs,
           unicode minus; decimals, fractions (a/b, \\frac{a}{b}), scientific notation and numbers in
           words ("nine", "twenty-one") all parse.
- choice:  letters in their common shapes ("(B)", "B)", "option B"), or the choice's own text.
- boolean: yes/true and no/false.
- text:    case, unicode form, punctuation, spacing, quotes, and articles (optional) are ignored.
- math:    normalized LaTeX strings, then numbers, then symbolic equivalence (math-verify's LaTeX
           parser when installed, else a small safe LaTeX-subset parser and sympy).

Symbolic checks run in a helper subprocess that is killed when it overruns the time bound, so the
bound holds in threads and in worker processes alike (no `signal.alarm`). Model text is never passed
to `eval`; math-verify's expression parser (which calls sympy's `parse_expr`) is not used for that reason.
All functions here are pure apart from that shared helper process, which a lock serialises.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Literal, Sequence

AnswerType = Literal["auto", "number", "choice", "boolean", "text", "math"]
ANSWER_TYPES: tuple[str, ...] = ("auto", "number", "choice", "boolean", "text", "math")

# Inputs longer than this are not parsed as numbers or formulas: they are not answers, and big
# integers or deep formulas are where parsers spend unbounded time.
MAX_ANSWER_CHARS = 300
MAX_EXPONENT = 400

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class Verdict:
    """The outcome of grading one completion."""

    extracted: str | None  # the final answer read from the completion, None when there is none
    correct: bool
    reason: str  # "correct", "wrong", "no_answer" or "unfinished_thinking"


# ---------------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------------

_THINK_TAGS = ("think", "thinking", "reasoning", "reflection")
_TAG = re.compile(r"<(/?)(%s)>" % "|".join(_THINK_TAGS), re.I)

# "The answer is" without what follows: the statement is the rest of the line after the last match.
_ANSWER_IS = re.compile(r"the\s+(?:final\s+|correct\s+)?answer\s+(?:is|would\s+be|will\s+be)\s*:?[ \t]*", re.I)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_HASHES = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_COLON = re.compile(r"^[ \t>*#_]*(?:final[ \t]+)?answer[ \t]*[*_]*:[*_]*[ \t]*([^\n]*)", re.I | re.M)
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_CHOICE_FALLBACK = re.compile(r"\(([A-Z])\)")
_BARE_LETTER = re.compile(r"[\(\[]?([A-Z])[\)\]]?")
_BOOLEAN_WORD = re.compile(r"\b(yes|no|true|false)\b", re.I)
# A statement that does not commit to one answer ("not 6", "between 5 and 6", "yes and no") states none.
_HEDGE = re.compile(
    r"^(?:not|never|neither|either|between|unclear|unknown|uncertain|undetermined|indeterminate|maybe|perhaps|"
    r"possibly|probably|likely|unlikely|approximately|about|around|roughly|nearly|almost|at\s+least|at\s+most|"
    r"more\s+than|less\s+than|cannot|can't|can\s+not)\b", re.I)
# Two numbers joined by and/or in the statement's first clause ("5 or 6", "12 apples and 3 pears"); a reason after
# a comma or "since" may name other numbers ("6, since 4 and 2 make 6").
_TWO_NUMBERS = re.compile(r"\d[^\d\n]{0,20}?\b(?:and|or)\b\s*\$?-?\.?\d", re.I)
_REASON = re.compile(r",|;|\b(?:since|because|as|so|which)\b", re.I)
_TWO_LETTERS = re.compile(r"\b[A-Z]\)?\s*(?:,|/|\band\b|\bor\b)\s*\(?[A-Z]\b")
# A completion cut off mid-expression ("... 7 * 3 =", "then 7*"): its last number is not its answer.
_UNFINISHED = re.compile(r"(?:[-+*/×÷^=(,]|\\times|\\cdot|\\div)\s*$")
# Captured answer text is cut to this many characters before cleaning: cleaning stays linear, and no
# answer is this long (numbers and formulas over MAX_ANSWER_CHARS are not parsed anyway).
_MAX_CAPTURE_CHARS = 2000


# A Python tool's output in a transcript (tools/loop.py): the environment's text, which states no answer of the model's.
# An unclosed one runs to the end of the text.
OUTPUT_BLOCK = re.compile(r"```output\n.*?(?:\n```(?:\n|$)|\Z)", re.S)


def output_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the ```output blocks in a transcript: the environment's text, not the model's."""
    return [match.span() for match in OUTPUT_BLOCK.finditer(text)] if "```output" in text else []


def strip_outputs(text: str) -> str:
    """A transcript without its ```output blocks: what the model itself wrote."""
    return OUTPUT_BLOCK.sub("", text) if "```output" in text else text


def strip_reasoning(completion: str) -> str | None:
    """The completion without its reasoning blocks, or None when it ends inside an unclosed one.

    One pass over the tags, so the time is linear in the text (model output can repeat an opening tag
    thousands of times). A block runs from an opening tag to the next closing tag of the same name.
    """
    tags = list(_TAG.finditer(completion))
    if tags and tags[0].group(1):
        # The template opened the block in the prompt: the answer part follows the first close tag.
        completion = completion[tags[0].end() :]
        tags = list(_TAG.finditer(completion))
    pieces, position, inside = [], 0, None
    for tag in tags:
        closing, name = bool(tag.group(1)), tag.group(2).lower()
        if inside is None:
            pieces.append(completion[position : tag.start()])
            pieces.append(" ")
            position = tag.end()
            if not closing:
                inside = name
        elif closing and name == inside:
            inside, position = None, tag.end()
    if inside is not None:
        return None
    pieces.append(completion[position:])
    return "".join(pieces)


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} whose braces balance (nested braces allowed); None when there is none.

    One pass with a stack of open braces, so the time is linear in the text even for thousands of
    unclosed \\boxed{ (where scanning to the end from each one would be quadratic).
    """
    boxed_starts = {match.end() - 1 for match in _BOXED.finditer(text)}  # positions of the boxes' "{"
    if not boxed_starts:
        return None
    stack: list[int] = []
    found_start, found = -1, None
    for position, char in enumerate(text):
        if char == "{":
            stack.append(position)
        elif char == "}" and stack:
            start = stack.pop()
            if start in boxed_starts and start > found_start:
                found_start, found = start, text[start + 1 : position]
    return found


def _states_one_answer(answer: str, answer_type: str, choices: Sequence[str] | None) -> bool:
    """False for an answer statement that hedges, negates, or names two answers where one is expected."""
    if _HEDGE.match(answer):
        return False
    if answer_type == "number" and _TWO_NUMBERS.search(_REASON.split(answer, maxsplit=1)[0]):
        return False
    if answer_type == "boolean":  # "yes and no", "true or false"; "yes, since ... and ..." still says yes
        values = {normalize_boolean(word) for word in _BOOLEAN_WORD.findall(answer)}
        return len(values) < 2
    if answer_type == "choice" or choices:
        if choices and any(normalize_text(answer) == normalize_text(choice) for choice in choices):
            return True
        return not _TWO_LETTERS.search(answer)
    return True


def clean_answer(text: str) -> str:
    """Remove the wrapping a model puts around a final answer: \\boxed{}, $…$, **bold**, a last period."""
    text = text[:_MAX_CAPTURE_CHARS].strip()
    boxed = last_boxed(text)
    if boxed is not None:
        text = boxed
    # A sentence may go on after the answer: "The answer is 42. Let me check ..." -> "42".
    # The period must follow a non-space, non-period character, so "3.5" and "..." stay whole.
    text = re.split(r"(?<=[^\s.])\.(?:\s|$)", text, maxsplit=1)[0]
    for _ in range(3):
        text = text.strip().strip("*_`").strip()
        text = re.sub(r"^\$+|\$+$", "", text)
        text = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", text).strip()
        text = text.rstrip(".。;,!").strip()
    text = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", text)
    return text.strip().strip('"“”\'‘’').strip()


def _last_statement(text: str) -> str | None:
    """What follows the last "the answer is" up to the end of its line (None when absent or empty)."""
    last = None
    for last in _ANSWER_IS.finditer(text):
        pass
    if last is None:
        return None
    end = text.find("\n", last.end())
    rest = text[last.end() : end if end >= 0 else len(text)]
    return rest if rest.strip() else None


def _last_line_choice(text: str, choices: Sequence[str]) -> str | None:
    """A final line that is only a choice's letter ("B", "**B**", "(B)") or only a choice's text."""
    lines = [line for line in text[-_MAX_CAPTURE_CHARS:].splitlines() if line.strip()]
    if not lines:
        return None
    line = clean_answer(lines[-1])
    letter = _BARE_LETTER.fullmatch(line)
    if letter and LETTERS.index(letter.group(1)) < len(choices):
        return letter.group(1)
    wanted = normalize_text(line)
    return line if wanted and any(normalize_text(choice) == wanted for choice in choices) else None


def extract_answer(
    completion: str,
    *,
    answer_type: AnswerType = "auto",
    choices: Sequence[str] | None = None,
    fallback: bool = True,
) -> str | None:
    """The final answer stated in a completion, following the documented rule order; None if there is none.

    Within a rule the last statement wins, also when two share a line ("I thought the answer is 5.
    Actually, the answer is 6."). A statement that hedges or negates ("not 6", "between 5 and 6",
    "yes and no") states no answer.
    """
    text = strip_reasoning(strip_outputs(completion))  # a tool's output is evidence, not the model's answer
    if text is None:
        return None
    found = _last_statement(text)
    if found is None:
        found = last_boxed(text)
    if found is None:
        hashes = _HASHES.findall(text)
        if hashes and hashes[-1].strip():
            found = hashes[-1]
    if found is None:
        colon = _ANSWER_COLON.findall(text)
        if colon and colon[-1].strip():
            found = colon[-1]
    if found is not None:
        cleaned = clean_answer(found)
        if not cleaned or not _states_one_answer(cleaned, answer_type, choices):
            return None
        return cleaned
    if not fallback:
        return None
    if answer_type == "choice" or (answer_type == "auto" and choices):
        if choices:
            line = _last_line_choice(text, choices)
            if line is not None:
                return line
        letters = [letter for letter in _CHOICE_FALLBACK.findall(text) if not choices or LETTERS.index(letter) < len(choices)]
        return letters[-1] if letters else None
    if answer_type == "boolean":
        words = _BOOLEAN_WORD.findall(text)
        return words[-1].lower() if words else None
    if answer_type in ("number", "math", "auto"):
        if _UNFINISHED.search(text):
            return None
        numbers = _NUMBER.findall(text)
        return numbers[-1] if numbers else None
    return None


# ---------------------------------------------------------------------------------------------------
# Normalization
# ---------------------------------------------------------------------------------------------------

_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?")
_FRAC = re.compile(r"^(-?)\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}$")
_TIMES_TEN = re.compile(r"^(.+?)\s*(?:\\times|\\cdot|×|\*|x)\s*10\s*\^\s*\{?\s*([+-]?\d+)\s*\}?$")


_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
          "seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_NUMBER_WORDS = {word: value for value, word in enumerate(_UNITS)} | {word: 20 + 10 * i for i, word in enumerate(_TENS)}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}


def _number_word_value(text: str) -> int | None:
    """The value of a number written in English words ("nine", "twenty-one", "two hundred and five"), else None."""
    words = re.sub(r"[-,]", " ", text.strip().lower().rstrip(".")).split()
    if not words or len(words) > 12 or not all(w in _NUMBER_WORDS or w in _SCALES or w in ("and", "a", "minus") for w in words):
        return None
    sign = -1 if words[0] == "minus" else 1
    words = words[1:] if sign < 0 else words
    if not words or words[0] == "and" or not any(w in _NUMBER_WORDS for w in words):
        return None  # "hundred", "a" and "and" alone are not numbers
    total, current = 0, 0
    for word in words:
        if word in _NUMBER_WORDS:
            current += _NUMBER_WORDS[word]
        elif word == "a":
            current += 1
        elif word == "hundred":
            current = max(current, 1) * 100
        elif word in _SCALES:
            total, current = total + max(current, 1) * _SCALES[word], 0
    return sign * (total + current)


def _strip_number_decorations(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).strip()
    text = text.replace("−", "-").replace("–", "-").replace("\\!", "").replace("{,}", ",").replace("\\,", "")
    text = re.sub(r"\\?[$€£¥]|\\?%|\\percent|(?:USD|EUR|dollars?|percent)\b", "", text, flags=re.I)
    text = re.sub(r"\\(?:text|mathrm)\{\s*\}", "", text)
    text = text.strip().rstrip(".").strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1].strip()
    return text.replace(" ", "")


def parse_number(text: str) -> Fraction | None:
    """The exact rational value of a written number, or None when the text is not just a number.

    Accepts "1,234.50", "$5", "12%", "−3", "1e-3", "3/4", "\\frac{3}{4}", "-\\dfrac{1}{2}", "2.5 \\times 10^{3}",
    and numbers in words ("nine", "twenty-one"), as BIG-bench writes some golds.
    """
    if len(text) > MAX_ANSWER_CHARS:
        return None
    word_value = _number_word_value(text)
    if word_value is not None:
        return Fraction(word_value)
    text = _strip_number_decorations(text)
    if not text:
        return None
    scaled = _TIMES_TEN.match(text)
    if scaled:
        mantissa = parse_number(scaled.group(1))
        exponent = int(scaled.group(2))
        if mantissa is None or abs(exponent) > MAX_EXPONENT:
            return None
        return mantissa * Fraction(10) ** exponent
    frac = _FRAC.match(text)
    if frac:
        numerator, denominator = parse_number(frac.group(2)), parse_number(frac.group(3))
        if numerator is None or denominator in (None, 0):
            return None
        value = numerator / denominator
        return -value if frac.group(1) else value
    if text.count("/") == 1:
        numerator_text, denominator_text = text.split("/")
        if _DECIMAL.fullmatch(numerator_text) and _DECIMAL.fullmatch(denominator_text):
            numerator, denominator = parse_number(numerator_text), parse_number(denominator_text)
            if numerator is None or not denominator:
                return None
            return numerator / denominator
        return None
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    if not _DECIMAL.fullmatch(text):
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    exponent = value.as_tuple().exponent
    if not isinstance(exponent, int) or abs(exponent) > MAX_EXPONENT or value.adjusted() > MAX_EXPONENT:
        return None
    return Fraction(value)


def normalize_text(text: str, *, drop_articles: bool = True) -> str:
    """Lower-case, NFKC, no punctuation or quotes, single spaces; articles dropped unless told otherwise."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"\\(?:text|textbf|mathrm)\{([^{}]*)\}", r"\1", text)
    text = re.sub(r"[^\w\s]", " ", text)
    if drop_articles:
        text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def normalize_boolean(text: str) -> str | None:
    """"true" for yes/true/correct, "false" for no/false/incorrect, judged by the first word."""
    words = normalize_text(text, drop_articles=False).split()
    if not words:
        return None
    # A lone "y" or "n" is an answer; "n/a" (read as "n a") is not "no".
    if words[0] in ("yes", "true", "correct") or words == ["y"]:
        return "true"
    if words[0] in ("no", "false", "incorrect") or words == ["n"]:
        return "false"
    return None


_LETTER_SHAPES = re.compile(
    r"^(?:(?:option|choice|answer)\s*)?[\(\[]?([A-Za-z])[\)\]]?(?:[.:)\s]|$)", re.I
)


def choice_index(text: str, choices: Sequence[str] | None) -> int | None:
    """Index of the choice that `text` names: by letter ("(B)", "B)", "option b") or by the choice's text."""
    stripped = clean_answer(text)
    match = _LETTER_SHAPES.match(stripped)
    count = len(choices) if choices else len(LETTERS)
    if match:
        letter = match.group(1).upper()
        # A lone lowercase word like "a" is ambiguous with the article; accept it only when alone.
        if match.group(1).islower() and len(stripped.strip("()[]. ")) > 1:
            letter = ""
        if letter and LETTERS.index(letter) < count:
            return LETTERS.index(letter)
    if choices:
        wanted = normalize_text(stripped)
        for index, choice in enumerate(choices):
            if wanted and normalize_text(choice) == wanted:
                return index
    return None


def normalize_math(text: str) -> str:
    """A canonical string form of a LaTeX answer, for the cheap comparison before any symbolic one."""
    text = unicodedata.normalize("NFKC", clean_answer(text))
    text = re.sub(r"\\left|\\right|\\!|\\,|\\;|\\:|\\ |\s+", "", text)
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    text = re.sub(r"\^\{?\\circ\}?|°", "", text)
    text = re.sub(r"\\(?:text|mathrm|mbox)\{([^{}]*)\}", r"\1", text)
    text = text.replace("−", "-")
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    return text


def infer_answer_type(gold: str, choices: Sequence[str] | None = None) -> str:
    """The answer type a gold answer implies: choice, number, boolean, math or text."""
    if choices:
        return "choice"
    if parse_number(gold) is not None:
        return "number"
    if normalize_boolean(gold) is not None and len(gold.split()) == 1:
        return "boolean"
    if re.search(r"\\|\^|_\{|\{.*\}|\d\s*[+\-*/]\s*\d|sqrt|\bpi\b", gold):
        return "math"
    return "text"


# ---------------------------------------------------------------------------------------------------
# Equivalence and grading
# ---------------------------------------------------------------------------------------------------


def answers_match(
    predicted: str,
    gold: str,
    *,
    answer_type: AnswerType = "auto",
    choices: Sequence[str] | None = None,
    drop_articles: bool = True,
    timeout: float = 5.0,
) -> bool:
    """Whether an extracted answer equals the gold answer under the rules of its answer type."""
    if answer_type == "auto":
        answer_type = infer_answer_type(gold, choices)  # type: ignore[assignment]
    if answer_type == "choice":
        gold_index = choice_index(gold, choices)
        if gold_index is None and gold.strip().isdigit() and choices and int(gold) < len(choices):
            gold_index = int(gold)
        return gold_index is not None and choice_index(predicted, choices) == gold_index
    if answer_type == "boolean":
        gold_value = normalize_boolean(gold)
        return gold_value is not None and normalize_boolean(predicted) == gold_value
    if answer_type == "text":
        return normalize_text(predicted, drop_articles=drop_articles) == normalize_text(gold, drop_articles=drop_articles)
    # number and math
    gold_number = parse_number(gold)
    predicted_number = parse_number(predicted)
    if answer_type == "number" and gold_number is not None and predicted_number is None:
        # "42 apples", "x = 42": the number a sentence ends on.
        if not re.search(r"\\[a-zA-Z]|\^", predicted):
            numbers = _NUMBER.findall(predicted)
            predicted_number = parse_number(numbers[-1]) if numbers else None
    if gold_number is not None and predicted_number is not None:
        return gold_number == predicted_number
    if normalize_math(predicted) == normalize_math(gold):
        return True
    if answer_type == "number" and gold_number is not None and not re.search(r"\\[a-zA-Z]|\^|sqrt|pi", predicted):
        return False
    from tutorlm._symbolic import symbolic_equal

    return symbolic_equal(clean_answer(predicted), clean_answer(gold), timeout=timeout)


def grade(
    completion: str,
    gold: str,
    *,
    answer_type: AnswerType = "auto",
    choices: Sequence[str] | None = None,
    fallback: bool = True,
    drop_articles: bool = True,
    timeout: float = 5.0,
) -> Verdict:
    """Extract the final answer from a completion and compare it with the gold answer."""
    if answer_type == "auto":
        answer_type = infer_answer_type(gold, choices)  # type: ignore[assignment]
    if strip_reasoning(completion) is None:
        return Verdict(None, False, "unfinished_thinking")
    extracted = extract_answer(completion, answer_type=answer_type, choices=choices, fallback=fallback)
    if extracted is None:
        return Verdict(None, False, "no_answer")
    correct = answers_match(
        extracted, gold, answer_type=answer_type, choices=choices, drop_articles=drop_articles, timeout=timeout
    )
    return Verdict(extracted, correct, "correct" if correct else "wrong")
