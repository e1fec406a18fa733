"""Locate llama.cpp's own Python converter (convert_hf_to_gguf.py, conversion/, gguf-py/) and its
vocab-only GGUFs, taken from the same pinned source archive the native library is built from.

Why not the installed `gguf` package: upstream's converter must run with the gguf-py of its own
commit (architectures and keys move together), so it runs in a subprocess with that gguf-py on
sys.path, never in this interpreter.

Lookup order: $PACE_GGUF_LLAMA_CPP_SRC (a llama.cpp tree), else a cache folder extracted from the
sha256-checked sdist of the installed pin (pace_gguf.pinned_source: the same archive, cache and
checks as the build).
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from pace_gguf import pinned_source
from pace_gguf.errors import PaceError

ENV_VAR = "PACE_GGUF_LLAMA_CPP_SRC"
# What the converter needs from the tree; the C/C++ sources are not extracted.
_WANTED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "models/ggml-vocab-")
_STAMP = ".pace-python-source"


class UpstreamSourceError(PaceError, RuntimeError):
    """The pinned llama.cpp Python converter could not be found or fetched."""


def source_dir() -> Path:
    """Folder holding convert_hf_to_gguf.py, conversion/, gguf-py/ and models/ggml-vocab-*.gguf."""
    if os.environ.get(ENV_VAR):
        tree = Path(os.environ[ENV_VAR]).expanduser()
        if not (tree / "convert_hf_to_gguf.py").is_file():
            raise UpstreamSourceError(f"${ENV_VAR}={tree} has no convert_hf_to_gguf.py")
        return tree
    lock = pinned_source.installed_lock()
    tree = pinned_source.cache_dir() / "llama.cpp-python" / lock["llama_cpp_build"]
    stamp = tree / _STAMP
    if not (stamp.is_file() and stamp.read_text().strip() == lock["sha256"]):
        try:
            archive = pinned_source.ensure_archive(lock)
        except pinned_source.PinnedSourceError as exc:
            raise UpstreamSourceError(f"{exc} (needed for llama.cpp's converter; or set ${ENV_VAR} to a "
                                      f"llama.cpp {lock['llama_cpp_build']} tree)") from None
        _extract(archive, tree, lock)
    return tree


def vocab_gguf(name: str) -> Path:
    """models/ggml-vocab-<name>.gguf of the pinned source (e.g. "qwen2", "llama-bpe")."""
    path = source_dir() / "models" / f"ggml-vocab-{name}.gguf"
    if not path.is_file():
        raise UpstreamSourceError(f"the pinned llama.cpp source has no vocab file {path.name}")
    return path


def converter_env() -> dict:
    """Environment for a subprocess running upstream's converter with its own gguf-py."""
    tree = source_dir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree / "gguf-py"), str(tree)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("NO_LOCAL_GGUF", None)
    return env


def _extract(archive: Path, tree: Path, lock: dict) -> None:
    """Extract the converter's files into a staging folder, then swap it in (no half-made tree)."""
    tree.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=tree.parent, prefix=".staging-"))
    try:
        with tarfile.open(archive) as tar:
            members = []
            for member in tar.getmembers():
                parts = member.name.split("/", 1)
                if len(parts) < 2 or not parts[1].startswith(lock["subdir"] + "/"):
                    continue
                rel = parts[1][len(lock["subdir"]) + 1:]
                if rel.startswith(_WANTED) and (member.isfile() or member.isdir()):
                    member.name = rel
                    members.append(member)
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(staging, members=members, **extra)
        (staging / _STAMP).write_text(lock["sha256"] + "\n")
        if tree.exists():
            shutil.rmtree(tree)
        os.replace(staging, tree)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
