"""The generate stage as the dry run sees it, reading only (no teacher is loaded or called): each teacher's questions
and the calls not cached yet, with a time estimate (`plan_stage`), and how many of the cached answers verify
(`cached_verified`, which the training stage's estimate scales by)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from tutorlm import throughput
from tutorlm.cache import Cache, cache_keys, cached_count
from tutorlm.config import Recipe, default_cache_path, teacher_generate
from tutorlm.generate import Plan, generate_stage_config, plan, sampling_of, teacher_backend, teacher_task
from tutorlm.run import RunDir, StagePlan
from tutorlm.tasks import Task, load_task


def teacher_plans(recipe: Recipe, task: Task) -> Iterator[tuple[Any, Any, Task, Plan]]:
    """(teacher, its generate settings, the task as it is asked, its requests) for each of the recipe's teachers."""
    for one in recipe.teachers or [recipe.teacher]:
        own = teacher_generate(recipe.generate, one)
        asked = teacher_task(task, one)
        yield one, own, asked, plan(task, own, asked)


def plan_stage(recipe: Recipe) -> StagePlan:
    """The dry run's row: each teacher's questions, samples and the calls not cached yet, with a time estimate.
    Local models load nothing for it; with RSD the student-checked teacher's answers are counted apart."""
    run = RunDir(recipe.run.path)
    if run.is_current("generate", generate_stage_config(recipe), {}):
        return StagePlan("generate", "skip (current)", "traces.jsonl is current")
    task = load_task(recipe.task)
    path = Path(recipe.generate.cache_path or default_cache_path())
    asks = []
    for one, own, asked_task, planned in teacher_plans(recipe, task):
        if one.correct:  # what it is asked depends on what the earlier teachers get wrong
            asks.append(f"{one.name}: {one.backend} {one.model or ''}: continues the earlier teachers' wrong answers from "
                        f"before their first wrong step, at most {len(planned.examples)} questions")
            continue
        backend = teacher_backend(one, asked_task, recipe)
        cached = cached_count(path, backend, planned.requests, sampling_of(own, asked_task)) if recipe.generate.cache else 0
        asks.append(f"{one.name + ': ' if recipe.teachers else ''}{one.backend} {one.model or ''}: "
                    f"{len(planned.examples)} {recipe.generate.split} questions x {own.n} samples, "
                    f"{len(planned.requests) - cached} teacher calls ({cached} cached); "
                    f"{throughput.estimate_generate(backend, len(planned.requests) - cached)}")
    what = "; ".join(asks)
    if recipe.teachers and recipe.generate.teacher_mode == "cascade":
        what += " (a cascade: each teacher after the first is asked only what the earlier ones got wrong, so at most this)"
    return StagePlan("generate", "run", what)


def cached_verified(recipe: Recipe) -> tuple[int, int]:
    """(verified, cached): of the answers the teacher cache already holds for this recipe's questions, how many the
    task's verifier accepts. The dry run scales its training estimate by the share (curation keeps about that many),
    instead of assuming every question is kept; (0, 0) with no cache."""
    path = Path(recipe.generate.cache_path or default_cache_path())
    if not recipe.generate.cache or not path.exists():
        return 0, 0
    task = load_task(recipe.task)
    verified = cached = 0
    with Cache(path) as cache:
        for one, own, asked, planned in teacher_plans(recipe, task):
            if one.correct:  # asked only what the earlier teachers got wrong: not known before they answer
                continue
            keys = cache_keys(teacher_backend(one, asked, recipe), planned.requests, sampling_of(own, asked))
            found = cache.get_many_json(keys)
            examples = {example.id: example for example in planned.examples}
            for request, key in zip(planned.requests, keys):
                if key in found:
                    cached += 1
                    verified += task.grade(examples[request.example_id], found[key]["text"]).correct
    return verified, cached
