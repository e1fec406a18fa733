"""Where pace-gguf keeps things: the compiled libraries and the user cache."""

from __future__ import annotations

import os
from pathlib import Path

from .pinned_source import cache_dir, sha256_file  # noqa: F401  (one copy, shared with the build)

PACKAGE_DIR = Path(__file__).resolve().parent
LIB_DIR = PACKAGE_DIR / "lib"
# Another folder of pace-gguf libraries to load instead of LIB_DIR, e.g. a portable build made with
# cmake (its bin/ folder); the libraries must still be pace-gguf's patched ones.
LIB_DIR_ENV = "PACE_GGUF_LIB_DIR"


def lib_dir() -> Path:
    """The folder the patched llama.cpp libraries are loaded from: $PACE_GGUF_LIB_DIR, else LIB_DIR."""
    override = os.environ.get(LIB_DIR_ENV)
    return Path(override).expanduser().resolve() if override else LIB_DIR


def models_dir() -> Path:
    return cache_dir() / "models"
