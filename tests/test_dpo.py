"""DPO on preference pairs: the loss against hand-computed values and autograd, on tiny models built in the test."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from rich.console import Console
from tiny import make_model, make_run, make_tokenizer, prepared

from tutorlm.errors import PreflightError
from tutorlm.train.dpo import DPO
from tutorlm.train.loop import train
from tutorlm.train.losses import preference_loss

QUIET = Console(file=open(os.devnull, "w"))


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def test_preference_loss_against_hand_computed_values_and_autograd():
    chosen = torch.tensor([-10.0, -4.0], requires_grad=True)
    rejected = torch.tensor([-12.0, -3.0], requires_grad=True)
    ref_chosen, ref_rejected = torch.tensor([-11.0, -4.0]), torch.tensor([-11.0, -4.0])
    value, d_chosen, d_rejected = preference_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.5)
    # h = (1) - (-1) = 2 and (0) - (1) = -1
    assert value.tolist() == pytest.approx([math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(0.5))])
    plain = -torch.nn.functional.logsigmoid(0.5 * ((chosen - ref_chosen) - (rejected - ref_rejected)))
    grad_chosen, grad_rejected = torch.autograd.grad(plain.sum(), [chosen, rejected])
    assert d_chosen.tolist() == pytest.approx(grad_chosen.tolist()) and d_rejected.tolist() == pytest.approx(grad_rejected.tolist())
    value, d_chosen, d_rejected = preference_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.5, kind="ipo")
    assert value.tolist() == pytest.approx([(2 - 1) ** 2, (-1 - 1) ** 2])  # (h - 1/(2 beta))^2, 1/(2 beta) = 1
    assert d_chosen.tolist() == pytest.approx([2.0, -4.0]) and d_rejected.tolist() == pytest.approx([-2.0, 4.0])


def make_pairs_run(tmp_path, **train_options):
    """A coin-flip run whose pairs.jsonl holds (right rationale, the same with the answer flipped)."""
    from tutorlm.run import read_jsonl

    recipe = make_run(tmp_path, objective="dpo", **train_options)
    rows = read_jsonl(recipe.run.path / "curated.jsonl")
    pairs = []
    for row in rows:
        text = row["completion"][0]["content"]
        wrong = text.replace("The answer is Yes", "The answer is No") if "The answer is Yes" in text else \
            text.replace("The answer is No", "The answer is Yes")
        assert wrong != text
        pairs.append({"id": row["id"] + "#pair0", "example_id": row["example_id"], "prompt": row["prompt"],
                      "chosen": row["completion"], "rejected": [{"role": "assistant", "content": wrong}]})
    (recipe.run.path / "pairs.jsonl").write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    return recipe, rows


def objective_for(recipe, tokenizer, student):
    return prepared(DPO, recipe, tokenizer, student)


@pytest.mark.parametrize("kind", ["sigmoid", "ipo"])
def test_the_loss_has_the_gradient_of_plain_dpo(tmp_path, tokenizer, kind):
    from tutorlm.models.tokens import collate_padded

    recipe, _ = make_pairs_run(tmp_path, dpo_loss=kind, dpo_beta=0.5)
    student = make_model(tokenizer, seed=1)
    objective, examples = objective_for(recipe, tokenizer, student)
    with torch.no_grad():  # move away from the reference, so h is not 0
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    batch = collate_padded([examples[0], examples[3], examples[5]], tokenizer.pad_token_id)
    assert batch["example_index"].tolist() == [0, 3, 5]
    loss, _ = objective.loss(student, batch)
    loss.backward()
    ours = {name: p.grad.clone() for name, p in student.named_parameters()}
    student.zero_grad()

    def logprob(item):
        start = next(i for i, label in enumerate(item.labels) if label != -100)
        logits = student(torch.tensor([item.input_ids])).logits[0, start - 1:-1].float()
        values = logits.log_softmax(-1).gather(1, torch.tensor(item.input_ids[start:])[:, None])[:, 0]
        return values.mean() if kind == "ipo" else values.sum()

    plain = 0.0
    for i in (0, 3, 5):
        h = (logprob(objective.chosen[i]) - objective.reference_chosen[i]) - (logprob(objective.rejected[i]) - objective.reference_rejected[i])
        plain = plain + ((h - 1.0) ** 2 if kind == "ipo" else -torch.nn.functional.logsigmoid(0.5 * h))
    plain = plain / 3
    assert loss.item() == pytest.approx(plain.item(), rel=1e-4)
    plain.backward()
    for name, p in student.named_parameters():
        assert torch.allclose(ours[name], p.grad, atol=1e-5), name


def test_dpo_training_widens_the_margin_and_reuses_the_cached_reference(tmp_path, tokenizer):
    recipe, _ = make_pairs_run(tmp_path, epochs=2, batch_size=4, lr=3e-3, eval_fraction=0.0)
    stats = train(recipe, console=QUIET, model_and_tokenizer=(make_model(tokenizer), tokenizer))
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    steps = [row for row in log if "loss" in row]
    assert steps[0]["reward_margin"] == pytest.approx(0.0, abs=1e-4)  # the first step is at the reference
    assert steps[-1]["reward_margin"] > 0.02 and steps[-1]["reward_accuracy"] > 0.5
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert stats["dpo"]["reference_scored"] == 2 * stats["dpo"]["pairs"] and stats["dpo"]["reference_cached"] == 0
    again = train(recipe, force=True, console=QUIET, model_and_tokenizer=(make_model(tokenizer), tokenizer))
    assert again["dpo"]["reference_scored"] == 0 and again["dpo"]["reference_cached"] == 2 * again["dpo"]["pairs"]


def test_dpo_without_pairs_says_how_to_make_them(tmp_path, tokenizer):
    recipe = make_run(tmp_path, objective="dpo", max_steps=1)
    with pytest.raises(PreflightError, match=r"pairs.jsonl: no preference pairs.*--curate.pairs 2"):
        train(recipe, console=QUIET, model_and_tokenizer=(make_model(tokenizer), tokenizer))
    with pytest.raises(ValueError, match="dpo_beta must be positive"):
        from tutorlm.config import TrainConfig

        TrainConfig(dpo_beta=0)


def test_a_pairs_file_missing_a_field_names_the_line(tmp_path, tokenizer):
    recipe, _ = make_pairs_run(tmp_path, max_steps=1)
    path = recipe.run.path / "pairs.jsonl"
    lines = path.read_text().splitlines()
    broken = json.loads(lines[2])
    del broken["rejected"]
    lines[2] = json.dumps(broken)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PreflightError, match=r"pairs.jsonl:3: missing rejected"):
        train(recipe, console=QUIET, model_and_tokenizer=(make_model(tokenizer), tokenizer))
