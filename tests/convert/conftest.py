"""Fixtures of the converter tests: tiny random Qwen2 / Llama checkpoints with real tokenizers
(pace_gguf.convert.tiny), made once per session, and their F32 GGUFs with and without CE."""

from __future__ import annotations

import pytest

ARCHS = ("qwen2", "llama")


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """arch -> HF folder (fp32 safetensors + real tokenizer), made on first use."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from pace_gguf.convert.tiny import make_tiny_hf

    made = {}

    def get(arch: str):
        if arch not in made:
            made[arch] = make_tiny_hf(arch, tmp_path_factory.mktemp(f"hf-{arch}"), seed=1)
        return made[arch]
    return get


@pytest.fixture(scope="session")
def tiny_f32(tiny_hf, tmp_path_factory):
    """(arch, experts) -> F32 GGUF converted by the pipeline (experts=0: no CE)."""
    from pace_gguf.convert.pipeline import ConvertOptions, convert

    made = {}

    def get(arch: str, experts: int):
        key = (arch, experts)
        if key not in made:
            out = tmp_path_factory.mktemp("gguf") / f"{arch}-ce{experts}.gguf"
            # HF -> GGUF through upstream once per arch; the CE variant starts from that GGUF
            # (the GGUF input path), which saves a second run of upstream's converter.
            src = tiny_hf(arch) if experts == 0 else get(arch, 0)
            convert(src, out, ConvertOptions(quant="F32", experts=experts, progress=False))
            made[key] = out
        return made[key]
    return get


@pytest.fixture(scope="session")
def load_llama():
    """path -> pace_gguf.Llama with logits_all and an F32 KV cache (with llama.cpp's default F16
    cache, logits differ from fp32 by ~1e-2)."""
    from pace_gguf import Llama

    def load(path, **kw):
        return Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=2,
                     type_k=0, type_v=0, seed=0, **kw)
    return load


@pytest.fixture(scope="session")
def hf_ids(tiny_hf):
    """(arch, text) -> token ids of the HF tokenizer (each AutoTokenizer loaded once: ~2 s for 128k tokens)."""
    from transformers import AutoTokenizer

    toks = {}

    def ids(arch: str, text: str):
        if arch not in toks:
            toks[arch] = AutoTokenizer.from_pretrained(tiny_hf(arch))
        return toks[arch](text)["input_ids"]
    return ids


def _greedy(llm, ids, n: int) -> list[int]:
    """n greedy tokens after `ids` from a llama_cpp.Llama with logits_all (stock or ours)."""
    import numpy as np

    llm.reset()
    llm.eval(list(ids))
    out = []
    for _ in range(n):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(tok)
        llm.eval([tok])
    return out


@pytest.fixture(scope="session")
def greedy():
    return _greedy
