"""Losses: pure functions of tensors, with their shapes. Every one is tested against a plain implementation.

    linear_cross_entropy(hidden, weight, targets[, row_weights])       SFT: mean CE of hidden @ weight.T (weighted: policy gradient)
    linear_token_logprobs(hidden, weight, targets)                     log-probs of given tokens and the argmax, no gradient
    token_logprobs(logits, targets)                                    the same from logits in hand
    divergence(student_logprobs, teacher_logprobs, kind, beta)         per-token KD divergences, (N, V) -> (N,)
    topk_divergence(student_logprobs, teacher_ids, teacher_logprobs)   the same against a stored top-k + tail
    linear_loss(hidden, weight, loss_of_logits)                        any per-row loss of hidden @ weight.T, chunked, one projection
    linear_kd_loss(student_hidden, student_weight, teacher, ...)       chunked KD from hidden states (full or top-k teacher[, + CE])
    group_advantages(rewards, group_size, scale)                       GRPO: rewards relative to their group, (B*G,) -> (B*G,)
    clipped_surrogate(logprobs, old_logprobs, advantages, eps_low, eps_high)  PPO/GRPO per-token loss and its gradient weight
    k3_kl(logprobs, ref_logprobs)                                      per-token KL(policy || reference) estimate (Schulman's k3)
    preference_loss(chosen, rejected, ref_chosen, ref_rejected, beta, kind)  DPO (sigmoid) or IPO per pair, and its gradients

Divergences (p = teacher, q = student, both over the vocabulary at one position):
- `forward_kl`  KL(p || q) = Σ p (log p − log q): mean-seeking; Hinton's distillation loss.
- `reverse_kl`  KL(q || p): mode-seeking (MiniLLM; the on-policy per-token signal).
- `jsd`         generalized JSD(β) = β KL(p || m) + (1 − β) KL(q || m), m = β p + (1 − β) q (GKD; Agarwal
                et al. 2024); β = 0.5 is the Jensen-Shannon divergence. The interior tends to 0 at both
                ends, so β = 0 and β = 1 are defined as forward and reverse KL, as TRL's GKD trainer does.
- `skew_kl`     skew KL(α) = KL(p || α p + (1 − α) q) (DistiLLM; Ko et al. 2024), with α = β; α = 0 is
                forward KL.
- `skew_reverse_kl`  KL(q || α q + (1 − α) p); α = 0 is reverse KL.

Temperature T divides both sides' logits before the softmax, and the divergence is multiplied by T²
so its gradient keeps the scale of T = 1 (Hinton et al. 2015).

A stored top-k (what an API returns) is handled with an explicit tail bucket: the teacher's k
probabilities plus 1 − Σ of them as one more outcome, and the student's probabilities of the same k
ids (normalised over its full vocabulary, never renormalised over the k) plus the rest of its mass.
The divergence is then exact between these two (k + 1)-outcome distributions, which lower-bounds the
full-vocabulary divergence (the data-processing inequality) and equals it when the tail is empty.

Chunking: `linear_kd_loss` projects hidden states onto the vocabulary a chunk of rows at a time and forms the
chunk's gradients right away (`linear_loss`), so at most one chunk of (rows x vocabulary) logits of each model
exists at a time and the projection runs once; the result equals the unchunked loss.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch
import torch.nn.functional as F

Divergence = Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl"]
DIVERGENCES: tuple[str, ...] = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl")


# ---------------------------------------------------------------------------------------------------
# Chunked projection onto the vocabulary
# ---------------------------------------------------------------------------------------------------


LOGITS_PER_CHUNK = 2**26  # elements of one chunk's float32 logits (256 MB)


# The divergences against a teacher's full distribution hold about six (c, V) buffers at once (the student's logits and
# log-probs, the teacher's log-probs and probabilities, the mixture, the gradient) where cross-entropy holds one or
# two, so their chunks are an eighth as large. JSD with SmolLM2's vocabulary over 256 rows: 0.72 s in two chunks against
# 0.76 in one; with Qwen2.5's, 55-row chunks were no slower than 441-row ones for JSD, where cross-entropy lost 10-20%.
FULL_KD_LOGITS_PER_CHUNK = LOGITS_PER_CHUNK // 8


def chunk_rows_for(rows: int, vocab: int, budget: int = LOGITS_PER_CHUNK) -> int:
    """Rows per chunk: at most `budget` logits each, the rows split evenly (no small last chunk)."""
    most = max(1, budget // vocab)
    chunks = max(1, -(-rows // most))
    return -(-rows // chunks)


ChunkLoss = Callable[[torch.Tensor, int, int], torch.Tensor]  # (float32 logits of rows start:end, start, end) -> a sum
# (float32 logits of rows start:end, start, end, whether a gradient is wanted) -> (the sum, its gradient or None); may
# overwrite the logits
ChunkLossAndGradient = Callable[[torch.Tensor, int, int, bool], "tuple[torch.Tensor, torch.Tensor | None]"]


class _LinearLoss(torch.autograd.Function):
    """Chunked projection with any loss of the logits, its gradients formed in the forward pass.

    Per chunk of rows: logits = h W^T (once), the chunk's loss and its gradient g with respect to the logits
    (written by hand, or by autograd on the chunk alone); then grad_h = g W and grad_W += g^T h. Backward only
    scales them by the incoming gradient: the projection runs once per chunk (not again in a recompute), and at
    most one chunk's logits and the loss's intermediates on them exist at a time.
    """

    @staticmethod
    def forward(ctx, hidden, weight, dtype, chunk, loss_and_gradient):
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        rows = hidden.shape[0]
        with torch.autocast(hidden.device.type, enabled=False):
            projection = weight.to(dtype)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_hidden = torch.empty_like(hidden) if need_hidden else None
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
            for start in range(0, rows, chunk):
                end = min(start + chunk, rows)
                h = hidden[start:end].to(dtype)
                logits = (h @ projection.T).float()  # (c, V)
                loss, gradient = loss_and_gradient(logits, start, end, need_hidden or need_weight)
                total += loss.detach()
                del logits
                if gradient is None:
                    continue
                gradient = gradient.to(dtype)
                if need_hidden:
                    grad_hidden[start:end] = gradient @ projection
                if need_weight and dtype == torch.float32:
                    grad_weight.addmm_(gradient.T, h)  # in place: no (V, H) temporary
                elif need_weight:
                    grad_weight += gradient.T @ h
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.scaled = False
        return total

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.scaled:
            raise RuntimeError("a chunked loss's gradients were formed once and have been used: backward through it "
                               "runs once (retain_graph is not supported)")
        ctx.scaled = True
        grad_hidden, grad_weight = ctx.saved_tensors
        # Scaled in place, so no second (V, H) buffer exists beside the first.
        return (
            grad_hidden.mul_(grad_output.to(grad_hidden.dtype)) if grad_hidden is not None else None,
            grad_weight.mul_(grad_output) if grad_weight is not None else None,
            None,
            None,
            None,
        )


def _by_autograd(loss_of_logits: ChunkLoss) -> ChunkLossAndGradient:
    def loss_and_gradient(logits: torch.Tensor, start: int, end: int, need: bool):
        if not need:
            return loss_of_logits(logits, start, end).detach(), None
        logits.requires_grad_(True)
        with torch.enable_grad():
            loss = loss_of_logits(logits, start, end)
            (gradient,) = torch.autograd.grad(loss, logits)
        return loss.detach(), gradient

    return loss_and_gradient


def linear_loss(hidden: torch.Tensor, weight: torch.Tensor, loss_of_logits: ChunkLoss | None = None,
                chunk_rows: int | None = None, *, loss_and_gradient: ChunkLossAndGradient | None = None) -> torch.Tensor:
    """Σ over chunks of `loss_of_logits(float32 logits of rows start:end, start, end)`, the logits being
    `hidden @ weight.T` (in the autocast dtype under autocast); (N, H), (V, H) -> scalar. Differentiable in
    `hidden` and `weight`; the chunk's loss must be a sum over its rows (each row's loss depends on its own logits).
    `loss_and_gradient` instead: a chunk loss that writes its own gradient with respect to the logits."""
    if (loss_of_logits is None) == (loss_and_gradient is None):
        raise ValueError("give one of loss_of_logits and loss_and_gradient")
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    chunk = chunk_rows or chunk_rows_for(hidden.shape[0], weight.shape[0])
    return _LinearLoss.apply(hidden, weight, dtype, chunk, loss_and_gradient or _by_autograd(loss_of_logits))


# ---------------------------------------------------------------------------------------------------
# Cross-entropy (SFT)
# ---------------------------------------------------------------------------------------------------


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets`; (N, H), (V, H), (N,) -> scalar.

    `row_weights` (N,), constants, make it Σ w_i CE_i / N: with w = a per-token advantage this is the
    policy-gradient loss −(1/N) Σ A_i log q(x_i) of on-policy distillation and RL.
    Under autocast the projection runs in the autocast dtype (softmax in float32), as the model's own head would.

    Per chunk of rows (`linear_loss`): loss = logsumexp - logit[target] and d(mean loss)/d(logits) =
    (softmax - onehot) / N, written out, so the chunk's logits are never recomputed or kept.
    """
    rows = hidden.shape[0]
    if rows == 0:
        return hidden.sum() * 0.0
    weights = None if row_weights is None else row_weights.detach().float()

    def cross_entropy(logits: torch.Tensor, start: int, end: int, need: bool):
        chosen = targets[start:end]
        log_norm = torch.logsumexp(logits, dim=-1)
        losses = log_norm - logits.gather(1, chosen[:, None]).squeeze(1)  # (c,)
        w = None if weights is None else weights[start:end]
        loss = (losses if w is None else losses * w).sum() / rows
        if not need:
            return loss, None
        gradient = logits.sub_(log_norm[:, None]).exp_()  # softmax, in place
        gradient[torch.arange(chosen.shape[0], device=chosen.device), chosen] -= 1.0
        if w is not None:
            gradient.mul_(w[:, None])
        return loss, gradient.div_(rows)

    return linear_loss(hidden, weight, loss_and_gradient=cross_entropy)


@torch.no_grad()
def linear_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, entropy: bool = False
                          ) -> tuple[torch.Tensor, ...]:
    """(log-prob of each target, the most likely token[, the entropy of the distribution]) under `hidden @ weight.T`,
    a chunk of rows at a time, without gradients; (N, H), (V, H), (N,) -> (N,) float32, (N,) long[, (N,) float32]."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    chunk = chunk_rows_for(hidden.shape[0], weight.shape[0])
    logprobs, best, entropies = [], [], []
    with torch.autocast(device, enabled=False):
        for start in range(0, hidden.shape[0], chunk):
            logits = (hidden[start:start + chunk].to(dtype) @ weight.to(dtype).T).float()  # (c, V)
            log_norm = torch.logsumexp(logits, dim=-1)
            chosen, top = token_logprobs(logits, targets[start:start + chunk], log_norm)
            logprobs.append(chosen)
            best.append(top)
            if entropy:
                log_p = logits.sub_(log_norm[:, None])
                entropies.append(-(log_p.exp() * log_p).sum(-1))
    if not logprobs:
        empty = (hidden.new_zeros(0, dtype=torch.float32), targets.new_zeros(0))
        return (*empty, hidden.new_zeros(0, dtype=torch.float32)) if entropy else empty
    result = (torch.cat(logprobs), torch.cat(best))
    return (*result, torch.cat(entropies)) if entropy else result


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, log_norm: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob of each target, the most likely token) from (c, V) float32 logits; `log_norm` their logsumexp when
    known."""
    log_norm = torch.logsumexp(logits, dim=-1) if log_norm is None else log_norm
    return logits.gather(1, targets[:, None])[:, 0] - log_norm, logits.argmax(-1)


# ---------------------------------------------------------------------------------------------------
# Divergences between next-token distributions
# ---------------------------------------------------------------------------------------------------


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row over the last dimension; (N, V), (N, V) -> (N,). Terms with p = 0 count 0."""
    p = log_p.exp()
    return (p * (log_p - log_q)).masked_fill(p == 0, 0.0).sum(-1)


def _mix(log_a: torch.Tensor, log_b: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(w a + (1 − w) b), stably; 0 < w < 1."""
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log1p(-weight_a))


def divergence(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, kind: Divergence = "forward_kl",
               beta: float = 0.5) -> torch.Tensor:
    """Per-position divergence of the student from the teacher; (N, V) log-probs each -> (N,).

    `beta` is GKD's β for `jsd` and DistiLLM's skew α for the skew divergences (see the module docstring).
    The teacher side carries no gradient.
    """
    # float32 at least (bf16/fp16 upcast); float64 inputs keep their precision
    student = student_logprobs.to(torch.promote_types(student_logprobs.dtype, torch.float32))
    teacher = teacher_logprobs.detach().to(torch.promote_types(teacher_logprobs.dtype, torch.float32))
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if kind == "forward_kl" or (kind in ("jsd", "skew_kl") and beta == 0.0):
        return _kl(teacher, student)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1.0) or (kind == "skew_reverse_kl" and beta == 0.0):
        return _kl(student, teacher)
    if kind == "jsd":
        mixture = _mix(teacher, student, beta)  # m = β p + (1 − β) q
        return beta * _kl(teacher, mixture) + (1 - beta) * _kl(student, mixture)
    if kind == "skew_kl":
        return _kl(teacher, _mix(teacher, student, beta)) if beta < 1.0 else torch.zeros_like(student[..., 0])
    if kind == "skew_reverse_kl":
        return _kl(student, _mix(student, teacher, beta)) if beta < 1.0 else torch.zeros_like(student[..., 0])
    raise ValueError(f"unknown divergence {kind!r}; choose one of {', '.join(DIVERGENCES)}")


def with_tail(logprobs: torch.Tensor) -> torch.Tensor:
    """(N, k) log-probs of k outcomes whose mass is at most 1 -> (N, k + 1) with the missing mass as the last one.

    The missing mass is 1 − Σ, computed in float64; where it is tiny it is only as exact as the k log-probs given.
    """
    mass = logprobs.double().exp().sum(-1, keepdim=True)  # (N, 1)
    tail = torch.log1p(-mass.clamp(max=1.0 - 1e-12)).to(logprobs.dtype)  # (N, 1); a tail of (numerically) 0 stays finite
    return torch.cat([logprobs, tail], dim=-1)


NO_TOKEN = -1  # a top-k slot with no token (fewer than k candidates, or a teacher token with no student token)
FLOOR = -1e4  # the log-probability such slots get on both sides: exp() is exactly 0, and every gradient stays finite


def topk_divergence(student_logprobs: torch.Tensor, teacher_ids: torch.Tensor, teacher_logprobs: torch.Tensor,
                    kind: Divergence = "forward_kl", beta: float = 0.5) -> torch.Tensor:
    """Divergence against a teacher known only by its top-k; (N, V) student log-probs (over the full vocabulary),
    (N, k) teacher token ids and log-probs -> (N,). Both sides get the tail bucket (module docstring).

    Ids of NO_TOKEN (-1) are empty slots: they count on neither side, and the teacher's probability there (a
    token the student's vocabulary lacks) is part of the teacher's tail. Ids must not repeat within a row.
    """
    student = student_logprobs.to(torch.promote_types(student_logprobs.dtype, torch.float32))
    valid = teacher_ids != NO_TOKEN  # (N, k)
    safe = teacher_ids.clamp(min=0)
    student_topk = student.gather(-1, safe).masked_fill(~valid, FLOOR)  # (N, k)
    # The student's own tail is known exactly: the log-sum-exp of every id outside the teacher's k.
    taken = torch.zeros_like(student).scatter_add(-1, safe, valid.to(student.dtype)) > 0  # (N, V)
    outside = student.masked_fill(taken, float("-inf"))
    # (N, 1); floored at 1e-30 so that a teacher top-k covering every id (an empty tail) still compares finitely
    student_tail = torch.logsumexp(outside, dim=-1, keepdim=True).clamp(min=math.log(1e-30))
    teacher = teacher_logprobs.to(student.dtype).clamp(min=FLOOR).masked_fill(~valid, FLOOR)
    return divergence(torch.cat([student_topk, student_tail], dim=-1), with_tail(teacher), kind, beta)


# ---------------------------------------------------------------------------------------------------
# Chunked KD from hidden states
# ---------------------------------------------------------------------------------------------------


TeacherLogprobs = Callable[[int, int], torch.Tensor]  # (start, end) -> the teacher's (end - start, V) log-probs
def _topk_forward_kl(logits: torch.Tensor, ids: torch.Tensor, teacher_logprobs: torch.Tensor,
                     targets: torch.Tensor | None, kd_share: torch.Tensor, ce_share: torch.Tensor | None, need: bool
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Σ_rows kd_share · forward KL against a top-k with tail (as `topk_divergence`) + ce_share · cross-entropy of
    the targets, and its gradient with respect to the (c, V) logits (overwritten), written out: with q the student's
    softmax, K the teacher's ids, p its probabilities and p_T, q_T the two tails,
        d KL / d z = q − (p_T / q_T) · q·[j ∉ K] − p·[j ∈ K],    d CE / d z = q − onehot(target).
    About a third of the passes over the (c, V) logits that autograd makes through `topk_divergence`."""
    valid = ids != NO_TOKEN  # (c, k)
    has = valid.any(-1)  # (c,)
    # Slots without a token point at a slot of the row that has one (or at id 0, left as it is, in a row with none),
    # so that writing over K never touches an id outside it.
    first = torch.where(has, ids.gather(-1, valid.float().argmax(-1, keepdim=True))[:, 0], 0)  # (c,)
    index = torch.where(valid, ids, first[:, None])  # (c, k)
    log_norm = torch.logsumexp(logits, dim=-1)  # (c,)
    log_q = (logits.gather(-1, index) - log_norm[:, None]).masked_fill(~valid, FLOOR)  # (c, k)
    target_logit = logits.gather(-1, targets[:, None])[:, 0] if targets is not None else None
    q = logits.sub_(log_norm[:, None]).exp_()  # (c, V), in place of the logits
    outside = q.scatter(-1, index, torch.where(has[:, None], 0.0, q.gather(-1, index)))  # q with K's ids zeroed
    q_tail = outside.sum(-1).clamp(min=1e-30)  # (c,)
    log_p = with_tail(teacher_logprobs.float().clamp(min=FLOOR).masked_fill(~valid, FLOOR))  # (c, k + 1)
    p, p_tail = log_p[:, :-1].exp(), log_p[:, -1].exp()  # (c, k), (c,)
    kl = (p * (log_p[:, :-1] - log_q)).masked_fill(p == 0, 0.0).sum(-1)
    kl = kl + torch.where(p_tail > 0, p_tail * (log_p[:, -1] - q_tail.log()), 0.0)
    loss = (kd_share * kl).sum()
    if ce_share is not None:
        loss = loss + (ce_share * (log_norm - target_logit)).sum()
    if not need:
        return loss, None
    share = kd_share + (ce_share if ce_share is not None else 0.0)  # (c,)
    gradient = q.mul_(share[:, None]).sub_(outside.mul_((kd_share * p_tail / q_tail)[:, None]))
    gradient.scatter_add_(-1, index, -(kd_share[:, None] * p))  # empty slots add 0
    if ce_share is not None:
        gradient.scatter_add_(-1, targets[:, None], -ce_share[:, None])
    return loss, gradient


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_v a · b per row of two (c, V) tensors, as c batched dot products: no (c, V) product is formed (and it is
    about twice as fast as multiplying and summing)."""
    return (a[:, None, :] @ b[:, :, None])[:, 0, 0]


def _weighted_sum(p: torch.Tensor, difference: torch.Tensor) -> torch.Tensor:
    """Σ_v p · difference per row, 0 where p is 0: there (only there) the difference may be −inf or nan. `difference`
    is a fresh buffer and is overwritten."""
    return _row_dot(p, difference.nan_to_num_(nan=0.0, neginf=0.0, posinf=math.inf))


def _full_divergence(logits: torch.Tensor, log_p: torch.Tensor, kind: Divergence, beta: float, temperature: float,
                     targets: torch.Tensor | None, ce_weight: float, need: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Σ_rows of T² · divergence(q, p) (forward KL, reverse KL or GKD's JSD(β)), or of (1 − w) · that + w · cross-entropy
    of the targets at temperature 1, and its gradient with respect to the (c, V) logits z, written out. q = softmax(z / T),
    p the teacher (its (c, V) log-probs at T), m = β p + (1 − β) q. Per row, with r = log q − log m:
    forward KL Σ p log(p / q) has gradient T (q − p); reverse KL Σ q log(q / p) has T q (log q − log p − KL(q || p));
    JSD β KL(p || m) + (1 − β) KL(q || m) has T (1 − β) q (r − KL(q || m)) (the teacher's term and the mixture's own
    change cancel). No autograd graph over the chunk: a few (c, V) buffers instead of a dozen."""
    if kind == "jsd" and beta == 0.0:
        kind = "forward_kl"
    elif kind == "jsd" and beta == 1.0:
        kind = "reverse_kl"
    log_q = F.log_softmax(logits / temperature if temperature != 1.0 else logits, dim=-1)
    p = log_p.exp() if kind != "reverse_kl" else None
    if kind == "forward_kl":
        per_row = _weighted_sum(p, log_p - log_q)
        gradient = log_q.exp().sub_(p) if need else None
    elif kind == "reverse_kl":
        q = log_q.exp()
        difference = log_q.sub_(log_p)  # log q − log p, in place
        per_row = _row_dot(q, difference)
        gradient = q.mul_(difference.sub_(per_row[:, None])) if need else None
    else:
        log_m = log_p + math.log(beta)
        torch.logaddexp(log_m, log_q + math.log1p(-beta), out=log_m)  # m = β p + (1 − β) q
        teacher_side = _weighted_sum(p, log_p - log_m)
        del p
        q = log_q.exp()
        r = log_q.sub_(log_m)
        del log_m
        student_side = _row_dot(q, r)
        per_row = beta * teacher_side + (1 - beta) * student_side
        gradient = q.mul_(r.sub_(student_side[:, None])).mul_(1 - beta) if need else None
    per_row = per_row * temperature**2
    if gradient is not None and temperature != 1.0:
        gradient.mul_(temperature)
    if targets is None:
        return per_row.sum(), gradient
    log_norm = torch.logsumexp(logits, dim=-1)
    cross_entropy = log_norm - logits.gather(1, targets[:, None])[:, 0]
    loss = ((1 - ce_weight) * per_row + ce_weight * cross_entropy).sum()
    if gradient is None:
        return loss, None
    softmax = logits.sub_(log_norm[:, None]).exp_()  # the logits are not needed after this
    softmax[torch.arange(targets.shape[0], device=targets.device), targets] -= 1.0
    return loss, gradient.mul_(1 - ce_weight).add_(softmax.mul_(ce_weight))


def linear_kd_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_logprobs: TeacherLogprobs | tuple[torch.Tensor, torch.Tensor],
    *,
    kind: Divergence = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    chunk_rows: int | None = None,
    targets: torch.Tensor | None = None,
    ce_weight: float = 0.0,
    observe: Callable[[torch.Tensor, int, int], None] | None = None,
) -> torch.Tensor:
    """Mean KD divergence over N positions, with the student's logits `student_hidden @ student_weight.T`.

    (N, H) student hidden states, (V, H) its output projection. The teacher is either a function
    `teacher_logprobs(start, end)` that returns its (end - start, V) log-probs at the same temperature
    (computed under no_grad, e.g. from the teacher's own hidden states a chunk at a time), or a top-k as
    ((N, k) ids, (N, k) log-probs), compared by `topk_divergence` (temperature 1 only: a top-k cannot be
    re-tempered without the rest of the distribution). A top-k row whose ids are all NO_TOKEN has no teacher.

    With `targets` (N,) the loss per row is (1 − ce_weight) · divergence + ce_weight · cross-entropy of the target
    (at temperature 1), and cross-entropy alone on a row with no teacher: the KD objective with its SFT share, from
    one projection. The projection runs once per chunk (`linear_loss`): peak memory is one chunk of logits. The
    gradient is written out (no autograd graph over a chunk) for a full teacher's forward KL, reverse KL and JSD
    (`_full_divergence`) and a top-k teacher's forward KL; the other cases go through autograd on the chunk.
    `observe(logits, start, end)`, when given, sees each chunk's float32 student logits (detached, before the loss;
    not to be changed): statistics of the student's distribution at no extra projection.
    """
    rows = student_hidden.shape[0]
    topk = isinstance(teacher_logprobs, tuple)
    if topk and temperature != 1.0:
        raise ValueError("a teacher known by its top-k takes temperature 1 (a top-k cannot be re-tempered)")
    if targets is None and ce_weight:
        raise ValueError("ce_weight needs targets")
    if rows == 0:
        return student_hidden.sum() * 0.0
    # the full-distribution and autograd paths hold several (c, V) buffers: smaller chunks (FULL_KD_LOGITS_PER_CHUNK)
    several_buffers = chunk_rows or chunk_rows_for(rows, student_weight.shape[0], FULL_KD_LOGITS_PER_CHUNK)
    has_teacher = (teacher_logprobs[0] != NO_TOKEN).any(-1) if topk else None  # (N,)
    if topk and kind == "forward_kl":  # the common case, with its gradient written out
        shares = torch.ones(rows, device=student_hidden.device) if targets is None else \
            torch.where(has_teacher, 1.0 - ce_weight, 0.0).to(student_hidden.device)
        ce_shares = None if targets is None else torch.where(has_teacher, ce_weight, 1.0).to(student_hidden.device)

        def written_out(logits: torch.Tensor, start: int, end: int, need: bool):
            if observe is not None:
                observe(logits, start, end)
            return _topk_forward_kl(logits, teacher_logprobs[0][start:end], teacher_logprobs[1][start:end],
                                    None if targets is None else targets[start:end], shares[start:end],
                                    None if ce_shares is None else ce_shares[start:end], need)

        return linear_loss(student_hidden, student_weight, chunk_rows=chunk_rows, loss_and_gradient=written_out) / rows

    if not topk and kind in ("forward_kl", "reverse_kl", "jsd"):  # the full distribution, its gradient written out

        def full(logits: torch.Tensor, start: int, end: int, need: bool):
            if observe is not None:
                observe(logits, start, end)
            with torch.no_grad():
                teacher = teacher_logprobs(start, end)
            return _full_divergence(logits, teacher.float(), kind, beta, temperature,
                                    None if targets is None else targets[start:end], ce_weight, need)

        return linear_loss(student_hidden, student_weight, chunk_rows=several_buffers, loss_and_gradient=full) / rows

    def chunk_loss(logits: torch.Tensor, start: int, end: int) -> torch.Tensor:
        if observe is not None:
            with torch.no_grad():
                observe(logits.detach(), start, end)
        log_q = F.log_softmax(logits / temperature, dim=-1)  # (c, V)
        if topk:
            per_row = topk_divergence(log_q, teacher_logprobs[0][start:end], teacher_logprobs[1][start:end], kind, beta)
        else:
            with torch.no_grad():
                teacher = teacher_logprobs(start, end)  # (c, V)
            per_row = divergence(log_q, teacher, kind, beta)
        per_row = per_row * temperature**2
        if targets is None:
            return per_row.sum()
        if temperature != 1.0:
            log_q = F.log_softmax(logits, dim=-1)
        cross_entropy = -log_q.gather(1, targets[start:end, None])[:, 0]  # (c,)
        if has_teacher is None:
            return ((1 - ce_weight) * per_row + ce_weight * cross_entropy).sum()
        teacher_rows = has_teacher[start:end]
        mixed = (1 - ce_weight) * per_row + ce_weight * cross_entropy
        return torch.where(teacher_rows, mixed, cross_entropy).sum()

    return linear_loss(student_hidden, student_weight, chunk_loss, several_buffers) / rows


# ---------------------------------------------------------------------------------------------------
# Policy gradient (GRPO)
# ---------------------------------------------------------------------------------------------------


def group_advantages(rewards: torch.Tensor, group_size: int, scale: Literal["group", "batch", "none"] = "group",
                     eps: float = 1e-4) -> torch.Tensor:
    """GRPO's advantages: each reward minus its group's mean; (B*G,) with each group's G samples adjacent -> (B*G,).

    scale `group` divides by the group's standard deviation (+ eps; Shao et al. 2024), `batch` by the whole batch's
    (Hu et al., REINFORCE++), `none` not at all (Dr. GRPO, Liu et al. 2025: the std division weights questions that are
    nearly solved or nearly failed more). The standard deviation is the unbiased one, as TRL's. A group whose rewards are
    all equal gets advantages 0 under every scale (no division by zero).
    """
    grouped = rewards.float().view(-1, group_size)  # (B, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "group":
        centred = centred / (grouped.std(dim=1, keepdim=True, unbiased=group_size > 1).nan_to_num(0.0) + eps)
    elif scale == "batch":
        centred = centred / (rewards.float().std(unbiased=rewards.numel() > 1).nan_to_num(0.0) + eps)
    return centred.flatten()


def clipped_surrogate(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, eps_low: float = 0.2,
                      eps_high: float = 0.2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped objective per token, with separate low/high clip ranges (DAPO's clip-higher); all (N,).

    Returns (loss = −min(ρA, clip(ρ, 1−eps_low, 1+eps_high) A), the gradient weight, whether the token was clipped),
    ρ = exp(logprobs − old_logprobs). The gradient of the loss with respect to log π(x_t) is −weight_t, weight =
    A ρ where the unclipped term is the minimum and 0 where the clipped one is: `linear_cross_entropy` with these as
    row weights has exactly the surrogate's gradient. Nothing here carries gradients.
    """
    ratio = torch.exp(logprobs.detach() - old_logprobs.detach())
    unclipped = ratio * advantages
    clipped_value = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
    clipped = clipped_value < unclipped  # the clipped term is the smaller: no gradient through ρ
    loss = -torch.minimum(unclipped, clipped_value)
    return loss, torch.where(clipped, torch.zeros_like(unclipped), unclipped), clipped


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token estimate of KL(policy || reference) on the policy's samples, exp(r − l) − (r − l) − 1 ≥ 0 with
    l, r the two log-probs of the sampled token (Schulman's k3, as GRPO uses); (N,), (N,) -> (value, gradient weight).
    Its gradient with respect to l is 1 − exp(r − l) = −weight, weight = exp(r − l) − 1."""
    difference = ref_logprobs.detach() - logprobs.detach()
    return torch.exp(difference) - difference - 1.0, torch.exp(difference) - 1.0


# ---------------------------------------------------------------------------------------------------
# Preferences (DPO)
# ---------------------------------------------------------------------------------------------------


def preference_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
                    beta: float = 0.1, kind: Literal["sigmoid", "ipo"] = "sigmoid"
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pair: (loss, d loss / d chosen, d loss / d rejected); all (P,), nothing carries gradients.

    `chosen`, `rejected`: the policy's log-probability of each pair's two completions (sigmoid: summed over
    tokens; ipo: averaged, as Azar et al. and TRL do); `ref_*` the reference model's. With
    h = (chosen − ref_chosen) − (rejected − ref_rejected):
    - sigmoid (DPO, Rafailov et al. 2023): −log σ(β h); d/d chosen = −β σ(−β h) = −d/d rejected.
    - ipo (Azar et al. 2023): (h − 1/(2β))²; d/d chosen = 2 (h − 1/(2β)) = −d/d rejected.
    """
    h = (chosen.detach() - ref_chosen) - (rejected.detach() - ref_rejected)
    if kind == "ipo":
        gap = h - 1.0 / (2.0 * beta)
        return gap**2, 2.0 * gap, -2.0 * gap
    slope = -beta * torch.sigmoid(-beta * h)
    return -F.logsigmoid(beta * h), slope, -slope
