"""Reverse speculative decoding (RSD; "In Their Own Words", Kim et al. 2025): rationales the student can follow.

A local teacher writes the rationale, but every token it proposes must be one the student would have
written too: a token the student gives less than `floor` probability is rejected and redrawn from the
teacher's distribution over the tokens the student accepts (drawing again and again until the student
accepts one comes to the same distribution). The trace keeps the teacher's reasoning and leaves out the
tokens that are improbable to the student, which the paper found to be what makes SFT on a strong
teacher's traces hurt a small student. Greedy decoding takes the teacher's most likely accepted token.
If the student accepts no token at all (floor above its most likely token's probability), its own
most likely token is written.

Both models decode together with continuous batching: `GuidedEngine` is the teacher's `Engine`, and a
`_Judge` engine over the student mirrors its rows (the same slots start, decode and end together), each
model with its own prompt (the teacher's, and the student's training prompt in its own chat template)
and its own KV buffers. The two must share a vocabulary (e.g. Qwen2.5-Coder-1.5B teaching 0.5B): the
token ids the teacher writes are read by the student as they are.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from tutorlm.models.engine import Engine, RowSettings, draw, grad_off, row_settings, tempered


class _Judge(Engine):
    """The student's side: decodes the tokens the teacher's engine chose and keeps its logits for the next choice."""

    scores: torch.Tensor

    def _advance(self, slots: list[int], logits: torch.Tensor) -> None:
        self.scores = logits.float()


class GuidedEngine(Engine):
    """The teacher's engine, with each token checked by the student (`guide`); see the module docstring.

    `run(prompts, guide_prompts=..., ...)` takes the student's prompt for each request too; `redrawn[index]`
    counts the tokens of request `index` the student rejected.
    """

    def __init__(self, model: Any, guide: Any, *, floor: float, slots: int, pad_token_id: int, stop_ids: set[int]) -> None:
        super().__init__(model, slots=slots, pad_token_id=pad_token_id, stop_ids=stop_ids)
        if not 0 < floor < 1:
            raise ValueError(f"the RSD floor is a probability in (0, 1), got {floor}")
        self.judge = _Judge(guide, slots=slots, pad_token_id=pad_token_id, stop_ids=stop_ids)
        self.floor = floor
        self.redrawn: dict[int, int] = {}

    @grad_off
    def run(self, prompts: list[list[int]], *, guide_prompts: list[list[int]], max_tokens: int = 0,
            temperature: float = 0.0, top_p: float = 1.0, seeds: list[int] | None = None,
            settings: list[RowSettings] | None = None, **options: Any) -> None:
        if len(guide_prompts) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(guide_prompts)} guide prompts")
        if options.get("incoming") is not None:
            raise ValueError("RSD runs a fixed list of prompts (no arrivals)")
        if not prompts:
            return
        if settings is None:
            settings = row_settings(len(prompts), max_tokens, temperature, top_p, seeds)
        self.redrawn = {index: 0 for index in range(len(prompts))}
        self.judge._setup(guide_prompts, settings, None)
        super().run(prompts, settings=settings, **options)

    def _enter(self, stack: contextlib.ExitStack) -> None:
        super()._enter(stack)
        self.judge._enter(stack)

    # The judge's rows follow the teacher's: the same slots start, decode, end and are dropped together.

    def _prefix(self, prompts: list[list[int]]) -> None:
        super()._prefix(prompts)
        self.judge._prefix(self.judge.prompts)

    def _insert(self, slots: list[int], chosen: list[int]) -> None:
        self.judge._insert(slots, chosen)  # the student's logits for these rows' first token
        super()._insert(slots, chosen)

    def _decode(self) -> None:
        self.judge._decode()  # the student reads the tokens just chosen (its `last`)
        super()._decode()

    def _advance(self, slots: list[int], logits: torch.Tensor) -> None:
        super()._advance(slots, logits)
        index = torch.tensor(slots, device=self.device)
        self.judge.last[index.to(self.judge.device)] = self.last[index].to(self.judge.device)

    def _finish(self, slot: int, reason: str) -> None:
        self.judge.rows[slot] = None
        super()._finish(slot, reason)

    def _drop_rows(self) -> None:
        self.judge._drop_rows()
        super()._drop_rows()

    def _add_rows(self, count: int) -> None:
        self.judge._add_rows(count)
        super()._add_rows(count)

    def _choose(self, slots: list[int], logits: torch.Tensor) -> torch.Tensor:
        proposed = super()._choose(slots, logits)  # the teacher's own token (one draw of each sampled row)
        vocabulary = min(logits.shape[-1], self.judge.scores.shape[-1])  # embedding tables may be padded differently
        student = torch.softmax(self.judge.scores.to(logits.device), dim=-1)[:, :vocabulary]
        accepted = torch.zeros_like(logits, dtype=torch.bool)
        accepted[:, :vocabulary] = student >= self.floor
        rejected = ~accepted.gather(1, proposed[:, None])[:, 0]
        rows = [self.rows[slot] for slot in slots]
        live = torch.tensor([row is not None for row in rows], device=logits.device)
        rejected &= live
        if not bool(rejected.any()):
            return proposed
        sampled = [row is not None and row.settings.temperature > 0 and bool(no) for row, no in zip(rows, rejected.tolist())]
        masked = logits.masked_fill(~accepted, float("-inf"))
        redrawn = masked.argmax(dim=-1)  # greedy rows: the teacher's most likely accepted token
        if any(sampled):
            probs = tempered(logits, rows, sampled) * accepted
            empty = probs.sum(-1) <= 0
            probs[empty] = 1.0  # no accepted token: replaced below, but draw needs a distribution
            drawn = draw(probs, [row.generator if hot else None for row, hot in zip(rows, sampled)], self.pad_token_id)
            redrawn = torch.where(torch.tensor(sampled, device=logits.device), drawn, redrawn)
        nothing_accepted = ~accepted.any(dim=-1)
        fallback = torch.nn.functional.pad(student, (0, logits.shape[-1] - vocabulary)).argmax(dim=-1)
        redrawn = torch.where(nothing_accepted, fallback, redrawn)
        for row, no in zip(rows, rejected.tolist()):
            if no:
                self.redrawn[row.index] += 1
        return torch.where(rejected, redrawn, proposed)
