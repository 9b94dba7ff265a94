"""`train.objective: sft` — supervised fine-tuning on the teacher's rationales (the default).

    tutorlm train --out runs/letters [--train.method lora] [--train.epochs 2] [--resume]

Method: Fine-tune-CoT (Ho et al. 2023): next-token cross-entropy on the teacher's rationale, with the
loss on completion tokens only, averaged over them (`data.sft_loss`: the vocabulary projection only
at labelled positions, a chunk at a time). Full fine-tuning or LoRA (`train.method`). The loop around
it (optimizer, schedule, checkpoints, resume, logging, saving) is train/loop.py.
"""

from __future__ import annotations

from typing import Any

import torch
from rich.console import Console

from tutorlm.models.tokens import Tokenized
from tutorlm.train.data import sft_loss


class SFT:
    def prepare(self, recipe: Any, model: Any, tokenizer: Any, rows: list[dict[str, Any]], examples: list[Tokenized],
                device: Any, console: Console) -> dict[str, Any]:
        return {}

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        return sft_loss(model, batch)
