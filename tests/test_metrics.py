"""Metric functions against hand-computed values."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tutorlm import metrics, verify
from tutorlm.metrics import accuracy_of, accuracy_recovered, k_values, majority_vote, pass_at_k, wilson_interval


def test_pass_at_k_hand_computed():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(5, 2, 4) == 1.0  # only 3 wrong samples: any 4 contain a right one
    assert pass_at_k(4, 0, 2) == 0.0 and pass_at_k(4, 4, 1) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


@given(st.integers(1, 12).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_equals_the_combinatorial_definition(args):
    n, c, k = args
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_pass_at_k_matches_enumeration_of_subsets():
    samples = [True, False, False, True, False]
    subsets = list(itertools.combinations(samples, 3))
    assert pass_at_k(5, 2, 3) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_majority_vote():
    assert majority_vote(["3", "4", "4", None]) == "4"
    assert majority_vote(["3", "4"]) == "3"  # ties go to the first answer seen
    assert majority_vote([None, None]) is None
    same = lambda a, b: verify.answers_match(a, b, answer_type="number")  # noqa: E731
    assert majority_vote(["7", "1,000", "1000.0"], same) == "1,000"


def test_wilson_interval_hand_computed():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_accuracy_of_question_scores_with_its_interval():
    scores = {f"q{i}": 1.0 if i < 8 else 0.0 for i in range(10)}
    result = accuracy_of(scores)
    assert result == {"accuracy": 0.8, "accuracy_ci95": [0.4902, 0.9433], "questions": 10}
    assert accuracy_of({}) == {"questions": 0}


def test_wilson_interval_always_holds_the_observed_rate():
    # The report draws p - low and high - p as error bars, which must not be negative.
    for total in range(1, 300):
        for successes in range(total + 1):
            low, high = wilson_interval(successes, total)
            assert 0.0 <= low <= successes / total <= high <= 1.0, (successes, total)
    assert wilson_interval(4, 4)[1] == 1.0 and wilson_interval(0, 4)[0] == 0.0


def test_accuracy_recovered_and_k_values():
    assert accuracy_recovered(0.1, 0.5, 0.9) == pytest.approx(0.5)
    assert accuracy_recovered(0.5, 0.6, 0.5) is None
    assert k_values(1) == [1] and k_values(8) == [1, 2, 4, 8] and k_values(6) == [1, 2, 4, 6]


def test_paired_bootstrap_of_accuracy_recovered():
    base = [0.0] * 50 + [1.0] * 10 + [0.0] * 40
    teacher = [1.0] * 80 + [0.0] * 20
    # a student that learned exactly the teacher's answers recovered all of the lead, in every resample
    same = metrics.paired_bootstrap(base, teacher, teacher)
    assert same["recovered"] == 1.0 and same["recovered_ci95"] == [1.0, 1.0]
    assert same["student_over_teacher_ci95"] == [1.0, 1.0]
    # one that learned nothing recovered none
    nothing = metrics.paired_bootstrap(base, base, teacher)
    assert nothing["recovered"] == 0.0 and nothing["recovered_ci95"] == [0.0, 0.0]
    # half of the teacher's lead: (0.45 - 0.10) / (0.80 - 0.10) = 0.5, with an interval around it
    half = [1.0] * 45 + [0.0] * 55
    result = metrics.paired_bootstrap(base, half, teacher, seed=1)
    assert result["recovered"] == pytest.approx(0.5)
    low, high = result["recovered_ci95"]
    assert 0.3 < low < 0.5 < high < 0.7
    assert result["student_over_teacher"] == pytest.approx(0.45 / 0.8)
    # a teacher that never leads: no ratio, and no interval
    flat = metrics.paired_bootstrap(teacher, half, teacher)
    assert flat["recovered"] is None and flat["recovered_ci95"] is None and flat["undefined_resamples"] == 2000
    with pytest.raises(ValueError):
        metrics.paired_bootstrap([1.0], [1.0, 0.0], [1.0])


def test_paired_difference_of_two_models_on_the_same_questions():
    first = [1, 0, 0, 1, 0, 0, 1, 0, 0, 0] * 10
    second = [1, 1, 0, 1, 0, 1, 1, 0, 0, 0] * 10  # right wherever the first is, and on 20 more
    result = metrics.paired_difference(first, second)
    assert result["difference"] == pytest.approx(0.2) and result["questions"] == 100
    low, high = result["difference_ci95"]
    assert 0 < low < 0.2 < high < 0.4 and result["p_not_better"] == 0.0
    same = metrics.paired_difference(first, first)
    assert same["difference"] == 0 and same["difference_ci95"] == [0, 0] and same["p_not_better"] == 1.0
    with pytest.raises(ValueError, match="same length"):
        metrics.paired_difference([1, 0], [1])


def test_paired_scores_pairs_by_question_on_the_questions_both_answered():
    first = {"q1": 1.0, "q2": 0.0, "q3": 0.0, "only-first": 1.0}
    second = {"q3": 1.0, "q2": 1.0, "q1": 1.0, "only-second": 0.0}  # another order, and one question each of its own
    result = metrics.paired_scores(first, second)
    assert result["questions"] == 3
    assert result["difference"] == pytest.approx(2 / 3)
    assert result == metrics.paired_difference([1.0, 0.0, 0.0], [1.0, 1.0, 1.0])


def test_the_eval_table_keeps_every_figure_whole_at_80_columns():
    import io

    from rich.console import Console

    from tutorlm.evaluate import print_table

    out = io.StringIO()
    summary = {"accuracy": 0.14, "accuracy_ci95": [0.078, 0.214], "mean_completion_tokens": 123.0, "truncation_rate": 0.05,
               "no_answer_rate": 0.01, "examples": 100}
    print_table(Console(file=out, width=80), {"qwen2.5-coder-0.5b-instruct": {**summary, "pass@2": 0.2, "maj@2": 0.18},
                                              "teacher": {**summary, "accuracy_ci95": [1.0, 1.0]}})
    text = out.getvalue()
    assert "7.8%–21.4%" in text and "100.0%–100.0%" in text and "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "qwen2.5-coder-0.5b-instruct: pass@2 20.0%, maj@2 18.0%" in text
