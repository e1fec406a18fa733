"""GGML_OP_AMB's CUDA kernels (cpp/src/cuda) on a machine without a GPU.

* nvcc compiles amb.cu, which holds all of our CUDA code but the three hooks of cpp/patches/0011, for
  the consumer architectures (Turing to Blackwell) plus sm_90, under ggml-cuda's own flags with every
  warning an error, and ptxas builds both kernels for each;
* test-backend-ops runs the kernels' source on host fibers ("CUDAHost0", cpp/tests/amb-cuda-host.h)
  against the CPU op, on every AMB case the emulation takes.

Neither runs the kernels on a GPU: that needs one (cpp/src/BACKENDS.md, "A GPU session").
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "cpp"))
from backend_ops import package_build_dir  # noqa: E402

ARCHITECTURES = ("75", "86", "89", "90", "120")  # Turing, Ampere, Ada, Hopper, Blackwell (consumer)
KERNELS = ("amb_retrieve", "amb_store")


def nvcc() -> str:
    found = shutil.which("nvcc") or next((str(p) for p in [Path("/usr/local/cuda/bin/nvcc")] if p.is_file()), None)
    if found is None:
        pytest.skip("nvcc not found: the CUDA toolkit is not installed")
    return found


def test_amb_cu_compiles_for_every_consumer_architecture_without_spills(tmp_path):
    include = package_build_dir() / "llama.cpp" / "ggml" / "include"  # the patched ggml.h
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHITECTURES]
    newest = ARCHITECTURES[-1]
    command = [nvcc(), "-std=c++17", "-c", str(ROOT / "cpp" / "src" / "cuda" / "amb.cu"), "-o", str(tmp_path / "amb.o"),
               "-I", str(include), "-use_fast_math", "-extended-lambda", "-Werror", "all-warnings",
               "-Xcompiler", "-Wall,-Wextra,-Wmissing-declarations", "-Xptxas", "-v",
               *gencode, f"-gencode=arch=compute_{newest},code=compute_{newest}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    compiled = set(re.findall(r"Compiling entry function '\w*?(amb_retrieve|amb_store)\w*' for 'sm_(\d+)'", result.stderr))
    assert compiled == {(k, a) for k in KERNELS for a in ARCHITECTURES}, result.stderr[-4000:]


@pytest.mark.slow
def test_every_amb_case_the_emulation_takes_passes_on_the_cuda_kernels_source(assert_every_amb_case_passes):
    assert_every_amb_case_passes("CUDAHost0", "--cuda-host")
