"""The HTTP side of `tutorlm serve`: OpenAI-compatible routes over `route.Router` (FastAPI, uvicorn).

Routes: POST /v1/chat/completions (streaming over server-sent events or not), POST /v1/completions (the
student, raw text prompt), GET /v1/models, GET /health. Every refusal is an OpenAI-shaped error
(`{"error": {"message", "type", "param", "code"}}`) with a 4xx status, and the server goes on serving.
"""

# no `from __future__ import annotations`: FastAPI reads the route functions' annotations (fastapi.Request)
import asyncio
import hmac
import json
import signal
import sys
from contextlib import asynccontextmanager, contextmanager
from typing import Any, AsyncIterator

from tutorlm.backends.hf import HFBackend
from tutorlm.config import TeacherConfig
from tutorlm.serve_config import ServeConfig
from tutorlm.errors import ConfigError, FatalBackendError
from tutorlm.serve.protocol import BadRequest, Params, api_key, new_id, now, parse_messages, parse_params, sse, usage
from tutorlm.serve.route import Answer, Router
from tutorlm.serve.workers import LocalModel, RemoteTeacher


def _imports() -> tuple[Any, ...]:
    try:
        import fastapi
        import uvicorn  # noqa: F401
        from fastapi.responses import JSONResponse, StreamingResponse
    except ImportError as error:
        raise ConfigError(f"tutorlm serve needs FastAPI and uvicorn ({error.name} is missing): pip install -e \".[serve]\"") from None
    return fastapi, JSONResponse, StreamingResponse


def held_back(text: str, stop: tuple[str, ...]) -> int:
    """How many trailing characters of streamed text to hold back: the longest tail that could begin a stop string."""
    longest = 0
    for marker in stop:
        for size in range(min(len(marker) - 1, len(text)), 0, -1):
            if marker.startswith(text[-size:]):
                longest = max(longest, size)
                break
    return longest


async def while_connected(request: Any, work: Any) -> Any:
    """Await `work`, cancelling it when the client goes away first (a client that gives up on a plain request,
    or on a streamed answer still being decided): the rows it was decoding stop (LocalModel.generate's cleanup).
    The handler then ends with a 499 error that nobody reads (the connection is closed)."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.1)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise BadRequest(499, "the client disconnected", "client_closed_request")


def build_app(config: ServeConfig, student: LocalModel, teacher: LocalModel | RemoteTeacher | None = None) -> Any:
    fastapi, JSONResponse, StreamingResponse = _imports()
    router = Router(config, student, teacher)
    key = api_key(config)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(student.close)
        if isinstance(teacher, LocalModel):
            await asyncio.to_thread(teacher.close)

    app = fastapi.FastAPI(title="tutorlm", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.router = router

    def refuse(error: BadRequest) -> Any:
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Any, error: BadRequest) -> Any:
        return refuse(error)

    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def http_error(request: Any, error: HTTPException) -> Any:
        kind = "not_found" if error.status_code == 404 else "method_not_allowed" if error.status_code == 405 else "http_error"
        return refuse(BadRequest(error.status_code, f"{request.method} {request.url.path}: {error.detail}", kind))

    class Guard:
        """The API key and the body-size limit, before any route runs. A plain ASGI middleware: Starlette's
        @app.middleware("http") hides a client's disconnect from the route (request.is_disconnected() stays
        False), and a route must see it to stop decoding for a client that left."""

        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return await self.app(scope, receive, send)
            headers = dict(scope["headers"])
            if key is not None and scope["path"].startswith("/v1"):
                sent = headers.get(b"authorization", b"")
                if not hmac.compare_digest(sent, f"Bearer {key}".encode()):
                    return await refuse(BadRequest(401, "a valid API key is needed: send 'Authorization: Bearer <key>'",
                                                   "invalid_api_key", "authentication_error"))(scope, receive, send)
            length = headers.get(b"content-length", b"").decode("latin-1")
            if length.isdigit() and int(length) > config.max_body_bytes:
                return await refuse(BadRequest(413, f"the request body has {length} bytes; the limit is {config.max_body_bytes}",
                                               "body_too_large"))(scope, receive, send)
            started = False

            async def watched(message: Any) -> None:
                nonlocal started
                started = started or message["type"] == "http.response.start"
                await send(message)

            try:
                await self.app(scope, receive, watched)
            except BadRequest as error:  # raised before a streaming response began
                if started:
                    raise
                await refuse(error)(scope, receive, send)

    app.add_middleware(Guard)

    async def read_json(request: Any) -> Any:
        body = await request.body()
        if len(body) > config.max_body_bytes:
            raise BadRequest(413, f"the request body has {len(body)} bytes; the limit is {config.max_body_bytes}", "body_too_large")
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise BadRequest(400, f"the request body is not valid JSON: {error}", "invalid_json") from None

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(router.modes()), "student": student.name_of_model,
                "teacher": getattr(teacher, "name_of_model", getattr(teacher, "name", None)), "counts": router.counts,
                "tokens": {"student": student.tokens_out, "teacher": getattr(teacher, "tokens_out", None)}}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": mode, "object": "model", "created": 0, "owned_by": "tutorlm"}
                                           for mode in router.modes()]}

    def chat_choice(index: int, answer: Answer) -> dict[str, Any]:
        return {"index": index, "message": {"role": "assistant", "content": answer.text}, "finish_reason": answer.finish_reason,
                "logprobs": None}

    def total_usage(answers: list[Answer]) -> dict[str, int]:
        return usage(answers[0].prompt_tokens, sum(a.completion_tokens for a in answers), sum(a.student_tokens for a in answers),
                     sum(a.teacher_tokens for a in answers))

    @app.post("/v1/chat/completions")
    async def chat(request: fastapi.Request) -> Any:
        body = await read_json(request)
        params = parse_params(body, config, router.modes())
        messages = parse_messages(body)
        if params.stream and params.model == "student" and params.n == 1 and not params.tool_calls:
            prompt = student.chat_prompt(messages)
            router.check_prompt(prompt)
            return StreamingResponse(stream_student(prompt, params), media_type="text/event-stream")
        answers = list(await while_connected(request, asyncio.gather(*[router.answer(messages, params, i) for i in range(params.n)])))
        if params.stream:
            return StreamingResponse(stream_answers(answers, params), media_type="text/event-stream")
        return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": now(), "model": params.name,
                "choices": [chat_choice(i, a) for i, a in enumerate(answers)], "usage": total_usage(answers),
                "tutorlm": [a.meta for a in answers]}

    def chunk(chat_id: str, params: Params, delta: dict[str, Any], finish: str | None = None, index: int = 0) -> dict[str, Any]:
        return {"id": chat_id, "object": "chat.completion.chunk", "created": now(), "model": params.name,
                "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}]}

    async def stream_student(prompt: list[int], params: Params) -> AsyncIterator[str]:
        chat_id, tokens, sent = new_id("chatcmpl"), [], ""
        yield sse(chunk(chat_id, params, {"role": "assistant", "content": ""}))
        router.counts["student"] += 1
        async for event in student.generate(prompt, router.settings(params, 0), stop=params.stop):
            if event[0] == "token":
                tokens.append(event[1])
                text = student.text(tokens, params.stop)
                if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                    continue
                ready = text[: len(text) - held_back(text, params.stop)]
                if len(ready) > len(sent):
                    yield sse(chunk(chat_id, params, {"content": ready[len(sent):]}))
                    sent = ready
            elif event[0] == "done":
                text = student.text(event[1], params.stop)
                if len(text) > len(sent):
                    yield sse(chunk(chat_id, params, {"content": text[len(sent):]}))
                yield sse(chunk(chat_id, params, {}, event[2]))
                if params.include_usage:
                    yield sse({"id": chat_id, "object": "chat.completion.chunk", "created": now(), "model": params.name,
                               "choices": [], "usage": usage(len(prompt), len(event[1]), len(event[1]), 0)})
            else:
                yield sse({"error": {"message": f"the student failed: {event[1]}", "type": "server_error", "code": "internal_error"}})
        yield sse("[DONE]")

    async def stream_answers(answers: list[Answer], params: Params) -> AsyncIterator[str]:
        chat_id = new_id("chatcmpl")
        for index, answer in enumerate(answers):
            yield sse(chunk(chat_id, params, {"role": "assistant", "content": ""}, index=index))
            yield sse(chunk(chat_id, params, {"content": answer.text}, index=index))
            yield sse(chunk(chat_id, params, {}, answer.finish_reason, index=index))
        if params.include_usage:
            yield sse({"id": chat_id, "object": "chat.completion.chunk", "created": now(), "model": params.name, "choices": [],
                       "usage": total_usage(answers)})
        yield sse("[DONE]")

    @app.post("/v1/completions")
    async def completions(request: fastapi.Request) -> Any:
        body = await read_json(request)
        params = parse_params(body, config, router.modes())
        if params.model != "student" or params.stream:
            raise BadRequest(400, "/v1/completions serves the student without streaming; use /v1/chat/completions for "
                                  "the teacher, escalation, step help and streaming", "unsupported", param="model")
        if params.tool_calls:
            raise BadRequest(400, "/v1/completions runs no tools; send tools to /v1/chat/completions", "unsupported", param="tools")
        prompt_text = body.get("prompt")
        if isinstance(prompt_text, list) and len(prompt_text) == 1:
            prompt_text = prompt_text[0]
        if not isinstance(prompt_text, str) or not prompt_text:
            raise BadRequest(400, "'prompt' must be a non-empty string", "invalid_value", param="prompt")
        prompt = student.text_prompt(prompt_text)
        router.check_prompt(prompt)
        results = await while_connected(request, asyncio.gather(*[student.complete(prompt, router.settings(params, i), stop=params.stop)
                                                                  for i in range(params.n)]))
        router.counts["student"] += params.n
        generated = sum(len(tokens) for tokens, _, _ in results)
        return {"id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": params.name,
                "choices": [{"index": i, "text": student.text(tokens, params.stop), "finish_reason": reason, "logprobs": None}
                            for i, (tokens, reason, _) in enumerate(results)],
                "usage": usage(len(prompt), generated, generated, 0)}

    return app


def load_local(spec: str, dtype: str, *, slots: int, room: int, name: str) -> LocalModel:
    """A local model spec (a directory, hub id, .gguf file or package) loaded the way the hf backend loads it."""
    backend = HFBackend(TeacherConfig(backend="hf", model=spec, dtype=dtype))  # a missing file or package: a clear error now
    try:
        model, tokenizer = backend.load()
    except FatalBackendError as error:  # no chat template: the model to serve is the wrong kind
        raise ConfigError(f"{spec}: {error}; serve an instruct/chat model") from None
    local = LocalModel(model, tokenizer, slots=slots, room=room, name=name)
    local.name_of_model = spec
    return local


def serve(config: ServeConfig) -> int:
    """Load the student (and teacher), then serve until SIGINT/SIGTERM (in-flight requests finish first)."""
    _imports()
    import uvicorn

    room = config.max_prompt_tokens + config.max_tokens + 32
    teacher: LocalModel | RemoteTeacher | None = None
    if config.teacher and config.teacher.startswith("openai:"):
        teacher = RemoteTeacher(config)
    student = load_local(config.model, config.dtype, slots=config.slots, room=room, name="student")
    if config.teacher and teacher is None:
        teacher = load_local(config.teacher, config.teacher_dtype, slots=config.slots, room=room, name="teacher")
    app = build_app(config, student, teacher)
    auth = f"API key required (from ${config.api_key_env})" if api_key(config) else f"no API key (set ${config.api_key_env} to require one)"
    print(f"tutorlm serve: {', '.join(app.state.router.modes())} on http://{config.host}:{config.port}/v1; {auth}", file=sys.stderr)
    class Server(uvicorn.Server):
        """uvicorn re-raises a captured SIGINT/SIGTERM after its graceful shutdown (so the process dies of it);
        the shutdown was clean, so tutorlm serve says so and exits 0 instead."""

        stopped_by: list[int] = []

        @contextmanager
        def capture_signals(self) -> Any:
            with super().capture_signals():
                yield
                self.stopped_by = list(getattr(self, "_captured_signals", []))
                getattr(self, "_captured_signals", []).clear()

    server = Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="info",
                                   timeout_graceful_shutdown=config.shutdown_timeout_s))
    server.run()
    if server.stopped_by:
        print(f"tutorlm serve: stopped by {signal.Signals(server.stopped_by[0]).name}", file=sys.stderr)
    return 0
