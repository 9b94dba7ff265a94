"""Evaluation metrics as pure functions: pass@k, maj@k, Wilson intervals, and accuracy recovered."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # The product form avoids huge binomials: prod_{i=n-c+1}^{n} (1 - k / i).
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def majority_vote(answers: Sequence[str | None], same: Callable[[str, str], bool] = lambda a, b: a == b) -> str | None:
    """The most common answer (self-consistency; Wang et al. 2023); ties go to the answer seen first.

    `same` groups answers that are equivalent but written differently (e.g. the verifier's equivalence).
    None (no answer) never wins.
    """
    groups: list[list[str]] = []
    for answer in answers:
        if answer is None:
            continue
        for group in groups:
            if same(group[0], answer):
                group.append(answer)
                break
        else:
            groups.append([answer])
    if not groups:
        return None
    return max(groups, key=len)[0]  # max keeps the first of equal lengths


def wilson_interval(successes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a proportion; (0, 1) when total is 0."""
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    # At p = 0 or 1 a bound meets p only up to rounding (10/10 gave 0.99999...): it must never pass p.
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def accuracy_of(scores: Mapping[Any, float]) -> dict[str, Any]:
    """Accuracy of per-question scores (question -> score, 1 for right) with its 95% Wilson interval."""
    if not scores:
        return {"questions": 0}
    correct = round(sum(scores.values()))
    low, high = wilson_interval(correct, len(scores))
    return {"accuracy": round(sum(scores.values()) / len(scores), 4), "accuracy_ci95": [round(low, 4), round(high, 4)],
            "questions": len(scores)}


def accuracy_recovered(before: float, after: float, teacher: float) -> float | None:
    """(after - before) / (teacher - before): the share of the teacher's lead the student closed."""
    if teacher - before <= 0:
        return None
    return (after - before) / (teacher - before)


def paired_bootstrap(base: Sequence[float], student: Sequence[float], teacher: Sequence[float], *,
                     resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """95% percentile intervals for "accuracy recovered" and student / teacher, resampling questions (each list
    holds one model's score per question, in the same question order: paired). A resample where the teacher does
    not lead the base (or scores 0) has no ratio and is left out; how many were is reported."""
    import random

    if not (len(base) == len(student) == len(teacher)) or not base:
        raise ValueError("paired_bootstrap needs three non-empty score lists of the same length")
    rng = random.Random(seed)
    n = len(base)
    recovered: list[float] = []
    ratio: list[float] = []
    for _ in range(resamples):
        picks = [rng.randrange(n) for _ in range(n)]
        b, s, t = (sum(scores[i] for i in picks) / n for scores in (base, student, teacher))
        if t - b > 0:
            recovered.append((s - b) / (t - b))
        if t > 0:
            ratio.append(s / t)

    def interval(values: list[float]) -> list[float] | None:
        if len(values) < resamples // 2:  # too often undefined to say anything
            return None
        values = sorted(values)
        return [values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))]]

    b, s, t = (sum(scores) / n for scores in (base, student, teacher))
    return {
        "questions": n, "resamples": resamples,
        "recovered": accuracy_recovered(b, s, t), "recovered_ci95": interval(recovered),
        "student_over_teacher": s / t if t > 0 else None, "student_over_teacher_ci95": interval(ratio),
        "undefined_resamples": resamples - len(recovered),
    }


def paired_difference(first: Sequence[float], second: Sequence[float], *, resamples: int = 2000,
                      seed: int = 0) -> dict[str, Any]:
    """second - first in mean score over the same questions (paired), with a 95% percentile bootstrap interval
    and the share of resamples where second is not better (a one-sided bootstrap p-value)."""
    import random

    if len(first) != len(second) or not first:
        raise ValueError("paired_difference needs two non-empty score lists of the same length")
    rng = random.Random(seed)
    n = len(first)
    deltas = [b - a for a, b in zip(first, second)]
    samples = sorted(sum(deltas[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return {
        "questions": n, "resamples": resamples, "difference": sum(deltas) / n,
        "difference_ci95": [samples[int(0.025 * (resamples - 1))], samples[int(0.975 * (resamples - 1))]],
        "p_not_better": sum(1 for value in samples if value <= 0) / resamples,
    }


def paired_scores(first: Mapping[Any, float], second: Mapping[Any, float], **options: Any) -> dict[str, Any]:
    """`paired_difference` of two models' per-question scores (question -> score) on the questions both answered."""
    shared = sorted(set(first) & set(second))
    return paired_difference([first[q] for q in shared], [second[q] for q in shared], **options)


def k_values(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    values = [k for k in (2**i for i in range(0, 12)) if k <= n]
    return values if values[-1] == n else values + [n]


TRUNCATION_WARNING = 0.2


def truncation_warnings(summaries: dict[str, dict[str, Any]]) -> list[str]:
    """A sentence for each model whose answers were cut off often enough that its accuracy says more about the
    token budget than about the model (a fair comparison gives every model the budget it needs)."""
    return [
        f"{label}: {s['truncation_rate']:.1%} of its answers hit the token limit "
        f"({s.get('max_tokens', 'eval.max_tokens')} tokens); its accuracy is a lower bound. Evaluate it with a "
        f"larger --eval.max_tokens, or look at eval/{label}.jsonl: a model that repeats itself will not finish at any budget."
        for label, s in summaries.items() if s["truncation_rate"] > TRUNCATION_WARNING
    ]
