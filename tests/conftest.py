"""Every test gets its own tutorlm cache directory, so no test reads another's cached completions (or the
user's ~/.cache/tutorlm).

The CPU precision verdict (precision.json) is set, not measured: the suite runs as on a CPU without a fast bf16
path, so `auto` means fp32 everywhere and results compare at fp32 tolerances on every machine, in this process and
in the commands tests start. The bf16 paths are tested on purpose (test_precision's `cpu_is`, explicit dtypes)."""

from __future__ import annotations

import json

import pytest


def set_fp32_verdict(cache) -> None:
    """Write the suite's CPU verdict (no fast bf16 path) into a tutorlm cache directory."""
    from tutorlm.models import precision

    verdict = {"fast": False, "fp32_gflops": 100.0, "bf16_gflops": 1.0, "flags": [], "cpu": "test suite (fp32)"}
    (cache / "precision.json").write_text(json.dumps({precision.verdict_key(): verdict}))


@pytest.fixture(autouse=True)
def _own_cache_dir(tmp_path, monkeypatch):
    cache = tmp_path / "tutorlm-cache"
    cache.mkdir()
    monkeypatch.setenv("TUTORLM_CACHE_DIR", str(cache))
    set_fp32_verdict(cache)
    yield cache
