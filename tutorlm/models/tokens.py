"""Token-level pieces that the engine, scoring and training share: chat rendering, tokenizing with
completion-only labels, collation, and the output-head swap.

Tokenization. The prompt is rendered with the model's chat template and the generation prompt (exactly what
the model sees at inference), the completion is the rest of the rendered conversation (the answer and the
end-of-turn token), and the two are tokenized separately and concatenated, so the prompt tokens match
inference token for token. Labels are -100 (`IGNORE`) on the prompt.

Collation, two ways: packed (padding-free: one row, examples back to back, `position_ids` restarting at 0 per
example, so transformers builds a block-diagonal causal mask) and padded (right-padded to the longest, with an
attention mask). A top-k of teacher distributions (train/kd.py) travels with the batch as `teacher_ids` and
`teacher_logprobs`.

Output heads. `identity_head` swaps a model's vocabulary projection for an identity, so its forward returns
final hidden states and the caller projects only the positions it needs (the SFT loss, scoring, the engine);
`plain_output_head` says whether a model's logits are exactly `hidden @ weight.T`, which that needs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from tutorlm.verify import output_spans

IGNORE = -100


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]  # IGNORE on prompt tokens
    example_id: str = ""
    # KD from a top-k (train/kd.py): the teacher's distribution over the token at each index, in the student's
    # vocabulary; (T, k) ids (-1: none) and log-probs, or None
    teacher_ids: torch.Tensor | None = None
    teacher_logprobs: torch.Tensor | None = None
    # an objective's own index of the example (train/dpo.py: which preference pair), carried as batch["example_index"]
    index: int | None = None
    # the share of the teacher's samples of this question that verified (curate's teacher_pass_rate): the curriculum's
    # measure of how hard the question is
    pass_rate: float = 1.0


def render(tokenizer: Any, prompt: list[dict[str, str]], completion: list[dict[str, str]]) -> tuple[str, str]:
    """(prompt text with the generation prompt, completion text) under the tokenizer's chat template."""
    prompt_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    if not full_text.startswith(prompt_text):
        # Templates that rewrite earlier turns (e.g. dropping reasoning) do not extend the prompt; fall back
        # to the assistant content plus the end-of-sequence token.
        return prompt_text, completion[-1]["content"] + (tokenizer.eos_token or "")
    return prompt_text, full_text[len(prompt_text):]


def tokenize(tokenizer: Any, row: dict[str, Any]) -> Tokenized:
    """A row's prompt and completion as token ids, labels on the completion; the ```output blocks of a tool-using
    completion (tools/loop.py) are the environment's text, not the model's, and get no labels. Such a completion is
    tokenized piece by piece (the model's text, an output block, ...), as generation with the tool builds it: tokenized
    whole, a token can join the model's closing fence to the output's opening one, and masking it would leave the
    student never learning to close its code block (measured: the `tools` recipe's student repeated its print line)."""
    prompt_text, completion_text = render(tokenizer, row["prompt"], row["completion"])
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    outputs = output_spans(completion_text)
    if outputs:  # tokenized piece by piece, as the tool loop builds it: no token spans the model's text and a tool's
        completion_ids, labels, position = [], [], 0
        for start, end in [*outputs, (len(completion_text), len(completion_text))]:
            written = tokenizer(completion_text[position:start], add_special_tokens=False)["input_ids"] if start > position else []
            given = tokenizer(completion_text[start:end], add_special_tokens=False)["input_ids"] if end > start else []
            completion_ids += written + given
            labels += written + [IGNORE] * len(given)
            position = end
    else:
        completion_ids = tokenizer(completion_text, add_special_tokens=False)["input_ids"]
        labels = completion_ids
    return Tokenized(prompt_ids + completion_ids, [IGNORE] * len(prompt_ids) + labels, str(row.get("id", "")),
                     pass_rate=float(row.get("teacher_pass_rate", 1.0)))


def without_outputs(labels: list[int], spans: Sequence[tuple[int, int]], text: str) -> list[int]:
    """`labels` (one per token of `text`, whose character spans are `spans`) with IGNORE on the tokens inside a tool's
    ```output block: the model did not write them, so it is not trained to."""
    outputs = output_spans(text)
    if not outputs:
        return list(labels)

    def inside(start: int, end: int) -> bool:
        return any((a < end and start < b) if end > start else a <= start < b for a, b in outputs)

    return [IGNORE if inside(start, end) else label for label, (start, end) in zip(labels, spans)]


def prompt_length(labels: list[int]) -> int:
    """Tokens before the first labelled one: the prompt (a completion's masked tool outputs come later)."""
    return next((index for index, label in enumerate(labels) if label != IGNORE), len(labels))


def collate_packed(items: list[Tokenized]) -> dict[str, torch.Tensor]:
    """One row, examples back to back, position ids restarting per example: no padding, no leakage."""
    input_ids = [token for item in items for token in item.input_ids]
    labels = []
    for item in items:
        # The first label of each example must not be predicted from the previous example's last token;
        # it is a prompt token (IGNORE) anyway, but make it explicit for prompts of length 0.
        labels += [IGNORE] + item.labels[1:]
    position_ids = [position for item in items for position in range(len(item.input_ids))]
    batch = {
        "input_ids": torch.tensor([input_ids]),  # (1, T)
        "labels": torch.tensor([labels]),  # (1, T)
        "position_ids": torch.tensor([position_ids]),  # (1, T)
    }
    k = _top_k(items)
    if k:
        ids, logprobs = zip(*(_teacher_of(item, k) for item in items))
        batch["teacher_ids"] = torch.cat(ids)[None]  # (1, T, k)
        batch["teacher_logprobs"] = torch.cat(logprobs)[None]  # (1, T, k)
    return _with_index(batch, items)


def _with_index(batch: dict[str, torch.Tensor], items: list[Tokenized]) -> dict[str, torch.Tensor]:
    if items and all(item.index is not None for item in items):
        batch["example_index"] = torch.tensor([item.index for item in items])  # (B,), never a model input
    return batch


def _top_k(items: list[Tokenized]) -> int:
    return max((item.teacher_ids.shape[1] for item in items if item.teacher_ids is not None), default=0)


def _teacher_of(item: Tokenized, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, k) teacher ids and log-probs of an example; -1 / -inf where it has none."""
    length = len(item.input_ids)
    ids, logprobs = torch.full((length, k), -1, dtype=torch.long), torch.full((length, k), float("-inf"))
    if item.teacher_ids is not None:
        ids[:, : item.teacher_ids.shape[1]] = item.teacher_ids[:length]
        logprobs[:, : item.teacher_ids.shape[1]] = item.teacher_logprobs[:length]
    return ids, logprobs


def collate_padded(items: list[Tokenized], pad_token_id: int) -> dict[str, torch.Tensor]:
    width = max(len(item.input_ids) for item in items)
    input_ids = torch.full((len(items), width), pad_token_id)  # (B, T)
    labels = torch.full((len(items), width), IGNORE)  # (B, T)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)  # (B, T)
    for row, item in enumerate(items):
        input_ids[row, : len(item.input_ids)] = torch.tensor(item.input_ids)
        labels[row, : len(item.labels)] = torch.tensor(item.labels)
        attention_mask[row, : len(item.input_ids)] = 1
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
    k = _top_k(items)
    if k:
        batch["teacher_ids"] = torch.full((len(items), width, k), -1, dtype=torch.long)  # (B, T, k)
        batch["teacher_logprobs"] = torch.full((len(items), width, k), float("-inf"))  # (B, T, k)
        for row, item in enumerate(items):
            batch["teacher_ids"][row, : len(item.input_ids)], batch["teacher_logprobs"][row, : len(item.input_ids)] = _teacher_of(item, k)
    return _with_index(batch, items)


def labelled_positions(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """(model inputs, the K positions some row has a label at, the (B, K) targets there)."""
    targets = batch["labels"][:, 1:]  # (B, T-1): position t predicts token t+1
    positions = torch.nonzero((targets != IGNORE).any(dim=0)).squeeze(-1)  # (K,)
    inputs = {key: value for key, value in batch.items()
              if key not in ("labels", "example_index") and not key.startswith("teacher_")}
    return inputs, positions, targets[:, positions]


def plain_output_head(model: Any, *, dequantize: bool = False) -> torch.nn.Linear | None:
    """The model's vocabulary projection, if its logits are exactly `hidden @ weight.T`; else None. With `dequantize`
    (KD's teacher), an int8 head (models/load.py's RowRangeInt8Linear) is read as its dequantized weights, its logits
    then `hidden @ weight.T` without the rounding of the hidden states to int8; decoding keeps the int8 head."""
    config = getattr(model, "config", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if dequantize and hasattr(head, "dequantized"):
        head = head.dequantized()
    if not isinstance(head, torch.nn.Linear) or head.bias is not None or config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "final_logit_softcapping", None) or getattr(text, "logit_scale", 1.0) not in (None, 1.0):
        return None
    return head


_IDENTITY = torch.nn.Identity()  # one instance: a compiled forward's guards see the same module every step


@contextlib.contextmanager
def identity_head(model: Any):
    """While inside, the model (unwrapped) returns final hidden states as its `logits` (for the caller to project by
    its head, `plain_output_head`); after, it has its own output layer back (an int8 one stays int8)."""
    own = model.get_output_embeddings()
    model.set_output_embeddings(_IDENTITY)
    try:
        yield
    finally:
        model.set_output_embeddings(own)
