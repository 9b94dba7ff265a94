"""The run directory's manifest: stage records, skipping decisions, failures, atomic writes."""

from __future__ import annotations

import json

import pytest

from tutorlm.config import TaskConfig
from tutorlm.errors import TutorlmError
from tutorlm.run import RunDir, atomic_write_text


def run_stage(run, config, inputs, content="out"):
    with run.record("generate", config, inputs) as result:
        output = run.path / "traces.jsonl"
        atomic_write_text(output, content)
        result["outputs"].append(output)
        result["stats"]["calls"] = 3


def test_record_then_current_then_stale(tmp_path):
    run = RunDir(tmp_path / "run")
    data = tmp_path / "in.jsonl"
    data.write_text("a")
    config = TaskConfig()
    assert not run.is_current("generate", config, {"data": data})
    run_stage(run, config, {"data": data})
    record = run.stage("generate")
    assert record["status"] == "done" and record["stats"] == {"calls": 3} and "traces.jsonl" in record["outputs"]
    assert run.is_current("generate", config, {"data": data})
    # A different config, a changed input, or an edited output each make the stage stale.
    assert not run.is_current("generate", TaskConfig(seed=1), {"data": data})
    data.write_text("b")
    assert not run.is_current("generate", config, {"data": data})
    data.write_text("a")
    (run.path / "traces.jsonl").write_text("edited")
    assert not run.is_current("generate", config, {"data": data})


def test_manifest_records_environment_and_failures(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(RuntimeError):
        with run.record("curate", TaskConfig(), {}):
            raise RuntimeError("boom")
    manifest = json.loads(run.manifest_path.read_text())
    assert manifest["stages"]["curate"]["status"] == "failed"
    assert "boom" in manifest["stages"]["curate"]["error"]
    assert "torch" in manifest["environment"]["packages"]
    assert manifest["environment"]["python"]
    assert not run.is_current("curate", TaskConfig(), {})


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "sub" / "file.json"
    atomic_write_text(path, "1")
    atomic_write_text(path, "2")
    assert path.read_text() == "2"
    assert [p.name for p in path.parent.iterdir()] == ["file.json"]


def test_corrupt_manifest_is_a_clear_error(tmp_path):
    run = RunDir(tmp_path)
    run.manifest_path.write_text("{not json")
    with pytest.raises(TutorlmError, match="manifest.json: not valid JSON"):
        run.manifest()
