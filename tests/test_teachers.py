"""Several teachers: every one asked (TinyLLM), or a cascade that asks the next only what the earlier ones got wrong,
counted on real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import yaml
from fake_openai import FakeOpenAI, free_port
from rich.console import Console

from tutorlm.config import ConfigError, GenerateConfig, Recipe, RunConfig, TaskConfig, TeacherConfig
from tutorlm.curate import curate
from tutorlm.generate import GenerationIncomplete, generate, generate_stage_config
from tutorlm.run import FAILURES, TRACES
from tutorlm.pipeline import dry_run
from tutorlm.recipe_io import load_recipe
from tutorlm.report import report
from tutorlm.tasks import load_task

QUIET = Console(file=open(os.devnull, "w"))
TASK = TaskConfig(source="coin_flip")
GOLD = {example.question: example.answer for example in load_task(TASK).examples("train", 12)}


def replier(right: set[str]):
    """A teacher that answers the questions in `right` correctly and the others wrongly."""
    def reply(messages: list[dict]) -> str:
        question = next(q for q in GOLD if q in messages[-1]["content"])
        answer = GOLD[question] if question in right else {"yes": "no", "no": "yes"}[GOLD[question].lower()]
        return f"Step by step, counting the flips.\nThe answer is {answer}."
    return reply


def teacher(name: str, url: str, **options) -> TeacherConfig:
    return TeacherConfig(name=name, backend="openai", base_url=url, model=f"{name}-model", api_key_env=None,
                         max_retries=0, backoff_base_s=0.01, timeout_s=2.0, **options)


def make_recipe(tmp_path: Path, teachers: list[TeacherConfig], mode: str, **generate_options) -> Recipe:
    return Recipe(run=RunConfig(name="run", output_dir=str(tmp_path)), task=TASK, teachers=teachers,
                  generate=GenerateConfig(limit=12, teacher_mode=mode, cache_path=str(tmp_path / "cache.sqlite"),
                                          **generate_options))


def asked_questions(server: FakeOpenAI) -> set[str]:
    return {next(q for q in GOLD if q in body["messages"][-1]["content"]) for body in server.bodies}


def read_traces(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "run" / TRACES).read_text().splitlines()]


def test_the_cascade_asks_the_next_teacher_only_what_the_cheaper_ones_got_wrong(tmp_path):
    questions = sorted(GOLD)
    cheap_right, middle_right = set(questions[:5]), set(questions[5:9])
    with FakeOpenAI(model="cheap-model", api_key=None, reply=replier(cheap_right)) as cheap, \
            FakeOpenAI(model="middle-model", api_key=None, reply=replier(middle_right)) as middle, \
            FakeOpenAI(model="strong-model", api_key=None, reply=replier(set(questions))) as strong:
        recipe = make_recipe(tmp_path, [teacher("cheap", cheap.url, price_output_per_million=1.0),
                                        teacher("middle", middle.url, price_output_per_million=5.0),
                                        teacher("strong", strong.url, price_output_per_million=20.0)], "cascade",
                             n=2, temperature=0.7)
        stats = generate(recipe, console=QUIET)
        assert asked_questions(cheap) == set(questions) and cheap.total_served == 24
        assert asked_questions(middle) == set(questions) - cheap_right and middle.total_served == 14
        assert asked_questions(strong) == set(questions) - cheap_right - middle_right and strong.total_served == 6
    per = stats["teachers"]
    assert [per[name]["questions"] for name in ("cheap", "middle", "strong")] == [12, 7, 3]
    assert [per[name]["questions_solved"] for name in ("cheap", "middle", "strong")] == [5, 4, 3]
    assert per["cheap"]["verified"] == 10 and stats["calls_made"] == 44 and stats["samples_written"] == 44
    assert stats["cost"] == pytest.approx(sum(one["cost"] for one in per.values())) and per["strong"]["cost"] > 0
    rows = read_traces(tmp_path)
    assert len({row["id"] for row in rows}) == 44 and {row["teacher"] for row in rows} == {"cheap", "middle", "strong"}
    assert {row["model"] for row in rows if row["teacher"] == "middle"} == {"middle-model"}

    curate(recipe, console=QUIET)
    curated = [json.loads(line) for line in (tmp_path / "run" / "curated.jsonl").read_text().splitlines()]
    by_teacher = {name: sum(1 for row in curated if row["teacher"] == name) for name in per}
    assert by_teacher == {"cheap": 5, "middle": 4, "strong": 3}  # one of each question's two identical samples is a duplicate
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["curate"]["stats"]["teachers"]["strong"] == {"written": 6, "kept": 3, "kept_share": 0.25}
    text = (tmp_path / "run" / "report.md").read_text() if report(tmp_path / "run") else ""
    assert "| strong | 3 | 6 | 6 (100.0%) | 3 |" in text and "cascade" in text


def test_all_mode_asks_every_teacher_every_question_and_rerun_is_cached(tmp_path):
    with FakeOpenAI(model="a-model", api_key=None, reply=replier(set())) as first, \
            FakeOpenAI(model="b-model", api_key=None, reply=replier(set(GOLD))) as second:
        recipe = make_recipe(tmp_path, [teacher("a", first.url), teacher("b", second.url)], "all")
        stats = generate(recipe, console=QUIET)
        assert first.total_served == 12 and second.total_served == 12
        assert stats["teachers"]["a"]["verified"] == 0 and stats["teachers"]["b"]["verified"] == 12
        first.reset_counts(), second.reset_counts()
        stats = generate(recipe, force=True, console=QUIET)
        assert first.total_served == second.total_served == 0 and stats["cache_hits"] == 24
    rows = read_traces(tmp_path)
    assert len(rows) == 24 and len({row["id"] for row in rows}) == 24


def test_an_unreachable_teacher_in_a_cascade_lets_the_others_go_on_and_is_retried_on_rerun(tmp_path):
    questions = sorted(GOLD)
    port = free_port()  # nothing listens here yet
    with FakeOpenAI(model="strong-model", api_key=None, reply=replier(set(questions))) as strong:
        recipe = make_recipe(tmp_path, [teacher("cheap", f"http://127.0.0.1:{port}/v1"), teacher("strong", strong.url)],
                             "cascade")
        with pytest.raises(GenerationIncomplete, match="12 of 24 calls failed"):
            generate(recipe, console=QUIET)
        assert strong.total_served == 12  # the cheap one answered nothing, so the strong one was asked everything
        failures = [json.loads(line) for line in (tmp_path / "run" / FAILURES).read_text().splitlines()]
        assert len(failures) == 12 and {row["teacher"] for row in failures} == {"cheap"}
        assert len(read_traces(tmp_path)) == 12
        manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
        assert manifest["stages"]["generate"]["status"] == "incomplete"

        cheap_right = set(questions[:8])
        strong.reset_counts()
        cheap = FakeOpenAI(model="cheap-model", api_key=None, reply=replier(cheap_right))
        cheap.server.server_close()  # rebind the fake on the port the recipe names
        from fake_openai import _Server

        cheap.server = _Server(("127.0.0.1", port), cheap._handler())
        with cheap:
            stats = generate(recipe, console=QUIET)
            assert cheap.total_served == 12 and strong.total_served == 0  # the strong teacher's answers are cached
    assert not (tmp_path / "run" / FAILURES).exists()
    rows = read_traces(tmp_path)
    assert {row["example_id"] for row in rows if row["teacher"] == "strong"} == {
        row["example_id"] for row in rows if row["teacher"] == "cheap" and row["question"] not in cheap_right}
    assert stats["teachers"]["strong"]["questions"] == 4 and stats["failures"] == 0


def test_teacher_lists_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="name 'a' is used twice"):
        load_recipe(None, [], base={"teachers": [{"name": "a"}, {"name": "a"}]}, base_name="recipe")
    with pytest.raises(ConfigError, match=r"teachers\[1\] has none"):
        load_recipe(None, [], base={"teachers": [{"name": "a"}, {"backend": "reference"}]}, base_name="recipe")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"teacher": {"backend": "reference"}, "teachers": [{"name": "a"}]}))
    with pytest.raises(ConfigError, match="either teacher .* or teachers"):
        load_recipe(path)
    path.write_text(yaml.safe_dump({"teachers": [{"name": "a"}, {"name": "b", "backend": "hf", "model": "m"}]}))
    with pytest.raises(ConfigError, match="do not apply to a recipe with several teachers"):
        load_recipe(path, [("teacher.model", "x")])
    recipe = load_recipe(path)
    assert recipe.teacher.name == "b" and recipe.teacher.backend == "hf"  # the last one is the evaluated teacher
    with pytest.raises(ConfigError, match="teacher_mode must be one of"):
        load_recipe(path, [("generate.teacher_mode", "round_robin")])


def test_a_single_teachers_stage_config_is_as_before_names_existed():
    stage = generate_stage_config(Recipe())
    assert "name" not in stage["teacher"] and "teacher_mode" not in stage["generate"] and "teachers" not in stage
    named = Recipe(teachers=[TeacherConfig(name="ref")])
    assert generate_stage_config(named)["teachers"][0]["name"] == "ref"


def test_one_teacher_can_sample_more_questions_and_samples_than_the_others(tmp_path):
    """A fast mentor writes 2 samples at T=0.7 for all 12 questions; the slow teacher greedily for the first 4."""
    def slow_reply(messages: list[dict]) -> str:  # worded apart from the mentor's, so curation's dedupe keeps both
        return "Slowly: " + replier(set(GOLD))(messages)

    with FakeOpenAI(model="mentor-model", api_key=None, reply=replier(set(GOLD))) as mentor, \
            FakeOpenAI(model="slow-model", api_key=None, reply=slow_reply) as slow:
        recipe = make_recipe(tmp_path, [teacher("mentor", mentor.url, limit=12, n=2, temperature=0.7, style=""),
                                        teacher("slow", slow.url)], "all")
        recipe.generate.limit = 4
        recipe.generate.style = "Be brief."  # the slow teacher's; the mentor reads the plain question
        plan = io.StringIO()
        dry_run(recipe, console=Console(file=plan, width=400))
        assert "mentor: openai mentor-model: 12 train questions x 2 samples, 24 teacher calls (0 cached)" in plan.getvalue()
        assert "slow: openai slow-model: 4 train questions x 1 samples, 4 teacher calls (0 cached)" in plan.getvalue()
        stats = generate(recipe, console=QUIET)
        assert mentor.total_served == 24 and {body["temperature"] for body in mentor.bodies} == {0.7}
        assert slow.total_served == 4 and {body["temperature"] for body in slow.bodies} == {0.0}
        assert asked_questions(slow) == {example.question for example in load_task(TASK).examples("train", 4)}
        assert all(body["messages"][-1]["content"].endswith("\n\nBe brief.") for body in slow.bodies)
        assert not any("Be brief." in body["messages"][-1]["content"] for body in mentor.bodies)
    assert stats["examples"] == 12 and stats["teachers"]["mentor"]["questions"] == 12
    assert stats["teachers"]["slow"]["samples_written"] == 4 and stats["samples_written"] == 28
    rows = read_traces(tmp_path)
    assert sorted(row["sample_index"] for row in rows if row["teacher"] == "mentor") == [0] * 12 + [1] * 12
    curate(recipe, console=QUIET)
    curated = [json.loads(line) for line in (tmp_path / "run" / "curated.jsonl").read_text().splitlines()]
    assert {row["teacher"] for row in curated} == {"mentor", "slow"}
    # what decides the rationales is in the stage config; unset, a teacher's key is as before it could be set
    stage = generate_stage_config(recipe)
    assert stage["teachers"][0]["n"] == 2 and "n" not in stage["teachers"][1] and "limit" not in stage["teachers"][1]


def test_per_teacher_sampling_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="teacher.n is for one of several `teachers`.*generate.n"):
        load_recipe(None, [("teacher.n", "4")], base={"teacher": {"backend": "reference"}}, base_name="recipe")
    with pytest.raises(ConfigError, match=r"teachers\[0\] \(m\): n=4 samples at temperature 0"):
        load_recipe(None, [], base={"teachers": [{"name": "m", "n": 4}, {"name": "t"}]}, base_name="recipe")
    with pytest.raises(ConfigError, match="limit and n must be at least 1"):
        load_recipe(None, [], base={"teachers": [{"name": "m", "limit": 0}, {"name": "t"}]}, base_name="recipe")
    recipe = load_recipe(None, [], base={"teachers": [{"name": "m", "n": 4, "temperature": 0.7}, {"name": "t"}]},
                         base_name="recipe")
    assert recipe.teachers[0].n == 4 and recipe.generate.n == 1


def test_a_teacher_of_a_list_is_set_from_the_command_line_by_its_index(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"teachers": [{"name": "m"}, {"name": "t"}]}))
    recipe = load_recipe(path, [("teachers.0.n", "4"), ("teachers.0.temperature", "0.7"), ("teachers.1.limit", "5")])
    assert (recipe.teachers[0].n, recipe.teachers[0].temperature, recipe.teachers[1].limit) == (4, 0.7, 5)
    assert recipe.teachers[1].n is None and recipe.teachers[0].name == "m"
    with pytest.raises(ConfigError, match=r"--teachers.2.n: name an item of teachers by its index \(0 to 1\)"):
        load_recipe(path, [("teachers.2.n", "4")])
    with pytest.raises(ConfigError, match=r"unknown setting --teachers.0.nn \(did you mean --teachers.0.n\?\)"):
        load_recipe(path, [("teachers.0.nn", "4")])
    with pytest.raises(ConfigError, match=r"teachers\[0\] \(m\): n=4 samples at temperature 0"):  # checked as in the file
        load_recipe(path, [("teachers.0.n", "4")])
    with pytest.raises(ConfigError, match="no teachers list to change"):
        load_recipe(None, [("teachers.0.n", "4")])
