"""Tasks from user data: JSONL, JSON, CSV and Parquet files, saved HF datasets, and hub datasets.

Field names are found automatically (question/problem/input..., answer/solution/target...) or set in
the task config. Gold answers are read in the common formats:

- GSM8K: "step ... #### 42"     -> gold "42", the steps become the example's rationale;
- MATH:  "... \\boxed{\\frac12}"  -> gold "\\frac12", the solution becomes the rationale;
- multiple choice: a `choices` list (or ARC's {"label": [...], "text": [...]}) and a target given as a
  letter, a 0-based index or the choice's text -> gold letter.

A single file has no splits of its own: its rows are split by the same question hash as the built-in
tasks (80/10/10), so train and test never share a question. `task.splits` maps split names to files
when the data comes already split. Errors name the file, the line or row, and the field.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from pathlib import Path
from typing import Any, Iterator

from tutorlm.tasks.base import DataError, Example, answer_sentence, example_id, split_of
from tutorlm.verify import LETTERS, last_boxed

QUESTION_FIELDS = ("question", "problem", "input", "prompt", "query")
ANSWER_FIELDS = ("answer", "solution", "target", "output", "label", "gold")
CHOICES_FIELDS = ("choices", "options")
ID_FIELDS = ("id", "idx", "uid", "question_id")
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def read_jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, object) for each line of a JSONL file, gzipped or not; a bad line is a DataError naming it."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: invalid JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, found {type(row).__name__}")
            yield f"{path}:{number}", row


def _read_json(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: invalid JSON ({error.msg} at column {error.colno})") from None
    if isinstance(data, dict):
        lists = [value for value in data.values() if isinstance(value, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a list of objects, or an object holding exactly one such list")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of objects, found {type(data).__name__}")
    for index, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataError(f"{path}: item {index}: expected a JSON object, found {type(row).__name__}")
        yield f"{path}: item {index}", row


def _read_csv(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            yield f"{path}:{reader.line_num}", dict(row)


def _read_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install 'tutorlm[data]'") from None
    for index, row in enumerate(parquet.read_table(path).to_pylist()):
        yield f"{path}: row {index}", row


def _read_saved_dataset(path: Path, split: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{path}: reading a saved HF dataset needs `datasets`: pip install 'tutorlm[data]'") from None
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"{path}: no split {split!r}; the dataset has {', '.join(loaded)}")
        loaded = loaded[split]
    for index, row in enumerate(loaded):
        yield f"{path}: row {index}", row


def _read_hub(dataset_id: str, config: str | None, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"hub dataset {dataset_id!r} needs `datasets`: pip install 'tutorlm[data]'") from None
    try:
        loaded = datasets.load_dataset(dataset_id, config, split=split)
    except Exception as error:  # noqa: BLE001 - the hub raises many kinds; all mean "could not load"
        raise DataError(
            f"could not load hub dataset {dataset_id!r} (split {split!r}): {error}. "
            "Without network access, save it elsewhere with `save_to_disk` or export it to JSONL and point "
            "task.source at that"
        ) from None
    for index, row in enumerate(loaded):
        yield f"{dataset_id}[{split}] row {index}", row


def read_rows(source: str, split: str | None = None, hub_config: str | None = None) -> tuple[list[tuple[str, dict]], bool]:
    """Rows of a data source with a location for each, and whether the source was already split."""
    if source.startswith("hf:"):
        return list(_read_hub(source[3:], hub_config, split or "train")), True
    path = Path(source)
    if not path.exists():
        raise DataError(f"{source}: no such file or directory")
    if path.is_dir():
        is_dict = (path / "dataset_dict.json").exists()
        return list(_read_saved_dataset(path, split if is_dict else None)), is_dict
    readers = {".jsonl": read_jsonl_rows, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}
    if path.suffix not in readers:
        raise DataError(f"{path}: unknown file type {path.suffix!r}; use one of {', '.join(FILE_SUFFIXES)}")
    rows = list(readers[path.suffix](path))
    if not rows:
        raise DataError(f"{path}: the file is empty: no examples")
    return rows, False


def _pick_field(rows: list[tuple[str, dict]], wanted: str | None, candidates: tuple[str, ...], role: str, key: str) -> str | None:
    location, first = rows[0]
    if wanted is not None:
        return wanted
    for name in candidates:
        if name in first:
            return name
    if role in ("question", "answer"):
        raise DataError(
            f"{location}: no {role} field: none of {', '.join(candidates)} is present; "
            f"fields present: {', '.join(first) or '(none)'}. Set task.{key} to the right one"
        )
    return None


def _field(location: str, row: dict, name: str) -> Any:
    if name not in row:
        raise DataError(f"{location}: no field {name!r}; fields present: {', '.join(row) or '(none)'}")
    return row[name]


def _parse_choices(location: str, value: Any) -> list[str]:
    if isinstance(value, str) and value.strip().startswith("["):
        value = json.loads(value)  # CSV cells hold lists as JSON text
    if isinstance(value, dict) and "text" in value:
        value = value["text"]  # ARC: {"label": [...], "text": [...]}
    if not isinstance(value, list) or not value or len(value) > len(LETTERS):
        raise DataError(f"{location}: choices must be a non-empty list of at most {len(LETTERS)} items, got {value!r}")
    return [str(choice) for choice in value]


def _gold_letter(location: str, answer: Any, choices: list[str]) -> str:
    text = str(answer).strip()
    if isinstance(answer, int) or text.isdigit():
        index = int(text)
        if 0 <= index < len(choices):
            return LETTERS[index]
    letter = text.strip("()").upper()
    if len(letter) == 1 and letter in LETTERS[: len(choices)]:
        return letter
    for index, choice in enumerate(choices):
        if choice.strip().lower() == text.lower():
            return LETTERS[index]
    raise DataError(f"{location}: answer {answer!r} is not a letter, index or text of the choices {choices}")


def parse_gold(answer: str, answer_format: str) -> tuple[str, str | None]:
    """(gold answer, rationale or None) from an answer field in the given format ("auto" detects)."""
    if answer_format == "gsm8k" or (answer_format == "auto" and "####" in answer):
        steps, _, gold = answer.rpartition("####")
        gold = gold.strip().replace(",", "")
        steps = re.sub(r"<<[^>]*>>", "", steps).strip()  # GSM8K's calculator annotations
        return gold, (f"{steps}\n{answer_sentence(gold)}" if steps else None)
    if answer_format == "boxed" or (answer_format == "auto" and "\\boxed" in answer):
        gold = last_boxed(answer)
        if gold is None:
            return answer.strip(), None
        return gold.strip(), answer.strip()
    return answer.strip(), None


CALCULATOR_NOTE = r"<<([^=>]+)=[^>]*>>(?:[\d.,]*\d)?"  # a note, its expression captured, and the result written after it


def calculator_program(answer: str) -> str | None:
    """A GSM8K solution (calculator notes such as `<<48/2=24>>`) as a Python program that computes it: each line
    becomes a comment without the notes' results ("48/2 = <<48/2=24>>24 clips" reads "48/2 clips"), followed by a
    step per note that computes its expression; the last step is printed. None without notes (the few-shot
    demonstration of the tool's format on word problems)."""
    steps = answer.rpartition("####")[0] if "####" in answer else answer
    lines, count = [], 0
    for line in steps.splitlines():
        expressions = re.findall(CALCULATOR_NOTE, line)
        comment = re.sub(r"\s*=\s*\$?" + CALCULATOR_NOTE, "", line)  # "a = <<a=b>>b" -> "a"
        comment = re.sub(CALCULATOR_NOTE, r"\1", comment).strip()  # "<<3*4=12>>12 apples" -> "3*4 apples"
        if comment:
            lines.append(f"# {comment}")
        for expression in expressions:
            count += 1
            lines.append(f"step{count} = {expression.strip()}")
    if not count:
        return None
    return "\n".join([*lines, f"print(step{count})"])


def answer_meta(location: str, answer: str) -> dict[str, Any]:
    """An example's meta: where it was read, and its solution as a program where the answer has calculator notes."""
    program = calculator_program(answer)
    return {"source": location, **({"program": program} if program else {})}


def load_file_examples(
    source: str,
    split: str,
    *,
    name: str,
    question_field: str | None,
    answer_field: str | None,
    choices_field: str | None,
    id_field: str | None,
    answer_format: str,
    hub_config: str | None = None,
    hash_split: bool = True,
) -> list[Example]:
    """The examples of `split` in a data source, in source order.

    A source with splits of its own (a saved DatasetDict, a hub dataset) gives that split; otherwise
    `hash_split` keeps the rows whose question hashes into `split`, and without it every row is kept.
    """
    rows, already_split = read_rows(source, split, hub_config)
    question_key = _pick_field(rows, question_field, QUESTION_FIELDS, "question", "question_field")
    answer_key = _pick_field(rows, answer_field, ANSWER_FIELDS, "answer", "answer_field")
    choices_key = _pick_field(rows, choices_field, CHOICES_FIELDS, "choices", "choices_field")
    id_key = _pick_field(rows, id_field, ID_FIELDS, "id", "id_field")
    examples = []
    for location, row in rows:
        question = _field(location, row, question_key)
        raw_answer = _field(location, row, answer_key)
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{location}: field {question_key!r} must be non-empty text, got {question!r}")
        if raw_answer is None or (isinstance(raw_answer, str) and not raw_answer.strip()):
            raise DataError(f"{location}: field {answer_key!r} is empty")
        if hash_split and not already_split and split_of(question) != split:
            continue
        raw_choices = _field(location, row, choices_key) if choices_key else None
        choices = _parse_choices(location, raw_choices) if raw_choices not in (None, "") else None
        if choices:
            gold, rationale = _gold_letter(location, raw_answer, choices), None
        else:
            gold, rationale = parse_gold(str(raw_answer), answer_format)
        identifier = str(row[id_key]) if id_key and row.get(id_key) is not None else example_id(name, question)
        meta = {"source": location} if choices else answer_meta(location, str(raw_answer))
        examples.append(Example(id=identifier, question=question, answer=gold, choices=choices, rationale=rationale, meta=meta))
    return examples
