"""`tutorlm serve calibrate`: how often the student should hand a question to the teacher (`serve`'s escalate mode).

On a split the student has not trained on (validation by default), the student answers every question k times
at the serving temperature and the teacher once, through the same evaluation (and cache) as `tutorlm eval`.
For each threshold τ on the student's agreement (the share of its k samples that state the most common answer),
the escalate mode's accuracy is what it would answer: the student's majority answer where agreement ≥ τ, the
teacher's answer elsewhere; its cost is the share of questions sent to the teacher and the teacher's share of
all generated tokens. The chosen τ is the most accurate one whose teacher share of questions is within the
target. "Random routing" is what sending the same share of questions to the teacher at random would score: the
agreement signal is worth the difference.

With `step_floors` (a local teacher), the step mode answers the same questions greedily at each log-probability
floor, in this process (`route.RouterBackend`, cached per answer like any evaluation): its accuracy, the share
of questions where the teacher wrote at least one line, and the teacher's share of the tokens. Results:
RUN/eval/escalation.json (the report plots accuracy against the teacher's share of tokens).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from rich.console import Console
from rich.table import Table

from tutorlm.backends.hf import keep_loaded
from tutorlm.config import Recipe, stage_key, to_dict
from tutorlm.serve_config import ServeConfig
from tutorlm.errors import ConfigError
from tutorlm.evaluate import evaluate_one, resolve_spec
from tutorlm.report import point_label
from tutorlm.run import ESCALATION, EVAL_DIR, RunDir, atomic_write_text
from tutorlm.serve.route import RouterBackend, agreement
from tutorlm.tasks import load_task


def student_votes(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per question: the student's agreement, whether its majority answer is right, and its tokens (all samples)."""
    by_example: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_example.setdefault(row["example_id"], []).append(row)
    votes = {}
    for example_id, samples in by_example.items():
        samples.sort(key=lambda row: row["sample_index"])
        share, majority, first = agreement([row["completion"] for row in samples])  # the rule serve's escalate mode uses
        votes[example_id] = {"agreement": share, "correct": first is not None and bool(samples[first]["correct"]),
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


def step_point(floor: float | None, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The step mode at one floor: accuracy, the share of questions the teacher wrote a line of, its share of tokens,
    and the share of answers cut off at max_tokens."""
    teacher = sum(row["teacher_tokens"] for row in rows)
    return {"mode": "step", "floor": floor, "accuracy": sum(bool(row["correct"]) for row in rows) / len(rows),
            "teacher_share": sum(row["teacher_tokens"] > 0 for row in rows) / len(rows),
            "teacher_token_share": teacher / max(teacher + sum(row["student_tokens"] for row in rows), 1),
            "cut_off": sum(row["finish_reason"] == "length" for row in rows) / len(rows)}  # reached max_tokens


def choose(points: list[dict[str, Any]], target_share: float) -> dict[str, Any]:
    """The most accurate escalation threshold within the target share of questions sent to the teacher (fewer
    sent wins a tie); None when none is within it."""
    within = [p for p in points if p["mode"] == "escalate" and p["teacher_share"] <= target_share + 1e-9]
    return max(within, key=lambda p: (p["accuracy"], -p["teacher_share"])) if within else None


def calibrate(recipe: Recipe, *, samples: int, temperature: float, target_share: float, split: str, limit: int | None,
              step_floors: tuple[float, ...] = (), serve_config: ServeConfig | None = None,
              console: Console | None = None) -> dict[str, Any]:
    console = console or Console(stderr=True)
    if samples < 2:
        raise ConfigError(f"serve calibrate: --samples must be at least 2, got {samples}")
    if not 0 <= target_share <= 1:
        raise ConfigError(f"serve calibrate: --target-share must be between 0 and 1, got {target_share}")
    if temperature <= 0:
        raise ConfigError(f"serve calibrate: --temperature must be above 0 (the student's samples must differ), got {temperature}")
    serve_config = serve_config or ServeConfig()
    run = RunDir(recipe.run.path)
    task = load_task(recipe.task)
    examples = task.examples(split, limit)
    if not examples:
        raise ConfigError(f"serve calibrate: the task has no {split} questions")
    sampled = replace(recipe, eval=replace(recipe.eval, split=split, limit=limit, n=samples, temperature=temperature))
    greedy = replace(recipe, eval=replace(recipe.eval, split=split, limit=limit, n=1, temperature=0.0))
    _, student_config = resolve_spec("student", recipe)
    _, teacher_config = resolve_spec("teacher", recipe)
    if step_floors and recipe.teacher.backend != "hf":
        raise ConfigError(f"serve calibrate: --step-floors needs a local teacher (teacher.backend hf); this run's teacher is "
                          f"{recipe.teacher.backend!r}")
    stage_config = {"task": stage_key(recipe.task), "split": split, "limit": limit, "samples": samples, "temperature": temperature,
                    "target_share": target_share, "student": to_dict(student_config), "teacher": to_dict(teacher_config),
                    "step_floors": list(step_floors), "step_teacher_tokens": serve_config.step_teacher_tokens}
    with run.lock("eval"), run.record("serve-calibrate", stage_config, {}, resolved=to_dict(recipe)) as record, keep_loaded():
        student_rows, student_summary = evaluate_one(task, examples, "student", student_config, sampled, console)
        teacher_rows, teacher_summary = evaluate_one(task, examples, "teacher", teacher_config, greedy, console)
        result = _result(student_rows, student_summary, teacher_rows, teacher_summary, samples, temperature, target_share, split)
        steps = []
        if step_floors:  # the step mode's student writes greedily: its own baseline is the greedy student
            greedy_rows, _ = evaluate_one(task, examples, "student", student_config, greedy, console)
            steps.append({**step_point(None, [{**row, "student_tokens": row["completion_tokens"], "teacher_tokens": 0}
                                              for row in greedy_rows]), "mode": "student (greedy)"})
        for floor in step_floors:
            backend = RouterBackend("step", student_config, teacher_config, serve_config, threshold=floor)
            try:
                rows, _ = evaluate_one(task, examples, f"step@{floor:g}", teacher_config, greedy, console, backend=backend)
            finally:
                backend.close()
            steps.append(step_point(floor, rows))
            answers = run.path / EVAL_DIR / f"calibrate-step@{floor:g}.jsonl"  # each answer, to read what the teacher changed
            atomic_write_text(answers, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
            record["outputs"].append(answers)
        if steps:
            teacher_point = result["points"][-1]
            teacher_point["cut_off"] = sum(row["finish_reason"] == "length" for row in teacher_rows) / len(teacher_rows)
            for point in steps:  # random routing from the greedy student, the step mode's own baseline
                point["random_accuracy"] = ((1 - point["teacher_share"]) * steps[0]["accuracy"]
                                            + point["teacher_share"] * teacher_point["accuracy"])
            result["points"][-1:-1] = steps  # after escalation, before the teacher alone
            result["step_teacher_tokens"] = serve_config.step_teacher_tokens
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
    cut = any("cut_off" in point for point in points)
    for column in ("who answers", "accuracy", "questions to the teacher", "teacher's share of tokens", "random routing",
                   *(["cut off"] if cut else [])):
        table.add_column(column, justify="right" if column != "who answers" else "left")
    for point in points:
        table.add_row(point_label(point) + (" ←" if point == chosen else ""), f"{point['accuracy']:.0%}", f"{point['teacher_share']:.0%}",
                      f"{point['teacher_token_share']:.0%}", f"{point['random_accuracy']:.0%}",
                      *([f"{point['cut_off']:.0%}" if "cut_off" in point else ""] if cut else []))
    console.print(table)
    if chosen is not None:
        console.print(f"serve with: --escalate-samples {samples} --escalate-temperature {temperature} "
                      f"--escalate-agreement {chosen['agreement']:.2f}", highlight=False)
    else:
        console.print(f"no threshold sends at most {target_share:.0%} of the questions to the teacher "
                      f"(the student's samples state no answer on more than that)", highlight=False)
