"""Student fit: how likely the student finds each verified rationale, for `curate --curate.select student_fit`.

    tutorlm curate --out runs/x --curate.select student_fit [--curate.select_k 1] [--curate.fit_floor 0.1] \\
        [--curate.fit_model runs/other/student]

"In Their Own Words" (2025) found that SFT on a strong teacher's traces can hurt a small student, while
the traces the student already finds likely help it. Each rationale that survives verification, dedupe
and the length rules is scored under the student (the recipe's `student.model`, or `curate.fit_model`)
with the scorer, on exactly the tokens training would use (the student's chat template): the mean
log-probability of its completion tokens, and the share of tokens the student gives less than
`fit_floor`. Curate then keeps the `select_k` rationales of each question with the highest mean
log-probability.

Scores are paid for once: they are kept in RUN_DIR/student_fit.sqlite under the student's weight
fingerprint, the floor and the row's text, so a rerun with other curate settings scores nothing again,
and a retrained student at the same path is scored afresh.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from typing import Any

from rich.console import Console

from tutorlm.cache import Cache
from tutorlm.config import ModelConfig
from tutorlm.progress import StageProgress

SCORES = "student_fit.sqlite"


def fit_spec(recipe: Any) -> str:
    """The model whose fit is measured: curate.fit_model, else the recipe's student."""
    return recipe.curate.fit_model or recipe.student.model


def fit_identity(recipe: Any) -> dict[str, Any]:
    """What the scores depend on besides the rows: the model's weights (not only its name) and the floor."""
    from tutorlm.models.load import model_fingerprint

    spec = fit_spec(recipe)
    gguf = recipe.student.gguf_file if not recipe.curate.fit_model else None
    return {"model": spec, "weights": model_fingerprint(spec, gguf), "floor": recipe.curate.fit_floor}


def _key(identity: dict[str, Any], row: dict[str, Any]) -> str:
    text = json.dumps({**identity, "prompt": row["prompt"], "completion": row["completion"]}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def score_fit(recipe: Any, rows: list[dict[str, Any]], console: Console, identity: dict[str, Any] | None = None
              ) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """({row id: {"mean_logprob", "low_share"}}, stats) for `rows`; only rows not scored before load the model.
    `identity`: fit_identity(recipe) when the caller has it (it hashes the model's files)."""
    identity = identity or fit_identity(recipe)
    keys = [_key(identity, row) for row in rows]
    stats: dict[str, Any] = {"model": identity["model"], "floor": identity["floor"], "rows": len(rows)}
    with Cache(recipe.run.path / SCORES) as cache:
        found = cache.get_many_json(keys)
        missing = [(key, row) for key, row in zip(keys, rows) if key not in found]
        stats["cached"] = len(rows) - len(missing)
        if missing:
            from tutorlm.models.load import load
            from tutorlm.models.score import score_rows

            started = time.perf_counter()
            student = recipe.student
            config = ModelConfig(model=identity["model"], gguf_file=None if recipe.curate.fit_model else student.gguf_file,
                                 device=student.device, dtype=student.dtype, trust_remote_code=student.trust_remote_code)
            console.print(f"curate: scoring {len(missing)} rationales under {identity['model']} (student fit; "
                          f"{stats['cached']} scored before)")
            model, tokenizer = load(config)
            batch = 8
            with StageProgress(console, "curate: student fit", len(missing)) as progress:
                for start in range(0, len(missing), batch):  # committed per batch: a killed run keeps what it scored
                    part = missing[start:start + batch]
                    for (key, _), scored in zip(part, score_rows(model, tokenizer, [row for _, row in part], batch_size=batch)):
                        value = {"mean_logprob": round(scored.mean_logprob, 5),
                                 "low_share": round(scored.share_below(identity["floor"]), 5), "tokens": len(scored.logprobs)}
                        cache.put_json(key, "student-fit", identity["weights"], value)
                        found[key] = value
                    progress.advance(len(part))
            stats["scoring_s"] = round(time.perf_counter() - started, 1)
    return {str(row["id"]): found[key] for key, row in zip(keys, rows)}, stats


def describe_scores(values: list[dict[str, float]]) -> dict[str, Any]:
    """Count, median and quartiles of the mean log-probability, and the mean share of tokens below the floor."""
    if not values:
        return {"count": 0}
    means = sorted(value["mean_logprob"] for value in values)
    quartiles = statistics.quantiles(means, n=4) if len(means) > 1 else [means[0]] * 3
    return {"count": len(values), "mean_logprob_median": round(quartiles[1], 4),
            "mean_logprob_iqr": [round(quartiles[0], 4), round(quartiles[2], 4)],
            "mean_probability": round(math.exp(statistics.fmean(means)), 4),
            "low_share_mean": round(statistics.fmean(value["low_share"] for value in values), 4)}


def fit_line(stats: dict[str, Any]) -> str:
    """One printed line: the kept and dropped rationales' scores."""
    def part(name: str) -> str:
        summary = stats[name]
        if not summary["count"]:
            return f"{name} 0"
        low, high = summary["mean_logprob_iqr"]
        return (f"{name} {summary['count']}: mean log-prob median {summary['mean_logprob_median']:.3f} "
                f"(IQR {low:.3f} to {high:.3f}), {summary['low_share_mean']:.0%} of tokens below p {stats['floor']}")

    return f"student fit under {stats['model']}: {part('kept')}; {part('dropped')}"
