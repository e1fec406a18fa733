"""Fixtures of the fuzz tests (tests/fuzz); the helpers live in pace_fuzz.py, importable by the test
modules because this folder is put on sys.path here (pytest runs in importlib mode)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
# llama.cpp's OpenMP threads spin while waiting; on a loaded machine a 1 ms decode then takes 1 s.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pace_fuzz  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model() -> pace_fuzz.TinyModel:
    return pace_fuzz.make_tiny_model()


@pytest.fixture(scope="session")
def tiny_model_path(tiny_model, tmp_path_factory) -> Path:
    return tiny_model.write(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


def pytest_sessionfinish(session):
    pace_fuzz.write_outcomes()  # cases per target and outcome, for run_sanitized.py ($PACE_FUZZ_STATS)
