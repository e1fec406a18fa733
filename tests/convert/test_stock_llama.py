"""A CE-reordered GGUF is a standard GGUF: STOCK llama.cpp (the same pinned commit, built without
pace-gguf's patches by cpp/build_stock.py) loads it and computes what pace-gguf computes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

# Runs in a subprocess: plain llama_cpp on the stock library (pace_gguf refuses a library without
# its patches, and llama_cpp binds its library once per process).
_STOCK = r"""
import json, sys
import numpy as np
import llama_cpp
lib = llama_cpp.llama_cpp._lib
assert not hasattr(lib, "llama_pace_amb_build"), "this library has pace-gguf's patches: not stock"
path, ids, n, out = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
llm = llama_cpp.Llama(model_path=path, n_ctx=256, logits_all=True, verbose=False, n_threads=2,
                      type_k=0, type_v=0, seed=0)
llm.eval(ids)
logits = np.array(llm.scores[:len(ids)])
toks = []
for _ in range(n):
    t = int(np.argmax(llm.scores[llm.n_tokens - 1])); toks.append(t); llm.eval([t])
np.save(out, logits)
print(json.dumps(toks))
"""


@pytest.fixture(scope="module")
def stock_lib_dir():
    res = subprocess.run([sys.executable, str(ROOT / "cpp" / "build_stock.py")], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail(f"building stock llama.cpp failed:\n{res.stderr[-2000:]}")
    return res.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_stock_llama_cpp_runs_ce_gguf_like_pace(arch, stock_lib_dir, tiny_f32, load_llama, hf_ids, greedy, tmp_path):
    ce = tiny_f32(arch, 8)
    ids = hf_ids(arch, "The capital of France is")
    env = dict(os.environ, LLAMA_CPP_LIB_PATH=stock_lib_dir)
    res = subprocess.run([sys.executable, "-c", _STOCK, str(ce), json.dumps(ids), "12", str(tmp_path / "s.npy")],
                         env=env, capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    stock_tokens = json.loads(res.stdout.strip().splitlines()[-1])
    stock_logits = np.load(tmp_path / "s.npy")

    llm = load_llama(ce)
    assert not llm.amb_enabled
    llm.eval(ids)
    ours = np.array(llm.scores[: len(ids)])
    assert np.abs(ours).max() > 1.0
    assert np.abs(stock_logits - ours).max() < 1e-5
    assert greedy(llm, ids, 12) == stock_tokens
    # and the CE file under stock equals the plain file under ours: CE preserved the function
    plain = load_llama(tiny_f32(arch, 0))
    plain.eval(ids)
    assert np.abs(np.array(plain.scores[: len(ids)]) - stock_logits).max() < 1e-5
