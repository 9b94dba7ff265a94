"""The timed SFT step loop that benchmarks/packing.py and benchmarks/sft_mfu.py share."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch

from tutorlm.train.data import batches, sft_loss


def timed_steps(forward_model, optimizer, examples, order, packing: bool, pad_token_id: int,
                warmup: int = 2, bf16: bool = False) -> Iterator[tuple[dict[str, torch.Tensor], float]]:
    """Run one optimizer step per batch of `order`; yield (batch, seconds) for the steps after `warmup`.
    `bf16`: the forward under bf16 autocast (fp32 weights), as `train.precision bf16` runs it."""
    for index, batch in enumerate(batches(examples, order, packing, pad_token_id)):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss, _ = sft_loss(forward_model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= warmup:  # warm-up (and compilation) steps are not timed
            yield batch, time.perf_counter() - started
