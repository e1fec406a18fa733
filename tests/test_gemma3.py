"""The AMB on a second architecture: Gemma 3 270M (gemma3: GeGLU FFN, sliding-window attention,
Q4_K_M), 18 layers, from the registry. AMB off is stock llama.cpp there too (tests/stock_oracle.py)."""

import numpy as np
import pytest

from stock_oracle import TEXT, assert_amb_off_is_stock

pytestmark = pytest.mark.slow  # the real model (250 MB); the parity test builds stock llama.cpp once

# The paper's 0-based layers 12 and 26 of 28, scaled to Gemma 3 270M's 18.
LAYERS = (8, 16)
# One thread: on a shared 2-core machine two spinning ggml threads made a 19-token eval 7 to 20
# times slower (1.1-3.6 s against 0.17 s). Stock and ours get the same settings.
THREADS = {"n_threads": 1, "n_threads_batch": 1}


def _llm(path, **kwargs):
    from pace_gguf import Llama

    return Llama(model_path=str(path), seed=0, verbose=False, **THREADS, **kwargs)


def _last_logits(llm) -> np.ndarray:
    from pace_gguf import _llama_cpp_compat as compat, _native

    lc = _native.llama_cpp_module().llama_cpp
    return np.ctypeslib.as_array(lc.llama_get_logits_ith(compat.context_pointer(llm), -1),
                                 shape=(llm.n_vocab(),)).copy()


def test_amb_fills_its_banks_and_changes_later_ubatches(gemma3_model_path):
    llm = _llm(gemma3_model_path, n_ctx=256, n_ubatch=8, logits_all=True)
    assert llm.metadata["general.architecture"] == "gemma3" and llm.metadata["gemma3.block_count"] == "18"
    tokens = llm.tokenize(TEXT.encode(), add_bos=False)
    assert len(tokens) > 2 * 8  # three ubatches: the second and third read the bank the first filled
    llm.eval(tokens)
    off = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    llm.configure_pace({"layers": LAYERS})
    llm.reset()
    llm.eval(tokens)
    on = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    for stats in llm.memory_stats().values():
        assert stats.slots_used > 0, stats
        assert stats.high + stats.mid + stats.low == len(tokens), stats  # every token's case counted
        assert stats.high + stats.mid > 0, stats  # some tokens took from the bank
    np.testing.assert_array_equal(on[:8], off[:8])  # the first ubatch reads an empty bank: no change
    assert not np.allclose(on[8:], off[8:])
    assert np.isfinite(on).all()
    llm.close()


@pytest.mark.parametrize("n_ubatch", [512, 8])
def test_amb_off_is_bit_identical_to_stock_llama_cpp(stock_lib_dir, gemma3_model_path, tmp_path, n_ubatch):
    params = {"n_ctx": 256, "n_ubatch": n_ubatch, **THREADS, "seed": 0}
    assert_amb_off_is_stock(stock_lib_dir, gemma3_model_path, tmp_path, params, amb_layers=LAYERS)


def test_prompt_longer_than_the_sliding_window(gemma3_model_path, long_document):
    """Tokens past the window attend to the last `window` positions only in the sliding-window
    layers, and the second ubatch reads the bank the first one filled."""
    llm = _llm(gemma3_model_path, n_ctx=1024, pace={"layers": LAYERS})
    window = int(llm.metadata["gemma3.attention.sliding_window"])
    tokens = llm.tokenize(long_document(900).encode())[: window + 128]
    assert len(tokens) == window + 128 <= llm.n_ctx()
    llm.eval(tokens)
    assert np.isfinite(_last_logits(llm)).all()
    for stats in llm.memory_stats().values():
        assert stats.slots_used > 0 and stats.high + stats.mid > 0, stats
        assert stats.high + stats.mid + stats.low == len(tokens), stats
    llm.close()
