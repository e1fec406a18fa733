"""The examples run and print what they promise (real model)."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# The README's prompt (see tests/test_cli.py): its answer does not depend on the CPU's kernels.
PROMPT = "Note: the door code is 4817. What is the door code?"
ANSWER = "4817"


def run_example(name: str, tmp_path, *args: str) -> str:
    # cwd outside the checkout, so the installed pace_gguf (with its libraries) is imported
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_chat_example(default_model_path, tmp_path):
    out = run_example("chat.py", tmp_path, PROMPT)
    assert "build: pace-gguf" in out and ANSWER in out


def test_amb_chat_example(default_model_path, tmp_path):
    out = run_example("amb_chat.py", tmp_path, PROMPT)
    assert ANSWER in out
    assert "layer 12: slots" in out and "layer 26: slots" in out


def test_long_file_qa_example(default_model_path, tmp_path):
    out = run_example("long_file_qa.py", tmp_path)
    assert ANSWER in out
    assert "strategy direct" in out and "AMB on" in out


def test_summarize_document_example(default_model_path, tmp_path):
    out = run_example("summarize_document.py", tmp_path)
    for topic in ("volcano", "violin", "penguin"):
        assert topic in out.lower()
