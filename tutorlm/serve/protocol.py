"""`tutorlm serve`: an OpenAI-compatible endpoint where the student answers and the teacher helps when it must.

One process holds the student; requests from every client decode together in the continuous-batching
engine (`Engine.run` keeps going while requests arrive, each with its own sampling settings). The model
name of a request picks who answers:

- `student`   the student alone
- `teacher`   proxied to the teacher (a local model, GGUF file, or any OpenAI-compatible server)
- `escalate`  query-level help: the student samples k answers; when fewer than `agreement` of them state
              the same final answer (or none states one), the teacher answers instead
- `step`      step-level help (Speculative Thinking): the student writes line by line; a line that
              hesitates ("wait", "hmm", ...) or has a token the student chose with a log-probability
              below a floor is replaced by the teacher's next line, within a teacher-token budget per request

`usage` in every response counts `student_tokens` and `teacher_tokens` apart (escalation pays for all k
student samples). Errors are OpenAI-shaped (`{"error": {"message", "type", "code"}}`) with 4xx codes, and
the server keeps serving. Built on FastAPI and uvicorn (`pip install -e ".[serve]"`).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from tutorlm.models.engine import Engine, RowSettings
from tutorlm.errors import ConfigError
from tutorlm.verify import extract_answer, normalize_text

MODES = ("student", "teacher", "escalate", "step")
HESITATION = ("wait", "hmm", "hold on", "let me re", "actually", "double-check", "i made a mistake")


@dataclass
class ServeConfig:
    model: str = "runs/default/student"  # the student: a run's student directory, a hub id, a .gguf file, or a package
    teacher: str | None = None  # a local model spec, or openai:NAME with teacher_base_url
    teacher_base_url: str | None = None
    teacher_api_key_env: str = "OPENAI_API_KEY"
    teacher_dtype: str = "auto"
    dtype: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    slots: int = 16  # student rows decoded together
    api_key_env: str = "TUTORLM_API_KEY"  # when this variable is set, requests need "Authorization: Bearer <its value>"
    max_prompt_tokens: int = 4096
    max_tokens: int = 2048  # the most a request may ask for
    max_body_bytes: int = 1 << 20
    max_n: int = 8
    escalate_samples: int = 4
    escalate_agreement: float = 0.75
    escalate_temperature: float = 0.7
    step_logprob: float = -0.7  # a line with a token whose log-probability is below this (p < 0.5) asks the teacher
    step_teacher_tokens: int = 256  # teacher tokens a request may use in step mode
    shutdown_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        checks = {"port": 0 <= self.port < 65536, "slots": self.slots >= 1, "max_prompt_tokens": self.max_prompt_tokens >= 1,
                  "max_tokens": self.max_tokens >= 1, "max_body_bytes": self.max_body_bytes >= 1024, "max_n": self.max_n >= 1,
                  "escalate_samples": self.escalate_samples >= 2, "escalate_agreement": 0 < self.escalate_agreement <= 1,
                  "escalate_temperature": self.escalate_temperature > 0, "step_teacher_tokens": self.step_teacher_tokens >= 0}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"serve: invalid --{bad[0].replace('_', '-')} {getattr(self, bad[0])!r}")
        if self.teacher and self.teacher.startswith("openai:") and not self.teacher_base_url:
            raise ConfigError("serve: --teacher openai:NAME needs --teacher-base-url (the server's address ending in /v1)")


class BadRequest(Exception):
    """A request the server refuses: an OpenAI-shaped error with an HTTP status."""

    def __init__(self, status: int, message: str, code: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.kind, self.param = status, message, code, kind, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


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

    def push(self, event: tuple) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class LocalModel:
    """A local model behind a worker thread (the student, or a local teacher): `generate` from any coroutine;
    requests that arrive while others decode join the running batch."""

    def __init__(self, model: Any, tokenizer: Any, *, slots: int, room: int, name: str = "student") -> None:
        from tutorlm.models.load import stop_ids

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

    async def generate(self, prompt: list[int], settings: RowSettings, *, stop: tuple[str, ...] = ()) -> AsyncIterator[tuple]:
        """Yields ("token", id) per generated token, then ("done", tokens, reason, token_logprobs). Closing the
        iterator early (a client that went away) cancels the row."""
        job = _Job(prompt, settings, asyncio.get_running_loop(), asyncio.Queue(), stop)
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
                return not job.stopped

            def finished(index: int, tokens: list[int], reason: str, logprobs: list, latency: float) -> None:
                job = jobs[index]
                if job.stopped:
                    reason = "stop"
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

    async def complete(self, prompt: list[int], settings: RowSettings, *, stop: tuple[str, ...] = ()) -> tuple[list[int], str, list[float]]:
        """(tokens, finish reason, each token's log-probability)."""
        async for event in self.generate(prompt, settings, stop=stop):
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
        from tutorlm.backends.openai import OpenAIBackend
        from tutorlm.config import TeacherConfig

        self.name = config.teacher or ""
        self.backend = OpenAIBackend(TeacherConfig(backend="openai", model=self.name[len("openai:"):], base_url=config.teacher_base_url,
                                                   api_key_env=config.teacher_api_key_env, max_retries=2))

    async def complete(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float, top_p: float,
                       stop: tuple[str, ...] = (), seed: int | None = None) -> tuple[str, str, int, int]:
        """(text, finish reason, prompt tokens, completion tokens)."""
        from tutorlm.backends import Request, Sampling

        sampling = Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=stop, seed=seed)
        results: list[Any] = []
        await asyncio.to_thread(self.backend.run, [Request(messages)], sampling, lambda request, result: results.append(result))
        if not results or isinstance(results[0], Exception):
            why = results[0] if results else "no answer"
            raise BadRequest(502, f"the teacher ({self.name}) failed: {why}", "teacher_unavailable", "server_error")
        result = results[0]
        return result.text, result.finish_reason, result.prompt_tokens, result.completion_tokens


# -- request parsing -----------------------------------------------------------------------------------


@dataclass
class Params:
    model: str  # the mode: student, teacher, escalate or step
    threshold: float | None  # escalate@0.5 / step@-1.5: this request's agreement threshold or log-prob floor
    name: str  # the model name as asked (echoed in responses)
    max_tokens: int
    temperature: float
    top_p: float
    n: int
    stream: bool
    stop: tuple[str, ...]
    seed: int | None
    include_usage: bool


def parse_params(body: Any, config: ServeConfig, modes: tuple[str, ...]) -> Params:
    if not isinstance(body, dict):
        raise BadRequest(400, "the request body must be a JSON object", "invalid_body")
    model = body.get("model")
    if not isinstance(model, str):
        raise BadRequest(400, "'model' is required: one of " + ", ".join(modes), "missing_model", param="model")
    mode, _, setting = model.partition("@")
    if mode not in modes or (setting and mode not in ("escalate", "step")):
        raise BadRequest(404, f"the model {model!r} does not exist here; this server has {', '.join(modes)} "
                              "(escalate@AGREEMENT and step@LOGPROB set the threshold per request)", "model_not_found", param="model")
    threshold = None
    if setting:
        try:
            threshold = float(setting)
        except ValueError:
            raise BadRequest(404, f"the model {model!r}: the part after @ must be a number", "model_not_found", param="model") from None
        if mode == "escalate" and not 0 < threshold <= 1:
            raise BadRequest(404, f"the model {model!r}: an agreement threshold is in (0, 1]", "model_not_found", param="model")

    def number(name: str, default: float, low: float, high: float, integer: bool = False) -> Any:
        value = body.get(name, default)
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
            raise BadRequest(400, f"'{name}' must be a {'whole ' if integer else ''}number, got {value!r}", "invalid_value", param=name)
        if not low <= value <= high:
            raise BadRequest(400, f"'{name}' must be between {low} and {high}, got {value!r}", "invalid_value", param=name)
        return int(value) if integer else float(value)

    limit_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = number(limit_name, min(512, config.max_tokens), 1, config.max_tokens, integer=True)
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise BadRequest(400, "'stop' must be a string or a list of at most 4 non-empty strings", "invalid_value", param="stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest(400, f"'seed' must be an integer, got {seed!r}", "invalid_value", param="seed")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(400, "'stream' must be true or false", "invalid_value", param="stream")
    options = body.get("stream_options") or {}
    return Params(model=mode, threshold=threshold, name=model, max_tokens=max_tokens, temperature=number("temperature", 1.0, 0.0, 2.0),
                  top_p=number("top_p", 1.0, 1e-6, 1.0), n=number("n", 1, 1, config.max_n, integer=True), stream=stream,
                  stop=tuple(stop), seed=seed, include_usage=bool(isinstance(options, dict) and options.get("include_usage")))


def parse_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest(400, "'messages' must be a non-empty list", "invalid_value", param="messages")
    parsed = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise BadRequest(400, f"messages[{index}]: each message needs a role (system, user or assistant)",
                             "invalid_value", param=f"messages[{index}]")
        content = message.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if not all(isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str) for part in content):
                raise BadRequest(400, f"messages[{index}].content: only text parts are supported", "invalid_value",
                                 param=f"messages[{index}].content")
            content = "".join(part["text"] for part in content)
        if not isinstance(content, str):
            raise BadRequest(400, f"messages[{index}].content must be a string", "invalid_value", param=f"messages[{index}].content")
        parsed.append({"role": message["role"], "content": content})
    return parsed


def final_answer(text: str) -> str | None:
    """The answer a completion states ("The answer is ...", a boxed answer; no last-number guess), normalized so
    that two samples that agree compare equal."""
    answer = extract_answer(text, fallback=False)
    return None if answer is None else normalize_text(answer)


def agreement(texts: list[str]) -> tuple[float, str | None, int | None]:
    """(share of the samples that state the most common answer, that answer, the first sample that states it);
    (0, None, None) when none states one."""
    answers = [final_answer(text) for text in texts]
    stated = Counter(answer for answer in answers if answer is not None)
    if not stated:
        return 0.0, None, None
    answer, count = stated.most_common(1)[0]
    return count / len(texts), answer, answers.index(answer)


def hesitates(line: str, logprobs: list[float], floor: float) -> bool:
    lowered = line.lower()
    if any(word in lowered for word in HESITATION):
        return True
    return bool(logprobs) and min(logprobs) < floor  # one unsure token (a digit of a sum) is enough


def usage(prompt_tokens: int, completion_tokens: int, student: int, teacher: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens, "student_tokens": student, "teacher_tokens": teacher}


def sse(data: Any) -> str:
    return f"data: {json.dumps(data) if not isinstance(data, str) else data}\n\n"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def api_key(config: ServeConfig) -> str | None:
    """The key clients must send, read from the environment once; never printed or written."""
    return os.environ.get(config.api_key_env) or None if config.api_key_env else None
