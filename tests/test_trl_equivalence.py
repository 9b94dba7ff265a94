"""tutorlm's distillation losses against TRL 1.16's definitions: loss and gradient on one fixed tiny batch.

Compared (the student's logits are the hidden states under an identity head, weight = eye(V)):
- Full-distribution KD, `linear_kd_loss` (what `kd_loss` and the on-policy `divergence` loss call), against
  `GKDTrainer.generalized_jsd_loss` (trl.experimental.gkd; logits in, reduction "batchmean" = sum over unmasked
  positions / their count, which is our per-token mean) and `_chunked_divergence_loss`, the loss
  `DistillationTrainer._compute_loss` calls (hidden states + lm_head; mean over `completion_mask`).
- The sampled on-policy loss (`on_policy_loss: sampled`, which `OnPolicy._graded_loss` builds from
  `linear_token_logprobs` and `linear_cross_entropy(row_weights=A)`, composed here the same way for a fully graded
  batch without rewards) against `IWOPDTrainer._compute_iw_opd_loss` (trl.experimental.iw_opd), the only sampled
  per-token reverse-KL policy-gradient form in TRL 1.16: `DistillationTrainer` itself has none, only the full JSD.

Beta: one convention on both sides, no mapping. m = β p_teacher + (1 − β) p_student and
JSD(β) = β KL(p_teacher || m) + (1 − β) KL(p_student || m); β = 0 is forward KL(teacher || student) and β = 1
reverse KL(student || teacher), both ends special-cased by TRL as by us.

Where the definitions differ (each difference is pinned below, so a change on either side fails a test):
- Temperature T: both divide both models' logits by T, but tutorlm multiplies the divergence by T² (Hinton et al.,
  so the gradient keeps the scale of T = 1) and TRL does not: ours = T² · TRL's, loss and gradient.
- Sampled loss: TRL's IW-OPD multiplies each advantage by a prefix weight 1 + γ (1 − Σ_{s<t} |A_s| / Σ_s |A_s|),
  γ = `iw_opd_gamma`, default 0.5; ours is γ = 0, where the two are equal. At T != 1 both take the student's
  log-probs at T, but TRL's local-teacher path grades with the teacher's log_softmax(z / T) while our teacher grades
  at T = 1; the function compared takes the teacher's log-probs as input, so this test feeds both the same ones.
"""

from __future__ import annotations

import os
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tutorlm.train.losses import (
    linear_cross_entropy,
    linear_kd_loss,
    linear_token_logprobs,
)

pytest.importorskip("trl", minversion="1.16")  # the definitions compared are TRL 1.16's
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # the warning that trl.experimental is unstable
from trl.experimental.gkd import GKDTrainer
from trl.experimental.iw_opd import IWOPDTrainer
from trl.trainer.distillation_trainer import _chunked_divergence_loss

B, T, V = 2, 5, 32
TIGHT = {"rtol": 1e-5, "atol": 1e-7}


def fixed_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(student logits (B, T, V) with grad, teacher logits (B, T, V), labels (B, T) with -100 where ignored)."""
    generator = torch.Generator().manual_seed(0)
    student = (torch.randn(B, T, V, generator=generator) * 2).requires_grad_()
    teacher = torch.randn(B, T, V, generator=generator) * 2
    labels = torch.randint(0, V, (B, T), generator=generator)
    labels[0, :2] = -100  # a prompt
    labels[1, -1] = -100  # padding
    return student, teacher, labels


def ours_kd(student, teacher, labels, kind, beta, temperature):
    keep = labels != -100
    teacher_rows = teacher[keep]
    return linear_kd_loss(
        student[keep],
        torch.eye(V),
        lambda s, e: F.log_softmax(teacher_rows[s:e] / temperature, -1),
        kind=kind,
        beta=beta,
        temperature=temperature,
    )


def trl_gkd(student, teacher, labels, beta, temperature):
    return GKDTrainer.generalized_jsd_loss(
        student, teacher, labels=labels, beta=beta, temperature=temperature, reduction="batchmean"
    )


def trl_chunked(student, teacher, labels, beta, temperature):
    eye = torch.eye(V)
    loss, _, _ = _chunked_divergence_loss(
        student, teacher, eye, eye, (labels != -100).long(), beta, temperature=temperature
    )
    return loss


def value_and_grad(loss: torch.Tensor, student: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    (grad,) = torch.autograd.grad(loss, student)
    return loss.detach(), grad


@pytest.mark.parametrize("temperature", [1.0, 0.5])
@pytest.mark.parametrize(
    ("kind", "beta"),
    [("forward_kl", 0.0), ("jsd", 0.0), ("jsd", 0.1), ("jsd", 0.5), ("jsd", 0.9), ("jsd", 1.0), ("reverse_kl", 1.0)],
)
@pytest.mark.parametrize(
    "trl_loss",
    [trl_gkd, trl_chunked],
    ids=["GKDTrainer.generalized_jsd_loss", "DistillationTrainer._chunked_divergence_loss"],
)
def test_full_distribution_divergence_equals_trl(trl_loss, kind, beta, temperature):
    student, teacher, labels = fixed_batch()
    ours, our_grad = value_and_grad(ours_kd(student, teacher, labels, kind, beta, temperature), student)
    theirs, their_grad = value_and_grad(trl_loss(student, teacher, labels, beta, temperature), student)
    # The one difference: TRL has no T² factor (module docstring). At T = 1 this is plain equality.
    torch.testing.assert_close(ours, temperature**2 * theirs, **TIGHT)
    torch.testing.assert_close(our_grad, temperature**2 * their_grad, **TIGHT)
    assert (our_grad[labels == -100] == 0).all() and (our_grad[labels != -100] != 0).any()
    if beta in (0.1, 0.9):  # the comparison sees β's direction: the mirrored β is another loss
        mirrored = trl_loss(student, teacher, labels, 1 - beta, temperature).detach()
        assert not torch.allclose(ours, temperature**2 * mirrored, rtol=1e-2)


def ours_sampled(student, tokens, labels, teacher_logprobs, temperature):
    """`on_policy_loss: sampled` as `OnPolicy._graded_loss` composes it: A = log p_teacher − log q_T (constants),
    loss = −(1/N) Σ A_t log q_T(x_t), the student's logits divided by T."""
    keep = labels != -100
    hidden, targets, eye = student[keep] / temperature, tokens[keep], torch.eye(V)
    student_logprobs, _ = linear_token_logprobs(hidden.detach(), eye, targets)
    return linear_cross_entropy(hidden, eye, targets, row_weights=teacher_logprobs[keep] - student_logprobs)


def trl_iw_opd(student, tokens, labels, teacher_logprobs, temperature, gamma=0.0):
    trainer = SimpleNamespace(
        temperature=temperature,
        iw_opd_gamma=gamma,
        iw_opd_epsilon=1e-8,
        model=SimpleNamespace(training=True),
        _metrics=defaultdict(lambda: defaultdict(list)),
    )
    return IWOPDTrainer._compute_iw_opd_loss(trainer, student, tokens, labels, teacher_logprobs)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sampled_on_policy_loss_equals_trl_iw_opd_at_gamma_0(temperature):
    student, teacher, labels = fixed_batch()
    generator = torch.Generator().manual_seed(1)
    probs = F.softmax(student.detach() / temperature, -1).view(-1, V)
    tokens = torch.multinomial(probs, 1, generator=generator).view(B, T)  # the student's own samples
    teacher_logprobs = F.log_softmax(teacher, -1).gather(-1, tokens[..., None])[..., 0]  # (B, T), our grades (T = 1)
    ours, our_grad = value_and_grad(ours_sampled(student, tokens, labels, teacher_logprobs, temperature), student)
    theirs, their_grad = value_and_grad(trl_iw_opd(student, tokens, labels, teacher_logprobs, temperature), student)
    torch.testing.assert_close(ours, theirs, **TIGHT)
    torch.testing.assert_close(our_grad, their_grad, **TIGHT)
    # TRL's default γ = 0.5 (importance-weighted prefix) is another loss
    default = trl_iw_opd(student, tokens, labels, teacher_logprobs, temperature, gamma=0.5).detach()
    assert not torch.allclose(ours, default, rtol=1e-2)


def test_sampled_loss_gradient_in_expectation_is_the_full_reverse_kl_gradient():
    """Σ_x q(x) ∇(−A_x log q(x)) = ∇ KL(q || p): every token of the vocabulary as a sample, weighted by q(x), through
    the sampled loss gives exactly the gradient of `linear_kd_loss(kind="reverse_kl")` (TRL's β = 1 above)."""
    student, teacher, labels = fixed_batch()
    keep = labels != -100
    hidden, teacher_rows, eye = student[keep], F.log_softmax(teacher[keep], -1), torch.eye(V)
    rows = hidden.shape[0]
    every = torch.arange(V).repeat(rows)  # each position's V tokens
    repeated = hidden.repeat_interleave(V, 0)
    student_logprobs, _ = linear_token_logprobs(repeated.detach(), eye, every)
    advantages = teacher_rows.flatten() - student_logprobs
    # linear_cross_entropy averages over rows · V samples; the weight V · q(x) makes that Σ_x q(x) per position
    expected = linear_cross_entropy(repeated, eye, every, row_weights=advantages * student_logprobs.exp() * V)
    full = linear_kd_loss(student[keep], eye, lambda s, e: teacher_rows[s:e], kind="reverse_kl")
    torch.testing.assert_close(value_and_grad(expected, student)[1], value_and_grad(full, student)[1], **TIGHT)
