"""benchmarks/method_race.py end to end on tiny models: every arm trains from one start for the same minutes, is
evaluated at its snapshots and at the end, and is compared with the SFT arm on the same questions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny import save_tiny_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # about 90 s of CPU: a dozen tutorlm processes
def test_the_race_runs_every_arm_for_the_same_minutes_and_writes_its_results(tmp_path):
    teacher = save_tiny_model(tmp_path / "teacher", seed=3)
    start = save_tiny_model(tmp_path / "start", seed=4)
    results = tmp_path / "race.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "method_race.py"), "--name", "tiny", "--task", "coin_flip",
               "--teacher", str(teacher), "--teacher-dtype", "float32", "--start", str(start), "--writer", "reference",
               "--minutes", "0.04", "--points", "2", "--arms", "sft,on_policy,grpo,slow_on_policy",
               "--variant", "slow_on_policy=on_policy,lr=1e-6,on_policy_samples=2", "--start-questions", "8",
               "--sft-questions", "16", "--test-limit", "4", "--generate-tokens", "16", "--eval-tokens", "8",
               "--batch-size", "4", "--train-batch-size", "4", "--sample-tokens", "8", "--lr", "3e-4", "--out", str(tmp_path / "runs"), "--results", str(results)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr[-3000:]
    testbed = json.loads(results.read_text())["testbeds"]["tiny"]
    assert [arm["arm"] for arm in testbed["arms"]] == ["sft", "on_policy", "grpo", "slow_on_policy"]
    variant = testbed["arms"][3]  # a remedy: on_policy's settings with its overrides, in its own run
    assert variant["settings"]["lr"] == 1e-6 and variant["settings"]["on_policy_samples"] == 2
    assert variant["settings"]["on_policy_loss"] == "sampled" and "vs_sft" in variant
    assert yaml.safe_load((tmp_path / "runs" / "tiny" / "slow_on_policy.yaml").read_text())["train"]["lr"] == 1e-6
    assert yaml.safe_load((tmp_path / "runs" / "tiny" / "on_policy.yaml").read_text())["train"]["lr"] == 3e-4  # --lr
    for arm in testbed["arms"]:
        assert arm["train_minutes"] >= 0.04 * 0.9 or arm["arm"] == "sft"  # each trained its minutes (sft: minus generation)
        # a snapshot mid-way and the final student (the snapshot taken as the minutes ran out is not evaluated twice);
        # sft's generation took its minutes down to a step, so it has the final point only
        assert len(arm["points"]) >= (1 if arm["arm"] == "sft" else 2) and arm["points"][-1]["questions"] == 4
        assert [p["minutes"] for p in arm["points"]] == sorted(set(p["minutes"] for p in arm["points"]))
    on_policy = testbed["arms"][1]
    assert on_policy["teacher_tokens"] > 0 and set(on_policy["vs_sft"]) >= {"difference", "difference_ci95", "p_not_better"}
    assert "vs_sft" not in testbed["arms"][0]
    assert (tmp_path / "method_race_tiny.png").exists()

    # the gradient noise of each arm's steps at the race's start (benchmarks/gradient_noise.py)
    noise = tmp_path / "noise.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "gradient_noise.py"), "--race", str(tmp_path / "runs" / "tiny"),
               "--arms", "sft,on_policy,grpo", "--batches", "2", "--results", str(noise)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr[-3000:]
    arms = {arm["arm"]: arm for arm in json.loads(noise.read_text())["arms"]}
    assert set(arms) == {"sft", "on_policy", "grpo"}
    assert arms["sft"]["batch_sequences"] == 4 and arms["on_policy"]["batch_sequences"] == 16  # 4 questions x 4 samples
    assert arms["sft"]["gradient_norm"] > 0 and -1 <= arms["sft"]["cosine"] <= 1 and arms["sft"]["seconds_per_batch"] > 0


@pytest.mark.parametrize("variant", ["nobase", "x=no_such_arm", "x=on_policy,lr"])
def test_a_malformed_variant_is_refused_before_anything_runs(tmp_path, variant):
    command = [sys.executable, str(ROOT / "benchmarks" / "method_race.py"), "--name", "tiny", "--task", "coin_flip",
               "--teacher", "t", "--start", "s", "--variant", variant, "--out", str(tmp_path / "runs"),
               "--results", str(tmp_path / "race.json")]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2 and "--variant" in finished.stderr and "NAME=ARM" in finished.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "race.json").exists()


def test_a_start_eval_that_does_not_match_the_race_is_refused_before_anything_runs(tmp_path):
    scored = tmp_path / "start.jsonl"
    scored.write_text("".join(json.dumps({"example_id": f"q{i}", "correct": i % 2 == 0}) + "\n" for i in range(3)))
    base = [sys.executable, str(ROOT / "benchmarks" / "method_race.py"), "--name", "tiny", "--task", "coin_flip",
            "--teacher", "t", "--start", "s", "--test-limit", "4", "--out", str(tmp_path / "runs"),
            "--results", str(tmp_path / "race.json")]
    for given, message in [(scored, "3 questions scored, the race tests 4"), (tmp_path / "missing.jsonl", "no such file"),
                           (tmp_path / "race_arm.json", "not an eval file")]:
        if given.name == "race_arm.json":
            given.write_text("{}\n")
        finished = subprocess.run([*base, "--start-eval", str(given)], capture_output=True, text=True, timeout=120)
        assert finished.returncode == 2 and message in finished.stderr, finished.stderr
        assert not (tmp_path / "runs").exists() and not (tmp_path / "race.json").exists()


def load_race():
    """benchmarks/method_race.py as a module (its helpers import `_common` from benchmarks/)."""
    import importlib.util

    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("method_race", ROOT / "benchmarks" / "method_race.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_later_sft_arm_pays_the_teachers_minutes_for_rationales_an_earlier_arm_had_written(tmp_path):
    race = load_race()
    recipe = {"generate": {"limit": 350, "max_tokens": 512}, "teacher": {"backend": "hf", "model": "t"},
              "train": {"objective": "sft", "lr": 2e-5}}
    assert race.paid_before(tmp_path, recipe) == (0.0, 0)  # nothing written before: the arm pays what it measures

    def finished(arm: str, minutes: float, tokens: int, **changes) -> None:
        (tmp_path / arm).mkdir()
        earlier = {**recipe, **changes}
        result = {"generate_minutes": minutes, "teacher_tokens": tokens}
        (tmp_path / arm / "race_arm.json").write_text(json.dumps({"recipe": earlier, "result": result}))

    finished("sft", 6.07, 15129)
    finished("sft_more", 9.0, 30000, generate={"limit": 400, "max_tokens": 512})  # other questions: not these rationales
    finished("kd", 7.0, 20000, train={"objective": "kd"})  # not an SFT arm: it wrote nothing
    later = {**recipe, "train": {"objective": "sft", "lr": 2e-6}}
    assert race.paid_before(tmp_path, later) == (6.07, 15129)


def test_each_arm_is_compared_with_the_sft_arm_at_its_own_learning_rate():
    race = load_race()
    args = type("Args", (), {"lr": 2e-5})()
    arms = [{"arm": "sft", "settings": {"objective": "sft"}},
            {"arm": "on_policy", "settings": {"objective": "on_policy"}},
            {"arm": "sft_slow", "settings": {"objective": "sft", "lr": 2e-6}},
            {"arm": "on_policy_slow", "settings": {"objective": "on_policy", "lr": 2e-6}},
            {"arm": "kd_other", "settings": {"objective": "kd", "lr": 1e-6}}]
    reference = {arm["arm"]: (race.sft_reference(arm, arms, args) or {}).get("arm") for arm in arms}
    assert reference == {"sft": None, "on_policy": "sft", "sft_slow": "sft", "on_policy_slow": "sft_slow", "kd_other": "sft"}
