"""A smoke set against the portable build: pace-gguf's library compiled with GGML_NATIVE=OFF
(cpp/build_portable.py, cached in the user cache like the stock oracle) and loaded through
PACE_GGUF_LIB_DIR. It checks what `CMAKE_ARGS="-DGGML_NATIVE=OFF"` gives users, and that the answers
the tests rely on also come out of a second set of kernels (generic AVX2 instead of this CPU's own).
"""

import platform
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds the portable library once (minutes), then reuses it

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Note: the door code is 4817. What is the door code?"  # the README's prompt (tests/test_cli.py)
ANSWER = "4817"


@pytest.fixture(scope="session")
def portable_lib_dir() -> str:
    result = subprocess.run([sys.executable, str(ROOT / "cpp" / "build_portable.py")], capture_output=True, text=True,
                            timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture
def run_portable(run_cli, portable_lib_dir):
    def run(*args: str, **kwargs):
        return run_cli(*args, env={"PACE_GGUF_LIB_DIR": portable_lib_dir}, **kwargs)

    return run


def _rows(stdout: str) -> dict:
    return {k.strip(): v.strip() for k, _, v in (line.partition("  ") for line in stdout.splitlines())}


def test_portable_build_is_loaded_and_uses_no_native_only_features(run_portable, portable_lib_dir):
    from pace_gguf import _native

    result = run_portable("info")
    assert result.returncode == 0, result.stderr
    rows = _rows(result.stdout)
    assert Path(rows["library"]).parent == Path(portable_lib_dir).resolve()
    # the same pinned source, fixes and patches as the installed library
    assert rows["build id"].split(" llama.cpp ")[1] == _native.build_id().split(" llama.cpp ")[1]
    if platform.machine() in ("x86_64", "AMD64"):
        features = rows["cpu features"]
        assert "AVX2 = 1" in features and "AVX512" not in features and "AMX" not in features, features


def test_portable_build_answers_the_readme_prompt(run_portable, default_model_path):
    result = run_portable("chat", "--prompt", PROMPT, "--temperature", "0", "--max-tokens", "32")
    assert result.returncode == 0, result.stderr
    assert ANSWER in result.stdout


def test_portable_build_answers_with_the_amb_on(run_portable, default_model_path):
    result = run_portable("chat", "--prompt", PROMPT, "--temperature", "0", "--max-tokens", "32",
                          "--amb-layers", "12,26", "--stats")
    assert result.returncode == 0, result.stderr
    assert ANSWER in result.stdout
    assert "layer 12:" in result.stderr and "layer 26:" in result.stderr
