"""The converter's copy of the source pin must equal cpp/llama.cpp.lock (the library's pin)."""

from __future__ import annotations

import json
from pathlib import Path

LOCK = Path(__file__).resolve().parents[2] / "cpp" / "llama.cpp.lock"


def test_lock_mirror_matches_cpp_lock():
    from pace_gguf.convert.upstream import LOCK as mirror

    lock = json.loads(LOCK.read_text())
    for key, value in mirror.items():
        assert lock[key] == value, key


def test_upstream_source_has_converter_and_vocabs():
    from pace_gguf.convert.hf import upstream_architectures
    from pace_gguf.convert.upstream import source_dir, vocab_gguf

    assert (source_dir() / "convert_hf_to_gguf.py").is_file()
    assert vocab_gguf("qwen2").is_file() and vocab_gguf("llama-bpe").is_file()
    archs = upstream_architectures()
    assert "LlamaForCausalLM" in archs and "Qwen2ForCausalLM" in archs and len(archs) > 50


def test_convert_cli_import_is_light(tmp_path):
    """`pace-gguf --help` must not import torch/transformers or llama_cpp."""
    import subprocess
    import sys

    code = ("import sys, pace_gguf.cli as c; c.build_parser(); "
            "bad=[m for m in ('torch','transformers','llama_cpp') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=tmp_path).returncode == 0  # not the checkout: its pace_gguf/ lacks convert/
