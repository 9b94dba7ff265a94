"""Logit distillation on tiny models built in the test: zero when teacher = student, learning, tokenizer checks."""

from __future__ import annotations

import json
import os

import pytest
import torch
from rich.console import Console
from tiny import different_tokenizer, make_model, make_run, make_tokenizer, save_tiny_model, varied_model

from tutorlm.config import TeacherConfig, TrainConfig
from tutorlm.errors import DataError, PreflightError
from tutorlm.train.data import batch_order, batches, preflight
from tutorlm.train.kd import kd_loss
from tutorlm.train.teacher import compare_tokenizers
from tutorlm.train.loop import train

QUIET = Console(file=open(os.devnull, "w"))


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def first_batch(tokenizer, recipe):
    from tutorlm.run import read_jsonl

    rows = read_jsonl(recipe.run.path / "curated.jsonl")
    examples, _ = preflight(tokenizer, rows, 256, "truncate")
    return next(batches(examples, batch_order(examples, 4, 0, 0, True)[:1], False, tokenizer.pad_token_id))


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd", "skew_kl"])
def test_a_teacher_equal_to_the_student_gives_zero_loss_and_zero_gradient(tmp_path, tokenizer, divergence):
    recipe = make_run(tmp_path)
    student, teacher = make_model(tokenizer, seed=3), make_model(tokenizer, seed=3)
    config = TrainConfig(objective="kd", kd_divergence=divergence, kd_temperature=2.0)
    loss, tokens = kd_loss(student, teacher, first_batch(tokenizer, recipe), config)
    loss.backward()
    assert tokens > 0 and abs(loss.item()) < 1e-6
    assert max(p.grad.abs().max().item() for p in student.parameters() if p.grad is not None) < 1e-6
    other = make_model(tokenizer, seed=4)
    assert kd_loss(student, other, first_batch(tokenizer, recipe), config)[0].item() > 1e-4


def test_an_int8_teacher_is_distilled_from_its_dequantized_head_and_stays_int8(tmp_path, tokenizer):
    """KD projects the teacher's hidden states by its head's weights; a teacher in int8 (the GSM8K recipes') has a
    quantized head, read as its dequantized weights. The loss matches the float teacher's up to int8 rounding, and
    the teacher keeps its int8 head for generation."""
    from tutorlm.models.load import RowRangeInt8Linear, quantize_int8

    recipe = make_run(tmp_path)
    student = make_model(tokenizer, seed=3)
    config = TrainConfig(objective="kd")
    batch = first_batch(tokenizer, recipe)
    float_loss = kd_loss(student, make_model(tokenizer, seed=4), batch, config)[0].item()
    teacher = quantize_int8(make_model(tokenizer, seed=4).eval())
    loss, tokens = kd_loss(student, teacher, batch, config)
    loss.backward()
    assert tokens > 0 and abs(loss.item() - float_loss) < 0.05 * float_loss
    assert isinstance(teacher.get_output_embeddings(), RowRangeInt8Linear)
    assert "_plain" not in dict(teacher.named_modules()) and all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("ce_weight", [0.0, 0.3])
def test_the_metrics_read_off_the_loss_are_those_of_both_models_own_projections(tmp_path, tokenizer, ce_weight, monkeypatch):
    """kd_loss's metrics (log-ratio of the batch's tokens, top-1 agreement) come from the chunks the loss projects, at
    temperature 1 whatever the loss's temperature: they equal each model's log-probs and argmax computed apart."""
    from tutorlm.models.tokens import IGNORE
    from tutorlm.train import losses

    recipe = make_run(tmp_path)
    student, teacher = make_model(tokenizer, seed=3), varied_model(tokenizer)
    batch = first_batch(tokenizer, recipe)
    config = TrainConfig(objective="kd", kd_divergence="jsd", kd_temperature=2.0, kd_ce_weight=ce_weight)
    metrics: dict = {}
    monkeypatch.setattr(losses, "LOGITS_PER_CHUNK", 3 * student.lm_head.weight.shape[0])  # several chunks of 3 rows
    loss, tokens = kd_loss(student, teacher, batch, config, metrics=metrics)
    with torch.no_grad():
        inputs = {key: batch[key] for key in ("input_ids", "attention_mask")}
        logprobs = [torch.log_softmax(model(**inputs).logits[:, :-1].float(), -1) for model in (student, teacher)]
        labels = batch["labels"][:, 1:]
        keep = labels != IGNORE
        chosen_logprobs = [lp[keep].gather(1, labels[keep][:, None])[:, 0] for lp in logprobs]
        best = [lp[keep].argmax(-1) for lp in logprobs]
    assert tokens == metrics["top"] == int(keep.sum()) > 3
    assert metrics["reverse_kl"] == pytest.approx(float((chosen_logprobs[0] - chosen_logprobs[1]).sum()), abs=1e-3)
    assert metrics["agree"] == int((best[0] == best[1]).sum()) < tokens
    assert loss.item() > 0


def test_kd_training_pulls_the_student_towards_the_teacher(tmp_path, tokenizer):
    teacher_dir = save_tiny_model(tmp_path / "teacher", seed=7)
    recipe = make_run(tmp_path, objective="kd", max_steps=12, lr=5e-3, kd_ce_weight=0.0)
    recipe.teacher = TeacherConfig(backend="hf", model=str(teacher_dir), device="cpu", dtype="float32")
    student = make_model(tokenizer, seed=0)
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    batch = first_batch(tokenizer, recipe)
    config = recipe.train
    with torch.no_grad():
        before = kd_loss(student, teacher, batch, config)[0].item()
    stats = train(recipe, console=QUIET, model_and_tokenizer=(student, tokenizer))
    student.cpu().eval()
    with torch.no_grad():
        after = kd_loss(student, teacher, batch, config)[0].item()
    assert stats["objective"] == "kd" and stats["kd"]["source"] == "teacher" and stats["kd"]["tokenizers"]["same_vocabulary"]
    assert after < 0.5 * before, (before, after)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in log if "loss" in row]
    assert losses[-1] < losses[0]
    # The teacher is part of the run's identity: resuming with another teacher is refused.
    other_dir = save_tiny_model(tmp_path / "other", seed=8)
    recipe.teacher = TeacherConfig(backend="hf", model=str(other_dir), device="cpu")
    recipe.train.save_every = 4
    recipe.train.max_steps = 8
    recipe.train.prune_checkpoints = False  # keep them for the resume below
    train(recipe, console=QUIET, force=True, model_and_tokenizer=(make_model(tokenizer), tokenizer))
    recipe.teacher = TeacherConfig(backend="hf", model=str(teacher_dir), device="cpu")
    recipe.train.max_steps = 8
    checkpoints = sorted((tmp_path / "run" / "student" / "checkpoints").iterdir())
    assert checkpoints  # left by the run above (its last checkpoint is step 4)
    with pytest.raises(DataError, match=r"written with other settings \(teacher.model: "):
        train(recipe, console=QUIET, resume=True, model_and_tokenizer=(make_model(tokenizer), tokenizer))


def test_tokenizer_comparison_says_what_differs(tokenizer):
    same = compare_tokenizers(tokenizer, make_tokenizer(), 400, 448)  # padded embedding rows are not a difference
    assert same["same_vocabulary"] and not same["differences"]
    other = compare_tokenizers(tokenizer, different_tokenizer())
    assert not other["same_vocabulary"] and "vocabulary size" in other["differences"][0]


def test_a_teacher_with_another_vocabulary_is_distilled_on_aligned_tokens(tmp_path, tokenizer, monkeypatch):
    from tutorlm.run import read_jsonl

    teacher_dir = save_tiny_model(tmp_path / "teacher", seed=5, tokenizer=different_tokenizer(upper=False, vocab_size=300))
    # the rationales are the reference solver's; the distributions a local model's (train.kd_teacher)
    recipe = make_run(tmp_path, objective="kd", max_steps=10, lr=5e-3, kd_ce_weight=0.0, kd_top_k=6, kd_teacher=str(teacher_dir))
    student = make_model(tokenizer, seed=0)
    stats = train(recipe, console=QUIET, model_and_tokenizer=(student, tokenizer))
    kd = stats["kd"]
    assert kd["source"] == "teacher" and kd["path"].startswith("cross-tokenizer")
    assert not kd["tokenizers"]["same_vocabulary"] and 0.2 < kd["aligned_token_share"] < 1
    assert 0 < kd["mapped_mass_share"] <= 1
    losses = [row["loss"] for row in map(json.loads, (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()) if "loss" in row]
    assert losses[-1] < losses[0]
    assert kd["teacher_scoring_s"] is not None and (tmp_path / "run" / "kd_teacher_topk.jsonl").exists()
    # The teacher's scores are kept: training again (or resuming) with the same teacher and rows reuses them.
    console = Console(file=open(os.devnull, "w"), record=True, width=200)
    again = train(recipe, console=console, force=True, model_and_tokenizer=(make_model(tokenizer, seed=0), tokenizer))["kd"]
    assert "not scoring again" in console.export_text() and again["teacher_scoring_s"] is None
    assert again["aligned_token_share"] == kd["aligned_token_share"] and again["mapped_mass_share"] == pytest.approx(kd["mapped_mass_share"], abs=1e-3)
    recipe.train.kd_top_k = 4  # another top-k is another scoring
    console = Console(file=open(os.devnull, "w"), record=True, width=200)
    train(recipe, console=console, force=True, model_and_tokenizer=(make_model(tokenizer, seed=0), tokenizer))
    assert "not scoring again" not in console.export_text()
    # A temperature cannot be applied to a top-k: refused before any training, and before the teacher's weights
    # load (the tokenizers decide it; a real teacher takes minutes to load).
    recipe.train.kd_temperature = 2.0
    import tutorlm.train.teacher

    def no_model_load(*args, **kwargs):
        raise AssertionError("the teacher model was loaded before the vocabulary check")

    monkeypatch.setattr(tutorlm.train.teacher, "load", no_model_load)
    with pytest.raises(PreflightError, match="temperature 1"):
        train(recipe, console=QUIET, force=True, model_and_tokenizer=(make_model(tokenizer), tokenizer))
    assert len(read_jsonl(tmp_path / "run" / "curated.jsonl")) > 0


def stored_run(tmp_path, teacher_dir, k=6):
    """A run whose traces a local teacher wrote with its top-k; every rationale is kept (a random tiny teacher's
    rationales never verify, so the curated file is the traces' rows, with the fields curate carries)."""
    from tutorlm.config import GenerateConfig, Recipe, RunConfig, TaskConfig
    from tutorlm.run import read_jsonl
    from tutorlm.generate import generate

    recipe = Recipe(run=RunConfig(name="run", output_dir=str(tmp_path)), task=TaskConfig(source="coin_flip"),
                    teacher=TeacherConfig(backend="hf", model=str(teacher_dir), device="cpu", dtype="float32", batch_size=8),
                    generate=GenerateConfig(limit=16, max_tokens=40, top_logprobs=k, cache=False),
                    train=TrainConfig(objective="kd", batch_size=4, lr=5e-3, max_steps=10, eval_fraction=0.0, kd_ce_weight=0.0))
    generate(recipe, console=QUIET)
    traces = read_jsonl(tmp_path / "run" / "traces.jsonl")
    # curate carries the teacher's tokens and top-k of a rationale it keeps (one is made correct here)
    from tutorlm.curate import curate

    first = {**traces[0], "finish_reason": "stop", "completion": [{"role": "assistant", "content": f"The answer is {traces[0]['answer']}."}]}
    (tmp_path / "run" / "traces.jsonl").write_text("".join(json.dumps(row) + "\n" for row in [first] + traces[1:]))
    curate(recipe, console=QUIET)
    kept = {row["id"]: row for row in read_jsonl(tmp_path / "run" / "curated.jsonl")}
    assert kept[first["id"]]["teacher_topk"] == first["teacher_topk"]
    assert kept[first["id"]]["completion_token_ids"] == first["completion_token_ids"] and kept[first["id"]]["tokenizer"]
    keep = ("id", "example_id", "prompt", "completion", "answer", "finish_reason", "completion_token_ids", "tokenizer", "teacher_topk")
    (tmp_path / "run" / "curated.jsonl").write_text("".join(json.dumps({key: row[key] for key in keep}) + "\n" for row in traces))
    return recipe


def unaligned(example):
    """Indices of an example's completion tokens without a teacher target."""
    return [i for i, label in enumerate(example.labels) if label != -100 and not bool((example.teacher_ids[i] >= 0).any())]


def test_kd_from_a_stored_topk_needs_only_the_student(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    from tutorlm.run import read_jsonl
    from tutorlm.train.kd import KD, topk_kd_loss

    teacher_dir = tmp_path / "teacher"  # large random weights: a peaked teacher, whose greedy text varies
    varied_model(tokenizer).save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    recipe = stored_run(tmp_path, teacher_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    rows = read_jsonl(tmp_path / "run" / "curated.jsonl")
    examples, _ = preflight(tokenizer, rows, 256, "truncate")
    stats = KD(recipe).prepare(recipe, teacher, tokenizer, rows, examples, "cpu", QUIET)["kd"]
    # One vocabulary: the student trains on the teacher's own tokens, every one with its target, even where
    # re-tokenizing the text would cut it otherwise; where the teacher stopped, the student's end of turn follows.
    assert stats["source"] == "stored" and stats["path"].startswith("same vocabulary (the teacher's own token ids)")
    assert stats["aligned_token_share"] > 0.95
    by_id = {str(row["id"]): row for row in rows}
    for example in examples:
        prompt_length, row = example.labels.count(-100), by_id[example.example_id]
        end = prompt_length + len(row["completion_token_ids"])
        assert example.input_ids[prompt_length:end] == row["completion_token_ids"]
        assert unaligned(example) == list(range(end, len(example.input_ids)))
        assert tokenizer.decode(example.input_ids[end:]) == ("<|im_end|>\n" if row["finish_reason"] == "stop" else "")
    assert any(tokenizer(row["completion"][0]["content"], add_special_tokens=False)["input_ids"] != row["completion_token_ids"]
               for row in rows), "this teacher should write some token sequences that re-tokenize differently"
    student = make_model(tokenizer, seed=0)
    console = Console(file=open(os.devnull, "w"), record=True)
    recipe.train.max_steps = 40
    stats = train(recipe, console=console, model_and_tokenizer=(student, tokenizer))
    assert stats["kd"]["source"] == "stored" and "kd: stored top-k" in console.export_text()
    # The teacher sits at (nearly) zero divergence from its own stored top-k (float16 log-probs); the trained
    # student moved towards it. (On rationales the teacher cut off: the end of turn after a stopped one has no
    # stored target, so the loss there is cross-entropy, not a divergence.)
    cut_off = [index for index, example in enumerate(examples) if not unaligned(example)][:4]
    assert len(cut_off) == 4
    batch = next(batches(examples, [cut_off], False, tokenizer.pad_token_id))
    with torch.no_grad():
        at_teacher = topk_kd_loss(teacher, batch, recipe.train)[0].item()
        trained = topk_kd_loss(student.cpu(), batch, recipe.train)[0].item()
        untrained = topk_kd_loss(make_model(tokenizer, seed=0), batch, recipe.train)[0].item()
    assert at_teacher < 1e-3 and trained < 0.8 * untrained, (at_teacher, trained, untrained)


def test_kd_without_teacher_distributions_says_which_flag_to_add(tmp_path, tokenizer):
    recipe = make_run(tmp_path, objective="kd", max_steps=2)  # the reference teacher: text only
    with pytest.raises(PreflightError, match="generate --generate.top_logprobs 20"):
        train(recipe, console=QUIET, model_and_tokenizer=(make_model(tokenizer), tokenizer))
    recipe.train.kd_source = "teacher"
    with pytest.raises(PreflightError, match="set train.kd_teacher"):
        train(recipe, console=QUIET, model_and_tokenizer=(make_model(tokenizer), tokenizer))
    # A server's log-probabilities (token text, no ids) are named as such.
    from tutorlm.run import read_jsonl

    curated = tmp_path / "run" / "curated.jsonl"
    rows = read_jsonl(curated)
    curated.write_text("".join(json.dumps({**row, "logprobs": [{"token": "a", "logprob": -0.1, "top": []}]}) + "\n" for row in rows))
    recipe.train.kd_source = "auto"
    with pytest.raises(PreflightError, match="name tokens by text only"):
        train(recipe, console=QUIET, model_and_tokenizer=(make_model(tokenizer), tokenizer))


def test_topk_kd_loss_is_the_same_packed_and_padded(tokenizer):
    from tutorlm.models.tokens import Tokenized
    from tutorlm.train.kd import topk_kd_loss

    torch.manual_seed(0)
    student = make_model(tokenizer, seed=1)
    examples = []
    for length, prompt in ((9, 4), (14, 6), (6, 2)):
        ids = torch.randint(3, len(tokenizer), (length,)).tolist()
        teacher_ids = torch.stack([torch.randperm(len(tokenizer))[:5] for _ in range(length)])
        teacher_ids[: prompt] = -1
        teacher_ids[prompt + 1, 2:] = -1  # empty slots
        teacher_ids[prompt + 2] = -1  # a token without a target: cross-entropy
        logprobs = torch.log_softmax(torch.randn(length, 5), -1) - 0.3
        examples.append(Tokenized(ids, [-100] * prompt + ids[prompt:], "x", teacher_ids, logprobs.masked_fill(teacher_ids < 0, float("-inf"))))
    config = TrainConfig(objective="kd", kd_ce_weight=0.3, kd_divergence="jsd")
    packed = topk_kd_loss(student, next(batches(examples, [[0, 1, 2]], True, tokenizer.pad_token_id)), config)
    padded = topk_kd_loss(student, next(batches(examples, [[0, 1, 2]], False, tokenizer.pad_token_id)), config)
    assert packed[1] == padded[1] == sum(len(e.input_ids) - e.labels.count(-100) for e in examples)
    assert torch.allclose(packed[0], padded[0], atol=1e-5) and packed[0].item() > 0


def test_a_missing_kd_teacher_stops_the_run_before_any_stage(tmp_path):
    from tutorlm.config import ConfigError, Recipe, RunConfig, StudentConfig, TaskConfig
    from tutorlm.pipeline import run_pipeline

    recipe = Recipe(run=RunConfig(name="run", output_dir=str(tmp_path / "runs")), task=TaskConfig(source="coin_flip"),
                    student=StudentConfig(model=str(save_tiny_model(tmp_path / "student"))),
                    train=TrainConfig(objective="kd", kd_teacher=str(tmp_path / "models" / "teacher.gguf")))
    with pytest.raises(ConfigError, match=r"train.kd_teacher: .*teacher.gguf: no such GGUF file"):
        run_pipeline(recipe, console=QUIET)
    assert not (tmp_path / "runs").exists()


def test_in_a_run_training_scores_with_the_teacher_that_generation_loaded(tmp_path, monkeypatch):
    """Inside keep_loaded (what `tutorlm run` wraps generate, eval and a teacher-taught training in), the teacher
    training loads is the copy generation loaded: one load per run. Outside it, training loads its own."""
    import tutorlm.backends.hf as hf
    from tutorlm.config import Recipe
    from tutorlm.train.teacher import load_teacher

    teacher_dir = save_tiny_model(tmp_path / "teacher", seed=7)
    loads = []
    original = hf.load_model
    monkeypatch.setattr(hf, "load_model", lambda spec, *a, **k: loads.append(spec) or original(spec, *a, **k))
    recipe = Recipe(teacher=TeacherConfig(backend="hf", model=str(teacher_dir), device="cpu", dtype="float32"),
                    train=TrainConfig(objective="kd"))
    with hf.keep_loaded():
        generating, _ = hf.HFBackend(recipe.teacher).load()
        training, _ = load_teacher(recipe, torch.device("cpu"))
    assert training is generating and loads == [str(teacher_dir)]
    assert not any(parameter.requires_grad for parameter in training.parameters())
    apart, _ = load_teacher(recipe, "cpu")
    assert apart is not generating and len(loads) == 2


@pytest.mark.parametrize("setting, value, message", [
    ("kd_beta", 1.5, "kd_beta must be in [0, 1], got 1.5"), ("kd_ce_weight", -0.1, "kd_ce_weight must be in [0, 1], got -0.1"),
    ("kd_temperature", 0.0, "kd_temperature must be positive, got 0.0"), ("kd_top_k", 0, "kd_top_k must be at least 1, got 0"),
    ("grpo_temperature", -1.0, "grpo_temperature must be positive, got -1.0"),
    ("grpo_overlong_penalty", -0.5, "grpo_overlong_penalty must be >= 0, got -0.5"),
])
def test_an_out_of_range_setting_is_refused_with_its_name_and_value(setting, value, message):
    with pytest.raises(ValueError) as raised:
        TrainConfig(**{setting: value})
    assert str(raised.value) == message


def test_an_int8_model_decodes_with_its_int8_head():
    """Only KD reads an int8 head as dequantized weights: the engine's vocabulary projection (plain_output_head without
    `dequantize`) leaves an int8 model's head to the int8 layer, as its cached answers were made."""
    from tutorlm.models.load import quantize_int8
    from tutorlm.models.tokens import plain_output_head

    model = quantize_int8(make_model(make_tokenizer(), seed=4).eval())
    assert plain_output_head(model) is None
    assert plain_output_head(model, dequantize=True) is not None
