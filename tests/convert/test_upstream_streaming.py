"""convert/upstream_runner.py runs llama.cpp's converter with its big pass-through tensors streamed
in row chunks. The oracle is the stock converter of the same pinned source: the file must be the
same, byte for byte, for every checkpoint dtype and output type, and the streamed path must really
have been taken (tiny chunks force it on tiny models)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

# (arch, checkpoint dtype, --outtype): bf16 checkpoints are widened to float32 by upstream, f16
# ones are not; llama's q/k are permuted by upstream (not streamed), qwen2's are passed through.
CASES = [("qwen2", "float32", "q8_0"), ("llama", "bfloat16", "auto"), ("qwen2", "float16", "f16")]
_STREAMED = re.compile(r"pace-gguf: streamed (\d+) tensors in row chunks: (.*)")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from pace_gguf.convert.tiny import make_tiny_hf

    made = {}

    def get(arch: str, dtype: str) -> Path:
        if (arch, dtype) not in made:
            folder = tmp_path_factory.mktemp(f"hf-{arch}-{dtype}")
            made[arch, dtype] = make_tiny_hf(arch, folder, seed=3, dtype=dtype)
        return made[arch, dtype]
    return get


@pytest.fixture(scope="module")
def converted(checkpoint, tmp_path_factory):
    """(arch, dtype, outtype, chunk_bytes or None for the stock converter) -> (GGUF bytes, log)."""
    made = {}

    def get(arch: str, dtype: str, outtype: str, chunk_bytes: int | None):
        key = (arch, dtype, outtype, chunk_bytes)
        if key not in made:
            out = tmp_path_factory.mktemp("gguf") / "out.gguf"
            log = _convert(checkpoint(arch, dtype), out, outtype, chunk_bytes)
            made[key] = (out.read_bytes(), log)
            out.unlink()
        return made[key]
    return get


def _convert(hf: Path, out: Path, outtype: str, chunk_bytes: int | None) -> str:
    from pace_gguf.convert.hf import UPSTREAM_RUNNER
    from pace_gguf.convert.upstream import converter_env, source_dir

    converter = str(source_dir() / "convert_hf_to_gguf.py")
    runner = [str(UPSTREAM_RUNNER)] if chunk_bytes else []
    cmd = [sys.executable, *runner, converter, str(hf), "--outfile", str(out), "--outtype", outtype]
    env = converter_env() | {"PACE_GGUF_CHUNK_BYTES": str(chunk_bytes or 0)}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stderr


def _streamed_names(log: str) -> list[str]:
    found = _STREAMED.search(log)
    assert found, log[-2000:]
    return found.group(2).split(", ")


@pytest.mark.parametrize(("arch", "dtype", "outtype"), CASES)
def test_streamed_conversion_equals_stock_converter(arch, dtype, outtype, converted):
    stock, _ = converted(arch, dtype, outtype, None)
    streamed, log = converted(arch, dtype, outtype, 4096)
    names = _streamed_names(log)
    assert "token_embd.weight" in names and "blk.0.ffn_down.weight" in names and "blk.1.ffn_up.weight" in names
    # upstream permutes llama's q/k for its rope layout: those must stay on upstream's path
    assert ("blk.0.attn_q.weight" in names) == (arch == "qwen2")
    assert stock == streamed


def test_tensors_within_one_chunk_keep_upstreams_path(converted):
    stock, _ = converted("qwen2", "float32", "q8_0", None)
    streamed, log = converted("qwen2", "float32", "q8_0", 1 << 20)
    assert _streamed_names(log) == ["token_embd.weight"]   # ~38 MB as float32; the rest < 1 MiB
    assert stock == streamed
