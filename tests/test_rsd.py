"""Reverse speculative decoding: the teacher writes, the student rejects the tokens it finds improbable."""

from __future__ import annotations

import json
import os

import pytest
import torch
from rich.console import Console
from tiny import make_model, make_tokenizer, save_tiny_model

from tutorlm.config import ConfigError, GenerateConfig, Recipe, RunConfig, StudentConfig, TaskConfig, TeacherConfig
from tutorlm.models.engine import Engine
from tutorlm.generate import generate
from tutorlm.run import TRACES
from tutorlm.models.rsd import GuidedEngine

QUIET = Console(file=open(os.devnull, "w"))


@pytest.fixture(scope="module")
def pair():
    tokenizer = make_tokenizer()
    teacher, student = make_model(tokenizer, seed=0).eval(), make_model(tokenizer, seed=1).eval()
    with torch.no_grad():  # sharper distributions than a fresh model's near-uniform ones, so floors bite, and a student
        # whose own output layer disagrees with the teacher (tied embeddings make both predict their input token)
        teacher.model.embed_tokens.weight.mul_(5)
        generator = torch.Generator().manual_seed(3)
        student.lm_head.weight = torch.nn.Parameter(torch.randn(student.lm_head.weight.shape, generator=generator) * 0.4)
    return tokenizer, teacher, student


def prompts_of(tokenizer, texts):
    return [tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                    tokenize=False), add_special_tokens=False)["input_ids"] for text in texts]


TEXTS = ["What is 12 + 30?", "A coin is heads up. Alice flips the coin. Is it heads up?", "Take the last letter", "Hi",
         "Think step by step, then finish with the line The answer is X."]


def decode(engine, prompts, **options):
    out = {}

    def finished(index, tokens, reason, logprobs, latency):
        out[index] = (list(tokens), reason)

    engine.run(prompts, finished=finished, **options)
    return [out[i] for i in range(len(prompts))]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_student_that_is_the_teacher_redraws_nothing(pair, temperature):
    tokenizer, teacher, _ = pair
    prompts = prompts_of(tokenizer, TEXTS)
    options = dict(max_tokens=24, temperature=temperature, seeds=[7, 8, 9, 10, 11])
    plain = decode(Engine(teacher, slots=2, pad_token_id=tokenizer.pad_token_id, stop_ids={tokenizer.eos_token_id}),
                   prompts, **options)
    # any token the teacher itself can pick is one it gives at least this much (greedy: its argmax, >= 1/V)
    floor = 1e-12 if temperature else 0.5 / len(tokenizer)
    guided = GuidedEngine(teacher, teacher, floor=floor, slots=2, pad_token_id=tokenizer.pad_token_id,
                          stop_ids={tokenizer.eos_token_id})
    assert decode(guided, prompts, guide_prompts=prompts, **options) == plain
    assert sum(guided.redrawn.values()) == 0


def test_every_token_is_the_teachers_best_among_those_the_student_accepts(pair):
    tokenizer, teacher, student = pair
    prompts = prompts_of(tokenizer, TEXTS)
    student_prompts = prompts_of(tokenizer, [f"Student copy: {text}" for text in TEXTS])  # each model its own prompt
    floor = 0.02
    guided = GuidedEngine(teacher, student, floor=floor, slots=2, pad_token_id=tokenizer.pad_token_id,
                          stop_ids={tokenizer.eos_token_id})
    results = decode(guided, prompts, guide_prompts=student_prompts, max_tokens=20)
    plain = decode(Engine(teacher, slots=2, pad_token_id=tokenizer.pad_token_id, stop_ids={tokenizer.eos_token_id}),
                   prompts, max_tokens=20)
    assert sum(guided.redrawn.values()) > 0 and results != plain
    checked = 0
    with torch.no_grad():
        for (tokens, _), prompt, student_prompt in zip(results, prompts, student_prompts):
            teacher_logits = teacher(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1:-1]
            student_probs = torch.softmax(student(torch.tensor([student_prompt + tokens])).logits[0, len(student_prompt) - 1:-1], -1)
            for position, token in enumerate(tokens):
                accepted = student_probs[position] >= floor
                if accepted.any():
                    expected = int(teacher_logits[position].masked_fill(~accepted, float("-inf")).argmax())
                else:  # the student accepts nothing: its own most likely token
                    expected = int(student_probs[position].argmax())
                assert token == expected
                checked += 1
    assert checked >= 50


def test_sampled_tokens_are_all_ones_the_student_accepts(pair):
    tokenizer, teacher, student = pair
    prompts = prompts_of(tokenizer, TEXTS)
    floor = 0.02
    guided = GuidedEngine(teacher, student, floor=floor, slots=3, pad_token_id=tokenizer.pad_token_id,
                          stop_ids={tokenizer.eos_token_id})
    results = decode(guided, prompts, guide_prompts=prompts, max_tokens=20, temperature=1.0, seeds=[1, 2, 3, 4, 5])
    again = decode(GuidedEngine(teacher, student, floor=floor, slots=1, pad_token_id=tokenizer.pad_token_id,
                                stop_ids={tokenizer.eos_token_id}),
                   prompts, guide_prompts=prompts, max_tokens=20, temperature=1.0, seeds=[1, 2, 3, 4, 5])
    assert results == again  # seeded per request: the same whatever shares the batch
    with torch.no_grad():
        for (tokens, _), prompt in zip(results, prompts):
            probs = torch.softmax(student(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1:-1], -1)
            chosen = probs[torch.arange(len(tokens)), torch.tensor(tokens)]
            assert bool(((chosen >= floor - 1e-4) | (probs.max(-1).values < floor)).all())
    assert sum(guided.redrawn.values()) > 0


def save_disagreeing_student(path, tokenizer):
    """A saved tiny student whose own (untied, random) output layer disagrees with a tiny teacher."""
    model = make_model(tokenizer, seed=1)
    model.config.tie_word_embeddings = False
    generator = torch.Generator().manual_seed(3)
    model.lm_head.weight = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape, generator=generator) * 0.4)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def rsd_recipe(tmp_path, teacher_dir, student_dir, **options):
    return Recipe(
        run=RunConfig(name="rsd", output_dir=str(tmp_path)), task=TaskConfig(source="coin_flip"),
        teacher=TeacherConfig(backend="hf", model=str(teacher_dir), batch_size=3),
        student=StudentConfig(model=str(student_dir)),
        generate=GenerateConfig(limit=4, max_tokens=16, cache_path=str(tmp_path / "cache.sqlite"), **options))


def test_generate_with_rsd_records_redrawn_tokens_and_caches_apart_from_the_plain_teacher(tmp_path):
    tokenizer = make_tokenizer()
    teacher_dir = save_tiny_model(tmp_path / "teacher", seed=0, tokenizer=tokenizer)
    student_dir = save_disagreeing_student(tmp_path / "student", tokenizer)
    stats = generate(rsd_recipe(tmp_path, teacher_dir, student_dir, rsd_floor=0.02), console=QUIET)
    rows = [json.loads(line) for line in (tmp_path / "rsd" / TRACES).read_text().splitlines()]
    assert len(rows) == 4 and all("redrawn" in row for row in rows) and stats["calls_made"] == 4
    assert stats["redrawn_tokens"] == sum(row["redrawn"] for row in rows) > 0
    from rich.console import Console as Printer

    from tutorlm.pipeline import dry_run

    printer = Printer(file=__import__("io").StringIO(), width=300)
    elsewhere = rsd_recipe(tmp_path, teacher_dir, student_dir, rsd_floor=0.02)
    elsewhere.run = RunConfig(name="elsewhere", output_dir=str(tmp_path))  # a new run: its generate is planned
    dry_run(elsewhere, console=printer)
    assert "0 teacher calls (4 cached)" in printer.file.getvalue()  # the dry run counts RSD's own cache entries
    again = generate(rsd_recipe(tmp_path, teacher_dir, student_dir, rsd_floor=0.02), force=True, console=QUIET)
    assert again["cache_hits"] == 4 and again["redrawn_tokens"] == stats["redrawn_tokens"]  # the count is cached too
    plain = generate(rsd_recipe(tmp_path, teacher_dir, student_dir), console=QUIET)  # a new stage config: reruns
    assert plain["cache_hits"] == 0 and plain["calls_made"] == 4 and "redrawn_tokens" not in plain


def test_rsd_needs_local_models_with_one_vocabulary(tmp_path):
    teacher_dir = save_tiny_model(tmp_path / "teacher", seed=0)
    recipe = rsd_recipe(tmp_path, teacher_dir, teacher_dir, rsd_floor=0.01)
    recipe.teacher = TeacherConfig(backend="openai", base_url="http://127.0.0.1:9/v1", model="big", api_key_env=None)
    with pytest.raises(ConfigError, match="needs local models"):
        generate(recipe, console=QUIET)
    other = make_tokenizer()
    other.add_tokens(["<|extra|>"])
    student_dir = save_tiny_model(tmp_path / "student", seed=1, tokenizer=other)
    from tutorlm.backends import FatalBackendError

    with pytest.raises(FatalBackendError, match="RSD needs a student with the teacher's vocabulary"):
        generate(rsd_recipe(tmp_path, teacher_dir, student_dir, rsd_floor=0.01), console=QUIET)
    with pytest.raises(ValueError, match="rsd_floor must be a probability"):
        GenerateConfig(rsd_floor=1.5)
