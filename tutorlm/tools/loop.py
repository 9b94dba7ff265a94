"""A model that computes with Python while it writes: each ```python block it closes runs in the sandbox, the output
comes back as an ```output block, and the model goes on (Agent Distillation, Kang et al. 2025; TRL's and verl's
multi-turn tool rollouts).

    from tutorlm.tools.loop import ToolLoop, ToolSettings
    ToolLoop(engine, tokenizer, ToolSettings(max_calls=4)).run(prompts, settings, finished=...)

The transcript a model writes, and what trains it:

    ...so the total is the product.
    ```python
    print(17 * 23 + 4)
    ```
    ```output
    395
    ```
    The answer is 395.

The ```output block is the environment's text: the verifier reads the answer from the rest (tutorlm/verify.py drops
output blocks before it looks), and training masks it out of the loss (models/tokens.py, `output_spans`).

On the continuous-batching engine a row whose code is running leaves the batch: its slot is refilled with the next
prompt at once, the code runs on a worker thread (a sandboxed process, tools/sandbox.py), and when it is done the row
comes back as a new prompt (its question, everything written so far and the output) with the rest of its token budget.
So a batch never waits on one row's tool call; the price is a prefill of the row's text so far per call.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable

from tutorlm.tools.sandbox import Limits, run_python
from tutorlm.verify import answers_match, output_spans, strip_outputs

__all__ = ["ToolCall", "ToolLoop", "ToolSettings", "closes_code", "code_to_run", "computed_answer", "continuation_seed",
           "output_block", "output_spans", "output_tokens", "strip_outputs"]

OPEN = "```python"
_CODE = re.compile(r"```(?:python|py)[ \t]*\n(.*?)\n?```[ \t]*\n?\Z", re.S)


@dataclass(frozen=True)
class ToolSettings:
    """How a model may use the Python tool in one answer."""

    max_calls: int = 4  # code blocks run per answer; a block after the last is left as text
    output_tokens: int = 256  # of a block's output shown to the model (the rest is cut, and said so)
    limits: Limits = Limits()


@dataclass
class ToolCall:
    """One code block the sandbox ran: what it printed (or why it failed), and how long it took."""

    code: str
    output: str
    ok: bool
    error: str | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "output": self.output, "ok": self.ok, "error": self.error, "seconds": round(self.seconds, 4)}


def code_to_run(text: str) -> str | None:
    """The code of the ```python block `text` ends with (the model just closed it), or None."""
    start = text.rfind("```py")
    if start < 0:
        return None
    found = _CODE.match(text, start)
    return found.group(1) if found else None


def closes_code(tokenizer: Any, tokens: list[int]) -> bool:
    """Whether a row's tokens so far end by closing a ```python block (checked on each step: the full decode runs only
    when the last tokens hold a fence)."""
    if "```" not in tokenizer.decode(tokens[-4:], skip_special_tokens=True):
        return False
    return code_to_run(tokenizer.decode(tokens, skip_special_tokens=True)) is not None


def output_tokens(tokenizer: Any, output: str, after: str, limit: int) -> list[int]:
    """The token ids of the ```output block that follows the model's text `after`, its body cut to `limit` tokens."""
    shown = tokenizer(output, add_special_tokens=False)["input_ids"]
    if len(shown) > limit:
        output = tokenizer.decode(shown[:limit], skip_special_tokens=True) + "\n[output cut]"
    return tokenizer(output_block(output, after), add_special_tokens=False)["input_ids"]


def continuation_seed(seed: int, calls: int) -> int:
    """The sampling seed of an answer's segment after its `calls`-th call (a fixed seed gives a fixed transcript)."""
    return (seed * 1_000_003 + calls) % (1 << 62)


def output_block(text: str, after: str) -> str:
    """The ```output block appended after a model's text `after` (which ends with its code block's closing fence)."""
    body = text if text.endswith("\n") or not text else text + "\n"
    return ("" if after.endswith("\n") else "\n") + "```output\n" + body + "```\n"


def computed_answer(expression: str) -> tuple[str, ToolCall]:
    """A worked answer that computes a Python expression with the tool: the block, the sandbox's output and the answer
    line (the reference solver's answer with the tool, and the few-shot demonstration of the format)."""
    return computed_program(f"print({expression})")


def worked_answer(example: Any) -> tuple[str, ToolCall] | None:
    """An example's solution with the tool where its task gives one (the reference solver's answer with the tool, and
    a few-shot demonstration): its expression computed (the arithmetic tasks), or its solution as a program (GSM8K's
    calculator notes, `meta["program"]`) whose output is the gold answer; None otherwise."""
    if "expression" in example.meta:
        return computed_answer(example.meta["expression"])
    if "program" in example.meta:
        text, call = computed_program(example.meta["program"], example.answer)
        if call.ok and answers_match(call.output.strip(), example.answer, answer_type="number"):
            return text, call
    return None


def computed_program(code: str, answer: str | None = None) -> tuple[str, ToolCall]:
    """A worked answer that runs `code` with the tool: the block, the sandbox's output, and the answer line (`answer`,
    or the output when None; no line when the code failed)."""
    result = run_python(code)
    written = f"```python\n{code}\n```"
    text = written + output_block(result.text(), written)
    if result.ok:
        text += f"The answer is {result.output.strip() if answer is None else answer}."
    return text, ToolCall(code, result.output, result.ok, result.error, result.seconds)


@dataclass
class _Answer:
    """One prompt's answer as it grows: its tokens (the model's and the tool outputs'), which are the model's, its calls."""

    prompt: list[int]
    settings: Any  # engine RowSettings of the first segment
    tokens: list[int] = field(default_factory=list)
    written: list[bool] = field(default_factory=list)  # per token: the model wrote it (False: a tool output)
    logprobs: list[Any] = field(default_factory=list)  # the engine's entries per token; None for tool-output tokens
    calls: list[ToolCall] = field(default_factory=list)
    latency: float = 0.0

    @property
    def generated(self) -> int:
        return sum(self.written)


# (prompt index, all tokens, finish reason, per-token engine logprob entries (None on tool outputs), latency,
# which tokens the model wrote, the calls)
ToolFinished = Callable[[int, list[int], str, list[Any], float, list[bool], list[ToolCall]], None]


class ToolLoop:
    """Run prompts through an engine (models/engine.py) with the Python tool: a row that closes a ```python block
    leaves the batch while its code runs and comes back with the output appended."""

    def __init__(self, engine: Any, tokenizer: Any, tools: ToolSettings, *, workers: int = 2) -> None:
        self.engine, self.tokenizer, self.tools, self.workers = engine, tokenizer, tools, workers
        self.counters = {"calls": 0, "errors": 0, "tool_seconds": 0.0, "continuations": 0}

    def room(self, prompts: list[list[int]], max_tokens: int) -> int:
        """Columns a row may span: its prompt, its budget, every call's output block, and slack for the fences."""
        return max(map(len, prompts)) + max_tokens + self.tools.max_calls * (self.tools.output_tokens + 16) + 32

    def run(self, prompts: list[list[int]], settings: list[Any], *, finished: ToolFinished, top_logprobs: int = 0,
            stop_check: Callable[[list[int]], bool] | None = None) -> None:
        """Decode every prompt to its end (a stop token, a stop string, or its budget), running its code blocks;
        `finished` gets each answer with its calls. `settings` are the engine's RowSettings, one per prompt."""
        from tutorlm.models.engine import RowSettings

        answers = [_Answer(list(prompt), setting) for prompt, setting in zip(prompts, settings)]
        rows: list[list[int]] = [list(prompt) for prompt in prompts]  # the engine's prompts: the first segments, then continuations
        row_settings: list[Any] = list(settings)
        owner = list(range(len(prompts)))  # engine prompt index -> answer index
        running: dict[Future, tuple[int, str, float]] = {}
        live = [len(prompts)]  # engine prompts started and not finished

        def segment_done(index: int, tokens: list[int], reason: str, logprobs: list, latency: float) -> None:
            live[0] -= 1
            number = owner[index]
            answer = answers[number]
            answer.tokens += tokens
            answer.written += [True] * len(tokens)
            if top_logprobs:
                answer.logprobs += logprobs or [None] * len(tokens)
            answer.latency += latency
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            code = code_to_run(text) if reason == "stop" else None
            budget = answer.settings.max_tokens - answer.generated
            if code is None or len(answer.calls) >= self.tools.max_calls or budget <= 0 or (stop_check is not None and stop_check(tokens)):
                finished(number, answer.tokens, reason, answer.logprobs, answer.latency, answer.written, answer.calls)
                return
            running[pool.submit(run_python, code, self.tools.limits)] = (number, code, text)

        def resume(future: Future) -> int:
            number, code, text = running.pop(future)
            answer = answers[number]
            result = future.result()
            call = ToolCall(code, result.output, result.ok, result.error, result.seconds)
            answer.calls.append(call)
            self.counters["calls"] += 1
            self.counters["errors"] += not result.ok
            self.counters["tool_seconds"] += result.seconds
            block = output_tokens(self.tokenizer, result.text(), text, self.tools.output_tokens)
            answer.tokens += block
            answer.written += [False] * len(block)
            if top_logprobs:
                answer.logprobs += [None] * len(block)
            first = answer.settings
            rows.append(answer.prompt + answer.tokens)
            row_settings.append(RowSettings(first.max_tokens - answer.generated, first.temperature, first.top_p,
                                            continuation_seed(first.seed, len(answer.calls))))
            owner.append(number)
            live[0] += 1
            self.counters["continuations"] += 1
            return len(rows) - 1

        def incoming() -> list[int]:
            ready = [resume(future) for future in [f for f in running if f.done()]]
            while not ready and running and live[0] == 0:  # nothing left to decode: wait for a call to come back
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                ready = [resume(future) for future in done]
            return ready

        def check(tokens: list[int]) -> bool:
            return (stop_check is not None and stop_check(tokens)) or closes_code(self.tokenizer, tokens)

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="tutorlm-tool") as pool:
            self.engine.run(rows, settings=row_settings, finished=segment_done, incoming=incoming, top_logprobs=top_logprobs,
                            stop_check=check, room=self.room(prompts, max(s.max_tokens for s in settings)),
                            arrivals_extend=True)
        self.counters["wall_seconds"] = time.perf_counter() - started
