"""`tutorlm serve calibrate`: how often the student should hand a question to the teacher (`serve`'s escalate mode).

On a split the student has not trained on (validation by default), the student answers every question k times
at the serving temperature and the teacher once, through the same evaluation (and cache) as `tutorlm eval`.
For each threshold τ on the student's agreement (the share of its k samples that state the most common answer),
the escalate mode's accuracy is what it would answer: the student's majority answer where agreement ≥ τ, the
teacher's answer elsewhere; its cost is the share of questions sent to the teacher and the teacher's share of
all generated tokens. The chosen τ is the most accurate one whose teacher share of questions is within the
target. "Random routing" is what sending the same share of questions to the teacher at random would score: the
agreement signal is worth the difference. Results: RUN/eval/escalation.json (the report plots accuracy against
teacher share).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from rich.console import Console
from rich.table import Table

from tutorlm.config import Recipe, to_dict
from tutorlm.errors import ConfigError
from tutorlm.evaluate import EVAL_DIR, evaluate_one, resolve_spec
from tutorlm.run import RunDir, atomic_write_text
from tutorlm.serve import agreement, final_answer
from tutorlm.tasks import load_task

ESCALATION = "escalation.json"


def student_votes(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per question: the student's agreement, whether its majority answer is right, and its tokens (all samples)."""
    by_example: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_example.setdefault(row["example_id"], []).append(row)
    votes = {}
    for example_id, samples in by_example.items():
        samples.sort(key=lambda row: row["sample_index"])
        share, majority = agreement([row["completion"] for row in samples])  # the rule serve's escalate mode uses
        chosen = next((row for row in samples if final_answer(row["completion"]) == majority), samples[0])
        votes[example_id] = {"agreement": share, "correct": bool(chosen["correct"]) and majority is not None,
                             "tokens": sum(row["completion_tokens"] for row in samples)}
    return votes


def curve(votes: dict[str, dict[str, Any]], teacher: dict[str, dict[str, Any]], samples: int) -> list[dict[str, Any]]:
    """The student alone (its majority answer), escalation at every threshold that changes a decision (a question
    whose samples state no answer always goes to the teacher), and the teacher alone."""
    total = len(votes)
    points = [{"mode": "student", "agreement": None, "accuracy": sum(v["correct"] for v in votes.values()) / total,
               "teacher_share": 0.0, "teacher_token_share": 0.0}]
    for threshold in [i / samples for i in range(1, samples + 1)]:
        correct = escalated = teacher_tokens = student_tokens = 0
        for example_id, vote in votes.items():
            student_tokens += vote["tokens"]
            if vote["agreement"] < threshold or vote["agreement"] == 0:
                escalated += 1
                correct += bool(teacher[example_id]["correct"])
                teacher_tokens += teacher[example_id]["completion_tokens"]
            else:
                correct += vote["correct"]
        points.append({"mode": "escalate", "agreement": threshold, "accuracy": correct / total, "teacher_share": escalated / total,
                       "teacher_token_share": teacher_tokens / max(teacher_tokens + student_tokens, 1)})
    points.append({"mode": "teacher", "agreement": None, "accuracy": sum(bool(teacher[e]["correct"]) for e in votes) / total,
                   "teacher_share": 1.0, "teacher_token_share": 1.0})
    alone, helper = points[0]["accuracy"], points[-1]["accuracy"]
    for point in points:  # what sending the same share of questions to the teacher at random would score
        point["random_accuracy"] = (1 - point["teacher_share"]) * alone + point["teacher_share"] * helper
    return points


def choose(points: list[dict[str, Any]], target_share: float) -> dict[str, Any]:
    """The most accurate escalation threshold within the target share of questions sent to the teacher (fewer
    sent wins a tie); None when none is within it."""
    within = [p for p in points if p["mode"] == "escalate" and p["teacher_share"] <= target_share + 1e-9]
    return max(within, key=lambda p: (p["accuracy"], -p["teacher_share"])) if within else None


def calibrate(recipe: Recipe, *, samples: int, temperature: float, target_share: float, split: str, limit: int | None,
              console: Console | None = None) -> dict[str, Any]:
    console = console or Console(stderr=True)
    if samples < 2:
        raise ConfigError(f"serve calibrate: --samples must be at least 2, got {samples}")
    if not 0 <= target_share <= 1:
        raise ConfigError(f"serve calibrate: --target-share must be between 0 and 1, got {target_share}")
    if temperature <= 0:
        raise ConfigError(f"serve calibrate: --temperature must be above 0 (the student's samples must differ), got {temperature}")
    run = RunDir(recipe.run.path)
    task = load_task(recipe.task)
    examples = task.examples(split, limit)
    if not examples:
        raise ConfigError(f"serve calibrate: the task has no {split} questions")
    sampled = replace(recipe, eval=replace(recipe.eval, split=split, limit=limit, n=samples, temperature=temperature))
    greedy = replace(recipe, eval=replace(recipe.eval, split=split, limit=limit, n=1, temperature=0.0))
    _, student_config = resolve_spec("student", recipe)
    _, teacher_config = resolve_spec("teacher", recipe)
    stage_config = {"task": to_dict(recipe.task), "split": split, "limit": limit, "samples": samples, "temperature": temperature,
                    "target_share": target_share, "student": to_dict(student_config), "teacher": to_dict(teacher_config)}
    with run.lock("eval"), run.record("serve-calibrate", stage_config, {}, resolved=to_dict(recipe)) as record:
        student_rows, student_summary = evaluate_one(task, examples, "student", student_config, sampled, console)
        teacher_rows, teacher_summary = evaluate_one(task, examples, "teacher", teacher_config, greedy, console)
        result = _result(student_rows, student_summary, teacher_rows, teacher_summary, samples, temperature, target_share, split)
        out = run.path / EVAL_DIR / ESCALATION
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
        record["outputs"].append(out)
        record["stats"] = {"chosen": result["chosen"]}
    _print(result, console)
    return result


def _result(student_rows: list[dict[str, Any]], student_summary: dict[str, Any], teacher_rows: list[dict[str, Any]],
            teacher_summary: dict[str, Any], samples: int, temperature: float, target_share: float, split: str) -> dict[str, Any]:
    votes = student_votes(student_rows)
    teacher = {row["example_id"]: row for row in teacher_rows}
    points = curve(votes, teacher, samples)
    chosen = choose(points, target_share)
    return {"split": split, "questions": len(votes), "samples": samples, "temperature": temperature,
            "target_share": target_share, "student_model": student_summary["model"], "teacher_model": teacher_summary["model"],
            "points": points, "chosen": chosen}


def _print(result: dict[str, Any], console: Console) -> None:
    points, chosen, samples = result["points"], result["chosen"], result["samples"]
    temperature, target_share = result["temperature"], result["target_share"]
    table = Table(title=f"escalation on {result['questions']} {result['split']} questions ({samples} student samples at T={temperature})")
    for column in ("who answers", "accuracy", "questions to the teacher", "teacher's share of tokens", "random routing"):
        table.add_column(column, justify="right" if column != "who answers" else "left")
    for point in points:
        label = (f"escalate, agreement < {point['agreement']:.2f}" if point["mode"] == "escalate"
                 else f"{point['mode']} alone" + (" (majority of samples)" if point["mode"] == "student" else ""))
        table.add_row(label + (" ←" if point == chosen else ""), f"{point['accuracy']:.0%}", f"{point['teacher_share']:.0%}",
                      f"{point['teacher_token_share']:.0%}", f"{point['random_accuracy']:.0%}")
    console.print(table)
    if chosen is not None:
        console.print(f"serve with: --escalate-samples {samples} --escalate-temperature {temperature} "
                      f"--escalate-agreement {chosen['agreement']:.2f}", highlight=False)
    else:
        console.print(f"no threshold sends at most {target_share:.0%} of the questions to the teacher "
                      f"(the student's samples state no answer on more than that)", highlight=False)
