#!/usr/bin/env python3
"""Build pace-gguf's patched llama.cpp portably (GGML_NATIVE=OFF) into the user cache.

    python cpp/build_portable.py [--build-dir DIR]   # prints the folder holding libllama

The same sources as the package (cpp/fixes, cpp/patches, cpp/src), compiled for a generic x86-64
CPU with AVX2 (ggml's GGML_NATIVE=OFF defaults) instead of the building CPU. Point pace_gguf at it
with PACE_GGUF_LIB_DIR=<printed folder>: tests/test_portable_build.py runs a smoke set that way, so
the answers the tests rely on are checked with a second set of kernels. Built once into the user
cache and rebuilt incrementally when the sources change (an up-to-date build takes a second).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from build_stock import build, pinned  # noqa: E402


def package_version() -> str:
    match = re.search(r'^version = "([^"]+)"', (HERE.parent / "pyproject.toml").read_text(), re.MULTILINE)
    return match.group(1) if match else "dev"


def default_build_dir() -> Path:
    lock = json.loads((HERE / "llama.cpp.lock").read_text())
    return pinned.cache_dir() / "portable" / f"llama.cpp-{lock['llama_cpp_build']}-{lock['sha256'][:12]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", type=Path, default=None)
    args = parser.parse_args()
    # The version makes the build id read like the installed package's (pip passes it the same way).
    options = ("-DGGML_NATIVE=OFF", f"-DSKBUILD_PROJECT_VERSION={package_version()}")
    print(build(args.build_dir or default_build_dir(), options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
