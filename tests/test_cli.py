"""The `tutorlm` command through its installed entry point, as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

TUTORLM = shutil.which("tutorlm")
pytestmark = pytest.mark.skipif(TUTORLM is None, reason="the tutorlm entry point is not installed")


def tutorlm(*args, stdin=None):
    return subprocess.run([TUTORLM, *args], capture_output=True, text=True, input=stdin, timeout=120,
                          env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})


def test_help_everywhere():
    for args in (["--help"], ["tasks", "--help"], ["tasks", "show", "--help"], ["verify", "--help"], ["doctor", "--help"]):
        result = tutorlm(*args)
        assert result.returncode == 0 and "usage: tutorlm" in result.stdout
    assert "--task.options" in tutorlm("tasks", "show", "--help").stdout


def test_tasks_list_names_every_task():
    from tutorlm.tasks import GENERATORS

    result = tutorlm("tasks", "list")
    assert result.returncode == 0
    for name in GENERATORS:
        assert name in result.stdout


def test_tasks_show_prints_reference_solution():
    result = tutorlm("tasks", "show", "last_letters", "--n", "2", "--split", "test")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Reference solution (verifies)") == 2
    assert "The answer is" in result.stdout and "[test]" in result.stdout


def test_tasks_export_round_trips_through_the_file_loader(tmp_path):
    out = tmp_path / "test.jsonl"
    result = tutorlm("tasks", "export", "arithmetic", "--split", "test", "--n", "25", "--out", str(out),
                     "--task.options.digits", "2", "--with-prompt")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 25 and rows[0]["prompt"][-1]["role"] == "user"
    from tutorlm.config import TaskConfig
    from tutorlm.tasks import load_task

    task = load_task(TaskConfig(source=str(out), splits={"test": str(out)}))
    assert [e.answer for e in task.examples("test")] == [row["answer"] for row in rows]
    assert [e.id for e in task.examples("test")] == [row["id"] for row in rows]


def test_verify_verdicts_and_exit_codes():
    right = tutorlm("verify", "--gold", "42", "So 40 + 2. The answer is 42.")
    assert right.returncode == 0 and "correct" in right.stdout and "'42'" in right.stdout
    wrong = tutorlm("verify", "--gold", "41", "The answer is 42.")
    assert wrong.returncode == 1 and "wrong" in wrong.stdout
    as_json = tutorlm("verify", "--gold", "B", "--choices", "red", "blue", "--json", "-", stdin="It is (B) blue.")
    assert json.loads(as_json.stdout) == {"extracted": "B", "correct": True, "reason": "correct", "answer_type": "choice"}


def test_doctor_reports_torch_and_extras():
    result = tutorlm("doctor")
    assert result.returncode == 0
    assert "torch" in result.stdout and "math-verify" in result.stdout and "works" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [(["tasks", "show", "nope"], "unknown task 'nope'"),
     (["tasks", "show", "coin_flip", "--task.options.people", "3"], "no setting 'people'"),
     (["tasks", "show", "coin_flip", "--task.sed", "3"], "did you mean --task.seed"),
     (["tasks", "export", "/no/such.jsonl", "--out", "x.jsonl"], "no such file"),
     (["eval", "--model", "student=/no/such/student", "--eval.limit", "1", "--out", "{tmp}/run"], "no such model directory"),
     (["eval", "--model", "student=./missing", "--eval.limit", "1", "--out", "{tmp}/run"], "no such model directory"),
     (["generate", "--teacher.backend", "hf", "--generate.limit", "1", "--out", "{tmp}/run"], "set teacher.model"),
     (["generate", "--teacher.backend", "openai", "--teacher.model", "m", "--generate.limit", "1", "--out", "{tmp}/run"],
      "set teacher.base_url")],
)
def test_bad_input_exits_2_with_one_clear_line(args, message, tmp_path):
    result = tutorlm(*[arg.replace("{tmp}", str(tmp_path)) for arg in args])
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_bad_data_file_names_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "1"}\nnot json\n')
    result = tutorlm("tasks", "show", str(path), "--split", "train")
    assert result.returncode == 2 and "bad.jsonl:2: invalid JSON" in result.stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_hub_dataset_offline_fails_clearly():
    # HF_HUB_OFFLINE is read when `datasets` is imported, so this runs in a fresh process (see tutorlm()).
    result = tutorlm("tasks", "show", "hf:nobody/nothing")
    assert result.returncode == 2
    assert "could not load hub dataset 'nobody/nothing'" in result.stderr and "save_to_disk" in result.stderr


def test_eval_without_a_run_directory_gets_its_own(tmp_path):
    result = subprocess.run([TUTORLM, "eval", "--model", "reference", "--task.source", "deduction", "--eval.limit", "3"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TUTORLM_CACHE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / "runs" / "eval-deduction" / "eval" / "reference.jsonl").read_text().splitlines()) == 3
    assert "100.0%" in result.stderr and "evaluation: deduction, test split" in result.stderr  # the table names what was evaluated
    assert not (tmp_path / "runs" / "default").exists()
