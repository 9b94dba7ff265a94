"""Chained runs: a run's student as another run's teacher, the earlier recipe run first (run.requires)."""

from __future__ import annotations

import io
import json
import os

import pytest
import yaml
from rich.console import Console
from tiny import save_tiny_model

from tutorlm.config import ConfigError
from tutorlm.pipeline import dry_run, run_pipeline
from tutorlm.recipe_io import load_recipe

QUIET = Console(file=open(os.devnull, "w"))


def write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_run_whose_mentor_is_another_runs_student_runs_that_recipe_first_once(tmp_path):
    # Mentor-KD's shape: the first run's student (the mentor) writes rationales next to the teacher's
    model = str(save_tiny_model(tmp_path / "tiny"))
    common = {"task": {"source": "coin_flip", "options": {"num_people": 2}},
              "student": {"model": model},
              "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-3, "eval_fraction": 0.25, "eval_every": 2, "save_every": 2},
              "eval": {"limit": 4, "max_tokens": 8, "batch_size": 4}}
    first = write(tmp_path / "first.yaml", {**common, "run": {"name": "first", "output_dir": str(tmp_path)},
                                            "generate": {"limit": 8, "cache_path": str(tmp_path / "cache.sqlite")}})
    second = write(tmp_path / "second.yaml", {
        **common, "run": {"name": "second", "output_dir": str(tmp_path), "requires": [str(first)]},
        "teachers": [{"name": "mentor", "backend": "hf", "model": str(tmp_path / "first" / "student"), "batch_size": 4},
                     {"name": "teacher", "backend": "reference"}],
        "generate": {"limit": 4, "max_tokens": 8, "cache_path": str(tmp_path / "cache.sqlite")}})
    console = Console(file=io.StringIO(), width=300)
    dry_run(load_recipe(second), console=console)  # the plan of what runs first, and nothing run
    assert f"requires {first}: {tmp_path / 'first' / 'student'} is not there yet" in console.file.getvalue()
    assert not (tmp_path / "first").exists()
    run_pipeline(load_recipe(second), console=QUIET)
    assert (tmp_path / "first" / "student" / "model.safetensors").exists()
    rows = [json.loads(line) for line in (tmp_path / "second" / "traces.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {row["model"] for row in rows if row["teacher"] == "mentor"} == {str(tmp_path / "first" / "student")}
    summary = json.loads((tmp_path / "second" / "eval" / "summary.json").read_text())
    assert set(summary) == {"base", "student", "teacher"} and summary["teacher"]["accuracy"] == 1.0  # the last teacher

    started = json.loads((tmp_path / "first" / "manifest.json").read_text())["stages"]["train"]["started"]
    console = Console(file=io.StringIO(), width=300)
    run_pipeline(load_recipe(second), console=console)
    assert f"requires {first}: its student is in" in console.file.getvalue()
    assert json.loads((tmp_path / "first" / "manifest.json").read_text())["stages"]["train"]["started"] == started


def test_a_recipe_that_requires_itself_is_refused(tmp_path):
    one, other = tmp_path / "one.yaml", tmp_path / "other.yaml"
    write(one, {"run": {"name": "one", "output_dir": str(tmp_path), "requires": [str(other)]}})
    write(other, {"run": {"name": "other", "output_dir": str(tmp_path), "requires": [str(one)]}})
    with pytest.raises(ConfigError, match="requires itself"):
        run_pipeline(load_recipe(one), console=QUIET)
    with pytest.raises(ConfigError, match="no such recipe file"):
        run_pipeline(load_recipe(write(tmp_path / "x.yaml", {"run": {"name": "x", "requires": ["nope"]}})), console=QUIET)
