"""The OpenAI-compatible wire format of `tutorlm serve`: request parsing and checks (`parse_params`,
`parse_messages`), OpenAI-shaped errors (`BadRequest`), usage that counts student and teacher tokens apart,
server-sent events, ids and the API-key check.

The request's `model` picks who answers (serve/route.py): `student`, `teacher`, `escalate` or `step`
(`escalate@0.5` and `step@-1.5` set the threshold per request).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

from tutorlm.serve_config import ServeConfig

MODES = ("student", "teacher", "escalate", "step")


class BadRequest(Exception):
    """A request the server refuses: an OpenAI-shaped error with an HTTP status."""

    def __init__(self, status: int, message: str, code: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.kind, self.param = status, message, code, kind, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


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
    tool_calls: int = 0  # Python blocks the answer may run (the request's tools); 0: none


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
    tool_calls = parse_tools(body, config)
    if tool_calls and mode != "student":
        raise BadRequest(400, f"'tools': the Python tool is served in the student mode, not {mode!r}", "unsupported", param="tools")
    return Params(tool_calls=tool_calls, model=mode, threshold=threshold, name=model, max_tokens=max_tokens, temperature=number("temperature", 1.0, 0.0, 2.0),
                  top_p=number("top_p", 1.0, 1e-6, 1.0), n=number("n", 1, 1, config.max_n, integer=True), stream=stream,
                  stop=tuple(stop), seed=seed, include_usage=bool(isinstance(options, dict) and options.get("include_usage")))


TOOL_TYPES = ("code_interpreter", "python")


def parse_tools(body: dict[str, Any], config: ServeConfig) -> int:
    """How many Python blocks the answer may run: `tools: [{"type": "code_interpreter"}]` (OpenAI's name for a sandboxed
    Python tool; "python" is taken too) turns the tool on, `max_tool_calls` (as OpenAI's Responses API) caps the
    calls below the server's --max-tool-calls. 0 without tools."""
    tools = body.get("tools")
    if tools is None or tools == []:
        if body.get("max_tool_calls") is not None:
            raise BadRequest(400, "'max_tool_calls' needs 'tools': [{\"type\": \"code_interpreter\"}]", "invalid_value",
                             param="max_tool_calls")
        return 0
    if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):
        raise BadRequest(400, "'tools' must be a list of objects, e.g. [{\"type\": \"code_interpreter\"}]", "invalid_value", param="tools")
    for index, tool in enumerate(tools):
        if tool.get("type") not in TOOL_TYPES:
            raise BadRequest(400, f"tools[{index}]: this server runs Python only: type {' or '.join(map(repr, TOOL_TYPES))}, got "
                                  f"{tool.get('type')!r}", "unsupported", param=f"tools[{index}].type")
    if config.max_tool_calls == 0:
        raise BadRequest(400, "'tools': this server runs no tools (started with --max-tool-calls 0)", "unsupported", param="tools")
    calls = body.get("max_tool_calls", config.max_tool_calls)
    if isinstance(calls, bool) or not isinstance(calls, int) or not 1 <= calls <= config.max_tool_calls:
        raise BadRequest(400, f"'max_tool_calls' must be a whole number between 1 and {config.max_tool_calls}, got {calls!r}",
                         "invalid_value", param="max_tool_calls")
    return calls


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
