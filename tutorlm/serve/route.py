"""Who answers a request in `tutorlm serve`: the student, the teacher, or the student with the teacher's help.

- query level (`escalate`, after RouteLLM-style routing by the student's own confidence): the student samples
  k answers; their agreement (the share that state the most common final answer) is its confidence. At or
  above the threshold the student's majority answer is returned; below it, or when no sample states an
  answer, the teacher answers.
- step level (`step`, after Speculative Thinking): the student writes one line at a time; a line that hesitates
  (a reflection word, or a token the student chose with a log-probability below a floor) is thrown away and the teacher writes
  that line instead, continuing the same answer, until the request's teacher-token budget is spent.
  Continuing a half-written answer needs the teacher's chat template: a local teacher.
- with the Python tool (a request's `tools: [{"type": "code_interpreter"}]`, student mode): a row that closes a
  ```python block leaves the engine's batch (its slot is refilled at once), the block runs in the sandbox
  (tools/sandbox.py) on a worker thread, and the row rejoins with the ```output block appended, as in generate and
  eval (tools/loop.py), up to the request's max_tool_calls. The answer is the whole transcript; `tutorlm` in the
  response lists each call (code, output, error, seconds).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tutorlm.backends import Completion, OnResult, Request, Sampling
from tutorlm.backends.hf import HFBackend
from tutorlm.serve_config import ServeConfig
from tutorlm.errors import ConfigError
from tutorlm.models.engine import RowSettings
from tutorlm.serve.protocol import BadRequest, Params
from tutorlm.serve.workers import LocalModel, RemoteTeacher
from tutorlm.tools.loop import ToolCall, ToolSettings, code_to_run, continuation_seed, output_tokens
from tutorlm.tools.sandbox import Limits, run_python
from tutorlm.verify import extract_answer, normalize_text

HESITATION = ("wait", "hmm", "hold on", "let me re", "actually", "double-check", "i made a mistake")


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


@dataclass
class Answer:
    text: str
    finish_reason: str
    prompt_tokens: int
    student_tokens: int = 0
    teacher_tokens: int = 0
    completion_tokens: int = 0  # tokens of the returned text (the answering model's)
    meta: dict[str, Any] = field(default_factory=dict)


class Router:
    def __init__(self, config: ServeConfig, student: LocalModel, teacher: LocalModel | RemoteTeacher | None) -> None:
        self.config, self.student, self.teacher = config, student, teacher
        self.counts = {"student": 0, "teacher": 0, "escalated": 0, "escalate": 0, "step": 0, "steps_helped": 0, "tool_calls": 0}

    def modes(self) -> tuple[str, ...]:
        return ("student", "teacher", "escalate", "step") if self.teacher is not None else ("student",)

    def settings(self, params: Params, index: int, max_tokens: int | None = None, temperature: float | None = None) -> RowSettings:
        seed = params.seed + index if params.seed is not None else random.getrandbits(62)
        return RowSettings(max_tokens if max_tokens is not None else params.max_tokens,
                           params.temperature if temperature is None else temperature, params.top_p, seed)

    def check_prompt(self, prompt: list[int]) -> None:
        if len(prompt) > self.config.max_prompt_tokens:
            raise BadRequest(400, f"the prompt has {len(prompt)} tokens; this server takes at most {self.config.max_prompt_tokens}",
                             "context_length_exceeded", param="messages")

    async def answer(self, messages: list[dict[str, str]], params: Params, index: int = 0) -> Answer:
        if params.model == "student":
            return await self._student(messages, params, index)
        if params.model == "teacher":
            return await self._teacher(messages, params, index)
        if params.model == "escalate":
            return await self._escalate(messages, params, index)
        return await self._step(messages, params, index)

    async def _student(self, messages: list[dict[str, str]], params: Params, index: int) -> Answer:
        prompt = self.student.chat_prompt(messages)
        self.check_prompt(prompt)
        if params.tool_calls:
            return await self._student_tools(prompt, params, index)
        tokens, reason, _ = await self.student.complete(prompt, self.settings(params, index), stop=params.stop)
        self.counts["student"] += 1
        return Answer(self.student.text(tokens, params.stop), reason, len(prompt), len(tokens), 0, len(tokens))

    async def _student_tools(self, prompt: list[int], params: Params, index: int) -> Answer:
        """The student with the Python tool: each segment ends at a closed code block or the answer's end."""
        tokenizer, first = self.student.tokenizer, self.settings(params, index)
        limits = Limits(cpu_s=max(1, int(self.config.tool_timeout_s / 2)), wall_s=self.config.tool_timeout_s)
        tokens: list[int] = []  # the transcript: the student's tokens and the tool's output blocks
        written, calls = 0, []
        while True:
            settings = RowSettings(params.max_tokens - written, first.temperature, first.top_p, continuation_seed(first.seed, len(calls)))
            segment, reason, _ = await self.student.complete(prompt + tokens, settings, stop=params.stop,
                                                             tools=len(calls) < params.tool_calls)
            tokens += segment
            written += len(segment)
            if reason != "tool_call":
                break
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            code = code_to_run(text) or ""
            result = await asyncio.to_thread(run_python, code, limits)
            calls.append(ToolCall(code, result.output, result.ok, result.error, result.seconds))
            tokens += output_tokens(tokenizer, result.text(), text, ToolSettings().output_tokens)
            if written >= params.max_tokens:
                reason = "length"
                break
        self.counts["student"] += 1
        self.counts["tool_calls"] += len(calls)
        return Answer(self.student.text(tokens, params.stop), reason, len(prompt), written, 0, written,
                      {"tool_calls": [call.to_dict() for call in calls]})

    async def _teacher(self, messages: list[dict[str, str]], params: Params, index: int) -> Answer:
        self.counts["teacher"] += 1
        return await self._ask_teacher(messages, params, index)

    async def _ask_teacher(self, messages: list[dict[str, str]], params: Params, index: int) -> Answer:
        if isinstance(self.teacher, LocalModel):
            prompt = self.teacher.chat_prompt(messages)
            self.check_prompt(prompt)
            tokens, reason, _ = await self.teacher.complete(prompt, self.settings(params, index), stop=params.stop)
            return Answer(self.teacher.text(tokens, params.stop), reason, len(prompt), 0, len(tokens), len(tokens))
        seed = params.seed + index if params.seed is not None else None
        text, reason, prompt_tokens, completion = await self.teacher.complete(
            messages, max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p, stop=params.stop, seed=seed)
        return Answer(text, reason, prompt_tokens, 0, completion, completion)

    async def _escalate(self, messages: list[dict[str, str]], params: Params, index: int) -> Answer:
        config = self.config
        self.counts["escalate"] += 1
        prompt = self.student.chat_prompt(messages)
        self.check_prompt(prompt)
        temperature = params.temperature if params.temperature > 0 else config.escalate_temperature
        k = config.escalate_samples
        samples = await asyncio.gather(*[
            self.student.complete(prompt, self.settings(params, index * k + i, temperature=temperature), stop=params.stop)
            for i in range(k)
        ])
        texts = [self.student.text(tokens, params.stop) for tokens, _, _ in samples]
        spent = sum(len(tokens) for tokens, _, _ in samples)
        share, majority, chosen = agreement(texts)
        meta = {"agreement": share, "student_answer": majority}
        needed = params.threshold if params.threshold is not None else config.escalate_agreement
        if chosen is not None and share >= needed:
            tokens, reason, _ = samples[chosen]
            return Answer(texts[chosen], reason, len(prompt), spent, 0, len(tokens), {**meta, "answered_by": "student"})
        self.counts["escalated"] += 1
        helped = await self._ask_teacher(messages, params, index)
        return Answer(helped.text, helped.finish_reason, len(prompt), spent, helped.teacher_tokens, helped.completion_tokens,
                      {**meta, "answered_by": "teacher"})

    async def _step(self, messages: list[dict[str, str]], params: Params, index: int) -> Answer:
        if not isinstance(self.teacher, LocalModel):
            raise BadRequest(400, "the step mode needs a local teacher (it continues the student's half-written answer "
                                  "with the teacher's chat template); serve --teacher with a local model or .gguf file",
                             "unsupported_mode", param="model")
        config = self.config
        self.counts["step"] += 1
        first = self.student.chat_prompt(messages)
        self.check_prompt(first)
        written, student_tokens, teacher_tokens, budget, helped, reason, line_index = "", 0, 0, config.step_teacher_tokens, 0, "stop", 0
        while True:
            left = params.max_tokens - student_tokens - teacher_tokens
            if left <= 0:
                reason = "length"
                break
            prompt = self.student.chat_prompt(messages, prefix=written)
            tokens, end, logprobs = await self.student.complete(
                prompt, self.settings(params, index * 1000 + line_index, max_tokens=left), stop=("\n",))
            line_index += 1
            student_tokens += len(tokens)
            raw = self.student.tokenizer.decode(tokens, skip_special_tokens=True)
            line, ended = (raw[: raw.index("\n")], True) if "\n" in raw else (raw, False)
            floor = params.threshold if params.threshold is not None else config.step_logprob
            if budget > 0 and line.strip() and hesitates(line, logprobs, floor):
                teacher_prompt = self.teacher.chat_prompt(messages, prefix=written)
                taught, end, _ = await self.teacher.complete(
                    teacher_prompt, self.settings(params, index * 1000 + line_index, max_tokens=min(budget, left)), stop=("\n",))
                teacher_tokens += len(taught)
                budget -= len(taught)
                helped += 1
                raw = self.teacher.tokenizer.decode(taught, skip_special_tokens=True)
                line, ended = (raw[: raw.index("\n")], True) if "\n" in raw else (raw, False)
                if not ended and end == "length" and budget <= 0 < left - len(taught):
                    written += line  # the budget ran out mid-line: the student finishes the line
                    continue
            written += line + ("\n" if ended else "")
            if not ended:  # the answer ended (an end token) or hit max_tokens
                reason = "length" if end == "length" else "stop"
                break
        self.counts["steps_helped"] += helped
        for marker in params.stop:
            if marker in written:
                written, reason = written[: written.index(marker)], "stop"
        returned = len(self.student.tokenizer(written, add_special_tokens=False)["input_ids"])
        return Answer(written.rstrip("\n") if reason == "stop" else written, reason, len(first), student_tokens, teacher_tokens,
                      returned, {"steps_helped": helped})


class RouterBackend:
    """A serving mode as an evaluation backend: the Router in this process, no HTTP (`serve calibrate` measures the
    step mode with it). It answers like `tutorlm serve` with the same student and local teacher, keeps each answer's
    student and teacher tokens (`meta["usage"]`), and goes through the cache like any backend: its identity is both
    models' weights and precisions and the mode's settings, and a run whose answers are all cached loads nothing."""

    kind = "serve"

    def __init__(self, mode: str, student: Any, teacher: Any, config: ServeConfig, threshold: float | None = None) -> None:
        if teacher.backend != "hf":
            raise ConfigError(f"the {mode} mode is measured with a local teacher (teacher.backend hf); this recipe's teacher is "
                              f"{teacher.backend!r}: serve it and evaluate through the server instead")
        self.mode, self.threshold, self.config = mode, threshold, config
        self.student, self.teacher = HFBackend(student), HFBackend(teacher)
        self.model_name = f"{mode}@{threshold:g}" if threshold is not None else mode
        self.precision = self.student.precision
        own = {"step": f"step_teacher_tokens={config.step_teacher_tokens}",  # only the mode's own settings: changing
               "escalate": f"escalate={config.escalate_samples}@{config.escalate_temperature}"}.get(mode, "")  # another's keeps its answers
        self.cache_identity = (f"student={self.student.model_name}:{self.student.cache_identity};"
                               f"teacher={self.teacher.model_name}:{self.teacher.cache_identity};{own}")
        self.counters: dict[str, int] = {"helped": 0}
        self.router: Router | None = None

    def _start(self, sampling: Sampling) -> Router:
        if self.router is None:
            room = self.config.max_prompt_tokens + sampling.max_tokens + 32
            student = LocalModel(*self.student.load(), slots=self.config.slots, room=room, name="student")
            teacher = LocalModel(*self.teacher.load(), slots=self.config.slots, room=room, name="teacher")
            self.router = Router(self.config, student, teacher)
        return self.router

    def run(self, requests: list[Request], sampling: Sampling, on_result: OnResult) -> None:
        if not requests:
            return
        router = self._start(sampling)
        params = Params(model=self.mode, threshold=self.threshold, name=self.model_name, max_tokens=sampling.max_tokens,
                        temperature=sampling.temperature, top_p=sampling.top_p, n=1, stream=False, stop=sampling.stop,
                        seed=sampling.seed, include_usage=False)

        async def answer_all() -> None:
            room = asyncio.Semaphore(self.config.slots)  # as many questions in flight as the engine decodes together

            async def one(request: Request) -> None:
                async with room:
                    started = time.perf_counter()
                    try:
                        answer = await router.answer(request.messages, params, request.sample_index)
                    except Exception as error:  # noqa: BLE001 - recorded for this request; the others go on
                        on_result(request, error)
                        return
                self.counters["helped"] += int(answer.meta.get("steps_helped", 0))
                on_result(request, Completion(
                    text=answer.text, finish_reason=answer.finish_reason, prompt_tokens=answer.prompt_tokens,
                    completion_tokens=answer.completion_tokens, latency_s=time.perf_counter() - started,
                    meta={"usage": {"student_tokens": answer.student_tokens, "teacher_tokens": answer.teacher_tokens}}))

            await asyncio.gather(*(one(request) for request in requests))

        asyncio.run(answer_all())

    def close(self) -> None:
        if self.router is not None:
            self.router.student.close()
            self.router.teacher.close()  # type: ignore[union-attr]
            self.router = None
