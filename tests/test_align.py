"""Putting a teacher's top-k on the student's tokens: spans, one vocabulary, two vocabularies."""

from __future__ import annotations

import pytest
import torch
from tiny import different_tokenizer, make_tokenizer

from tutorlm.train.align import TeacherTokens, VocabularyMap, _merge_repeats, align, token_spans

TEXTS = ["What is 12 + 30? Add column by column. The answer is 42.", "ü→λ 🙂 and naïve café, 日本", "  two  spaces\n\nand lines "]


@pytest.fixture(scope="module")
def tokenizers():
    return make_tokenizer(), different_tokenizer(upper=False, vocab_size=300), different_tokenizer(upper=True)


@pytest.mark.parametrize("text", TEXTS)
def test_spans_tile_the_decoded_text(tokenizers, text):
    for tokenizer in tokenizers:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        decoded, spans = token_spans(tokenizer, ids)
        assert decoded == text
        assert "".join(decoded[start:end] for start, end in spans) == text
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # in order, no overlap
        # a token that ends inside a multi-byte character has an empty span; the one that completes it has it all
        for (start, end), token in zip(spans, ids):
            if start < end:
                assert tokenizer.decode([token]) == decoded[start:end] or "\ufffd" in tokenizer.decode([token])


def teacher_side(tokenizer, ids, k=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    top = torch.randint(0, len(tokenizer), (len(ids), k), generator=generator)
    top[:, 0] = torch.tensor(ids)  # the teacher's own token first, as a confident teacher's would be
    logprobs = torch.log_softmax(torch.randn(len(ids), k, generator=generator), -1) - 0.2  # some mass outside the k
    return TeacherTokens(list(ids), top, logprobs)


def test_one_tokenizer_aligns_every_token_with_its_own_ids(tokenizers):
    student = tokenizers[0]
    completion = TEXTS[0] + "<|im_end|>"
    ids = student(completion, add_special_tokens=False)["input_ids"]
    teacher = teacher_side(student, ids)
    aligned = align(student, ids, student, teacher, VocabularyMap(student, None))
    assert aligned.aligned == len(ids)  # the end of the turn too
    assert torch.equal(aligned.ids, teacher.top_ids) and torch.equal(aligned.logprobs, teacher.top_logprobs)
    assert aligned.mapped_mass == pytest.approx(aligned.total_mass)


@pytest.mark.parametrize("teacher_index", [1, 2])
def test_two_tokenizers_align_equal_spans_and_map_candidates_by_text(tokenizers, teacher_index):
    student, teacher_tokenizer = tokenizers[0], tokenizers[teacher_index]
    text = TEXTS[0]
    student_ids = student(text + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
    teacher_ids = teacher_tokenizer(text + "<|im_end|>", add_special_tokens=False)["input_ids"]
    teacher = teacher_side(teacher_tokenizer, teacher_ids, k=8)
    vocabulary = VocabularyMap(student, teacher_tokenizer)
    aligned = align(student, student_ids, teacher_tokenizer, teacher, vocabulary)
    _, student_spans = token_spans(student, student_ids)
    _, teacher_spans = token_spans(teacher_tokenizer, teacher_ids)
    has_target = (aligned.ids >= 0).any(-1)
    assert 0 < aligned.aligned < len(student_ids) and int(has_target.sum()) <= aligned.aligned
    for row in torch.nonzero(has_target).flatten().tolist():
        if student_spans[row][0] == student_spans[row][1]:  # the end of the turn: <|im_end|> on both sides
            assert aligned.ids[row, 0].item() == student.convert_tokens_to_ids("<|im_end|>")
            continue
        match = teacher_spans.index(student_spans[row])  # an aligned token has a teacher token of the same span
        texts = [teacher_tokenizer.decode([token]) for token in teacher.top_ids[match].tolist()]
        for slot in range(8):
            mapped = aligned.ids[row, slot].item()
            if mapped >= 0:  # a mapped candidate is the student token with the teacher token's text, holding the
                # probability of every candidate with that text
                assert student.decode([mapped]) == texts[slot]
                same = [i for i, text in enumerate(texts) if text == texts[slot]]
                assert aligned.logprobs[row, slot].exp() == pytest.approx(teacher.top_logprobs[match, same].exp().sum().item(), rel=1e-5)
            else:  # an unmapped one carries no probability (it is part of the teacher's tail)
                assert aligned.logprobs[row, slot] == float("-inf")
        assert len(set(aligned.ids[row][aligned.ids[row] >= 0].tolist())) == int((aligned.ids[row] >= 0).sum())
    assert 0 < aligned.mapped_mass < aligned.total_mass
    # the teacher's own token is always mappable where the spans agree and it is a student token
    assert all(aligned.ids[row, 0] == student_ids[row] for row in torch.nonzero(has_target).flatten().tolist()
               if student_spans[row][0] < student_spans[row][1] and
               student.decode([student_ids[row]]) == teacher_tokenizer.decode([teacher.top_ids[teacher_spans.index(student_spans[row]), 0].item()]))


def test_text_that_does_not_match_aligns_nothing(tokenizers):
    student = tokenizers[0]
    ids = student("The answer is 42.", add_special_tokens=False)["input_ids"]
    other = student("A coin is heads up.", add_special_tokens=False)["input_ids"]
    aligned = align(student, ids, student, teacher_side(student, other), VocabularyMap(student, None))
    assert aligned.aligned == 0 and (aligned.ids == -1).all()


def test_two_teacher_tokens_with_one_student_token_share_a_slot():
    ids = torch.tensor([[5, 7, 5, -1, 7]])
    logprobs = torch.log(torch.tensor([[0.4, 0.2, 0.1, 0.05, 0.05]]))
    _merge_repeats(ids, logprobs)
    assert ids.tolist() == [[5, 7, -1, -1, -1]]
    assert torch.allclose(logprobs[0, :2].exp(), torch.tensor([0.5, 0.25]))


def test_preview_counts_aligned_digit_and_line_end_tokens(tokenizers):
    from tutorlm.train.align import preview

    student, teacher = tokenizers[0], tokenizers[1]
    texts = ["3 * 12 = 36.\n36 + 7 = 43.\nThe answer is 43.", "Take 250 apples.\nGive away 17."]
    same = preview(student, student, texts)
    assert same["aligned_token_share"] == same["aligned_digit_token_share"] == same["aligned_line_end_token_share"] == 1.0
    assert 0 < same["digit_token_share"] < 1 and 0 < same["line_end_token_share"] < 1
    other = preview(student, teacher, texts)
    assert all(0 <= value <= 1 for value in other.values())
    assert other["digit_token_share"] == same["digit_token_share"]  # the student's own tokens, whoever the teacher is
