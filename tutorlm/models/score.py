"""Log-probabilities of given completions under a local model: the scorer of KD, student-fit and on-policy.

    from tutorlm.models.score import score_ids, score_rows
    scored = score_rows(model, tokenizer, curated_rows, top_k=20)     # conversational rows, as curated.jsonl
    scored[0].mean_logprob, scored[0].share_below(0.1)               # how likely the model finds a rationale

One forward pass per batch, with the vocabulary projection computed only at completion positions and a
chunk of rows at a time (the model's head is swapped for an identity, as the SFT loss does), so neither
the prompt's logits nor a whole batch's (tokens x vocabulary) logits ever exist. `score_ids` takes token
ids (what the engine generated, exactly); `score_rows` renders prompt and completion with the model's
chat template first, as training does.

A served teacher scores through backends/openai.py's `score_remote` instead (the legacy completions API's
`echo` and `logprobs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from tutorlm.models.tokens import (
    IGNORE,
    Tokenized,
    collate_padded,
    identity_head,
    labelled_positions,
    plain_output_head,
    tokenize,
)

ROWS_PER_CHUNK = 256  # positions projected onto the vocabulary at once


@dataclass
class Scored:
    """One completion's tokens and their log-probabilities under the model."""

    token_ids: list[int]
    logprobs: list[float]  # of each completion token given everything before it
    top_ids: list[list[int]] | None = None  # (tokens, k): the model's k most likely tokens at each position
    top_logprobs: list[list[float]] | None = None

    @property
    def mean_logprob(self) -> float:
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else 0.0

    def share_below(self, probability: float) -> float:
        """The share of tokens the model gives less than `probability` (the student-fit floor of RSD)."""
        floor = math.log(probability)
        return sum(lp < floor for lp in self.logprobs) / len(self.logprobs) if self.logprobs else 0.0


def score_ids(model: Any, items: list[tuple[list[int], list[int]]], *, top_k: int = 0, batch_size: int = 8,
              pad_token_id: int = 0) -> list[Scored]:
    """Scores of (prompt ids, completion ids) pairs, in order."""
    tokenized = [Tokenized(prompt + completion, [IGNORE] * len(prompt) + completion) for prompt, completion in items]
    return _score(model, tokenized, top_k, batch_size, pad_token_id)


def score_rows(model: Any, tokenizer: Any, rows: list[dict[str, Any]], *, top_k: int = 0, batch_size: int = 8,
               on_batch: Callable[[int], None] | None = None) -> list[Scored]:
    """Scores of conversational rows ({"prompt": messages, "completion": messages}) under the model's chat template;
    `on_batch(rows_done)` is called after each batch (a progress bar)."""
    return _score(model, [tokenize(tokenizer, row) for row in rows], top_k, batch_size, tokenizer.pad_token_id, on_batch)


@torch.no_grad()
def _score(model: Any, items: list[Tokenized], top_k: int, batch_size: int, pad_token_id: int,
           on_batch: Callable[[int], None] | None = None) -> list[Scored]:
    device = next(model.parameters()).device
    head = plain_output_head(model)
    results: list[Scored] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(items), batch_size):
            chunk_items = items[start:start + batch_size]
            batch = {key: value.to(device) for key, value in collate_padded(chunk_items, pad_token_id).items()}
            inputs, positions, targets = labelled_positions(batch)  # (K,), (B, K)
            if head is None:  # soft-capped or biased heads: the model's own logits at the kept positions
                hidden, weight = model(**inputs, logits_to_keep=positions, use_cache=False).logits, None  # (B, K, V)
            else:
                with identity_head(model):
                    hidden, weight = model(**inputs, logits_to_keep=positions, use_cache=False).logits, head.weight  # (B, K, H)
            for row in range(len(chunk_items)):
                wanted = targets[row] != IGNORE  # (K,)
                results.append(_score_row(hidden[row][wanted], weight, targets[row][wanted], top_k))
            if on_batch is not None:
                on_batch(len(results))
    finally:
        model.train(was_training)
    return results


def _score_row(hidden: torch.Tensor, weight: torch.Tensor | None, targets: torch.Tensor, top_k: int) -> Scored:
    """(N, H) hidden states (or (N, V) logits when `weight` is None) and (N,) targets -> Scored."""
    chosen, top_ids, top_values = [], [], []
    for start in range(0, hidden.shape[0], ROWS_PER_CHUNK):
        part = hidden[start:start + ROWS_PER_CHUNK]
        logits = part if weight is None else part @ weight.to(part.dtype).T  # (c, V)
        logprobs = F.log_softmax(logits.float(), dim=-1)
        chosen += logprobs.gather(1, targets[start:start + ROWS_PER_CHUNK, None])[:, 0].tolist()
        if top_k:
            top = logprobs.topk(top_k, dim=-1)
            top_ids += top.indices.tolist()
            top_values += top.values.tolist()
    return Scored(targets.tolist(), chosen, top_ids if top_k else None, top_values if top_k else None)
