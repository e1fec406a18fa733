"""K-quants on a tiny model wide enough for them (rows of 256 and 512 elements: one or two
super-blocks), so llama.cpp does not fall back to legacy types as it does for the 64-wide models.

Oracles: the F32 file's logits (precision), the no-CE file's quantized rows (gate/up rows quantize
independently of their order, so CE must only move them), and llama.cpp's own default slab size
(our smaller slab must not change a byte)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

IDS = [128000, 791, 6864, 315, 9822, 374, 12366, 13]
# ggml types: Q4_K 12, Q5_K 13, Q6_K 14
K_TYPES = {12, 13, 14}
# Max |logit diff| vs F32 on this random model (seed 5, |logits| up to 54.8), measured without /
# with CE (K=16): Q6_K 2.50/2.34, Q5_K_M 3.78/3.73, Q4_K_M 6.07/5.83. Tolerances are ~1.6x the
# larger value: loose enough for other CPUs' SIMD paths, tight enough to catch a wrong type.
QUANT_TOL = {"Q6_K": 4.0, "Q5_K_M": 6.0, "Q4_K_M": 9.5}


@pytest.fixture(scope="module")
def wide_f32(tmp_path_factory):
    from pace_gguf.convert.pipeline import ConvertOptions, convert
    from pace_gguf.convert.tiny import make_tiny_hf

    folder = tmp_path_factory.mktemp("wide")
    hf = make_tiny_hf("llama", folder / "hf", seed=5, hidden=256, intermediate=512, heads=4, kv_heads=2)
    out = folder / "wide-f32.gguf"
    convert(hf, out, ConvertOptions(quant="F32", experts=0, progress=False))
    return out


@pytest.fixture(scope="module")
def quantized(wide_f32, tmp_path_factory):
    """(quant, experts) -> GGUF converted from the wide F32 file."""
    from pace_gguf.convert.pipeline import ConvertOptions, convert

    made = {}

    def get(quant: str, experts: int):
        if (quant, experts) not in made:
            out = tmp_path_factory.mktemp("q") / f"{quant}-ce{experts}.gguf"
            convert(wide_f32, out, ConvertOptions(quant=quant, experts=experts, progress=False))
            made[quant, experts] = out
        return made[quant, experts]
    return get


def _logits(load_llama, path):
    llm = load_llama(path)
    llm.eval(IDS)
    return np.array(llm.scores[: len(IDS)])


@pytest.mark.parametrize("quant", list(QUANT_TOL))
def test_kquants_are_used_and_track_f32_with_and_without_ce(quant, wide_f32, quantized, load_llama):
    from pace_gguf.gguf_file import read_gguf

    ref = _logits(load_llama, wide_f32)
    for experts in (0, 16):
        path = quantized(quant, experts)
        types = {t.name: t.type for t in read_gguf(path).tensors}
        ffn = [types[f"blk.{i}.ffn_{p}.weight"] for i in (0, 1) for p in ("gate", "up", "down")]
        assert set(ffn) <= K_TYPES, ffn                          # no fallback to legacy types
        diff = np.abs(_logits(load_llama, path) - ref).max()
        assert 0 < diff < QUANT_TOL[quant]


def test_ce_moves_quantized_gate_and_up_rows_unchanged(quantized):
    """Q4_K_M with CE = Q4_K_M without CE with gate/up rows permuted, byte for byte; ffn_down's
    columns share blocks with other neurons after CE, so its bytes differ (that is the open question
    benchmarks/ce_quant_quality.py measures)."""
    from pace_gguf.gguf_file import read_gguf

    plain, ce = read_gguf(quantized("Q4_K_M", 0)), read_gguf(quantized("Q4_K_M", 16))
    assert ce.kv["pace.ce.experts"] == 16
    for layer in (0, 1):
        perm = None
        for part in ("gate", "up"):
            t = plain.tensor(f"blk.{layer}.ffn_{part}.weight")
            a = plain.raw(t).reshape(t.shape[1], -1)
            b = ce.raw(ce.tensor(t.name)).reshape(t.shape[1], -1)
            if perm is None:                                      # recover the permutation from gate
                index = {row.tobytes(): i for i, row in enumerate(a)}
                perm = np.array([index[row.tobytes()] for row in b])
                assert sorted(perm) == list(range(t.shape[1])) and (perm != np.arange(t.shape[1])).any()
            np.testing.assert_array_equal(b, a[perm])
        down = f"blk.{layer}.ffn_down.weight"
        assert not np.array_equal(plain.raw(plain.tensor(down)), ce.raw(ce.tensor(down)))


def test_small_quantize_slab_gives_llama_cpps_bytes(wide_f32, tmp_path, monkeypatch):
    """A slab of a few rows (many slabs per tensor) against llama.cpp's default (0 = 8 GiB, one
    slab per tensor here): the same file."""
    from pace_gguf.convert import quantize as q

    for name, slab in (("small", 1 << 16), ("default", 0)):
        monkeypatch.setattr(q, "QUANT_SLAB_BYTES", slab)
        q.quantize(wide_f32, tmp_path / f"{name}.gguf", "Q4_K_M", show_progress=False)
    assert (tmp_path / "small.gguf").read_bytes() == (tmp_path / "default.gguf").read_bytes()
