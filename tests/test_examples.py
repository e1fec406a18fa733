"""The examples run and print what they promise (real model)."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, tmp_path) -> str:
    # cwd outside the checkout, so the installed pace_gguf (with its libraries) is imported
    result = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, cwd=tmp_path,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_chat_example(default_model_path, tmp_path):
    out = run_example("chat.py", tmp_path)
    assert "build: pace-gguf" in out and "Paris" in out


def test_amb_chat_example(default_model_path, tmp_path):
    out = run_example("amb_chat.py", tmp_path)
    assert "Paris" in out
    assert "layer 12: slots" in out and "layer 26: slots" in out
