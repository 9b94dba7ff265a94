"""Student-fit selection in curate (select student_fit): scored under a tiny student built in the test."""

from __future__ import annotations

import json
import os

import pytest
import torch
from rich.console import Console
from tiny import make_model, make_tokenizer, trace

from tutorlm.config import CurateConfig, Recipe, RunConfig, StudentConfig, TaskConfig
from tutorlm.curate import curate, curate_stage_config
from tutorlm.run import CURATED
from tutorlm.run import RunDir
from tutorlm.models.score import score_rows

QUIET = Console(file=open(os.devnull, "w"))
FAMILIAR = "What is 12 + 30? Add column by column. 2 + 0 = 2, 1 + 3 = 4. The answer is 42."
ROWS = [
    trace("a", "42", "Forty-two, since twelve and thirty make it. The answer is 42.", sample=0),
    trace("a", "42", FAMILIAR, sample=1),
    trace("a", "42", "12 + 30 = 42. The answer is 42.", sample=2),
    trace("a", "42", "The answer is 41.", sample=3),  # wrong: never scored
    trace("b", "7", "3 + 4 = 7. The answer is 7.", sample=0),
    trace("b", "7", "Seven: three and four. The answer is 7.", sample=1),
]


def save_student(path, familiar: str, steps: int, seed: int = 0):
    """A tiny student that has seen `familiar` (as an assistant reply) `steps` times."""
    tokenizer = make_tokenizer()
    model = make_model(tokenizer, seed)
    if steps:
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        ids = tokenizer.apply_chat_template([{"role": "user", "content": "q a"}, {"role": "assistant", "content": familiar}],
                                            return_tensors="pt", return_dict=True)["input_ids"]
        for _ in range(steps):
            optimizer.zero_grad()
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_recipe(tmp_path, student, **curate):
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "traces.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return Recipe(run=RunConfig(name="run", output_dir=str(tmp_path)), task=TaskConfig(source="arithmetic"),
                  student=StudentConfig(model=str(student), device="cpu", dtype="float32"),
                  curate=CurateConfig(select="student_fit", **curate))


def test_student_fit_keeps_the_rationales_the_student_finds_most_likely(tmp_path):
    student = save_student(tmp_path / "student", FAMILIAR, steps=40)
    recipe = make_recipe(tmp_path, student)
    stats = curate(recipe, console=QUIET)
    kept = [json.loads(line) for line in (tmp_path / "run" / CURATED).read_text().splitlines()]
    assert stats["funnel"]["not_student_fit"] == 3 and stats["funnel"]["kept"] == 2
    assert {row["id"] for row in kept if row["example_id"] == "a"} == {"a#1"}  # the one it was trained on

    # the choice for "b" is the student's own ranking, computed here directly with the scorer
    from tutorlm.models.load import load_model, load_tokenizer

    model, tokenizer = load_model(str(student), device="cpu", dtype="float32"), load_tokenizer(str(student))
    b_rows = [row for row in ROWS if row["example_id"] == "b"]
    scored = score_rows(model, tokenizer, b_rows)
    best = max(zip(b_rows, scored), key=lambda pair: pair[1].mean_logprob)[0]
    (b_kept,) = [row for row in kept if row["example_id"] == "b"]
    assert b_kept["id"] == best["id"]
    assert b_kept["student_fit"]["mean_logprob"] == pytest.approx(max(s.mean_logprob for s in scored), abs=1e-4)
    assert 0 <= b_kept["student_fit"]["low_share"] <= 1

    fit = stats["student_fit"]
    assert fit["rows"] == 5 and fit["cached"] == 0  # the wrong rationale is not scored
    assert fit["kept"]["count"] == 2 and fit["dropped"]["count"] == 3
    assert fit["kept"]["mean_logprob_median"] > fit["dropped"]["mean_logprob_median"]
    from tutorlm.report import report

    text = report(recipe.run.path).read_text()
    assert "Student fit under" in text and "kept 2:" in text and "dropped 3:" in text
    assert "<td>not student fit</td><td>3</td>" in text


def test_scores_are_paid_for_once_and_a_retrained_student_is_scored_again(tmp_path):
    student = save_student(tmp_path / "student", FAMILIAR, steps=5)
    recipe = make_recipe(tmp_path, student)
    curate(recipe, console=QUIET)
    again = curate(make_recipe(tmp_path, student, select_k=2), console=QUIET)  # other settings: nothing rescored
    assert again["student_fit"]["cached"] == 5 and "scoring_s" not in again["student_fit"]
    assert again["funnel"]["not_student_fit"] == 1
    save_student(student, "3 + 4 = 7. The answer is 7.", steps=5, seed=1)  # another model at the same path
    recipe = make_recipe(tmp_path, student, select_k=2)
    assert not RunDir(recipe.run.path).is_current("curate", curate_stage_config(recipe),
                                                  {"traces": recipe.run.path / "traces.jsonl"})
    assert curate(recipe, console=QUIET)["student_fit"]["cached"] == 0


def test_select_settings_are_checked():
    with pytest.raises(ValueError, match="select_k must be at least 1"):
        CurateConfig(select_k=0)
    with pytest.raises(ValueError, match="fit_floor must be a probability"):
        CurateConfig(fit_floor=1.5)
