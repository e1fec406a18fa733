"""Stock llama.cpp as the oracle of "AMB off is stock": the same pinned source built without
pace-gguf's patches (cpp/build_stock.py), run in a subprocess (llama-cpp-python binds one libllama
per process). The `stock_lib_dir` fixture (conftest.py) builds it once and reuses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

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


def build_stock_library() -> str:
    """The folder holding stock libllama: built once (minutes), then reused (about a second)."""
    result = subprocess.run([sys.executable, str(REPO / "cpp" / "build_stock.py")],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def stock_logits(stock_lib_dir: str, model, params: dict, out: Path, text: str = TEXT) -> np.ndarray:
    """Stock llama.cpp's logits of every token of `text` (out: the .npy file the child writes)."""
    env = dict(os.environ, LLAMA_CPP_LIB_PATH=stock_lib_dir)
    arg = json.dumps({"model": str(model), "params": params, "text": text, "out": str(out)})
    # cwd outside the checkout: `python -c` puts the cwd first on sys.path
    result = subprocess.run([sys.executable, "-c", STOCK_SCRIPT, arg], env=env, capture_output=True, text=True,
                            timeout=600, cwd=out.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(out)


def assert_amb_off_is_stock(stock_lib_dir: str, model, tmp_path: Path, params: dict, amb_layers) -> None:
    """Bit-identical logits with the AMB off; with n_ubatch below the text's length, also proof that
    the check can fail: the same context with the AMB on `amb_layers` reads a filled bank in later
    ubatches and differs."""
    from pace_gguf import Llama  # noqa: PLC0415

    stock = stock_logits(stock_lib_dir, model, params, tmp_path / "stock.npy")
    llm = Llama(model_path=str(model), logits_all=True, verbose=False, **params)
    assert not llm.amb_enabled
    tokens = llm.tokenize(TEXT.encode(), add_bos=False)
    llm.eval(tokens)
    np.testing.assert_array_equal(np.array(llm.scores[: len(tokens)], dtype=np.float32), stock)
    if params["n_ubatch"] < len(tokens):
        llm.configure_pace({"layers": amb_layers})
        llm.reset()
        llm.eval(tokens)
        assert not np.array_equal(np.array(llm.scores[: len(tokens)], dtype=np.float32), stock)
    llm.close()
