"""pace-gguf with the AMB off is stock llama.cpp: logits bit-identical to the same pinned llama.cpp
built without our patches (cpp/build_stock.py), on the real default model (tests/stock_oracle.py;
test_gemma3.py does the same on a second architecture)."""

import pytest

from stock_oracle import assert_amb_off_is_stock

pytestmark = pytest.mark.slow  # builds stock llama.cpp once (minutes), then reuses it


@pytest.mark.parametrize("n_ubatch", [512, 8])
def test_amb_off_is_bit_identical_to_stock_llama_cpp(stock_lib_dir, default_model_path, tmp_path, n_ubatch):
    params = {"n_ctx": 256, "n_ubatch": n_ubatch, "n_threads": 2, "n_threads_batch": 2, "seed": 0}
    assert_amb_off_is_stock(stock_lib_dir, default_model_path, tmp_path, params, amb_layers=(12, 26))
