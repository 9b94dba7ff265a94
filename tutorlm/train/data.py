"""Training data: chat-formatted tokenization with completion-only labels, batching, and the SFT loss.

Tokenization. The prompt is rendered with the student's chat template and the generation prompt
(exactly what the student sees at inference), the completion is the rest of the rendered
conversation (the answer and the end-of-turn token), and the two are tokenized separately and
concatenated, so the prompt tokens match inference token for token. Labels are -100 on the prompt.

Batching, two ways (`packing`):
- packed (padding-free): a batch's examples are concatenated into one row with `position_ids` that
  restart at 0 for each example and no attention mask; transformers then builds a block-diagonal
  causal mask, so no token attends across examples. No pad token is ever computed.
- padded: examples grouped by length (a seeded shuffle of length-sorted chunks, like HF's
  group_by_length), right-padded to the longest in the batch, with an attention mask.

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

import contextlib
import dataclasses
import random
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel

from tutorlm.errors import PreflightError
from tutorlm.train.losses import linear_cross_entropy

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
    prompt_text, completion_text = render(tokenizer, row["prompt"], row["completion"])
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion_text, add_special_tokens=False)["input_ids"]
    return Tokenized(prompt_ids + completion_ids, [IGNORE] * len(prompt_ids) + completion_ids, str(row.get("id", "")),
                     pass_rate=float(row.get("teacher_pass_rate", 1.0)))


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
            prompt_length = sum(1 for label in item.labels if label == IGNORE)
            if overlength == "drop" or prompt_length >= max_length:
                dropped_prompt_too_long += prompt_length >= max_length
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


def batches(examples: list[Tokenized], order: list[list[int]], packing: bool, pad_token_id: int) -> Iterator[dict[str, torch.Tensor]]:
    for indices in order:
        items = [examples[i] for i in indices]
        yield collate_packed(items) if packing else collate_padded(items, pad_token_id)


def labelled_positions(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """(model inputs, the K positions some row has a label at, the (B, K) targets there)."""
    targets = batch["labels"][:, 1:]  # (B, T-1): position t predicts token t+1
    positions = torch.nonzero((targets != IGNORE).any(dim=0)).squeeze(-1)  # (K,)
    inputs = {key: value for key, value in batch.items()
              if key not in ("labels", "example_index") and not key.startswith("teacher_")}
    return inputs, positions, targets[:, positions]


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
    with identity_head(inner, head):
        hidden = model(**inputs, logits_to_keep=positions, use_cache=False).logits  # (B, K, H)
    wanted = chosen != IGNORE
    targets = chosen[wanted]  # its length is known once the mask is applied: no second read of the device
    return linear_cross_entropy(hidden[wanted], head.weight, targets), targets.numel()


def plain_output_head(model: Any) -> torch.nn.Linear | None:
    """The model's vocabulary projection, if its logits are exactly `hidden @ weight.T`; else None."""
    config = getattr(model, "config", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear) or head.bias is not None or config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "final_logit_softcapping", None) or getattr(text, "logit_scale", 1.0) not in (None, 1.0):
        return None
    return head


_IDENTITY = torch.nn.Identity()  # one instance: a compiled forward's guards see the same module every step


@contextlib.contextmanager
def identity_head(model: Any, head: torch.nn.Linear):
    """While inside, the model (unwrapped) returns final hidden states as its `logits`."""
    model.set_output_embeddings(_IDENTITY)
    try:
        yield
    finally:
        model.set_output_embeddings(head)
