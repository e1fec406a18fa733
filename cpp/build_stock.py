#!/usr/bin/env python3
"""Build stock llama.cpp (the same pinned source, without pace-gguf's patches) as an oracle.

    python cpp/build_stock.py [--build-dir DIR]     # prints the folder holding libllama

Tests and benchmarks compare pace-gguf against it ("ours vs stock llama.cpp"); it is never
installed. Built once per pinned source into the user cache, with the same CMAKE_ARGS as the
package, and reused afterwards (an up-to-date build takes a second).
"""

from __future__ import annotations

import argparse
import fcntl
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


def default_build_dir() -> Path:
    lock = json.loads((HERE / "llama.cpp.lock").read_text())
    return pinned.cache_dir() / "stock" / f"llama.cpp-{lock['llama_cpp_build']}-{lock['sha256'][:12]}"


def build(build_dir: Path) -> Path:
    """Configure (once) and build libllama; concurrent callers wait for each other."""
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(build_dir)


def _build_locked(build_dir: Path) -> Path:
    configure = ["cmake", "-S", str(HERE), "-B", str(build_dir), "-DPACE_STOCK=ON", "-DCMAKE_BUILD_TYPE=Release",
                 f"-DPython_EXECUTABLE={sys.executable}"]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    configure += shlex.split(os.environ.get("CMAKE_ARGS", ""))
    if not (build_dir / "CMakeCache.txt").exists():
        subprocess.run(configure, check=True, stdout=subprocess.DEVNULL)
    jobs = str(os.cpu_count() or 2)
    subprocess.run(["cmake", "--build", str(build_dir), "--target", "llama", "-j", jobs], check=True, stdout=subprocess.DEVNULL)
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
