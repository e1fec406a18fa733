"""Shared fixtures. Real parts only: the installed pace_gguf with its patched llama.cpp, the real
default model pulled through the registry (cached in the user cache, so CI pulls it once)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

@pytest.fixture(scope="session")
def default_model_path() -> Path:
    from pace_gguf import registry

    return registry.pull(registry.DEFAULT_MODEL)


@pytest.fixture(scope="session")
def default_llm(default_model_path):
    """One loaded default model for the whole session (loading costs ~1 s)."""
    from pace_gguf import Llama

    return Llama(model_path=str(default_model_path), n_ctx=2048, seed=0, verbose=False)


def pace_cli() -> list[str]:
    """The installed console script, falling back to `python -m pace_gguf` in the same env."""
    exe = Path(sys.executable).with_name("pace-gguf")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "pace_gguf"]


@pytest.fixture
def run_cli():
    def run(*args: str, env: dict | None = None, input: str = "", timeout: float = 300):
        full_env = dict(os.environ, **(env or {}))
        return subprocess.run(
            pace_cli() + list(args), capture_output=True, text=True, env=full_env, input=input, timeout=timeout
        )

    return run


def _assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("pace-gguf: error:")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def assert_one_line_error():
    """Bad input must give a non-zero exit and exactly one clear error line, never a traceback."""
    return _assert_one_line_error


@pytest.fixture
def copy_file(tmp_path):
    def copy(src: Path, nbytes: int | None = None, name: str = "model.gguf") -> Path:
        out = tmp_path / name
        if nbytes is None:
            shutil.copyfile(src, out)
        else:
            with open(src, "rb") as f:
                out.write_bytes(f.read(nbytes))
        return out

    return copy
