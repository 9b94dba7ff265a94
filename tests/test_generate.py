"""Trace generation against a real HTTP server on 127.0.0.1, the hf backend, and the reference teacher."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fake_openai import FAULTS, FakeOpenAI
from rich.console import Console

from tutorlm.backends import FatalBackendError
from tutorlm.config import GenerateConfig, Recipe, RunConfig, TaskConfig, TeacherConfig
from tutorlm.generate import GenerationIncomplete, generate, generate_stage_config
from tutorlm.run import FAILURES, PARTIAL, TRACES

KEY_ENV = "TUTORLM_TEST_TEACHER_KEY"
SECRET = "sk-test-5b1f0c9e7d2a4e6f8a0b1c2d3e4f5a6b"
QUIET = Console(file=open(os.devnull, "w"))


def make_recipe(tmp_path: Path, url: str, *, task: str = "coin_flip", model: str = "teacher-model", **generate_options) -> Recipe:
    options = {"limit": 10, "cache_path": str(tmp_path / "cache.sqlite"), **generate_options}
    return Recipe(
        run=RunConfig(name="run", output_dir=str(tmp_path)),
        task=TaskConfig(source=task),
        teacher=TeacherConfig(backend="openai", base_url=url, model=model, api_key_env=KEY_ENV, max_concurrency=4,
                              timeout_s=0.5, max_retries=4, backoff_base_s=0.01),
        generate=GenerateConfig(**options),
    )


def read_traces(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "run" / TRACES).read_text().splitlines()]


@pytest.fixture(autouse=True)
def teacher_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


def test_every_completion_produced_exactly_once_despite_faults(tmp_path):
    # Each request's first attempt fails with one of the faults, in rotation; the second succeeds.
    def fault_for(key: str, attempt: int) -> str | None:
        return FAULTS[int(key[:8], 16) % len(FAULTS)] if attempt == 0 else None

    with FakeOpenAI(api_key=SECRET, fault_for=fault_for, slow_s=1.0) as server:
        stats = generate(make_recipe(tmp_path, server.url, limit=12, n=2, temperature=0.7), console=QUIET)
        assert set(server.served.values()) == {1} and len(server.served) == 24
        faults_seen = {FAULTS[int(key[:8], 16) % len(FAULTS)] for key in server.attempts}
    assert faults_seen == set(FAULTS)
    rows = read_traces(tmp_path)
    assert len(rows) == 24 and len({row["id"] for row in rows}) == 24
    assert stats["calls_made"] == 24 and stats["failures"] == 0 and stats["retries"] >= 24
    assert all(row["completion"][0]["content"].endswith(".") and row["finish_reason"] == "stop" for row in rows)
    row = rows[0]
    assert row["prompt"][-1]["role"] == "user" and row["completion"][0]["role"] == "assistant"
    assert row["usage"]["completion_tokens"] > 0 and row["backend"] == "openai" and row["model"] == "teacher-model"


def test_rerun_is_served_from_cache_and_n_or_temperature_invalidate_only_their_entries(tmp_path):
    with FakeOpenAI(api_key=SECRET) as server:
        generate(make_recipe(tmp_path, server.url, n=2, temperature=0.7), console=QUIET)
        assert server.total_served == 20
        server.reset_counts()
        stats = generate(make_recipe(tmp_path, server.url, n=2, temperature=0.7), force=True, console=QUIET)
        assert server.total_served == 0 and stats["cache_hits"] == 20 and stats["calls_made"] == 0
        assert len(read_traces(tmp_path)) == 20
        stats = generate(make_recipe(tmp_path, server.url, n=3, temperature=0.7), console=QUIET)
        assert server.total_served == 10 and stats["cache_hits"] == 20  # only sample index 2 is new
        server.reset_counts()
        generate(make_recipe(tmp_path, server.url, n=3, temperature=0.9), console=QUIET)
        assert server.total_served == 30  # a new temperature is a new sampling setup
        server.reset_counts()
        generate(make_recipe(tmp_path, server.url, n=3, temperature=0.9), console=QUIET)
        assert server.total_served == 0  # skipped: the manifest says the stage is current


def test_no_cache_calls_every_time(tmp_path):
    with FakeOpenAI(api_key=SECRET) as server:
        generate(make_recipe(tmp_path, server.url, cache=False), console=QUIET)
        generate(make_recipe(tmp_path, server.url, cache=False), force=True, console=QUIET)
        assert server.total_served == 20
    assert not (tmp_path / "cache.sqlite").exists()


def test_sigkill_then_rerun_makes_exactly_the_missing_calls(tmp_path):
    cache = tmp_path / "cache.sqlite"
    command = [sys.executable, "-m", "tutorlm", "generate", "--task.source", "coin_flip", "--generate.limit", "30",
               "--generate.n", "2", "--generate.temperature", "0.7", "--teacher.backend", "openai",
               "--teacher.model", "teacher-model", "--teacher.api_key_env", KEY_ENV, "--teacher.max_concurrency", "2",
               "--generate.cache_path", str(cache), "--out", str(tmp_path / "run")]
    with FakeOpenAI(api_key=SECRET, delay_s=0.05) as server:
        command += ["--teacher.base_url", server.url]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while server.total_served < 15 and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert 15 <= server.total_served < 60, "the run was not killed mid-way"
        assert not (tmp_path / "run" / TRACES).exists()
        with sqlite3.connect(cache) as db:
            completed = db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
        assert completed >= 13  # committed as they arrived (at most the 2 in flight are lost)
        # what was finished can be read while (or after) the run goes: one trace row per line, as it arrived
        partial_lines = (tmp_path / "run" / PARTIAL).read_text().splitlines()
        partial = [json.loads(line) for line in partial_lines if line.endswith("}")]
        assert completed - 1 <= len(partial) <= completed
        assert all(row["completion"][0]["content"] and row["example_id"] for row in partial)
        server.reset_counts()
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert server.total_served == 60 - completed
    # stderr is not a terminal: progress comes as plain lines with the count, rate and ETA
    assert re.search(r"generate: \d+ of 60 to do; \d+ already done", result.stderr)
    assert re.search(r"generate 60/60 \(100%\) [\d.]+/s ETA done", result.stderr)
    assert not (tmp_path / "run" / PARTIAL).exists()
    rows = read_traces(tmp_path)
    assert len(rows) == 60 and len({row["id"] for row in rows}) == 60


def test_failed_requests_are_listed_and_a_rerun_retries_only_those(tmp_path):
    broken = {"on": True}

    def fault_for(key: str, attempt: int) -> str | None:
        return "500" if broken["on"] and int(key[:8], 16) % 4 == 0 else None

    with FakeOpenAI(api_key=SECRET, fault_for=fault_for) as server:
        with pytest.raises(GenerationIncomplete, match="Run the same command again"):
            generate(make_recipe(tmp_path, server.url, limit=20), console=QUIET)
        failures = [json.loads(line) for line in (tmp_path / "run" / FAILURES).read_text().splitlines()]
        assert failures and all("HTTP 500" in row["error"] for row in failures)
        assert len(read_traces(tmp_path)) == 20 - len(failures)
        manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
        assert manifest["stages"]["generate"]["status"] == "incomplete"
        broken["on"] = False
        server.reset_counts()
        generate(make_recipe(tmp_path, server.url, limit=20), console=QUIET)
        assert server.total_served == len(failures)
    assert len(read_traces(tmp_path)) == 20 and not (tmp_path / "run" / FAILURES).exists()


def test_bad_request_fails_that_item_without_retries(tmp_path):
    with FakeOpenAI(api_key=SECRET, fault_for=lambda key, attempt: "400") as server:
        with pytest.raises(GenerationIncomplete):
            generate(make_recipe(tmp_path, server.url, limit=3), console=QUIET)
        assert sum(server.attempts.values()) == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [("key", r"refused the request \(HTTP 401\): check the API key in environment variable"),
     ("model", "model 'no-such-model' not found"),
     ("url", "cannot connect to")],
)
def test_fatal_errors_stop_at_once(tmp_path, monkeypatch, change, message):
    with FakeOpenAI(api_key=SECRET) as server:
        url, model = server.url, "teacher-model"
        if change == "key":
            monkeypatch.setenv(KEY_ENV, "sk-wrong")
        elif change == "model":
            model = "no-such-model"
        else:
            url = "http://127.0.0.1:9/v1"
        started = time.monotonic()
        with pytest.raises(FatalBackendError, match=message):
            generate(make_recipe(tmp_path, url, model=model), console=QUIET)
        assert time.monotonic() - started < 5
        assert sum(server.attempts.values()) <= 4  # no retry storm: at most the requests already in flight
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["generate"]["status"] == "failed"


@pytest.mark.parametrize("where", ["models", "completions"])
def test_a_web_page_instead_of_json_stops_the_run_at_once(tmp_path, where):
    # A wrong base_url behind a proxy or a web UI answers 200 with HTML: no retry can fix that.
    fault = (lambda key, attempt: "html") if where == "completions" else (lambda key, attempt: None)
    with FakeOpenAI(api_key=SECRET, fault_for=fault, html_models=where == "models") as server:
        started = time.monotonic()
        with pytest.raises(FatalBackendError, match=r"127\.0\.0\.1:\d+/v1/(models|chat/completions) answered HTTP 200 "
                                                    r"with something that is not JSON \(text/html"):
            generate(make_recipe(tmp_path, server.url, limit=16), console=QUIET)
        assert time.monotonic() - started < 5
        assert sum(server.attempts.values()) <= 4  # at most the requests already in flight, none retried
    assert not (tmp_path / "cache.sqlite").exists() or not sqlite3.connect(tmp_path / "cache.sqlite").execute(
        "SELECT count(*) FROM completions").fetchone()[0]


@pytest.mark.parametrize("empty", ["empty", "null"])
def test_an_empty_completion_is_retried_and_never_cached(tmp_path, empty):
    with FakeOpenAI(api_key=SECRET, fault_for=lambda key, attempt: empty if attempt == 0 else None) as server:
        stats = generate(make_recipe(tmp_path, server.url, limit=4), console=QUIET)
    assert stats["calls_made"] == 4 and stats["retries"] >= 4
    assert all(row["completion"][0]["content"].strip() for row in read_traces(tmp_path))
    # Always empty: the calls fail, are reported, and nothing is cached, so a rerun asks again.
    recipe = make_recipe(tmp_path, "", limit=3, seed=7)
    with FakeOpenAI(api_key=SECRET, fault_for=lambda key, attempt: empty) as server:
        recipe.teacher.base_url = server.url
        with pytest.raises(GenerationIncomplete, match="empty completion"):
            generate(recipe, console=QUIET)
    cached = sqlite3.connect(tmp_path / "cache.sqlite").execute("SELECT count(*) FROM completions").fetchone()[0]
    assert cached == 4  # the first run's four, none of the second's
    failures = (tmp_path / "run" / FAILURES).read_text().splitlines()
    assert len(failures) == 3 and "empty completion" in failures[0]


def test_a_second_generate_on_the_same_run_directory_is_refused(tmp_path):
    import threading

    from tutorlm.errors import RunDirError

    with FakeOpenAI(api_key=SECRET, delay_s=0.3) as server:
        recipe = make_recipe(tmp_path, server.url, limit=8)
        first = threading.Thread(target=generate, args=(recipe,), kwargs={"console": QUIET})
        first.start()
        while not server.bodies:  # the first run is paying for calls
            time.sleep(0.01)
        with pytest.raises(RunDirError, match=r"tutorlm generate \(pid \d+\) is working in this run directory"):
            generate(recipe, console=QUIET)
        first.join()
        assert server.total_served == 8  # every call paid for once
        stats = generate(recipe, console=QUIET)  # once the first is done, the directory is free again
    assert stats == json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["generate"]["stats"]


def test_api_key_never_reaches_disk(tmp_path):
    with FakeOpenAI(api_key=SECRET) as server:
        generate(make_recipe(tmp_path, server.url, top_logprobs=2), console=QUIET)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "cache.sqlite" for p in files) and any(p.name == TRACES for p in files)
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    manifest = (tmp_path / "run" / "manifest.json").read_text()
    assert KEY_ENV in manifest  # the variable's name is recorded, not its value


def test_top_logprobs_are_requested_and_stored(tmp_path):
    with FakeOpenAI(api_key=SECRET) as server:
        generate(make_recipe(tmp_path, server.url, limit=2, top_logprobs=3), console=QUIET)
        assert all(body["logprobs"] is True and body["top_logprobs"] == 3 for body in server.bodies)
    row = read_traces(tmp_path)[0]
    assert len(row["logprobs"][0]["top"]) == 3 and "teacher_topk" not in row  # tokens by text: kept as they came
    assert all("return_tokens_as_token_ids" not in body for body in server.bodies)


def test_a_servers_token_ids_are_stored_compactly_when_asked(tmp_path):
    from fake_openai import fake_token_id

    from tutorlm.models import topk

    with FakeOpenAI(api_key=SECRET) as server:
        recipe = make_recipe(tmp_path, server.url, limit=2, top_logprobs=3)
        assert generate(recipe, console=QUIET)["calls_made"] == 2
        recipe.generate.token_ids = True
        stats = generate(recipe, console=QUIET)
        assert stats["calls_made"] == 2  # another request than without ids: not served from the cache
        assert [body.get("return_tokens_as_token_ids") for body in server.bodies] == [None, None, True, True]
    row = read_traces(tmp_path)[0]
    words = row["completion"][0]["content"].split()
    ids, logprobs, chosen = topk.unpack(row["teacher_topk"])
    assert row["completion_token_ids"] == [fake_token_id(word) for word in words] and "logprobs" not in row
    assert ids.tolist() == [[fake_token_id(word) + i for i in range(3)] for word in words]
    assert torch.allclose(logprobs[0], torch.tensor([-0.1, -1.1, -2.1]), atol=1e-2) and stats["topk_k"] == 3


def test_several_endpoints_share_the_load(tmp_path):
    with FakeOpenAI(api_key=SECRET, delay_s=0.02) as first, FakeOpenAI(api_key=SECRET, delay_s=0.02) as second:
        recipe = make_recipe(tmp_path, first.url, limit=40)
        recipe.teacher.base_url = [first.url, second.url]
        generate(recipe, console=QUIET)
        assert first.total_served + second.total_served == 40
        assert first.total_served >= 10 and second.total_served >= 10


def test_rationalization_hides_the_hint_from_the_training_prompt(tmp_path):
    with FakeOpenAI(api_key=SECRET) as server:
        generate(make_recipe(tmp_path, server.url, limit=4, rationalize=True), console=QUIET)
        sent = [body["messages"][-1]["content"] for body in server.bodies]
    rows = read_traces(tmp_path)
    for row in rows:
        assert f"The correct answer is {row['answer']}" in row["teacher_prompt"][-1]["content"]
        assert "correct answer" not in row["prompt"][-1]["content"]
    assert all("The correct answer is" in content for content in sent)


def test_style_goes_to_the_teacher_only(tmp_path):
    style = "Be brief: one short line per step."
    with FakeOpenAI(api_key=SECRET) as server:
        generate(make_recipe(tmp_path, server.url, limit=3, style=style), console=QUIET)
        sent = [body["messages"][-1]["content"] for body in server.bodies]
    assert len(sent) == 3 and all(content.endswith("\n\n" + style) for content in sent)
    for row in read_traces(tmp_path):
        assert row["teacher_prompt"][-1]["content"].endswith(style)
        assert style not in json.dumps(row["prompt"])  # the student trains on the question as evaluated


def test_few_shot_demonstrations_come_from_the_validation_split(tmp_path):
    with FakeOpenAI(api_key=SECRET) as server:
        recipe = make_recipe(tmp_path, server.url, limit=2, few_shot=2, system_prompt="Be brief.")
        generate(recipe, console=QUIET)
    from tutorlm.generate import plan
    from tutorlm.tasks import load_task, split_of

    # the teacher sees the shots; the student's training prompt (the trace's) is the plain question, as at evaluation
    prompt = plan(load_task(recipe.task), recipe.generate).requests[0].messages
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert split_of(prompt[1]["content"].split("\n\n")[0]) == "validation"
    assert [m["role"] for m in read_traces(tmp_path)[0]["prompt"]] == ["system", "user"]


def test_reference_teacher_end_to_end(tmp_path):
    recipe = Recipe(run=RunConfig(name="run", output_dir=str(tmp_path)), task=TaskConfig(source="last_letters"),
                    generate=GenerateConfig(limit=25, cache_path=str(tmp_path / "cache.sqlite")))
    stats = generate(recipe, console=QUIET)
    rows = read_traces(tmp_path)
    assert stats["calls_made"] == 25 and len(rows) == 25
    from tutorlm.tasks import load_task

    task = load_task(recipe.task)
    examples = {e.id: e for e in task.examples("train", 25)}
    assert all(task.grade(examples[row["example_id"]], row["completion"][0]["content"]).correct for row in rows)


def test_a_reworded_instruction_makes_generated_traces_stale(tmp_path, monkeypatch):
    from tutorlm.run import RunDir

    recipe = Recipe(run=RunConfig(name="run", output_dir=str(tmp_path)), task=TaskConfig(source="last_letters"),
                    generate=GenerateConfig(limit=3, cache_path=str(tmp_path / "cache.sqlite")))
    generate(recipe, console=QUIET)
    run = RunDir(recipe.run.path)
    assert run.is_current("generate", generate_stage_config(recipe), {})
    monkeypatch.setattr("tutorlm.tasks.base.answer_instruction", lambda kind, tools=False: "Answer in one word.")
    assert not run.is_current("generate", generate_stage_config(recipe), {})  # same config, other prompts
    generate(recipe, console=QUIET)
    assert all(row["prompt"][-1]["content"].endswith("Answer in one word.") for row in read_traces(tmp_path))


def test_hf_backend_on_a_tiny_model(tmp_path):
    from tiny import save_tiny_model

    from tutorlm.models import topk

    model_dir = save_tiny_model(tmp_path / "tiny")
    recipe = Recipe(
        run=RunConfig(name="run", output_dir=str(tmp_path)), task=TaskConfig(source="coin_flip"),
        teacher=TeacherConfig(backend="hf", model=str(model_dir), batch_size=3),
        generate=GenerateConfig(limit=5, n=2, temperature=1.0, max_tokens=12, top_logprobs=2,
                                cache_path=str(tmp_path / "cache.sqlite")),
    )
    stats = generate(recipe, console=QUIET)
    rows = read_traces(tmp_path)
    assert len(rows) == 10 and stats["calls_made"] == 10
    for row in rows:
        assert row["finish_reason"] in ("stop", "length") and 0 <= row["usage"]["completion_tokens"] <= 12
        assert row["usage"]["prompt_tokens"] > 20 and row["backend"] == "hf"
        # A local teacher's top-k is stored compactly, by token id (tutorlm/models/topk.py).
        ids, logprobs, chosen = topk.unpack(row["teacher_topk"])
        assert "logprobs" not in row and row["tokenizer"] == str(model_dir)
        assert ids.shape == logprobs.shape == (row["usage"]["completion_tokens"], 2) == (len(row["completion_token_ids"]), 2)
        assert bool((logprobs[:, 0] >= logprobs[:, 1]).all()) and bool((chosen <= logprobs[:, 0] + 1e-2).all())
    assert stats["topk_k"] == 2 and 0 < stats["topk_bytes_per_token"] <= 8 * 2 + 3
    # Greedy decoding is deterministic and independent of batch composition.
    greedy = Recipe(run=RunConfig(name="greedy", output_dir=str(tmp_path)), task=recipe.task, teacher=recipe.teacher,
                    generate=GenerateConfig(limit=5, max_tokens=12, cache=False))
    generate(greedy, console=QUIET)
    first = [json.loads(line)["completion"] for line in (tmp_path / "greedy" / TRACES).read_text().splitlines()]
    greedy.teacher.batch_size = 1
    generate(greedy, force=True, console=QUIET)
    again = [json.loads(line)["completion"] for line in (tmp_path / "greedy" / TRACES).read_text().splitlines()]
    assert first == again


def test_generate_command_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tutorlm", "generate", "--task.source", "arithmetic", "--generate.limit", "5",
         "--generate.cache_path", str(tmp_path / "c.sqlite"), "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "new teacher calls" in result.stderr and len(read_traces(tmp_path)) == 5
    bad = subprocess.run([sys.executable, "-m", "tutorlm", "generate", "--generate.n", "4", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "temperature > 0" in bad.stderr


def test_reference_teacher_needs_solutions(tmp_path):
    from tutorlm.tasks import DataError

    data = tmp_path / "plain.jsonl"
    data.write_text('{"question": "q1", "answer": "1"}\n{"question": "q2", "answer": "2"}\n')
    recipe = Recipe(run=RunConfig(name="run", output_dir=str(tmp_path)),
                    task=TaskConfig(source=str(data), splits={"train": str(data)}),
                    generate=GenerateConfig(cache_path=str(tmp_path / "c.sqlite")))
    with pytest.raises(DataError, match="2 of 2 in plain have none"):
        generate(recipe, console=QUIET)


def test_skip_asks_fresh_questions_and_leaves_earlier_runs_current(tmp_path):
    from tutorlm.tasks import DataError

    data = tmp_path / "five.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(5)))
    cache = str(tmp_path / "cache.sqlite")
    first = Recipe(run=RunConfig(name="first", output_dir=str(tmp_path)), task=TaskConfig(source="last_letters"),
                   generate=GenerateConfig(limit=4, cache_path=cache))
    generate(first, console=QUIET)
    # the stage key without skip is the key from before the setting existed: the finished run stays current
    assert "skip" not in generate_stage_config(first)["generate"]
    later = Recipe(run=RunConfig(name="later", output_dir=str(tmp_path)), task=TaskConfig(source="last_letters"),
                   generate=GenerateConfig(limit=3, skip=4, cache_path=cache))
    stats = generate(later, console=QUIET)
    seen = {json.loads(line)["example_id"] for line in (first.run.path / TRACES).read_text().splitlines()}
    fresh = [json.loads(line)["example_id"] for line in (later.run.path / TRACES).read_text().splitlines()]
    from tutorlm.tasks import load_task

    expected = [example.id for example in load_task(later.task).examples("train", 7)[4:]]
    assert sorted(fresh) == sorted(expected) and not seen & set(fresh)
    assert stats["calls_made"] == 3 and stats["cache_hits"] == 0
    with pytest.raises(ValueError, match="skip must be >= 0"):
        GenerateConfig(skip=-1)
    past = Recipe(run=RunConfig(name="past", output_dir=str(tmp_path)), task=TaskConfig(source=str(data)),
                  generate=GenerateConfig(limit=3, skip=5, cache_path=cache))
    with pytest.raises(DataError, match="generate.skip 5: the train split of .* has no question after the first 5"):
        generate(past, console=QUIET)
    assert not past.run.path.exists()


def test_questions_the_reference_solver_cannot_answer_are_left_out_not_failed(tmp_path):
    """With the tool, the reference solver writes a GSM8K-style solution only where its calculator notes make a
    program; the others would be refused on every rerun, so they are listed and left out and the stage completes."""
    from tutorlm.run import UNANSWERED

    data = tmp_path / "notes.jsonl"
    data.write_text(json.dumps({"question": "Tom has 3 apples and gets 4. How many?",
                                "answer": "He has 3+4=<<3+4=7>>7 apples.\n#### 7"}) + "\n"
                    + json.dumps({"question": "How many legs has a bird?", "answer": "Birds stand on two legs.\n#### 2"}) + "\n")
    recipe = Recipe(run=RunConfig(name="run", output_dir=str(tmp_path)),
                    task=TaskConfig(source=str(data), splits={"train": str(data)}, tools="python"),
                    generate=GenerateConfig(cache=False))
    stats = generate(recipe, console=QUIET)
    assert stats["samples_written"] == 1 and stats["unanswered"] == 1 and stats["failures"] == 0
    listed = [json.loads(line) for line in (tmp_path / "run" / UNANSWERED).read_text().splitlines()]
    assert len(listed) == 1 and "Python" in listed[0]["error"]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["generate"]["status"] != "incomplete"
    assert not (tmp_path / "run" / FAILURES).exists()
    assert generate(recipe, console=QUIET)["unanswered"] == 1  # current: the stage is not redone
