#!/usr/bin/env python3
"""Build pace-gguf's patched llama.cpp with ggml's Vulkan backend into the user cache.

    python cpp/build_vulkan.py [--build-dir DIR]   # prints the folder holding libllama

The same sources as the package (cpp/fixes, cpp/patches, cpp/src) with -DGGML_VULKAN=ON, plus
llama.cpp's test-backend-ops with the GGML_OP_AMB case (cpp/tests). On a machine without a GPU,
Mesa's software driver (lavapipe) runs it: Debian's mesa-vulkan-drivers, libvulkan-dev, glslc and
spirv-headers (`apt-get update && apt-get install ...`). Point pace_gguf at the libraries with
PACE_GGUF_LIB_DIR=<printed folder>. Built once into the user cache, then incrementally.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from build_portable import package_version  # noqa: E402
from build_stock import build, pinned  # noqa: E402

# what the Vulkan build needs beyond the CPU build: the loader's headers, a GLSL compiler
NEEDS = {"glslc": "glslc", "vulkan/vulkan.h": "libvulkan-dev", "spirv/unified1/spirv.hpp": "spirv-headers"}


def missing_packages() -> list[str]:
    missing = [] if shutil.which("glslc") else [NEEDS["glslc"]]
    return missing + [pkg for header, pkg in NEEDS.items() if "/" in header and not (Path("/usr/include") / header).exists()]


def default_build_dir() -> Path:
    lock = json.loads((HERE / "llama.cpp.lock").read_text())
    return pinned.cache_dir() / "vulkan" / f"llama.cpp-{lock['llama_cpp_build']}-{lock['sha256'][:12]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", type=Path, default=None)
    args = parser.parse_args()
    if missing := missing_packages():
        raise SystemExit(f"the Vulkan build needs {', '.join(missing)} (Debian: apt-get install {' '.join(missing)})")
    options = ("-DGGML_VULKAN=ON", f"-DSKBUILD_PROJECT_VERSION={package_version()}")
    print(build(args.build_dir or default_build_dir(), options, ("llama", "ggml-vulkan", "test-backend-ops")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
