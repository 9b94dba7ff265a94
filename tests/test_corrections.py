"""SCoRe's corrections: a teacher continues an earlier teacher's (the student's) wrong answer from the line before
its first wrong step; on real HTTP servers on 127.0.0.1 and a tiny local model."""

from __future__ import annotations

import json
import os

import pytest
from fake_openai import FakeOpenAI
from rich.console import Console
from tiny import save_tiny_model

from tutorlm.backends import Request, Sampling
from tutorlm.cache import cache_key
from tutorlm.config import ConfigError, GenerateConfig, Recipe, RoundsConfig, RunConfig, TaskConfig, TeacherConfig
from tutorlm.curate import curate
from tutorlm.corrections import correction_requests
from tutorlm.generate import generate, plan
from tutorlm.recipe_io import load_recipe
from tutorlm.run import CURATED, TRACES
from tutorlm.tasks import load_task

QUIET = Console(file=open(os.devnull, "w"))
TASK = TaskConfig(source="multistep_arithmetic")
EXAMPLES = load_task(TASK).examples("train", 8)
BY_QUESTION = {example.question: example for example in EXAMPLES}
RIGHT = {example.question for example in EXAMPLES[:3]}  # the student gets these right; the rest wrong at line 2


def wrong(rationale: str) -> str:
    lines = rationale.split("\n")
    lines[2] = lines[2].split("=")[0] + "= 999."  # its arithmetic no longer holds
    return "\n".join(lines[:3] + ["The answer is 999."])


def question_of(messages: list[dict]) -> str:
    return next(q for q in BY_QUESTION if any(q in m["content"] for m in messages if m["role"] == "user"))


def student_reply(messages: list[dict]) -> str:
    rationale = BY_QUESTION[question_of(messages)].rationale
    return rationale if question_of(messages) in RIGHT else wrong(rationale)


def teacher_reply(messages: list[dict]) -> str:
    """What follows the given start in the reference solution (the whole of it without a start)."""
    rationale = BY_QUESTION[question_of(messages)].rationale
    if messages[-1]["role"] != "assistant":
        return rationale
    return rationale[len(messages[-1]["content"]):]


def server_teacher(name: str, url: str, **options) -> TeacherConfig:
    return TeacherConfig(name=name, backend="openai", base_url=url, model=f"{name}-model", api_key_env=None,
                         max_retries=0, timeout_s=5.0, **options)


def test_the_teacher_continues_each_wrong_answer_from_the_line_before_its_first_wrong_step(tmp_path):
    with FakeOpenAI(model="student-model", reply=student_reply) as student, \
            FakeOpenAI(model="teacher-model", reply=teacher_reply) as teacher:
        recipe = Recipe(run=RunConfig(name="run", output_dir=str(tmp_path)), task=TASK,
                        teachers=[server_teacher("student", student.url), server_teacher("teacher", teacher.url, correct=True)],
                        generate=GenerateConfig(limit=8, teacher_mode="cascade", cache_path=str(tmp_path / "cache.sqlite")))
        stats = generate(recipe, console=QUIET)
        assert len(teacher.bodies) == 5  # only the questions the student got wrong
        for body in teacher.bodies:
            start = "\n".join(BY_QUESTION[question_of(body["messages"])].rationale.split("\n")[:2]) + "\n"
            assert body["messages"][-1] == {"role": "assistant", "content": start}
            assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
        rows = [json.loads(line) for line in (tmp_path / "run" / TRACES).read_text().splitlines()]
        corrected = [row for row in rows if row["teacher"] == "teacher"]
        assert len(corrected) == 5
        for row in corrected:  # the student's lines up to the error, then the teacher's: the whole right solution
            example = BY_QUESTION[row["question"]]
            assert row["completion"][0]["content"] == example.rationale
            assert row["corrects"]["error_line"] == 2 and row["corrects"]["lines_kept"] == 2
            assert row["corrects"]["row"] == f"{example.id}#student#0"
        own = stats["teachers"]["teacher"]
        assert own["corrected"] == own["error_found"] == 5 and own["student_lines_kept"] == 10
        assert own["questions_solved"] == 5
        curate(recipe, console=QUIET)
        assert len((tmp_path / "run" / CURATED).read_text().splitlines()) == 8
        served = teacher.total_served
        generate(recipe, force=True, console=QUIET)  # every continuation comes from the cache, keyed by its start
        assert teacher.total_served == served


ASK_LINE = "Which line is the first one with a mistake"


def test_where_the_arithmetic_finds_no_wrong_step_the_teacher_names_it(tmp_path):
    def vague_student(messages: list[dict]) -> str:  # right on three questions; elsewhere no line to check
        question = question_of(messages)
        return BY_QUESTION[question].rationale if question in RIGHT else "Let me see.\nThat is a lot.\nThe answer is 999."

    def judging_teacher(messages: list[dict]) -> str:
        if ASK_LINE in messages[-1]["content"]:
            return "Line 2."  # "That is a lot."
        rationale = BY_QUESTION[question_of(messages)].rationale
        return "\n" + rationale if messages[-1]["role"] == "assistant" else rationale

    with FakeOpenAI(model="student-model", reply=vague_student) as student, \
            FakeOpenAI(model="teacher-model", reply=judging_teacher) as teacher:
        recipe = Recipe(run=RunConfig(name="run", output_dir=str(tmp_path)), task=TASK,
                        teachers=[server_teacher("student", student.url),
                                  server_teacher("teacher", teacher.url, correct=True, locate="teacher")],
                        generate=GenerateConfig(limit=8, teacher_mode="cascade", cache_path=str(tmp_path / "cache.sqlite")))
        stats = generate(recipe, console=QUIET)
        asked = [body for body in teacher.bodies if ASK_LINE in body["messages"][-1]["content"]]
        continued = [body for body in teacher.bodies if body["messages"][-1]["role"] == "assistant"]
        assert len(asked) == len(continued) == 5
        for body in asked:  # the teacher sees the gold answer and the numbered lines
            example = BY_QUESTION[question_of(body["messages"])]
            assert f"The correct final answer is {example.answer}." in body["messages"][-1]["content"]
            assert "1: Let me see.\n2: That is a lot.\n3: The answer is 999." in body["messages"][-1]["content"]
        for body in continued:  # the correction starts after the student's first line, and its prompt holds no hint
            assert body["messages"][-1] == {"role": "assistant", "content": "Let me see.\n"}
            assert not any("correct final answer" in message["content"] for message in body["messages"])
        rows = [json.loads(line) for line in (tmp_path / "run" / TRACES).read_text().splitlines()]
        corrected = [row for row in rows if row["teacher"] == "teacher"]
        assert [row["corrects"]["located"] for row in corrected] == ["teacher"] * 5
        assert all(row["corrects"]["error_line"] == 1 and row["corrects"]["lines_kept"] == 1 for row in corrected)
        own = stats["teachers"]["teacher"]
        assert own["error_found"] == own["error_found_by_teacher"] == own["locate_asked"] == 5
        served = teacher.total_served
        generate(recipe, force=True, console=QUIET)  # the teacher's line numbers come from the cache too
        assert teacher.total_served == served


def test_a_teachers_line_number_names_a_line_of_the_answer_or_none():
    from tutorlm.tasks.steps import judged_line, locate_messages

    text = "First.\n\nSecond.\nThe answer is 4."
    assert judged_line("2", text) == 2 and judged_line("Line 1: First.", text) == 0 and judged_line("3.", text) == 3
    assert judged_line("0", text) is None and judged_line("7", text) is None and judged_line("none", text) is None
    example = EXAMPLES[0]
    prompt = locate_messages(example, text)[0]["content"]
    assert "1: First.\n2: Second.\n3: The answer is 4." in prompt and example.answer in prompt


def test_locate_teacher_is_refused_where_nothing_is_corrected():
    with pytest.raises(ValueError, match="teacher.locate teacher finds the first wrong step"):
        Recipe(teacher=TeacherConfig(backend="hf", model="m", locate="teacher"))
    with pytest.raises(ValueError, match=r"teachers\[1\].locate teacher"):
        Recipe(teachers=[TeacherConfig(name="a", backend="hf", model="m"),
                         TeacherConfig(name="b", backend="hf", model="m", locate="teacher")])
    rounds = Recipe(teacher=TeacherConfig(backend="hf", model="m", locate="teacher"),
                    rounds=RoundsConfig(count=1, rationalize="correct"))
    from tutorlm.rounds import round_recipe

    hinting = round_recipe(rounds, 1).teachers[-1]  # the round's correcting teacher asks for the line too
    assert hinting.correct and hinting.locate == "teacher"


def test_of_several_wrong_answers_the_latest_error_is_continued_and_an_unlocated_one_gets_a_whole_answer():
    task = load_task(TASK)
    planned = plan(task, GenerateConfig(limit=2))
    first, second = planned.examples
    rationale = first.rationale
    rows = [
        {"id": "a", "example_id": first.id, "finish_reason": "stop", "completion": [{"content": "Hmm.\n0 + 0 = 1.\nThe answer is 3."}]},
        {"id": "b", "example_id": first.id, "finish_reason": "stop", "completion": [{"content": wrong(rationale)}]},
        {"id": "c", "example_id": second.id, "finish_reason": "stop", "completion": [{"content": "No idea. The answer is 7."}]},
    ]
    requests, chosen = correction_requests(task, planned, rows, solved=set())
    by_id = {request.example_id: request for request in requests}
    assert chosen[first.id] == {"row": "b", "error_line": 2, "lines_kept": 2}
    assert by_id[first.id].prefix == "\n".join(rationale.split("\n")[:2]) + "\n"
    assert chosen[second.id] == {"row": "c", "error_line": None, "lines_kept": 0} and by_id[second.id].prefix is None
    assert correction_requests(task, planned, rows, solved={first.id, second.id}) == ([], {})
    sampling = Sampling()
    plain = Request(by_id[first.id].messages, 0, first.id)
    assert cache_key("hf", "m", plain, sampling) != cache_key("hf", "m", by_id[first.id], sampling)


def test_a_local_teacher_reads_the_prompt_then_the_given_start(tmp_path):
    from tutorlm.backends.hf import HFBackend

    backend = HFBackend(TeacherConfig(backend="hf", model=str(save_tiny_model(tmp_path / "tiny")), batch_size=2))
    backend._load()
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    texts = backend._prompt_texts([Request(messages, 0, "x", prefix="2 + 3 = 5.\n"), Request(messages, 0, "y")])
    assert texts[0] == texts[1] + "2 + 3 = 5.\n"
    results = {}
    backend.run([Request(messages, 0, "x", prefix="2 + 3 = 5.\n")], Sampling(max_tokens=4), lambda r, c: results.update(c=c))
    assert not results["c"].text.startswith("2 + 3 = 5.") and results["c"].completion_tokens <= 4  # the continuation only


def test_corrections_are_refused_where_they_cannot_run(tmp_path):
    with pytest.raises(ValueError, match="first teacher has none before it"):
        Recipe(teachers=[TeacherConfig(name="a", backend="hf", model="m", correct=True), TeacherConfig(name="b")])
    with pytest.raises(ValueError, match="reference solver writes whole solutions"):
        Recipe(teachers=[TeacherConfig(name="a", backend="hf", model="m"), TeacherConfig(name="b", correct=True)])
    with pytest.raises(ValueError, match="one of several"):
        Recipe(teacher=TeacherConfig(backend="hf", model="m", correct=True))
    with pytest.raises(ValueError, match="rounds.rationalize correct"):
        Recipe(rounds=RoundsConfig(count=1, rationalize="correct"))
    with pytest.raises(ValueError, match="rounds.rationalize correct"):  # the last of several teachers hints
        Recipe(teachers=[TeacherConfig(name="a", backend="hf", model="m"), TeacherConfig(name="b")],
               rounds=RoundsConfig(count=1, rationalize="correct"))
    several = Recipe(teachers=[TeacherConfig(name="a"), TeacherConfig(name="b", backend="hf", model="m")],
                     rounds=RoundsConfig(count=1, rationalize="correct"))  # a model teacher last: it can correct
    assert several.teacher.name == "b"
    path = tmp_path / "r.yaml"
    path.write_text("rounds: {count: 2, rationalize: correct}\n")
    with pytest.raises(ConfigError, match="rounds.rationalize correct"):
        load_recipe(path)
