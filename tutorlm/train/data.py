"""Training data: the pre-flight check, batch order (shuffled, length-grouped, or easy-first), and the SFT loss.

Rendering, tokenizing with completion-only labels and collation (packed or padded) live in models/tokens.py,
which the engine and scoring share.

Loss. `sft_loss` is the mean cross-entropy over completion tokens, and never holds the logits: the
model runs with its output projection swapped for an identity (`logits_to_keep` with an index tensor
keeps only positions some row has a label for), so it returns final hidden states; the hidden states
of labelled tokens then go through `linear_cross_entropy`, which projects them onto the vocabulary in
row chunks and computes the gradients in the same pass (the loss is the last operation, so its
gradient is known up to the incoming scale). The vocabulary projection, the largest matmul of a
small model, is computed once per labelled token and for nothing else, and at most one chunk of
logits exists at a time. TRL's fused LM head and Liger's fused linear cross-entropy do the same.
`token_losses` is the plain version, with per-token losses.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel

from tutorlm.errors import PreflightError
from tutorlm.models.tokens import (
    IGNORE,
    Tokenized,
    collate_packed,
    collate_padded,
    identity_head,
    labelled_positions,
    plain_output_head,
    prompt_length,
    tokenize,
)
from tutorlm.train.losses import linear_cross_entropy


def preflight(tokenizer: Any, rows: list[dict[str, Any]], max_length: int, overlength: str) -> tuple[list[Tokenized], dict[str, Any]]:
    """Tokenize every row and apply the over-length policy; report what a user should know before training."""
    if tokenizer.chat_template is None:
        raise PreflightError("the student's tokenizer has no chat template: use an instruct/chat model, or set one")
    report: dict[str, Any] = {"pad_token": tokenizer.pad_token, "pad_is_eos": tokenizer.pad_token_id == tokenizer.eos_token_id}
    examples, over, dropped_prompt_too_long = [], 0, 0
    for row in rows:
        item = tokenize(tokenizer, row)
        if len(item.input_ids) > max_length:
            over += 1
            prompt = prompt_length(item.labels)
            if overlength == "drop" or prompt >= max_length:
                dropped_prompt_too_long += prompt >= max_length
                continue
            item = dataclasses.replace(item, input_ids=item.input_ids[:max_length], labels=item.labels[:max_length])
        examples.append(item)
    report.update(examples=len(rows), over_max_length=over, kept=len(examples), overlength_policy=overlength,
                  dropped_prompt_too_long=dropped_prompt_too_long)
    if not examples:
        raise PreflightError(f"no example fits max_length={max_length} ({over} of {len(rows)} are longer): raise train.max_length")
    return examples, report


def batch_order(examples: list[Tokenized], batch_size: int, seed: int, epoch: int, group_by_length: bool,
                curriculum: str = "none") -> list[list[int]]:
    """Indices of each batch for one epoch: a seeded shuffle, length-grouped if asked.

    With curriculum "easy_first", the first epoch runs from easy to hard instead (Bengio et al. 2009): questions the
    teacher solved in more of its samples first, and among those, shorter rationales first (ties in seeded random
    order); later epochs are shuffled as usual."""
    rng = random.Random(seed * 1000 + epoch)
    order = list(range(len(examples)))
    rng.shuffle(order)
    if curriculum == "easy_first" and epoch == 0:
        order.sort(key=lambda i: (-examples[i].pass_rate, sum(label != IGNORE for label in examples[i].labels)))
        return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    if group_by_length:
        chunk = batch_size * 16
        order = [i for start in range(0, len(order), chunk)
                 for i in sorted(order[start:start + chunk], key=lambda i: -len(examples[i].input_ids))]
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def batches(examples: list[Tokenized], order: list[list[int]], packing: bool, pad_token_id: int) -> Iterator[dict[str, torch.Tensor]]:
    for indices in order:
        items = [examples[i] for i in indices]
        yield collate_packed(items) if packing else collate_padded(items, pad_token_id)


def token_losses(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token loss at every labelled position, the (row, position) of each), logits only where needed."""
    inputs, positions, chosen_targets = labelled_positions(batch)
    logits = model(**inputs, logits_to_keep=positions, use_cache=False).logits  # (B, K, V)
    losses = F.cross_entropy(logits.float().flatten(0, 1), chosen_targets.flatten(), ignore_index=IGNORE, reduction="none")
    mask = chosen_targets.flatten() != IGNORE
    rows = chosen_targets.shape[0]
    row_index = torch.arange(rows, device=positions.device).repeat_interleave(positions.numel())
    return losses[mask], torch.stack([row_index[mask], positions.repeat(rows)[mask]], dim=-1)


def sft_loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(mean cross-entropy over completion tokens, number of completion tokens), without materializing logits."""
    # The module inside data-parallel and torch.compile wrappers (which do not pass attribute lookups through).
    inner = extract_model_from_parallel(model, keep_torch_compile=False)
    head = plain_output_head(inner)
    if head is None:  # scaled or soft-capped logits, or a biased head: the plain path
        losses, _ = token_losses(model, batch)
        return losses.mean(), losses.numel()
    inputs, positions, chosen = labelled_positions(batch)
    with identity_head(inner):
        hidden = model(**inputs, logits_to_keep=positions, use_cache=False).logits  # (B, K, H)
    wanted = chosen != IGNORE
    targets = chosen[wanted]  # its length is known once the mask is applied: no second read of the device
    return linear_cross_entropy(hidden[wanted], head.weight, targets), targets.numel()


