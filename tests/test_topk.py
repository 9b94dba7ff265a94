"""The compact top-k of traces: exact ids, float16 log-probs, and its size per token."""

from __future__ import annotations

import math
import random

import pytest
import torch

from tutorlm.models import topk


def entries(count: int, k: int, vocabulary: int = 150_000, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        ids = rng.sample(range(vocabulary), k)
        values = sorted((-rng.expovariate(0.5) for _ in range(k)), reverse=True)
        out.append({"logprob": values[0], "top": [[f"t{i}", v] for i, v in zip(ids, values)], "top_ids": ids})
    return out


def test_round_trip_keeps_ids_exactly_and_logprobs_to_float16():
    rows = entries(50, 20)
    ids, logprobs, chosen = topk.unpack(topk.pack(*topk.from_entries(rows, 20)))
    assert ids.shape == logprobs.shape == (50, 20) and chosen.shape == (50,)
    assert ids.tolist() == [row["top_ids"] for row in rows]
    expected = torch.tensor([[pair[1] for pair in row["top"]] for row in rows])
    assert torch.allclose(logprobs, expected, rtol=1e-3, atol=1e-3)
    assert torch.allclose(chosen, expected[:, 0], rtol=1e-3, atol=1e-3)


def test_fewer_candidates_than_k_are_padded_with_no_token():
    rows = entries(3, 2, vocabulary=10)
    ids, logprobs, _ = topk.unpack(topk.pack(*topk.from_entries(rows, 4)))
    assert ids[:, 2:].eq(-1).all() and torch.isinf(logprobs[:, 2:]).all() and ids[:, :2].ge(0).all()


def test_size_per_token_meets_the_goal_at_k_20():
    packed = topk.pack(*topk.from_entries(entries(200, 20), 20))
    size = topk.bytes_per_token(packed)
    assert size <= 300
    # what it costs against the verbose JSON of [text, log-prob] pairs a server returns
    import json

    verbose = len(json.dumps(entries(200, 20))) / 200
    assert size < verbose / 4, (size, verbose)


def test_malformed_forms_are_refused():
    packed = topk.pack(*topk.from_entries(entries(4, 5), 5))
    with pytest.raises(ValueError, match="malformed teacher_topk"):
        topk.unpack({**packed, "logprobs": packed["logprobs"][:8]})
    with pytest.raises(ValueError, match="malformed"):
        topk.unpack({**packed, "k": 0})
    assert math.isfinite(topk.bytes_per_token(packed))
