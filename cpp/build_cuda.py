#!/usr/bin/env python3
"""Build pace-gguf's patched llama.cpp with ggml's CUDA backend into the user cache.

    python cpp/build_cuda.py [--build-dir DIR] [--arch 90]   # prints the folder holding libllama

    python cpp/build_cuda.py --cublas DIR   # cuBLAS outside the CUDA toolkit

The same sources as the package (cpp/fixes, cpp/patches, cpp/src: the AMB's kernels in cpp/src/cuda)
with -DGGML_CUDA=ON, plus llama.cpp's test-backend-ops with the GGML_OP_AMB cases and the
pace-amb-composed prototype. Built once into the user cache, then incrementally; a first build takes
about 35 minutes on 2 cores for one architecture. Point pace_gguf at the libraries with
PACE_GGUF_LIB_DIR=<printed folder>.

For a GPU machine that should only run, not compile: build here with --arch set to its GPU's
architecture (90 for an H100/H200), then carry the printed folder's libraries. The CPU code is built
for this machine's CPU (GGML_NATIVE); CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON ..." picks another.

Needs nvcc and cuBLAS. A toolkit without cuBLAS (as on these CPU machines) can take PyPI's:
`pip download --no-deps nvidia-cublas==<the toolkit's version>`, unzip the wheel, and pass
--cublas <unzipped>/nvidia/cu13 (the folder holding include/cublas_v2.h and lib/libcublas.so.*);
its lib/ then goes on LD_LIBRARY_PATH wherever the libraries run.
Without the driver library (libcuda, absent where there is no GPU), ggml's virtual-memory pool is
left out (GGML_CUDA_NO_VMM): ggml-cuda then uses its plain memory pool.
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from build_portable import package_version  # noqa: E402
from build_stock import build, pinned  # noqa: E402

DEFAULT_ARCHITECTURES = "75;86;89;90;120"  # Turing, Ampere, Ada, Hopper, Blackwell (consumer)


def default_build_dir(architectures: str) -> Path:
    lock = json.loads((HERE / "llama.cpp.lock").read_text())
    tag = architectures.replace(";", "-")
    return pinned.cache_dir() / "cuda" / f"llama.cpp-{lock['llama_cpp_build']}-{lock['sha256'][:12]}-sm{tag}"


def cublas_options(cublas: Path) -> tuple[str, ...]:
    header = cublas / "include" / "cublas_v2.h"
    libs = {name: sorted((cublas / "lib").glob(f"lib{name}.so*")) for name in ("cublas", "cublasLt")}
    if not header.is_file() or not all(libs.values()):
        raise SystemExit(f"--cublas {cublas}: expected include/cublas_v2.h and lib/libcublas.so*, lib/libcublasLt.so* there")
    include = f"-I{cublas / 'include'}"
    # programs linking libggml-cuda must find cuBLAS too (at run time: LD_LIBRARY_PATH)
    link = f"-Wl,-rpath-link,{cublas / 'lib'}"
    return (f"-DCUDA_cublas_LIBRARY={libs['cublas'][0]}", f"-DCUDA_cublasLt_LIBRARY={libs['cublasLt'][0]}",
            f"-DCMAKE_CUDA_FLAGS={include}", f"-DCMAKE_CXX_FLAGS={include}", f"-DCMAKE_EXE_LINKER_FLAGS={link}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", type=Path, default=None)
    parser.add_argument("--arch", default=DEFAULT_ARCHITECTURES,
                        help=f"CMAKE_CUDA_ARCHITECTURES (default {DEFAULT_ARCHITECTURES!r})")
    parser.add_argument("--cublas", type=Path, default=None,
                        help="folder with include/cublas_v2.h and lib/libcublas*.so* (default: the toolkit's)")
    args = parser.parse_args()
    if shutil.which("nvcc") is None:
        raise SystemExit("the CUDA build needs nvcc (the CUDA toolkit) on PATH")
    options = ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={args.arch}", f"-DSKBUILD_PROJECT_VERSION={package_version()}"]
    if args.cublas is not None:
        options += cublas_options(args.cublas.resolve())
    if ctypes.util.find_library("cuda") is None:
        options.append("-DGGML_CUDA_NO_VMM=ON")
    targets = ("llama", "ggml-cuda", "test-backend-ops", "pace-amb-composed")
    print(build(args.build_dir or default_build_dir(args.arch), tuple(options), targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
