"""Precision: auto picks bf16 only where the hardware runs it fast (measured on CPUs, cached per machine);
both paths train and generate; forcing bf16 where it is slow says how much slower."""

from __future__ import annotations

import json
import os

import pytest
import torch
from rich.console import Console
from tiny import make_model, make_run, make_tokenizer

from tutorlm.models import precision
from tutorlm.config import TeacherConfig
from tutorlm.models.precision import CpuBf16, resolve_precision

QUIET = Console(file=open(os.devnull, "w"))
FAST = CpuBf16(True, 200.0, 880.0, ("avx512_bf16",), "test CPU")
SLOW = CpuBf16(False, 120.0, 0.4, (), "test CPU")


@pytest.fixture
def cpu_is(monkeypatch):
    def set_to(measured: CpuBf16) -> None:
        monkeypatch.setattr(precision, "cpu_bf16", lambda refresh=False: measured)
    return set_to


def test_auto_follows_the_measurement_and_explicit_settings_win(cpu_is):
    cpu_is(FAST)
    choice = resolve_precision("auto", "cpu")
    assert choice.precision == "bf16" and "880 vs fp32 200 GFLOP/s" in choice.reason and "avx512_bf16" in choice.reason
    assert resolve_precision("fp32", "cpu").precision == "fp32"
    cpu_is(SLOW)
    assert resolve_precision("auto", "cpu").precision == "fp32"
    assert resolve_precision("float32", "cpu").precision == "fp32"


def test_forcing_bf16_on_a_slow_cpu_warns_with_the_measured_slowdown(cpu_is):
    cpu_is(SLOW)
    warnings: list[str] = []
    assert resolve_precision("bf16", "cpu", warn=warnings.append).precision == "bf16"
    assert len(warnings) == 1 and "300x slower than fp32" in warnings[0] and "no fast bf16 path" in warnings[0]
    cpu_is(FAST)
    resolve_precision("bf16", "cpu", warn=warnings.append)
    assert len(warnings) == 1


def test_the_measurement_is_cached_per_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("TUTORLM_CACHE_DIR", str(tmp_path))
    calls: list[torch.dtype] = []

    def fake_measure(dtype, size=512, min_seconds=0.25, **_):
        calls.append(dtype)
        return 100.0 if dtype == torch.float32 else 450.0

    monkeypatch.setattr(precision, "measure_matmul_gflops", fake_measure)
    monkeypatch.setattr(precision, "cpu_flags", lambda: ("avx2", "avx512_bf16"))
    first = precision.cpu_bf16()
    assert first.fast and first.flags == ("avx512_bf16",) and calls
    measured = len(calls)
    assert precision.cpu_bf16() == first and len(calls) == measured  # read from the cache
    assert json.loads((tmp_path / "precision.json").read_text())
    # The same model name with other flags (a CPU without AVX512-BF16) is measured anew.
    monkeypatch.setattr(precision, "cpu_flags", lambda: ("avx2",))
    precision.cpu_bf16()
    assert len(calls) > measured


def test_a_preempted_call_does_not_decide_the_rate(monkeypatch):
    """Measured while another process had the cores, one call of the probe took 1000x its time and the CPU's verdict
    said bf16 was slow; the rate is the fastest call's."""
    clock = {"now": 0.0, "reads": 0}

    def perf_counter():
        clock["reads"] += 1
        clock["now"] += 2.0 if clock["reads"] == 3 else 0.001  # the first timed call ends 2 s late
        return clock["now"]

    monkeypatch.setattr(precision.time, "perf_counter", perf_counter)
    rate = precision.measure_matmul_gflops(torch.float32, size=8, min_seconds=0.0, min_calls=5)
    assert rate == pytest.approx(2 * 8**3 / 0.001 / 1e9)


def test_the_real_measurement_runs_here(tmp_path, monkeypatch):
    monkeypatch.setenv("TUTORLM_CACHE_DIR", str(tmp_path))
    measured = precision.cpu_bf16()
    assert measured.fp32_gflops > 0 and measured.bf16_gflops > 0
    assert measured.fast == (measured.bf16_gflops >= precision.FAST_ENOUGH * measured.fp32_gflops)


@pytest.fixture
def fresh_accelerator_state():
    """The mixed-precision setting is process-wide in accelerate: each case sets its own, and leaves none behind."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


@pytest.mark.usefixtures("fresh_accelerator_state")
@pytest.mark.parametrize("setting", ["bf16", "fp32"])
def test_training_in_each_precision_learns_and_keeps_fp32_master_weights(tmp_path, setting, cpu_is):
    from tutorlm.train.loop import train

    cpu_is(FAST if setting == "bf16" else SLOW)  # auto must pick `setting`
    tokenizer = make_tokenizer()
    recipe = make_run(tmp_path, max_steps=8, precision="auto")
    model = make_model(tokenizer)
    stats = train(recipe, console=QUIET, model_and_tokenizer=(model, tokenizer))
    assert stats["precision"] == setting and stats["precision_reason"].startswith("cpu: bf16 matmul")
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast computes in bf16, weights stay fp32
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in log if "loss" in row]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_a_second_training_in_the_same_process_may_use_another_precision(tmp_path):
    # accelerate keeps one mixed-precision setting per process; a notebook or a chain of runs trains more than once
    from tutorlm.train.loop import train

    tokenizer = make_tokenizer()
    for setting in ("fp32", "bf16", "fp32"):
        recipe = make_run(tmp_path / setting, max_steps=2, precision=setting)
        stats = train(recipe, console=QUIET, force=True, model_and_tokenizer=(make_model(tokenizer), tokenizer))
        assert stats["precision"] == setting


@pytest.mark.parametrize(("setting", "dtype"), [("bfloat16", torch.bfloat16), ("float32", torch.float32), ("auto", torch.float32)])
def test_local_models_generate_in_the_chosen_dtype(tmp_path, setting, dtype, cpu_is):
    from tiny import save_tiny_model

    from tutorlm.backends import Request, Sampling
    from tutorlm.backends.hf import HFBackend

    cpu_is(SLOW)
    path = save_tiny_model(tmp_path / "m")
    backend = HFBackend(TeacherConfig(backend="hf", model=str(path), dtype=setting, device="cpu", batch_size=4))
    assert backend.precision.startswith(str(dtype).removeprefix("torch."))
    results = []
    backend.run([Request([{"role": "user", "content": "What is 12 + 30?"}])], Sampling(max_tokens=5), lambda r, c: results.append(c))
    assert next(backend.model.parameters()).dtype == dtype
    assert len(results) == 1 and results[0].completion_tokens > 0


def test_int8_quantizes_the_linear_layers_for_cpu_inference_and_is_another_model_to_the_cache(tmp_path):
    from tiny import save_tiny_model

    from tutorlm.backends import Request, Sampling
    from tutorlm.backends.hf import HFBackend
    from tutorlm.errors import ModelError
    from tutorlm.models.load import pick_dtype

    path = save_tiny_model(tmp_path / "m")
    request = [Request([{"role": "user", "content": "What is 12 + 30?"}])]
    texts = {}
    backends = {}
    for setting in ("float32", "int8"):
        backend = backends[setting] = HFBackend(TeacherConfig(backend="hf", model=str(path), dtype=setting, device="cpu"))
        results = []
        backend.run(request, Sampling(max_tokens=8), lambda r, c: results.append(c))
        texts[setting] = results[0]
        assert results[0].completion_tokens > 0
    modules = list(backends["int8"].model.modules())
    assert not any(type(m) is torch.nn.Linear for m in modules)  # every linear layer was replaced
    assert sum(type(m).__module__.startswith("torch.ao.nn.quantized.dynamic") for m in modules) >= 7
    assert sum(type(m).__name__ == "RowRangeInt8Linear" for m in modules) >= 7
    assert backends["int8"].precision.startswith("int8")
    assert backends["int8"].cache_identity != backends["float32"].cache_identity
    with pytest.raises(ModelError, match="CPU inference"):
        pick_dtype("int8", torch.device("cuda"))


def test_an_int8_rows_output_does_not_depend_on_the_rows_beside_it():
    """A question's greedy answer from an int8 teacher is the same alone and in a batch: each row's activations are
    quantized with their own range (PyTorch's dynamic linear takes one range for the whole input)."""
    from tiny import make_model, make_tokenizer

    from tutorlm.models.load import quantize_int8

    tokenizer = make_tokenizer()
    reference = make_model(tokenizer, seed=3).eval()
    model = quantize_int8(make_model(tokenizer, seed=3).eval())
    torch.manual_seed(0)
    alone = torch.randint(3, len(tokenizer), (1, 12))
    other = torch.randint(3, len(tokenizer), (1, 12))
    with torch.no_grad():
        by_itself = model(alone).logits[0]
        layer = next(m for m in model.modules() if type(m).__name__ == "RowRangeInt8Linear")
        x = torch.randn(2, layer.in_features)
        loud = torch.cat([x[:1], 40 * x[1:]])  # a batch mate with activations 40x larger
        assert torch.equal(layer(x[:1])[0], layer(loud)[0])
        beside = model(torch.cat([alone, other])).logits[0]
        assert torch.allclose(by_itself, beside, atol=1e-5)
        assert torch.allclose(by_itself, reference(alone).logits[0], atol=0.1)  # and close to fp32
