"""Where pace-gguf keeps things: the compiled libraries and the user cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
LIB_DIR = PACKAGE_DIR / "lib"


def cache_dir() -> Path:
    """Root of the user cache. PACE_GGUF_CACHE overrides it; the same rule as cpp/fetch_llama_cpp.py."""
    if os.environ.get("PACE_GGUF_CACHE"):
        return Path(os.environ["PACE_GGUF_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pace-gguf"


def models_dir() -> Path:
    return cache_dir() / "models"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (model files are too large to read at once)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
