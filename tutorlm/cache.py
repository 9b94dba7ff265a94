"""A durable cache of teacher calls: a call paid for is never paid for again.

SQLite in WAL mode, one row per completed call, committed the moment the result arrives, so a
killed run loses at most the calls that were in flight. The key is a hash of everything that
determines the answer: backend kind, model, messages, sampling settings, sample index and seed; for a
local model also a fingerprint of its weight files and the precision it computes in (a local directory is
named by that fingerprint alone, so a moved checkpoint keeps its answers). It
leaves out where the model is served (URL) and the API key, so moving to another server of the same
model reuses the cache, and no secret is ever stored. `n` is not in the key either: raising n from 4
to 8 reuses samples 0-3. Failed calls are not cached, so a rerun retries them.

Default location: $TUTORLM_CACHE_DIR, else $XDG_CACHE_HOME/tutorlm, else ~/.cache/tutorlm.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable

from tutorlm.backends import Completion, Request, Sampling


def cache_key(backend_kind: str, model_name: str, request: Request, sampling: Sampling, identity: str | None = None) -> str:
    payload = {"backend": backend_kind, "model": model_name, "messages": request.messages,
               "sampling": sampling.key(), "sample_index": request.sample_index}
    if identity is not None:  # local models: their weights' fingerprint and precision (`HFBackend.cache_identity`)
        payload["identity"] = identity
    if request.guide_messages is not None:  # RSD: the student's prompt decides which tokens it accepts
        payload["guide_messages"] = request.guide_messages
    if request.prefix is not None:  # a continuation of an answer already begun
        payload["prefix"] = request.prefix
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class Cache:
    """Completed calls by key. Safe to share between threads; each write is its own transaction."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable against process kills
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, backend TEXT, model TEXT, "
            "completion TEXT NOT NULL, created REAL)"
        )

    def get_many(self, keys: list[str]) -> dict[str, Completion]:
        return {key: Completion.from_dict(data) for key, data in self.get_many_json(keys).items()}

    def get_many_json(self, keys: list[str]) -> dict[str, Any]:
        """The stored JSON of each key found (completions, and other paid-for results such as scores)."""
        found: dict[str, Any] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for key, data in self._db.execute(f"SELECT key, completion FROM completions WHERE key IN ({marks})", chunk):
                    found[key] = json.loads(data)
        return found

    def put(self, key: str, backend_kind: str, model_name: str, completion: Completion) -> None:
        self.put_json(key, backend_kind, model_name, completion.to_dict())

    def put_json(self, key: str, backend_kind: str, model_name: str, value: Any) -> None:
        data = json.dumps(value, ensure_ascii=False)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO completions (key, backend, model, completion, created) VALUES (?, ?, ?, ?, ?)",
                (key, backend_kind, model_name, data, time.time()),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def cache_keys(backend: Any, requests: list[Request], sampling: Sampling) -> list[str]:
    """The cache key of each request to `backend` (which need not have loaded its model)."""
    identity = getattr(backend, "cache_identity", None)
    name = getattr(backend, "cache_name", backend.model_name)
    return [cache_key(backend.kind, name, request, sampling, identity) for request in requests]


def run_cached(
    backend: Any, requests: list[Request], sampling: Sampling, cache: Cache | None,
    on_result: Callable[[Request, Completion | Exception], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> tuple[list[str], dict[str, Completion | Exception], set[str]]:
    """Results for `requests`: cached ones read back, the rest made by `backend` and committed as each arrives.

    Returns (one key per request, result by key, keys served from the cache). `on_result` is called for
    each result made now and `on_start` with the number of cache hits before any call (both for progress
    displays); requests with the same key are made once.
    """
    keys = cache_keys(backend, requests, sampling)
    key_of = {id(request): key for request, key in zip(requests, keys)}  # backends hand back the same Request objects
    results: dict[str, Completion | Exception] = dict(cache.get_many(keys)) if cache is not None else {}
    hits = set(results)
    pending = {key: request for key, request in zip(keys, requests) if key not in results}
    if on_start is not None:
        on_start(len(requests) - len(pending))

    def done(request: Request, result: Completion | Exception) -> None:
        key = key_of[id(request)]
        results[key] = result
        if cache is not None and isinstance(result, Completion):
            cache.put(key, backend.kind, backend.model_name, result)
        if on_result is not None:
            on_result(request, result)

    try:
        backend.run(list(pending.values()), sampling, done)
    finally:
        backend.close()
    return keys, results, hits


def cached_count(path: Path, backend: Any, requests: list[Request], sampling: Sampling) -> int:
    """How many of `requests` the cache file at `path` already answers (0 when there is no such file); opens it only
    to read, for plans."""
    if not path.exists():
        return 0
    with Cache(path) as cache:
        return len(cache.get_many_json(cache_keys(backend, requests, sampling)))
