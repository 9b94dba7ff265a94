"""tutorlm serve with the official openai client against tiny models served on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from fake_openai import FakeOpenAI, free_port  # noqa: E402
from tiny import make_model, make_tokenizer, save_tiny_model, varied_model  # noqa: E402
from tutorlm.serve.route import agreement  # noqa: E402
from tutorlm.serve.workers import LocalModel, RemoteTeacher  # noqa: E402
from tutorlm.serve_config import ServeConfig
from tutorlm.serve.app import build_app, held_back  # noqa: E402

QUESTION = [{"role": "user", "content": "What is 2 + 3? Think step by step."}]
ANSWER = "Add them. 2 + 3 = 5.\nThe answer is 5."


def greedy(model, tokenizer, messages, max_tokens):
    """HF generate, unbatched: what the student must answer."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    output = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True)


def memorizer(tokenizer):
    """A tiny model trained to answer every question with ANSWER, so its samples agree."""
    torch.manual_seed(0)
    model = make_model(tokenizer, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    questions = ["What is 2 + 3?", "Is the coin heads up?", "What is 12 + 30? Think step by step.", QUESTION[0]["content"]]
    batch = []
    for question in questions:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(ANSWER, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        batch.append((prompt_ids, answer_ids))
    for _ in range(150):
        for prompt_ids, answer_ids in batch:
            ids = torch.tensor([prompt_ids + answer_ids])
            labels = torch.tensor([[-100] * len(prompt_ids) + answer_ids])
            loss = model(input_ids=ids, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@contextmanager
def serving(config: ServeConfig, student: LocalModel, teacher=None):
    import uvicorn

    app = build_app(config, student, teacher)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1", app
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def tiny():
    tokenizer = make_tokenizer()
    return tokenizer, varied_model(tokenizer)


def local(model, tokenizer, config, name="student"):
    return LocalModel(model, tokenizer, slots=config.slots, room=config.max_prompt_tokens + config.max_tokens + 32, name=name)


CONFIG = dict(max_prompt_tokens=200, max_tokens=64, slots=8, api_key_env="TUTORLM_TEST_KEY")


def test_chat_streaming_and_completions_match_unbatched_generate(tiny):
    tokenizer, model = tiny
    config = ServeConfig(**CONFIG)
    with serving(config, local(model, tokenizer, config)) as (url, _):
        client = openai.OpenAI(base_url=url, api_key="unused")
        expected = greedy(model, tokenizer, QUESTION, 20)
        reply = client.chat.completions.create(model="student", messages=QUESTION, max_tokens=20, temperature=0)
        assert reply.choices[0].message.content == expected
        assert reply.choices[0].finish_reason in ("stop", "length")
        assert reply.usage.completion_tokens == reply.usage.model_extra["student_tokens"] > 0
        assert reply.usage.model_extra["teacher_tokens"] == 0
        chunks = list(client.chat.completions.create(model="student", messages=QUESTION, max_tokens=20, temperature=0, stream=True,
                                                     stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # token by token, not one piece
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [reply.choices[0].finish_reason]
        assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
        # a raw text prompt through /v1/completions, and two sampled choices with a seed are reproducible
        text = client.completions.create(model="student", prompt="The answer is", max_tokens=5, temperature=0)
        assert text.choices[0].text and text.usage.completion_tokens <= 5
        sampled = [client.chat.completions.create(model="student", messages=QUESTION, max_tokens=12, temperature=1.0, n=2, seed=7)
                   for _ in range(2)]
        assert [c.message.content for c in sampled[0].choices] == [c.message.content for c in sampled[1].choices]
        assert [m.id for m in client.models.list().data] == ["student"]
        health = httpx.get(url.removesuffix("/v1") + "/health").json()
        assert health["status"] == "ok" and health["counts"]["student"] >= 4 and health["tokens"]["student"] > 0


def test_concurrent_clients_decode_together_and_each_gets_its_own_answer(tiny):
    tokenizer, model = tiny
    config = ServeConfig(**CONFIG)
    student = local(model, tokenizer, config)
    questions = [[{"role": "user", "content": f"What is {i} + {i * 3}? Think."}] for i in range(8)]
    expected = [greedy(model, tokenizer, q, 24) for q in questions]
    with serving(config, student) as (url, _):
        client = openai.OpenAI(base_url=url, api_key="unused")

        def ask(messages):
            return client.chat.completions.create(model="student", messages=messages, max_tokens=24, temperature=0).choices[0].message.content

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, questions))
    assert answers == expected
    counters = student.engine.counters
    assert counters["row_steps"] > counters["decode_steps"]  # some steps decoded several clients' rows at once


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(tiny, monkeypatch):
    tokenizer, model = tiny
    monkeypatch.setenv("TUTORLM_TEST_KEY", "s3cret")
    config = ServeConfig(**{**CONFIG, "max_body_bytes": 4096})
    with serving(config, local(model, tokenizer, config)) as (url, _):
        client = openai.OpenAI(base_url=url, api_key="s3cret", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).chat.completions.create(model="student", messages=QUESTION)
        assert httpx.get(f"{url}/models").status_code == 401  # no key at all
        with pytest.raises(openai.NotFoundError) as unknown:
            client.chat.completions.create(model="gpt-4", messages=QUESTION)
        assert unknown.value.code == "model_not_found"
        with pytest.raises(openai.BadRequestError) as too_many:
            client.chat.completions.create(model="student", messages=QUESTION, max_tokens=10_000)
        assert "max_tokens" in str(too_many.value)
        with pytest.raises(openai.BadRequestError) as long_prompt:
            client.chat.completions.create(model="student", messages=[{"role": "user", "content": "heads " * 300}], max_tokens=5)
        assert long_prompt.value.code == "context_length_exceeded"
        headers = {"Authorization": "Bearer s3cret", "Content-Type": "application/json"}
        malformed = httpx.post(f"{url}/chat/completions", content=b"{not json", headers=headers)
        assert malformed.status_code == 400 and malformed.json()["error"]["code"] == "invalid_json"
        big = httpx.post(f"{url}/chat/completions", content=b"{" + b" " * 5000 + b"}", headers=headers)
        assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
        for bad in ({"model": "student"}, {"model": "student", "messages": [{"role": "robot", "content": "x"}]},
                    {"model": "student", "messages": QUESTION, "temperature": "hot"}, [1, 2]):
            response = httpx.post(f"{url}/chat/completions", json=bad, headers=headers)
            assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error", bad
        assert httpx.get(f"{url}/nowhere", headers=headers).status_code == 404
        with pytest.raises(openai.BadRequestError):  # more choices than --max-n
            client.chat.completions.create(model="student", messages=QUESTION, n=99)
        with pytest.raises(openai.NotFoundError):  # without a teacher, escalate is not a model here
            client.chat.completions.create(model="escalate", messages=QUESTION)
        reply = client.chat.completions.create(model="student", messages=QUESTION, max_tokens=5, temperature=0)
        assert reply.choices[0].message.content == greedy(model, tokenizer, QUESTION, 5)


def test_escalation_asks_the_teacher_only_when_the_student_disagrees(tiny):
    tokenizer, random_model = tiny
    confident = memorizer(tokenizer)
    assert agreement([ANSWER, ANSWER, "no idea"]) == (pytest.approx(2 / 3), "5", 0)
    assert agreement(["no idea", "The answer is 7.", ANSWER, ANSWER]) == (0.5, "5", 2)
    assert agreement(["no idea", "The number 5"]) == (0.0, None, None)  # a number guessed from the text is not a vote
    with FakeOpenAI() as teacher_server:
        config = ServeConfig(**{**CONFIG, "teacher": "openai:teacher-model", "teacher_base_url": teacher_server.url,
                                "escalate_samples": 4, "escalate_agreement": 0.75})
        with serving(config, local(confident, tokenizer, config), RemoteTeacher(config)) as (url, _):
            client = openai.OpenAI(base_url=url, api_key="unused")
            reply = client.chat.completions.create(model="escalate", messages=QUESTION, max_tokens=40, temperature=0, seed=1)
            assert teacher_server.total_served == 0
            assert reply.choices[0].message.content == ANSWER
            assert reply.usage.model_extra["teacher_tokens"] == 0
            assert reply.usage.model_extra["student_tokens"] >= 4 * reply.usage.completion_tokens  # all 4 samples are paid for
            assert reply.model_extra["tutorlm"][0]["answered_by"] == "student"
            taught = client.chat.completions.create(model="teacher", messages=QUESTION, max_tokens=40)
            assert teacher_server.total_served == 1 and taught.choices[0].message.content.startswith("Let me think")
        teacher_server.reset_counts()
        with serving(config, local(random_model, tokenizer, config), RemoteTeacher(config)) as (url, _):
            client = openai.OpenAI(base_url=url, api_key="unused")
            reply = client.chat.completions.create(model="escalate", messages=QUESTION, max_tokens=40, temperature=0, seed=1)
            assert teacher_server.total_served == 1  # a random student states no answer: the teacher answers
            assert reply.choices[0].message.content.startswith("Let me think step by step")
            assert reply.usage.model_extra["teacher_tokens"] > 0 and reply.usage.model_extra["student_tokens"] > 0
            with pytest.raises(openai.BadRequestError) as step:
                client.chat.completions.create(model="step", messages=QUESTION, max_tokens=20)
            assert step.value.code == "unsupported_mode"


def test_step_mode_hands_hesitant_lines_to_a_local_teacher(tiny):
    tokenizer, random_model = tiny
    teacher_model = memorizer(tokenizer)
    for floor, helped in ((-1e9, False), (0.0, True)):
        config = ServeConfig(**{**CONFIG, "teacher": "local", "step_logprob": floor, "step_teacher_tokens": 30})
        student, teacher = local(random_model, tokenizer, config), local(teacher_model, tokenizer, config, "teacher")
        with serving(config, student, teacher) as (url, _):
            client = openai.OpenAI(base_url=url, api_key="unused")
            reply = client.chat.completions.create(model="step", messages=QUESTION, max_tokens=40, temperature=0)
        used = reply.usage.model_extra["teacher_tokens"]
        assert reply.usage.model_extra["student_tokens"] > 0
        if helped:  # every line is below a floor of 0: the teacher writes until its 30-token budget is spent
            assert 0 < used <= 30 and reply.model_extra["tutorlm"][0]["steps_helped"] >= 1
            assert "2 + 3 = 5" in reply.choices[0].message.content
        else:
            assert used == 0 and reply.model_extra["tutorlm"][0]["steps_helped"] == 0


def test_held_back_keeps_a_possible_stop_string_out_of_the_stream():
    assert held_back("The answer is 5. Th", ("The end",)) == 2
    assert held_back("abc", ("xyz",)) == 0
    assert held_back("step\n", ("\n\n",)) == 1


def test_cli_serves_a_saved_model_and_finishes_in_flight_requests_on_sigterm(tmp_path):
    model_dir = save_tiny_model(tmp_path / "student")
    port = free_port()
    env = {**os.environ, "TUTORLM_API_KEY": ""}
    process = subprocess.Popen([sys.executable, "-m", "tutorlm", "serve", "--model", str(model_dir), "--port", str(port),
                                "--max-tokens", "400", "--max-prompt-tokens", "100"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        result = {}

        def long_request():
            body = {"model": "student", "messages": QUESTION, "max_tokens": 400, "temperature": 0}
            result["response"] = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)

        thread = threading.Thread(target=long_request)
        thread.start()
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        thread.join(timeout=60)
        assert process.wait(timeout=60) == 0
        response = result["response"]
        assert response.status_code == 200 and response.json()["choices"][0]["finish_reason"] in ("stop", "length")
    finally:
        if process.poll() is None:
            process.kill()
        output = process.stdout.read()
    assert "s3cret" not in output and "on http://127.0.0.1" in output


def test_cli_refuses_bad_settings_with_one_line(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "tutorlm", "serve", "--model", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "nope" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "tutorlm", "serve", "--teacher", "openai:x"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--teacher-base-url" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "tutorlm", "serve", "--escalate-agreement", "2"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--escalate-agreement" in bad.stderr


def test_calibration_curve_by_hand():
    from tutorlm.serve.calibrate import choose, curve, student_votes

    def row(example, index, text, correct, tokens=10):
        return {"example_id": example, "sample_index": index, "completion": text, "correct": correct, "completion_tokens": tokens}

    rows = [row("a", i, "The answer is 5.", True) for i in range(4)]  # agree 4/4, right
    rows += [row("b", i, f"The answer is {7 if i < 3 else 8}.", i < 3) for i in range(4)]  # 3/4, right
    rows += [row("c", i, f"The answer is {i}.", i == 0) for i in range(4)]  # 1/4 each: the first stated wins, right
    rows += [row("d", i, "no idea", False) for i in range(4)]  # states nothing
    votes = student_votes(rows)
    assert {k: v["agreement"] for k, v in votes.items()} == {"a": 1.0, "b": 0.75, "c": 0.25, "d": 0.0}
    assert [votes[k]["correct"] for k in "abcd"] == [True, True, True, False]
    teacher = {"a": {"correct": False, "completion_tokens": 20}, "b": {"correct": True, "completion_tokens": 20},
               "c": {"correct": False, "completion_tokens": 20}, "d": {"correct": True, "completion_tokens": 20}}
    points = curve(votes, teacher, 4)
    by = {(p["mode"], p["agreement"]): p for p in points}
    assert by[("student", None)]["accuracy"] == 0.75 and by[("teacher", None)]["accuracy"] == 0.5
    assert (by[("escalate", 0.25)]["accuracy"], by[("escalate", 0.25)]["teacher_share"]) == (1.0, 0.25)  # only d
    assert (by[("escalate", 0.5)]["accuracy"], by[("escalate", 0.5)]["teacher_share"]) == (0.75, 0.5)  # c, d
    assert by[("escalate", 1.0)]["teacher_share"] == 0.75 and by[("escalate", 0.25)]["teacher_token_share"] == 20 / 180
    assert choose(points, 0.3)["agreement"] == 0.25 and choose(points, 0.1) is None
    assert by[("escalate", 0.5)]["random_accuracy"] == pytest.approx(0.5 * 0.75 + 0.5 * 0.5)


def test_serve_calibrate_on_a_run(tmp_path):
    run = tmp_path / "run"
    save_tiny_model(run / "student")
    done = subprocess.run([sys.executable, "-m", "tutorlm", "serve", "calibrate", "--out", str(run), "--samples", "2", "--limit", "4",
                           "--task.source", "arithmetic", "--teacher.backend", "reference", "--student.model", str(run / "student"),
                           "--eval.max_tokens", "8", "--target-share", "0.5"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads((run / "eval" / "escalation.json").read_text())
    assert result["questions"] == 4 and result["samples"] == 2
    teacher = [p for p in result["points"] if p["mode"] == "teacher"][0]
    assert teacher["accuracy"] == 1.0  # the reference solver
    # a random tiny student states no answer, so every threshold sends every question to the teacher
    assert all(p["teacher_share"] == 1.0 for p in result["points"] if p["mode"] == "escalate") and result["chosen"] is None
    assert "no threshold sends at most 50%" in done.stderr
    report = subprocess.run([sys.executable, "-m", "tutorlm", "report", "--out", str(run)], capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    text = (run / "report.md").read_text()
    assert "## Serving with the teacher's help" in text and "| teacher alone | 100.0% | 100.0% | 100.0% | 100.0% |" in text
    assert "step mode" not in text  # no --step-floors, no step rows or words
    assert (run / "escalation.png").stat().st_size > 1000
    bad = subprocess.run([sys.executable, "-m", "tutorlm", "serve", "calibrate", "--out", str(run), "--temperature", "0"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--temperature" in bad.stderr


def test_serve_calibrate_measures_the_step_mode(tmp_path):
    """--step-floors answers the validation questions in step mode in-process, once per floor (cached like any
    evaluation): a floor no token is below never asks the teacher; a floor above a random model's every token
    asks it on every question; the report shows both and the greedy student they start from."""
    run = tmp_path / "run"
    tokenizer = make_tokenizer()
    for path in (run / "student", tmp_path / "teacher"):  # models that write varied lines (not only newlines)
        varied_model(tokenizer).save_pretrained(path)
        tokenizer.save_pretrained(path)
    command = [sys.executable, "-m", "tutorlm", "serve", "calibrate", "--out", str(run), "--samples", "2", "--limit", "3",
               "--task.source", "arithmetic", "--teacher.backend", "hf", "--teacher.model", str(tmp_path / "teacher"),
               "--student.model", str(run / "student"), "--eval.max_tokens", "24", "--step-teacher-tokens", "12",
               "--generate.cache_path", str(tmp_path / "cache.sqlite"), "--step-floors", "-0.001", "-1000"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    points = json.loads((run / "eval" / "escalation.json").read_text())["points"]
    assert [p["mode"] for p in points][-4:] == ["student (greedy)", "step", "step", "teacher"]
    eager, never = (next(p for p in points if p.get("floor") == floor) for floor in (-0.001, -1000))
    assert never["teacher_share"] == 0 and never["teacher_token_share"] == 0
    assert eager["teacher_share"] == 1.0 and 0 < eager["teacher_token_share"] < 1
    rows = [json.loads(line) for line in (run / "eval" / "calibrate-step@-0.001.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(0 < row["teacher_tokens"] <= 12 for row in rows)  # within --step-teacher-tokens
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "step@-0.001: 0 of 3 to do" in again.stderr.replace("\n", " ")
    report = subprocess.run([sys.executable, "-m", "tutorlm", "report", "--out", str(run)], capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    text = (run / "report.md").read_text()
    assert "| step, log-prob floor -0.001 |" in text and "| student alone (greedy) |" in text
    bad = subprocess.run([*command[:command.index("--teacher.backend")], "--teacher.backend", "reference", "--step-floors", "-1"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "needs a local teacher" in bad.stderr
    bad = subprocess.run([*command[:-2], "0.5"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "below 0" in bad.stderr


def test_eval_through_the_server_records_the_teachers_share(tiny, tmp_path):
    """`tutorlm eval` evaluates a served mode like any OpenAI-compatible model; escalate@T sets the threshold per
    request, and the rows keep the student's and the teacher's tokens apart."""
    from tutorlm.cli.main import main

    tokenizer, random_model = tiny
    with FakeOpenAI() as teacher_server:
        config = ServeConfig(**{**CONFIG, "teacher": "openai:teacher-model", "teacher_base_url": teacher_server.url})
        with serving(config, local(random_model, tokenizer, config), RemoteTeacher(config)) as (url, _):
            status = main(["eval", "--model", "openai:escalate@0.5", "--teacher.base_url", url, "--teacher.api_key_env", "NONE_SET",
                           "--task.source", "arithmetic", "--eval.limit", "3", "--eval.max_tokens", "16", "--out", str(tmp_path / "ev")])
            assert status == 0
            assert teacher_server.total_served == 3  # the random student never states an answer
            with pytest.raises(openai.NotFoundError):
                openai.OpenAI(base_url=url, api_key="x").chat.completions.create(model="escalate@2", messages=QUESTION)
    rows = [json.loads(line) for line in (tmp_path / "ev" / "eval" / "escalate_0.5.jsonl").read_text().splitlines()]
    assert all(row["teacher_tokens"] > 0 and row["student_tokens"] > 0 for row in rows)
    summary = json.loads((tmp_path / "ev" / "eval" / "summary.json").read_text())["escalate_0.5"]
    assert 0 < summary["teacher_token_share"] < 1


def test_a_line_hesitates_on_a_reflection_word_or_one_unsure_token():
    from tutorlm.serve.route import hesitates

    assert hesitates("Wait, let me check that.", [-0.01, -0.02], -0.7)
    assert hesitates("3 + 4 = 8", [-0.01, -0.05, -0.9, -0.01], -0.7)  # one token below p = 0.5
    assert not hesitates("3 + 4 = 7", [-0.01, -0.05, -0.3, -0.01], -0.7)
    assert not hesitates("3 + 4 = 7", [], -0.7)


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_hangs_up_stops_its_row(tiny, stream):
    """A streaming client that leaves after a few tokens, or a plain one that times out: its row stops decoding."""
    tokenizer, model = tiny
    config = ServeConfig(**{**CONFIG, "max_tokens": 1500})
    student = local(model, tokenizer, config)
    student.engine.stop_ids = set()  # a long answer: only max_tokens would end it
    with serving(config, student) as (url, _):
        body = {"model": "student", "messages": QUESTION, "max_tokens": 1500, "temperature": 0, "stream": stream}
        if stream:
            with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=60) as response:
                for number, _ in enumerate(response.iter_lines()):
                    if number > 5:
                        break  # leave after a few tokens
        else:
            with pytest.raises(httpx.TimeoutException):
                httpx.post(f"{url}/chat/completions", json=body, timeout=0.3)
        time.sleep(2.5)
        spent = student.tokens_out
        time.sleep(1)
        assert student.tokens_out == spent < 1500  # the row ended when its client left, and nothing decodes since
        assert student.engine.counters["decode_steps"] < 1500


def test_a_calibrated_modes_cache_identity_carries_only_its_own_settings(tmp_path):
    """Changing escalation's settings keeps the step mode's cached answers, and the other way round."""
    from tutorlm.config import TeacherConfig
    from tutorlm.serve.route import RouterBackend

    model = str(save_tiny_model(tmp_path / "m"))
    student = teacher = TeacherConfig(backend="hf", model=model)

    def identity(mode: str, **settings) -> str:
        return RouterBackend(mode, student, teacher, ServeConfig(**{**CONFIG, **settings}), threshold=0.5).cache_identity

    assert identity("step") == identity("step", escalate_samples=8) != identity("step", step_teacher_tokens=64)
    assert identity("escalate") == identity("escalate", step_teacher_tokens=64) != identity("escalate", escalate_samples=8)


TOOL_SCRIPTS = {
    "Compute 17 * 23 + 4.": "```python\nimport time\ntime.sleep(0.6)\nprint(17 * 23 + 4)\n```\n```output\n395\n```\nThe answer is 395.",
    "Say no.": "The answer is No.",
}


def test_the_student_runs_its_code_per_request_and_frees_its_slot_while_the_code_runs():
    from tiny import prompt_ids, scripted_model
    from tutorlm.models.engine import Engine, RowSettings
    from tutorlm.tools.loop import ToolLoop, ToolSettings

    tokenizer = make_tokenizer()
    model = scripted_model(tokenizer, TOOL_SCRIPTS)
    config = ServeConfig(**{**CONFIG, "slots": 1, "max_tool_calls": 2})  # one slot: a row waiting on its code must give it up
    computing = [{"role": "user", "content": "Compute 17 * 23 + 4."}]
    tools = [{"type": "code_interpreter"}]
    # what generate and eval write for the same prompt (tools/loop.py on the offline engine)
    offline = {}
    ToolLoop(Engine(model, slots=2, pad_token_id=tokenizer.pad_token_id, stop_ids={tokenizer.eos_token_id}), tokenizer,
             ToolSettings(max_calls=2)).run([prompt_ids(tokenizer, "Compute 17 * 23 + 4.")], [RowSettings(64, seed=0)],
                                            finished=lambda i, tokens, *rest: offline.setdefault(i, (tokens, rest[-2])))
    student = local(model, tokenizer, config)
    with serving(config, student, local(model, tokenizer, config, name="teacher")) as (url, _):
        def post(body, path="chat/completions"):
            return httpx.post(f"{url}/{path}", json=body, timeout=60)

        finished_at = {}

        def ask(name, messages, **extra):
            reply = post({"model": "student", "messages": messages, "max_tokens": 64, "temperature": 0, **extra})
            finished_at[name] = time.perf_counter()
            return reply

        with ThreadPoolExecutor(2) as pool:
            slow = pool.submit(ask, "tool", computing, tools=tools)
            time.sleep(0.2)  # the tool row is in its sandbox call by now
            quick = pool.submit(ask, "plain", [{"role": "user", "content": "Say no."}])
            slow, quick = slow.result().json(), quick.result().json()
        assert quick["choices"][0]["message"]["content"] == "The answer is No."
        assert finished_at["plain"] < finished_at["tool"]  # it took the slot the waiting row left
        content = slow["choices"][0]["message"]["content"]
        assert "```output\n395\n```" in content and content.rstrip().endswith("The answer is 395.")
        tokens, written = offline[0]
        assert content == tokenizer.decode(tokens, skip_special_tokens=True)  # the server's transcript is the loop's
        [call] = slow["tutorlm"][0]["tool_calls"]
        assert call["ok"] and call["output"] == "395\n" and call["seconds"] >= 0.6 and "17 * 23" in call["code"]
        assert slow["usage"]["completion_tokens"] == sum(written) < len(tokens)  # the model's tokens, not the tool's
        streamed = httpx.post(f"{url}/chat/completions", json={"model": "student", "messages": computing, "max_tokens": 64,
                                                               "temperature": 0, "tools": tools, "stream": True}, timeout=60)
        pieces = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
        assert "".join(p["choices"][0]["delta"].get("content", "") for p in pieces if p["choices"]) == content
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)  # as docs/serving.md shows it
        reply = client.chat.completions.create(model="student", messages=computing, max_tokens=64, temperature=0, tools=tools,
                                               extra_body={"max_tool_calls": 1})
        assert reply.choices[0].message.content == content and reply.model_extra["tutorlm"][0]["tool_calls"][0]["output"] == "395\n"
        assert httpx.get(url.removesuffix("/v1") + "/health").json()["counts"]["tool_calls"] == 3
        for bad, param in (({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools[0].type"),
                           ({"tools": tools, "max_tool_calls": 3}, "max_tool_calls"),
                           ({"tools": tools, "max_tool_calls": 0}, "max_tool_calls"),
                           ({"max_tool_calls": 1}, "max_tool_calls"),
                           ({"tools": "python"}, "tools"),
                           ({"tools": tools, "model": "escalate"}, "tools")):
            response = post({"model": "student", "messages": computing, **bad})
            assert response.status_code == 400 and response.json()["error"]["param"] == param, bad
        refused = post({"model": "student", "prompt": "Compute", "tools": tools}, path="completions")
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "tools"
    assert student.engine.counters["prefills"] >= 3  # the tool row came back as a row of its own
