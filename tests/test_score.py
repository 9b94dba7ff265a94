"""The scorer: log-probabilities of given completions, against the engine's own and against full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny import make_tokenizer, varied_model

from tutorlm.models import score
from tutorlm.backends import Request, Sampling
from tutorlm.backends.hf import HFBackend
from tutorlm.config import TeacherConfig
from tutorlm.models.score import score_ids, score_rows


@pytest.fixture(scope="module")
def tiny():
    tokenizer = make_tokenizer()
    return tokenizer, varied_model(tokenizer)


def test_scores_of_generated_tokens_equal_the_engines_own(tiny):
    tokenizer, model = tiny
    backend = HFBackend(TeacherConfig(backend="hf", batch_size=4), model=model, tokenizer=tokenizer)
    requests = [Request([{"role": "user", "content": text}]) for text in ("What is 12 + 30?", "A coin is heads up.", "x")]
    results = {}
    backend.run(requests, Sampling(max_tokens=12, top_logprobs=3), lambda request, completion: results.__setitem__(id(request), completion))
    prompts = tokenizer([backend._texts([r])[0] for r in requests], add_special_tokens=False)["input_ids"]
    completions = [results[id(r)] for r in requests]
    assert all(c.token_ids for c in completions)
    scored = score_ids(model, [(p, c.token_ids) for p, c in zip(prompts, completions)], top_k=3, pad_token_id=tokenizer.pad_token_id)
    for completion, scores in zip(completions, scored):
        assert scores.token_ids == completion.token_ids
        engine_logprobs = torch.tensor([entry["logprob"] for entry in completion.logprobs])
        assert torch.allclose(torch.tensor(scores.logprobs), engine_logprobs, atol=1e-4)
        assert [entry["top_ids"] for entry in completion.logprobs] == scores.top_ids
        assert [entry["id"] for entry in completion.logprobs] == completion.token_ids


def test_scores_of_chat_rows_equal_full_logits_in_chunks(tiny, monkeypatch):
    tokenizer, model = tiny
    monkeypatch.setattr(score, "ROWS_PER_CHUNK", 2)
    rows = [{"prompt": [{"role": "user", "content": "What is 12 + 30?"}],
             "completion": [{"role": "assistant", "content": "12 + 30 = 42. The answer is 42."}]},
            {"prompt": [{"role": "user", "content": "x"}], "completion": [{"role": "assistant", "content": "abc"}]}]
    scored = score_rows(model, tokenizer, rows, top_k=2, batch_size=2)
    from tutorlm.models.tokens import tokenize

    for row, scores in zip(rows, scored):
        item = tokenize(tokenizer, row)
        with torch.no_grad():
            logprobs = F.log_softmax(model(torch.tensor([item.input_ids])).logits[0].float(), -1)  # (T, V)
        start = item.labels.index(next(label for label in item.labels if label != -100))
        expected = [logprobs[position - 1, token].item() for position, token in enumerate(item.input_ids) if position >= start]
        assert scores.token_ids == item.input_ids[start:]
        assert torch.allclose(torch.tensor(scores.logprobs), torch.tensor(expected), atol=1e-4)
        assert len(scores.top_ids) == len(scores.token_ids) and all(len(ids) == 2 for ids in scores.top_ids)
        assert scores.mean_logprob == pytest.approx(sum(expected) / len(expected), abs=1e-4)
        assert 0.0 <= scores.share_below(0.1) <= 1.0
    assert scored[0].share_below(1.0) == 1.0 and scored[0].share_below(1e-12) == 0.0
