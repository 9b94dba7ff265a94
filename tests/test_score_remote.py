"""Scoring on an OpenAI-compatible server (a real HTTP server on 127.0.0.1): echo + logprobs, cache, errors."""

from __future__ import annotations

import pytest
from fake_openai import FakeOpenAI, fake_logprob

from tutorlm.cache import Cache
from tutorlm.config import TeacherConfig
from tutorlm.errors import FatalBackendError
from tutorlm.backends.openai import TextPair, score_remote

PAIRS = [TextPair("<|user|>What is 12 + 30?\n<|assistant|>", "12 + 30 = 42. The answer is 42."),
         TextPair("<|user|>A coin is heads up.\n<|assistant|>", "It is still heads up. The answer is yes.")]


def teacher(url: str) -> TeacherConfig:
    return TeacherConfig(backend="openai", base_url=url, model="teacher-model", api_key_env=None,
                         max_retries=3, backoff_base_s=0.01, timeout_s=5.0)


def test_scores_cover_exactly_the_completion_and_are_paid_for_once(tmp_path):
    faults = {}

    def fault_for(key, attempt):  # every request fails once with a 503, then succeeds
        faults[key] = attempt
        return "503" if attempt == 0 else None

    with FakeOpenAI(fault_for=fault_for) as server, Cache(tmp_path / "cache.sqlite") as cache:
        scored = score_remote(teacher(server.url), PAIRS, top_k=2, cache=cache)
        assert server.total_served == 2 and all(body["echo"] and body["logprobs"] == 2 for body in server.bodies)
        again = score_remote(teacher(server.url), PAIRS, top_k=2, cache=cache)
        assert server.total_served == 2  # the second call was served from the cache
    for pair, scores in zip(PAIRS, scored):
        assert "".join(scores.tokens) == pair.completion or pair.completion.endswith("".join(scores.tokens))
        assert scores.logprobs == [fake_logprob(token) for token in scores.tokens]
        assert [pair.completion[offset:offset + len(token)] for offset, token in zip(scores.offsets, scores.tokens)] == scores.tokens
        assert all(len(top) == 2 for top in scores.top)
    assert again == scored


def test_a_server_that_cannot_echo_prompt_logprobs_stops_at_once(tmp_path):
    with FakeOpenAI(echo=False) as server:
        with pytest.raises(FatalBackendError, match=r"127\.0\.0\.1:\d+/v1/completions cannot return prompt log-probabilities "
                                                     r"\(HTTP 400: .*Only no echo is supported"):
            score_remote(teacher(server.url), PAIRS)
        assert sum(server.attempts.values()) <= 2  # no retries
