"""Tasks from user files: every format, the answer formats, and errors that name file, line and field."""

from __future__ import annotations

import csv
import json

import pytest

from tutorlm.config import TaskConfig
from tutorlm.tasks import SPLITS, DataError, load_task

ROWS = [
    {"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(60)
]


def _all_examples(task):
    return [e for split in SPLITS for e in task.examples(split)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_jsonl_rows_are_split_by_question_hash(tmp_path):
    task = load_task(TaskConfig(source=str(write_jsonl(tmp_path / "d.jsonl", ROWS))))
    splits = {split: {e.question for e in task.examples(split)} for split in SPLITS}
    assert sum(len(s) for s in splits.values()) == len(ROWS)
    assert not splits["train"] & splits["test"]
    assert task.name == "d"
    example = task.examples("train")[0]
    assert task.grade(example, f"The answer is {example.answer}.").correct


@pytest.mark.parametrize("kind", ["json", "json_wrapped", "csv", "excel_csv", "parquet", "saved_dataset"])
def test_other_formats_give_the_same_examples(tmp_path, kind):
    if kind == "json":
        path = tmp_path / "d.json"
        path.write_text(json.dumps(ROWS))
    elif kind == "json_wrapped":
        path = tmp_path / "d.json"
        path.write_text(json.dumps({"version": 1, "data": ROWS}))
    elif kind in ("csv", "excel_csv"):
        # Excel's "CSV UTF-8" starts the file with a byte-order mark
        path = tmp_path / "d.csv"
        with path.open("w", newline="", encoding="utf-8-sig" if kind == "excel_csv" else "utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["question", "answer"])
            writer.writeheader()
            writer.writerows(ROWS)
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "d.parquet"
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    else:
        import datasets

        path = tmp_path / "saved"
        datasets.Dataset.from_list(ROWS).save_to_disk(str(path))
    reference = load_task(TaskConfig(source=str(write_jsonl(tmp_path / "ref.jsonl", ROWS))))
    task = load_task(TaskConfig(source=str(path), name="ref"))
    assert [e.question for e in _all_examples(task)] == [e.question for e in _all_examples(reference)]
    assert [e.answer for e in _all_examples(task)] == [e.answer for e in _all_examples(reference)]


def test_saved_dataset_dict_uses_its_own_splits(tmp_path):
    import datasets

    path = tmp_path / "dd"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS[:10]), "test": datasets.Dataset.from_list(ROWS[10:15])}
    ).save_to_disk(str(path))
    task = load_task(TaskConfig(source=str(path)))
    assert len(task.examples("train")) == 10 and len(task.examples("test")) == 5
    with pytest.raises(DataError, match="no split 'validation'"):
        task.examples("validation")


def test_split_files_are_used_whole(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS[:40])
    test = write_jsonl(tmp_path / "test.jsonl", ROWS[40:])
    task = load_task(TaskConfig(splits={"train": str(train), "test": str(test)}))
    assert [e.question for e in task.examples("test")] == [r["question"] for r in ROWS[40:]]
    assert len(task.examples("train", 5)) == 5
    with pytest.raises(DataError, match="no file for split 'validation'"):
        task.examples("validation")


def test_gsm8k_answers(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"She has 3 + 4 = <<3+4=7>>7 apples.\n#### 1,00{i}"} for i in range(30)]
    task = load_task(TaskConfig(source=str(write_jsonl(tmp_path / "gsm.jsonl", rows))))
    example = _all_examples(task)[0]
    assert example.answer == f"100{example.question[1:]}"
    assert "<<" not in example.rationale and example.rationale.endswith(f"The answer is {example.answer}.")
    assert task.grade(example, example.rationale).correct


def test_math_boxed_answers(tmp_path):
    rows = [{"problem": f"p{i}", "solution": f"So the value is $\\boxed{{\\frac{{{i + 1}}}{{2}}}}$."} for i in range(30)]
    task = load_task(TaskConfig(source=str(write_jsonl(tmp_path / "math.jsonl", rows))))
    example = _all_examples(task)[0]
    i = int(example.question[1:])
    assert example.answer == f"\\frac{{{i + 1}}}{{2}}"
    assert task.grade(example, f"The answer is {(i + 1) / 2}.").correct


@pytest.mark.parametrize(("target", "letter"), [("B", "B"), (1, "B"), ("1", "B"), ("blue", "B"), ("(C)", "C")])
def test_multiple_choice_targets(tmp_path, target, letter):
    rows = [{"question": f"Pick {i}", "choices": ["red", "blue", "green"], "target": target} for i in range(30)]
    task = load_task(TaskConfig(source=str(write_jsonl(tmp_path / "mc.jsonl", rows))))
    example = _all_examples(task)[0]
    assert example.answer == letter and example.choices == ["red", "blue", "green"]
    assert task.grade(example, f"The answer is ({letter}).").correct
    assert not task.grade(example, "The answer is (A).").correct or letter == "A"


def test_arc_style_choices_and_field_mapping(tmp_path):
    rows = [{"stem": f"s{i}", "opts": {"label": ["A", "B"], "text": ["yes", "no"]}, "key": "A", "uid": f"u{i}"}
            for i in range(30)]
    config = TaskConfig(source=str(write_jsonl(tmp_path / "arc.jsonl", rows)), question_field="stem",
                        answer_field="key", choices_field="opts", id_field="uid")
    example = _all_examples(load_task(config))[0]
    assert example.choices == ["yes", "no"] and example.id.startswith("u")


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "a", "answer": "1"}\n{"question": "b", "answer": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        load_task(TaskConfig(source=str(path))).examples("train")


def test_missing_field_names_field_and_lists_present_ones(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "a", "answer": "1"}, {"question": "b", "solution": "2"}])
    with pytest.raises(DataError, match=r"d\.jsonl:2: no field 'answer'; fields present: question, solution"):
        load_task(TaskConfig(source=str(path))).examples("train")


def test_no_recognisable_question_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "answer": "1"}])
    with pytest.raises(DataError, match=r"no question field.*fields present: text, answer.*task\.question_field"):
        load_task(TaskConfig(source=str(path))).examples("train")


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.csv", "empty.json"])
def test_empty_file_is_a_clear_error(tmp_path, name):
    path = tmp_path / name
    path.write_text("[]" if name.endswith(".json") else "")
    with pytest.raises(DataError, match="empty|no examples"):
        load_task(TaskConfig(source=str(path))).examples("train")


def test_bad_choice_target_and_missing_file(tmp_path):
    path = write_jsonl(tmp_path / "mc.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": "Z"}])
    with pytest.raises(DataError, match=r"mc\.jsonl:1: answer 'Z' is not"):
        load_task(TaskConfig(source=str(path), splits={"test": str(path)})).examples("test")
    with pytest.raises(DataError, match="no such file"):
        load_task(TaskConfig(source=str(tmp_path / "missing.jsonl"))).examples("train")
    with pytest.raises(DataError, match="unknown file type"):
        (tmp_path / "d.txt").write_text("x")
        load_task(TaskConfig(source=str(tmp_path / "d.txt"))).examples("train")
