"""Where pace-gguf keeps things: the compiled libraries and the user cache."""

from __future__ import annotations

from pathlib import Path

from .pinned_source import cache_dir, sha256_file  # noqa: F401  (one copy, shared with the build)

PACKAGE_DIR = Path(__file__).resolve().parent
LIB_DIR = PACKAGE_DIR / "lib"


def models_dir() -> Path:
    return cache_dir() / "models"
