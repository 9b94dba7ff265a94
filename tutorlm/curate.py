"""Stage 2, curate: keep the teacher rationales worth learning from.

    tutorlm curate --out runs/letters [--curate.shortest_k 2] [--curate.select student_fit --curate.select_k 1]
        [--curate.max_per_question 4] [--export parquet]

Reads RUN_DIR/traces.jsonl, writes RUN_DIR/curated.jsonl, and records how many rows each filter
removed (also printed as a table). Filters, in order:

1. truncated:        finish reason "length" (the rationale never reached its answer)
2. no answer:        no final answer can be extracted (the shared verifier's rules)
3. wrong:            the final answer does not verify against the gold answer (Fine-tune-CoT, STaR)
4. duplicate:        exact, then whitespace/number-normalized duplicates within a question
5. too long:         more than `max_completion_tokens` completion tokens
6. not shortest:     beyond the k shortest correct rationales of a question (`shortest_k`; in the
                     spirit of DAP/LiteCoT and DRP, which prefer concise rationales)
7. not student fit:  beyond the `select_k` rationales of a question the student finds most likely
                     (`select student_fit`: mean token log-probability under the student; see fit.py)
8. over cap:         beyond `max_per_question` rationales of a question (a seeded random choice), so
                     easy questions do not flood the data

With `pairs` k > 0 it also writes RUN_DIR/pairs.jsonl: for each question with both, up to k preference
pairs of a kept rationale (chosen) and a wrong one (rejected: a wrong answer, or no answer), in the
conversational prompt/chosen/rejected shape that DPO trainers read (TRL's DPOTrainer among them). The
rejected ones are a seeded choice, each used once; chosen ones are reused when there are fewer. Wrong
rationales come from sampling: several samples per question at a temperature
(`--generate.n 4 --generate.temperature 0.8`), or the student's own samples (generate with
`--teacher.backend hf --teacher.model runs/NAME/student`). The stats say how many questions had no
wrong rationale, and how many no right one.

Each kept row records the teacher's pass rate over its samples of that question and a difficulty
tag (easy >= 0.75 > medium >= 0.25 > hard). Rows keep the conversational prompt/completion shape that
TRL's SFTTrainer and HF datasets read, with metadata columns beside it. Unlike DAP, pruning here is
by length alone; difficulty is tagged, not used to choose a pruning strength.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tutorlm.config import Recipe, stage_key, to_dict
from tutorlm.errors import NothingKept
from tutorlm.fit import describe_scores, fit_identity, fit_line, score_fit
from tutorlm.run import CURATED, FUNNEL, PAIRS, TRACES, RunDir, StagePlan, atomic_write_text, read_jsonl
from tutorlm.tasks import DataError, Example, load_task
from tutorlm.tasks.steps import first_wrong_line


def normalize_for_dedupe(text: str) -> str:
    """Whitespace collapsed, case folded, numbers written without separators or trailing zeros."""
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text.lower())
    text = re.sub(r"(\d+\.\d*?)0+\b", r"\1", text)
    text = re.sub(r"(\d+)\.(?!\d)", r"\1", text)
    return " ".join(text.split())


def difficulty_of(pass_rate: float) -> str:
    return "easy" if pass_rate >= 0.75 else "medium" if pass_rate >= 0.25 else "hard"


def curate_rows(rows: list[dict[str, Any]], task: Any, config: Any) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(kept rows, counts per funnel step) for trace rows; pure apart from the seeded cap."""
    kept, funnel, _, _ = _curate(rows, task, config)
    return kept, funnel


def _curate(rows: list[dict[str, Any]], task: Any, config: Any, fit: Any = None
            ) -> tuple[list[dict[str, Any]], dict[str, int], dict[str, list[dict[str, Any]]], set[str]]:
    """curate_rows, plus the finished wrong rationales of each question and every question's id. `fit(rows)` gives
    the student-fit scores by row id of the rationales left after the length rules (select student_fit)."""
    counts: Counter[str] = Counter(generated=len(rows))
    by_question: dict[str, list[dict[str, Any]]] = defaultdict(list)
    correct_per_question: Counter[str] = Counter()
    samples_per_question: Counter[str] = Counter()
    rejected: dict[str, list[dict[str, Any]]] = defaultdict(list)

    for row in rows:
        example = Example(id=row["example_id"], question=row["question"], answer=row["answer"], choices=row.get("choices"))
        completion = row["completion"][-1]["content"]
        verdict = task.grade(example, completion)
        truncated = row.get("finish_reason") == "length"
        samples_per_question[row["example_id"]] += 1
        correct_per_question[row["example_id"]] += verdict.correct and not truncated
        failed_calls = [call for call in row.get("tools", []) if not call["ok"]]
        if truncated:
            counts["truncated"] += 1
        elif failed_calls:  # a code block failed (task.tools python): its answer rests on no computation
            counts["tool_timeout" if any(str(call["error"]).startswith("timeout") for call in failed_calls) else "tool_error"] += 1
            rejected[row["example_id"]].append({**row, "extracted": verdict.extracted})
        elif verdict.extracted is None:
            counts["no_answer"] += 1
            rejected[row["example_id"]].append({**row, "extracted": None})
        elif not verdict.correct:
            counts["wrong"] += 1
            rejected[row["example_id"]].append({**row, "extracted": verdict.extracted})
        elif config.check_steps and first_wrong_line(completion) is not None:
            counts["wrong_step"] += 1  # the right answer after a wrong step
        else:
            by_question[row["example_id"]].append({**row, "extracted": verdict.extracted})

    survivors: dict[str, list[dict[str, Any]]] = {}
    for example_id, candidates in by_question.items():
        seen: set[str] = set()
        unique = []
        for row in candidates:
            text = row["completion"][-1]["content"]
            signature = normalize_for_dedupe(text) if config.dedupe == "normalized" else text
            if config.dedupe != "none" and signature in seen:
                counts["duplicate"] += 1
                continue
            seen.add(signature)
            unique.append(row)
        if config.max_completion_tokens is not None:
            short_enough = [r for r in unique if r["usage"]["completion_tokens"] <= config.max_completion_tokens]
            counts["too_long"] += len(unique) - len(short_enough)
            unique = short_enough
        if config.shortest_k is not None:
            unique.sort(key=lambda r: (r["usage"]["completion_tokens"], r["sample_index"]))
            counts["not_shortest"] += max(0, len(unique) - config.shortest_k)
            unique = unique[: config.shortest_k]
        survivors[example_id] = unique
    fit_scores: dict[str, dict[str, float]] = {}
    if fit is not None and config.select == "student_fit":
        fit_scores = fit([row for unique in survivors.values() for row in unique])
    rng = random.Random(config.seed)
    kept: list[dict[str, Any]] = []
    for example_id, unique in survivors.items():
        if fit_scores:  # the select_k the student finds most likely
            unique.sort(key=lambda r: (-fit_scores[str(r["id"])]["mean_logprob"], r["sample_index"]))
            counts["not_student_fit"] += max(0, len(unique) - config.select_k)
            unique = unique[: config.select_k]
        if config.max_per_question is not None and len(unique) > config.max_per_question:
            counts["over_cap"] += len(unique) - config.max_per_question
            unique = sorted(rng.sample(unique, config.max_per_question), key=lambda r: r["sample_index"])
        pass_rate = correct_per_question[example_id] / samples_per_question[example_id]
        for row in unique:
            kept.append({
                "id": row["id"], "example_id": example_id, "prompt": row["prompt"], "completion": row["completion"],
                "question": row["question"], "answer": row["answer"], "extracted": row["extracted"],
                **({"choices": row["choices"]} if row.get("choices") else {}),
                "completion_tokens": row["usage"]["completion_tokens"], "teacher_pass_rate": round(pass_rate, 4),
                "difficulty": difficulty_of(pass_rate), "backend": row.get("backend"), "model": row.get("model"),
                **({"teacher": row["teacher"]} if "teacher" in row else {}),
                **({"student_fit": fit_scores[str(row["id"])]} if fit_scores else {}),
                # the teacher's tokens and distributions, for logit distillation (train/kd.py)
                **{key: row[key] for key in ("finish_reason", "completion_token_ids", "tokenizer", "teacher_topk", "logprobs") if key in row},
            })
    counts["kept"] = len(kept)
    return kept, {step: counts[step] for step in FUNNEL}, rejected, set(samples_per_question)


def preference_pairs(kept: list[dict[str, Any]], rejected: dict[str, list[dict[str, Any]]], config: Any,
                     questions: set[str]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(pairs, stats): up to `config.pairs` (kept, wrong) pairs per question; each wrong rationale used once."""
    rng = random.Random(f"pairs:{config.seed}")
    chosen_by_question: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in kept:
        chosen_by_question[row["example_id"]].append(row)
    pairs = []
    for example_id in sorted(questions):
        chosen, wrong = chosen_by_question.get(example_id, []), list(rejected.get(example_id, []))
        if not chosen or not wrong:
            continue
        wrong.sort(key=lambda row: row.get("sample_index", 0))
        for index, bad in enumerate(rng.sample(wrong, min(config.pairs, len(wrong)))):
            good = chosen[index % len(chosen)]
            pairs.append({
                "id": f"{example_id}#pair{index}", "example_id": example_id, "prompt": good["prompt"],
                "chosen": good["completion"], "rejected": bad["completion"], "question": good["question"],
                "answer": good["answer"], "chosen_id": good["id"], "rejected_id": bad["id"],
                "rejected_extracted": bad["extracted"], "backend": bad.get("backend"), "model": bad.get("model"),
            })
    with_pairs = {pair["example_id"] for pair in pairs}
    return pairs, {"pairs": len(pairs), "questions_with_pairs": len(with_pairs),
                   "questions_without_wrong": sum(1 for q in questions if chosen_by_question.get(q) and not rejected.get(q)),
                   "questions_without_right": sum(1 for q in questions if rejected.get(q) and not chosen_by_question.get(q))}


def curate_stage_config(recipe: Recipe, export: str | None = None) -> dict[str, Any]:
    curate = to_dict(recipe.curate)
    if not curate["check_steps"]:  # off: as before the check existed, so earlier runs stay current
        curate.pop("check_steps")
    stage = {"task": stage_key(recipe.task), "curate": curate, "export": export}
    if recipe.curate.select == "student_fit":  # a retrained student at the same path selects afresh

        stage["fit"] = fit_identity(recipe)
    return stage


def curate(recipe: Recipe, *, force: bool = False, export: str | None = None, console: Console | None = None) -> dict[str, Any]:
    """Run the curate stage; returns the stats recorded in the manifest."""
    console = console or Console(stderr=True)
    run = RunDir(recipe.run.path)
    traces = run.path / TRACES
    if not traces.exists():
        raise DataError(f"{traces}: no traces to curate; run `tutorlm generate` for this run directory first")
    stage_config = curate_stage_config(recipe, export)
    if not force and run.is_current("curate", stage_config, {"traces": traces}):
        console.print(f"curate: up to date in {run.path} (--force redoes it)")
        return run.stage("curate")["stats"]  # type: ignore[index]
    task = load_task(recipe.task)
    rows = read_jsonl(traces)
    for number, row in enumerate(rows, start=1):
        missing = [key for key in ("example_id", "question", "answer", "prompt", "completion", "usage") if key not in row]
        if missing:
            raise DataError(f"{traces}:{number}: missing {', '.join(missing)}; fields present: {', '.join(row)}")
    with run.record("curate", stage_config, {"traces": traces}, resolved=to_dict(recipe)) as record:
        fit_stats: dict[str, Any] = {}

        def fit(candidates: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
            scores, stats = score_fit(recipe, candidates, console, stage_config.get("fit"))  # fingerprinted once
            fit_stats.update(stats, all=scores)
            return scores

        kept, funnel, rejected, questions = _curate(rows, task, recipe.curate, fit)
        paired = preference_pairs(kept, rejected, recipe.curate, questions) if recipe.curate.pairs else None
        out = run.path / CURATED
        if not kept:
            _print_funnel(console, funnel, None)
            raise NothingKept(f"curation kept no rationale out of {len(rows)}: see the table above for where they went")
        atomic_write_text(out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept))
        record["outputs"].append(out)
        pairs_path = run.path / PAIRS
        pairs_path.unlink(missing_ok=True)  # never a stale file from other settings
        if paired is not None:
            pairs, pair_stats = paired
            if pairs:
                atomic_write_text(pairs_path, "".join(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs))
                record["outputs"].append(pairs_path)
        if export == "parquet":
            record["outputs"].append(_write_parquet(kept, run.path / "curated.parquet"))
        difficulties = Counter(row["difficulty"] for row in kept)
        record["stats"] = {"funnel": funnel, "questions": len({r["example_id"] for r in rows}),
                           "questions_kept": len({r["example_id"] for r in kept}), "difficulty": dict(difficulties)}
        if paired is not None:
            record["stats"]["pairs"] = pair_stats
        if any("teacher" in row for row in rows):  # several teachers: whose rationales were kept
            written, chosen = Counter(row.get("teacher") for row in rows), Counter(row.get("teacher") for row in kept)
            record["stats"]["teachers"] = {name: {"written": written[name], "kept": chosen[name],
                                                  "kept_share": round(chosen[name] / len(kept), 4)} for name in written}
        if fit_stats:
            scores, kept_ids = fit_stats.pop("all"), {str(row["id"]) for row in kept}
            record["stats"]["student_fit"] = {
                **fit_stats, "kept": describe_scores([value for key, value in scores.items() if key in kept_ids]),
                "dropped": describe_scores([value for key, value in scores.items() if key not in kept_ids])}
    _print_funnel(console, funnel, out)
    if fit_stats:
        console.print(fit_line(record["stats"]["student_fit"]))
    if paired is not None:
        _print_pairs(console, record["stats"]["pairs"], pairs_path)
    return record["stats"]


def _print_pairs(console: Console, stats: dict[str, int], path: Path) -> None:
    if stats["pairs"]:
        console.print(f"pairs: {path} ({stats['pairs']} preference pairs from {stats['questions_with_pairs']} questions)")
    lacking = stats["questions_without_wrong"]
    if lacking or not stats["pairs"]:
        console.print(
            f"pairs: {'no pairs were written: ' if not stats['pairs'] else ''}{lacking} question(s) with a right rationale "
            "had no wrong one. Wrong rationales come from sampling: several samples per question at a temperature "
            "(--generate.n 4 --generate.temperature 0.8), or the student's own samples (--teacher.backend hf "
            "--teacher.model runs/NAME/student)")


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> Path:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("--export parquet needs pyarrow: pip install 'tutorlm[data]'") from None
    temporary = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_pylist(rows), temporary)
    temporary.replace(path)
    return path


def _print_funnel(console: Console, funnel: dict[str, int], out: Path | None) -> None:
    table = Table(title="curate")
    table.add_column("step")
    table.add_column("rows", justify="right")
    labels = {"generated": "generated", "truncated": "- truncated", "tool_error": "- a Python call failed",
              "tool_timeout": "- a Python call timed out", "no_answer": "- no answer", "wrong": "- wrong answer",
              "wrong_step": "- a wrong step (check_steps)",
              "duplicate": "- duplicate", "too_long": "- too long", "not_shortest": "- not among the k shortest",
              "not_student_fit": "- not among the k the student fits best",
              "over_cap": "- over the per-question cap", "kept": "kept"}
    for step in FUNNEL:
        if step.startswith("tool_") and not funnel.get(step):  # Python calls: only where a task has the tool
            continue
        table.add_row(labels[step], str(funnel.get(step, 0)))
    console.print(table)
    if out is not None:
        console.print(f"curated: {out}")


def plan_stage(recipe: Recipe) -> StagePlan:
    """The dry run's row: skipped when traces.jsonl and the settings are what the last curation saw."""
    run = RunDir(recipe.run.path)
    traces = run.path / TRACES
    current = traces.exists() and run.is_current("curate", curate_stage_config(recipe), {"traces": traces})
    return StagePlan("curate", "skip (current)" if current else "run", "verify, dedupe, prune -> curated.jsonl")
