"""On-policy distillation on tiny models built in the test: the student samples, a local teacher grades every token."""

from __future__ import annotations

import json
import os

import pytest
import torch
from rich.console import Console
from tiny import make_model, make_tokenizer, save_tiny_model

from tutorlm.config import TrainConfig
from tutorlm.errors import PreflightError
from tutorlm.train.data import batch_order, batches, preflight
from tutorlm.train.kd import kd_loss
from tutorlm.train.loop import train
from tutorlm.train.on_policy import OnPolicy, prompts_of

QUIET = Console(file=open(os.devnull, "w"))


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def objective_for(recipe, tokenizer, student):
    from tutorlm.curate import read_jsonl

    rows = read_jsonl(recipe.run.path / "curated.jsonl")
    examples, _ = preflight(tokenizer, rows, 256, "truncate")
    objective = OnPolicy(recipe)
    objective.prepare(recipe, student, tokenizer, rows, examples, "cpu", QUIET)
    return objective, examples


def test_prompts_are_the_same_from_packed_and_padded_batches(tmp_path, tokenizer):
    from test_train import make_run

    recipe = make_run(tmp_path)
    from tutorlm.curate import read_jsonl

    examples, _ = preflight(tokenizer, read_jsonl(recipe.run.path / "curated.jsonl"), 256, "truncate")
    order = batch_order(examples, 4, 0, 0, False)[:2]
    for indices in order:
        padded = prompts_of(next(batches(examples, [indices], False, tokenizer.pad_token_id)))
        packed = prompts_of(next(batches(examples, [indices], True, tokenizer.pad_token_id)))
        expected = [examples[i].input_ids[: examples[i].labels.index(next(l for l in examples[i].labels if l != -100))] for i in indices]
        assert padded == packed == expected


@pytest.mark.parametrize("divergence", ["reverse_kl", "jsd", "forward_kl"])
def test_a_teacher_equal_to_the_student_gives_zero_loss_and_zero_gradient_on_its_samples(tmp_path, tokenizer, divergence):
    from test_train import make_run

    teacher_dir = save_tiny_model(tmp_path / "teacher", seed=3)
    recipe = make_run(tmp_path, objective="on_policy", kd_teacher=str(teacher_dir), kd_divergence=divergence,
                      on_policy_max_tokens=16)
    student = make_model(tokenizer, seed=3)
    objective, examples = objective_for(recipe, tokenizer, student)
    batch = next(batches(examples, [[0, 1, 2]], False, tokenizer.pad_token_id))
    sampled = objective.sample(student, batch)
    assert sampled["input_ids"].shape[0] == 3 and (sampled["labels"] != -100).any()
    loss, tokens = kd_loss(student, objective.teacher, sampled, recipe.train)
    loss.backward()
    assert tokens > 0 and abs(loss.item()) < 1e-6
    assert max(p.grad.abs().max().item() for p in student.parameters() if p.grad is not None) < 1e-6
    log = objective.log()
    assert log["sampled_share"] == 1.0 and 0 < log["sample_tokens"] <= 16 and log["sampling_s"] > 0


def test_lambda_zero_is_offline_kd_on_the_rationales(tmp_path, tokenizer):
    from test_train import make_run

    teacher_dir = save_tiny_model(tmp_path / "teacher", seed=7)
    recipe = make_run(tmp_path, objective="on_policy", kd_teacher=str(teacher_dir), on_policy_lambda=0.0)
    student = make_model(tokenizer, seed=0)
    objective, examples = objective_for(recipe, tokenizer, student)
    batch = next(batches(examples, [[0, 1, 2, 3]], False, tokenizer.pad_token_id))
    on_policy = objective.loss(student, batch)
    offline = kd_loss(student, objective.teacher, batch, recipe.train)
    assert on_policy[1] == offline[1] and torch.equal(on_policy[0], offline[0])
    assert objective.log() == {"sampled_share": 0.0}


def test_on_policy_training_pulls_the_student_towards_the_teacher(tmp_path, tokenizer):
    from test_train import make_run

    teacher_dir = save_tiny_model(tmp_path / "teacher", seed=7)
    recipe = make_run(tmp_path, objective="on_policy", kd_teacher=str(teacher_dir), kd_divergence="reverse_kl",
                      max_steps=12, lr=5e-3, on_policy_max_tokens=24)
    student = make_model(tokenizer, seed=0)
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    from tutorlm.curate import read_jsonl

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
    assert len(steps) == 12 and all(row["sampled_share"] == 1.0 and row["sample_tokens"] > 0 for row in steps)


def test_on_policy_refuses_a_missing_teacher_and_another_vocabulary(tmp_path, tokenizer):
    from test_kd import different_tokenizer
    from test_train import make_run

    recipe = make_run(tmp_path, objective="on_policy", max_steps=2)
    with pytest.raises(PreflightError, match="needs a local teacher"):
        train(recipe, console=QUIET, model_and_tokenizer=(make_model(tokenizer), tokenizer))
    recipe.train.kd_teacher = str(save_tiny_model(tmp_path / "other", tokenizer=different_tokenizer()))
    with pytest.raises(PreflightError, match="student's vocabulary for now"):
        train(recipe, console=QUIET, model_and_tokenizer=(make_model(tokenizer), tokenizer))
    with pytest.raises(ValueError, match="on_policy_lambda"):
        TrainConfig(on_policy_lambda=1.5)
