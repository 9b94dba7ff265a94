"""The student's samples in training, shared by on-policy distillation and GRPO: sampling a round through the engine,
taking batches apart into prompts and completions and putting them back together, and the update's forward that
runs each question's prompt once for its several samples."""

from __future__ import annotations

import random
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel

from tutorlm.errors import PreflightError
from tutorlm.models.engine import Engine, cache_argument, row_settings
from tutorlm.models.tokens import IGNORE, Tokenized, collate_padded
from tutorlm.train.align import token_spans


Sample = tuple[list[int], str, "list[bool] | None"]  # (tokens, finish reason, which tokens the model wrote: None = all)


def sample_student(model: Any, prompts: list[list[int]], *, max_tokens: int, temperature: float, rng: random.Random,
                   autocast: Any, pad_token_id: int, stop_ids: Any, tools: Any = None, tokenizer: Any = None
                   ) -> dict[int, Sample]:
    """(the sampled tokens, the finish reason, which tokens the model wrote) for each prompt by index: the model samples
    now through the engine, in eval mode for the round, one seed per prompt drawn from `rng`, the whole round inside
    `autocast` (the loop's mixed-precision context: each weight cast once for the round; see loop.Objective). On-policy
    and GRPO share it. With `tools` (tools.loop.ToolSettings; needs `tokenizer`) the student's ```python blocks run
    in the sandbox and their ```output blocks join its tokens, marked False in the third item (the loss skips
    them); without, the third item is None."""
    inner = extract_model_from_parallel(model, keep_torch_compile=False)
    was_training = inner.training
    inner.eval()
    results: dict[int, Sample] = {}
    try:
        engine = Engine(inner, slots=len(prompts), pad_token_id=pad_token_id, stop_ids=stop_ids)
        seeds = [rng.getrandbits(62) for _ in prompts]
        with autocast():
            if tools is None:
                engine.run(prompts, max_tokens=max_tokens, temperature=temperature, seeds=seeds,
                           finished=lambda index, tokens, reason, logprobs, latency: results.__setitem__(index, (list(tokens), reason, None)))
            else:
                from tutorlm.tools.loop import ToolLoop

                def finished(index: int, tokens: list[int], reason: str, logprobs: list, latency: float, written: list[bool],
                             calls: list) -> None:
                    results[index] = (list(tokens), reason, list(written))

                ToolLoop(engine, tokenizer, tools).run(prompts, row_settings(len(prompts), max_tokens, temperature, 1.0, seeds),
                                                       finished=finished)
    finally:
        inner.train(was_training)
    return results


def tool_settings(task: Any) -> Any:
    """The Python tool's settings for the student's samples when the task has it (task.tools python), else None."""
    if getattr(task, "tools", "none") != "python":
        return None
    from tutorlm.tools.loop import ToolSettings

    return ToolSettings(max_calls=task.tool_calls)


def written_mask(sample: Sample, finished: bool) -> list[bool]:
    """Which tokens of a sample the loss covers (the model's, not a tool's), with its end token when it stopped."""
    tokens, _, written = sample
    return (list(written) if written is not None else [True] * len(tokens)) + ([True] if finished else [])


def completion_text(tokenizer: Any, completion: list[int]) -> str:
    return token_spans(tokenizer, completion)[0]


def curated_row(row: dict[str, Any] | None) -> dict[str, Any]:
    if row is None:
        raise PreflightError("on_policy: a prompt of the batch matches no curated row, so the teacher cannot be shown it")
    return row


def prompt_length(labels: list[int]) -> int:
    return next((i for i, label in enumerate(labels) if label != IGNORE and i > 0), len(labels))


def collate_completions(prompts: list[list[int]], completions: list[list[int]], pad_token_id: int, device: Any,
                        masks: list[list[bool]] | None = None) -> dict[str, torch.Tensor]:
    """Prompts and completions as a padded batch whose labels are the completions' tokens (where `masks` says the
    model wrote them: a tool's output is read, not learned)."""
    masks = masks or [[True] * len(completion) for completion in completions]
    items = [Tokenized(prompt + completion, [IGNORE] * len(prompt) + [t if keep else IGNORE for t, keep in zip(completion, mask)])
             for prompt, completion, mask in zip(prompts, completions, masks)]
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


def shared_prompt_hidden(model: Any, inner: Any, prompts: list[list[int]], completions: list[list[int]], size: int,
                         pad_token_id: int, device: Any, masks: list[list[bool]] | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(final hidden states at the positions that predict each completion token, row-major; those tokens), with each
    group's prompt run through the model once instead of G times; None where that does not apply.

    `prompts` come in groups of `size` (G) equal ones, as GRPO and on-policy distillation sample them. A group's keys and values (its prompt
    but the last token) are computed once, with gradients, and repeated for the G rows; the G completions (each
    after the prompt's last token) then attend to them. The values and the gradients are those of G full
    sequences (the repeat's backward sums the G rows' contributions), for a prompt's share of the forward and
    backward work divided by G. Not used with gradient checkpointing (which turns the cache off), with groups of
    one, or with one-token prompts. `model` runs the completions (the wrapped model: its forward prepares
    data-parallel reduction); `inner` the prompts. `masks` (per completion token: the model wrote it) leaves a tool's
    output tokens out of what is returned; the model still reads them. Call inside `identity_head`.
    """
    if size < 2 or len(prompts) % size or min(map(len, prompts)) < 2 or _checkpointing(inner):
        return None
    from transformers.cache_utils import DynamicCache

    heads = [prompt[:-1] for prompt in prompts[::size]]
    width = max(len(ids) for ids in heads)
    ids = torch.full((len(heads), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(heads), width), dtype=torch.long)
    for row, head_ids in enumerate(heads):  # right-padded: a row's completion continues at its own length
        ids[row, :len(head_ids)] = torch.tensor(head_ids)
        mask[row, :len(head_ids)] = 1
    argument = cache_argument(inner)
    cache = DynamicCache()
    inner(input_ids=ids.to(device), attention_mask=mask.to(device), **{argument: cache}, use_cache=True, logits_to_keep=1)
    repeated = DynamicCache(ddp_cache_data=[(layer.keys.repeat_interleave(size, 0), layer.values.repeat_interleave(size, 0))
                                            for layer in cache.layers])
    longest = max(len(completion) for completion in completions)
    rest = torch.full((len(prompts), longest), pad_token_id, dtype=torch.long)  # the prompt's last token + completion
    targets = torch.full((len(prompts), longest), IGNORE, dtype=torch.long)
    present = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        rest[row, :len(completion)] = torch.tensor(prompt[-1:] + completion[:-1])
        targets[row, :len(completion)] = torch.tensor(completion)
        present[row, :len(completion)] = 1
        if masks is not None:
            targets[row, :len(completion)][~torch.tensor(masks[row], dtype=torch.bool)] = IGNORE
    attention = torch.cat([mask.repeat_interleave(size, 0), present], dim=1)
    lengths = torch.tensor([len(prompt) - 1 for prompt in prompts])
    positions = lengths[:, None] + torch.arange(longest)[None, :]
    hidden = model(input_ids=rest.to(device), attention_mask=attention.to(device), position_ids=positions.to(device),
                   **{argument: repeated}, use_cache=True).logits  # (B, longest, H)
    wanted = (targets != IGNORE).to(device)
    return hidden[wanted], targets.to(device)[wanted]


def _checkpointing(model: Any) -> bool:
    name = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else "is_gradient_checkpointing"
    return bool(getattr(model, name, False))
