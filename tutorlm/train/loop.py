"""Stage 3, train: the training loop every objective shares (`train.objective: sft | kd | on_policy | grpo | dpo`).

    tutorlm train --out runs/letters [--train.objective kd] [--train.method lora] [--train.epochs 2] [--resume]
    accelerate launch --multi_gpu --num_processes 8 -m tutorlm train --out runs/letters     # data parallel on GPUs
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 -m tutorlm train --out runs/letters # data parallel on CPUs

This file is the plumbing; what a step computes lives in one file per objective (train/sft.py,
train/kd.py, train/on_policy.py, train/grpo.py, train/dpo.py), behind the small `Objective` interface below: `prepare` once, before the loop (load a
teacher, attach targets to the examples, return what the manifest should record), then `loss` on
each micro-batch. Everything else is here and is the same for every objective:

AdamW, linear warmup then cosine decay, gradient accumulation and clipping through `accelerate`
(the loss of a step is the mean of the micro-batch means), a held-out loss every `eval_every` steps
(always the cross-entropy on the held-out rationales, so curves of different objectives compare), a
checkpoint every `save_every` steps (model, optimizer, scheduler, RNG states and data position, written
to a temporary directory and renamed when complete), and `--resume` to continue from the latest one
after a crash or kill -9. Batches group examples of similar length (padding-free packing with
`--train.packing true`, see data.py). Logs go to RUN_DIR/train_log.jsonl; the final student to
RUN_DIR/student/ (`save_pretrained`, safetensors, with tokenizer and the resolved config), loadable by
plain transformers (or peft, for an unmerged LoRA adapter).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.console import Console

from tutorlm import throughput
from tutorlm.config import Recipe, config_hash, teacher_generate, to_dict
from tutorlm.models.load import load, pick_device, reuse_freed_memory
from tutorlm.models.precision import resolve_precision
from tutorlm.models.tokens import Tokenized
from tutorlm.progress import StageProgress
from tutorlm.run import CURATED, PAIRS, RunDir, StagePlan, atomic_write_text, read_jsonl
from tutorlm.tasks import DataError, load_task
from tutorlm.train.data import batch_order, batches, preflight, sft_loss
from tutorlm.train.dpo import DPO
from tutorlm.train.grpo import GRPO
from tutorlm.train.kd import KD
from tutorlm.train.on_policy import OnPolicy
from tutorlm.train.sft import SFT

STUDENT = "student"
LOG = "train_log.jsonl"


class Objective(Protocol):
    """What one training objective adds to the shared loop (train/sft.py, train/kd.py)."""

    def prepare(self, recipe: Recipe, model: Any, tokenizer: Any, rows: list[dict[str, Any]], examples: list[Tokenized],
                device: Any, console: Console) -> dict[str, Any]:
        """Once, before the first step: load what the loss needs, attach per-example targets to `examples`
        (in place), print a line about it, and return what the manifest should record."""
        ...

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """(the mean loss of one micro-batch, the number of tokens it averages over)."""
        ...

    # Optional: `log() -> dict`, what the objective adds to each optimizer step's line in train_log.jsonl.
    # Optional: `autocast`, set by the loop to its mixed-precision context (accelerator.autocast) before `prepare`, for
    # an objective that runs the model outside a training forward: sampling a whole round inside one such context
    # casts each weight to bf16 once (autocast caches the casts of leaf weights until its outermost context ends);
    # the forward's own context alone casts every weight again for every decoded token. (On a CPU a round of a few
    # rows samples in float32 instead: rollout.sampling_precision.)


def objective_for(recipe: Recipe) -> Objective:
    if recipe.train.objective == "kd":
        return KD(recipe)
    if recipe.train.objective == "on_policy":
        return OnPolicy(recipe)
    if recipe.train.objective == "grpo":
        return GRPO(recipe)
    if recipe.train.objective == "dpo":
        return DPO(recipe)

    return SFT()


def _with_update_s(entry: dict[str, Any], step_s: float) -> dict[str, Any]:
    """An objective that samples or asks a teacher logs those seconds; the rest of the step is the update."""
    if "sampling_s" in entry or "scoring_s" in entry:
        entry["update_s"] = round(max(0.0, step_s - entry.get("sampling_s", 0.0) - entry.get("scoring_s", 0.0)), 3)
    return entry


def split_held_out(rows: list[dict[str, Any]], fraction: float, cap: int) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows): whole questions go to one side, chosen by a hash of the question id."""
    if fraction == 0:
        return rows, []
    held = [r for r in rows if int(hashlib.sha256(r["example_id"].encode()).hexdigest()[:8], 16) % 10_000 < fraction * 10_000]
    held_ids = {r["example_id"] for r in held[:cap]}
    return [r for r in rows if r["example_id"] not in held_ids], [r for r in rows if r["example_id"] in held_ids][:cap]


def lr_lambda(warmup_steps: int, total_steps: int):
    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return schedule


def time_schedule(warmup_ratio: float, progress: float) -> float:
    """The learning-rate factor at `progress` (0 to 1) of a time budget: linear warmup over its first warmup_ratio,
    then cosine decay to 0 at its end; the step schedule's shape, over minutes instead of steps."""
    if progress < warmup_ratio:
        return (progress + 1e-9) / warmup_ratio
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - warmup_ratio) / max(1e-9, 1 - warmup_ratio))))


def save_snapshot(model: Any, tokenizer: Any, directory: Path) -> None:
    """The student's weights now (a LoRA student: its adapter), for a learning curve against time; evaluated with
    `tutorlm eval --model DIRECTORY`."""
    temporary = directory.with_name(f".{directory.name}.saving")
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(temporary, safe_serialization=True)
    tokenizer.save_pretrained(temporary)
    shutil.rmtree(directory, ignore_errors=True)
    temporary.rename(directory)


def evaluate_loss(model: Any, examples: list[Tokenized], batch_size: int, packing: bool, pad_token_id: int, device: Any) -> float:
    """Mean completion-token loss over held-out examples."""
    model.eval()
    total, count = 0.0, 0
    order = [list(range(start, min(start + batch_size, len(examples)))) for start in range(0, len(examples), batch_size)]
    with torch.no_grad():
        for batch in batches(examples, order, packing, pad_token_id):
            loss, tokens = sft_loss(model, {k: v.to(device) for k, v in batch.items()})
            total, count = total + loss.item() * tokens, count + tokens
    model.train()
    return total / max(count, 1)


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The settings that differ between two nested dicts, as 'key: old then, new now'."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [line for key in sorted(set(old) | set(new), key=str)
                for line in _differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} then, {new!r} now"]


def checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints (those with trainer_state.json), oldest first."""
    if not directory.exists():
        return []
    return sorted(p for p in directory.iterdir() if p.name.startswith("step-") and (p / "trainer_state.json").exists())


def rank_share(order: list, accelerator: Any) -> list:
    """This process's share of an epoch's batches: every n-th, the same count on every process."""
    world = accelerator.num_processes
    if world == 1:
        return order
    return order[accelerator.process_index :: world][: len(order) // world]


def train_stage_config(recipe: Recipe) -> dict[str, Any]:
    student = {key: value for key, value in to_dict(recipe.student).items() if key not in ("device", "dtype")}  # eval-only
    # where checkpoints and snapshots go is not part of what the student is; a time budget is, when there is one
    # (unset, it stays out, so runs from before it existed stay current)
    # Settings added later stay out where they change nothing (on_policy_samples outside on_policy), so runs from
    # before them stay current; a default that changed what trains (GRPO's learning rate) enters as its value.
    train = {key: value for key, value in to_dict(recipe.train).items()
             if key not in ("prune_checkpoints", "snapshot_minutes") and not (key == "max_minutes" and value is None)
             and not (key == "on_policy_samples" and recipe.train.objective != "on_policy")}
    if recipe.train.objective == "grpo" and recipe.train.lr is None:
        train["lr"] = recipe.train.learning_rate
    config = {"student": student, "train": train}
    if recipe.train.learns_from_teacher:
        # the teacher decides the targets: another teacher is another run
        teacher = to_dict(recipe.teacher)
        config["teacher"] = {key: teacher[key] for key in ("backend", "model", "gguf_file", "dtype")}
    return config


def build_model(recipe: Recipe) -> tuple[Any, Any]:
    config = recipe.train
    model, tokenizer = load(recipe.student, device="cpu", dtype="float32")  # accelerate places it; autocast sets precision
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(config.seed)
        model = get_peft_model(model, LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=config.lora_target_modules, task_type="CAUSAL_LM",
        ))
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if config.method == "lora":
            model.enable_input_require_grads()
    model.config.use_cache = False
    return model, tokenizer


def _release_other_precision(mixed_precision: str) -> None:
    """accelerate keeps one mixed-precision setting per process and refuses another: a second training in the same
    process (a notebook, a chain of runs) that resolves to another precision starts a fresh state instead of failing.
    Under a launcher (several processes) the state is the launcher's and is left alone."""
    from accelerate.state import AcceleratorState, PartialState

    if AcceleratorState._shared_state and PartialState().num_processes == 1 \
            and str(AcceleratorState().mixed_precision) != mixed_precision:
        AcceleratorState._reset_state()


def train(recipe: Recipe, *, resume: bool = False, force: bool = False, console: Console | None = None,
          model_and_tokenizer: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Run the train stage; returns the stats recorded in the manifest.

    `model_and_tokenizer` replaces loading `recipe.student` (tests pass a tiny model built in memory).
    """
    from accelerate import Accelerator

    entered = time.perf_counter()  # a time budget (train.max_minutes) counts everything from here: loading, prepare
    from accelerate.utils import parse_flag_from_env

    config = recipe.train
    # bf16 autocast over fp32 weights and optimizer state where the hardware has a fast bf16 path (measured on CPUs).
    device = "cuda" if torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU") else "cpu"
    choice = resolve_precision(config.precision, device)
    precision, precision_reason = choice.precision, choice.reason
    # Under `accelerate launch` every process runs this function: each trains on its own share of the
    # batches, and only the main process writes logs, the manifest, checkpoint metadata and the student.
    mixed_precision = "bf16" if precision == "bf16" else "no"
    _release_other_precision(mixed_precision)
    accelerator = Accelerator(mixed_precision=mixed_precision)
    main = accelerator.is_main_process
    console = (console or Console(stderr=True)) if main else Console(file=open(os.devnull, "w"))
    run = RunDir(recipe.run.path)
    curated = run.path / CURATED
    if not curated.exists():
        raise DataError(f"{curated}: no curated data; run `tutorlm curate` for this run directory first")
    stage_config = train_stage_config(recipe)
    inputs = {"curated": curated}
    if config.objective == "dpo" and (run.path / PAIRS).exists():  # what DPO learns from
        inputs["pairs"] = run.path / PAIRS
    if not force and run.is_current("train", stage_config, inputs):
        console.print(f"train: up to date in {run.path} (--force redoes it)")
        return run.stage("train")["stats"]  # type: ignore[index]
    checkpoint_dir = run.path / STUDENT / "checkpoints"
    settings = json.loads(json.dumps(stage_config))  # as trainer_state.json will hold it
    state = {"step": 0, "epoch": 0, "batch": 0, "config_hash": config_hash(stage_config), "tokens_seen": 0, "config": settings}
    found = checkpoints(checkpoint_dir)
    if resume and found:
        saved = json.loads((found[-1] / "trainer_state.json").read_text())
        if saved["config_hash"] != state["config_hash"]:
            changed = _differences(saved.get("config", {}), settings)
            raise DataError(f"{found[-1]} was written with other settings ({'; '.join(changed[:4]) or 'student/train'}); "
                            "drop --resume to start afresh")
        state = saved
    elif found:
        console.print(f"note: starting afresh; {len(found)} checkpoint(s) of an earlier run are replaced (--resume continues one)")
        if main:
            shutil.rmtree(checkpoint_dir)
    accelerator.wait_for_everyone()

    recording = run.record("train", stage_config, inputs, resolved=to_dict(recipe)) if main else \
        contextlib.nullcontext({"outputs": [], "stats": {}})
    with recording as record, reuse_freed_memory(device):
        model, tokenizer = model_and_tokenizer or build_model(recipe)
        rows = read_jsonl(curated)
        train_rows, held_rows = split_held_out(rows, config.eval_fraction, config.max_eval_examples)
        examples, report = preflight(tokenizer, train_rows, config.max_length, config.overlength)
        held_out = preflight(tokenizer, held_rows, config.max_length, config.overlength)[0] if held_rows else []
        console.print(
            f"train: {report['kept']} examples ({report['over_max_length']} over max_length {config.max_length}, "
            f"policy {config.overlength}), {len(held_out)} held out; pad token {report['pad_token']!r}; method {config.method}; "
            f"objective {config.objective}; precision {precision} ({precision_reason})"
        )
        objective = objective_for(recipe)
        objective.autocast = accelerator.autocast
        objective_stats = objective.prepare(recipe, model, tokenizer, train_rows, examples, accelerator.device, console)
        micro_batches_per_epoch = len(rank_share(list(range(math.ceil(len(examples) / config.batch_size))), accelerator))
        # Accumulation is counted here, per epoch, not by accelerate: a step is a group of up to grad_accum
        # micro-batches inside one epoch, so groups stay aligned across epochs and across a resume.
        steps_per_epoch = math.ceil(micro_batches_per_epoch / config.grad_accum)  # the last step may take fewer
        total_steps = config.max_steps or config.epochs * steps_per_epoch
        trainable = [p for p in model.parameters() if p.requires_grad]
        # Fused AdamW: one kernel per parameter instead of foreach's parameter-sized temporaries;
        # benchmarks/sft_mfu.py measured it 17% faster on CPU, and it needs less memory.
        optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay, fused=True)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(int(config.warmup_ratio * total_steps), total_steps))
        model, optimizer = accelerator.prepare(model, optimizer)
        # Only the training forward is compiled; evaluation, checkpoints and saving use the module itself.
        forward_model = torch.compile(model) if config.compile else model
        accelerator.register_for_checkpointing(scheduler)
        if state["step"]:
            accelerator.load_state(str(found[-1]))
            if hasattr(objective, "load_state_dict"):  # e.g. how many micro-batches on-policy sampling has drawn
                objective.load_state_dict(state.get("objective", {}))
            console.print(f"train: resumed from {found[-1].name} (epoch {state['epoch']}, batch {state['batch']})")
        log_path = run.path / LOG
        if main and state["step"]:  # drop log lines written after the checkpoint we resume from
            kept_lines = [l for l in log_path.read_text().splitlines() if json.loads(l)["step"] <= state["step"]] if log_path.exists() else []
            atomic_write_text(log_path, "".join(line + "\n" for line in kept_lines))
        elif main and log_path.exists():
            log_path.unlink()
        log = log_path.open("a", encoding="utf-8") if main else open(os.devnull, "w")
        pad_token_id = tokenizer.pad_token_id

        def write_log(entry: dict[str, Any]) -> None:
            log.write(json.dumps(entry) + "\n")
            log.flush()

        def save_checkpoint() -> None:
            state["train_s"] = spent()
            final = checkpoint_dir / f"step-{state['step']:06d}"
            temporary = checkpoint_dir / f".tmp-step-{state['step']:06d}"
            if main:
                shutil.rmtree(temporary, ignore_errors=True)
            accelerator.wait_for_everyone()
            # accelerate warns about tied embeddings at every save; tied weights are restored on load.
            logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
            accelerator.save_state(str(temporary))  # every process: each saves its own RNG state
            accelerator.wait_for_everyone()
            if hasattr(objective, "state_dict"):
                state["objective"] = objective.state_dict()
            if main:
                (temporary / "trainer_state.json").write_text(json.dumps(state))
                shutil.rmtree(final, ignore_errors=True)
                temporary.rename(final)
                for old in checkpoints(checkpoint_dir)[: -config.keep_checkpoints]:
                    shutil.rmtree(old)
            accelerator.wait_for_everyone()

        spent_before = state.get("train_s", 0.0)  # the seconds a resumed run had already spent

        def spent() -> float:
            return spent_before + time.perf_counter() - entered

        budget_s = config.max_minutes * 60 if config.max_minutes else None
        stopped_by = "steps"
        model.train()
        started, window_tokens, window_start = time.perf_counter(), 0, time.perf_counter()
        tokens_before, steps_before = state["tokens_seen"], state["step"]  # a resumed run measures its own work
        window_step_s = 0.0  # seconds in the micro-batches and optimizer steps since the last log line
        losses_in_step: list[float] = []
        step_counted, skipped_steps = 0, 0  # the objective's counted tokens in this step; steps left without an update
        last_eval = None
        progress = StageProgress(console, "train", total_steps, every=60.0,
                                 detail="loss {task.fields[loss]:.4f} • {task.fields[tps]:.0f} tok/s • epoch {task.fields[epoch]}",
                                 loss=float("nan"), tps=0.0, epoch=state["epoch"])
        if held_out and state["step"] == 0:  # where the student starts, for the loss curve
            last_eval = evaluate_loss(model, held_out, config.batch_size, config.packing, pad_token_id, accelerator.device)
            write_log({"step": 0, "eval_loss": round(last_eval, 5)})
        with progress:
            progress.start(state["step"])
            while state["step"] < total_steps:
                order = rank_share(batch_order(examples, config.batch_size, config.seed, state["epoch"], group_by_length=not config.packing,
                                               curriculum=config.curriculum),
                                   accelerator)
                for batch_index in range(state["batch"], len(order)):
                    micro_started = time.perf_counter()
                    batch = next(batches(examples, [order[batch_index]], config.packing, pad_token_id))
                    # Counted before the batch moves: on a GPU, reading a device tensor would wait for the queued work.
                    real_tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
                    batch = {key: value.to(accelerator.device) for key, value in batch.items()}
                    group_start = batch_index - batch_index % config.grad_accum
                    group_size = min(config.grad_accum, len(order) - group_start)
                    sync = batch_index + 1 == group_start + group_size
                    with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                        loss, counted = objective.loss(forward_model, batch)
                        accelerator.backward(loss / group_size)
                    step_counted += counted
                    if accelerator.num_processes > 1:  # count every process's tokens
                        real_tokens = int(accelerator.reduce(torch.tensor(real_tokens, device=accelerator.device), "sum"))
                    window_tokens += real_tokens
                    state["tokens_seen"] += real_tokens
                    losses_in_step.append(loss.item())
                    state["batch"] = batch_index + 1
                    if not sync:
                        window_step_s += time.perf_counter() - micro_started
                        continue
                    if accelerator.num_processes > 1:  # every process skips together, or none does
                        step_counted = int(accelerator.reduce(torch.tensor(step_counted, device=accelerator.device), "sum"))
                    grad_norm = accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
                    # A step whose micro-batches had nothing to learn from (GRPO: every group's rewards equal) leaves the
                    # weights alone: AdamW would still move them by its momentum. The step counts, and the schedule moves
                    # on, so max_steps and the learning-rate schedule keep their meaning in steps of the run.
                    updated = step_counted > 0
                    if updated:
                        optimizer.step()
                    else:
                        skipped_steps += 1
                    step_counted = 0
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                    if budget_s:  # the schedule runs over the time budget: warmup, then cosine to 0 at its end
                        factor = time_schedule(config.warmup_ratio, spent() / budget_s)
                        for group in optimizer.param_groups:
                            group["lr"] = group["initial_lr"] * factor
                    window_step_s += time.perf_counter() - micro_started
                    state["step"] += 1
                    step_loss = sum(losses_in_step) / len(losses_in_step)
                    losses_in_step = []
                    now = time.perf_counter()
                    tokens_per_s = window_tokens / max(now - window_start, 1e-9)
                    if state["step"] % config.log_every == 0 or state["step"] == total_steps:
                        write_log({"step": state["step"], "epoch": state["epoch"], "loss": round(step_loss, 5),
                                   "lr": optimizer.param_groups[0]["lr"], "grad_norm": round(float(grad_norm), 5),
                                   "tokens_per_s": round(tokens_per_s, 1), "tokens_seen": state["tokens_seen"],
                                   "elapsed_s": round(now - started, 2), "step_s": round(window_step_s, 3),
                                   **({} if updated else {"no_update": True}),
                                   **_with_update_s(objective.log() if hasattr(objective, "log") else {}, window_step_s)})
                        window_step_s = 0.0
                    if held_out and (state["step"] % config.eval_every == 0 or state["step"] == total_steps):
                        last_eval = evaluate_loss(model, held_out, config.batch_size, config.packing, pad_token_id, accelerator.device)
                        write_log({"step": state["step"], "eval_loss": round(last_eval, 5)})
                    if state["step"] % config.save_every == 0 and state["step"] < total_steps:
                        save_checkpoint()
                    progress.advance(state["step"] - progress.completed, loss=step_loss, tps=tokens_per_s, epoch=state["epoch"])
                    window_tokens, window_start = 0, time.perf_counter()  # eval and checkpoint time is not training time
                    if config.snapshot_minutes and main and spent() >= (state.get("snapshots", 0) + 1) * config.snapshot_minutes * 60:
                        state["snapshots"] = state.get("snapshots", 0) + 1
                        save_snapshot(accelerator.unwrap_model(model), tokenizer,
                                      run.path / STUDENT / "snapshots" / f"minute-{state['snapshots'] * config.snapshot_minutes:g}")
                    if budget_s and spent() >= budget_s:
                        stopped_by = "max_minutes"
                        break
                    if state["step"] >= total_steps:
                        break
                else:
                    state["epoch"] += 1
                    state["batch"] = 0
                    continue
                break
        log.close()
        elapsed = time.perf_counter() - started
        accelerator.wait_for_everyone()
        student_dir = run.path / STUDENT
        if main:
            save_student(accelerator.unwrap_model(model), tokenizer, student_dir, recipe)
            if model_and_tokenizer is None:  # a model handed in is not recipe.student.model: its speed says nothing of it
                throughput.record(f"train {config.objective}", recipe.student.model, precision,
                                  tokens=state["tokens_seen"] - tokens_before, seconds=elapsed,
                                  items=(state["step"] - steps_before) * config.batch_size, device=accelerator.device.type)
        freed_mb = prune_checkpoints(checkpoint_dir, console) if main and config.prune_checkpoints else 0.0
        record["outputs"].append(student_dir / "tutorlm_config.json")
        record["stats"] = {
            "steps": state["step"], "steps_without_update": skipped_steps, "stopped_by": stopped_by,
            "train_minutes": round(spent() / 60, 2), "epochs_started": state["epoch"] + 1, "examples": len(examples), "held_out": len(held_out),
            "final_eval_loss": last_eval, "tokens_seen": state["tokens_seen"], "wall_s": round(elapsed, 2),
            "preflight": report, "method": config.method, "objective": config.objective,
            "precision": precision, "precision_reason": precision_reason, "checkpoints_freed_mb": freed_mb, **objective_stats,
            **(objective.summary() if hasattr(objective, "summary") else {}),
        }
    console.print(f"student: {student_dir}" + (f" (held-out loss {last_eval:.4f})" if last_eval is not None else ""))
    return record["stats"]


def prune_checkpoints(directory: Path, console: Console) -> float:
    """Delete a finished training's checkpoints; the megabytes freed. The student is saved beside them, and a
    finished run is skipped, or redone from the start with --force, so nothing resumes from them."""
    if not directory.exists():
        return 0.0
    freed = sum(path.stat().st_size for path in directory.rglob("*") if path.is_file()) / 2**20
    shutil.rmtree(directory)
    if freed:
        console.print(f"train: deleted the checkpoints, {freed:,.0f} MB (train.prune_checkpoints false keeps them)")
    return round(freed, 1)


def save_student(model: Any, tokenizer: Any, directory: Path, recipe: Recipe) -> Path:
    """Write the final student next to its checkpoints; LoRA is merged into full weights when asked."""
    if recipe.train.method == "lora" and recipe.train.merge:
        model = model.merge_and_unload()
    temporary = directory.with_name(f".{directory.name}.saving")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    model.config.use_cache = True
    model.save_pretrained(temporary, safe_serialization=True)
    tokenizer.save_pretrained(temporary)
    (temporary / "tutorlm_config.json").write_text(json.dumps(to_dict(recipe), indent=2) + "\n")
    directory.mkdir(parents=True, exist_ok=True)
    for item in temporary.iterdir():  # replace the files, keep checkpoints/
        target = directory / item.name
        if target.is_dir():
            shutil.rmtree(target)
        item.replace(target)
    temporary.rmdir()
    return directory


def plan_stage(recipe: Recipe, kept: tuple[int, int] = (0, 0)) -> StagePlan:
    """The dry run's row: skip, resume from a checkpoint, or run; what trains, and how long it would take here (from
    the speeds measured on this machine). `kept` is (verified, cached) of the teachers' answers already in the cache
    (generate_plan.cached_verified): the rationales are scaled by that share; with none cached, every question counts (at
    most: curation keeps fewer)."""
    run = RunDir(recipe.run.path)
    curated = run.path / CURATED
    config, teacher = recipe.train, recipe.teacher
    current = curated.exists() and run.is_current("train", train_stage_config(recipe), {"curated": curated})
    resumable = checkpoints(run.path / STUDENT / "checkpoints")
    status = "skip (current)" if current else f"resume from {resumable[-1].name}" if resumable else "run"
    length = f"{config.max_steps} steps" if config.max_steps else f"{config.epochs} epoch(s)"
    what = f"{config.method} fine-tuning of {recipe.student.model}, {length}, objective {config.objective}"
    if config.objective == "grpo":
        what += (f" ({config.grpo_group_size} samples per question, {config.batch_size} questions per step, rewards from "
                 "the verifier" + (f", teacher term {config.grpo_teacher_weight}" if config.grpo_teacher_weight else "") + ")")
    elif config.objective == "dpo":
        what += f" (preference pairs from curate.pairs {recipe.curate.pairs}, beta {config.dpo_beta}, {config.dpo_loss} loss)"
    elif config.objective != "sft":
        kd_teacher = config.kd_teacher or (teacher.model if teacher.backend == "hf" else None)
        what += f" ({'teacher ' + kd_teacher if kd_teacher else 'the top-k stored by generate'})"
    if not current:
        task = load_task(recipe.task)
        rationales = 0  # at most: curation keeps fewer
        for one in recipe.teachers or [teacher]:
            own = teacher_generate(recipe.generate, one)
            rationales += len(own.questions(task)) * own.n
        verified, cached = kept
        if cached:
            rationales = round(rationales * verified / cached)
        device = pick_device(recipe.student.device)
        what += "; " + throughput.estimate(f"train {config.objective}", recipe.student.model,
                                           resolve_precision(config.precision, device).precision,
                                           rationales * (config.epochs if not config.max_steps else 1), device=device.type)
        what += (f", for about {rationales} rationales ({verified} of the {cached} cached answers verify)" if cached
                 else f", for at most {rationales} rationales")
    if config.max_minutes:
        what += f"; stops after {config.max_minutes:g} minutes at most (train.max_minutes)"
    return StagePlan("train", status, what)
