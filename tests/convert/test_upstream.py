"""The converter finds llama.cpp's Python converter in the archive the installed library was built
from: the installed pin must be cpp/llama.cpp.lock itself."""

from __future__ import annotations

import json
from pathlib import Path

LOCK = Path(__file__).resolve().parents[2] / "cpp" / "llama.cpp.lock"


def test_installed_pin_is_the_build_pin():
    from pace_gguf.pinned_source import installed_lock

    assert installed_lock() == json.loads(LOCK.read_text())


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
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=tmp_path).returncode == 0  # the installed package, not the checkout (its pace_gguf/ lacks lib/)


def test_converter_log_relays_only_upstreams_bar(capsys):
    """Bar redraws (carriage-return separated) go to stderr when asked; the rest is kept for errors."""
    import io

    from pace_gguf.convert.hf import _last_error, _read_log

    out = (b"WARNING:hf-to-gguf:something odd\nWriting:   0%| | 0/9 [00:00<?]\rWriting:  50%| | 4/9\r"
           b"Writing: 100%| | 9/9\nTraceback (most recent call last):\n  File \"x.py\"\nValueError: bad shape")
    log = _read_log(io.BytesIO(out), show_bar=True)
    assert "Writing" not in log and "something odd" in log
    assert _last_error(log) == "ValueError: bad shape"
    err = capsys.readouterr().err
    assert err.count("\rWriting:") == 3 and err.endswith("9/9\n")
    assert _read_log(io.BytesIO(out), show_bar=False) == log and capsys.readouterr().err == ""
