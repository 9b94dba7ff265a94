"""The one-command pipeline: task -> generate -> curate -> train -> eval -> report.

    tutorlm run                         # recipes/default.yaml: offline, CPU, minutes
    tutorlm run recipes/openai-teacher.yaml --train.epochs 3
    tutorlm run --dry-run               # the plan: stages, what is skipped, models, teacher calls
    tutorlm run --force train           # redo one stage (and so everything after it)

Each stage records itself in the run's manifest and is skipped when its config and inputs are
unchanged, so a rerun is nearly free and an interrupted run continues where it stopped (training
resumes from its last checkpoint).

Under `accelerate launch` or torchrun every process runs the pipeline: all of them train, each on
its share of the batches, while generate, curate, eval and report run once, on the main process
(the others wait for the curated data before training and stop after it).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tutorlm.backends.hf import keep_loaded
from tutorlm.config import ConfigError, Recipe
from tutorlm.curate import curate
from tutorlm.curate import plan_stage as curate_plan
from tutorlm.errors import MissingPackages, ModelError, NothingKept, PreflightError
from tutorlm.evaluate import eval_models, evaluate, print_table
from tutorlm.evaluate import plan_stage as evaluate_plan
from tutorlm.generate import generate
from tutorlm.generate_plan import cached_verified
from tutorlm.generate_plan import plan_stage as generate_plan
from tutorlm.models.load import resolve_model
from tutorlm.recipe_io import load_recipe, resolve_recipe
from tutorlm.report import paired_intervals, recovered_text, report, rounds_table
from tutorlm.report import plan_stage as report_plan
from tutorlm.rounds import plan_text as rounds_plan
from tutorlm.rounds import round_path, round_recipe, write_summary
from tutorlm.run import ROUNDS, STAGES
from tutorlm.train.loop import plan_stage as train_plan
from tutorlm.train.loop import train


def run_required(recipe: Recipe, console: Console, chain: tuple[str, ...] = ()) -> None:
    """Run the recipes `run.requires` names whose run has no trained student yet (a run's student can be another
    run's teacher); each one's own requirements first. A requirement that needs itself is an error."""

    for name in recipe.run.requires:
        path = resolve_recipe(name).resolve()
        if str(path) in chain:
            raise ConfigError(f"run.requires: {name} requires itself (through {' -> '.join(Path(p).stem for p in chain)})")
        required = load_recipe(path)
        if _has_student(required):
            console.print(f"requires {name}: its student is in {required.run.path / 'student'}")
            continue
        console.rule(f"first, the required recipe {name} ({required.run.path})")
        run_required(required, console, chain + (str(path),))
        run_pipeline(required, console=console, requirements=False)


def _has_student(recipe: Recipe) -> bool:
    student = recipe.run.path / "student"
    return (student / "config.json").exists() or (student / "adapter_config.json").exists()


def run_pipeline(recipe: Recipe, *, force: set[str] = frozenset(), console: Console | None = None,
                 requirements: bool = True) -> Path:
    """Run every stage that is not current (after the recipes `run.requires` names); returns the report's path."""
    from accelerate import PartialState  # imports torch: only when training is near
    from accelerate.utils import parse_flag_from_env

    console = console or Console(stderr=True)
    check_models(recipe)  # its models and those of the recipes it requires, before the first one runs
    if requirements:
        run_required(recipe, console)
    unknown = set(force) - set(STAGES) - {"all"}
    if unknown:
        raise ConfigError(f"command line: --force takes stage names ({', '.join(STAGES)} or all), not {', '.join(sorted(unknown))}")
    # Forcing a stage redoes every stage after it: their inputs change anyway.
    first = min((STAGES.index(stage) for stage in force if stage in STAGES), default=0 if "all" in force else len(STAGES))
    forced = set(STAGES[first:])
    # One process, or each of a launcher's; on the CPU flag the training Accelerator will read, so both agree.
    processes = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    # A local teacher is loaded once: it writes the rationales, is evaluated right after, and, when the objective
    # learns from it (KD, on-policy, KDRL), scores the student's tokens in training from the same copy in memory.
    config = recipe.train
    with keep_loaded() if config.learns_from_teacher else contextlib.nullcontext():
        if processes.is_main_process:
            console.rule(f"tutorlm run: {recipe.run.path}")
            if processes.num_processes > 1:
                console.print(f"{processes.num_processes} processes: each trains on its share of the batches; "
                              "generate, curate, eval and report run on this, the main one")
            with keep_loaded():
                generate(recipe, force="generate" in forced, console=console)
                teacher_specs = [spec for spec in eval_models(recipe) if spec.split("=")[-1] == "teacher"]
                if teacher_specs and recipe.teacher.backend == "hf":
                    evaluate(recipe, teacher_specs, force="eval" in forced, console=console, table=False)
            curate(recipe, force="curate" in forced, console=console)
        processes.wait_for_everyone()  # the others wait here for the curated data
        train(recipe, resume=True, force="train" in forced, console=console)
    if not processes.is_main_process:
        run_rounds(recipe, force, console, processes.is_main_process)
        return recipe.run.path / "report.html"
    summaries = evaluate(recipe, eval_models(recipe), force="eval" in forced, console=console, table=False)
    path = report(recipe.run.path)
    labels = [label for label in ("base", "student", "teacher") if label in summaries]
    console.rule("result")
    print_table(console, {label: summaries[label] for label in labels},
                f"evaluation: {recipe.task.source}, {recipe.eval.split} split")
    if "base" in summaries and "student" in summaries:
        gain = summaries["student"]["accuracy"] - summaries["base"]["accuracy"]
        console.print(f"student accuracy {summaries['base']['accuracy']:.1%} -> {summaries['student']['accuracy']:.1%} ({gain * 100:+.1f} points)")
        recovered = recovered_text(paired_intervals(recipe.run.path / "eval", "teacher" if "teacher" in summaries else "reference"))
        if recovered:
            console.print(recovered, highlight=False)
    if recipe.rounds.count:
        run_rounds(recipe, force, console, processes.is_main_process)
        path = report(recipe.run.path)
    console.print(f"report: {path}")
    return path


def run_rounds(recipe: Recipe, force: set[str], console: Console, main: bool) -> None:
    """The self-improvement rounds after the run (tutorlm/rounds.py): each a run of its own, skipped when current
    (`--force all` redoes them too; another forced stage is the run's own). A round samples again when the student
    it sampled from has changed since (its fingerprint is recorded), and so trains again."""
    from tutorlm.models.load import model_fingerprint

    recorded = _recorded(recipe)  # what rounds.json says each round sampled from (read once)
    fingerprints: dict[int, str] = {}
    for number in range(1, recipe.rounds.count + 1):
        one = round_recipe(recipe, number)
        sampled = model_fingerprint(str(round_path(recipe, number - 1) / "student"))
        redo = {"all"} if "all" in force else set()
        if recorded.get(number, sampled) != sampled:
            console.print(f"round {number}: the student it sampled from has changed since; it samples again")
            redo.add("generate")
        if main:
            console.rule(f"round {number} of {recipe.rounds.count}: {one.run.path}")
        try:
            run_pipeline(one, force=redo, console=console, requirements=False)
        except NothingKept:
            # Nothing to train on: no answer of the student verified and no hint either. Not an error of the
            # recipe: the rounds stop here, and the summary says so.
            if main:
                console.print(f"[yellow]round {number}: none of the student's answers verified and no hint did either: "
                              f"nothing to train on; the rounds stop after round {number - 1}[/yellow]")
                write_summary(recipe, {**recorded, **fingerprints}, stopped=number)
            return
        fingerprints[number] = sampled
        if main:
            summary = write_summary(recipe, {**recorded, **fingerprints})
            console.print("\n".join(rounds_table(summary)), highlight=False)


def _recorded(recipe: Recipe) -> dict[int, str]:
    summary = recipe.run.path / ROUNDS
    entries = json.loads(summary.read_text()).get("rounds", []) if summary.exists() else []
    return {entry["round"]: entry["sampled_from"] for entry in entries if "sampled_from" in entry}


def check_models(recipe: Recipe) -> None:
    """Local models the run will need (a local teacher, the student, a KD teacher), its own and those of the recipes
    it requires that have not run yet, exist before any stage spends time or writes anything. Packaged models whose
    packages are missing are named together, with one install command for every extra they need."""
    recipes = [*reversed(_required(recipe)), recipe]
    specs: dict[tuple[str, str | None], str] = {}  # (model, gguf file) -> the first key that names it
    for one in recipes:
        where = "" if one is recipe else f"{one.run.name} (required): "
        keys = [("student.model", one.student.model, one.student.gguf_file)]
        for index, teacher in enumerate(one.teachers or [one.teacher]):
            if teacher.backend == "hf" and teacher.model:
                keys.append((f"teachers[{index}].model" if one.teachers else "teacher.model", teacher.model, teacher.gguf_file))
        if one.train.objective != "sft" and one.train.kd_teacher:
            keys.append(("train.kd_teacher", one.train.kd_teacher, None))
        for key, spec, gguf_file in keys:
            specs.setdefault((spec, gguf_file), where + key)
    missing, extras = [], []
    for (spec, gguf_file), key in specs.items():
        if any(spec == str(other.run.path / "student") for other in recipes):
            continue  # trained by a required recipe before this one runs
        try:
            resolve_model(spec, gguf_file)
        except MissingPackages as error:
            missing.append(f"{key}: {error}")
            extras.append(error.extra)
        except ModelError as error:
            raise ConfigError(f"{key}: {error}") from None
    if len(missing) == 1:
        raise ConfigError(missing[0])
    if missing:
        raise ConfigError(f"{len(missing)} packaged models are not installed ({'; '.join(missing)}); install them all with "
                          f"`pip install -e \".[{','.join(sorted(set(extras)))}]\"`")
    check_objective(recipe)


def _required(recipe: Recipe, chain: tuple[str, ...] = ()) -> list[Recipe]:
    """The recipes `run.requires` names (and theirs) that have no trained student yet, nearest first."""
    found = []
    for name in recipe.run.requires:
        path = resolve_recipe(name).resolve()
        if str(path) in chain:
            raise ConfigError(f"run.requires: {name} requires itself (through {' -> '.join(Path(p).stem for p in chain)})")
        required = load_recipe(path)
        if not _has_student(required):
            found += [required, *_required(required, chain + (str(path),))]
    return found


def check_objective(recipe: Recipe) -> None:
    """What train would refuse for want of a teacher, said before generate and curate spend any time (and by the
    dry run): KD needs the teacher's distributions (a local teacher, or a top-k stored by a teacher that gives one),
    on-policy distillation and KDRL a teacher to grade the student's samples."""
    config, teacher = recipe.train, recipe.teacher
    local = bool(config.kd_teacher) or (teacher.backend == "hf" and bool(teacher.model))
    if config.objective == "kd" and config.kd_source != "stored" and not local:
        gives_topk = recipe.generate.top_logprobs > 0 and any(one.backend != "reference" for one in recipe.teachers or [teacher])
        if not gives_topk:
            raise PreflightError(
                f"train.objective kd: the teacher ({teacher.backend}{' ' + teacher.model if teacher.model else ''}) gives no "
                "token distributions to distil: set teacher.backend hf with teacher.model (a local teacher), train.kd_teacher "
                "PATH (a local model re-scores the rationales), or have a teacher that gives them store its top-k with "
                "--generate.top_logprobs 20")
    graded = config.objective == "on_policy" or (config.objective == "grpo" and config.grpo_teacher_weight)
    if graded and not local and not (teacher.backend == "openai" and teacher.model):
        raise PreflightError(
            f"train.objective {config.objective}{' with grpo_teacher_weight' if config.objective == 'grpo' else ''} needs a "
            "teacher to grade the student's samples: train.kd_teacher (a local model), teacher.backend hf with "
            "teacher.model, or teacher.backend openai (a server that echoes prompt log-probabilities, such as vLLM)")


def dry_run(recipe: Recipe, *, console: Console | None = None) -> None:
    """Print the plan without running anything or calling any teacher: a row per stage, each from the stage's own
    `plan_stage(recipe)`."""
    console = console or Console()
    missing = [(name, load_recipe(name)) for name in recipe.run.requires]
    missing = [(name, required) for name, required in missing if not _has_student(required)]
    if missing:  # their students are this run's models: its plan can be made once they exist
        for name, required in missing:
            console.print(f"requires {name}: {required.run.path / 'student'} is not there yet, so `tutorlm run` runs it "
                          "first; its plan:")
            dry_run(required, console=console)
        console.print(f"the plan of {recipe.run.path} follows once they have run")
        return
    check_objective(recipe)  # what the run would refuse at train, refused here too
    table = Table(title=f"plan for {recipe.run.path}")
    for column in ("stage", "status", "what"):
        table.add_column(column)
    trained = train_plan(recipe, cached_verified(recipe))
    for planned in (generate_plan(recipe), curate_plan(recipe), trained,
                    evaluate_plan(recipe, student_current=trained.status == "skip (current)"), report_plan(recipe)):
        table.add_row(planned.stage, planned.status, planned.what)
    if recipe.rounds.count:
        table.add_row("rounds", "run", rounds_plan(recipe))
    console.print(table)
