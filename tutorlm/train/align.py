"""Teacher top-k targets on the student's tokens: the same vocabulary, or two vocabularies aligned by text.

    targets = align_row(student_tokenizer, row, teacher, vocabulary_map)   # (T, k) ids and log-probs, or None

Every source of teacher distributions (the top-k that `generate --generate.top_logprobs K` stores, or a
local teacher that re-scores the rationale) gives, for each token of the *teacher's* tokenization of a
completion, that token's character span in the completion text and the teacher's k most likely next
tokens with their log-probabilities. This module puts them on the student's tokens:

1. Spans. Both tokenizations are decoded prefix by prefix (`token_spans`), so each token's span is
   exactly the text it adds; a token that ends inside a multi-byte character gets an empty span and the
   token that completes the character gets the whole character.
2. Alignment. A student token is aligned when a teacher token has exactly the same span. Its target is
   the teacher's distribution at that token. When both sides tokenize the text identically (one
   tokenizer) every token aligns; with two tokenizers, tokens cut at the same places (most whole words,
   digits, punctuation and spaces with byte-level BPEs) align and the others do not.
3. Vocabulary. With one vocabulary the teacher's ids are the student's. With two, each of the teacher's
   top-k tokens is mapped to the student token with the same text (`VocabularyMap`); a teacher token
   whose text is no single student token is dropped, and its probability joins the tail bucket of the
   top-k divergence (losses.topk_divergence), never renormalised away.

Unaligned student tokens have no teacher target; train/kd.py trains them on the cross-entropy of the
rationale's own token. This is the exact-match half of the hybrid that TRL's GOLD trainer uses (after
ULD, Boizard et al. 2024, and DSKD); the other half, a sorted-probability (ULD) loss on the unaligned
spans, is not built, so on a pair of very different tokenizers most of the signal is imitation. The share
of aligned tokens and of teacher probability mass that maps is reported in the train stats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

REPLACEMENT = "\ufffd"  # what decoding a partial UTF-8 sequence yields


def token_spans(tokenizer: Any, ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """(the decoded text, each token's (start, end) character span in it); special tokens get empty spans."""
    spans: list[tuple[int, int]] = []
    settled = ""  # the longest prefix decode that did not end inside a character
    pending: list[int] = []  # tokens decoded so far that ended inside a character
    for index in range(len(ids)):
        text = tokenizer.decode(list(ids[: index + 1]), skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if text.endswith(REPLACEMENT) and not _is_replacement_token(tokenizer, ids[index]):
            pending.append(index)
            spans.append((len(settled), len(settled)))
            continue
        start = len(settled) if text.startswith(settled) else _common_prefix(settled, text)
        spans.append((start, len(text)))
        for earlier in pending:  # their bytes belong to this character: empty spans at its start
            spans[earlier] = (start, start)
        pending, settled = [], text
    return settled, spans


def _is_replacement_token(tokenizer: Any, token: int) -> bool:
    return tokenizer.decode([token], skip_special_tokens=True, clean_up_tokenization_spaces=False) == REPLACEMENT and \
        tokenizer.convert_ids_to_tokens(token) in (REPLACEMENT, "\u2581" + REPLACEMENT)


def _first_special_at(tokenizer: Any, ids: Sequence[int], spans: list[tuple[int, int]], offset: int) -> int | None:
    special = set(tokenizer.all_special_ids)
    for index, (start, end) in enumerate(spans):
        if start >= offset and (start > offset or end > start):
            return None
        if start == end == offset and ids[index] in special:
            return index
    return None


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def pieces(tokenizer: Any) -> dict[str, int]:
    """Text -> the id of the (non-special) token that decodes to exactly that text; of several, the lowest id
    (BPE merges: the common one). Texts with a partial character are left out."""
    special = set(tokenizer.all_special_ids)
    found: dict[str, int] = {}
    for token, index in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        if index in special:
            continue
        text = tokenizer.decode([index], clean_up_tokenization_spaces=False)
        if text and REPLACEMENT not in text:
            found.setdefault(text, index)
    return found


class VocabularyMap:
    """Teacher token id -> the student token id with the same text (-1 where there is none), or the identity."""

    def __init__(self, student: Any, teacher: Any | None) -> None:
        self.identity = teacher is None
        self.teacher = teacher
        self.cache: dict[int, int] = {}
        if self.identity:
            return
        self.pieces = pieces(student)
        # Special tokens map by their own names (<|im_end|> to <|im_end|>), and end of sequence to end of sequence.
        self.specials = {token: index for token, index in zip(student.all_special_tokens, student.all_special_ids)}
        self.teacher_specials = set(teacher.all_special_ids)
        self.cache[teacher.eos_token_id] = student.eos_token_id if student.eos_token_id is not None else -1

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """(..., k) teacher ids -> (..., k) student ids, -1 for none."""
        if self.identity:
            return ids
        flat = ids.reshape(-1).tolist()
        for token in set(flat) - self.cache.keys():
            if token in self.teacher_specials:
                self.cache[token] = self.specials.get(self.teacher.convert_ids_to_tokens(token), -1)
                continue
            text = self.teacher.decode([token], clean_up_tokenization_spaces=False) if token >= 0 else ""
            self.cache[token] = self.pieces.get(text, -1) if text and REPLACEMENT not in text else -1
        return torch.tensor([self.cache[token] for token in flat], dtype=torch.long).reshape(ids.shape)


@dataclass
class TeacherTokens:
    """The teacher's side of one completion: its tokens' ids, and its top-k at each of them."""

    token_ids: list[int]  # (n,) the teacher's tokens of the completion
    top_ids: torch.Tensor  # (n, k) teacher ids
    top_logprobs: torch.Tensor  # (n, k) float32


@dataclass
class Aligned:
    """Teacher targets on the student's completion tokens."""

    ids: torch.Tensor  # (m, k) student ids; -1 where there is no target (the whole row when unaligned)
    logprobs: torch.Tensor  # (m, k) float32
    aligned: int  # student tokens with a target
    mapped_mass: float  # summed teacher probability of the top-k entries that map to a student token
    total_mass: float  # summed teacher probability of the top-k entries at aligned tokens
    pairs: list[tuple[int, int]] = field(default_factory=list)  # (student index, teacher index) of each aligned token


def align(student_tokenizer: Any, student_ids: Sequence[int], teacher_tokenizer: Any, teacher: TeacherTokens,
          vocabulary: VocabularyMap) -> Aligned:
    """Targets for each of the student's completion tokens `student_ids` (m of them)."""
    k = teacher.top_ids.shape[1]
    ids = torch.full((len(student_ids), k), -1, dtype=torch.long)
    logprobs = torch.full((len(student_ids), k), float("-inf"))
    student_text, student_spans = token_spans(student_tokenizer, student_ids)
    teacher_text, teacher_spans = token_spans(teacher_tokenizer, teacher.token_ids)
    shared = _common_prefix(student_text, teacher_text)  # the rationale; templates' end-of-turn text may differ
    by_span = {span: index for index, span in enumerate(teacher_spans) if span[0] < span[1] <= shared}
    rows = [(student, by_span[span]) for student, span in enumerate(student_spans) if span in by_span]
    # The end of the turn: the first special token each side has where the shared text ends (<|im_end|>, EOS).
    ends = [_first_special_at(tokenizer, token_ids, spans, shared) for tokenizer, token_ids, spans in
            ((student_tokenizer, student_ids, student_spans), (teacher_tokenizer, teacher.token_ids, teacher_spans))]
    if None not in ends:
        rows.append((ends[0], ends[1]))
    mapped_mass = total_mass = 0.0
    if rows:
        student_rows, teacher_rows = (torch.tensor(side) for side in zip(*rows))
        mapped = vocabulary(teacher.top_ids[teacher_rows])  # (a, k)
        values = teacher.top_logprobs[teacher_rows].float()
        if not vocabulary.identity:
            _merge_repeats(mapped, values)
        ids[student_rows] = mapped
        logprobs[student_rows] = values.masked_fill(mapped < 0, float("-inf"))
        probabilities = values.exp()
        total_mass = float(probabilities.sum())
        mapped_mass = float(probabilities[mapped >= 0].sum())
    return Aligned(ids, logprobs, len(rows), mapped_mass, total_mass, rows)


def _merge_repeats(ids: torch.Tensor, logprobs: torch.Tensor) -> None:
    """In place: where two teacher tokens map to one student id (tokens with the same text), one slot holds both."""
    for row in range(ids.shape[0]):
        seen: dict[int, int] = {}
        for slot, token in enumerate(ids[row].tolist()):
            if token < 0:
                continue
            if token in seen:
                first = seen[token]
                logprobs[row, first] = torch.logaddexp(logprobs[row, first], logprobs[row, slot])
                ids[row, slot] = -1
            else:
                seen[token] = slot


def preview(student: Any, teacher: Any, texts: Sequence[str]) -> dict[str, float]:
    """How much the cross-tokenizer path would see on `texts`: the share of the student's tokens with a teacher
    token of the same span, and the share of the teacher's tokens there whose text is one student token."""
    vocabulary = VocabularyMap(student, teacher)
    aligned = student_tokens = mapped = teacher_tokens = 0
    kinds = {"digit": [0, 0], "line_end": [0, 0]}  # [aligned, all] student tokens with a digit / a newline in their text
    for text in texts:
        student_ids = student(text, add_special_tokens=False)["input_ids"]
        teacher_ids = teacher(text, add_special_tokens=False)["input_ids"]
        spans = set(span for span in token_spans(teacher, teacher_ids)[1] if span[0] < span[1])
        decoded, student_spans = token_spans(student, student_ids)
        for span in student_spans:
            piece, hit = decoded[span[0]:span[1]], span in spans
            aligned += hit
            for kind, present in (("digit", any(c.isdigit() for c in piece)), ("line_end", "\n" in piece)):
                if present:
                    kinds[kind][0] += hit
                    kinds[kind][1] += 1
        student_tokens += len(student_ids)
        mapped += int((vocabulary(torch.tensor(teacher_ids)) >= 0).sum())
        teacher_tokens += len(teacher_ids)
    return {"aligned_token_share": aligned / max(student_tokens, 1), "mapped_token_share": mapped / max(teacher_tokens, 1),
            **{f"aligned_{kind}_token_share": hit / max(total, 1) for kind, (hit, total) in kinds.items()},
            **{f"{kind}_token_share": total / max(student_tokens, 1) for kind, (_, total) in kinds.items()}}
