"""The compact form of a teacher's top-k log-probabilities in traces.jsonl and curated.jsonl.

    row["teacher_topk"] = {"k": 20, "ids": "<base64>", "logprobs": "<base64>", "chosen": "<base64>"}

`ids` holds n × k little-endian int32 token ids in the teacher's vocabulary (the tokenizer named by the
row's `tokenizer`), `logprobs` the n × k log-probabilities as float16, `chosen` the n log-probabilities
of the tokens the teacher wrote (the row's `completion_token_ids`), each base64-encoded: 6k + 2 bytes
per token, 8k + 3 in the file (163 bytes at k = 20, against ~1.2 KB as JSON lists of [text, log-prob]).
Positions with fewer than k candidates are padded with id -1 and log-probability -inf. float16 keeps
log-probabilities to three significant digits, which changes a KL term by far less than its noise.
"""

from __future__ import annotations

import base64
import math
from typing import Any, Sequence

FIELD = "teacher_topk"


def pack(ids: Any, logprobs: Any, chosen: Any = None) -> dict[str, Any]:
    """(n, k) ids and log-probs, and the n chosen tokens' log-probs when known (torch tensors) -> the compact form.

    The one packer: a local teacher's generated top-k (`from_entries`), a scorer's top-k (KD across vocabularies,
    on-policy grades) and anything else that writes the format go through it."""
    import torch

    packed = {"k": int(ids.shape[1]), "ids": _b64(ids.to(torch.int32).contiguous().numpy().tobytes()),
              "logprobs": _b64(logprobs.to(torch.float16).contiguous().numpy().tobytes())}
    if chosen is not None:
        packed["chosen"] = _b64(chosen.to(torch.float16).contiguous().numpy().tobytes())
    return packed


def from_entries(entries: Sequence[dict[str, Any]], k: int) -> tuple[Any, Any, Any]:
    """The engine's logprob entries ({"logprob", "top": [[text, logprob], ...], "top_ids": [...]}) -> (ids (n, k),
    log-probs (n, k), chosen (n,)) tensors, padded with id -1 and log-prob -inf where fewer than k candidates."""
    import torch

    ids = torch.full((len(entries), k), -1, dtype=torch.long)
    values = torch.full((len(entries), k), -math.inf)
    for row, entry in enumerate(entries):
        top_ids, top = list(entry["top_ids"])[:k], [pair[1] for pair in entry["top"]][:k]
        ids[row, : len(top_ids)] = torch.tensor(top_ids, dtype=torch.long)
        values[row, : len(top)] = torch.tensor(top, dtype=torch.float32)
    # a tool output's token (tools/loop.py) has no distribution and no log-prob of its own: 0 (it was given)
    chosen = torch.tensor([float(entry["logprob"] or 0.0) for entry in entries], dtype=torch.float32)
    return ids, values, chosen


def unpack(packed: dict[str, Any]) -> tuple[Any, Any, Any]:
    """The compact form -> (ids (n, k) int64, log-probs (n, k) float32, chosen (n,) float32) as torch tensors."""
    import torch

    k = int(packed["k"])
    raw_ids = base64.b64decode(packed["ids"])
    raw_values = base64.b64decode(packed["logprobs"])
    raw_chosen = base64.b64decode(packed.get("chosen", ""))
    if k <= 0 or len(raw_ids) % (4 * k) or len(raw_values) * 2 != len(raw_ids):
        raise ValueError(f"malformed {FIELD}: {len(raw_ids)} bytes of ids and {len(raw_values)} of log-probs for k={k}")
    ids = torch.frombuffer(bytearray(raw_ids), dtype=torch.int32).to(torch.long).reshape(-1, k)
    values = torch.frombuffer(bytearray(raw_values), dtype=torch.float16).float().reshape(-1, k)
    chosen = torch.frombuffer(bytearray(raw_chosen), dtype=torch.float16).float() if raw_chosen else torch.empty(0)
    return ids, values, chosen


def bytes_per_token(packed: dict[str, Any]) -> float:
    """Characters of the compact form in the JSON file per token (what the trace file pays for it)."""
    tokens = len(base64.b64decode(packed["ids"])) // (4 * int(packed["k"]))
    size = len(packed["ids"]) + len(packed["logprobs"]) + len(packed.get("chosen", ""))
    return size / max(tokens, 1)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
