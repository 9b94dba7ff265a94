"""The student's samples in training, shared by on-policy distillation and GRPO: sampling a round through the engine,
taking batches apart into prompts and completions and putting them back together, and the update's forward that
runs each question's prompt once for its several samples."""

from __future__ import annotations

import contextlib
import os
import random
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel

from tutorlm.errors import PreflightError
from tutorlm.models.engine import Engine, cache_argument, row_settings
from tutorlm.models.tokens import IGNORE, Tokenized, collate_padded, labelled_positions
from tutorlm.train.align import token_spans


MIN_SHARED_PREFIX = 8  # fewer tokens shared by a batch's prompts are run with each row (shared_prompt_hidden)
Sample = tuple[list[int], str, "list[bool] | None"]  # (tokens, finish reason, which tokens the model wrote: None = all)


def sample_student(model: Any, prompts: list[list[int]], *, max_tokens: int, temperature: float, rng: random.Random,
                   autocast: Any, pad_token_id: int, stop_ids: Any, tools: Any = None, tokenizer: Any = None
                   ) -> dict[int, Sample]:
    """(the sampled tokens, the finish reason, which tokens the model wrote) for each prompt by index: the model samples
    now through the engine, in eval mode for the round, one seed per prompt drawn from `rng`, the whole round inside
    `autocast` (the loop's mixed-precision context: each weight cast once for the round; see loop.Objective), or in
    float32 for a few rows on a CPU (`sampling_precision`). On-policy and GRPO share it. With `tools`
    (tools.loop.ToolSettings; needs `tokenizer`) the student's ```python blocks run in the sandbox and their ```output
    blocks join its tokens, marked False in the third item (the loss skips them); without, the third item is None."""
    inner = extract_model_from_parallel(model, keep_torch_compile=False)
    was_training = inner.training
    inner.eval()
    results: dict[int, Sample] = {}
    try:
        engine = Engine(inner, slots=len(prompts), pad_token_id=pad_token_id, stop_ids=stop_ids)
        seeds = [rng.getrandbits(62) for _ in prompts]
        with sampling_precision(inner, autocast, len(prompts)):
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


FLOAT32_ROUND_ROWS = 4  # on a CPU, a round of at most this many rows samples in float32 under bf16 training


@contextlib.contextmanager
def sampling_precision(inner: Any, autocast: Any, rows: int):
    """The precision a round of `rows` samples is drawn in: the training's (`autocast`), except on a CPU for a round of
    at most FLOAT32_ROUND_ROWS rows, which runs in float32 whatever the training precision (the weights are float32:
    bf16 training is autocast over them). A decoding step multiplies a few rows by every weight: on a CPU the float32
    products run weight-major in the engine (`engine.weight_major_linears`), and bf16 products of a few rows streamed
    no faster. A round of 64 tokens of SmolLM2's shape on the AVX512-BF16 CPU, float32 against bf16 autocast: 1 row
    2.21 against 2.67 s, 2 rows 2.18 against 2.95, 4 rows 3.23 against 3.92; but 6 rows 4.29 against 4.01, 8 rows
    4.91 against 4.49, 16 rows 7.51 against 7.12, where bf16's halved bytes win. The samples then come from the float32
    policy, to which the loss's forward adds bf16 rounding (as a served sampler's numerics differ from a trainer's).
    Under bf16 training accelerate has wrapped the model's forward in autocast; the wrapper is set aside for the round
    (`_original_forward` is the forward it wrapped) and put back after."""
    parameter = next(inner.parameters(), None)
    if parameter is None or parameter.device.type != "cpu" or parameter.dtype != torch.float32 or rows > FLOAT32_ROUND_ROWS:
        with autocast():
            yield
        return
    original = vars(inner).get("_original_forward")
    wrapped = vars(inner).get("forward") if original is not None else None
    if wrapped is not None:
        inner.forward = original
    try:
        with torch.autocast("cpu", enabled=False):
            yield
    finally:
        if wrapped is not None:
            inner.forward = wrapped


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


def pairs_of(batch: dict[str, torch.Tensor]) -> tuple[list[list[int]], list[list[int]], list[list[bool]] | None]:
    """(prompts, completions, masks): each example's ids before its first label, its ids from there to its last label,
    and which of those are labelled (None when all are; a tool's output inside a transcript is not)."""
    prompts, completions, masks = [], [], []
    for ids, labels in examples_of(batch):
        start = prompt_length(labels)
        end = max((i + 1 for i, label in enumerate(labels) if label != IGNORE), default=start)
        prompts.append(ids[:start])
        completions.append(ids[start:end])
        masks.append([label != IGNORE for label in labels[start:end]])
    return prompts, completions, (masks if not all(map(all, masks)) else None)


def completion_hidden(model: Any, inner: Any, prompts: list[list[int]], completions: list[list[int]], size: int,
                      pad_token_id: int, device: Any, masks: list[list[bool]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(final hidden states at the positions that predict each completion token, row-major; those tokens): through
    `shared_prompt_hidden` where it applies, else full padded rows. Call inside `identity_head`."""
    shared = shared_prompt_hidden(model, inner, prompts, completions, size, pad_token_id, device, masks)
    if shared is not None:
        return shared
    inputs, positions, chosen = labelled_positions(collate_completions(prompts, completions, pad_token_id, device, masks))
    wanted = chosen != IGNORE  # (B, K); row-major, so the completions' tokens in order
    return model(**inputs, logits_to_keep=positions, use_cache=False).logits[wanted], chosen[wanted]


def shared_prompt_hidden(model: Any, inner: Any, prompts: list[list[int]], completions: list[list[int]], size: int,
                         pad_token_id: int, device: Any, masks: list[list[bool]] | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(final hidden states at the positions that predict each completion token, row-major; those tokens), with the
    prompts' shared tokens run through the model once instead of once a row; None where nothing is shared.

    Two kinds of sharing. The tokens every prompt starts with (a chat template's system prompt, an instruction), when
    at least MIN_SHARED_PREFIX, run once for the whole batch. And `prompts` that come in groups of `size` (G) equal ones,
    as GRPO and on-policy distillation sample them, run each group's prompt once. The keys and values of what is shared
    are computed with gradients and repeated for the rows that read them; each row then runs the rest (its prompt's
    last token, or the rest of its prompt, and its completion). The values and the gradients are those of full
    sequences (a repeat's backward sums the rows' contributions), for a shared token's forward and backward work
    divided by the rows that share it. Not used with gradient checkpointing (which turns the cache off) or with
    one-token prompts. `model` runs the rows (the wrapped model: its forward prepares data-parallel reduction);
    `inner` what is shared. `masks` (per completion token: the model wrote it) leaves a tool's output tokens out of
    what is returned; the model still reads them. Call inside `identity_head`.
    """
    size = max(size, 1)
    if len(prompts) % size or min(map(len, prompts)) < 2 or _checkpointing(inner):
        return None
    common = len(os.path.commonprefix(prompts)) if len(prompts) > 1 else 0
    common = min(common, min(map(len, prompts)) - 1)  # every row keeps its prompt's last token
    common = common if common >= MIN_SHARED_PREFIX else 0
    if size < 2 and not common:
        return None
    from transformers.cache_utils import DynamicCache

    argument = cache_argument(inner)
    groups = len(prompts) // size
    keys_values: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer, one row per group
    read = torch.ones((groups, common), dtype=torch.long)  # which of those columns a row attends to
    if common:  # the batch's shared start, once
        cache = DynamicCache()
        inner(input_ids=torch.tensor([prompts[0][:common]], device=device), **{argument: cache}, use_cache=True, logits_to_keep=1)
        keys_values = [(layer.keys.expand(groups, -1, -1, -1), layer.values.expand(groups, -1, -1, -1)) for layer in cache.layers]
    heads = [prompt[common:-1] for prompt in prompts[::size]] if size > 1 else []
    width = max(map(len, heads), default=0)
    if width:  # each group's prompt (but its last token), once; right-padded: a row continues at its own length
        ids = torch.full((groups, width), pad_token_id, dtype=torch.long)
        present = torch.zeros((groups, width), dtype=torch.long)
        for row, head_ids in enumerate(heads):
            ids[row, :len(head_ids)] = torch.tensor(head_ids)
            present[row, :len(head_ids)] = 1
        read = torch.cat([read, present], dim=1)
        cache = DynamicCache(ddp_cache_data=keys_values or None)
        inner(input_ids=ids.to(device), attention_mask=read.to(device), position_ids=(common + torch.arange(width))[None].expand(groups, -1).to(device),
              **{argument: cache}, use_cache=True, logits_to_keep=1)
        keys_values = [(layer.keys, layer.values) for layer in cache.layers]
    repeated = DynamicCache(ddp_cache_data=[(keys.repeat_interleave(size, 0), values.repeat_interleave(size, 0))
                                            for keys, values in keys_values])
    tails = [prompt[-1:] if size > 1 else prompt[common:] for prompt in prompts]  # what each row runs before its completion
    longest = max(len(tail) - 1 + len(completion) for tail, completion in zip(tails, completions))
    rest = torch.full((len(prompts), longest), pad_token_id, dtype=torch.long)
    targets = torch.full((len(prompts), longest), IGNORE, dtype=torch.long)
    present = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, (tail, completion) in enumerate(zip(tails, completions)):
        ids = tail + completion[:-1]
        rest[row, :len(ids)] = torch.tensor(ids)
        present[row, :len(ids)] = 1
        chosen = torch.tensor(completion)
        if masks is not None:
            chosen[~torch.tensor(masks[row], dtype=torch.bool)] = IGNORE
        targets[row, len(tail) - 1:len(ids)] = chosen
    attention = torch.cat([read.repeat_interleave(size, 0), present], dim=1)
    starts = torch.tensor([len(prompt) - len(tail) for prompt, tail in zip(prompts, tails)])
    positions = starts[:, None] + torch.arange(longest)[None, :]
    hidden = model(input_ids=rest.to(device), attention_mask=attention.to(device), position_ids=positions.to(device),
                   **{argument: repeated}, use_cache=True).logits  # (B, longest, H)
    wanted = (targets != IGNORE).to(device)
    return hidden[wanted], targets.to(device)[wanted]


def _checkpointing(model: Any) -> bool:
    name = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else "is_gradient_checkpointing"
    return bool(getattr(model, name, False))
