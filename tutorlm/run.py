"""The run directory and its manifest: what each stage was given, what it wrote, and when.

    runs/<name>/
      manifest.json    {"environment": {...}, "stages": {"generate": {config, config_hash, inputs, outputs, stats, ...}}}
      traces.jsonl, curated.jsonl, student/, eval/, report.html ...

A stage is current when its config hash and the hashes of its input files are the ones the manifest
recorded, and its output files still have the hashes recorded for them; then it can be skipped.
Every write goes through a temporary file and `os.replace`, so a crash never leaves half a manifest.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from tutorlm.config import config_hash, to_dict
from tutorlm.errors import DataError, RunDirError

STAGES = ("generate", "curate", "train", "eval", "report")  # in the order `tutorlm run` runs them

# The run directory's files, by the stage that writes them (stages never import each other; they share these).
MANIFEST = "manifest.json"
TRACES = "traces.jsonl"
FAILURES = "generate_failures.jsonl"
UNANSWERED = "generate_unanswered.jsonl"  # requests the teacher can never answer (backends.base.Unanswerable)
PARTIAL = "traces.partial.jsonl"  # rows as they arrive, for a look at a run still going; gone once traces.jsonl is written
CURATED = "curated.jsonl"
PAIRS = "pairs.jsonl"
EVAL_DIR = "eval"
SUMMARY = "summary.json"
ESCALATION = "escalation.json"
ROUNDS_DIR = "rounds"  # the self-improvement rounds' run directories, round-1, round-2, ...
ROUNDS = "rounds.json"  # their summary
# curate's funnel, as its manifest stats record it: what each filter removed, in order
FUNNEL = ("generated", "truncated", "tool_error", "tool_timeout", "no_answer", "wrong", "wrong_step", "duplicate", "too_long", "not_shortest", "not_student_fit",
          "over_cap", "kept")
_PACKAGES = ("tutorlm", "torch", "transformers", "tokenizers", "peft", "accelerate", "math-verify", "datasets")


@dataclass
class StagePlan:
    """What a stage would do if `tutorlm run` ran now: each stage's `plan_stage(recipe)` says it, and the dry run
    prints one row per stage. Nothing runs and no teacher is called to make it."""

    stage: str
    status: str  # run, skip (current), resume from step-N, ...
    what: str


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file of the run directory; a bad line is a DataError naming the file and line."""
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: invalid JSON ({error.msg})") from None
    return rows


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def file_hash(path: Path) -> str:
    """sha256 of a file, or of a directory's files (names and contents, in sorted order)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


@functools.cache
def environment() -> dict[str, Any]:
    """Python, platform, package versions and git revision, for the manifest."""
    versions = {}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        revision = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions, "git_revision": revision}


class RunDir:
    """One run's directory and manifest."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"stages": {}}
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise RunDirError(f"{self.manifest_path}: not valid JSON ({error}); move it away to start the run afresh") from None

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    def stage(self, name: str) -> dict[str, Any] | None:
        return self.manifest()["stages"].get(name)

    def is_current(self, name: str, config: Any, inputs: dict[str, Path]) -> bool:
        """Whether stage `name` finished with this config and these inputs, and its outputs are unchanged."""
        record = self.stage(name)
        if not record or record.get("status") != "done" or record["config_hash"] != config_hash(config):
            return False
        if record["inputs"] != {key: file_hash(path) for key, path in inputs.items()}:
            return False
        return all(
            (self.path / relative).exists() and file_hash(self.path / relative) == digest
            for relative, digest in record["outputs"].items()
        )

    @contextmanager
    def record(self, name: str, config: Any, inputs: dict[str, Path], resolved: Any = None) -> Iterator[dict[str, Any]]:
        """Run a stage inside this context; yields a dict the stage fills with `outputs` (paths) and `stats`.

        A stage that finished but left work undone sets `status` to "incomplete", so a rerun is not skipped.
        `config` decides whether the stage is current; `resolved` (default: `config`) is the full
        configuration saved for the record, operational settings included.

        On success the stage is recorded as done with hashes of its inputs and outputs; on an error it is
        recorded as failed (with the error) and the error propagates.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        result: dict[str, Any] = {"outputs": [], "stats": {}}
        started = time.time()
        input_hashes = {key: file_hash(path) for key, path in inputs.items()}
        record: dict[str, Any] = {
            "config": to_dict(resolved if resolved is not None else config), "config_hash": config_hash(config), "inputs": input_hashes,
            "started": started, "status": "running", "outputs": {}, "stats": {},
        }
        self._update(name, record)
        try:
            yield result
        except BaseException as error:
            record.update(status="failed", error=f"{type(error).__name__}: {error}", finished=time.time(), stats=result["stats"])
            self._update(name, record)
            raise
        record.update(
            status=result.get("status", "done"), finished=time.time(), seconds=round(time.time() - started, 3), stats=result["stats"],
            outputs={str(Path(p).relative_to(self.path)): file_hash(Path(p)) for p in result["outputs"]},
        )
        self._update(name, record)

    @contextmanager
    def lock(self, what: str) -> Iterator[None]:
        """Hold the run directory for a stage that pays for calls (generate, eval): a second process that tries
        while the first holds it is refused at once, so no call is paid for twice. The lock is the kernel's
        (flock), so it is released when the holder exits, even after kill -9. A run directory this lock made and
        nothing else wrote to (the stage failed on bad input before writing) is removed again."""
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        handle = (self.path / ".lock").open("a+")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise RunDirError(
                    f"{self.path}: {holder} is working in this run directory; wait for it to finish (or stop it) "
                    f"before running {what} here"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"tutorlm {what} (pid {os.getpid()})")
            handle.flush()
            yield
        finally:
            if created and [entry.name for entry in self.path.iterdir()] == [".lock"]:
                (self.path / ".lock").unlink()  # still held: no other process can have taken it
                self.path.rmdir()
            handle.close()

    def _update(self, name: str, record: dict[str, Any]) -> None:
        manifest = self.manifest()
        manifest["environment"] = environment()
        manifest["stages"][name] = record
        self._write_manifest(manifest)
