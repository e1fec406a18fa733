"""Per-sequence banks (spec 8.15): two sequences decoded in one batch give what two separate runs
give, and seq_cp forks a bank. Uses llama.cpp's own batch API on the real default model, because
llama-cpp-python's `Llama` drives a single sequence."""

import numpy as np
import pytest

from pace_gguf import amb

pytestmark = pytest.mark.slow

LAYERS = (12, 26)
DOCS = [
    "Lighthouses guide ships along rocky coasts, and their keepers log every passing vessel.",
    "A sourdough starter needs flour, water and patience; bakers feed it every single day.",
]


@pytest.fixture(scope="module")
def llm(default_model_path):
    from pace_gguf import Llama

    return Llama(model_path=str(default_model_path), n_ctx=256, verbose=False)


@pytest.fixture(scope="module")
def docs(llm):
    return [llm.tokenize(d.encode(), add_bos=False)[:16] for d in DOCS]


def run_separately(raw_context, llm, docs, n_ubatch):
    """Each document alone in its own fresh context, as sequence 0, in two halves."""
    logits, cases = [], []
    for doc in docs:
        ctx = raw_context(llm, LAYERS, n_ubatch)
        half = len(doc) // 2
        out = [ctx.decode([(0, p, doc[p]) for p in range(half)]), ctx.decode([(0, p, doc[p]) for p in range(half, len(doc))])]
        logits.append(np.concatenate(out))
        cases.append(ctx.cases(0, len(doc)))
        ctx.close()
    return logits, cases


def test_two_sequences_in_one_batch_equal_two_separate_runs(llm, docs, raw_context):
    alone_logits, alone_cases = run_separately(raw_context, llm, docs, n_ubatch=512)
    ctx = raw_context(llm, LAYERS)
    half = len(docs[0]) // 2
    together = []
    for part in (range(half), range(half, len(docs[0]))):
        items = [(s, p, docs[s][p]) for p in part for s in (0, 1)]  # interleaved in one ubatch
        together.append(ctx.decode(items))
    together = np.concatenate(together)
    for s in (0, 1):
        np.testing.assert_allclose(together[s::2], alone_logits[s], rtol=1e-4, atol=1e-4)
        for il in LAYERS:
            np.testing.assert_array_equal(ctx.cases(s, len(docs[s]))[il], alone_cases[s][il])
    # the second half read a non-empty bank: the comparison covers more than the identity case
    assert any((c[half:] > 0).any() for c in alone_cases[0].values())
    ctx.close()


def test_seq_cp_forks_the_bank_and_seq_rm_clears_only_its_sequence(llm, docs, raw_context):
    ctx = raw_context(llm, LAYERS)
    ctx.decode([(0, p, t) for p, t in enumerate(docs[0])])
    mem = ctx.lc.llama_get_memory(ctx.ctx)
    ctx.lc.llama_memory_seq_cp(mem, 0, 1, -1, -1)
    for il in LAYERS:
        b0, b1 = amb.bank(ctx.ctx, il, 0), amb.bank(ctx.ctx, il, 1)
        assert b0["valid"].sum() > 0
        for key in b0:
            np.testing.assert_array_equal(b0[key], b1[key])
    ctx.lc.llama_memory_seq_rm(mem, 1, -1, -1)
    for il in LAYERS:
        assert amb.layer_stats(ctx.ctx, il, 1).slots_used == 0
        assert amb.layer_stats(ctx.ctx, il, 0).slots_used > 0
    ctx.close()
