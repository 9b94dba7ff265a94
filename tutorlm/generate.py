"""Stage 1, generate: a teacher writes step-by-step rationales for a task's questions.

    tutorlm generate --task.source last_letters --generate.limit 500 --generate.n 4 --generate.temperature 0.7 \\
        --teacher.backend openai --teacher.base-url http://127.0.0.1:8000/v1 --teacher.model Qwen/Qwen2.5-7B-Instruct \\
        --out runs/letters

Method: Fine-tune-CoT (Ho et al. 2023) zero-shot "think step by step" prompting with n samples per
question ("diverse reasoning"); optional few-shot demonstrations (taken from the validation split, so
they never overlap train or test) and STaR-style rationalization (Zelikman et al. 2022), where the
teacher sees the gold answer. Unlike STaR, rationalization here is a mode for the whole run, not a
second pass over failures; the stored training prompt never contains the hint.

Durability: every completed call is committed to the SQLite cache (tutorlm/cache.py) as it arrives,
and appended to traces.partial.jsonl (to look at while a long run goes on); traces.jsonl is written
atomically once all calls are done, and the partial file removed. After a kill -9, the same command
makes only the calls that had not completed. Calls that fail after retries are listed in
generate_failures.jsonl; the stage is then recorded as incomplete, the command exits non-zero, and a
rerun retries only those. Requests the teacher can never answer (the reference solver without a solution it can
write) are not failures: they are listed in generate_unanswered.jsonl, counted, and left out.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tutorlm import throughput
from tutorlm.backends import Completion, FatalBackendError, Request, Sampling, Unanswerable, make_backend
from tutorlm.cache import Cache, run_cached
from tutorlm.config import (
    PER_TEACHER,
    ConfigError,
    GenerateConfig,
    Recipe,
    TeacherConfig,
    stage_key,
    default_cache_path,
    teacher_generate,
    to_dict,
)
from tutorlm.corrections import correction_requests, lines_before
from tutorlm.errors import GenerationIncomplete
from tutorlm.tools.loop import worked_answer
from tutorlm.models import topk
from tutorlm.progress import StageProgress
from tutorlm.run import FAILURES, PARTIAL, TRACES, UNANSWERED, RunDir, atomic_write_text
from tutorlm.tasks import TOOL_NOTE, DataError, Example, Task, build_prompt, format_question, load_task, prompt_instruction
from tutorlm.tasks.steps import LOCATE_TOKENS, judged_line, locate_messages


@dataclass
class Plan:
    """What one generate run asks for: a request per (example, sample), and each one's training prompt."""

    examples: list[Example]
    requests: list[Request]
    training_prompts: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # example id -> prompt


def sampling_of(config: GenerateConfig, task: Task) -> Sampling:
    return Sampling(temperature=config.temperature, top_p=config.top_p, max_tokens=config.max_tokens,
                    stop=tuple(config.stop), seed=config.seed, top_logprobs=config.top_logprobs,
                    token_ids=config.token_ids and config.top_logprobs > 0,
                    tool_calls=task.tool_calls if task.tools == "python" else None)


def rationalization_prompt(task: Task, example: Example, system_prompt: str | None) -> list[dict[str, str]]:
    """The teacher's prompt in rationalization mode: the question plus its gold answer (STaR)."""
    answer_type = task.answer_type_of(example)
    gold = f"({example.answer})" if answer_type == "choice" else example.answer
    content = (
        f"{format_question(example)}\n\nThe correct answer is {gold}. Explain step by step how to reach it, "
        f"as if solving the problem yourself without being told the answer, then finish with the line "
        f'"The answer is {gold}."'
    )
    if task.tools == "python":
        content = f"{content}\n\n{TOOL_NOTE}"
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": content}]


def teacher_task(task: Task, teacher: Any) -> Task:
    """The task as `teacher` is asked it: with its own tools setting where it has one (DualDistill), else the recipe's."""
    if getattr(teacher, "tools", None) in (None, task.tools):
        return task
    own = copy.copy(task)
    own.tools = teacher.tools
    return own


def tool_shot(shot: Example) -> Example:
    """A worked example in the tool's format where its task gives one (`worked_answer`); else as it is."""
    worked = worked_answer(shot)
    return dataclasses.replace(shot, rationale=worked[0]) if worked else shot


def plan(task: Task, config: GenerateConfig, asked: Task | None = None) -> Plan:
    """The requests of one teacher: `asked` is the task as the teacher sees it (teacher_task), `task` as the student
    does (its training prompt); one task for both by default."""
    asked = asked or task
    examples = config.questions(task)
    if not examples and config.skip:
        raise DataError(f"generate.skip {config.skip}: the {config.split} split of {task.name} has no question after the "
                        f"first {config.skip} (it has {len(task.examples(config.split, config.skip))})")
    shots_of: dict[str, list[Example]] = {}  # by the task a question comes from (a mix shows each its own)
    result = Plan(examples=examples, requests=[])
    for example in examples:
        part = task.part_of(example)
        if part.name not in shots_of:  # the shots show the tool's format where they can: compute, read the output, answer
            found = part.examples("validation", config.few_shot) if config.few_shot else []
            shots_of[part.name] = [tool_shot(shot) for shot in found] if asked.tools == "python" else found
        shots = shots_of[part.name]
        # The student learns from the plain question, as it is asked at evaluation: the shots, like the style, are the
        # teacher's (trained with a shot in every prompt and evaluated without, the `tools` student lost its format)
        training_prompt = build_prompt(example, task.answer_type_of(example), system_prompt=config.system_prompt,
                                       instruction=task.instruction(example))
        teacher_prompt = build_prompt(example, task.answer_type_of(example), system_prompt=config.system_prompt,
                                      few_shot=shots, instruction=asked.instruction(example))
        if config.rationalize:
            teacher_prompt = rationalization_prompt(asked, example, config.system_prompt)
        if config.style:  # the teacher's copy only: the student learns from the plain question
            teacher_prompt = [*teacher_prompt[:-1], {**teacher_prompt[-1], "content": f"{teacher_prompt[-1]['content']}\n\n{config.style}"}]
        result.training_prompts[example.id] = training_prompt
        guide = training_prompt if config.rsd_floor is not None else None  # RSD: the student reads its own prompt
        result.requests += [Request(teacher_prompt, index, example.id, guide) for index in range(config.n)]
    return result


FIRST_THOUGHT_TOKENS = 64
_STATES_ANSWER = re.compile(r"answer\s*(?:is|:)|\\boxed|####", re.I)


def first_thought(text: str) -> str | None:
    """The first line of a step-by-step answer, as the start of an answer with the tool; None when that line is empty,
    already the answer line, or code."""
    line = text.strip().split("\n", 1)[0].rstrip() if text.strip() else ""
    if not line or "```" in line or _STATES_ANSWER.search(line):
        return None
    return line


def first_thoughts(recipe: Recipe, teacher: Any, task: Task, config: GenerateConfig, requests: list[Request],
                   cache: Cache | None, console: Console) -> tuple[list[Request], dict[str, Any]]:
    """`requests` (answers with the tool), each starting from the teacher's first thought: the first line of its
    answer to the same question without the tool (Agent Distillation, Kang et al. 2025). The thoughts go through the
    cache like answers; a request whose thought is unusable (empty, the answer line, code) starts as it was."""
    text_task = copy.copy(task)
    text_task.tools = "none"
    text_plan = plan(task, config, text_task)
    asked = {(request.example_id, request.sample_index): request for request in text_plan.requests}
    thought_requests = [asked[(request.example_id, request.sample_index)] for request in requests]
    sampling = dataclasses.replace(sampling_of(config, text_task), max_tokens=min(FIRST_THOUGHT_TOKENS, config.max_tokens))
    backend = teacher_backend(teacher, text_task, recipe)
    if backend.kind == "reference":
        backend.add_examples(text_plan.examples)  # type: ignore[attr-defined]
    with _progress(console, len(thought_requests), "first thoughts") as progress:
        keys, results, cached = run_cached(backend, thought_requests, sampling, cache,
                                           on_result=lambda request, result: progress.advance(1),
                                           on_start=lambda hits: progress.start(hits, hits=hits))
    started, tokens = [], 0
    for request, key in zip(requests, keys):
        result = results[key]
        thought = first_thought(result.text) if isinstance(result, Completion) else None
        if isinstance(result, Completion) and key not in cached:
            tokens += result.completion_tokens
        started.append(dataclasses.replace(request, prefix=thought + "\n") if thought else request)
    stats = {"thoughts": sum(request.prefix is not None for request in started), "asked": len(requests),
             "cache_hits": len(cached), "completion_tokens": tokens}
    console.print(f"generate: first thoughts for {stats['thoughts']} of {len(requests)} answers with the tool "
                  f"({tokens} new teacher tokens)")
    return started, stats


def _teacher_key(teacher: Any) -> dict[str, Any]:
    """What of a teacher's settings decides its rationales (operational settings such as concurrency excluded)."""
    teacher = to_dict(teacher)
    for operational in ("base_url", "api_key_env", "max_concurrency", "timeout_s", "max_retries", "backoff_base_s",
                        "device", "batch_size", "price_input_per_million", "price_output_per_million"):
        teacher.pop(operational)
    if teacher["name"] is None:  # unnamed: as before names existed, so earlier runs stay current
        teacher.pop("name")
    if not teacher["correct"]:  # as before corrections existed
        teacher.pop("correct")
    if teacher["locate"] == "arithmetic" or not teacher.get("correct"):  # as before it existed; it acts only on corrections
        teacher.pop("locate")
    if teacher["tools"] is None:  # as before a teacher could have its own tools
        teacher.pop("tools")
    for key in PER_TEACHER:  # unset: as before a teacher could sample on its own, so earlier runs stay current
        if teacher[key] is None:
            teacher.pop(key)
    return teacher


def generate_stage_config(recipe: Recipe) -> dict[str, Any]:
    """What decides whether generate must re-run."""
    generate = to_dict(recipe.generate)
    generate.pop("cache")
    generate.pop("cache_path")
    if not recipe.teachers:
        generate.pop("teacher_mode")
    if recipe.generate.rsd_floor is None:  # off: as before RSD existed, so earlier runs stay current
        generate.pop("rsd_floor")
        generate.pop("rsd_student")
    if not recipe.generate.first_thought:  # off: as before it existed
        generate.pop("first_thought")
    if not recipe.generate.skip:
        generate.pop("skip")

    stage = {"task": stage_key(recipe.task), "instruction": prompt_instruction(recipe.task), "generate": generate}
    if recipe.generate.few_shot:  # the student's training prompt lost the shots (2026-12-03): such traces are stale
        stage["training_prompt"] = "without shots"
    if recipe.teachers:
        stage["teachers"] = [_teacher_key(teacher) for teacher in recipe.teachers]
    else:
        stage["teacher"] = _teacher_key(recipe.teacher)
    if recipe.generate.rsd_floor is not None:  # a retrained student at the same path accepts other tokens
        from tutorlm.models.load import model_fingerprint

        student = rsd_student(recipe, recipe.teacher)
        stage["rsd_student"] = {"model": student.model, "weights": model_fingerprint(student.model, student.gguf_file),
                                "dtype": student.dtype}
    return stage


def rsd_student(recipe: Recipe, teacher: Any) -> TeacherConfig:
    """RSD's student as a local model next to `teacher`: generate.rsd_student, else the recipe's student."""
    student = recipe.student
    model, gguf_file = (recipe.generate.rsd_student, None) if recipe.generate.rsd_student else (student.model, student.gguf_file)
    return TeacherConfig(backend="hf", model=model, gguf_file=gguf_file, device=teacher.device, dtype=student.dtype,
                         trust_remote_code=student.trust_remote_code, batch_size=teacher.batch_size)


def teacher_backend(teacher: Any, task: Task, recipe: Recipe) -> Any:
    """The teacher's backend; with RSD, a local teacher whose every token the student checks."""
    if recipe.generate.rsd_floor is None:
        return make_backend(teacher, task)
    from tutorlm.backends.hf import HFBackend

    return HFBackend(teacher, guide=HFBackend(rsd_student(recipe, teacher)), guide_floor=recipe.generate.rsd_floor)


def _progress(console: Console, total: int, label: str = "generate") -> StageProgress:
    return StageProgress(
        console, label, total,
        detail=("{task.fields[rate]:.2f} compl/s • {task.fields[tokens_rate]:.0f} tok/s • cached {task.fields[hits]} • "
                "retries {task.fields[retries]} • errors {task.fields[errors]}"),
        rate=0.0, tokens_rate=0.0, hits=0, retries=0, errors=0,
    )


def _trace_row(example: Example, request: Request, completion: Completion, plan_: Plan, backend: Any, cached: bool,
               teacher: str | None = None) -> dict[str, Any]:
    sample = f"{teacher}#{request.sample_index}" if teacher else str(request.sample_index)
    row = {
        "id": f"{example.id}#{sample}", "example_id": example.id, "sample_index": request.sample_index,
        **({"teacher": teacher} if teacher else {}),
        "question": example.question, "answer": example.answer, "choices": example.choices,
        "prompt": plan_.training_prompts[example.id],
        # a correction: the earlier answer's start, then what this teacher wrote after it
        "completion": [{"role": "assistant", "content": (request.prefix or "") + completion.text}],
        "finish_reason": completion.finish_reason,
        "usage": {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens},
        "backend": backend.kind, "model": backend.model_name, "latency_s": round(completion.latency_s, 4), "cached": cached,
    }
    if request.messages is not plan_.training_prompts[example.id]:
        row["teacher_prompt"] = request.messages
    if "tools" in completion.meta:  # task.tools python: each code block it ran, with the output and the time
        row["tools"] = completion.meta["tools"]
    if request.prefix is not None:  # its tokens and log-probabilities cover the continuation only: none are stored
        return row
    if completion.token_ids is not None:  # the ids, in the vocabulary of the tokenizer named here
        row["completion_token_ids"] = completion.token_ids
        row["tokenizer"] = backend.model_name
    if completion.logprobs is not None:
        k = max((len(entry.get("top_ids") or ()) for entry in completion.logprobs), default=0)
        if k and all("top_ids" in entry for entry in completion.logprobs):
            row[topk.FIELD] = topk.pack(*topk.from_entries(completion.logprobs, k))  # compact, by id (topk.py)
        else:  # a server that names tokens only by text: kept as it came
            row["logprobs"] = completion.logprobs
    if "redrawn" in completion.meta:  # RSD: the tokens of this completion the student rejected
        row["redrawn"] = completion.meta["redrawn"]
    return row


def generate(recipe: Recipe, *, force: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Run the generate stage for a recipe; returns the stats recorded in the manifest.

    A second process on the same run directory is refused while this one runs (`RunDir.lock`).
    """
    run = RunDir(recipe.run.path)
    with run.lock("generate"):
        return _generate(recipe, run, force, console or Console(stderr=True))


@dataclass
class _Asked:
    """What one teacher gave: trace rows, failures, and its counts."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    unanswered: list[dict[str, Any]] = field(default_factory=list)  # Unanswerable: left out, not retried
    stats: dict[str, Any] = field(default_factory=dict)


def _ask(recipe: Recipe, teacher: Any, label: str | None, task: Task, plan_: Plan, requests: list[Request],
         sampling: Sampling, cache: Cache | None, partial: Any, console: Console, *, tolerate_fatal: bool) -> _Asked:
    """`requests` to one teacher through the cache; each new row is appended to `partial` as it arrives.
    `tolerate_fatal`: a teacher that cannot be used at all (refused key, unknown model) fails its requests
    instead of stopping the run (a cascade's others go on)."""
    example_by_id = {example.id: example for example in plan_.examples}
    counts = {"prompt_tokens": 0, "completion_tokens": 0, "made": 0, "failed": 0}
    built: dict[int, dict[str, Any]] = {}  # rows of the calls made now, by request: built once, written twice
    started = time.perf_counter()
    backend = teacher_backend(teacher, task, recipe)
    if backend.kind == "reference":
        backend.add_examples([example_by_id[r.example_id] for r in requests])  # type: ignore[attr-defined]
    with _progress(console, len(requests), f"generate {label}" if label else "generate") as progress:

        def on_result(request: Request, result: Completion | Exception) -> None:
            if isinstance(result, Exception):
                counts["failed"] += 1
            else:
                counts["made"] += 1
                row = built[id(request)] = _trace_row(example_by_id[request.example_id], request, result, plan_, backend,
                                                      cached=False, teacher=label)
                partial.write(json.dumps(row, ensure_ascii=False) + "\n")
                partial.flush()
                counts["prompt_tokens"] += result.prompt_tokens
                counts["completion_tokens"] += result.completion_tokens
            elapsed = max(time.perf_counter() - started, 1e-9)
            progress.advance(1, rate=counts["made"] / elapsed, tokens_rate=counts["completion_tokens"] / elapsed,
                             retries=backend.counters.get("retries", 0), errors=counts["failed"])

        try:
            keys, results, cached = run_cached(backend, requests, sampling, cache, on_result,
                                               on_start=lambda hits: progress.start(hits, hits=hits))
        except FatalBackendError as error:
            if not tolerate_fatal:
                raise
            console.print(f"[red]teacher {label}: {error}[/red]; the other teachers go on")
            keys = [f"failed:{index}" for index in range(len(requests))]
            results, cached = {key: error for key in keys}, set()
    wall = time.perf_counter() - started
    if backend.kind != "reference" and counts["made"]:
        throughput.record("generate", backend.model_name, backend.precision, tokens=counts["completion_tokens"],
                          seconds=wall, items=counts["made"])
    asked = _Asked()
    for key, request in zip(keys, requests):
        result = results[key]
        if isinstance(result, Exception):
            listed = asked.unanswered if isinstance(result, Unanswerable) else asked.failures
            listed.append({"example_id": request.example_id, "sample_index": request.sample_index,
                           **({"teacher": label} if label else {}), "error": f"{type(result).__name__}: {result}"})
        else:
            asked.rows.append(built.get(id(request)) or _trace_row(example_by_id[request.example_id], request, result,
                                                                   plan_, backend, cached=key in cached, teacher=label))
    completions = [result for result in results.values() if isinstance(result, Completion)]
    cost = None
    if teacher.price_input_per_million is not None or teacher.price_output_per_million is not None:
        cost = round(counts["prompt_tokens"] * (teacher.price_input_per_million or 0) / 1e6
                     + counts["completion_tokens"] * (teacher.price_output_per_million or 0) / 1e6, 6)
    asked.stats = {
        "questions": len({request.example_id for request in requests}), "samples_requested": len(keys),
        "samples_written": len(asked.rows), "cache_hits": len(cached), "calls_made": counts["made"],
        "failures": len(asked.failures), "unanswered": len(asked.unanswered), "retries": backend.counters.get("retries", 0),
        "prompt_tokens": counts["prompt_tokens"], "completion_tokens": counts["completion_tokens"],
        "prompt_tokens_total": sum(c.prompt_tokens for c in completions),
        "completion_tokens_total": sum(c.completion_tokens for c in completions),
        "truncated": sum(1 for c in completions if c.finish_reason == "length"),
        "cost": cost, "wall_s": round(wall, 3), "backend": backend.kind, "model": backend.model_name,
    }
    if label:  # several teachers: how often this one was right, for the cascade and the report
        verified = [row for row in asked.rows if row["finish_reason"] != "length" and task.grade(
            example_by_id[row["example_id"]], row["completion"][-1]["content"]).correct]
        asked.stats["verified"] = len(verified)
        asked.stats["solved"] = sorted({row["example_id"] for row in verified})
    return asked


SUMMED = ("samples_requested", "samples_written", "cache_hits", "calls_made", "failures", "unanswered", "retries", "prompt_tokens",
          "completion_tokens", "prompt_tokens_total", "completion_tokens_total", "truncated")


def locate_by_teacher(recipe: Recipe, teacher: Any, task: Task, plan_: Plan, rows: list[dict[str, Any]],
                      requests: list[Request], chosen: dict[str, dict[str, Any]], cache: Cache | None,
                      console: Console) -> tuple[list[Request], dict[str, Any]]:
    """`teacher.locate: teacher`: for each correction whose wrong step the arithmetic did not find, the correcting
    teacher is shown the question, the gold answer and the answer's numbered lines (tasks.steps.locate_messages) and
    names the first wrong line; the correction then continues from the line before it (a request with no start where
    it names the first line or none). The answers go through the cache. `chosen` (correction_requests') is updated in
    place: error_line, lines_kept and located ("teacher")."""
    unlocated = [request for request in requests if chosen[request.example_id]["error_line"] is None]
    stats = {"asked": len(unlocated), "located": 0, "completion_tokens": 0}
    if not unlocated:
        return requests, stats
    examples = {example.id: example for example in plan_.examples}
    texts = {row["id"]: row["completion"][-1]["content"] for row in rows}
    asks = [Request(locate_messages(examples[request.example_id], texts[chosen[request.example_id]["row"]]), 0,
                    request.example_id) for request in unlocated]
    backend = teacher_backend(teacher, task, recipe)
    with _progress(console, len(asks), "locate first errors") as progress:
        keys, results, cached = run_cached(backend, asks, Sampling(temperature=0.0, max_tokens=LOCATE_TOKENS), cache,
                                           on_result=lambda request, result: progress.advance(1),
                                           on_start=lambda hits: progress.start(hits, hits=hits))
    located: dict[str, str] = {}
    for request, key in zip(unlocated, keys):
        result, one = results[key], chosen[request.example_id]
        if not isinstance(result, Completion):
            continue
        if key not in cached:
            stats["completion_tokens"] += result.completion_tokens
        text = texts[one["row"]]
        line = judged_line(result.text, text)
        if line is None:
            continue
        one.update(error_line=line, lines_kept=line, located="teacher")
        stats["located"] += 1
        if line:
            located[request.example_id] = lines_before(text, line)
    console.print(f"generate: the teacher located the first wrong line of {stats['located']} of {stats['asked']} answers "
                  "the arithmetic check passed")
    return [dataclasses.replace(request, prefix=located[request.example_id]) if request.example_id in located else request
            for request in requests], stats


def _generate(recipe: Recipe, run: RunDir, force: bool, console: Console) -> dict[str, Any]:
    stage_config = generate_stage_config(recipe)
    if not force and run.is_current("generate", stage_config, {}):
        stats = run.stage("generate")["stats"]  # type: ignore[index]
        console.print(f"generate: up to date in {run.path} (--force redoes it)")
        return stats
    task = load_task(recipe.task)
    teachers = recipe.teachers or [recipe.teacher]
    own = [teacher_generate(recipe.generate, teacher) for teacher in teachers]  # each teacher's limit, n, temperature, style
    asked_tasks = [teacher_task(task, teacher) for teacher in teachers]  # each teacher's tools (DualDistill)
    plans = [plan(task, config, asked) for config, asked in zip(own, asked_tasks)]
    plan_ = max(plans, key=lambda one: len(one.examples))  # every question some teacher is asked
    if any(teacher.backend == "reference" for teacher in teachers):
        missing = [example.id for example in plan_.examples if not example.rationale]
        if missing:
            raise DataError(
                f"the reference teacher needs a reference solution for every question, and {len(missing)} of "
                f"{len(plan_.examples)} in {task.name} have none (first: {missing[0]}); use teacher.backend openai or hf"
            )
    if recipe.generate.rsd_floor is not None:
        remote = [teacher.name or teacher.backend for teacher in teachers if teacher.backend != "hf"]
        if remote:
            raise ConfigError(f"generate.rsd_floor: reverse speculative decoding needs local models (teacher.backend hf, "
                              f"the student checking every token the teacher writes); {', '.join(remote)} is not local")
    cascade = bool(recipe.teachers) and recipe.generate.teacher_mode == "cascade"
    cache = Cache(recipe.generate.cache_path or default_cache_path()) if recipe.generate.cache else None
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    failure_rows: list[dict[str, Any]] = []
    unanswered_rows: list[dict[str, Any]] = []
    per_teacher: dict[str, dict[str, Any]] = {}
    first_thought_stats: dict[str, dict[str, Any]] = {}
    partial_path = run.path / PARTIAL
    with run.record("generate", stage_config, {}, resolved=to_dict(recipe)) as record, \
            partial_path.open("a", encoding="utf-8") as partial:
        try:
            open_questions = {example.id for example in plan_.examples}
            solved_so_far: set[str] = set()
            for teacher, teacher_plan, config, asked_task in zip(teachers, plans, own, asked_tasks):
                corrections: dict[str, dict[str, Any]] = {}
                if teacher.correct:  # the earlier teachers' wrong answers, continued from before their first wrong step
                    requests, corrections = correction_requests(task, teacher_plan, rows, solved_so_far)
                    if teacher.locate == "teacher":
                        requests, located_stats = locate_by_teacher(recipe, teacher, asked_task, teacher_plan, rows,
                                                                    requests, corrections, cache, console)
                else:
                    requests = [request for request in teacher_plan.requests if request.example_id in open_questions]
                if config.first_thought and asked_task.tools == "python":  # Agent Distillation's first-thought prefix
                    requests, thought_stats = first_thoughts(recipe, teacher, task, config, requests, cache, console)
                    first_thought_stats[teacher.name or "teacher"] = thought_stats
                asked = _ask(recipe, teacher, teacher.name if recipe.teachers else None, asked_task, teacher_plan, requests,
                             sampling_of(config, asked_task), cache, partial, console, tolerate_fatal=cascade)
                for row in asked.rows:
                    if row["example_id"] in corrections:
                        row["corrects"] = corrections[row["example_id"]]
                rows += asked.rows
                failure_rows += asked.failures
                unanswered_rows += asked.unanswered
                if recipe.teachers:
                    solved = asked.stats.pop("solved")
                    solved_so_far |= set(solved)
                    asked.stats["questions_solved"] = len(solved)
                    if teacher.correct:
                        located = [one for one in corrections.values() if one["error_line"] is not None]
                        asked.stats.update(corrected=len(corrections), error_found=len(located),
                                           student_lines_kept=sum(one["lines_kept"] for one in located))
                        if teacher.locate == "teacher":
                            asked.stats.update(error_found_by_teacher=located_stats["located"],
                                               locate_asked=located_stats["asked"],
                                               locate_tokens=located_stats["completion_tokens"])
                    per_teacher[teacher.name] = asked.stats  # type: ignore[index]
                    if cascade:  # the next teacher gets only what no teacher so far answered correctly
                        open_questions -= set(solved)
                else:
                    stats = asked.stats
        finally:
            if cache is not None:
                cache.close()
        traces_path = run.path / TRACES
        atomic_write_text(traces_path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        partial.close()
        partial_path.unlink(missing_ok=True)  # every row it held is now in traces.jsonl
        failures_path = run.path / FAILURES
        _list_or_remove(failures_path, failure_rows)
        _list_or_remove(run.path / UNANSWERED, unanswered_rows)
        if recipe.teachers:
            costs = [one["cost"] for one in per_teacher.values() if one["cost"] is not None]
            stats = {key: sum(one[key] for one in per_teacher.values()) for key in SUMMED}
            stats.update(cost=round(sum(costs), 6) if costs else None, wall_s=round(time.perf_counter() - started, 3),
                         backend="+".join(dict.fromkeys(one["backend"] for one in per_teacher.values())),
                         model=", ".join(per_teacher), teachers=per_teacher, teacher_mode=recipe.generate.teacher_mode)
        stats["examples"] = len(plan_.examples)
        packed = [row[topk.FIELD] for row in rows if topk.FIELD in row]
        if packed:  # what the stored distributions cost on disk (the goal: <= 300 bytes per token at k = 20)
            stats["topk_k"] = packed[0]["k"]
            stats["topk_bytes_per_token"] = round(sum(topk.bytes_per_token(p) for p in packed) / len(packed), 1)
        redrawn = [row["redrawn"] for row in rows if "redrawn" in row]
        if redrawn:  # RSD: the share of the teacher's proposals the student rejected
            stats["redrawn_tokens"] = sum(redrawn)
            stats["redrawn_share"] = round(sum(redrawn) / max(stats["completion_tokens_total"], 1), 4)
        if first_thought_stats:  # generate.first_thought: per teacher with the tool
            stats["first_thoughts"] = first_thought_stats
        calls = [call for row in rows for call in row.get("tools", [])]
        if any("tools" in row for row in rows):  # task.tools python: how the teacher used the tool
            stats.update(tool_calls=len(calls), tool_errors=sum(not call["ok"] for call in calls),
                         tool_seconds=round(sum(call["seconds"] for call in calls), 2))
        record["stats"] = stats
        record["outputs"].append(traces_path)
        if failure_rows:
            record["status"] = "incomplete"
    _print_summary(console, stats, traces_path)
    if unanswered_rows:  # not a failure: a rerun would get the same refusals, so the questions are left out
        console.print(f"[yellow]note: the teacher cannot answer {len(unanswered_rows)} of {stats['samples_requested']} "
                      f"requests (first: {unanswered_rows[0]['error']}); they are left out, listed in "
                      f"{run.path / UNANSWERED}[/yellow]")
    if failure_rows:
        first = failure_rows[0]["error"]
        raise GenerationIncomplete(
            f"{len(failure_rows)} of {stats['samples_requested']} calls failed after retries (first: {first}); they are "
            f"listed in {failures_path}. Run the same command again to retry only those."
        )
    return stats


def _list_or_remove(path: Path, rows: list[dict[str, Any]]) -> None:
    """`rows` as JSON lines in `path`, or no file (an earlier run's list removed) when there are none."""
    if rows:
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
    else:
        path.unlink(missing_ok=True)


def _print_summary(console: Console, stats: dict[str, Any], traces_path: Path) -> None:
    table = Table(title="generate", show_header=False)
    for label, key in (("questions", "examples"), ("samples written", "samples_written"), ("from cache", "cache_hits"),
                       ("new teacher calls", "calls_made"), ("failed", "failures"), ("cannot answer", "unanswered"),
                       ("retries", "retries"), ("new prompt tokens", "prompt_tokens"), ("new completion tokens", "completion_tokens"),
                       ("truncated (length)", "truncated"), ("top-k bytes per token", "topk_bytes_per_token"),
                       ("tokens redrawn (RSD)", "redrawn_tokens"), ("Python calls", "tool_calls"),
                       ("failed Python calls", "tool_errors"), ("cost", "cost"), ("wall time (s)", "wall_s")):
        if stats.get(key) is not None:
            table.add_row(label, str(stats[key]))
    console.print(table)
    if stats.get("teachers"):
        table = Table(title=f"teachers ({stats['teacher_mode']})")
        for column in ("teacher", "questions asked", "samples", "verified", "questions solved", "new calls", "cost"):
            table.add_column(column, justify="left" if column == "teacher" else "right")
        for name, one in stats["teachers"].items():
            table.add_row(name, str(one["questions"]), str(one["samples_written"]), str(one["verified"]),
                          str(one["questions_solved"]), str(one["calls_made"]), "–" if one["cost"] is None else str(one["cost"]))
        console.print(table)
    console.print(f"traces: {traces_path}")
