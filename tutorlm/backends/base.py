"""What every backend shares: a request, sampling settings, a completion, and the backend protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol


class RequestFailed(RuntimeError):
    """A request that still failed after every retry; the rerun tries it again."""


class Unanswerable(RequestFailed):
    """A request this teacher can never answer (the reference solver has no solution it can write): a rerun would fail
    the same way, so the question is left out instead of the stage being left incomplete."""


@dataclass(frozen=True)
class Sampling:
    """Sampling settings for one generation call; `n` samples are n requests with sample_index 0..n-1."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: int | None = 0
    top_logprobs: int = 0  # > 0: return the top-k log-probabilities of every generated token
    token_ids: bool = False  # servers: ask for tokens as ids (vLLM's return_tokens_as_token_ids); local models always give them
    tool_calls: int | None = None  # task.tools python: the model's ```python blocks run in a sandbox, up to this many

    def key(self) -> dict[str, Any]:
        """What identifies a sampling setup in the cache."""
        key = {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens,
               "stop": list(self.stop), "seed": self.seed, "top_logprobs": self.top_logprobs}
        if self.token_ids:  # only when set, so that keys written before it existed still match
            key["token_ids"] = True
        if self.tool_calls is not None:
            key["tool_calls"] = self.tool_calls
        return key


@dataclass
class Request:
    messages: list[dict[str, str]]
    sample_index: int = 0
    example_id: str = ""  # the reference backend looks solutions up by id; others ignore it
    guide_messages: list[dict[str, str]] | None = None  # RSD: the student's own prompt (the training prompt)
    # The start of the answer, already written (a student's lines before its first wrong step, for the teacher to
    # continue: SCoRe's corrections). The backend continues it; the Completion holds only what it wrote after it.
    prefix: str | None = None


# What a completion may carry beyond its text, stored only when present: a server's split usage, RSD's count of
# redrawn tokens, and the tool calls of a model that ran Python (tools/loop.py's ToolCall dicts)
META = ("usage", "redrawn", "tools")


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" or "length" (or what the server says)
    prompt_tokens: int
    completion_tokens: int
    latency_s: float = 0.0
    # One entry per generated token: {"token": str, "logprob": float, "top": [[token, logprob], ...]}; local models
    # add the ids ({"id": int, "top_ids": [int, ...]}), which servers' text tokens cannot give back exactly.
    logprobs: list[dict[str, Any]] | None = None
    token_ids: list[int] | None = None  # the generated tokens' ids in the model's vocabulary (local models)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = {"text": self.text, "finish_reason": self.finish_reason, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "latency_s": self.latency_s, "logprobs": self.logprobs,
                "token_ids": self.token_ids}
        for key in META:  # only when present, so older entries stay alike
            if key in self.meta:
                data[key] = self.meta[key]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Completion":
        return cls(text=data["text"], finish_reason=data["finish_reason"], prompt_tokens=data["prompt_tokens"],
                   completion_tokens=data["completion_tokens"], latency_s=data.get("latency_s", 0.0),
                   logprobs=data.get("logprobs"), token_ids=data.get("token_ids"),
                   meta={key: data[key] for key in META if key in data})


OnResult = Callable[[Request, "Completion | Exception"], None]


class Backend(Protocol):
    kind: str
    model_name: str  # what traces and the cache record as the model
    precision: str | None  # local models: the dtype they compute in and why ("bfloat16 (cpu: bf16 matmul 4.3x ...)")
    counters: dict[str, int]  # e.g. {"retries": 3}: shown in the progress display

    def run(self, requests: list[Request], sampling: Sampling, on_result: OnResult) -> None: ...

    def close(self) -> None: ...


