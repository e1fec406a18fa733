"""pace-gguf relies on internals of the pinned llama-cpp-python (pace_gguf._llama_cpp_compat):
another version, or one that lacks any of them, must fail here, by name, not somewhere deep inside
a generation."""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pace_gguf import _llama_cpp_compat as compat
from pace_gguf._native import llama_cpp_module

PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"


def _pinned_versions() -> set[str]:
    """Every version pyproject.toml pins llama-cpp-python to (dependencies and extras)."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    return {m.group(1) for r in requirements if (m := re.fullmatch(r"llama-cpp-python(?:\[[\w,]+\])?==([\w.]+)", r))}


def test_installed_llama_cpp_python_is_the_pinned_version():
    pinned = _pinned_versions()
    assert len(pinned) == 1, f"pyproject.toml pins llama-cpp-python to several versions: {pinned}"
    assert llama_cpp_module().__version__ == pinned.pop(), (
        "the installed llama-cpp-python is not the pinned one: check every use in pace_gguf/_llama_cpp_compat.py")


def test_llama_cpp_has_every_module_attribute_pace_gguf_uses():
    assert compat.missing_attributes(llama_cpp_module(), compat.MODULE_ATTRIBUTES) == []


def test_missing_attributes_names_the_missing_ones():  # the check above can fail
    class Thing:
        present = 1

    assert compat.missing_attributes(Thing(), ("present", "absent", "present.real", "present.nope")) == [
        "absent", "present.nope"]


@pytest.mark.slow
def test_a_llama_has_every_attribute_pace_gguf_uses(default_llm):
    assert compat.missing_attributes(default_llm, compat.LLAMA_ATTRIBUTES) == []
    assert compat.context_pointer(default_llm) and compat.model_pointer(default_llm)
    assert isinstance(compat.logits_live(default_llm), bool)
    assert compat.token_capacity(default_llm) >= default_llm.n_ctx() >= 2048


@pytest.mark.slow
def test_llama_cpp_python_words_a_context_overflow_as_expected(default_llm):
    """pace_gguf.Llama turns this ValueError into a ContextOverflowError by its wording."""
    lcpp = llama_cpp_module()
    with pytest.raises(ValueError) as info:
        lcpp.Llama.create_completion(default_llm, "word " * (default_llm.n_ctx() + 100), max_tokens=1)
    assert compat.is_overflow_error(info.value), str(info.value)
    assert not compat.is_overflow_error(ValueError("some other problem"))


def test_loading_the_library_leaves_the_environment_as_it_was(tmp_path):
    """LLAMA_CPP_LIB_PATH is set only while llama_cpp is imported; a user's value is restored, and
    MTMD_CPP_LIB (libmtmd, which pace-gguf does not build) is not touched."""
    code = ("import os; from pace_gguf import _native; _native.native_library(); "
            "print(os.environ.get('LLAMA_CPP_LIB_PATH'), os.environ.get('MTMD_CPP_LIB'))")
    env = {k: v for k, v in os.environ.items() if k not in ("LLAMA_CPP_LIB_PATH", "MTMD_CPP_LIB")}
    # cwd outside the checkout: `python -c` puts the cwd first on sys.path (the source tree has no library)
    unset = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                           cwd=tmp_path)
    assert unset.stdout.split() == ["None", "None"]
    users = subprocess.run([sys.executable, "-c", code], env=dict(env, LLAMA_CPP_LIB_PATH="/users/own"),
                           capture_output=True, text=True, check=True, cwd=tmp_path)
    assert users.stdout.split() == ["/users/own", "None"]
