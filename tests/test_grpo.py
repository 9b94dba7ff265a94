"""GRPO (reinforcement learning from the verifier) on tiny models built in the test, and its loss functions
against hand-computed values and plain autograd."""

from __future__ import annotations

import contextlib
import json
import os
import statistics

import pytest
import torch
from rich.console import Console
from tiny import make_model, make_run, make_tokenizer, prepared, save_tiny_model

from tutorlm.config import TrainConfig
from tutorlm.errors import PreflightError
from tutorlm.train.grpo import GRPO
from tutorlm.train.loop import train
from tutorlm.train.losses import clipped_surrogate, group_advantages, k3_kl
from tutorlm.train.rollout import FLOAT32_ROUND_ROWS

QUIET = Console(file=open(os.devnull, "w"))


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


# ---------------------------------------------------------------------------------------------------
# Loss functions against hand-computed values
# ---------------------------------------------------------------------------------------------------


def test_group_advantages_against_hand_computed_values():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 2.0])
    none = group_advantages(rewards, 4, "none")
    assert none.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, -0.5, -0.5, -0.5, 1.5])
    group = group_advantages(rewards, 4, "group")
    first, third = statistics.stdev([1, 0, 0, 1]), statistics.stdev([0, 0, 0, 2])
    assert group.tolist() == pytest.approx([0.5 / (first + 1e-4), -0.5 / (first + 1e-4), -0.5 / (first + 1e-4),
                                            0.5 / (first + 1e-4), 0, 0, 0, 0, -0.5 / (third + 1e-4), -0.5 / (third + 1e-4),
                                            -0.5 / (third + 1e-4), 1.5 / (third + 1e-4)])
    whole = statistics.stdev(rewards.tolist())
    assert group_advantages(rewards, 4, "batch").tolist() == pytest.approx([value / (whole + 1e-4) for value in none.tolist()])
    # A batch whose rewards are all equal: zeros under every scale, never NaN.
    for scale in ("group", "batch", "none"):
        assert group_advantages(torch.ones(8), 4, scale).tolist() == [0.0] * 8


def test_clipped_surrogate_values_and_its_gradient_weight_match_autograd():
    logprobs = torch.tensor([-1.0, -1.0, -1.0, -1.0, -2.0, -0.5], requires_grad=True)
    old = torch.tensor([-1.0, -1.5, -0.5, -1.5, -1.6, -0.2])  # ratios 1, e^.5, e^-.5, e^.5, e^-.4, e^-.3
    advantages = torch.tensor([1.0, 1.0, 1.0, -1.0, -2.0, 0.5])
    loss, weight, clipped = clipped_surrogate(logprobs, old, advantages, eps_low=0.2, eps_high=0.28)
    ratio = torch.exp(logprobs.detach() - old)
    by_hand = []
    for r, a in zip(ratio.tolist(), advantages.tolist()):
        by_hand.append(-min(r * a, min(max(r, 0.8), 1.28) * a))
    assert loss.tolist() == pytest.approx(by_hand)
    # token 1: A > 0 and ratio 1.65 > 1.28: clipped; token 4: A < 0 and ratio 0.67 < 0.8: clipped
    assert clipped.tolist() == [False, True, False, False, True, False]
    plain = -torch.minimum(torch.exp(logprobs - old) * advantages, torch.clamp(torch.exp(logprobs - old), 0.8, 1.28) * advantages)
    (gradient,) = torch.autograd.grad(plain.sum(), logprobs)
    assert (-gradient).tolist() == pytest.approx(weight.tolist(), abs=1e-6)


def test_k3_kl_is_zero_at_the_reference_and_its_weight_is_the_gradient():
    logprobs = torch.tensor([-1.0, -2.0, -0.1], requires_grad=True)
    reference = torch.tensor([-1.0, -1.0, -3.0])
    value, weight = k3_kl(logprobs, reference)
    assert value[0].item() == 0.0 and (value >= 0).all()
    assert value[1].item() == pytest.approx(torch.e - 1 - 1)  # exp(1) - 1 - 1
    (gradient,) = torch.autograd.grad((torch.exp(reference - logprobs) - (reference - logprobs) - 1).sum(), logprobs)
    assert (-gradient).tolist() == pytest.approx(weight.tolist())


# ---------------------------------------------------------------------------------------------------
# The objective on tiny models
# ---------------------------------------------------------------------------------------------------


def objective_for(recipe, tokenizer, student):
    return prepared(GRPO, recipe, tokenizer, student)


def fixed_batch(objective, examples, advantages):
    """Two questions x two completions, as if sampled, with the given advantages."""
    prompts, completions = [], []
    for example in examples[:2]:
        start = next(i for i, label in enumerate(example.labels) if label != -100)
        for begin, end in ((start, start + 3), (start + 3, start + 7)):  # no token in common
            prompts.append(example.input_ids[:start])
            completions.append(example.input_ids[begin:end])
    objective.batch = {"prompts": prompts, "completions": completions, "advantages": advantages, "old_logprobs": None,
                       "uses": 0}
    return prompts, completions


def plain_logprobs(model, prompts, completions, temperature=1.0):
    values = []
    for prompt, completion in zip(prompts, completions):
        logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1:-1].float() / temperature
        values.append(logits.log_softmax(-1).gather(1, torch.tensor(completion)[:, None])[:, 0])
    return values


@pytest.mark.parametrize("aggregation,temperature", [("token", 1.0), ("sequence", 1.0), ("token", 0.3)])
def test_the_loss_has_the_gradient_of_the_plain_policy_gradient(tmp_path, tokenizer, aggregation, temperature):
    """At the sampling temperature T: the policy is softmax(z / T), so its log-probs and gradient are taken there."""
    recipe = make_run(tmp_path, objective="grpo", grpo_group_size=2, grpo_loss_aggregation=aggregation,
                      grpo_temperature=temperature)
    student = make_model(tokenizer, seed=1)
    objective, examples = objective_for(recipe, tokenizer, student)
    advantages = [0.7, -0.7, 1.0, -1.0]
    prompts, completions = fixed_batch(objective, examples, advantages)
    loss, count = objective.loss(student, {"input_ids": torch.zeros(1, 1, dtype=torch.long)})
    loss.backward()
    ours = {name: p.grad.clone() for name, p in student.named_parameters()}
    assert count == 14 and loss.item() == pytest.approx(-(0.7 * 3 - 0.7 * 4 + 3 - 4) / 14 if aggregation == "token" else 0.0, abs=1e-6)

    student.zero_grad()
    logprobs = plain_logprobs(student, prompts, completions, temperature)
    assert objective.batch["old_logprobs"] == pytest.approx(torch.cat(logprobs).tolist(), abs=1e-5)
    if aggregation == "token":  # ratio 1 (mu = 1): -(1/N) sum_t A_t ratio_t
        plain = -sum((a * torch.exp(l - l.detach())).sum() for a, l in zip(advantages, logprobs)) / 14
    else:
        plain = -sum((a * torch.exp(l - l.detach())).mean() for a, l in zip(advantages, logprobs)) / 4
    plain.backward()
    for name, p in student.named_parameters():
        assert torch.allclose(ours[name], p.grad, atol=1e-6), name


def test_a_step_raises_the_log_probability_of_rewarded_samples(tmp_path, tokenizer):
    recipe = make_run(tmp_path, objective="grpo", grpo_group_size=2)
    student = make_model(tokenizer, seed=2)
    objective, examples = objective_for(recipe, tokenizer, student)
    prompts, completions = fixed_batch(objective, examples, [])
    prompts, completions = prompts[:2], completions[:2]  # one question's group: the first sample right, the second wrong
    advantages = group_advantages(torch.tensor([1.0, 0.0]), 2, "group").tolist()
    objective.batch.update(prompts=prompts, completions=completions, advantages=advantages)
    with torch.no_grad():
        before = [float(l.sum()) for l in plain_logprobs(student, prompts, completions)]
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05)
    loss, _ = objective.loss(student, {"input_ids": torch.zeros(1, 1, dtype=torch.long)})
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = [float(l.sum()) for l in plain_logprobs(student, prompts, completions)]
    assert after[0] > before[0] and after[1] < before[1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 sampling is the GPU's; a CPU samples in float32")
def test_sampling_in_bf16_casts_each_weight_once_per_round(tmp_path, tokenizer):
    """Under bf16 training the model's forward runs in autocast (accelerate wraps it); on a GPU a sampling round inside
    the loop's own autocast context reuses one bf16 cast of each weight instead of casting every weight per token."""
    import random

    from torch.utils._python_dispatch import TorchDispatchMode
    recipe = make_run(tmp_path, objective="grpo", grpo_group_size=2, grpo_max_tokens=12)
    student = make_model(tokenizer, seed=3).cuda()
    objective, examples = objective_for(recipe, tokenizer, student)
    student.forward = torch.autocast("cuda", dtype=torch.bfloat16)(student.forward)  # as accelerate's bf16 does
    weights = {tuple(p.shape) for p in student.parameters() if p.dim() == 2}

    class WeightCasts(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if (func in (torch.ops.aten._to_copy.default, torch.ops.aten.to.dtype) and out.dtype == torch.bfloat16
                    and args[0].dtype == torch.float32 and tuple(args[0].shape) in weights):
                WeightCasts.count += 1
            return out

    prompts = [example.input_ids[: next(i for i, label in enumerate(example.labels) if label != -100)]
               for example in examples[:2]]
    sampled = {}
    for name, context in (("per forward", contextlib.nullcontext), ("per round", objective.autocast)):
        if name == "per round":
            objective.autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)
        WeightCasts.count = 0
        with WeightCasts():
            groups = objective.sample_groups(student, prompts, random.Random(0))
        sampled[name] = ([group["completions"] for group in groups], WeightCasts.count)
    parameters = sum(1 for p in student.parameters() if p.dim() == 2)
    assert sampled["per round"][0] == sampled["per forward"][0]  # the same bf16 casts, so the same samples
    assert 0 < sampled["per round"][1] <= parameters < sampled["per forward"][1]


def test_under_bf16_training_a_cpu_samples_in_float32_and_the_forward_keeps_its_autocast(tmp_path, tokenizer):
    """accelerate's bf16 wraps the model's forward in autocast; a sampling round on a CPU sets the wrapper aside and
    decodes in float32 (the same samples as a float32 model's), and the training forward is in bf16 again after."""
    import random

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    recipe = make_run(tmp_path, objective="grpo", grpo_group_size=2, grpo_max_tokens=12)
    plain = make_model(tokenizer, seed=3)
    objective, examples = objective_for(recipe, tokenizer, plain)
    prompts = [example.input_ids[: next(i for i, label in enumerate(example.labels) if label != -100)]
               for example in examples[:2]]
    expected = [group["completions"] for group in objective.sample_groups(plain, prompts, random.Random(0))]

    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        accelerator = Accelerator(mixed_precision="bf16", cpu=True)
        student = accelerator.prepare(make_model(tokenizer, seed=3))
        objective.autocast = accelerator.autocast
        seen = []
        layer = next(m for m in student.modules() if isinstance(m, torch.nn.Linear))
        hook = layer.register_forward_pre_hook(lambda module, args: seen.append(torch.is_autocast_enabled("cpu")))
        sampled = [group["completions"] for group in objective.sample_groups(student, prompts, random.Random(0))]
        assert len(prompts) * 2 <= FLOAT32_ROUND_ROWS
        assert seen and not any(seen)  # every decoding step in float32
        assert sampled == expected
        seen.clear()
        student(input_ids=torch.tensor([prompts[0]]))
        assert seen == [True]  # the wrapper is back: training forwards run under bf16 autocast
        seen.clear()
        objective.sample_groups(student, prompts * 3, random.Random(0))  # more rows: bf16's halved bytes win
        hook.remove()
        assert seen and all(seen)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_a_second_update_on_the_same_samples_uses_the_ratio_and_clips(tmp_path, tokenizer):
    recipe = make_run(tmp_path, objective="grpo", grpo_group_size=2, grpo_iterations=3, grpo_epsilon_high=0.01,
                      grpo_epsilon_low=0.01)
    student = make_model(tokenizer, seed=2)
    objective, examples = objective_for(recipe, tokenizer, student)
    fixed_batch(objective, examples, [1.0, -1.0, 1.0, -1.0])
    optimizer = torch.optim.SGD(student.parameters(), lr=1.0)
    clip_fractions = []
    for _ in range(3):
        optimizer.zero_grad()
        loss, _ = objective.loss(student, {"input_ids": torch.zeros(1, 1, dtype=torch.long)})
        loss.backward()
        optimizer.step()
        clip_fractions.append(objective.log()["clip_fraction"])
    assert clip_fractions[0] == 0.0 and clip_fractions[1] > 0  # the first is on-policy (ratio 1); later ones move off it
    assert objective.batch["uses"] == 3 and objective.draws == 0  # one batch served three steps, nothing resampled


def test_the_teacher_term_is_zero_when_the_teacher_is_the_student(tmp_path, tokenizer):
    teacher = save_tiny_model(tmp_path / "teacher", seed=3)
    advantages = [0.5, -0.5, 1.0, -1.0]
    gradients = {}
    for weight in (0.0, 2.0):
        recipe = make_run(tmp_path / str(weight), objective="grpo", grpo_group_size=2, kd_teacher=str(teacher),
                          grpo_teacher_weight=weight)
        student = make_model(tokenizer, seed=3)
        objective, examples = objective_for(recipe, tokenizer, student)
        fixed_batch(objective, examples, advantages)
        loss, _ = objective.loss(student, {"input_ids": torch.zeros(1, 1, dtype=torch.long)})
        loss.backward()
        gradients[weight] = (loss.item(), {name: p.grad.clone() for name, p in student.named_parameters()})
        log = objective.log()
        assert ("teacher_reverse_kl" in log) == bool(weight)
    assert abs(log["teacher_reverse_kl"]) < 1e-5
    assert gradients[2.0][0] == pytest.approx(gradients[0.0][0], abs=1e-6)
    assert all(torch.allclose(gradients[2.0][1][name], grad, atol=1e-6) for name, grad in gradients[0.0][1].items())


def test_the_reference_kl_pulls_back_towards_the_starting_student(tmp_path, tokenizer):
    recipe = make_run(tmp_path, objective="grpo", grpo_group_size=2, grpo_beta=0.5)
    student = make_model(tokenizer, seed=4)
    objective, examples = objective_for(recipe, tokenizer, student)
    fixed_batch(objective, examples, [0.0, 0.0, 0.0, 0.0])
    with torch.no_grad():  # move the student away from its reference
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    loss, _ = objective.loss(student, {"input_ids": torch.zeros(1, 1, dtype=torch.long)})
    assert loss.item() > 0 and objective.log()["kl"] > 0  # advantages 0: the loss is the KL alone


# ---------------------------------------------------------------------------------------------------
# Through the training loop
# ---------------------------------------------------------------------------------------------------


def test_grpo_training_logs_rewards_and_the_report_plots_them(tmp_path, tokenizer):
    from tutorlm.report import report

    # a random tiny model never answers right: the length penalty makes rewards differ within groups
    recipe = make_run(tmp_path, objective="grpo", max_steps=4, batch_size=2, grpo_group_size=4, grpo_max_tokens=12,
                      grpo_length_penalty=1.0, grpo_overlong_penalty=0.5, grpo_iterations=2,
                      grpo_skip_equal=False)
    stats = train(recipe, console=QUIET, model_and_tokenizer=(make_model(tokenizer), tokenizer))
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    steps = [row for row in log if "loss" in row]
    assert len(steps) == 4
    for row in steps:
        assert row["groups_updated"] == 2 and row["entropy"] > 0 and 0 <= row["clip_fraction"] <= 1
    sampled = [row for row in steps if "sampling_s" in row]
    assert [row["step"] for row in sampled] == [1, 3]  # grpo_iterations 2: a sampled batch serves two steps
    for row in sampled:
        assert row["reward_mean"] < 0 and 0 <= row["sample_accuracy"] <= 1 and 0 < row["sample_tokens"] <= 13
        assert row["update_s"] >= 0 and row["step_s"] >= row["update_s"]
    totals = stats["grpo_totals"]
    assert totals["sampled_batches"] == 2 and totals["samples"] == 2 * 2 * 4 and stats["grpo"]["questions"] > 0
    text = report(recipe.run.path).read_text()
    assert (recipe.run.path / "rl.png").stat().st_size > 0
    assert "GRPO: the student sampled 16 completions" in text and "rl.png" in text


def test_rewards_all_equal_are_logged_and_make_no_update(tmp_path, tokenizer, capsys):
    recipe = make_run(tmp_path, objective="grpo", max_steps=2, batch_size=2, grpo_group_size=2, grpo_max_tokens=4,
                      eval_fraction=0.0)
    model = make_model(tokenizer)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    console = Console(file=open(tmp_path / "out.txt", "w"), width=200)
    stats = train(recipe, console=console, model_and_tokenizer=(model, tokenizer))
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert all(row["all_equal"] and row["groups_updated"] == 0 and row["all_equal_share"] == 1.0 for row in log)
    assert all(not any(map(lambda v: isinstance(v, float) and v != v, row.values())) for row in log)  # no NaN
    assert all(torch.equal(before[name], p) for name, p in model.cpu().named_parameters())
    assert stats["grpo_totals"]["all_equal_batches"] == 2
    printed = (tmp_path / "out.txt").read_text()
    assert "all rewards of a sampled batch were equal" in printed and "2 were all wrong and 0 all right" in printed
    assert "easier questions" in printed


def test_with_a_teacher_term_groups_of_equal_rewards_still_learn_from_the_teacher(tmp_path, tokenizer):
    teacher = save_tiny_model(tmp_path / "teacher", seed=5)
    recipe = make_run(tmp_path, objective="grpo", max_steps=1, batch_size=2, grpo_group_size=2, grpo_max_tokens=4,
                      eval_fraction=0.0, kd_teacher=str(teacher), grpo_teacher_weight=1.0, grpo_refill=3)
    model = make_model(tokenizer, seed=6)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    stats = train(recipe, console=QUIET, model_and_tokenizer=(model, tokenizer))
    (row,) = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    # a random tiny model's rewards are all 0: without the teacher term this step would make no update
    assert row["all_equal_share"] == 1.0 and row["groups_updated"] == 2 and "all_equal" not in row
    assert row["teacher_reverse_kl"] != 0 and stats["grpo_totals"]["refilled_groups"] == 0  # nothing to replace
    assert any(not torch.equal(before[name], p) for name, p in model.cpu().named_parameters())


def test_a_refill_replaces_groups_whose_rewards_were_equal(tmp_path, tokenizer):
    recipe = make_run(tmp_path, objective="grpo", max_steps=1, batch_size=2, grpo_group_size=2, grpo_max_tokens=4,
                      grpo_refill=3, eval_fraction=0.0)
    stats = train(recipe, console=QUIET, model_and_tokenizer=(make_model(tokenizer), tokenizer))
    assert stats["grpo_totals"]["refilled_groups"] == 3 * 2  # every round tried, none had unequal rewards


def test_grpo_refuses_rows_without_gold_answers_and_bad_settings(tmp_path, tokenizer):
    from tutorlm.run import read_jsonl

    recipe = make_run(tmp_path, objective="grpo", max_steps=1)
    curated = recipe.run.path / "curated.jsonl"
    rows = read_jsonl(curated)
    rows[1]["answer"] = ""
    curated.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(PreflightError, match=r"curated.jsonl: 1 of \d+ rows have no gold answer"):
        train(recipe, console=QUIET, model_and_tokenizer=(make_model(tokenizer), tokenizer))
    with pytest.raises(ValueError, match="grpo_group_size must be at least 2"):
        TrainConfig(grpo_group_size=1)
    with pytest.raises(ValueError, match="set grad_accum 1"):
        TrainConfig(objective="grpo", grpo_iterations=2, grad_accum=2)
    with pytest.raises(ValueError, match="grpo_epsilon_low"):
        TrainConfig(grpo_epsilon_low=1.5)


def _grpo_command(tmp_path, out: str, *extra: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "tutorlm", "train", "--out", str(tmp_path / out), "--student.model", str(tmp_path / "tiny"),
            "--task.source", "coin_flip", "--train.objective", "grpo", "--train.max_steps", "24", "--train.batch_size", "2",
            "--train.save_every", "3", "--train.eval_fraction", "0", "--train.grpo_group_size", "3",
            "--train.grpo_max_tokens", "10", "--train.grpo_length_penalty", "1", "--train.grpo_iterations", "2",
            "--train.lr", "1e-2", *extra]


def test_kill_9_then_resume_continues_the_same_samples(tmp_path):
    import shutil
    import signal
    import subprocess
    import time

    make_run(tmp_path)
    shutil.copytree(tmp_path / "run", tmp_path / "whole")
    save_tiny_model(tmp_path / "tiny")
    whole = subprocess.run(_grpo_command(tmp_path, "whole"), capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]
    log_path = tmp_path / "run" / "train_log.jsonl"
    process = subprocess.Popen(_grpo_command(tmp_path, "run"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (log_path.exists() and sum(1 for _ in log_path.open()) >= 7):  # past a checkpoint taken in the middle of a batch's two steps
        assert time.monotonic() < deadline and process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = max(json.loads(line)["step"] for line in log_path.read_text().splitlines())
    assert 24 > killed_at >= 7
    resumed = subprocess.run(_grpo_command(tmp_path, "run", "--resume"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from step-" in resumed.stderr
    ours = [json.loads(line) for line in log_path.read_text().splitlines()]
    reference = [json.loads(line) for line in (tmp_path / "whole" / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in ours] == list(range(1, 25))
    for a, b in zip(ours, reference):  # the same samples, rewards and losses as a run never killed
        assert ("reward_mean" in a) == ("reward_mean" in b), a["step"]  # a step samples, or reuses its batch, in both
        for key in ("reward_mean", "sample_tokens", "groups_updated", "loss"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (a["step"], key)


@pytest.mark.parametrize("family", ["llama", "qwen2", "llama-lora"])
def test_a_groups_prompt_runs_once_and_gives_the_hidden_states_and_gradients_of_full_sequences(tokenizer, family):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tutorlm.models.tokens import identity_head
    from tutorlm.train.rollout import shared_prompt_hidden
    from tutorlm.train.rollout import collate_completions
    from tutorlm.models.tokens import IGNORE, labelled_positions

    if family.startswith("llama"):
        student = make_model(tokenizer, seed=3)
    else:
        torch.manual_seed(3)
        student = Qwen2ForCausalLM(Qwen2Config(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True))
    if family == "llama-lora":  # a PEFT wrapper: the prompts go through it too, and only the adapters train
        student = get_peft_model(student, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    short, long = [5, 9, 11, 7], [8, 6, 12, 14, 9, 10, 13]  # prompts of unequal lengths: the shorter is padded
    prompts = [short] * 3 + [long] * 3
    completions = [[20, 21, 22], [23], [24, 25, 26, 27, 28], [29, 30], [31, 32, 33, 34], [35, 36, 37]]
    pad = tokenizer.pad_token_id
    weights = torch.randn(sum(map(len, completions)), 32)

    def full():
        inputs, positions, chosen = labelled_positions(collate_completions(prompts, completions, pad, "cpu"))
        hidden = student(**inputs, logits_to_keep=positions, use_cache=False).logits[chosen != IGNORE]
        return hidden, chosen[chosen != IGNORE]

    results = []
    for way in ("full", "shared"):
        student.zero_grad()
        with identity_head(student):
            hidden, targets = full() if way == "full" else shared_prompt_hidden(student, student, prompts, completions, 3, pad, "cpu")
        (hidden * weights).sum().backward()
        results.append((hidden.detach(), targets, {name: p.grad.clone() for name, p in student.named_parameters()
                                                   if p.requires_grad}))
    (hidden_full, targets_full, grads_full), (hidden_shared, targets_shared, grads_shared) = results
    assert torch.equal(targets_full, targets_shared) and targets_full.tolist() == sum(completions, [])
    assert torch.allclose(hidden_full, hidden_shared, atol=1e-5)
    for name in grads_full:  # float32 sums in another order: equal to 1e-5 of each tensor's scale
        scale = max(1.0, grads_full[name].abs().max().item())
        assert (grads_full[name] - grads_shared[name]).abs().max().item() <= 1e-5 * scale, name

    with identity_head(student):  # where sharing does not apply, the caller runs full sequences
        assert shared_prompt_hidden(student, student, [short, long], completions[:2], 1, pad, "cpu") is None  # groups of 1
        assert shared_prompt_hidden(student, student, [short] * 3 + [long] * 2, completions[:5], 3, pad, "cpu") is None
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        assert shared_prompt_hidden(student, student, prompts, completions, 3, pad, "cpu") is None


@pytest.mark.parametrize("size", [1, 2])
def test_the_prompts_shared_start_runs_once_and_gives_the_values_and_gradients_of_full_sequences(tokenizer, size):
    """The tokens every prompt starts with (a system prompt) run once for the batch, with or without groups of equal
    prompts; the hidden states and gradients are those of full rows, and masked tool-output tokens are left out."""
    from tutorlm.models.tokens import IGNORE, identity_head, labelled_positions
    from tutorlm.train.rollout import MIN_SHARED_PREFIX, collate_completions, shared_prompt_hidden

    student = make_model(tokenizer, seed=5)
    start = list(range(40, 40 + MIN_SHARED_PREFIX + 2))
    questions = [[5, 9], [8, 6, 12, 14, 9], [7], [11, 13, 15]][: 4 // size]
    prompts = [start + question for question in questions for _ in range(size)]
    completions = [[20, 21, 22, 23], [24, 25], [26, 27, 28, 29, 30], [31, 32, 33]]
    masks = [[True, False, True, True], [True, True], [True, True, False, True, True], [False, True, True]]
    pad = tokenizer.pad_token_id
    weights = torch.randn(sum(map(sum, masks)), 32)
    results = []
    for way in ("full", "shared"):
        student.zero_grad()
        with identity_head(student):
            if way == "full":
                inputs, positions, chosen = labelled_positions(collate_completions(prompts, completions, pad, "cpu", masks))
                hidden = student(**inputs, logits_to_keep=positions, use_cache=False).logits[chosen != IGNORE]
                targets = chosen[chosen != IGNORE]
            else:
                hidden, targets = shared_prompt_hidden(student, student, prompts, completions, size, pad, "cpu", masks)
        (hidden * weights).sum().backward()
        results.append((hidden.detach(), targets, {name: p.grad.clone() for name, p in student.named_parameters()}))
    (hidden_full, targets_full, grads_full), (hidden_shared, targets_shared, grads_shared) = results
    kept = [t for completion, mask in zip(completions, masks) for t, keep in zip(completion, mask) if keep]
    assert targets_full.tolist() == targets_shared.tolist() == kept
    assert torch.allclose(hidden_full, hidden_shared, atol=1e-5)
    for name in grads_full:
        scale = max(1.0, grads_full[name].abs().max().item())
        assert (grads_full[name] - grads_shared[name]).abs().max().item() <= 1e-5 * scale, name
    short = [start[: MIN_SHARED_PREFIX - 1] + question for question in questions for _ in range(size)]
    with identity_head(student):  # too short a shared start, and no groups: nothing to share
        assert (shared_prompt_hidden(student, student, short, completions, size, pad, "cpu") is None) == (size == 1)


def test_with_the_tool_samples_run_their_code_and_the_update_skips_the_output_tokens(tmp_path, tokenizer):
    """task.tools python: GRPO's samples run their ```python blocks in the sandbox; the ```output tokens are read by
    the student but are not its actions (no log-prob, no gradient), so the update covers the tokens it wrote."""
    from tiny import scripted_model
    from tutorlm.train.data import batches
    from tutorlm.train.rollout import prompts_of

    recipe = make_run(tmp_path, objective="grpo", grpo_group_size=2, grpo_max_tokens=40, grpo_temperature=0.5,
                      grpo_skip_equal=False, batch_size=2)
    recipe.task.tools, recipe.task.tool_calls = "python", 1
    probe, examples = prepared(GRPO, recipe, tokenizer, make_model(tokenizer))
    batch = next(batches(examples, [[0, 1]], False, tokenizer.pad_token_id))
    script = "```python\nprint(2 + 3)\n```\n```output\n5\n```\nThe answer is Yes."
    student = scripted_model(tokenizer, [(prompt, script) for prompt in prompts_of(batch)])
    objective, _ = prepared(GRPO, recipe, tokenizer, student)
    value, tokens = objective.loss(student, batch)
    sampled = objective.batch
    assert torch.isfinite(value) and tokens == sum(map(sum, sampled["masks"]))
    for completion, mask in zip(sampled["completions"], sampled["masks"]):
        assert len(mask) == len(completion) and not all(mask)
        not_written = tokenizer.decode([t for t, keep in zip(completion, mask) if not keep])
        assert not_written.strip() == "```output\n5\n```"  # the sandbox's output, not the model's
    assert len(sampled["old_logprobs"]) == tokens  # one log-prob per token the student wrote


def test_a_shared_prompt_with_tool_outputs_masked_matches_full_sequences(tokenizer):
    from tutorlm.models.tokens import IGNORE, identity_head, labelled_positions
    from tutorlm.train.rollout import collate_completions, shared_prompt_hidden

    student = make_model(tokenizer, seed=3)
    prompts = [[5, 9, 11, 7]] * 2 + [[8, 6, 12, 14, 9]] * 2
    completions = [[20, 21, 22, 23], [24, 25], [26, 27, 28, 29, 30], [31, 32, 33]]
    masks = [[True, False, False, True], [True, True], [True, True, False, True, True], [False, True, True]]
    pad = tokenizer.pad_token_id
    with torch.no_grad(), identity_head(student):
        inputs, positions, chosen = labelled_positions(collate_completions(prompts, completions, pad, "cpu", masks))
        full = student(**inputs, logits_to_keep=positions, use_cache=False).logits[chosen != IGNORE]
        shared, targets = shared_prompt_hidden(student, student, prompts, completions, 2, pad, "cpu", masks)
    kept = [t for completion, mask in zip(completions, masks) for t, keep in zip(completion, mask) if keep]
    assert targets.tolist() == chosen[chosen != IGNORE].tolist() == kept
    assert torch.allclose(full, shared, atol=1e-5)  # a masked token is still read: the states after it are the same
