"""KD losses against plain implementations in probability space (values and gradients), on random tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Categorical, kl_divergence

from tutorlm.train.losses import DIVERGENCES, divergence, linear_kd_loss, topk_divergence, with_tail


def plain(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str, beta: float) -> torch.Tensor:
    """The same divergences written with probabilities and torch.distributions, row by row."""
    p, q = teacher_logits.softmax(-1).detach(), student_logits.softmax(-1)

    def kl(a, b):
        return kl_divergence(Categorical(probs=a), Categorical(probs=b))

    if kind == "forward_kl" or (kind in ("jsd", "skew_kl") and beta == 0):
        return kl(p, q)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1) or (kind == "skew_reverse_kl" and beta == 0):
        return kl(q, p)
    if kind == "jsd":
        m = beta * p + (1 - beta) * q
        return beta * kl(p, m) + (1 - beta) * kl(q, m)
    if kind == "skew_kl":
        return kl(p, beta * p + (1 - beta) * q)
    return kl(q, beta * q + (1 - beta) * p)


CASES = [(kind, beta) for kind in DIVERGENCES for beta in (0.0, 0.1, 0.5, 0.9, 1.0)
         if not (kind in ("skew_kl", "skew_reverse_kl") and beta == 1.0)]


@pytest.mark.parametrize(("kind", "beta"), CASES)
def test_each_divergence_matches_the_plain_one_in_value_and_gradient(kind, beta):
    torch.manual_seed(0)
    student = (torch.randn(6, 11) * 3).requires_grad_()
    teacher = torch.randn(6, 11) * 3
    ours = divergence(F.log_softmax(student, -1), F.log_softmax(teacher, -1), kind, beta)
    reference = plain(student, teacher, kind, beta)
    assert torch.allclose(ours, reference, atol=1e-5), (ours, reference)
    (grad_ours,) = torch.autograd.grad(ours.sum(), student)
    (grad_reference,) = torch.autograd.grad(plain(student, teacher, kind, beta).sum(), student)
    assert torch.allclose(grad_ours, grad_reference, atol=1e-5)
    assert (ours >= -1e-6).all()


@pytest.mark.parametrize(("kind", "beta"), CASES)
def test_teacher_equal_to_student_gives_zero_loss_and_zero_gradient(kind, beta):
    logits = torch.randn(5, 17, requires_grad=True)
    loss = divergence(F.log_softmax(logits, -1), F.log_softmax(logits, -1).detach(), kind, beta).sum()
    (grad,) = torch.autograd.grad(loss, logits)
    assert abs(loss.item()) < 1e-6 and grad.abs().max() < 1e-6


def test_the_teacher_side_gets_no_gradient_and_bad_settings_are_refused():
    student, teacher = torch.randn(2, 5, requires_grad=True), torch.randn(2, 5, requires_grad=True)
    divergence(F.log_softmax(student, -1), F.log_softmax(teacher, -1), "jsd", 0.5).sum().backward()
    assert teacher.grad is None and student.grad is not None
    with pytest.raises(ValueError, match="beta must be in"):
        divergence(student, teacher, "jsd", 1.5)
    with pytest.raises(ValueError, match="unknown divergence"):
        divergence(student, teacher, "kl", 0.5)


def test_topk_with_every_id_is_the_full_divergence():
    torch.manual_seed(1)
    student, teacher = torch.randn(4, 9), torch.randn(4, 9)
    teacher_logprobs = F.log_softmax(teacher, -1)
    ids = teacher_logprobs.argsort(-1, descending=True)
    full = divergence(F.log_softmax(student, -1), teacher_logprobs, "forward_kl")
    topk = topk_divergence(F.log_softmax(student, -1), ids, teacher_logprobs.gather(-1, ids), "forward_kl")
    assert torch.allclose(full, topk, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 12), seed=st.integers(0, 10_000), kind=st.sampled_from(DIVERGENCES))
def test_topk_with_a_tail_bucket_never_exceeds_the_full_divergence(k, seed, kind):
    # Merging outcomes cannot increase an f-divergence (data processing): the tail bucket is a merge.
    # float64: the tail bucket's 1 − Σ is exact only to the precision of the k given log-probs
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(3, 12, generator=generator, dtype=torch.float64) * 2
    teacher = torch.randn(3, 12, generator=generator, dtype=torch.float64) * 2
    student_logprobs, teacher_logprobs = F.log_softmax(student, -1), F.log_softmax(teacher, -1)
    ids = teacher_logprobs.topk(k, -1).indices
    topk = topk_divergence(student_logprobs, ids, teacher_logprobs.gather(-1, ids), kind, 0.5)
    full = divergence(student_logprobs, teacher_logprobs, kind, 0.5)
    assert (topk <= full + 1e-5).all()


def test_the_tail_bucket_holds_the_missing_mass_and_the_student_is_not_renormalised():
    logprobs = torch.log(torch.tensor([[0.5, 0.2]]))
    assert torch.allclose(with_tail(logprobs).exp(), torch.tensor([[0.5, 0.2, 0.3]]), atol=1e-6)
    # A student that puts all its top-k mass in the same proportions as the teacher, but less of it, still
    # differs: its probabilities are over the full vocabulary.
    student = torch.log(torch.tensor([[0.25, 0.1, 0.65]]))
    teacher_ids, teacher = torch.tensor([[0, 1]]), torch.log(torch.tensor([[0.5, 0.2]]))
    assert topk_divergence(student, teacher_ids, teacher).item() > 0.05


@pytest.mark.parametrize(("kind", "temperature", "beta"), [("forward_kl", 1.0, 0.5), ("forward_kl", 2.0, 0.5), ("reverse_kl", 2.0, 0.5),
                                                    ("reverse_kl", 1.0, 0.5), ("jsd", 1.0, 0.5), ("jsd", 0.5, 0.2),
                                                    ("jsd", 1.0, 0.0), ("jsd", 2.0, 1.0), ("skew_kl", 0.5, 0.5)])
def test_chunked_kd_from_hidden_states_equals_the_unchunked_loss(kind, temperature, beta):
    torch.manual_seed(2)
    hidden = torch.randn(10, 8, requires_grad=True)
    weight = torch.randn(31, 8, requires_grad=True)
    teacher_logits = torch.randn(10, 31)

    def teacher_logprobs(start, end):
        return F.log_softmax(teacher_logits[start:end] / temperature, -1)

    full_logits = hidden @ weight.T / temperature
    reference = divergence(F.log_softmax(full_logits, -1), teacher_logprobs(0, 10), kind, beta).mean() * temperature**2
    grads_reference = torch.autograd.grad(reference, (hidden, weight))
    for chunk_rows in (1, 3, 10, 64):
        loss = linear_kd_loss(hidden, weight, teacher_logprobs, kind=kind, beta=beta, temperature=temperature,
                              chunk_rows=chunk_rows)
        assert torch.allclose(loss, reference, atol=1e-5)
        grads = torch.autograd.grad(loss, (hidden, weight))
        for ours, theirs in zip(grads, grads_reference):
            assert torch.allclose(ours, theirs, atol=1e-5)


def plain_topk(student_logprobs, ids, teacher_logprobs, kind):
    """The (k + 1)-outcome divergence written out row by row: empty slots dropped, their mass in the teacher's tail."""
    rows = []
    for row in range(ids.shape[0]):
        keep = [slot for slot in range(ids.shape[1]) if ids[row, slot] >= 0]
        chosen = ids[row, keep]
        teacher = teacher_logprobs[row, keep]
        student = student_logprobs[row, chosen]
        outside = torch.ones(student_logprobs.shape[1], dtype=torch.bool)
        outside[chosen] = False
        student_tail = torch.logsumexp(student_logprobs[row, outside], -1, keepdim=True)
        teacher_tail = torch.log1p(-teacher.exp().sum()).reshape(1)
        rows.append(divergence(torch.cat([student, student_tail])[None], torch.cat([teacher, teacher_tail])[None], kind, 0.5))
    return torch.cat(rows)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_empty_topk_slots_count_on_neither_side_with_finite_gradients(kind):
    torch.manual_seed(3)
    student = torch.randn(4, 15, requires_grad=True)
    teacher = F.log_softmax(torch.randn(4, 15) * 2, -1)
    ids = teacher.topk(6, -1).indices.clone()
    values = teacher.gather(-1, ids)
    ids[0, 2], ids[1, 0], ids[1, 5], ids[3, :] = -1, -1, -1, torch.tensor([-1, -1, -1, 4, -1, -1])
    values = values.masked_fill(ids < 0, float("-inf"))  # as align() leaves them
    ours = topk_divergence(F.log_softmax(student, -1), ids, values, kind, 0.5)
    reference = plain_topk(F.log_softmax(student, -1), ids, values, kind)
    assert torch.allclose(ours, reference, atol=1e-5)
    grad = torch.autograd.grad(ours.sum(), student)[0]
    assert torch.isfinite(grad).all()
    assert torch.allclose(grad, torch.autograd.grad(reference.sum(), student)[0], atol=1e-5)


def test_chunked_kd_from_a_topk_equals_the_plain_one():
    torch.manual_seed(4)
    hidden = torch.randn(9, 8, requires_grad=True)
    weight = torch.randn(23, 8, requires_grad=True)
    teacher = F.log_softmax(torch.randn(9, 23), -1)
    ids = teacher.topk(5, -1).indices.clone()
    ids[2, 1] = -1
    values = teacher.gather(-1, ids.clamp(min=0)).masked_fill(ids < 0, float("-inf"))
    reference = plain_topk(F.log_softmax(hidden @ weight.T, -1), ids, values, "forward_kl").mean()
    expected = torch.autograd.grad(reference, (hidden, weight))
    for chunk_rows in (1, 4, 64):
        loss = linear_kd_loss(hidden, weight, (ids, values), chunk_rows=chunk_rows)
        assert torch.allclose(loss, reference, atol=1e-5)
        for ours, theirs in zip(torch.autograd.grad(loss, (hidden, weight)), expected):
            assert torch.allclose(ours, theirs, atol=1e-5)
    with pytest.raises(ValueError, match="temperature 1"):
        linear_kd_loss(hidden, weight, (ids, values), temperature=2.0)


@pytest.mark.parametrize(("teacher_form", "kind", "temperature"), [
    ("topk", "jsd", 1.0), ("topk", "forward_kl", 1.0), ("full", "jsd", 1.0), ("full", "jsd", 2.0), ("full", "forward_kl", 0.5),
    ("full", "reverse_kl", 2.0), ("full", "skew_kl", 1.0)])
def test_kd_with_its_cross_entropy_share_from_one_projection_equals_the_two_losses_apart(teacher_form, kind, temperature):
    """Rows with a teacher: (1 - w) divergence + w cross-entropy; a top-k row with no teacher: cross-entropy alone."""
    torch.manual_seed(5)
    hidden = torch.randn(11, 8, requires_grad=True)
    weight = torch.randn(23, 8, requires_grad=True)
    teacher = F.log_softmax(torch.randn(11, 23) * 2, -1)
    targets = torch.randint(0, 23, (11,))
    ids = teacher.topk(5, -1).indices.clone()
    ids[[3, 7]] = -1  # two rows the teacher could not score
    ids[5] = torch.tensor([0, -1, 3, -1, 7])  # empty slots beside id 0, which is where an empty slot's -1 clamps to
    values = teacher.gather(-1, ids.clamp(min=0)).masked_fill(ids < 0, float("-inf"))
    log_q = F.log_softmax(hidden @ weight.T, -1)
    cross_entropy = F.cross_entropy(hidden @ weight.T, targets, reduction="none")
    w = 0.3
    if teacher_form == "topk":
        has = (ids >= 0).any(-1)
        divergences = plain_topk(log_q[has], ids[has], values[has], kind)
        reference = (((1 - w) * divergences + w * cross_entropy[has]).sum() + cross_entropy[~has].sum()) / 11
        given = (ids, values)
    else:
        tempered = F.log_softmax(hidden @ weight.T / temperature, -1)  # the divergence at T (times T²), the CE at 1
        reference = ((1 - w) * divergence(tempered, teacher, kind, 0.5) * temperature**2 + w * cross_entropy).mean()
        given = lambda start, end: teacher[start:end]  # noqa: E731
    expected = torch.autograd.grad(reference, (hidden, weight))
    for chunk_rows in (2, 64):
        loss = linear_kd_loss(hidden, weight, given, kind=kind, targets=targets, ce_weight=w, chunk_rows=chunk_rows,
                              temperature=temperature)
        assert torch.allclose(loss, reference, atol=1e-5)
        for ours, theirs in zip(torch.autograd.grad(loss, (hidden, weight)), expected):
            assert torch.allclose(ours, theirs, atol=1e-5)
    with pytest.raises(ValueError, match="needs targets"):
        linear_kd_loss(hidden, weight, given, ce_weight=w)


def test_chunked_losses_project_in_the_autocast_dtype_and_skip_gradients_nobody_needs():
    torch.manual_seed(6)
    hidden = torch.randn(6, 16, requires_grad=True)
    weight = torch.randn(40, 16)  # frozen: no gradient is formed for it
    teacher = F.log_softmax(torch.randn(6, 40), -1)
    ids = teacher.topk(4, -1).indices
    values = teacher.gather(-1, ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_kd_loss(hidden, weight, (ids, values))
    log_q = F.log_softmax((hidden.bfloat16() @ weight.bfloat16().T).float(), -1)
    reference = plain_topk(log_q, ids, values, "forward_kl").mean()
    assert torch.allclose(loss, reference, atol=1e-4)
    assert torch.allclose(torch.autograd.grad(loss, hidden)[0], torch.autograd.grad(reference, hidden)[0], atol=2e-2)
    with torch.no_grad():
        assert torch.allclose(linear_kd_loss(hidden, weight, (ids, values)),
                              plain_topk(F.log_softmax(hidden @ weight.T, -1), ids, values, "forward_kl").mean(), atol=1e-5)




@pytest.mark.parametrize(("kind", "beta"), [("forward_kl", 0.5), ("jsd", 0.5), ("jsd", 0.1), ("reverse_kl", 0.5)])
def test_a_teacher_with_impossible_tokens_gives_the_plain_value_and_finite_gradients(kind, beta):
    """Tokens the teacher rules out (log-prob −inf, as a padded vocabulary leaves them) count for nothing on its side."""
    torch.manual_seed(4)
    hidden = torch.randn(6, 8, requires_grad=True)
    weight = torch.randn(31, 8, requires_grad=True)
    teacher_logits = torch.randn(6, 31)
    teacher_logits[:, 25:] = float("-inf")
    loss = linear_kd_loss(hidden, weight, lambda start, end: F.log_softmax(teacher_logits[start:end], -1), kind=kind, beta=beta)
    reference = plain(hidden @ weight.T, teacher_logits, kind, beta).mean()
    if kind == "reverse_kl":  # the student's mass on a ruled-out token costs without bound
        assert torch.isinf(loss)
        return
    assert torch.allclose(loss, reference, atol=1e-5)
    grads = torch.autograd.grad(loss, (hidden, weight))
    for ours, theirs in zip(grads, torch.autograd.grad(reference, (hidden, weight))):
        assert torch.isfinite(ours).all()
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_a_chunked_loss_refuses_a_second_backward_instead_of_scaling_its_gradients_twice():
    hidden = torch.randn(5, 8, requires_grad=True)
    weight = torch.randn(31, 8, requires_grad=True)
    loss = linear_kd_loss(hidden, weight, lambda start, end: F.log_softmax(torch.zeros(end - start, 31), -1), kind="jsd") * 3.0
    loss.backward(retain_graph=True)
    first = hidden.grad.clone()
    assert torch.isfinite(first).all() and first.abs().sum() > 0
    with pytest.raises(RuntimeError, match="runs once"):
        loss.backward()
