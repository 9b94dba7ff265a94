"""Logit distillation on tiny models built in the test: zero when teacher = student, learning, tokenizer checks."""

from __future__ import annotations

import json
import os

import pytest
import torch
from rich.console import Console
from tiny import CORPUS, make_model, make_tokenizer, save_tiny_model

from tutorlm.config import TeacherConfig, TrainConfig
from tutorlm.errors import DataError, PreflightError
from tutorlm.train.data import batch_order, batches, preflight
from tutorlm.train.kd import compare_tokenizers, kd_loss
from tutorlm.train.sft import train

QUIET = Console(file=open(os.devnull, "w"))


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def first_batch(tokenizer, recipe):
    from tutorlm.curate import read_jsonl

    rows = read_jsonl(recipe.run.path / "curated.jsonl")
    examples, _ = preflight(tokenizer, rows, 256, "truncate")
    return next(batches(examples, batch_order(examples, 4, 0, 0, True)[:1], False, tokenizer.pad_token_id))


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd", "skew_kl"])
def test_a_teacher_equal_to_the_student_gives_zero_loss_and_zero_gradient(tmp_path, tokenizer, divergence):
    from test_train import make_run

    recipe = make_run(tmp_path)
    student, teacher = make_model(tokenizer, seed=3), make_model(tokenizer, seed=3)
    config = TrainConfig(objective="kd", kd_divergence=divergence, kd_temperature=2.0)
    loss, tokens = kd_loss(student, teacher, first_batch(tokenizer, recipe), config)
    loss.backward()
    assert tokens > 0 and abs(loss.item()) < 1e-6
    assert max(p.grad.abs().max().item() for p in student.parameters() if p.grad is not None) < 1e-6
    other = make_model(tokenizer, seed=4)
    assert kd_loss(student, other, first_batch(tokenizer, recipe), config)[0].item() > 1e-4


def test_kd_training_pulls_the_student_towards_the_teacher(tmp_path, tokenizer):
    from test_train import make_run

    teacher_dir = save_tiny_model(tmp_path / "teacher", seed=7)
    recipe = make_run(tmp_path, objective="kd", max_steps=12, lr=5e-3, kd_ce_weight=0.0)
    recipe.teacher = TeacherConfig(backend="hf", model=str(teacher_dir), device="cpu", dtype="float32")
    student = make_model(tokenizer, seed=0)
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    batch = first_batch(tokenizer, recipe)
    config = recipe.train
    with torch.no_grad():
        before = kd_loss(student, teacher, batch, config)[0].item()
    stats = train(recipe, console=QUIET, model_and_tokenizer=(student, tokenizer))
    student.cpu().eval()
    with torch.no_grad():
        after = kd_loss(student, teacher, batch, config)[0].item()
    assert stats["objective"] == "kd" and stats["preflight"]["tokenizers"]["same_vocabulary"]
    assert after < 0.5 * before, (before, after)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in log if "loss" in row]
    assert losses[-1] < losses[0]
    # The teacher is part of the run's identity: resuming with another teacher is refused.
    other_dir = save_tiny_model(tmp_path / "other", seed=8)
    recipe.teacher = TeacherConfig(backend="hf", model=str(other_dir), device="cpu")
    recipe.train.save_every = 4
    recipe.train.max_steps = 8
    train(recipe, console=QUIET, force=True, model_and_tokenizer=(make_model(tokenizer), tokenizer))
    recipe.teacher = TeacherConfig(backend="hf", model=str(teacher_dir), device="cpu")
    recipe.train.max_steps = 8
    checkpoints = sorted((tmp_path / "run" / "student" / "checkpoints").iterdir())
    assert checkpoints  # left by the run above (its last checkpoint is step 4)
    with pytest.raises(DataError, match="written with other student/train settings"):
        train(recipe, console=QUIET, resume=True, model_and_tokenizer=(make_model(tokenizer), tokenizer))


def different_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator([text.upper() for text in CORPUS], trainers.BpeTrainer(
        vocab_size=330, special_tokens=["<|pad|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    wrapped = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<|pad|>", eos_token="<|im_end|>", bos_token="<|im_start|>")
    wrapped.chat_template = make_tokenizer().chat_template
    return wrapped


def test_tokenizer_comparison_says_what_differs(tokenizer):
    same = compare_tokenizers(tokenizer, make_tokenizer(), 400, 448)  # padded embedding rows are not a difference
    assert same["same_vocabulary"] and not same["differences"]
    other = compare_tokenizers(tokenizer, different_tokenizer())
    assert not other["same_vocabulary"] and "vocabulary size" in other["differences"][0]


def test_kd_refuses_a_teacher_with_another_vocabulary_and_a_teacher_without_distributions(tmp_path, tokenizer):
    from test_train import make_run

    teacher_dir = tmp_path / "teacher"
    other = different_tokenizer()
    model = make_model(other)
    model.save_pretrained(teacher_dir)
    other.save_pretrained(teacher_dir)
    recipe = make_run(tmp_path, objective="kd", max_steps=2)
    recipe.teacher = TeacherConfig(backend="hf", model=str(teacher_dir), device="cpu")
    with pytest.raises(PreflightError, match="cannot be distilled token by token: different vocabularies: vocabulary size"):
        train(recipe, console=QUIET, model_and_tokenizer=(make_model(tokenizer), tokenizer))
    recipe.teacher = TeacherConfig(backend="reference")
    with pytest.raises(PreflightError, match="needs the teacher's next-token distributions: set teacher.backend hf"):
        train(recipe, console=QUIET, model_and_tokenizer=(make_model(tokenizer), tokenizer))
