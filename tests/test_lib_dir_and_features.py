"""`pace-gguf info` shows the CPU features of the loaded ggml, and PACE_GGUF_LIB_DIR loads pace-gguf's
libraries from another folder (e.g. a portable build)."""

import os
import re
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses that load the library

# llama.cpp's names in llama_print_system_info() -> the flag in /proc/cpuinfo (Linux x86)
CPUINFO_FLAG = {
    "SSE3": "pni", "SSSE3": "ssse3", "AVX": "avx", "AVX2": "avx2", "F16C": "f16c", "FMA": "fma", "BMI2": "bmi2",
    "AVX_VNNI": "avx_vnni", "AVX512": "avx512f", "AVX512_VBMI": "avx512vbmi", "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16", "AMX_INT8": "amx_int8",
}


def _info_rows(stdout: str) -> dict:
    rows = {}
    for line in stdout.splitlines():
        key, _, value = line.partition("  ")
        rows[key.strip()] = value.strip()
    return rows


def test_info_shows_the_cpu_features_of_the_loaded_ggml(run_cli):
    from pace_gguf import _native

    result = run_cli("info")
    assert result.returncode == 0, result.stderr
    features = _info_rows(result.stdout)["cpu features"]
    assert features == _native.system_info()  # llama_print_system_info() of the same library
    assert features.startswith("CPU : "), features


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads the CPU's flags from /proc/cpuinfo (Linux)")
def test_the_features_in_use_are_features_of_this_cpu(run_cli):
    """A feature the library was compiled for but the CPU lacks would crash it (SIGILL) sooner or later."""
    result = run_cli("info")
    assert result.returncode == 0, result.stderr
    features = _info_rows(result.stdout)["cpu features"]
    cpu_flags = set(next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags"))
                    .partition(":")[2].split())
    used = {name for name, on in re.findall(r"(\w+) = (\d+)", features) if on == "1"}
    for name in sorted(used & CPUINFO_FLAG.keys()):
        assert CPUINFO_FLAG[name] in cpu_flags, f"{name} is in use but the CPU lacks {CPUINFO_FLAG[name]}: {features}"


def test_lib_dir_override_loads_the_libraries_from_that_folder(run_cli, tmp_path):
    from pace_gguf import _native

    here = Path(_native.loaded_library_path()).parent
    copy = tmp_path / "libs"
    copy.mkdir()
    for lib in here.iterdir():
        if lib.is_file() and (lib.suffix in (".so", ".dylib", ".dll")):
            shutil.copy2(lib, copy / lib.name)
    result = run_cli("info", env={"PACE_GGUF_LIB_DIR": str(copy)})
    assert result.returncode == 0, result.stderr
    rows = _info_rows(result.stdout)
    assert Path(rows["library"]).parent == copy
    assert rows["build id"] == _native.build_id()


def test_lib_dir_override_without_a_library_is_one_clear_error(run_cli, assert_one_line_error, tmp_path):
    result = run_cli("info", env={"PACE_GGUF_LIB_DIR": str(tmp_path)})
    assert_one_line_error(result, "PACE_GGUF_LIB_DIR", "holds no")


def test_lib_dir_unset_uses_the_package_folder():
    from pace_gguf import paths

    if os.environ.get(paths.LIB_DIR_ENV):
        pytest.skip(f"{paths.LIB_DIR_ENV} is set for this run")
    assert paths.lib_dir() == paths.LIB_DIR
