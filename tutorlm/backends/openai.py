"""OpenAI-compatible chat-completions backend: vLLM, SGLang, llama.cpp server, Ollama, hosted APIs.

- Async (httpx) with at most `max_concurrency` requests in flight per endpoint; several endpoints
  serving one model share the load (each request goes to the endpoint with the fewest in flight).
- Retries with exponential backoff and jitter on 429, 408, 5xx, timeouts, dropped connections,
  malformed replies and empty completions (never cached), honouring `Retry-After`. 401/403, "model
  not found" and a successful reply that is not JSON at all (an HTML page: a wrong address behind a
  proxy) stop the run at once. Other 4xx replies (e.g. a prompt too long) fail that request only.
- The API key is read from the environment variable that `api_key_env` names, and exists only in
  the request headers: never in config, manifest, cache, traces or logs.
- Servers that split reasoning into `reasoning_content` (vLLM and SGLang reasoning parsers,
  DeepSeek) get it back as `<think>…</think>` before the answer, so the trace keeps the reasoning.
- Top-k log-probabilities are requested when `top_logprobs > 0` (needed for logit distillation).
- `score_remote` scores given texts on the server (on-policy distillation from a served teacher), with the
  legacy completions API's `echo` and `logprobs` (vLLM serves it; llama.cpp's server refuses echo, which stops
  the run with that reply), through the teacher cache and the same retries: a scored text is paid for once.
  The server's tokens come back as text with their offsets, so the scores are of the server model's own tokens.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import os
import random
import re
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import httpx

from tutorlm.backends.base import Completion, OnResult, Request, RequestFailed, Sampling
from tutorlm.config import ConfigError
from tutorlm.errors import FatalBackendError, GenerationIncomplete

_RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529}
_MAX_RETRY_AFTER_S = 300.0


class _Endpoint:
    def __init__(self, base_url: str, max_concurrency: int) -> None:
        self.base_url = base_url.rstrip("/")
        self.slots = asyncio.Semaphore(max_concurrency)
        self.in_flight = 0


def _retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds, possibly fractional, or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, min(float(value), _MAX_RETRY_AFTER_S))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, min(when.timestamp() - time.time(), _MAX_RETRY_AFTER_S))


_TOKEN_ID = re.compile(r"token_id:(-?\d+)")


def _parse_logprobs(choice: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Per-token entries {"token", "logprob", "top": [[token, logprob], ...]}; where the server names tokens as
    `token_id:N` (vLLM's return_tokens_as_token_ids) they also carry "id" and "top_ids"."""
    content = (choice.get("logprobs") or {}).get("content")
    if not content:
        return None
    entries = []
    for item in content:
        entry = {"token": item["token"], "logprob": item["logprob"],
                 "top": [[top["token"], top["logprob"]] for top in item.get("top_logprobs") or []]}
        chosen = _TOKEN_ID.fullmatch(str(item["token"]))
        top_ids = [_TOKEN_ID.fullmatch(str(token)) for token, _ in entry["top"]]
        if chosen and all(top_ids):
            entry["id"], entry["top_ids"] = int(chosen.group(1)), [int(match.group(1)) for match in top_ids]  # type: ignore[union-attr]
        entries.append(entry)
    return entries


def parse_chat_completion(data: dict[str, Any], latency_s: float) -> Completion:
    """A Completion from a chat-completions reply; KeyError/TypeError/IndexError when malformed."""
    choice = data["choices"][0]
    message = choice["message"]
    text = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if reasoning:
        text = f"<think>{reasoning}</think>\n{text}"
    usage = data.get("usage") or {}
    logprobs = _parse_logprobs(choice)
    return Completion(
        text=text,
        finish_reason=choice.get("finish_reason") or "stop",
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        latency_s=latency_s,
        logprobs=logprobs,
        token_ids=[entry["id"] for entry in logprobs] if logprobs and all("id" in entry for entry in logprobs) else None,
        # tutorlm serve counts the student's and the teacher's tokens apart (its escalate and step modes)
        meta={"usage": {k: int(usage[k]) for k in ("student_tokens", "teacher_tokens")}} if "teacher_tokens" in usage else {},
    )


class OpenAIBackend:
    kind = "openai"
    precision = None  # the server's business

    def __init__(self, config: Any) -> None:
        if not config.model:
            raise ConfigError("the openai backend needs a model name: set teacher.model")
        if not config.base_url:
            raise ConfigError("the openai backend needs a server address: set teacher.base_url (e.g. http://127.0.0.1:8000/v1)")
        self.model_name = config.model
        self.base_urls = [config.base_url] if isinstance(config.base_url, str) else list(config.base_url)
        self.api_key_env = config.api_key_env
        self.max_concurrency = config.max_concurrency
        self.timeout_s = config.timeout_s
        self.max_retries = config.max_retries
        self.backoff_base_s = config.backoff_base_s
        self.counters = {"retries": 0, "requests": 0}

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _body(self, request: Request, sampling: Sampling) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_name, "messages": request.messages, "n": 1,
            "temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens,
        }
        if request.prefix is not None:  # continue the answer's given start (vLLM's and SGLang's chat extension)
            body.update(messages=[*request.messages, {"role": "assistant", "content": request.prefix}],
                        continue_final_message=True, add_generation_prompt=False)
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.seed is not None:
            body["seed"] = sampling.seed + request.sample_index
        if sampling.top_logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = sampling.top_logprobs
            if sampling.token_ids:
                body["return_tokens_as_token_ids"] = True
        return body

    def _fatal_for(self, response: httpx.Response, endpoint: _Endpoint, path: str = "/chat/completions") -> FatalBackendError | None:
        if response.status_code in (401, 403):
            where = f"environment variable {self.api_key_env}" if self.api_key_env else "teacher.api_key_env"
            return FatalBackendError(
                f"{endpoint.base_url} refused the request (HTTP {response.status_code}): check the API key in {where}"
            )
        if response.status_code == 404:
            if "model" in response.text.lower():
                return FatalBackendError(f"{endpoint.base_url}: model {self.model_name!r} not found (HTTP 404): {response.text[:300]}")
            return FatalBackendError(f"{endpoint.base_url}{path} not found (HTTP 404): check teacher.base_url (it usually ends in /v1)")
        return None

    async def _preflight(self, client: httpx.AsyncClient, endpoints: list[_Endpoint]) -> None:
        """Fail fast on an unreachable server or a refused key, before queueing thousands of requests."""
        for endpoint in endpoints:
            try:
                response = await client.get(f"{endpoint.base_url}/models", headers=self._headers(), timeout=min(self.timeout_s, 30.0))
            except httpx.ConnectError as error:
                raise FatalBackendError(f"cannot connect to {endpoint.base_url}: is the server running? ({error})") from None
            except httpx.HTTPError:
                continue  # slow or odd /models: the real requests will tell
            if response.status_code in (401, 403):
                raise self._fatal_for(response, endpoint)  # type: ignore[misc]
            if response.status_code == 200:
                _json_or_fatal(response, f"{endpoint.base_url}/models")

    async def _attempt(self, client: httpx.AsyncClient, endpoint: _Endpoint, call: "_Call") -> Any:
        started = time.perf_counter()
        response = await client.post(f"{endpoint.base_url}{call.path}", headers=self._headers(), content=json.dumps(call.body))
        fatal = self._fatal_for(response, endpoint, call.path)
        if fatal:
            raise fatal
        if response.status_code in _RETRY_STATUSES:
            raise _Retryable(f"HTTP {response.status_code}", _retry_after_seconds(response.headers.get("retry-after")))
        if response.status_code >= 400:
            if call.refused is not None:
                call.refused(response, endpoint.base_url)
            raise RequestFailed(f"HTTP {response.status_code} from {endpoint.base_url}: {response.text[:300]}")
        data = _json_or_fatal(response, f"{endpoint.base_url}{call.path}")
        try:
            return call.parse(data, time.perf_counter() - started, endpoint.base_url)
        except (ValueError, KeyError, TypeError, IndexError):
            raise _Retryable(f"malformed reply: {response.text[:100]!r}", None) from None

    def _chat_call(self, request: Request, sampling: Sampling) -> "_Call":
        def parse(data: Any, latency: float, url: str) -> Completion:
            completion = parse_chat_completion(data, latency)
            if not completion.text.strip():
                # A passing glitch must not become a permanent cached sample: retried, never cached.
                raise _Retryable(f"empty completion (finish reason {completion.finish_reason!r})", None)
            return completion

        return _Call("/chat/completions", self._body(request, sampling), parse)

    async def _request(self, client: httpx.AsyncClient, endpoints: list[_Endpoint], call: "_Call") -> Any:
        last_error = "no attempt"
        for attempt in range(self.max_retries + 1):
            endpoint = min(endpoints, key=lambda e: (e.in_flight, random.random()))
            retry_after = None
            async with endpoint.slots:
                endpoint.in_flight += 1
                self.counters["requests"] += 1
                try:
                    return await self._attempt(client, endpoint, call)
                except _Retryable as error:
                    last_error, retry_after = str(error), error.retry_after
                except (httpx.TimeoutException, httpx.TransportError) as error:
                    last_error = f"{type(error).__name__}: {error}"
                finally:
                    endpoint.in_flight -= 1
            if attempt == self.max_retries:
                break
            self.counters["retries"] += 1
            backoff = min(30.0, self.backoff_base_s * 2**attempt) * random.uniform(0.5, 1.5)
            await asyncio.sleep(retry_after if retry_after is not None else backoff)
        raise RequestFailed(f"failed after {self.max_retries + 1} attempts: {last_error}")

    async def _run(self, requests: list[Any], call_of: Callable[[Any], "_Call"], on_result: Callable[[Any, Any], None]) -> None:
        endpoints = [_Endpoint(url, self.max_concurrency) for url in self.base_urls]
        limits = httpx.Limits(max_connections=self.max_concurrency * len(endpoints), max_keepalive_connections=self.max_concurrency * len(endpoints))
        async with httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s), limits=limits) as client:
            await self._preflight(client, endpoints)
            queue: asyncio.Queue[Request] = asyncio.Queue()
            for request in requests:
                queue.put_nowait(request)

            async def worker() -> None:
                while not queue.empty():
                    request = queue.get_nowait()
                    try:
                        result: Any = await self._request(client, endpoints, call_of(request))
                    except RequestFailed as error:
                        result = error
                    on_result(request, result)

            workers = [asyncio.create_task(worker()) for _ in range(min(len(requests), self.max_concurrency * len(endpoints)))]
            try:
                await asyncio.gather(*workers)
            finally:
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)

    def run(self, requests: list[Request], sampling: Sampling, on_result: OnResult) -> None:
        if not requests:
            return
        if sampling.tool_calls is not None:
            raise FatalBackendError("task.tools python runs the model's code between its tokens, which a served model's "
                                    "chat completions do not allow here: use a local teacher (teacher.backend hf) or "
                                    "the reference solver")
        if self.api_key_env and not os.environ.get(self.api_key_env):
            print(f"note: environment variable {self.api_key_env} is not set; sending requests without an API key",
                  file=sys.stderr)
        asyncio.run(self._run(requests, lambda request: self._chat_call(request, sampling), on_result))

    def score(self, items: list[Any], top_k: int, on_result: Callable[[Any, Any], None]) -> None:
        """Log-probabilities of each item's `completion` text after its `prompt` text (both already rendered with the
        served model's chat template), with OpenAI's legacy `echo` + `logprobs` on /v1/completions, which vLLM serves.
        `on_result(item, ScoredText or RequestFailed)` as each arrives. A server that cannot echo prompt log-probabilities
        (llama.cpp's server refuses `echo`) stops the run at once, naming the endpoint and its reply."""

        def call_of(item: Any) -> _Call:
            body = {"model": self.model_name, "prompt": item.prompt + item.completion, "max_tokens": 1, "temperature": 0.0,
                    "echo": True, "logprobs": max(top_k, 1)}

            def parse(data: Any, latency: float, url: str) -> Any:
                return parse_echo_logprobs(data, item.prompt, item.completion, top_k, f"{url}/completions")

            return _Call("/completions", body, parse, refused=_echo_refused)

        if items:
            asyncio.run(self._run(items, call_of, on_result))

    def close(self) -> None:
        pass


def _json_or_fatal(response: httpx.Response, url: str) -> Any:
    """The JSON body of a successful reply. A page instead of JSON (HTML from a proxy or a web UI at a wrong
    address) stops the run at once, since retrying would only wait; JSON cut short is retried."""
    try:
        return response.json()
    except ValueError:
        kind = response.headers.get("content-type", "no content type")
        if "json" in kind and not response.text.lstrip().startswith("<"):
            raise _Retryable(f"malformed reply: {response.text[:100]!r}", None) from None
        raise FatalBackendError(
            f"{url} answered HTTP {response.status_code} with something that is not JSON ({kind}): "
            f"{response.text[:120]!r}. Is teacher.base_url an OpenAI-compatible API (it usually ends in /v1)?"
        ) from None


def _echo_refused(response: httpx.Response, url: str) -> None:
    """A 4xx reply to an echo request that names echo or logprobs: this server cannot score prompts; no retry helps."""
    if response.status_code < 500 and any(word in response.text.lower() for word in ("echo", "logprob")):
        raise FatalBackendError(
            f"{url}/completions cannot return prompt log-probabilities (HTTP {response.status_code}: {response.text[:200]}); "
            "scoring needs a server that supports echo with logprobs on /v1/completions, such as vLLM"
        )


@dataclass
class _Call:
    """One HTTP call: where to post, what, and how to read the reply (raise _Retryable for a bad one)."""

    path: str
    body: dict[str, Any]
    parse: Callable[[Any, float, str], Any]
    refused: Callable[[httpx.Response, str], None] | None = None  # may raise FatalBackendError for a 4xx reply


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# ---------------------------------------------------------------------------------------------------
# Scoring given texts on a server: the legacy completions API's echo with logprobs
# ---------------------------------------------------------------------------------------------------


@dataclass
class TextPair:
    """A prompt already rendered with the served model's chat template, and the completion text to score after it."""

    prompt: str
    completion: str


@dataclass
class ScoredText:
    """The server model's tokens of a completion (texts and their offsets in it) and their log-probabilities."""

    tokens: list[str]
    offsets: list[int]  # where each token starts in the completion text
    logprobs: list[float]
    top: list[dict[str, float]] | None = None  # the k most likely next tokens at each position, by text

    @property
    def mean_logprob(self) -> float:
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else 0.0


def parse_echo_logprobs(data: dict[str, Any], prompt: str, completion: str, top_k: int, url: str) -> ScoredText:
    """The completion's part of an echoed /v1/completions reply ({"choices": [{"logprobs": {tokens, token_logprobs,
    text_offset, top_logprobs}}]}); a reply without the prompt's log-probabilities is a FatalBackendError."""
    logprobs = data["choices"][0].get("logprobs") or {}
    tokens, values, offsets = logprobs.get("tokens") or [], logprobs.get("token_logprobs") or [], logprobs.get("text_offset") or []
    end = len(prompt) + len(completion)
    # Tokens that start in the completion; one that straddles the boundary belongs to neither side.
    wanted = [i for i, offset in enumerate(offsets) if len(prompt) <= offset < end]
    if len(offsets) < 2 or len(offsets) != len(tokens) or not "".join(tokens).startswith(prompt + completion):
        raise FatalBackendError(
            f"{url} did not return log-probabilities of the prompt's tokens ({len(tokens)} tokens came back for a text of "
            f"{end} characters): it does not echo with logprobs, which scoring needs (vLLM does)"
        )
    top = [dict(logprobs["top_logprobs"][i] or {}) for i in wanted] if top_k and logprobs.get("top_logprobs") else None
    return ScoredText([tokens[i] for i in wanted], [offsets[i] - len(prompt) for i in wanted],
                      [float(values[i]) for i in wanted], top)


def score_remote(teacher: Any, pairs: list[TextPair], *, top_k: int = 0, cache: Any = None) -> list[ScoredText]:
    """Scores of rendered (prompt, completion) texts by the served model `teacher` (a TeacherConfig with backend openai).

    Cached like teacher calls (key: model, texts, top_k); calls that still fail after retries raise
    GenerationIncomplete, and a rerun makes only those.
    """
    backend = OpenAIBackend(teacher)
    keys = [hashlib.sha256(json.dumps({"kind": "score", "model": backend.model_name, "prompt": pair.prompt,
                                       "completion": pair.completion, "top_k": top_k}).encode()).hexdigest() for pair in pairs]
    stored = cache.get_many_json(keys) if cache is not None else {}
    results: dict[str, Any] = {key: ScoredText(**value) for key, value in stored.items()}
    pending = {key: pair for key, pair in zip(keys, pairs) if key not in results}
    key_of = {id(pair): key for key, pair in pending.items()}

    def done(pair: TextPair, result: Any) -> None:
        results[key_of[id(pair)]] = result
        if cache is not None and isinstance(result, ScoredText):
            cache.put_json(key_of[id(pair)], "openai-score", backend.model_name, asdict(result))

    backend.score(list(pending.values()), top_k, done)
    failures = [result for result in results.values() if isinstance(result, Exception)]
    if failures:
        raise GenerationIncomplete(f"{len(failures)} of {len(pairs)} scoring calls failed (first: {failures[0]}); run again to retry")
    return [results[key] for key in keys]
