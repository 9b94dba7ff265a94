"""Log-probabilities of given completions under a local model: the scorer of KD, student-fit and on-policy.

    from tutorlm.models.score import score_ids, score_rows
    scored = score_rows(model, tokenizer, curated_rows, top_k=20)     # conversational rows, as curated.jsonl
    scored[0].mean_logprob, scored[0].share_below(0.1)               # how likely the model finds a rationale

One forward pass per batch, with the vocabulary projection computed only at completion positions and a
chunk of rows at a time (the model's head is swapped for an identity, as the SFT loss does), so neither
the prompt's logits nor a whole batch's (tokens x vocabulary) logits ever exist. `score_ids` takes token
ids (what the engine generated, exactly); `score_rows` renders prompt and completion with the model's
chat template first, as training does.

`score_remote` scores on an OpenAI-compatible server instead, with the legacy completions API's `echo`
and `logprobs` (vLLM serves it; llama.cpp's server refuses echo, which stops the run with that reply),
through the teacher cache and the generate stage's retries: a scored text is paid for once. The server's
tokens come back as text with their offsets, so the scores are of the server model's own tokens.
"""

from __future__ import annotations

import hashlib
import math
import json
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from tutorlm.train.data import IGNORE, Tokenized, collate_padded, identity_head, labelled_positions, plain_output_head, tokenize

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
                with identity_head(model, head):
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


# ---------------------------------------------------------------------------------------------------
# On a server
# ---------------------------------------------------------------------------------------------------


@dataclass
class TextPair:
    """A prompt already rendered with the served model's chat template, and the completion text to score after it."""

    prompt: str
    completion: str


@dataclass
class ScoredText:
    """The server model's tokens of a completion (texts and their offsets in it) and their log-probabilities."""

    tokens: list[str]
    offsets: list[int]  # where each token starts in the completion text
    logprobs: list[float]
    top: list[dict[str, float]] | None = None  # the k most likely next tokens at each position, by text

    @property
    def mean_logprob(self) -> float:
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else 0.0


def parse_echo_logprobs(data: dict[str, Any], prompt: str, completion: str, top_k: int, url: str) -> ScoredText:
    """The completion's part of an echoed /v1/completions reply ({"choices": [{"logprobs": {tokens, token_logprobs,
    text_offset, top_logprobs}}]}); a reply without the prompt's log-probabilities is a FatalBackendError."""
    from tutorlm.errors import FatalBackendError

    logprobs = data["choices"][0].get("logprobs") or {}
    tokens, values, offsets = logprobs.get("tokens") or [], logprobs.get("token_logprobs") or [], logprobs.get("text_offset") or []
    end = len(prompt) + len(completion)
    # Tokens that start in the completion; one that straddles the boundary belongs to neither side.
    wanted = [i for i, offset in enumerate(offsets) if len(prompt) <= offset < end]
    if len(offsets) < 2 or len(offsets) != len(tokens) or not "".join(tokens).startswith(prompt + completion):
        raise FatalBackendError(
            f"{url} did not return log-probabilities of the prompt's tokens ({len(tokens)} tokens came back for a text of "
            f"{end} characters): it does not echo with logprobs, which scoring needs (vLLM does)"
        )
    top = [dict(logprobs["top_logprobs"][i] or {}) for i in wanted] if top_k and logprobs.get("top_logprobs") else None
    return ScoredText([tokens[i] for i in wanted], [offsets[i] - len(prompt) for i in wanted],
                      [float(values[i]) for i in wanted], top)


def score_remote(teacher: Any, pairs: list[TextPair], *, top_k: int = 0, cache: Any = None) -> list[ScoredText]:
    """Scores of rendered (prompt, completion) texts by the served model `teacher` (a TeacherConfig with backend openai).

    Cached like teacher calls (key: model, texts, top_k); calls that still fail after retries raise
    GenerationIncomplete, and a rerun makes only those.
    """
    from tutorlm.backends.openai import OpenAIBackend
    from tutorlm.errors import GenerationIncomplete

    backend = OpenAIBackend(teacher)
    keys = [hashlib.sha256(json.dumps({"kind": "score", "model": backend.model_name, "prompt": pair.prompt,
                                       "completion": pair.completion, "top_k": top_k}).encode()).hexdigest() for pair in pairs]
    stored = cache.get_many_json(keys) if cache is not None else {}
    results: dict[str, Any] = {key: ScoredText(**value) for key, value in stored.items()}
    pending = {key: pair for key, pair in zip(keys, pairs) if key not in results}
    key_of = {id(pair): key for key, pair in pending.items()}

    def done(pair: TextPair, result: Any) -> None:
        results[key_of[id(pair)]] = result
        if cache is not None and isinstance(result, ScoredText):
            cache.put_json(key_of[id(pair)], "openai-score", backend.model_name, asdict(result))

    backend.score(list(pending.values()), top_k, done)
    failures = [result for result in results.values() if isinstance(result, Exception)]
    if failures:
        raise GenerationIncomplete(f"{len(failures)} of {len(pairs)} scoring calls failed (first: {failures[0]}); run again to retry")
    return [results[key] for key in keys]
