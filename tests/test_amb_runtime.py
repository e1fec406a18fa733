"""GGML_OP_AMB in the patched llama.cpp, on the real default model (SmolLM2-135M-Instruct).

Behaviour the spec fixes (section 8) that needs no external oracle: alpha = 0 leaves logits
bit-identical while the bank fills, reset gives determinism, state save/load round-trips, banks are
per sequence, prompt-prefix reuse never reuses a stale bank, bad settings are rejected.
"""

import numpy as np
import pytest

from pace_gguf import PaceError
from pace_gguf.amb import PaceConfig, PaceConfigError

pytestmark = pytest.mark.slow  # real model

LAYERS = (12, 26)
TEXT = (
    "The Activation Memory Bank keeps a few hundred past activations of a layer and mixes the most "
    "similar ones back into the current token. It is reset for every new document."
)


@pytest.fixture(scope="module")
def make_llm(default_model_path):
    from pace_gguf import Llama

    def make(pace=None, **kwargs):
        kwargs = {"n_ctx": 512, "seed": 0, "verbose": False, "logits_all": True, "n_threads": 2, **kwargs}
        return Llama(model_path=str(default_model_path), pace=pace, **kwargs)

    return make


def eval_logits(llm, tokens):
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)


@pytest.fixture(scope="module")
def tokens(make_llm):
    llm = make_llm()
    return llm.tokenize(TEXT.encode(), add_bos=False)


def test_default_model_has_amb_off(make_llm):
    llm = make_llm()
    assert not llm.amb_enabled
    assert llm.memory_stats() == {}
    assert llm.amb_memory_bytes == 0


def test_chat_with_amb_still_answers_and_fills_the_bank(make_llm):
    llm = make_llm(pace={"layers": LAYERS})
    # The README's prompt (tests/test_cli.py): the answer is in the question, robust to the CPU's kernels.
    out = llm.create_chat_completion(
        messages=[{"role": "user", "content": "Note: the door code is 4817. What is the door code?"}], temperature=0,
        max_tokens=32,
    )
    assert "4817" in out["choices"][0]["message"]["content"]
    stats = llm.memory_stats()
    assert sorted(stats) == list(LAYERS)
    for s in stats.values():
        assert 0 < s.slots_used <= s.bank_size == 100
        assert s.high + s.mid + s.low == llm.n_tokens  # every evaluated token was retrieved once
        assert s.high + s.mid > 0  # generated tokens met a filled bank


def test_amb_changes_logits_only_after_the_bank_has_content(make_llm, tokens):
    base = eval_logits(make_llm(n_ubatch=8), tokens)
    # ubatch granularity with small ubatches: later ubatches read what earlier ones stored
    amb = eval_logits(make_llm(pace={"layers": LAYERS}, n_ubatch=8), tokens)
    np.testing.assert_array_equal(amb[:8], base[:8])  # first ubatch: empty bank, exact identity
    assert np.abs(amb[8:] - base[8:]).max() > 1e-3


def test_alpha_zero_keeps_logits_bit_identical_while_the_bank_fills(make_llm, tokens):
    base = eval_logits(make_llm(n_ubatch=8), tokens)
    llm = make_llm(pace={"layers": LAYERS, "alpha": 0.0}, n_ubatch=8)
    np.testing.assert_array_equal(eval_logits(llm, tokens), base)
    assert all(s.slots_used > 0 and s.high + s.mid > 0 for s in llm.memory_stats().values())


def test_reset_gives_determinism_and_no_reset_differs(make_llm, tokens):
    llm = make_llm(pace={"layers": LAYERS}, n_ubatch=8)
    first = eval_logits(llm, tokens)  # llm.reset() + eval: clearing the sequence empties the bank
    np.testing.assert_array_equal(eval_logits(llm, tokens), first)

    def second_pass(llm, reset_bank):
        eval_logits(llm, tokens)
        if reset_bank:
            llm.reset_memory()
        llm.eval(tokens)  # the document again, continuing the same sequence
        return np.array(llm.scores[len(tokens): 2 * len(tokens)], dtype=np.float32)

    after_reset = second_pass(llm, reset_bank=True)
    np.testing.assert_array_equal(second_pass(llm, reset_bank=True), after_reset)
    carried = second_pass(llm, reset_bank=False)
    # Same KV cache in both; only the bank differs: the first pass's bank is read.
    assert np.abs(carried[:8] - after_reset[:8]).max() > 1e-3


def test_prefix_reuse_never_reuses_a_stale_bank(make_llm):
    prompt_a = "Once upon a time there was a lighthouse keeper who"
    prompt_b = prompt_a + " collected seashells and wrote letters to"
    reused = make_llm(pace={"layers": LAYERS}, n_ubatch=8)
    reused.create_completion(prompt_a, max_tokens=8, temperature=0)
    second = reused.create_completion(prompt_b, max_tokens=12, temperature=0)
    fresh = make_llm(pace={"layers": LAYERS}, n_ubatch=8).create_completion(prompt_b, max_tokens=12, temperature=0)
    assert second["choices"][0]["text"] == fresh["choices"][0]["text"]
    assert reused.memory_stats()[LAYERS[0]].invalidations == 0  # full re-evaluation, not a partial cut


def test_partial_removal_resets_the_bank_and_counts_it(make_llm, tokens):
    llm = make_llm(pace={"layers": LAYERS}, n_ubatch=8)
    eval_logits(llm, tokens)
    assert llm.memory_stats()[LAYERS[0]].slots_used > 0
    llm._ctx.kv_cache_seq_rm(0, 10, -1)  # drop a suffix the bank has absorbed
    stats = llm.memory_stats()[LAYERS[0]]
    assert (stats.slots_used, stats.invalidations) == (0, 1)
    llm._ctx.kv_cache_seq_rm(0, 10_000, -1)  # beyond anything absorbed: nothing to undo
    assert llm.memory_stats()[LAYERS[0]].invalidations == 1


def test_save_load_round_trip_continues_identically(make_llm, tokens):
    llm = make_llm(pace={"layers": LAYERS}, n_ubatch=8)
    eval_logits(llm, tokens[:24])
    state = llm.save_state()
    bank_before = llm.amb_bank(LAYERS[0])
    llm.eval(tokens[24:])
    continued = np.array(llm.scores[24: len(tokens)], dtype=np.float32)
    llm.reset_memory()
    assert llm.memory_stats()[LAYERS[0]].slots_used == 0
    llm.load_state(state)
    for key, value in llm.amb_bank(LAYERS[0]).items():
        np.testing.assert_array_equal(value, bank_before[key])
    llm.eval(tokens[24:])
    np.testing.assert_array_equal(np.array(llm.scores[24: len(tokens)], dtype=np.float32), continued)


def test_state_with_another_bank_shape_is_rejected(make_llm, tokens):
    small = make_llm(pace={"layers": LAYERS, "bank_size": 16}, n_ubatch=8)
    eval_logits(small, tokens)
    state = small.save_state()
    other = make_llm(pace={"layers": LAYERS}, n_ubatch=8)
    with pytest.raises(PaceError, match="slots 16.*slots 100"):
        other.load_state(state)
    assert other.memory_stats()[LAYERS[0]].slots_used == 0  # nothing half-restored


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"layers": (12,), "bank_size": 0}, "bank_size"),
        ({"layers": (99,)}, "layer 99 is out of range"),
        ({"layers": (12, 12)}, "listed twice"),
        ({"layers": (12,), "theta_high": 0.2, "theta_low": 0.6}, "theta_low"),
        ({"layers": (12,), "alpha": 1.5}, "alpha"),
        ({"layers": (12,), "mode": "legacy"}, "mode"),
        ({"enabled": True}, "no layers"),
    ],
)
def test_invalid_settings_are_rejected_with_the_parameter_named(make_llm, changes, message):
    llm = make_llm()
    with pytest.raises(PaceConfigError, match=message):
        llm.configure_pace(PaceConfig().replace(**changes) if "enabled" not in changes else changes)
    assert not llm.amb_enabled  # the previous settings stay in force


def test_every_layer_including_the_pruned_last_one(make_llm, tokens):
    # Without logits_all, llama.cpp runs the last layer's FFN on the output token alone (the last
    # token of the batch; ubatches without outputs give the op zero rows): the AMB there sees that
    # one row, mapped to its sequence and position.
    llm = make_llm(pace={"layers": tuple(range(30))}, logits_all=False, n_ubatch=8)
    llm.eval(tokens)
    stats = llm.memory_stats()
    assert stats[0].high + stats[0].mid + stats[0].low == len(tokens)
    assert stats[29].high + stats[29].mid + stats[29].low == 1
    cases = llm.amb_cases(29)
    assert cases[-1] >= 0 and (cases[:-1] == -1).all()
