"""On-policy distillation on tiny models built in the test: the student samples, a local teacher grades every token."""

from __future__ import annotations

import json
import os

import pytest
import torch
from rich.console import Console
from tiny import different_tokenizer, make_model, make_run, make_tokenizer, prepared, save_tiny_model

from tutorlm.config import TrainConfig
from tutorlm.errors import PreflightError
from tutorlm.train.data import batch_order, batches, preflight
from tutorlm.train.kd import kd_loss
from tutorlm.train.loop import train
from tutorlm.train.on_policy import OnPolicy
from tutorlm.train.rollout import prompts_of

QUIET = Console(file=open(os.devnull, "w"))


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def objective_for(recipe, tokenizer, student):
    return prepared(OnPolicy, recipe, tokenizer, student)


def test_prompts_are_the_same_from_packed_and_padded_batches(tmp_path, tokenizer):
    recipe = make_run(tmp_path)
    from tutorlm.run import read_jsonl

    examples, _ = preflight(tokenizer, read_jsonl(recipe.run.path / "curated.jsonl"), 256, "truncate")
    order = batch_order(examples, 4, 0, 0, False)[:2]
    for indices in order:
        padded = prompts_of(next(batches(examples, [indices], False, tokenizer.pad_token_id)))
        packed = prompts_of(next(batches(examples, [indices], True, tokenizer.pad_token_id)))
        expected = [examples[i].input_ids[: examples[i].labels.index(next(l for l in examples[i].labels if l != -100))] for i in indices]
        assert padded == packed == expected


@pytest.mark.parametrize("loss,divergence", [("sampled", "reverse_kl"), ("divergence", "reverse_kl"), ("divergence", "jsd"),
                                             ("divergence", "forward_kl")])
def test_a_teacher_equal_to_the_student_gives_zero_loss_and_zero_gradient_on_its_samples(tmp_path, tokenizer, loss, divergence):
    teacher_dir = save_tiny_model(tmp_path / "teacher", seed=3)
    recipe = make_run(tmp_path, objective="on_policy", kd_teacher=str(teacher_dir), on_policy_loss=loss,
                      kd_divergence=divergence, on_policy_max_tokens=16)
    student = make_model(tokenizer, seed=3)
    objective, examples = objective_for(recipe, tokenizer, student)
    batch = next(batches(examples, [[0, 1, 2]], False, tokenizer.pad_token_id))
    value, tokens = objective.loss(student, batch)
    value.backward()
    assert tokens > 0 and abs(value.item()) < 1e-6
    assert max(p.grad.abs().max().item() for p in student.parameters() if p.grad is not None) < 1e-6
    log = objective.log()
    assert log["sampled_share"] == 1.0 and 0 < log["sample_tokens"] <= 16 and log["sampling_s"] > 0
    assert abs(log["reverse_kl"]) < 1e-5 and log["top1_agreement"] == 1.0 and 0 <= log["sample_accuracy"] <= 1


@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_the_sampled_loss_is_the_policy_gradient_of_reverse_kl_plus_the_centred_reward(tmp_path, tokenizer, temperature):
    """loss = (1/N) sum_t A_t CE_t with A_t = log p_teacher - log p_student (+ w (r - mean r)), against a plain forward;
    the student's log-probs at its sampling temperature T, the policy that drew the samples."""
    recipe = make_run(tmp_path, objective="on_policy", kd_teacher=str(save_tiny_model(tmp_path / "t", seed=5)),
                      on_policy_reward_weight=0.5, on_policy_temperature=temperature, on_policy_samples=1)
    student = make_model(tokenizer, seed=1)
    objective, examples = objective_for(recipe, tokenizer, student)
    prompts = [examples[0].input_ids[:5], examples[1].input_ids[:7]]
    completions = [examples[0].input_ids[5:12], examples[1].input_ids[7:10]]
    grades = objective.grade(prompts, completions)
    grades[0].logprobs[2] = float("nan")  # a token the teacher did not grade: no advantage from it
    rewards = torch.tensor([1.0, 0.0])
    loss, count = objective._graded_loss(student, prompts, completions, grades, rewards, sampled=True)
    assert count == 10
    with torch.no_grad():
        gaps, student_rows = [], []
        for row, (prompt, completion) in enumerate(zip(prompts, completions)):
            logits = student(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1:-1].float() / temperature
            student_logprobs = logits.log_softmax(-1).gather(1, torch.tensor(completion)[:, None])[:, 0]
            gaps.append(grades[row].logprobs - student_logprobs)
            student_rows.append(student_logprobs)
        graded = torch.cat(gaps)[~torch.isnan(torch.cat(gaps))]
        expected, n = 0.0, 0
        for row, (gap, student_logprobs) in enumerate(zip(gaps, student_rows)):
            # an ungraded token gets no advantage; graded ones are centred on their mean (neither kind is favoured)
            advantage = torch.nan_to_num(gap - graded.mean(), nan=0.0) + 0.5 * (rewards[row] - 0.5)
            expected += float((advantage * -student_logprobs).sum())
            n += len(student_logprobs)
    assert loss.item() == pytest.approx(expected / n, rel=1e-4, abs=1e-6)


def test_each_question_is_sampled_several_times_and_its_reward_centred_over_its_own_samples(tmp_path, tokenizer):
    import random

    from tutorlm.train.losses import group_advantages

    recipe = make_run(tmp_path, objective="on_policy", kd_teacher=str(save_tiny_model(tmp_path / "t", seed=5)),
                      on_policy_samples=3, on_policy_max_tokens=6, on_policy_reward_weight=1.0)
    student = make_model(tokenizer, seed=1)
    objective, examples = objective_for(recipe, tokenizer, student)
    batch = next(batches(examples, [[0, 1]], False, tokenizer.pad_token_id))
    prompts, completions, finished, _ = objective.sample(student, batch, random.Random(0))
    questions = prompts_of(batch)
    assert prompts == [questions[0]] * 3 + [questions[1]] * 3 and len(completions) == len(finished) == 6
    assert len({tuple(c) for c in completions[:3]}) > 1  # one seed per sample, not one per question
    assert objective.log()["sample_tokens"] > 0
    assert group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0]), 3, "none").tolist() == pytest.approx(
        [2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0])  # a question all right (or all wrong) teaches nothing by reward
    assert group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4, "none").tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])
    value, tokens = objective.loss(student, batch)
    assert tokens > 0 and torch.isfinite(value)


def test_repeated_samples_of_one_question_are_graded_once(tmp_path, tokenizer):
    recipe = make_run(tmp_path, objective="on_policy", kd_teacher=str(save_tiny_model(tmp_path / "t", seed=5)))
    objective, examples = objective_for(recipe, tokenizer, make_model(tokenizer, seed=1))
    calls = []
    grade = objective.grader.grade
    objective.grader.grade = lambda items, k: calls.append(len(items)) or grade(items, k)
    prompt, completion = examples[2].input_ids[:5], examples[2].input_ids[5:9]
    other = examples[2].input_ids[5:8]
    grades = objective.grade([prompt] * 3, [completion, other, completion])
    assert calls == [2] and grades[0].logprobs.tolist() == grades[2].logprobs.tolist()
    assert objective.totals["graded"] == 2 and objective.totals["cache_hits"] == 1


def test_greedy_samples_are_scored_at_temperature_one(tmp_path, tokenizer):
    recipe = make_run(tmp_path, objective="on_policy", kd_teacher=str(save_tiny_model(tmp_path / "t", seed=5)),
                      on_policy_temperature=0.0)
    student = make_model(tokenizer, seed=1)
    objective, examples = objective_for(recipe, tokenizer, student)
    prompts, completions = [examples[0].input_ids[:5]], [examples[0].input_ids[5:12]]
    loss, _ = objective._graded_loss(student, prompts, completions, objective.grade(prompts, completions), None, sampled=True)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("loss_kind", ["sampled", "divergence"])
def test_a_questions_samples_share_one_prompt_forward_with_the_same_loss_and_gradient(tmp_path, tokenizer, loss_kind):
    """Three samples of each of two questions: the update that runs each prompt once gives the loss and the gradient
    of the update that runs all six full rows."""
    other = different_tokenizer()  # another vocabulary: the divergence path grades through a top-k, not in the step
    teacher = save_tiny_model(tmp_path / "t", seed=5, tokenizer=other if loss_kind == "divergence" else None)
    recipe = make_run(tmp_path, objective="on_policy", kd_teacher=str(teacher), on_policy_loss=loss_kind,
                      on_policy_samples=3, on_policy_reward_weight=0.5 if loss_kind == "sampled" else 0.0)
    student = make_model(tokenizer, seed=1)
    objective, examples = objective_for(recipe, tokenizer, student)
    questions = prompts_of(next(batches(examples, [[0, 1]], False, tokenizer.pad_token_id)))  # curated rows' prompts
    prompts = [questions[0]] * 3 + [questions[1]] * 3
    completions = [examples[0].input_ids[-6:], examples[0].input_ids[-3:], examples[2].input_ids[-7:],
                   examples[1].input_ids[-2:], examples[1].input_ids[-7:], examples[3].input_ids[-4:]]
    grades = objective.grade(prompts, completions)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    results = []
    for groups in (1, 3):
        student.zero_grad()
        value, count = objective._graded_loss(student, prompts, completions, grades, rewards,
                                              sampled=loss_kind == "sampled", groups=groups)
        value.backward()
        results.append((value.item(), count, [p.grad.clone() for p in student.parameters()]))
    (full, full_count, full_grads), (shared, shared_count, shared_grads) = results
    assert full_count == shared_count == sum(map(len, completions))
    assert shared == pytest.approx(full, rel=1e-5, abs=1e-6)
    for a, b in zip(full_grads, shared_grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_lambda_zero_is_offline_kd_on_the_rationales(tmp_path, tokenizer):
    teacher_dir = save_tiny_model(tmp_path / "teacher", seed=7)
    recipe = make_run(tmp_path, objective="on_policy", kd_teacher=str(teacher_dir), on_policy_lambda=0.0,
                      on_policy_loss="divergence")
    student = make_model(tokenizer, seed=0)
    objective, examples = objective_for(recipe, tokenizer, student)
    batch = next(batches(examples, [[0, 1, 2, 3]], False, tokenizer.pad_token_id))
    on_policy = objective.loss(student, batch)
    offline = kd_loss(student, objective.teacher, batch, recipe.train)
    # equal up to float32 sums in another order: on-policy runs the prompts' shared start once (completion_hidden)
    assert on_policy[1] == offline[1] and torch.allclose(on_policy[0], offline[0], rtol=1e-5, atol=1e-7)
    log = objective.log()
    assert log["sampled_share"] == 0.0 and "sample_tokens" not in log and 0 <= log["top1_agreement"] <= 1


def trained_teacher(tmp_path, tokenizer):
    """A tiny model fine-tuned on the coin-flip rationales: a teacher far from a fresh student."""
    recipe = make_run(tmp_path / "teacher-run", max_steps=40, lr=5e-3)
    train(recipe, console=QUIET, model_and_tokenizer=(make_model(tokenizer, seed=7), tokenizer))
    return recipe.run.path / "student"


@pytest.mark.parametrize("loss", ["sampled", "divergence"])
def test_on_policy_training_pulls_the_student_towards_the_teacher(tmp_path, tokenizer, loss):
    teacher_dir = trained_teacher(tmp_path, tokenizer)
    recipe = make_run(tmp_path, objective="on_policy", kd_teacher=str(teacher_dir), kd_divergence="reverse_kl",
                      on_policy_loss=loss, max_steps=16, lr=2e-2 if loss == "sampled" else 5e-3, on_policy_max_tokens=24,
                      on_policy_samples=1)
    student = make_model(tokenizer, seed=0)
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    from tutorlm.run import read_jsonl

    examples, _ = preflight(tokenizer, read_jsonl(recipe.run.path / "curated.jsonl"), 256, "truncate")
    batch = next(batches(examples, [list(range(8))], False, tokenizer.pad_token_id))
    with torch.no_grad():
        before = kd_loss(student, teacher, batch, recipe.train)[0].item()
    stats = train(recipe, console=QUIET, model_and_tokenizer=(student, tokenizer))
    student.cpu().eval()
    with torch.no_grad():
        after = kd_loss(student, teacher, batch, recipe.train)[0].item()
    assert stats["objective"] == "on_policy" and after < 0.5 * before, (before, after)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    steps = [row for row in log if "loss" in row]
    assert len(steps) == 16 and all(row["sampled_share"] == 1.0 and row["sample_tokens"] > 0 for row in steps)
    assert all(row["step_s"] >= row["sampling_s"] > 0 for row in steps)
    # each step's reverse KL is an estimate from its 4 samples: the last four steps' mean against the first four's
    first, last = (sum(row["reverse_kl"] for row in part) / 4 for part in (steps[:4], steps[-4:]))
    assert last < 0.6 * first, (first, last)
    if loss == "sampled":  # graded through the cache: each sample once
        assert all(row["teacher_calls"] == 4 and row["scoring_s"] > 0 for row in steps)
        assert stats["on_policy_totals"]["teacher_calls"] == 64 and stats["on_policy_totals"]["samples"] == 64
        from tutorlm.report import report

        text = report(tmp_path / "run").read_text()
        assert (tmp_path / "run" / "on_policy.png").stat().st_size > 0
        assert "the student sampled 64 completions" in text and "on_policy.png" in text


def test_a_teacher_with_another_tokenizer_grades_through_the_alignment(tmp_path, tokenizer):
    teacher_dir = save_tiny_model(tmp_path / "other", tokenizer=different_tokenizer())
    recipe = make_run(tmp_path, objective="on_policy", kd_teacher=str(teacher_dir), max_steps=3, on_policy_max_tokens=16)
    student = make_model(tokenizer, seed=0)
    objective, examples = objective_for(recipe, tokenizer, student)
    rationale = examples[0]
    length = rationale.labels.index(next(label for label in rationale.labels if label != -100))
    grades = objective.grade([rationale.input_ids[:length]], [rationale.input_ids[length:]])[0]
    graded = ~torch.isnan(grades.logprobs)
    assert 0.3 < graded.float().mean() < 1.0  # words cut at the same places align; the others get no advantage
    assert (grades.top_ids[graded] >= -1).all() and (grades.logprobs[graded] <= 0).all()
    stats = train(recipe, console=QUIET, model_and_tokenizer=(student, tokenizer))
    assert stats["on_policy"]["tokenizers"]["same_vocabulary"] is False
    steps = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert all(0 < row["graded_token_share"] < 1 for row in steps if "loss" in row)


def test_grades_are_cached_under_the_teachers_weights_and_precision(tmp_path, tokenizer):
    teacher_dir = save_tiny_model(tmp_path / "teacher", seed=1)
    identities = {}
    for name, dtype, seed in (("fp32", "float32", 1), ("bf16", "bfloat16", 1), ("retrained", "float32", 2)):
        if seed == 2:  # another model saved at the same path
            save_tiny_model(teacher_dir, seed=2)
        recipe = make_run(tmp_path / name, objective="on_policy", kd_teacher=str(teacher_dir), kd_teacher_dtype=dtype)
        objective, _ = objective_for(recipe, tokenizer, make_model(tokenizer, seed=0))
        identities[name] = objective.identity
        assert next(objective.grader.teacher.parameters()).dtype == getattr(torch, dtype)
    assert identities["fp32"]["dtype"] == "float32" and identities["bf16"]["dtype"] == "bfloat16"
    assert identities["fp32"]["weights"] != identities["retrained"]["weights"]
    assert len({json.dumps(identity, sort_keys=True) for identity in identities.values()}) == 3


def test_on_policy_refuses_a_missing_teacher(tmp_path, tokenizer):
    recipe = make_run(tmp_path, objective="on_policy", max_steps=2)
    with pytest.raises(PreflightError, match="needs a teacher to grade"):
        train(recipe, console=QUIET, model_and_tokenizer=(make_model(tokenizer), tokenizer))
    with pytest.raises(ValueError, match="on_policy_lambda"):
        TrainConfig(on_policy_lambda=1.5)
    with pytest.raises(ValueError, match="set on_policy_loss sampled"):
        TrainConfig(on_policy_reward_weight=1.0, on_policy_loss="divergence")


# ---------------------------------------------------------------------------------------------------
# A teacher behind a server (a real HTTP server on 127.0.0.1)
# ---------------------------------------------------------------------------------------------------


def served_teacher(url: str, **options):
    from tutorlm.config import TeacherConfig

    return TeacherConfig(**{"backend": "openai", "base_url": url, "model": "teacher-model", "api_key_env": None,
                            "max_retries": 1, "backoff_base_s": 0.01, "timeout_s": 5.0, **options})


def _train_on_server(tmp_path, url: str, *extra: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "tutorlm", "train", "--out", str(tmp_path / "run"), "--student.model", str(tmp_path / "tiny"),
            "--task.source", "coin_flip", "--teacher.backend", "openai", "--teacher.base_url", url,
            "--teacher.model", "teacher-model", "--teacher.api_key_env", "NO_SUCH_KEY_VARIABLE",
            "--train.objective", "on_policy", "--train.max_steps", "40", "--train.batch_size", "2",
            "--train.save_every", "5", "--train.eval_fraction", "0", "--train.on_policy_max_tokens", "12",
            "--train.on_policy_samples", "1", *extra]


def test_kill_9_then_resume_pays_for_no_teacher_grade_twice(tmp_path):
    import signal
    import subprocess
    import time

    from fake_openai import FakeOpenAI
    make_run(tmp_path)
    save_tiny_model(tmp_path / "tiny")
    log_path = tmp_path / "run" / "train_log.jsonl"
    with FakeOpenAI() as server:
        process = subprocess.Popen(_train_on_server(tmp_path, server.url), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        # killed after a checkpoint (every 5 steps) and some steps past it, whose grades the resumed run needs again
        while not (log_path.exists() and sum(1 for _ in log_path.open()) >= 8):
            assert time.monotonic() < deadline and process.poll() is None, "the run ended before it could be killed"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed_at = max(json.loads(line)["step"] for line in log_path.read_text().splitlines())
        paid = server.total_served
        assert 40 > killed_at > 5 and paid > 0 and not (tmp_path / "run" / "student" / "model.safetensors").exists()

        other = subprocess.run(_train_on_server(tmp_path, server.url, "--resume", "--teacher.model", "other-model"),
                               capture_output=True, text=True, timeout=120)
        assert other.returncode != 0 and "teacher.model: 'teacher-model' then, 'other-model' now" in other.stderr

        resumed = subprocess.run(_train_on_server(tmp_path, server.url, "--resume"), capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert "resumed from step-" in resumed.stderr
        assert max(server.served.values()) == 1, "a completion was graded twice"
        steps = [json.loads(line) for line in log_path.read_text().splitlines()]
        assert [row["step"] for row in steps] == list(range(1, 41))
        redone = [row for row in steps if killed_at - killed_at % 5 < row["step"] <= killed_at]
        assert redone and all(row["teacher_cache_hits"] == 2 and row["teacher_calls"] == 0 for row in redone)
        assert all(row["teacher_calls"] == 2 for row in steps if row["step"] > killed_at)


def test_a_server_that_cannot_echo_is_refused_before_training(tmp_path, tokenizer):
    from fake_openai import FakeOpenAI
    from tutorlm.errors import FatalBackendError

    recipe = make_run(tmp_path, objective="on_policy", max_steps=3)
    with FakeOpenAI(echo=False) as server:
        recipe.teacher = served_teacher(server.url)
        with pytest.raises(FatalBackendError, match=rf"{server.url}/completions .*Only no echo is supported"):
            train(recipe, console=QUIET, model_and_tokenizer=(make_model(tokenizer), tokenizer))
    assert not (tmp_path / "run" / "train_log.jsonl").exists() or "loss" not in (tmp_path / "run" / "train_log.jsonl").read_text()


def test_a_server_failing_mid_run_stops_the_run_and_resume_finishes_it(tmp_path, tokenizer):
    from fake_openai import FakeOpenAI
    from tutorlm.errors import GenerationIncomplete

    recipe = make_run(tmp_path, objective="on_policy", max_steps=12, save_every=4, batch_size=2, on_policy_max_tokens=12,
                      eval_fraction=0.0)
    seen: set[str] = set()
    state = {"failing": True}

    def fault_for(key, attempt):  # the server goes down after it has graded 12 texts, until it is mended
        seen.add(key)
        return "500" if state["failing"] and len(seen) > 12 else None

    with FakeOpenAI(fault_for=fault_for) as server:
        recipe.teacher = served_teacher(server.url)
        with pytest.raises(GenerationIncomplete, match="scoring calls failed"):
            train(recipe, console=QUIET, model_and_tokenizer=(make_model(tokenizer), tokenizer))
        assert not (tmp_path / "run" / "student" / "model.safetensors").exists()
        steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
        assert steps and max(steps) < 12  # the step whose grades failed was not trained
        state["failing"] = False
        stats = train(recipe, resume=True, console=QUIET, model_and_tokenizer=(make_model(tokenizer), tokenizer))
        assert stats["steps"] == 12


def test_with_the_tool_samples_run_their_code_and_the_teacher_grades_only_what_the_student_wrote(tmp_path, tokenizer):
    from tiny import scripted_model

    recipe = make_run(tmp_path, objective="on_policy", kd_teacher=str(save_tiny_model(tmp_path / "t", seed=5)),
                      on_policy_lambda=1.0, on_policy_samples=2, on_policy_max_tokens=40, on_policy_temperature=0.5)
    recipe.task.tools, recipe.task.tool_calls = "python", 1
    _, examples = objective_for(recipe, tokenizer, make_model(tokenizer))
    batch = next(batches(examples, [[0, 1]], False, tokenizer.pad_token_id))
    script = "```python\nprint(2 + 3)\n```\n```output\n5\n```\nThe answer is Yes."
    student = scripted_model(tokenizer, [(prompt, script) for prompt in prompts_of(batch)])
    objective, _ = objective_for(recipe, tokenizer, student)
    import random

    prompts, completions, finished, masks = objective.sample(student, batch, random.Random(0))
    for completion, mask in zip(completions, masks):
        assert len(mask) == len(completion) and not all(mask)
        assert tokenizer.decode([t for t, keep in zip(completion, mask) if not keep]).strip() == "```output\n5\n```"
    value, tokens = objective.loss(student, batch)
    assert torch.isfinite(value) and 0 < tokens < sum(map(len, completions))


def test_pairs_of_a_batch_keep_which_completion_tokens_are_labelled(tokenizer):
    """A curated tool transcript's ```output tokens are not labelled: the teacher's rationale micro-batches (lambda < 1)
    learn only the labelled tokens, as offline KD does."""
    from tutorlm.models.tokens import IGNORE, Tokenized, collate_padded
    from tutorlm.train.rollout import pairs_of

    items = [Tokenized([1, 2, 3, 10, 11, 12, 13], [IGNORE] * 3 + [10, IGNORE, IGNORE, 13]), Tokenized([4, 5, 20, 21], [IGNORE] * 2 + [20, 21])]
    prompts, completions, masks = pairs_of(collate_padded(items, tokenizer.pad_token_id))
    assert prompts == [[1, 2, 3], [4, 5]] and completions == [[10, 11, 12, 13], [20, 21]]
    assert masks == [[True, False, False, True], [True, True]]
    assert pairs_of(collate_padded(items[1:], tokenizer.pad_token_id))[2] is None  # all labelled


def test_a_local_teacher_can_be_known_by_its_top_k_and_full_refuses_another_vocabulary(tmp_path, tokenizer):
    """on_policy_targets: top_k grades a same-vocabulary teacher's top-k once (cached) instead of its whole
    distribution in the step; with a large enough k the loss is the full-distribution loss; full with another
    vocabulary is refused before training."""
    teacher_dir = save_tiny_model(tmp_path / "teacher", seed=4)
    student = make_model(tokenizer, seed=0)
    losses = {}
    for targets, k in (("auto", 20), ("top_k", 4), ("top_k", len(tokenizer))):
        recipe = make_run(tmp_path / f"{targets}{k}", objective="on_policy", kd_teacher=str(teacher_dir), on_policy_loss="divergence",
                          kd_divergence="jsd", on_policy_targets=targets, kd_top_k=k, on_policy_max_tokens=16)
        objective, examples = objective_for(recipe, tokenizer, student)
        assert (objective.teacher is None) == (targets == "top_k")
        batch = next(batches(examples, [[0, 1]], False, tokenizer.pad_token_id))
        losses[targets, k] = objective.loss(student, batch)[0].item()
        log = objective.log()
        assert (log.get("teacher_calls", 0) > 0) == (targets == "top_k")  # graded outside the step, then cached
    assert abs(losses["top_k", len(tokenizer)] - losses["auto", 20]) < 1e-4  # the whole vocabulary: the same loss
    assert abs(losses["top_k", 4] - losses["auto", 20]) > 1e-4  # the top 4 and a tail bucket: another loss
    other = save_tiny_model(tmp_path / "other", tokenizer=different_tokenizer())
    recipe = make_run(tmp_path / "full", objective="on_policy", kd_teacher=str(other), on_policy_loss="divergence",
                      on_policy_targets="full")
    with pytest.raises(PreflightError, match="on_policy_targets full needs"):
        objective_for(recipe, tokenizer, make_model(tokenizer, seed=0))
