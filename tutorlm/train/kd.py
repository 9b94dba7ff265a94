"""Logit distillation (`train.objective: kd`): the student matches the teacher's next-token distributions.

    tutorlm train --out runs/x --train.objective kd --teacher.backend hf --teacher.model TEACHER_DIR \\
        [--train.kd_divergence forward_kl|reverse_kl|jsd|skew_kl|skew_reverse_kl] [--train.kd_beta 0.5] \\
        [--train.kd_temperature 1.0] [--train.kd_ce_weight 0.0]

Method: Hinton et al. (2015) on sequences (word-level KD, Kim & Rush 2016): at every completion token
of a curated rationale the student's distribution is pulled towards the teacher's, by the divergence
of `train/losses.py`, optionally mixed with the cross-entropy on the rationale's own tokens:
loss = (1 − w) · divergence + w · CE. The teacher here is a local model that re-scores the curated
rationales in the training step (one no-grad forward per batch, its vocabulary projection only at
the completion positions, a chunk at a time); nothing is sampled. Departures: distilling from the
top-k log-probabilities stored by `generate --generate.top_logprobs K` is not wired in yet (those
are stored as token strings, not ids), and teacher and student must share a vocabulary: the
pre-flight check below compares the two tokenizers and refuses anything else with what differs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel

from tutorlm.errors import PreflightError
from tutorlm.train.data import IGNORE, identity_head, labelled_positions, plain_output_head
from tutorlm.train.losses import linear_cross_entropy, linear_kd_loss

SAMPLE_TEXTS = ("The answer is 42.", "Alice flips the coin. Is it still heads up?", " 12 + 30 = 42\n", "ü→λ 🙂")


def compare_tokenizers(student: Any, teacher: Any, student_rows: int | None = None, teacher_rows: int | None = None) -> dict[str, Any]:
    """How two tokenizers (and, when given, the rows of the two models' output projections) compare.

    Returns {"same_vocabulary": bool, "differences": [...], "vocabulary": n, ...}. Padded embedding rows past
    the tokenizer's length (Qwen pads to a multiple of 64 or more) are not a difference: those ids never occur.
    """
    differences = []
    student_vocab, teacher_vocab = student.get_vocab(), teacher.get_vocab()
    if len(student_vocab) != len(teacher_vocab):
        differences.append(f"vocabulary size: student {len(student_vocab)}, teacher {len(teacher_vocab)}")
    else:
        mismatched = [token for token, index in student_vocab.items() if teacher_vocab.get(token) != index]
        if mismatched:
            differences.append(f"{len(mismatched)} tokens have other ids (e.g. {mismatched[0]!r}: student "
                               f"{student_vocab[mismatched[0]]}, teacher {teacher_vocab.get(mismatched[0])})")
    for name in ("eos_token", "bos_token", "pad_token"):
        if getattr(student, name) != getattr(teacher, name):
            differences.append(f"{name}: student {getattr(student, name)!r}, teacher {getattr(teacher, name)!r}")
    for text in SAMPLE_TEXTS:
        student_ids = student(text, add_special_tokens=False)["input_ids"]
        teacher_ids = teacher(text, add_special_tokens=False)["input_ids"]
        if student_ids != teacher_ids:
            differences.append(f"ids of {text!r}: student {student_ids[:8]}, teacher {teacher_ids[:8]}")
            break
    if student.chat_template != teacher.chat_template:
        differences.append("chat templates differ (the teacher scores the student's rendering of each conversation)")
    needed = len(student_vocab)
    for who, rows in (("student", student_rows), ("teacher", teacher_rows)):
        if rows is not None and rows < needed:
            differences.append(f"the {who}'s output projection has {rows} rows for a vocabulary of {needed}")
    # Chat templates may differ and KD still be exact on the student's rendering; everything else may not.
    blocking = [d for d in differences if not d.startswith("chat templates")]
    return {"same_vocabulary": not blocking, "differences": differences, "vocabulary": len(student_vocab),
            "student_rows": student_rows, "teacher_rows": teacher_rows}


def describe(comparison: dict[str, Any]) -> str:
    if comparison["same_vocabulary"]:
        notes = f"; note: {'; '.join(comparison['differences'])}" if comparison["differences"] else ""
        return f"same vocabulary ({comparison['vocabulary']} tokens): token-level KD applies{notes}"
    return "different vocabularies: " + "; ".join(comparison["differences"])


def load_teacher(recipe: Any, student_tokenizer: Any, student_model: Any, device: Any) -> tuple[Any, dict[str, Any]]:
    """The local teacher for KD, frozen on `device`, after the tokenizer pre-flight; (model, comparison)."""
    from tutorlm.models import load_model, load_tokenizer

    teacher = recipe.teacher
    if teacher.backend != "hf" or not teacher.model:
        raise PreflightError(
            "train.objective kd needs the teacher's next-token distributions: set teacher.backend hf and teacher.model to a "
            "local model that shares the student's tokenizer (it re-scores the curated rationales). Distilling from the "
            "top-k log-probabilities stored by `tutorlm generate --generate.top_logprobs K` is not supported yet"
        )
    tokenizer = load_tokenizer(teacher.model, teacher.gguf_file, trust_remote_code=teacher.trust_remote_code)
    model = load_model(teacher.model, teacher.gguf_file, device=str(device), dtype=teacher.dtype,
                       trust_remote_code=teacher.trust_remote_code)
    comparison = compare_tokenizers(student_tokenizer, tokenizer, _rows(student_model), _rows(model))
    if not comparison["same_vocabulary"]:
        raise PreflightError(
            f"teacher {teacher.model} and student cannot be distilled token by token: {describe(comparison)}. "
            "Use a teacher with the student's tokenizer, or train.objective sft on its rationales"
        )
    model.requires_grad_(False)
    return model.eval(), comparison


def _rows(model: Any) -> int | None:
    head = plain_output_head(extract_model_from_parallel(model, keep_torch_compile=False))
    return None if head is None else head.weight.shape[0]


def kd_loss(student: Any, teacher: Any, batch: dict[str, torch.Tensor], config: Any) -> tuple[torch.Tensor, int]:
    """(the KD objective over the batch's completion tokens, their count); neither model's full logits exist."""
    inner = extract_model_from_parallel(student, keep_torch_compile=False)
    student_head, teacher_head = plain_output_head(inner), plain_output_head(teacher)
    if student_head is None or teacher_head is None:
        raise PreflightError("train.objective kd needs models whose logits are hidden @ weight.T (no soft-capping or bias)")
    inputs, positions, chosen = labelled_positions(batch)
    wanted = chosen != IGNORE  # (B, K)
    with identity_head(inner, student_head):
        student_hidden = student(**inputs, logits_to_keep=positions, use_cache=False).logits[wanted]  # (N, H)
    with torch.no_grad(), identity_head(teacher, teacher_head):
        teacher_hidden = teacher(**inputs, logits_to_keep=positions, use_cache=False).logits[wanted]  # (N, H_t)
    # Rows past the shorter projection are embedding padding (no token has those ids): both sides drop them.
    rows = min(student_head.weight.shape[0], teacher_head.weight.shape[0])
    student_weight, teacher_weight = student_head.weight[:rows], teacher_head.weight[:rows]

    def teacher_logprobs(start: int, end: int) -> torch.Tensor:
        logits = (teacher_hidden[start:end] @ teacher_weight.to(teacher_hidden.dtype).T).float()  # (c, V)
        return F.log_softmax(logits / config.kd_temperature, dim=-1)

    loss = linear_kd_loss(student_hidden, student_weight, teacher_logprobs, kind=config.kd_divergence,
                          beta=config.kd_beta, temperature=config.kd_temperature)
    if config.kd_ce_weight:
        cross_entropy = linear_cross_entropy(student_hidden, student_head.weight, chosen[wanted])
        loss = (1 - config.kd_ce_weight) * loss + config.kd_ce_weight * cross_entropy
    return loss, student_hidden.shape[0]
