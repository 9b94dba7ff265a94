"""Curation filters and their counts, on hand-made traces."""

from __future__ import annotations

import json
import os

import pytest
from tiny import trace
from rich.console import Console

from tutorlm.config import CurateConfig, Recipe, RunConfig, TaskConfig
from tutorlm.curate import curate, curate_rows, normalize_for_dedupe
from tutorlm.run import CURATED
from tutorlm.tasks import DataError, load_task

QUIET = Console(file=open(os.devnull, "w"))
TASK = load_task(TaskConfig(source="arithmetic"))


HAND_MADE = [
    trace("a", "42", "40 + 2 = 42. The answer is 42.", sample=0),  # right
    trace("a", "42", "40  +  2 = 42.  The answer is 42.", sample=1),  # whitespace duplicate of 0
    trace("a", "42", "40 + 2 = 42. The answer is 42.", sample=2),  # exact duplicate of 0
    trace("a", "42", "Forty plus two: 40 + 2 is 42, so the total is 42. The answer is 42.", sample=3),  # right, longer
    trace("a", "42", "The answer is 41.", sample=4),  # wrong
    trace("b", "7", "3 + 4 = 7 and then I kept writing", sample=0, finish="length"),  # truncated
    trace("b", "7", "I have no idea.", sample=1),  # no answer
    trace("b", "7", "3 + 4 = 7. The answer is 7.", sample=2),  # right
    trace("c", "1,000", "So 999 + 1 = 1000. The answer is 1000.", sample=0, tokens=900),  # right but long
    trace("c", "1,000", "The answer is 1,000.", sample=1),  # right, short
]


def test_funnel_counts_on_hand_made_traces():
    kept, funnel = curate_rows(HAND_MADE, TASK, CurateConfig())
    assert funnel == {"generated": 10, "truncated": 1, "tool_error": 0, "tool_timeout": 0, "no_answer": 1, "wrong": 1,
                      "wrong_step": 0, "duplicate": 2, "too_long": 0, "not_shortest": 0, "not_student_fit": 0, "over_cap": 0, "kept": 5}
    assert sorted(row["id"] for row in kept) == ["a#0", "a#3", "b#2", "c#0", "c#1"]


def test_check_steps_drops_a_right_answer_reached_through_a_wrong_step(tmp_path):
    rows = [trace("a", "42", "40 + 3 = 42.\nThe answer is 42.", sample=0),  # the hinted answer after false arithmetic
            trace("a", "42", "40 + 2 = 42.\nThe answer is 42.", sample=1),
            trace("b", "7", "3 + 4 = 8.\nThe answer is 8.", sample=0)]  # wrong answer: counted as wrong, not here
    kept, funnel = curate_rows(rows, TASK, CurateConfig(check_steps=True))
    assert [row["id"] for row in kept] == ["a#1"] and funnel["wrong_step"] == 1 and funnel["wrong"] == 1
    kept, funnel = curate_rows(rows, TASK, CurateConfig())
    assert len(kept) == 2 and funnel["wrong_step"] == 0
    from tutorlm.curate import curate_stage_config

    off = curate_stage_config(Recipe(run=RunConfig(name="x", output_dir=str(tmp_path))))
    on = curate_stage_config(Recipe(run=RunConfig(name="x", output_dir=str(tmp_path)), curate=CurateConfig(check_steps=True)))
    assert "check_steps" not in off["curate"] and on["curate"]["check_steps"] is True  # runs from before stay current


def test_exact_dedupe_keeps_whitespace_variants():
    _, funnel = curate_rows(HAND_MADE, TASK, CurateConfig(dedupe="exact"))
    assert funnel["duplicate"] == 1 and funnel["kept"] == 6
    _, funnel = curate_rows(HAND_MADE, TASK, CurateConfig(dedupe="none"))
    assert funnel["duplicate"] == 0 and funnel["kept"] == 7


def test_length_bound_shortest_k_and_cap():
    kept, funnel = curate_rows(HAND_MADE, TASK, CurateConfig(max_completion_tokens=100))
    assert funnel["too_long"] == 1 and "c#0" not in {r["id"] for r in kept}
    kept, funnel = curate_rows(HAND_MADE, TASK, CurateConfig(shortest_k=1))
    assert funnel["not_shortest"] == 2
    assert {r["id"] for r in kept} == {"a#0", "b#2", "c#1"}  # the shortest correct one of each question
    kept, funnel = curate_rows(HAND_MADE, TASK, CurateConfig(max_per_question=1, seed=3))
    assert funnel["over_cap"] == 2 and len(kept) == 3
    again, _ = curate_rows(HAND_MADE, TASK, CurateConfig(max_per_question=1, seed=3))
    assert [r["id"] for r in kept] == [r["id"] for r in again]


def test_pass_rate_and_difficulty_tags():
    kept, _ = curate_rows(HAND_MADE, TASK, CurateConfig())
    by_question = {row["example_id"]: row for row in kept}
    assert by_question["a"]["teacher_pass_rate"] == pytest.approx(4 / 5, abs=1e-4) and by_question["a"]["difficulty"] == "easy"
    assert by_question["b"]["teacher_pass_rate"] == pytest.approx(1 / 3, abs=1e-4) and by_question["b"]["difficulty"] == "medium"
    assert by_question["c"]["difficulty"] == "easy"


def test_rows_keep_the_conversational_shape():
    kept, _ = curate_rows(HAND_MADE, TASK, CurateConfig())
    row = kept[0]
    assert row["prompt"][0]["role"] == "user" and row["completion"][0]["role"] == "assistant"
    assert row["extracted"] == "42"


def test_normalize_for_dedupe():
    assert normalize_for_dedupe("Total  1,000.50\nDone") == normalize_for_dedupe("total 1000.5 done")
    assert normalize_for_dedupe("3 apples") != normalize_for_dedupe("4 apples")


def _run(tmp_path, rows):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "traces.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return Recipe(run=RunConfig(name="run", output_dir=str(tmp_path)), task=TaskConfig(source="arithmetic"))


def test_stage_writes_curated_manifest_and_parquet(tmp_path):
    recipe = _run(tmp_path, HAND_MADE)
    stats = curate(recipe, export="parquet", console=QUIET)
    assert stats["funnel"]["kept"] == 5 and stats["questions"] == 3
    lines = (tmp_path / "run" / CURATED).read_text().splitlines()
    assert len(lines) == 5
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "run" / "curated.parquet").num_rows == 5
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["curate"]["stats"]["funnel"]["wrong"] == 1


def test_nothing_kept_is_an_error_and_writes_nothing(tmp_path):
    recipe = _run(tmp_path, [trace("a", "42", "The answer is 41.")])
    with pytest.raises(DataError, match="kept no rationale out of 1"):
        curate(recipe, console=QUIET)
    assert not (tmp_path / "run" / CURATED).exists()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["curate"]["status"] == "failed"


def test_missing_traces_and_bad_rows(tmp_path):
    recipe = Recipe(run=RunConfig(name="none", output_dir=str(tmp_path)))
    with pytest.raises(DataError, match="run `tutorlm generate`"):
        curate(recipe, console=QUIET)
    recipe = _run(tmp_path, [{"example_id": "a"}])
    with pytest.raises(DataError, match=r"traces\.jsonl:1: missing question, answer"):
        curate(recipe, console=QUIET)


def test_preference_pairs_pair_kept_rationales_with_wrong_ones(tmp_path):
    from tutorlm.run import PAIRS

    recipe = _run(tmp_path, HAND_MADE)
    recipe.curate = CurateConfig(pairs=2)
    out = tmp_path / "out.txt"
    stats = curate(recipe, console=Console(file=out.open("w"), width=300))
    pairs = [json.loads(line) for line in (tmp_path / "run" / PAIRS).read_text().splitlines()]
    # a: one wrong answer (a#4); b: no answer (b#1; the truncated b#0 is no lesson); c: nothing wrong
    assert [(p["chosen_id"], p["rejected_id"]) for p in pairs] == [("a#0", "a#4"), ("b#2", "b#1")]
    assert pairs[0]["rejected"][0]["content"] == "The answer is 41." and pairs[0]["rejected_extracted"] == "41"
    assert pairs[1]["rejected_extracted"] is None and pairs[0]["prompt"] == HAND_MADE[0]["prompt"]
    assert stats["pairs"] == {"pairs": 2, "questions_with_pairs": 2, "questions_without_wrong": 1, "questions_without_right": 0}
    printed = out.read_text()
    assert "2 preference pairs from 2 questions" in printed and "1 question(s) with a right rationale had no wrong one" in printed
    # pairs off again: no stale pairs file
    recipe.curate = CurateConfig()
    curate(recipe, console=QUIET)
    assert not (tmp_path / "run" / PAIRS).exists()


def test_no_wrong_rationale_means_no_pairs_file_and_says_how_to_get_some(tmp_path):
    from tutorlm.run import PAIRS

    recipe = _run(tmp_path, [trace("a", "42", "The answer is 42."), trace("b", "7", "The answer is 7.")])
    recipe.curate = CurateConfig(pairs=1)
    out = tmp_path / "out.txt"
    stats = curate(recipe, console=Console(file=out.open("w"), width=300))
    assert stats["pairs"]["pairs"] == 0 and not (tmp_path / "run" / PAIRS).exists()
    printed = out.read_text()
    assert "no pairs were written: 2 question(s) with a right rationale had no wrong one" in printed
    assert "--generate.n 4 --generate.temperature 0.8" in printed
    with pytest.raises(ValueError, match="pairs must be >= 0"):
        CurateConfig(pairs=-1)
