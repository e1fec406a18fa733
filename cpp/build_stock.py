#!/usr/bin/env python3
"""Build stock llama.cpp (the same pinned source, without pace-gguf's patches) as an oracle.

    python cpp/build_stock.py [--build-dir DIR]     # prints the folder holding libllama

Tests and benchmarks compare pace-gguf against it ("ours vs stock llama.cpp"); it is never
installed. It does get cpp/fixes/*.patch (upstream bug fixes, e.g. the AMX crash), so that ours
and stock differ by pace-gguf's patches alone. Built once per pinned source and set of fixes into
the user cache, with the same CMAKE_ARGS as the package, and reused afterwards (an up-to-date
build takes a second).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fetch_llama_cpp import pinned  # noqa: E402


def fixes_key() -> str:
    """Short hash of cpp/fixes/*.patch (names and contents): the stock build applies them too, so
    a changed fix gets a new build folder rather than reusing an old cached build."""
    digest = hashlib.sha256()
    for patch in sorted((HERE / "fixes").glob("*.patch")):
        digest.update(f"{patch.name}:{pinned.sha256_file(patch)}\n".encode())
    return digest.hexdigest()[:8]


def default_build_dir() -> Path:
    lock = json.loads((HERE / "llama.cpp.lock").read_text())
    name = f"llama.cpp-{lock['llama_cpp_build']}-{lock['sha256'][:12]}-fixes-{fixes_key()}"
    return pinned.cache_dir() / "stock" / name


def build(build_dir: Path, options: tuple[str, ...] = ("-DPACE_STOCK=ON",), targets: tuple[str, ...] = ("llama",)) -> Path:
    """Configure (once) and build `targets`; returns the folder holding libllama. Concurrent callers
    wait for each other. `options` come after the user's CMAKE_ARGS (cpp/build_portable.py and
    cpp/build_tools.py pass their own)."""
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(build_dir, options, targets)


def _build_locked(build_dir: Path, options: tuple[str, ...], targets: tuple[str, ...]) -> Path:
    configure = ["cmake", "-S", str(HERE), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DPython_EXECUTABLE={sys.executable}"]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    configure += shlex.split(os.environ.get("CMAKE_ARGS", "")) + list(options)
    # configure once; again after a configure that failed half way (a cache but no build system)
    if not any((build_dir / name).exists() for name in ("build.ninja", "Makefile")):
        subprocess.run(configure, check=True, stdout=subprocess.DEVNULL)
    jobs = str(os.cpu_count() or 2)
    subprocess.run(["cmake", "--build", str(build_dir), "--target", *targets, "-j", jobs], check=True,
                   stdout=subprocess.DEVNULL)
    libs = sorted(build_dir.rglob("libllama.so")) + sorted(build_dir.rglob("libllama.dylib"))
    if not libs:
        raise SystemExit(f"build finished but no libllama was found under {build_dir}")
    return libs[0].parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", type=Path, default=None)
    args = parser.parse_args()
    print(build(args.build_dir or default_build_dir()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
