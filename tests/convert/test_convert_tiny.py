"""End to end on tiny Qwen2 and Llama: HF -> GGUF through upstream's converter, CE, quantization.
Numbers come from the real runtime (pace_gguf.Llama) and the real HF model."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

ARCHS = ("qwen2", "llama")

TEXTS = ["Hello world! The quick brown fox jumps over 1234 lazy dogs.",
         "  leading spaces\n\nnew lines\tand tabs, 'll 've ümlaut café 我想在apple工作 🦙"]
PROMPT = "The capital of France is"


def _logits(load_llama, path, ids):
    llm = load_llama(path)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)]), llm


@pytest.mark.parametrize("arch", ARCHS)
def test_ce_preserves_logits_and_greedy_tokens(arch, tiny_hf, tiny_f32, load_llama, hf_ids, greedy):
    import torch
    from transformers import AutoModelForCausalLM

    ids = hf_ids(arch, PROMPT)
    plain, llm_plain = _logits(load_llama, tiny_f32(arch, 0), ids)
    ce, llm_ce = _logits(load_llama, tiny_f32(arch, 8), ids)
    assert np.abs(plain - ce).max() < 1e-5
    model = AutoModelForCausalLM.from_pretrained(tiny_hf(arch), dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(ref - plain).max() < 1e-4          # the converter itself is exact too
    assert np.abs(plain).max() > 1.0                 # O(1) logits: the comparison means something
    tokens = [greedy(llm, ids, 12) for llm in (llm_plain, llm_ce)]
    assert tokens[0] == tokens[1]


@pytest.mark.parametrize("arch", ARCHS)
def test_ce_permutes_ffn_and_writes_metadata(arch, tiny_f32):
    from pace_gguf.gguf_file import read_gguf
    from pace_gguf.convert.reorder import as_float32

    plain, ce = read_gguf(tiny_f32(arch, 0)), read_gguf(tiny_f32(arch, 8))
    assert ce.kv["pace.ce.experts"] == 8 and ce.kv["pace.ce.seed"] == 0
    n_layers = ce.kv[f"{ce.kv['general.architecture']}.block_count"]
    objective = ce.kv["pace.ce.objective"]
    assert len(objective) == n_layers and all(0 < v <= 1 for v in objective)
    assert not any(k.startswith("pace.amb.") for k in ce.kv)   # no AMB flags: AMB stays off
    for i in range(n_layers):
        g0, g1 = as_float32(plain, f"blk.{i}.ffn_gate.weight"), as_float32(ce, f"blk.{i}.ffn_gate.weight")
        assert not np.array_equal(g0, g1)
        # recover the permutation from the rows, then check up and down follow it
        perm = np.array([np.flatnonzero((g0 == row).all(1))[0] for row in g1])
        assert sorted(perm) == list(range(g0.shape[0]))
        u0, u1 = as_float32(plain, f"blk.{i}.ffn_up.weight"), as_float32(ce, f"blk.{i}.ffn_up.weight")
        d0, d1 = as_float32(plain, f"blk.{i}.ffn_down.weight"), as_float32(ce, f"blk.{i}.ffn_down.weight")
        np.testing.assert_array_equal(u1, u0[perm])
        np.testing.assert_array_equal(d1, d0[:, perm])
    # everything else byte-identical
    for t in plain.tensors:
        if ".ffn_" not in t.name:
            assert bytes(plain.raw(t)) == bytes(ce.raw(ce.tensor(t.name)))


@pytest.mark.parametrize("arch", ARCHS)
def test_tokenization_matches_hf(arch, tiny_f32, load_llama, hf_ids):
    llm = load_llama(tiny_f32(arch, 8))
    for text in TEXTS + [PROMPT]:
        ids = hf_ids(arch, text)
        assert llm.tokenize(text.encode(), add_bos=(arch == "llama"), special=False) == ids


def test_amb_defaults_written_and_read_by_runtime(tiny_f32, load_llama, tmp_path):
    from pace_gguf.gguf_file import read_gguf
    from pace_gguf.convert.pipeline import ConvertOptions, convert

    out = tmp_path / "amb.gguf"
    convert(tiny_f32("qwen2", 0), out, ConvertOptions(
        quant="F32", experts=8, progress=False,
        amb={"layers": [1], "bank_size": 7, "alpha": 0.5, "mode": "paper", "granularity": "prompt"}))
    kv = read_gguf(out).kv
    assert kv["pace.amb.enabled"] is True and kv["pace.amb.layers"] == [1]
    assert kv["pace.amb.bank_size"] == 7 and kv["pace.amb.mode"] == "paper"



def test_runtime_reads_amb_layers_written_by_converter(tiny_f32, tmp_path, load_llama):
    from pace_gguf.convert.pipeline import ConvertOptions, convert

    out = tmp_path / "amb.gguf"
    convert(tiny_f32("qwen2", 0), out, ConvertOptions(
        quant="F32", experts=8, progress=False,
        amb={"layers": [1], "bank_size": 7, "alpha": 0.5, "mode": "paper", "granularity": "prompt"}))
    llm = load_llama(out)
    assert llm.amb_enabled and llm.pace.layers == (1,) and llm.pace.bank_size == 7
    assert llm.pace.mode == "paper" and llm.pace.granularity == "prompt" and abs(llm.pace.alpha - 0.5) < 1e-6


@pytest.fixture(scope="module")
def llama_f32_ref(tiny_f32, load_llama):
    ids = [128000, 791, 6864, 315, 9822, 374]
    return ids, _logits(load_llama, tiny_f32("llama", 0), ids)[0]


# Max |logit diff| vs F32 measured on this tiny llama (seed 1, |logits| up to ~22), without / with CE
# (K=16): F16 0.021/0.021, BF16 0.157/0.157, Q8_0 0.672/0.657, Q6_K 0.672/0.657, Q5_K_M 1.95/1.82,
# Q4_K_M 2.32/2.38, Q4_0 4.71/4.34. Tolerances are ~2x the larger value. NOTE: rows of 64/128
# elements are shorter than a K-quant super-block (256), so llama.cpp falls back for every tensor
# here (Q6_K -> Q8_0, Q5_K_M -> Q5_1, Q4_K_M -> Q5_0): these cases check the pipeline and the file
# type; tests/convert/test_kquants.py checks K-quant precision on a 256-wide model.
QUANT_TOL = {"F16": 0.05, "BF16": 0.3, "Q8_0": 1.3, "Q6_K": 1.3, "Q5_K_M": 4.0, "Q4_K_M": 4.5, "Q4_0": 9.0}


@pytest.mark.parametrize("quant", list(QUANT_TOL))
def test_quantized_outputs_load_and_track_f32(quant, tiny_f32, load_llama, llama_f32_ref, tmp_path):
    """GGUF input path: F32 (no CE) -> CE + quantize. Logits stay close to F32's."""
    from pace_gguf.gguf_file import read_gguf
    from pace_gguf.convert.pipeline import ConvertOptions, convert
    from pace_gguf.convert.quantize import FLOAT_TARGETS

    out = tmp_path / f"q-{quant}.gguf"
    summary = convert(tiny_f32("llama", 0), out, ConvertOptions(quant=quant, experts=16, progress=False))
    assert summary.size == out.stat().st_size and list(summary.objectives) == [0, 1]
    src = read_gguf(out)
    assert src.kv["pace.ce.experts"] == 16
    if quant in FLOAT_TARGETS:
        assert src.tensor("blk.0.ffn_down.weight").type == FLOAT_TARGETS[quant]
    else:
        import llama_cpp
        assert src.kv["general.file_type"] == getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")
    ids, ref = llama_f32_ref
    got, _ = _logits(load_llama, out, ids)
    diff = np.abs(ref - got).max()
    assert 0 < diff < QUANT_TOL[quant]
    assert [p.name for p in tmp_path.iterdir()] == [out.name]      # no temp files left


def test_imatrix_is_permuted_and_used(tiny_f32, tmp_path):
    from pace_gguf.gguf_file import read_gguf
    from pace_gguf.convert.imatrix import load_imatrix, permute_imatrix, save_legacy
    from pace_gguf.convert.pipeline import ConvertOptions, convert

    src = read_gguf(tiny_f32("qwen2", 0))
    rng = np.random.default_rng(0)
    entries = {t.name: rng.random(t.shape[0]).astype(np.float32) + 0.1
               for t in src.tensors if len(t.shape) == 2 and t.name.startswith("blk.")}
    path = tmp_path / "im.dat"
    save_legacy(path, entries, ncall=4)
    loaded = load_imatrix(path)
    np.testing.assert_allclose(loaded["blk.0.ffn_down.weight"], entries["blk.0.ffn_down.weight"], rtol=1e-6)
    perm = np.arange(128)[::-1].copy()
    moved = permute_imatrix(loaded, {0: perm})
    np.testing.assert_array_equal(moved["blk.0.ffn_down.weight"], loaded["blk.0.ffn_down.weight"][perm])
    np.testing.assert_array_equal(moved["blk.1.ffn_down.weight"], loaded["blk.1.ffn_down.weight"])
    out = tmp_path / "im.gguf"
    convert(tiny_f32("qwen2", 0), out, ConvertOptions(quant="Q4_K_M", experts=8, imatrix=path, progress=False))
    assert read_gguf(out).kv["general.file_type"] == 15


def test_reorder_refuses_quantized_down_unless_requantize(tiny_f32, load_llama, tmp_path, capsys):
    from pace_gguf.cli import main
    from pace_gguf.gguf_file import read_gguf

    q8 = tmp_path / "q8.gguf"
    assert main(["convert", str(tiny_f32("qwen2", 0)), "-o", str(q8), "--quant", "Q8_0", "--experts", "0", "--no-progress"]) == 0
    out = tmp_path / "re.gguf"
    assert main(["reorder", str(q8), "-o", str(out), "--experts", "8"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("pace-gguf: error:") and "quantized" in err[-1] and "--requantize" in err[-1]
    assert not out.exists()
    assert main(["reorder", str(q8), "-o", str(out), "--experts", "8", "--requantize", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "--requantize cost" in err and "relative RMS error" in err
    cost = float(err.split("relative RMS error of ")[1].split()[0])
    assert 0 < cost < 0.05                             # a second Q8_0 rounding: small, not zero
    kv = read_gguf(out).kv
    assert kv["pace.ce.experts"] == 8 and kv["general.file_type"] == 7
    f32_out = tmp_path / "re32.gguf"
    assert main(["reorder", str(tiny_f32("qwen2", 0)), "-o", str(f32_out), "--experts", "8", "--no-progress"]) == 0
    a, _ = _logits(load_llama, tiny_f32("qwen2", 0), [9707, 1879, 0])
    b, _ = _logits(load_llama, f32_out, [9707, 1879, 0])
    assert np.abs(a - b).max() < 1e-5
