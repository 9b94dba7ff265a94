"""Self-improvement rounds: the student learns from its own verified answers (STaR, ReST-EM).

    tutorlm run my-recipe.yaml --rounds.count 3 [--rounds.samples 4] [--rounds.rationalize student|teacher|none]

After the run (round 0: the recipe's own generate -> curate -> train -> eval), round r = 1..count is a run of
its own in RUN_DIR/rounds/round-r, made from the recipe:
- generate: the previous round's student (round 1: the run's) answers `rounds.limit` training questions (default
  generate.limit; the same ones every round, or with `rounds.fresh` the next ones after all asked before)
  `rounds.samples` times at `rounds.temperature`, from the same prompt it is trained and evaluated on (the
  teacher's generate.style is not added). The questions none of its answers got right are then rationalized
  (`rounds.rationalize`): the student itself (STaR) or the recipe's teacher is shown the gold answer and writes the
  steps; the stored training prompt never holds that hint (generate.rationalization_prompt). A cascade of two
  teachers, so the hint is asked only for what the student failed, and the report counts each one's share.
- curate: the recipe's rules (the verifier keeps right answers, duplicates dropped);
- train: SFT with the recipe's train settings, from the previous round's student (`rounds.start: continue`) or
  from student.model afresh on the round's data (`base`, as STaR does);
- eval: the student on the recipe's eval split and questions.

Each round is a run directory with its manifest, so a killed round resumes where it stopped and a finished one
is skipped. When a round's student changes (retrained), the rounds after it sample again: each round records
the fingerprint of the student it sampled from. RUN_DIR/rounds.json holds each round's accuracy with its 95%
interval, the paired bootstrap against the round before, and what the round added (answers kept, questions
solved by the student and by the hint, teacher tokens); the run's report shows it as a table.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path
from typing import Any

from tutorlm.config import Recipe, RunConfig, TeacherConfig
from tutorlm.metrics import accuracy_of, paired_scores
from tutorlm.report import question_scores
from tutorlm.run import EVAL_DIR, MANIFEST, ROUNDS, ROUNDS_DIR, atomic_write_text

SAMPLER = "student"  # the cascade's first teacher: the student answering on its own
HINTED = "hint"  # its second: shown the gold answer, for the questions the student failed


def round_path(recipe: Recipe, number: int) -> Path:
    """Round `number`'s run directory (round 0 is the run itself)."""
    return recipe.run.path if number == 0 else recipe.run.path / ROUNDS_DIR / f"round-{number}"


def round_recipe(recipe: Recipe, number: int) -> Recipe:
    """The recipe of round `number` >= 1 (see the module's docstring)."""
    settings = recipe.rounds
    previous = str(round_path(recipe, number - 1) / "student")
    student = recipe.student
    sampler = TeacherConfig(backend="hf", name=SAMPLER, model=previous, device=student.device, dtype=student.dtype,
                            trust_remote_code=student.trust_remote_code, n=settings.samples,
                            temperature=settings.temperature, style="")
    teachers = [sampler]
    if settings.rationalize == "student":
        teachers.append(dataclasses.replace(sampler, name=HINTED, n=1, temperature=0.0, rationalize=True))
    elif settings.rationalize in ("teacher", "correct"):  # shown the gold answer, or continuing the student's answer
        correct = settings.rationalize == "correct"
        teachers.append(dataclasses.replace(recipe.teacher, name=HINTED, n=1, temperature=0.0, limit=None,
                                            rationalize=None if correct else True, correct=correct))
    generate = dataclasses.replace(recipe.generate, limit=round_size(recipe),
                                   skip=round_skip(recipe, number), n=1, temperature=0.0, teacher_mode="cascade",
                                   rationalize=False, rsd_floor=None, rsd_student=None, top_logprobs=0, token_ids=False)
    return dataclasses.replace(
        recipe,
        run=RunConfig(name=f"round-{number}", output_dir=str(recipe.run.path / ROUNDS_DIR)),
        teacher=teachers[-1], teachers=teachers, generate=generate,
        curate=dataclasses.replace(recipe.curate, pairs=0),
        student=dataclasses.replace(student, model=previous if settings.start == "continue" else student.model,
                                    gguf_file=None if settings.start == "continue" else student.gguf_file),
        train=dataclasses.replace(recipe.train, objective="sft", kd_teacher=None),
        eval=dataclasses.replace(recipe.eval, models=["student"]),
        rounds=dataclasses.replace(settings, count=0),
    )


def round_size(recipe: Recipe) -> int | None:
    """The training questions a round asks (None: the whole split)."""
    return recipe.rounds.limit or recipe.generate.limit


def round_skip(recipe: Recipe, number: int) -> int:
    """The training questions round `number` passes over: generate.skip, and with rounds.fresh every question the run
    and the rounds before it asked."""
    if not recipe.rounds.fresh:
        return recipe.generate.skip
    return recipe.generate.skip + recipe.questions_asked() + (number - 1) * round_size(recipe)


def plan_text(recipe: Recipe) -> str:
    """The dry run's line for the rounds."""
    settings = recipe.rounds
    hint = {"none": "questions it fails are left out",
            "student": "the questions it fails are rationalized by the student shown the gold answer",
            "teacher": f"the questions it fails are rationalized by the teacher ({recipe.teacher.backend} "
                       f"{recipe.teacher.model or ''}) shown the gold answer",
            "correct": f"the teacher ({recipe.teacher.backend} {recipe.teacher.model or ''}) continues its wrong answers "
                       "from the line before their first wrong step" + (
                           " (named by the teacher where the arithmetic finds none)" if recipe.teacher.locate == "teacher"
                           else "")}[settings.rationalize]
    done = sum(1 for number in range(1, settings.count + 1) if (round_path(recipe, number) / "eval" / "student.jsonl").exists())
    return (f"{settings.count} round(s) after the run ({done} done), in {recipe.run.path / ROUNDS_DIR}: the student answers "
            f"{round_size(recipe)} training questions"
            f"{questions_text(recipe)} {settings.samples} time(s) at temperature "
            f"{settings.temperature}; {hint}; SFT on the verified answers "
            f"({'from the previous round' if settings.start == 'continue' else 'from student.model afresh'}); eval")


def questions_text(recipe: Recipe) -> str:
    """Which training questions the rounds ask, for the dry run."""
    if recipe.rounds.fresh:
        first = round_skip(recipe, 1)
        return f", new ones each round (round 1: questions {first + 1}-{first + round_size(recipe)}, after the run's),"
    return f" (after the first {recipe.generate.skip})" if recipe.generate.skip else ""


def summarize(recipe: Recipe, fingerprints: dict[int, str], stopped: int | None = None) -> dict[str, Any]:
    """rounds.json: each round's accuracy, its change against the round before (paired), and what it added;
    `stopped`: the round that had nothing to train on (the rounds ended before it)."""
    entries = []
    previous: dict[str, float] = {}
    run_generate: dict[str, Any] = {}  # the run's own generate stage (round 0), what a whole rationale cost
    for number in range(recipe.rounds.count + 1 if stopped is None else stopped):
        path = round_path(recipe, number)
        scores = question_scores(path / EVAL_DIR / "student.jsonl")
        if not scores:
            break
        entry: dict[str, Any] = {"round": number, "student": str(path / "student"), **accuracy_of(scores)}
        if number in fingerprints:
            entry["sampled_from"] = fingerprints[number]
        stages = json.loads((path / MANIFEST).read_text()).get("stages", {}) if (path / MANIFEST).exists() else {}
        if number == 0:
            run_generate = (stages.get("generate") or {}).get("stats") or {}
        else:
            teachers = (stages.get("generate", {}).get("stats") or {}).get("teachers") or {}
            own, hinted = teachers.get(SAMPLER, {}), teachers.get(HINTED, {})
            entry.update(questions_after=round_skip(recipe, number), questions_asked=own.get("questions", 0),
                         answers=own.get("samples_written", 0),
                         answers_verified=own.get("verified", 0), solved_by_student=own.get("questions_solved", 0),
                         solved_by_hint=hinted.get("questions_solved", 0),
                         hint_tokens=hinted.get("completion_tokens_total", 0),
                         **{key: hinted[key] for key in ("corrected", "error_found", "error_found_by_teacher", "student_lines_kept") if key in hinted},
                         kept=((stages.get("curate", {}).get("stats") or {}).get("funnel") or {}).get("kept"),
                         train_steps=(stages.get("train", {}).get("stats") or {}).get("steps"))
        if entry.get("solved_by_hint"):
            entry["hint_tokens_per_solved"] = round(entry["hint_tokens"] / entry["solved_by_hint"], 1)
        if set(previous) & set(scores):
            entry["vs_previous"] = paired_scores(previous, scores)
        entries.append(entry)
        previous = scores
    settings = dataclasses.asdict(recipe.rounds)
    summary = {"run": str(recipe.run.path), "settings": settings, "date": datetime.date.today().isoformat(), "rounds": entries}
    whole = (whole_rationale_tokens(recipe, run_generate) if entries and recipe.rounds.rationalize in ("teacher", "correct")
             else None)
    if whole is not None:  # what the teacher's hints cost against what it paid per whole rationale in the run
        summary["teacher_tokens_per_rationale"] = whole
    if stopped is not None:
        summary["stopped"] = {"round": stopped, "why": "no answer of the student and no hint verified: nothing to train on"}
    return summary


def whole_rationale_tokens(recipe: Recipe, stats: dict[str, Any]) -> float | None:
    """The teacher's completion tokens per whole rationale in the run itself (`stats`: round 0's generate stats), what
    a hint's tokens per solved question compare with; None when the run asked no model (the reference solver)."""
    stats = (stats.get("teachers") or {}).get(recipe.teacher.name, {}) if recipe.teachers else stats
    if recipe.teacher.backend == "reference" or recipe.teacher.correct or not stats.get("samples_written"):
        return None
    return round(stats.get("completion_tokens_total", 0) / stats["samples_written"], 1)


def write_summary(recipe: Recipe, fingerprints: dict[int, str], stopped: int | None = None) -> dict[str, Any]:
    summary = summarize(recipe, fingerprints, stopped)
    atomic_write_text(recipe.run.path / ROUNDS, json.dumps(summary, indent=2) + "\n")
    return summary
