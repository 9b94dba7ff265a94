"""The student's samples in training, shared by on-policy distillation and GRPO: sampling a round through the engine,
and taking batches apart into prompts and completions and putting them back together."""

from __future__ import annotations

import random
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel

from tutorlm.errors import PreflightError
from tutorlm.models.engine import Engine
from tutorlm.models.tokens import IGNORE, Tokenized, collate_padded
from tutorlm.train.align import token_spans


def sample_student(model: Any, prompts: list[list[int]], *, max_tokens: int, temperature: float, rng: random.Random,
                   autocast: Any, pad_token_id: int, stop_ids: Any) -> dict[int, tuple[list[int], str]]:
    """(the sampled tokens, the finish reason) for each prompt by index: the model samples now through the engine, in
    eval mode for the round, one seed per prompt drawn from `rng`, the whole round inside `autocast` (the loop's
    mixed-precision context: each weight cast once for the round; see loop.Objective). On-policy and GRPO share it."""
    inner = extract_model_from_parallel(model, keep_torch_compile=False)
    was_training = inner.training
    inner.eval()
    results: dict[int, tuple[list[int], str]] = {}
    try:
        engine = Engine(inner, slots=len(prompts), pad_token_id=pad_token_id, stop_ids=stop_ids)
        seeds = [rng.getrandbits(62) for _ in prompts]
        with autocast():
            engine.run(prompts, max_tokens=max_tokens, temperature=temperature, seeds=seeds,
                       finished=lambda index, tokens, reason, logprobs, latency: results.__setitem__(index, (list(tokens), reason)))
    finally:
        inner.train(was_training)
    return results


def completion_text(tokenizer: Any, completion: list[int]) -> str:
    return token_spans(tokenizer, completion)[0]


def curated_row(row: dict[str, Any] | None) -> dict[str, Any]:
    if row is None:
        raise PreflightError("on_policy: a prompt of the batch matches no curated row, so the teacher cannot be shown it")
    return row


def prompt_length(labels: list[int]) -> int:
    return next((i for i, label in enumerate(labels) if label != IGNORE and i > 0), len(labels))


def collate_completions(prompts: list[list[int]], completions: list[list[int]], pad_token_id: int, device: Any) -> dict[str, torch.Tensor]:
    items = [Tokenized(prompt + completion, [IGNORE] * len(prompt) + completion) for prompt, completion in zip(prompts, completions)]
    return {key: value.to(device) for key, value in collate_padded(items, pad_token_id).items()}


def examples_of(batch: dict[str, torch.Tensor]) -> list[tuple[list[int], list[int]]]:
    """Each example's (input ids, labels), from a padded or a packed batch (padding dropped)."""
    input_ids, labels = batch["input_ids"].tolist(), batch["labels"].tolist()
    if "position_ids" in batch and "attention_mask" not in batch:  # packed: one row, positions restart per example
        positions = batch["position_ids"][0].tolist()
        starts = [i for i, position in enumerate(positions) if position == 0] + [len(positions)]
        return [(input_ids[0][a:b], labels[0][a:b]) for a, b in zip(starts, starts[1:])]
    lengths = batch["attention_mask"].sum(-1).tolist()
    return [(ids[:length], row[:length]) for ids, row, length in zip(input_ids, labels, lengths)]


def prompts_of(batch: dict[str, torch.Tensor]) -> list[list[int]]:
    """Each example's prompt ids (the tokens before its first label), from a padded or a packed batch."""
    # collate_packed masks each example's first label; the prompt is every leading IGNORE
    return [ids[:prompt_length(labels)] for ids, labels in examples_of(batch)]


def pairs_of(batch: dict[str, torch.Tensor]) -> tuple[list[list[int]], list[list[int]]]:
    """(prompts, completions): each example's ids before its first label, and its labelled ids after them."""
    prompts, completions = [], []
    for ids, labels in examples_of(batch):
        start = prompt_length(labels)
        end = max((i + 1 for i, label in enumerate(labels) if label != IGNORE), default=start)
        prompts.append(ids[:start])
        completions.append(ids[start:end])
    return prompts, completions
