"""Local transformers backend: prompts formatted with the model's chat template, decoded in batches.

Models whose cache is plain full attention (most decoder-only LMs) decode with continuous batching
(`tutorlm.models.engine.Engine`): `batch_size` rows at a time, each refilled with the next prompt the moment it
finishes. Sampling is seeded per request (from the seed, messages and sample index), so a sampled
completion is the same whatever else shares its batch. Other models (sliding-window or hybrid caches)
use `model.generate` on length-sorted batches, seeded per batch. Top-k log-probabilities come from the
raw logits (before temperature / top-p), as KD needs.
"""

from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from tutorlm.backends.base import Completion, OnResult, Request, Sampling
from tutorlm.config import ConfigError
from tutorlm.errors import FatalBackendError
from tutorlm.models.engine import Engine, request_seed, row_settings, supports
from tutorlm.models.load import (
    load_model,
    load_tokenizer,
    model_fingerprint,
    pick_device,
    pick_dtype,
    resolve_model,
    stop_ids,
)
from tutorlm.models.rsd import GuidedEngine

_KEPT: dict[tuple[str, str | None, str, str], tuple[Any, Any]] | None = None  # set inside keep_loaded()


@contextlib.contextmanager
def keep_loaded() -> Iterator[None]:
    """Inside the block, a local model loaded once is reused by every later backend for the same weights,
    precision and device (`tutorlm run` generates with the teacher and then evaluates it: one load, not
    two); all are released when the block ends, so nothing stays in memory by accident."""
    global _KEPT
    outer = _KEPT
    _KEPT = {} if outer is None else outer
    try:
        yield
    finally:
        if outer is None:
            _KEPT = None


class HFBackend:
    kind = "hf"

    def __init__(self, config: Any, *, model: Any = None, tokenizer: Any = None, guide: "HFBackend | None" = None,
                 guide_floor: float = 0.0) -> None:
        """A backend for `config.model`, loaded on the first call that has work to do (a run whose answers are all
        cached never loads it), or one over an already-loaded model and tokenizer (tests, evaluation).

        `guide`: a student that checks every token this model writes (reverse speculative decoding, tutorlm/models/rsd.py):
        a token it gives less than `guide_floor` probability is redrawn. It reads each request's `guide_messages`."""
        if model is None and not config.model:
            raise ConfigError("the hf backend needs a model: set teacher.model to a hub id, directory or .gguf file")
        self.config = config
        self.model_name = str(config.model or type(model).__name__)
        self.cache_name = self.model_name  # the model's name in cache keys (cache.cache_keys)
        self.model, self.tokenizer = model, tokenizer
        self.cache_identity: str | None = None
        if model is None:
            resolve_model(config.model, config.gguf_file)  # a missing file is an error now, not after the cache
            self.dtype, why = pick_dtype(config.dtype, pick_device(config.device))
            self.precision = f"{str(self.dtype).removeprefix('torch.').replace('qint8', 'int8')} ({why})"
            # the same name with other weights or another precision gives other answers: neither may be served
            # from the cache in its place
            # int8 with one activation range per row (models/load.py) answers otherwise than the per-tensor int8 before it
            kind = "int8-rows" if self.precision.startswith("int8") else self.precision.split()[0]
            self.cache_identity = f"{model_fingerprint(config.model, config.gguf_file)}:{kind}"
            # A local directory is named in the cache by its weights alone: a moved or copied checkpoint (a run
            # directory moved) keeps its answers. Hub ids and packaged names keep their name in the key.
            if Path(config.model).expanduser().is_dir():
                self.cache_name = "local"
        else:
            first = next(model.parameters(), None)
            self.precision = str(first.dtype).removeprefix("torch.") if first is not None else "unknown"
        self.batch_size = config.batch_size
        self.counters: dict[str, int] = {"batches": 0}
        self._ready = False
        self.guide, self.guide_floor = guide, guide_floor
        if guide is not None:  # RSD answers are other answers: never served in place of the teacher's own
            self.cache_identity = f"{self.cache_identity}:rsd@{guide_floor}:{guide.model_name}:{guide.cache_identity}"

    def load(self) -> tuple[Any, Any]:
        """(model, tokenizer), loaded now if they are not yet (for callers that run the model themselves: serve)."""
        self._load()
        return self.model, self.tokenizer

    def _load(self) -> None:
        if self._ready:
            return
        config = self.config
        key = (self.model_name, self.cache_identity, str(config.device), str(config.gguf_file))
        if self.model is None and _KEPT is not None and key in _KEPT:
            self.model, self.tokenizer = _KEPT[key]
        if self.model is None:
            self.model = load_model(config.model, config.gguf_file, device=config.device, dtype=self.dtype,
                                    trust_remote_code=config.trust_remote_code)
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(config.model, config.gguf_file, trust_remote_code=config.trust_remote_code)
        if _KEPT is not None and self.cache_identity is not None:
            _KEPT[key] = (self.model, self.tokenizer)
        if self.tokenizer.chat_template is None:
            raise FatalBackendError(f"model {self.model_name!r} has no chat template; use an instruct/chat model")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        self.stop_ids = stop_ids(self.model, self.tokenizer)
        self.continuous = supports(self.model)
        if self.guide is not None:
            self._check_guide()
        self._ready = True

    def _check_guide(self) -> None:
        """RSD reads the teacher's token ids with the student: both need the same vocabulary and the engine."""
        self.guide._load()
        teacher, student = self.tokenizer.get_vocab(), self.guide.tokenizer.get_vocab()
        if teacher != student:
            raise FatalBackendError(
                f"RSD needs a student with the teacher's vocabulary: {self.guide.model_name} has {len(student)} tokens, "
                f"{self.model_name} {len(teacher)}{' (different tokens)' if len(student) == len(teacher) else ''}; use a "
                "student of the teacher's family (e.g. qwen2.5-coder-0.5b-instruct with a Qwen2.5 teacher)")
        if not (self.continuous and self.guide.continuous):
            raise FatalBackendError("RSD runs on the continuous-batching engine, which these models' caches do not fit "
                                    "(sliding-window or hybrid attention)")

    def run(self, requests: list[Request], sampling: Sampling, on_result: OnResult) -> None:
        if not requests:
            return
        self._load()
        if self.continuous:
            self._run_engine(requests, sampling, on_result)
        else:
            self._run_generate(requests, sampling, on_result)

    def _run_engine(self, requests: list[Request], sampling: Sampling, on_result: OnResult) -> None:
        prompts = self.tokenizer(self._prompt_texts(requests), add_special_tokens=False)["input_ids"]
        if sampling.tool_calls is not None:
            self._run_tools(requests, prompts, sampling, on_result)
            return
        stop_check = self._stop_check(sampling)

        def finished(index: int, tokens: list[int], reason: str, logprobs: list, latency: float) -> None:
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            for stop in sampling.stop:
                if stop in text:
                    text, reason = text[: text.index(stop)], "stop"
            on_result(requests[index], Completion(
                text=text, finish_reason=reason, prompt_tokens=len(prompts[index]), completion_tokens=len(tokens),
                latency_s=latency, logprobs=[self._logprob_entry(token, *step) for token, step in zip(tokens, logprobs)] or None,
                token_ids=list(tokens), meta={"redrawn": engine.redrawn[index]} if self.guide is not None else {},
            ))

        options: dict[str, Any] = {}
        if self.guide is None:
            engine = Engine(self.model, slots=self.batch_size, pad_token_id=self.tokenizer.pad_token_id, stop_ids=self.stop_ids)
        else:
            engine = GuidedEngine(self.model, self.guide.model, floor=self.guide_floor, slots=self.batch_size,
                                  pad_token_id=self.tokenizer.pad_token_id, stop_ids=self.stop_ids)
            options["guide_prompts"] = self.guide.tokenizer(self.guide._texts(
                [r.guide_messages or r.messages for r in requests]), add_special_tokens=False)["input_ids"]
        seeds = self._seeds(requests, sampling)
        engine.run(prompts, max_tokens=sampling.max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
                   top_logprobs=sampling.top_logprobs, seeds=seeds, stop_check=stop_check, finished=finished, **options)
        self.counters["batches"] += engine.counters["prefills"]

    def _run_tools(self, requests: list[Request], prompts: list[list[int]], sampling: Sampling, on_result: OnResult) -> None:
        """The engine with the Python tool (tools/loop.py): each ```python block a row closes runs in the sandbox."""
        from tutorlm.tools.loop import ToolLoop, ToolSettings

        if self.guide is not None:
            raise FatalBackendError("RSD and the Python tool do not combine: the student cannot accept a tool's output")
        engine = Engine(self.model, slots=self.batch_size, pad_token_id=self.tokenizer.pad_token_id, stop_ids=self.stop_ids)
        loop = ToolLoop(engine, self.tokenizer, ToolSettings(max_calls=sampling.tool_calls))
        stop_check = self._stop_check(sampling)

        def finished(index: int, tokens: list[int], reason: str, logprobs: list, latency: float, written: list[bool],
                     calls: list) -> None:
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            for stop in sampling.stop:
                if stop in text:
                    text, reason = text[: text.index(stop)], "stop"
            entries = [self._logprob_entry(token, *step) if step is not None else self._tool_entry(token)
                       for token, step in zip(tokens, logprobs)]
            on_result(requests[index], Completion(
                text=text, finish_reason=reason, prompt_tokens=len(prompts[index]), completion_tokens=sum(written),
                latency_s=latency, logprobs=entries or None, token_ids=list(tokens),
                meta={"tools": [call.to_dict() for call in calls]}))

        seeds = self._seeds(requests, sampling)
        loop.run(prompts, row_settings(len(prompts), sampling.max_tokens, sampling.temperature, sampling.top_p, seeds),
                 finished=finished, top_logprobs=sampling.top_logprobs, stop_check=stop_check)
        self.counters["batches"] += engine.counters["prefills"]
        self.counters["tool_calls"] = self.counters.get("tool_calls", 0) + loop.counters["calls"]

    def _stop_check(self, sampling: Sampling) -> Callable[[list[int]], bool] | None:
        """Whether a row's tokens so far end in one of the stop strings (None without stop strings)."""
        if not sampling.stop:
            return None

        def stop_check(tokens: list[int]) -> bool:
            tail = self.tokenizer.decode(tokens[-32:], skip_special_tokens=True)
            return any(stop in tail for stop in sampling.stop)

        return stop_check

    @staticmethod
    def _seeds(requests: list[Request], sampling: Sampling) -> list[int]:
        """A sampling seed per request: from its content and sample index, or random without a seed."""
        if sampling.seed is None:
            return [random.getrandbits(62) for _ in requests]
        return [request_seed(sampling.seed, r) for r in requests]

    def _tool_entry(self, token: int) -> dict[str, Any]:
        """A token of a tool's output in a completion's logprobs: the environment's, with no distribution."""
        return {"token": self.tokenizer.decode([token]), "id": int(token), "logprob": None, "top": [], "top_ids": [],
                "tool": True}

    def _prompt_texts(self, requests: list[Request]) -> list[str]:
        """Each request's prompt as the model reads it: its chat template, then the answer's given start, if any."""
        return [text + (request.prefix or "") for text, request in zip(self._texts([r.messages for r in requests]), requests)]

    def _texts(self, conversations: list[list[dict[str, str]]]) -> list[str]:
        return [self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) for messages in conversations]

    def _logprob_entry(self, token: int, top_ids: Any, top_values: Any, logprob: float) -> dict[str, Any]:
        """One token's entry: its text and id, its log-prob, and the top-k as [text, log-prob] with their ids."""
        return {"token": self.tokenizer.decode([token]), "id": int(token), "logprob": logprob,
                "top": [[self.tokenizer.decode([int(i)]), float(v)] for v, i in zip(top_values, top_ids)],
                "top_ids": [int(i) for i in top_ids]}

    def _run_generate(self, requests: list[Request], sampling: Sampling, on_result: OnResult) -> None:
        import torch

        if sampling.tool_calls is not None:
            raise FatalBackendError(f"task.tools python runs on the continuous-batching engine, which {self.model_name}'s "
                                    "cache does not fit (sliding-window or hybrid attention)")

        prompts = self._prompt_texts(requests)
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(requests)), key=lambda i: -lengths[i])
        device = next(self.model.parameters()).device
        for batch_index, start in enumerate(range(0, len(order), self.batch_size)):
            chosen = order[start : start + self.batch_size]
            encoded = self.tokenizer(
                [prompts[i] for i in chosen], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            options: dict[str, Any] = {
                "max_new_tokens": sampling.max_tokens, "pad_token_id": self.tokenizer.pad_token_id,
                "eos_token_id": sorted(self.stop_ids), "return_dict_in_generate": True,
                "output_logits": sampling.top_logprobs > 0,
            }
            if sampling.temperature > 0:
                options.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
            else:
                options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if sampling.stop:
                options.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed + batch_index)
            started = time.perf_counter()
            with torch.no_grad():
                output = self.model.generate(**encoded, **options)
            latency = time.perf_counter() - started
            self.counters["batches"] += 1
            prompt_width = encoded["input_ids"].shape[1]
            new_tokens = output.sequences[:, prompt_width:]  # (B, T_new)
            for row, request_index in enumerate(chosen):
                tokens = new_tokens[row].tolist()
                finish = "length"
                for position, token in enumerate(tokens):
                    if token in self.stop_ids:
                        tokens, finish = tokens[:position], "stop"
                        break
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                for stop in sampling.stop:
                    if stop in text:
                        text, finish = text[: text.index(stop)], "stop"
                logprobs = self._top_logprobs(output.logits, row, len(tokens), tokens, sampling.top_logprobs) if sampling.top_logprobs else None
                on_result(requests[request_index], Completion(
                    text=text, finish_reason=finish, prompt_tokens=lengths[request_index],
                    completion_tokens=len(tokens), latency_s=latency, logprobs=logprobs, token_ids=tokens,
                ))

    def _top_logprobs(self, logits: tuple, row: int, count: int, tokens: list[int], k: int) -> list[dict[str, Any]]:
        import torch

        entries = []
        for step in range(count):
            logprobs = torch.log_softmax(logits[step][row].float(), dim=-1)  # (V,)
            top = torch.topk(logprobs, k)
            entries.append(self._logprob_entry(tokens[step], top.indices, top.values, float(logprobs[tokens[step]])))
        return entries

    def close(self) -> None:
        pass
