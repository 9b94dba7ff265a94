"""Every test gets its own tutorlm cache directory, so no test reads another's cached completions (or the
user's ~/.cache/tutorlm). The CPU precision probe's result (precision.json) is carried from test to test:
it describes the machine, not the test."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def _machine_facts(tmp_path_factory):
    return tmp_path_factory.mktemp("machine")


@pytest.fixture(autouse=True)
def _own_cache_dir(tmp_path, monkeypatch, _machine_facts):
    cache = tmp_path / "tutorlm-cache"
    cache.mkdir()
    shared = _machine_facts / "precision.json"
    if shared.exists():
        shutil.copy(shared, cache / "precision.json")
    monkeypatch.setenv("TUTORLM_CACHE_DIR", str(cache))
    yield cache
    if not shared.exists() and (cache / "precision.json").exists():
        shutil.copy(cache / "precision.json", shared)
