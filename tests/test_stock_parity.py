"""pace-gguf with the AMB off is stock llama.cpp: logits bit-identical to the same pinned llama.cpp
built without our patches (cpp/build_stock.py), on the real default model.

Stock llama.cpp runs in a subprocess (llama-cpp-python binds one libllama per process).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest


pytestmark = pytest.mark.slow  # builds stock llama.cpp once (minutes), then reuses it

TEXT = "The lighthouse keeper counted the ships that passed the rocks each night, and wrote their names down."

STOCK_SCRIPT = """
import json, sys
import numpy as np
import llama_cpp
args = json.loads(sys.argv[1])
llm = llama_cpp.Llama(model_path=args["model"], logits_all=True, verbose=False, **args["params"])
assert not hasattr(llama_cpp.llama_cpp._lib, "llama_pace_version"), "not a stock library"
tokens = llm.tokenize(args["text"].encode(), add_bos=False)
llm.eval(tokens)
np.save(args["out"], np.array(llm.scores[: len(tokens)], dtype=np.float32))
"""


@pytest.fixture(scope="session")
def stock_lib_dir():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, os.path.join(repo, "cpp", "build_stock.py")],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def stock_logits(stock_lib_dir, model, params, out):
    env = dict(os.environ, LLAMA_CPP_LIB_PATH=stock_lib_dir)
    arg = json.dumps({"model": str(model), "params": params, "text": TEXT, "out": str(out)})
    result = subprocess.run([sys.executable, "-c", STOCK_SCRIPT, arg], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(out)


@pytest.mark.parametrize("n_ubatch", [512, 8])
def test_amb_off_is_bit_identical_to_stock_llama_cpp(stock_lib_dir, default_model_path, tmp_path, n_ubatch):
    from pace_gguf import Llama

    params = {"n_ctx": 256, "n_ubatch": n_ubatch, "n_threads": 2, "n_threads_batch": 2, "seed": 0}
    stock = stock_logits(stock_lib_dir, default_model_path, params, tmp_path / "stock.npy")
    llm = Llama(model_path=str(default_model_path), logits_all=True, verbose=False, **params)
    assert not llm.amb_enabled
    tokens = llm.tokenize(TEXT.encode(), add_bos=False)
    llm.eval(tokens)
    np.testing.assert_array_equal(np.array(llm.scores[: len(tokens)], dtype=np.float32), stock)
    # The check can fail: the same context with the AMB on reads a filled bank in later ubatches.
    if n_ubatch == 8:
        llm.configure_pace({"layers": (12, 26)})
        llm.reset()
        llm.eval(tokens)
        assert not np.array_equal(np.array(llm.scores[: len(tokens)], dtype=np.float32), stock)
