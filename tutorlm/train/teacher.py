"""The teacher in training: how its tokenizer compares with the student's, loading it, the output heads that token-level
losses project with, and the graders that score the student's samples for on-policy distillation and KDRL.

- `compare_tokenizers` decides the path: one vocabulary (token-level KD on the student's own tokens) or two
  (cross-tokenizer KD on tokens cut at the same character offsets, train/align.py).
- `LocalGrader` scores the student's token ids with a teacher in memory (one vocabulary), or the completion's text
  under the teacher's own template, aligned back; `RemoteGrader` asks a server that echoes prompt log-probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel

from tutorlm.backends.hf import HFBackend
from tutorlm.backends.openai import TextPair, score_remote
from tutorlm.config import ModelConfig
from tutorlm.errors import PreflightError
from tutorlm.models import topk
from tutorlm.models.load import load, pick_device
from tutorlm.models.score import score_ids, score_rows
from tutorlm.models.tokens import plain_output_head
from tutorlm.train.align import TeacherTokens, VocabularyMap, align, pieces, token_spans
from tutorlm.train.losses import NO_TOKEN
from tutorlm.train.rollout import completion_text, curated_row

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
        differences.append("chat templates differ (with one vocabulary the teacher scores the student's rendering of each "
                           "conversation; with two, each model renders it with its own)")
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
    return ("different vocabularies (" + "; ".join(comparison["differences"]) + "): cross-tokenizer KD applies, on the "
            "tokens cut at the same character offsets, with the teacher's candidates mapped to the student's tokens by text")


def local_teacher(recipe: Any) -> str | None:
    """The local model whose distributions the student learns: train.kd_teacher, else the recipe's hf teacher."""
    if recipe.train.kd_teacher:
        return recipe.train.kd_teacher
    return recipe.teacher.model if recipe.teacher.backend == "hf" and recipe.teacher.model else None


def teacher_model_config(recipe: Any) -> Any:
    """The local teacher's model settings: train.kd_teacher (in train.kd_teacher_dtype), else the recipe's hf teacher."""
    teacher = recipe.teacher
    if recipe.train.kd_teacher:
        return ModelConfig(model=recipe.train.kd_teacher, dtype=recipe.train.kd_teacher_dtype)
    if teacher.backend == "hf" and teacher.model:
        return teacher
    raise PreflightError(
        "train.kd_source teacher needs a local teacher to re-score the rationales: set train.kd_teacher (or "
        "teacher.backend hf and teacher.model); or distil from a stored top-k (`tutorlm generate --generate.top_logprobs 20`)"
    )


def load_teacher(recipe: Any, device: Any) -> tuple[Any, Any]:
    """The local teacher (train.kd_teacher, else the recipe's hf teacher), frozen on `device`, and its tokenizer.

    The recipe's own teacher on the device generation runs it on is taken through the hf backend, so that inside
    `keep_loaded()` (`tutorlm run`) the model that wrote and was evaluated is the one training scores with: one load
    per run, not three."""
    config = teacher_model_config(recipe)
    if config is recipe.teacher and pick_device(config.device) == torch.device(device):
        model, tokenizer = HFBackend(config).load()
    else:
        model, tokenizer = load(config, device=str(device))
    model.requires_grad_(False)
    return model.eval(), tokenizer


def output_rows(model: Any) -> int | None:
    head = plain_output_head(extract_model_from_parallel(model, keep_torch_compile=False))
    return None if head is None else head.weight.shape[0]


def model_and_head(student: Any) -> tuple[Any, torch.nn.Linear]:
    inner = extract_model_from_parallel(student, keep_torch_compile=False)
    head = plain_output_head(inner)
    if head is None:
        raise PreflightError("train.objective kd needs models whose logits are hidden @ weight.T (no soft-capping or bias)")
    return inner, head


@dataclass
class Grades:
    """The teacher on one completion of the student, on the student's tokens."""

    logprobs: torch.Tensor  # (m,) float32: the teacher's log-prob of each completion token; nan where it has none
    top_ids: torch.Tensor  # (m, k) student ids of the teacher's k most likely tokens there; -1 for none
    top_logprobs: torch.Tensor  # (m, k) float32

    def to_json(self) -> dict[str, Any]:
        return {"logprobs": [None if math.isnan(value) else value for value in self.logprobs.tolist()],
                "topk": topk.pack(self.top_ids, self.top_logprobs)}

    def select(self, keep: torch.Tensor) -> "Grades":
        """The grades of the tokens where `keep` (m,) is True."""
        return Grades(self.logprobs[keep], self.top_ids[keep], self.top_logprobs[keep])

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Grades":
        ids, logprobs, _ = topk.unpack(data["topk"])
        return cls(torch.tensor([math.nan if value is None else value for value in data["logprobs"]], dtype=torch.float32),
                   ids, logprobs)


Item = tuple[list[int], list[int], dict[str, Any] | None]  # (prompt ids, completion ids, the curated row asked)


class LocalGrader:
    """A teacher in memory: the student's token ids (one vocabulary), or the text under its own template, aligned."""

    def __init__(self, teacher: Any, teacher_tokenizer: Any, tokenizer: Any, same_vocabulary: bool, name: str,
                 batch_size: int, weights: str = "", dtype: str = "auto") -> None:
        self.teacher, self.teacher_tokenizer, self.tokenizer = teacher, teacher_tokenizer, tokenizer
        self.same_vocabulary, self.batch_size = same_vocabulary, batch_size
        self.vocabulary = None if same_vocabulary else VocabularyMap(tokenizer, teacher_tokenizer)
        # grades are cached under the teacher's weights and precision: another file at the same path, or int8
        # instead of fp32, is not served the old grades
        self.identity = {"local": name, "weights": weights, "dtype": dtype}

    def grade(self, items: list[Item], k: int) -> list[Grades]:
        if self.same_vocabulary:
            scored = score_ids(self.teacher, [(prompt, completion) for prompt, completion, _ in items], top_k=k,
                               batch_size=self.batch_size, pad_token_id=self.tokenizer.pad_token_id)
            return [Grades(torch.tensor(item.logprobs), torch.tensor(item.top_ids), torch.tensor(item.top_logprobs))
                    for item in scored]
        texts = [completion_text(self.tokenizer, completion) for _, completion, _ in items]
        rows = [{"prompt": curated_row(row)["prompt"], "completion": [{"role": "assistant", "content": text}]}
                for (_, _, row), text in zip(items, texts)]
        scored = score_rows(self.teacher, self.teacher_tokenizer, rows, top_k=k, batch_size=self.batch_size)
        grades = []
        for (_, completion, _), item in zip(items, scored):
            teacher = TeacherTokens(item.token_ids, torch.tensor(item.top_ids), torch.tensor(item.top_logprobs))
            aligned = align(self.tokenizer, completion, self.teacher_tokenizer, teacher, self.vocabulary)
            chosen = torch.full((len(completion),), math.nan)
            for student_index, teacher_index in aligned.pairs:
                chosen[student_index] = item.logprobs[teacher_index]
            grades.append(Grades(chosen, aligned.ids, aligned.logprobs))
        return grades


class RemoteGrader:
    """A teacher on an OpenAI-compatible server that echoes prompt log-probabilities; its tokens come back as text
    with offsets and are aligned to the student's by character span."""

    def __init__(self, teacher: Any, teacher_tokenizer: Any, tokenizer: Any, template: str) -> None:
        self.teacher, self.teacher_tokenizer, self.tokenizer = teacher, teacher_tokenizer, tokenizer
        self.pieces = pieces(tokenizer)
        self.identity = {"openai": teacher.model, "template": template}

    def grade(self, items: list[Item], k: int) -> list[Grades]:
        texts = [completion_text(self.tokenizer, completion) for _, completion, _ in items]
        asked = [index for index, text in enumerate(texts) if text]  # a completion of only its end token has no text
        pairs = [TextPair(self.teacher_tokenizer.apply_chat_template(curated_row(items[index][2])["prompt"], add_generation_prompt=True,
                                                                    tokenize=False), texts[index]) for index in asked]
        scores = dict(zip(asked, score_remote(self.teacher, pairs, top_k=k)))
        grades = []
        for index, (_, completion, _) in enumerate(items):
            chosen = torch.full((len(completion),), math.nan)
            ids, logprobs = torch.full((len(completion), k), NO_TOKEN, dtype=torch.long), torch.full((len(completion), k), -math.inf)
            grades.append(Grades(chosen, ids, logprobs))
            if index not in scores:
                continue
            scored = scores[index]
            _, spans = token_spans(self.tokenizer, completion)
            by_span = {(offset, offset + len(token)): position for position, (token, offset) in enumerate(zip(scored.tokens, scored.offsets))}
            for student_index, span in enumerate(spans):
                position = by_span.get(span) if span[0] < span[1] else None
                if position is None:
                    continue
                chosen[student_index] = scored.logprobs[position]
                top = sorted((scored.top[position] if scored.top else {}).items(), key=lambda entry: -entry[1])[:k]
                for slot, (text, value) in enumerate(top):
                    token = self.pieces.get(text, NO_TOKEN)
                    ids[student_index, slot] = token
                    logprobs[student_index, slot] = value if token != NO_TOKEN else -math.inf
        return grades
