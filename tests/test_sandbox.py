"""The Python tool's sandbox: a model's code runs, and hostile code is contained and reported, never crashing or
stalling the caller."""

from __future__ import annotations

import os
import time

import pytest

from tutorlm.tools.sandbox import Limits, isolation, run_python

LIMITS = Limits(cpu_s=2, wall_s=5, memory_mb=512, output_bytes=1000, file_mb=4)


def run(code: str):
    started = time.perf_counter()
    result = run_python(code, LIMITS)
    assert time.perf_counter() - started < LIMITS.wall_s + 3  # nothing stalls the caller past the wall-clock limit
    return result


def test_code_runs_and_its_output_comes_back():
    result = run("import math\nprint(17 * 23, math.factorial(5))")
    assert result.ok and result.output == "391 120\n" and result.error is None
    assert result.text() == "391 120\n"


def test_an_exception_is_reported_by_its_last_line_after_the_output():
    result = run("print('so far')\nprint(1 / 0)")
    assert not result.ok and result.output == "so far\n" and result.error == "ZeroDivisionError: division by zero"
    assert result.text() == "so far\nZeroDivisionError: division by zero"


def test_an_infinite_loop_is_stopped_by_its_cpu_limit():
    result = run("while True: pass")
    assert not result.ok and result.error.startswith("timeout")


def test_sleeping_past_the_wall_clock_limit_is_stopped():
    result = run("import time\ntime.sleep(60)")
    assert not result.ok and result.error.startswith("timeout: still running")


def test_a_fork_bomb_starts_nothing():
    result = run("import os\nwhile True:\n    os.fork()")
    assert not result.ok and "os.fork is not allowed" in result.error
    result = run("import subprocess\nsubprocess.run(['sh', '-c', ':(){ :|:& };:'])")
    assert not result.ok and "subprocess.Popen is not allowed" in result.error


def test_allocating_20_gb_is_a_memory_error():
    result = run("blocks = bytearray(20 * 1024 ** 3)")
    assert not result.ok and result.error.startswith("memory")


def test_printing_100_mb_is_cut_and_reported():
    result = run("print('x' * (100 * 1024 ** 2))")
    assert not result.ok and result.error.startswith("output") and result.truncated
    assert len(result.output) == LIMITS.output_bytes


def test_files_outside_its_directory_cannot_be_read_or_written(tmp_path):
    secret = tmp_path / "run" / "traces.jsonl"
    secret.parent.mkdir()
    secret.write_text("a run's data")
    for code in (f"print(open({str(secret)!r}).read())", "print(open('/etc/passwd').read())",
                 f"open({str(tmp_path / 'x.txt')!r}, 'w').write('x')", f"import os\nprint(os.listdir({str(tmp_path)!r}))"):
        result = run(code)
        assert not result.ok and "no access" in result.error and "a run's data" not in result.output
    result = run("open('notes.txt', 'w').write('mine')\nprint(open('notes.txt').read())")  # its own directory is its own
    assert result.ok and result.output == "mine\n"


def test_the_code_cannot_read_the_callers_secrets(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-for-the-sandbox")
    result = run("import os\nprint(dict(os.environ))")
    assert result.ok and "sk-test" not in result.output and "OPENAI_API_KEY" not in result.output
    result = run(f"print(open('/proc/{os.getpid()}/environ').read())")
    assert not result.ok and "sk-test" not in result.output


def test_a_socket_cannot_be_opened():
    result = run("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)")
    assert not result.ok and "socket" in result.error and "not allowed" in result.error


def test_killing_its_parent_is_refused_and_the_caller_lives_on():
    result = run(f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)")
    assert not result.ok and "os.kill is not allowed" in result.error
    result = run("import os, signal\nos.killpg(0, signal.SIGKILL)")
    assert not result.ok


def test_sys_exit_and_deep_recursion_are_reported():
    result = run("import sys\nprint('partial')\nsys.exit(3)")
    assert not result.ok and result.output == "partial\n" and result.error == "exit status 3"
    result = run("def f(n):\n    return f(n + 1)\nf(0)")
    assert not result.ok and result.error.startswith("RecursionError")


@pytest.mark.skipif(isolation() != "namespaces", reason="this machine gives no network or PID namespace")
def test_with_namespaces_the_code_sees_no_network_and_no_other_process():
    # ctypes is refused, so ask the kernel through Python's own os module: in a new PID namespace its parent is 0
    result = run("import os\nprint(os.getpid(), os.getppid())")
    assert result.ok and result.output.split()[1] == "0"


def test_installed_pure_python_packages_import_but_not_the_callers_own_code():
    result = run("import fractions, rich\nprint(fractions.Fraction(1, 3) + fractions.Fraction(1, 6))")
    assert result.ok and result.output == "1/2\n"
    # an editable install is found through a .pth file, which the sandbox's Python never runs
    assert run("import tutorlm").error == "ModuleNotFoundError: No module named 'tutorlm'"
