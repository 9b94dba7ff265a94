"""Training and decoding on a CUDA device: skipped where torch sees none (CI); run them on a GPU machine.

They exist because CPU-only tests cannot catch a tensor left on the CPU: the first GPU run of the
training loop failed on one (the row index of the per-token losses).
"""

from __future__ import annotations

import json

import pytest
import torch

from tiny import QUIET, generate_one, make_model, make_run, make_tokenizer, prompts_with_shared_prefix, varied_model
from tutorlm.models.engine import Engine
from tutorlm.train.loop import STUDENT, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("packing", [False, True])
def test_training_on_cuda_uses_bf16_and_learns(tmp_path, packing):
    tokenizer = make_tokenizer()
    recipe = make_run(tmp_path, epochs=2, packing=packing)
    model = make_model(tokenizer)
    stats = train(recipe, console=QUIET, model_and_tokenizer=(model, tokenizer))
    assert stats["precision"] == "bf16"  # `precision: auto` on a GPU with bf16
    assert next(model.parameters()).device.type == "cuda"
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in log if "loss" in row]
    evals = [row["eval_loss"] for row in log if "eval_loss" in row]
    assert losses[-1] < losses[0] - 0.5 and evals[-1] < evals[0]
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / STUDENT)  # loads on the CPU
    trained = {name: p.detach().cpu() for name, p in model.named_parameters()}
    assert all(torch.equal(trained[name], p) for name, p in saved.named_parameters())


def test_engine_on_cuda_matches_generate():
    tokenizer = make_tokenizer()
    model = varied_model(tokenizer).cuda()
    prompts = prompts_with_shared_prefix(len(tokenizer))
    stop_ids = set(range(0, len(tokenizer), 11))
    expected = [generate_one(model, prompt, stop_ids, 20)[0] for prompt in prompts]
    results = {}
    engine = Engine(model, slots=8, pad_token_id=0, stop_ids=stop_ids)
    engine.run(prompts, finished=lambda index, tokens, reason, logprobs, latency: results.__setitem__(index, tokens), max_tokens=20)
    assert [results[i] for i in range(len(prompts))] == expected
    assert engine.layers[0].key_buffer.device.type == "cuda"


def test_grpo_on_cuda_samples_shares_prompts_and_updates(tmp_path):
    """A GRPO step on the GPU: the engine samples on it, the group's prompt runs once with gradients, bf16 autocast."""
    tokenizer = make_tokenizer()
    recipe = make_run(tmp_path, objective="grpo", max_steps=2, batch_size=2, grpo_group_size=4, grpo_max_tokens=12,
                      grpo_length_penalty=1.0, grpo_skip_equal=False)
    model = make_model(tokenizer)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    stats = train(recipe, console=QUIET, model_and_tokenizer=(model, tokenizer))
    assert stats["precision"] == "bf16" and next(model.parameters()).device.type == "cuda"
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    steps = [row for row in log if "loss" in row]
    assert len(steps) == 2 and all(row["groups_updated"] == 2 and row["entropy"] > 0 for row in steps)
    assert any(not torch.equal(before[name].cpu(), p.detach().cpu()) for name, p in model.named_parameters())
