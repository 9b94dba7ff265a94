"""A real HTTP server on 127.0.0.1 that speaks OpenAI chat completions, with scripted faults.

Faults are chosen per request by `fault_for(key, attempt)`, where key identifies the request (messages
+ seed) and attempt counts earlier tries of the same key. A fault attempt never counts as a served
completion, so `served` counts each completion that reached the client in one piece.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

def free_port() -> int:
    """A port nothing listens on now (for a server started as a separate process)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog of 5 resets connections under concurrency
    daemon_threads = True


FAULTS = ("429", "500", "503", "slow", "drop", "malformed")


def fake_logprob(token: str) -> float:
    """The log-probability the fake server gives a token: a fixed function of its text, so tests can check it."""
    return -0.1 * len(token.strip())


def fake_token_id(word: str) -> int:
    """The id the fake server gives a word's token (its alternatives get the next ids)."""
    return sum(map(ord, word)) % 10_000


def default_reply(messages: list[dict]) -> str:
    question = messages[-1]["content"]
    return f"Let me think step by step about: {question[:40]}\nThe answer is {len(question) % 7}."


class FakeOpenAI:
    def __init__(
        self,
        *,
        model: str = "teacher-model",
        api_key: str | None = None,
        delay_s: float = 0.0,
        slow_s: float = 1.5,
        fault_for: Callable[[str, int], str | None] = lambda key, attempt: None,
        reply: Callable[[list[dict]], str] = default_reply,
        html_models: bool = False,
        echo: bool = True,
    ) -> None:
        self.echo = echo  # False: /v1/completions refuses echo, as llama.cpp's server does
        self.html_models = html_models  # GET /models answers with a web page, as a web UI at that address would
        self.model, self.api_key, self.delay_s, self.slow_s = model, api_key, delay_s, slow_s
        self.fault_for, self.reply = fault_for, reply
        self.attempts: Counter[str] = Counter()
        self.served: Counter[str] = Counter()
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "FakeOpenAI":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset_counts(self) -> None:
        with self.lock:
            self.attempts.clear()
            self.served.clear()

    @property
    def total_served(self) -> int:
        with self.lock:
            return sum(self.served.values())

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def _authorized(self) -> bool:
                if fake.api_key is None or self.headers.get("Authorization") == f"Bearer {fake.api_key}":
                    return True
                self._send(401, b'{"error": {"message": "invalid api key"}}')
                return False

            def _completions(self, body: dict) -> None:
                """Legacy /v1/completions with echo + logprobs, as vLLM serves it (llama.cpp's server refuses echo)."""
                key = hashlib.sha256(json.dumps(["completions", body["prompt"]]).encode()).hexdigest()
                with fake.lock:
                    attempt = fake.attempts[key]
                    fake.attempts[key] += 1
                    fake.bodies.append(body)
                fault = fake.fault_for(key, attempt)
                if fault in ("429", "500", "503"):
                    self._send(int(fault), b'{"error": {"message": "try again"}}')
                    return
                if body.get("echo") and not fake.echo:
                    self._send(400, b'{"error": {"message": "Only no echo is supported", "type": "invalid_request_error"}}')
                    return
                tokens = re.findall(r"\s*\S+|\s+$", body["prompt"]) if body.get("echo") else []
                tokens.append(" .")  # the one generated token (max_tokens 1)
                offsets = [0]
                for token in tokens[:-1]:
                    offsets.append(offsets[-1] + len(token))
                values = [None] + [fake_logprob(token) for token in tokens[1:]]
                top = [None] + [{token: fake_logprob(token), " else": -5.0} for token in tokens[1:]]
                reply = {"choices": [{"index": 0, "text": body["prompt"] + " .", "finish_reason": "length",
                                      "logprobs": {"tokens": tokens, "token_logprobs": values, "text_offset": offsets,
                                                   "top_logprobs": top}}],
                         "usage": {"prompt_tokens": len(tokens) - 1, "completion_tokens": 1}}
                self._send(200, json.dumps(reply).encode())
                with fake.lock:
                    fake.served[key] += 1

            def _send_html(self) -> None:
                body = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>web UI</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if fake.html_models:
                    self._send_html()
                elif self._authorized():
                    self._send(200, json.dumps({"object": "list", "data": [{"id": fake.model}]}).encode())

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self._authorized():
                    return
                if not self.path.endswith("/chat/completions"):
                    self._completions(body)
                    return
                if body["model"] != fake.model:
                    self._send(404, json.dumps({"error": {"message": f"The model `{body['model']}` does not exist"}}).encode())
                    return
                key = hashlib.sha256(json.dumps([body["messages"], body.get("seed")]).encode()).hexdigest()
                with fake.lock:
                    attempt = fake.attempts[key]
                    fake.attempts[key] += 1
                    fake.bodies.append(body)
                fault = fake.fault_for(key, attempt)
                time.sleep(fake.delay_s)
                if fault in ("429", "500", "503"):
                    headers = {"Retry-After": "0.05"} if fault == "429" else {}
                    self._send(int(fault), b'{"error": {"message": "try again"}}', headers)
                    return
                if fault == "slow":
                    time.sleep(fake.slow_s)
                    self.close_connection = True
                    return
                if fault == "drop":
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if fault == "malformed":
                    self._send(200, b'{"choices": [ {"message": ')
                    return
                if fault == "html":
                    self._send_html()
                    return
                if fault in ("empty", "null"):
                    message = {"role": "assistant", "content": "" if fault == "empty" else None}
                    self._send(200, json.dumps({"choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                                                "usage": {"prompt_tokens": 5, "completion_tokens": 0}}).encode())
                    return
                if fault == "400":
                    self._send(400, b'{"error": {"message": "prompt too long"}}')
                    return
                text = fake.reply(body["messages"])
                words = text.split()
                choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                if body.get("logprobs"):
                    k = body.get("top_logprobs", 1)
                    # vLLM's return_tokens_as_token_ids names each token "token_id:N"
                    name = (lambda w, i: f"token_id:{fake_token_id(w) + i}") if body.get("return_tokens_as_token_ids") else \
                        (lambda w, i: w if i == 0 else f"{w}~{i}")
                    choice["logprobs"] = {"content": [
                        {"token": name(word, 0), "logprob": -0.1,
                         "top_logprobs": [{"token": name(word, i), "logprob": -0.1 - i} for i in range(k)]}
                        for word in words
                    ]}
                reply = {
                    "id": "chatcmpl-test", "object": "chat.completion", "model": fake.model, "choices": [choice],
                    "usage": {"prompt_tokens": sum(len(m["content"].split()) for m in body["messages"]),
                              "completion_tokens": len(words), "total_tokens": 0},
                }
                self._send(200, json.dumps(reply).encode())
                with fake.lock:
                    fake.served[key] += 1

        return Handler


if __name__ == "__main__":
    # A standalone server for benchmarks: prints its URL, serves until killed.
    import argparse

    parser = argparse.ArgumentParser(description="fake OpenAI chat-completions server on 127.0.0.1")
    parser.add_argument("--delay-s", type=float, default=0.0, help="simulated latency of every reply")
    args = parser.parse_args()
    with FakeOpenAI(delay_s=args.delay_s) as fake:
        print(fake.url, flush=True)
        threading.Event().wait()
