"""The model workers of `tutorlm serve`: a local model whose engine keeps one batch running that requests join
(each with its own sampling settings; `Engine.run` keeps going while requests arrive), and a teacher behind an
OpenAI-compatible server, called from a thread with the openai backend's retries.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from tutorlm.backends import Request, Sampling
from tutorlm.backends.openai import OpenAIBackend
from tutorlm.config import TeacherConfig
from tutorlm.serve_config import ServeConfig
from tutorlm.models.engine import Engine, RowSettings
from tutorlm.models.load import stop_ids
from tutorlm.serve.protocol import BadRequest
from tutorlm.tools.loop import closes_code

# -- local models: one engine run that requests join -------------------------------------------------


@dataclass
class _Job:
    prompt: list[int]
    settings: RowSettings
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    stop: tuple[str, ...] = ()
    tokens: list[int] = field(default_factory=list)
    cancelled: bool = False
    stopped: bool = False  # a stop string appeared
    tools: bool = False  # the row ends when it closes a ```python block (the router runs the code and continues it)
    called: bool = False  # it did

    def push(self, event: tuple) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class LocalModel:
    """A local model behind a worker thread (the student, or a local teacher): `generate` from any coroutine;
    requests that arrive while others decode join the running batch."""

    def __init__(self, model: Any, tokenizer: Any, *, slots: int, room: int, name: str = "student") -> None:
        self.model, self.tokenizer, self.room, self.name = model.eval(), tokenizer, room, name
        self.name_of_model = name  # what /health reports (load_local sets the spec)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.engine = Engine(model, slots=slots, pad_token_id=tokenizer.pad_token_id, stop_ids=stop_ids(model, tokenizer))
        self.queue: queue.Queue[_Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._work, name=f"tutorlm-{name}", daemon=True)
        self.thread.start()
        self.tokens_out = 0  # tokens generated since start (/health)

    def chat_prompt(self, messages: list[dict[str, str]], prefix: str = "") -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + prefix
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def text_prompt(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    async def generate(self, prompt: list[int], settings: RowSettings, *, stop: tuple[str, ...] = (),
                       tools: bool = False) -> AsyncIterator[tuple]:
        """Yields ("token", id) per generated token, then ("done", tokens, reason, token_logprobs). Closing the
        iterator early (a client that went away) cancels the row. With `tools`, a row that closes a ```python block
        ends there with the reason "tool_call" (its slot goes to the next row while the caller runs the code)."""
        job = _Job(prompt, settings, asyncio.get_running_loop(), asyncio.Queue(), stop, tools=tools)
        self.queue.put(job)
        try:
            while True:
                event = await job.events.get()
                yield event
                if event[0] in ("done", "error"):
                    return
        finally:
            job.cancelled = True

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=60)

    def _work(self) -> None:
        import torch

        closing = False
        while not closing:
            first = self.queue.get()
            if first is None:
                return
            jobs = [first]

            def incoming() -> list[int]:
                nonlocal closing
                new = []
                while not closing:
                    try:
                        job = self.queue.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        closing = True  # finish what is running, take nothing new
                        break
                    jobs.append(job)
                    prompts.append(job.prompt)
                    settings.append(job.settings)
                    new.append(len(jobs) - 1)
                return new

            def on_token(index: int, token: int) -> bool:
                job = jobs[index]
                if job.cancelled:
                    return False
                job.tokens.append(token)
                job.push(("token", token))
                if job.stop:
                    tail = self.tokenizer.decode(job.tokens[-32:], skip_special_tokens=True)
                    job.stopped = any(stop in tail for stop in job.stop)
                if job.tools and not job.stopped:
                    job.called = closes_code(self.tokenizer, job.tokens)
                return not (job.stopped or job.called)

            def finished(index: int, tokens: list[int], reason: str, logprobs: list, latency: float) -> None:
                job = jobs[index]
                if job.stopped:
                    reason = "stop"
                elif job.called:
                    reason = "tool_call"
                self.tokens_out += len(tokens)
                job.push(("done", list(tokens), reason, [step[2] for step in logprobs]))

            prompts, settings = [first.prompt], [first.settings]
            try:
                with torch.inference_mode():
                    self.engine.run(prompts, settings=settings, incoming=incoming, on_token=on_token, finished=finished,
                                    room=self.room, top_logprobs=1)  # always: a step request may join a running batch
            except Exception as error:  # noqa: BLE001 - every waiting client hears of it; the server goes on
                for job in jobs:
                    job.push(("error", f"{type(error).__name__}: {error}"))

    async def complete(self, prompt: list[int], settings: RowSettings, *, stop: tuple[str, ...] = (),
                       tools: bool = False) -> tuple[list[int], str, list[float]]:
        """(tokens, finish reason, each token's log-probability)."""
        async for event in self.generate(prompt, settings, stop=stop, tools=tools):
            if event[0] == "error":
                raise BadRequest(500, f"the {self.name} failed: {event[1]}", "internal_error", "server_error")
            if event[0] == "done":
                return event[1], event[2], event[3]
        raise BadRequest(500, f"the {self.name} ended without an answer", "internal_error", "server_error")

    def text(self, tokens: list[int], stop: tuple[str, ...] = ()) -> str:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        for marker in stop:
            if marker in text:
                text = text[: text.index(marker)]
        return text


# -- the teacher: any backend, called from a thread ----------------------------------------------------


class RemoteTeacher:
    """A teacher behind an OpenAI-compatible server (the openai backend, with its retries), one call per request."""

    def __init__(self, config: ServeConfig) -> None:
        self.name = config.teacher or ""
        self.backend = OpenAIBackend(TeacherConfig(backend="openai", model=self.name[len("openai:"):], base_url=config.teacher_base_url,
                                                   api_key_env=config.teacher_api_key_env, max_retries=2))

    async def complete(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float, top_p: float,
                       stop: tuple[str, ...] = (), seed: int | None = None) -> tuple[str, str, int, int]:
        """(text, finish reason, prompt tokens, completion tokens)."""
        sampling = Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=stop, seed=seed)
        results: list[Any] = []
        await asyncio.to_thread(self.backend.run, [Request(messages)], sampling, lambda request, result: results.append(result))
        if not results or isinstance(results[0], Exception):
            why = results[0] if results else "no answer"
            raise BadRequest(502, f"the teacher ({self.name}) failed: {why}", "teacher_unavailable", "server_error")
        result = results[0]
        return result.text, result.finish_reason, result.prompt_tokens, result.completion_tokens
