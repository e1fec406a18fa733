#!/usr/bin/env python3
"""Build pace-gguf's patched llama.cpp with ggml's Vulkan backend into the user cache.

    python cpp/build_vulkan.py [--build-dir DIR]   # prints the folder holding libllama

    python cpp/build_vulkan.py --vulkan-include DIR  # Vulkan headers newer than the system's

The same sources as the package (cpp/fixes, cpp/patches, cpp/src) with -DGGML_VULKAN=ON, plus
llama.cpp's test-backend-ops with the GGML_OP_AMB case and pace-amb-composed (cpp/tests). Built once into the user
cache, then incrementally. Point pace_gguf at the libraries with PACE_GGUF_LIB_DIR=<printed folder>.

Needs glslc, SPIRV-Headers, the Vulkan loader's link library (libvulkan-dev) and Vulkan headers of
version 1.3.261 or later (the pinned ggml-vulkan uses VK_EXT_layer_settings). Debian 12's
libvulkan-dev has 1.3.239; Debian 13's (1.4.309) works: its headers, unpacked anywhere (`dpkg-deb -x libvulkan-dev_*.deb DIR`), go in with
--vulkan-include DIR/usr/include, while the system's loader (libvulkan1) stays. On a machine
without a GPU, Mesa's software driver (lavapipe, mesa-vulkan-drivers) runs it; ggml-vulkan skips
CPU devices unless they are asked for: GGML_VK_VISIBLE_DEVICES=0.
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from build_portable import package_version  # noqa: E402
from build_stock import build, pinned  # noqa: E402

# what the Vulkan build needs beyond the CPU build: a GLSL compiler and SPIR-V headers (Debian packages)
NEEDS = {"glslc": "glslc", "spirv/unified1/spirv.hpp": "spirv-headers"}
MIN_HEADER_VERSION = 261  # VK_EXT_layer_settings (Vulkan-Headers 1.3.261)


LOADER = ("/usr/lib*/libvulkan.so", "/usr/lib/*-linux-gnu/libvulkan.so", "/usr/local/lib/libvulkan.so")


def missing_packages() -> list[str]:
    missing = [] if shutil.which("glslc") else [NEEDS["glslc"]]
    # CMake links the loader through its unversioned name, which only the -dev package installs
    if not any(glob.glob(pattern) for pattern in LOADER):
        missing.append("libvulkan-dev")
    return missing + [pkg for header, pkg in NEEDS.items() if "/" in header and not (Path("/usr/include") / header).exists()]


def header_version(include: Path) -> int | None:
    core = include / "vulkan" / "vulkan_core.h"
    match = re.search(r"^#define VK_HEADER_VERSION (\d+)", core.read_text(), re.M) if core.is_file() else None
    return int(match.group(1)) if match else None


def default_build_dir() -> Path:
    lock = json.loads((HERE / "llama.cpp.lock").read_text())
    return pinned.cache_dir() / "vulkan" / f"llama.cpp-{lock['llama_cpp_build']}-{lock['sha256'][:12]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", type=Path, default=None)
    parser.add_argument("--vulkan-include", type=Path, default=Path("/usr/include"),
                        help="folder holding vulkan/vulkan_core.h (default /usr/include)")
    args = parser.parse_args()
    if missing := missing_packages():
        raise SystemExit(f"the Vulkan build needs {', '.join(missing)} (Debian: apt-get install {' '.join(missing)})")
    version = header_version(args.vulkan_include)
    if version is None or version < MIN_HEADER_VERSION:
        found = f"version 1.x.{version}" if version else "none"
        raise SystemExit(f"the Vulkan build needs Vulkan headers 1.3.{MIN_HEADER_VERSION} or later in "
                         f"{args.vulkan_include} (found {found}); see --help")
    options = ("-DGGML_VULKAN=ON", f"-DVulkan_INCLUDE_DIR={args.vulkan_include}",
               f"-DSKBUILD_PROJECT_VERSION={package_version()}")
    print(build(args.build_dir or default_build_dir(), options,
                ("llama", "ggml-vulkan", "test-backend-ops", "pace-amb-composed")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
