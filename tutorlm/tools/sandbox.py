"""Run a model's Python in a sandbox: a separate process with limits, no network, no secrets, no files but its own.

    from tutorlm.tools.sandbox import Limits, run_python
    result = run_python("print(17 * 23)")            # Result(output='391\\n', ok=True, error=None, ...)
    result = run_python("while True: pass")          # ok=False, error='timeout: ... CPU seconds'

What contains the code, from the outside in:
- **Namespaces** (where the kernel allows them: as root, or with unprivileged user namespaces): `unshare` gives the
  process a network namespace with no interface up (no network at all) and a PID namespace (it sees no other
  process, cannot signal its parent, and every process it starts dies with it).
- **Resource limits** (setrlimit): CPU seconds, address space (memory), file size (which also caps its output: stdout
  and stderr go to files in its directory), open files, no core dumps; and a wall-clock limit after which its whole
  process group is killed.
- **An empty environment** (no API keys, no PATH), Python's isolated mode (`-I`: no PYTHON* variables, no user site;
  `-S`: no `site` module, the caller's site-packages put on the path without running their .pth files),
  and a fresh empty temporary directory as its working directory, removed afterwards.
- **Audit hooks** (PEP 578), installed before the code runs and impossible to remove: opening a file outside its
  directory is refused (except reading Python's own library), and so are sockets, starting processes (fork, exec,
  subprocess, os.system), sending signals, loading native code through ctypes, and listing or changing directories
  outside its own.

What it does not contain: the audit hooks are a Python-level guard against a model's mistakes, not a security boundary
against a determined attacker (a C extension already importable could bypass them), and without namespaces (no root
and no user namespaces) the code could open network connections and see other processes if it got past the hooks.
`isolation()` says which layers this machine gives. Run untrusted code from people, not models, in a container or VM.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# Runs first in the sandboxed interpreter: the audit hook, then the model's code from main.py, with its errors reported
# as the traceback's last line on stderr (the exit status tells an exception, 1, from sys.exit(n), n).
RUNNER = r'''
import os, sys
sys.path.extend(sys.argv[1:])  # the caller's site-packages: started with -S, Python skips `site` (30 ms of .pth files)
_home = os.path.realpath(os.getcwd())
_read_roots = tuple({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                                                   *sys.argv[1:])})
_blocked = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
            "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
            "os.kill", "os.killpg", "signal.pthread_kill", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata",
            "os.chroot", "os.setuid", "pty.spawn"}
_looks = {"os.listdir", "os.scandir", "glob.glob"}  # reading a directory: its own, or Python's library (imports do)
_changes = {"os.chdir", "os.mkdir", "os.remove", "os.rmdir", "os.rename", "os.chmod", "os.chown", "os.link", "os.symlink",
            "os.truncate", "os.utime", "shutil.rmtree", "shutil.copyfile"}

def _inside(path, roots):
    if isinstance(path, int):
        return True  # an open file descriptor: it was opened through this guard
    path = os.path.realpath(os.fsdecode(path) if path else ".")
    return any(path == root or path.startswith(root + os.sep) for root in roots)

def _guard(event, args):
    if event in _blocked:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        writes = (flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC) or (
            isinstance(mode, str) and any(c in mode for c in "wax+"))
        if not _inside(path, (_home,)) and (writes or not _inside(path, _read_roots)):
            raise PermissionError(f"sandbox: no access to {os.fsdecode(path)!s} (only the working directory)")
    elif event in _looks or event in _changes:
        roots = (_home,) if event in _changes else (_home, *_read_roots)
        for path in args[:2]:
            if isinstance(path, (str, bytes, os.PathLike)) and not _inside(path, roots):
                raise PermissionError(f"sandbox: no access to {os.fsdecode(path)!s} (only the working directory)")

sys.addaudithook(_guard)
sys.setrecursionlimit(2000)
_source = open("main.py", encoding="utf-8").read()
try:
    exec(compile(_source, "main.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
except SystemExit as _exit:
    sys.stdout.flush()
    raise
except BaseException as _error:
    sys.stdout.flush()
    print(f"{type(_error).__name__}: {_error}", file=sys.stderr)
    sys.exit(1)
'''


@dataclass(frozen=True)
class Limits:
    """What one run of a code block may use."""

    cpu_s: int = 5  # CPU seconds (RLIMIT_CPU)
    wall_s: float = 10.0  # seconds on the clock, after which the process group is killed
    memory_mb: int = 1024  # address space (RLIMIT_AS)
    output_bytes: int = 4096  # of stdout kept in the result (the rest is cut, and said so)
    file_mb: int = 16  # largest file it may write, its output included (RLIMIT_FSIZE)
    open_files: int = 64


@dataclass
class Result:
    """What a code block did: its stdout, or why it failed."""

    output: str  # stdout, cut at Limits.output_bytes
    ok: bool  # ran to the end (exit status 0) within the limits
    error: str | None  # the exception's last line, "timeout: ...", "memory: ...", "exit status N", ...
    seconds: float
    truncated: bool  # stdout was longer than Limits.output_bytes

    def text(self) -> str:
        """What the model sees after its code block: its output, or the error."""
        if self.ok:
            return self.output + ("\n[output cut]" if self.truncated else "")
        output = self.output if not self.output or self.output.endswith("\n") else self.output + "\n"
        return output + (self.error or "failed")


@lru_cache(maxsize=1)
def isolation() -> str:
    """'namespaces' when this machine lets `unshare` give a process its own network and PID namespaces (as root, or
    with unprivileged user namespaces), else 'limits only'."""
    return "namespaces" if _prefix() else "limits only"


def _unshare_prefixes() -> list[list[str]]:
    unshare = shutil.which("unshare", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if unshare is None:
        return []
    common = ["--net", "--pid", "--fork", "--kill-child"]
    return [[unshare, *common]] if os.geteuid() == 0 else [[unshare, "--user", "--map-root-user", *common]]


@lru_cache(maxsize=1)
def _prefix() -> tuple[str, ...]:
    """The command that puts the process in its namespaces, the first of those this machine allows."""
    for prefix in _unshare_prefixes():
        try:
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0:
                return tuple(prefix)
        except (OSError, subprocess.TimeoutExpired):
            continue
    return ()


@lru_cache(maxsize=1)
def _site_packages() -> tuple[str, ...]:
    """This interpreter's site-packages directories (their .pth files are not run: an editable install's finder and
    the like stay out of the sandbox)."""
    import site

    return tuple(path for path in site.getsitepackages() if os.path.isdir(path))


def _limit(limits: Limits):
    def apply() -> None:  # in the child, before it executes Python
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        memory = limits.memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        size = limits.file_mb << 20
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the size limit fails (EFBIG) instead of killing

    return apply


def _wait(process: subprocess.Popen, wall_s: float) -> tuple[int, float, bool]:
    """(exit status, CPU seconds used by it and what it waited for, whether the wall-clock limit killed it)."""
    deadline = time.perf_counter() + wall_s
    timed_out = False
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline and not timed_out:
            timed_out = True
            os.killpg(process.pid, signal.SIGKILL)  # the namespace's processes die with their first
        time.sleep(0.005)
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    return process.returncode, usage.ru_utime + usage.ru_stime, timed_out


def run_python(code: str, limits: Limits = Limits()) -> Result:
    """Run `code` (a model's Python block) in a fresh sandboxed interpreter; never raises for what the code does."""
    base = Path(tempfile.mkdtemp(prefix="tutorlm-tool-"))
    home = base / "work"  # the code's directory; its stdout and stderr files lie beside it, out of its reach
    home.mkdir()
    started = time.perf_counter()
    try:
        (home / "main.py").write_text(code, encoding="utf-8")
        with open(base / "stdout", "wb") as stdout, open(base / "stderr", "wb") as stderr:
            command = [*_prefix(), sys.executable, "-I", "-S", "-c", RUNNER, *_site_packages()]
            process = subprocess.Popen(command, cwd=home, env={}, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                       preexec_fn=_limit(limits), start_new_session=True)
            status, cpu_s, timed_out = _wait(process, limits.wall_s)
        seconds = time.perf_counter() - started
        raw = (base / "stdout").read_bytes()
        truncated = len(raw) > limits.output_bytes
        output = raw[: limits.output_bytes].decode("utf-8", errors="replace")
        errors = (base / "stderr").read_bytes()[-4096:].decode("utf-8", errors="replace").strip().splitlines()
        last = errors[-1] if errors else ""
        if timed_out:
            return Result(output, False, f"timeout: still running after {limits.wall_s:g} s on the clock", seconds, truncated)
        if status == 0:
            return Result(output, True, None, seconds, truncated)
        # what the code reported itself first: a write past the size limit or an allocation past the memory limit can
        # also have used up the CPU seconds on the way (on a loaded machine, writing 100 MB does)
        if "File too large" in last:
            return Result(output, False, f"output: over {limits.file_mb} MB written", seconds, truncated)
        if last.startswith("MemoryError"):
            return Result(output, False, f"memory: over {limits.memory_mb} MB", seconds, truncated)
        if cpu_s >= limits.cpu_s - 0.05:  # RLIMIT_CPU stopped it (SIGXCPU, then SIGKILL)
            return Result(output, False, f"timeout: used its {limits.cpu_s} CPU seconds", seconds, truncated)
        if status < 0:
            return Result(output, False, f"killed by signal {signal.Signals(-status).name}", seconds, truncated)
        return Result(output, False, last if last and status == 1 else f"exit status {status}", seconds, truncated)
    finally:
        shutil.rmtree(base, ignore_errors=True)
