"""The bank owner under untrusted input and failure (the hardening issue's reproducers), on the real
default model: edited session states are refused and leave the context usable, an aborted decode
leaves nothing behind that a later load could overflow, a failed reconfiguration keeps the old
banks, sequences without a bank and tokens shared by several sequences are handled."""

import ctypes
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pace_gguf import PaceError, _native, amb
from pace_gguf.amb import PaceConfigError

from amb_state import HEADER_INTS, ST_FLAGS, ST_N_PENDING, AmbSection  # tests/amb_state.py

pytestmark = pytest.mark.slow  # real model

LAYERS = (12, 26)
TEXT = ("The keeper of the lighthouse wrote every ship into a log: its name, its flag, the hour it "
        "passed and the weather. Over forty years the log grew to thirty volumes, and when the light "
        "was automated the volumes went to the town museum, where visitors still read them aloud.")


@pytest.fixture(scope="module")
def make_llm(default_model_path):
    from pace_gguf import Llama

    def make(pace=None, **kwargs):
        kwargs = {"n_ctx": 256, "seed": 0, "verbose": False, "n_threads": 2, **kwargs}
        return Llama(model_path=str(default_model_path), pace=pace, **kwargs)

    return make


@pytest.fixture(scope="module")
def tokens(make_llm):
    return make_llm().tokenize(TEXT.encode(), add_bos=False)


def edited(state: bytes, offset: int, fmt: str, value) -> bytes:
    out = bytearray(state)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def prompt_llm(make_llm, chunk=16):
    # prompt granularity with batches of several ubatches: the path that buffers rows in `pend`
    return make_llm(pace={"layers": LAYERS, "granularity": "prompt", "chunk": chunk}, n_batch=64, n_ubatch=8)


def still_usable(llm, tokens):
    llm.reset()
    llm.eval(tokens[:40])  # a multi-ubatch decode in prompt granularity
    stats = llm.memory_stats()[LAYERS[0]]
    assert stats.slots_used > 0 and stats.high + stats.mid + stats.low == 40


@pytest.mark.parametrize("pending", [16, 1 << 28, 2**31 - 1, -1, 1])
def test_state_with_an_edited_pending_count_is_refused(make_llm, tokens, pending):
    llm = prompt_llm(make_llm)
    llm.eval(tokens[:30])
    state = llm.save_state()
    section = AmbSection(state.llama_state)
    state.llama_state = edited(state.llama_state, section.offset(1, "state", ST_N_PENDING), "<i", pending)
    with pytest.raises(PaceError, match="pending rows"):
        llm.load_state(state)
    assert llm.memory_stats()[LAYERS[0]].slots_used == 0  # banks empty, not half-restored
    still_usable(llm, tokens)


@pytest.mark.parametrize(
    ("part", "index", "fmt", "value", "message"),
    [
        ("meta", 100, "<f", 2.0, "valid flag"),            # valid[0] of a 100-slot bank
        ("meta", 0, "<f", float("nan"), "usage"),
        ("meta", 0, "<f", -1.0, "usage"),
        ("key", 0, "<f", float("inf"), "non-finite"),      # slot 0 is valid after 30 tokens
        ("state", ST_FLAGS, "<i", 3, "flags"),
        ("state", 2, "<i", -5, "negative case count"),
        ("state", HEADER_INTS + 3, "<i", 7, "case log"),
        ("state", 6, "<i", 1, "unknown header field"),
    ],
)
def test_state_with_corrupt_bank_data_is_refused(make_llm, tokens, part, index, fmt, value, message):
    llm = make_llm(pace={"layers": LAYERS})
    llm.eval(tokens[:30])
    state = llm.save_state()
    section = AmbSection(state.llama_state)
    state.llama_state = edited(state.llama_state, section.offset(0, part, index), fmt, value)
    with pytest.raises(PaceError, match=message):
        llm.load_state(state)
    still_usable_ubatch(llm, tokens)


def still_usable_ubatch(llm, tokens):
    llm.reset()
    llm.eval(tokens[:20])
    assert llm.memory_stats()[LAYERS[0]].slots_used > 0


def test_state_with_impossible_positions_is_refused(make_llm, tokens):
    llm = make_llm(pace={"layers": LAYERS})
    llm.eval(tokens[:30])
    state = llm.save_state()
    section = AmbSection(state.llama_state)
    state.llama_state = edited(state.llama_state, section.positions(), "<i", 50)  # pos_min 50 > pos_max 29
    with pytest.raises(PaceError, match="absorbed positions"):
        llm.load_state(state)


def test_knorm_is_recomputed_not_trusted(make_llm, tokens):
    llm = make_llm(pace={"layers": LAYERS})
    llm.eval(tokens[:30])
    state = llm.save_state()
    llm.eval(tokens[30:40])
    expected = np.array(llm.scores[30:40])
    section = AmbSection(state.llama_state)
    knorm0 = section.offset(0, "meta", 2 * section.M)
    state.llama_state = edited(state.llama_state, knorm0, "<f", 1e-30)
    llm.load_state(state)
    llm.eval(tokens[30:40])
    np.testing.assert_array_equal(np.array(llm.scores[30:40]), expected)


def test_aborted_decode_drops_its_buffered_rows(make_llm, tokens):
    """A decode stopped halfway through a batch (llama_set_abort_callback): the rows it buffered are
    dropped, the positions it absorbed invalidate the bank through llama.cpp's own rollback, and a
    state saved afterwards loads into a context with a smaller chunk without overflowing it."""
    lc = _native.llama_cpp_module().llama_cpp
    llm = prompt_llm(make_llm, chunk=32)
    llm.eval(tokens[:16])
    calls = {"n": 0}

    @ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p)
    def abort_after_a_while(_):
        calls["n"] += 1
        return calls["n"] > 2500  # well into the second or third ubatch of the next decode

    lc.llama_set_abort_callback(llm._ctx.ctx, abort_after_a_while, None)
    with pytest.raises(Exception):
        llm.eval(tokens[16:56])
    lc.llama_set_abort_callback(llm._ctx.ctx, ctypes.cast(None, type(abort_after_a_while)), None)
    assert calls["n"] > 2500
    assert llm.memory_stats()[LAYERS[0]].invalidations >= 1
    state = llm.save_state()
    section = AmbSection(state.llama_state)
    pending = struct.unpack_from("<i", state.llama_state, section.offset(0, "state", ST_N_PENDING))[0]
    assert pending == 0
    small = prompt_llm(make_llm, chunk=4)
    small.load_state(state)
    still_usable(small, tokens)


def test_failed_reconfiguration_keeps_the_old_banks(default_model_path, tmp_path):
    """A bank too large for the memory limit: the error is raised and the old configuration, with its
    bank contents, stays usable (stats, save, reset, eval). Run in a child with a memory limit."""
    script = textwrap.dedent(f"""
        import resource
        from pace_gguf import Llama
        from pace_gguf.amb import PaceConfig, PaceConfigError
        llm = Llama(model_path={str(default_model_path)!r}, n_ctx=256, verbose=False, n_threads=2, pace={{"layers": (12,)}})
        llm.eval(llm.tokenize(b"A memory bank holds past activations of a layer.", add_bos=False))
        before = llm.memory_stats()[12]
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + 512 * 2**20, hard))
        try:
            llm.configure_pace(PaceConfig(enabled=True, layers=tuple(range(30)), bank_size=4096))
        except PaceConfigError as exc:
            print("refused:", exc)
        else:
            raise SystemExit("a 1.4 GiB bank was allocated under a 512 MiB limit")
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        assert llm.pace.layers == (12,), llm.pace
        assert llm.memory_stats()[12] == before, (llm.memory_stats(), before)
        state = llm.save_state()
        llm.reset_memory()
        llm.load_state(state)
        llm.eval(llm.tokenize(b" It is reset for a new document.", add_bos=False))
        print("usable", llm.memory_stats()[12])
    """)
    # cwd outside the checkout: `python -c` puts the cwd first on sys.path, and the source folder has no library
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "refused:" in result.stdout and "failed to allocate" in result.stdout
    assert "usable" in result.stdout


def test_state_of_a_sequence_without_a_bank(make_llm, tokens):
    """llama_state_seq_* with a sequence id the KV cache accepts but the banks do not have."""
    lc = _native.llama_cpp_module().llama_cpp
    llm = make_llm(pace={"layers": LAYERS})
    llm.eval(tokens[:20])
    ctx = llm._ctx.ctx
    for seq in (3, 200):
        size = lc.llama_state_seq_get_size(ctx, seq)
        buf = (ctypes.c_uint8 * size)()
        assert lc.llama_state_seq_get_data(ctx, buf, size, seq) == size
        assert lc.llama_state_seq_set_data(ctx, buf, size, seq) == size
    assert llm.memory_stats()[LAYERS[0]].slots_used > 0  # sequence 0's bank untouched


def test_tokens_shared_by_two_sequences_feed_both_banks(make_llm, tokens, raw_context):
    """A prompt decoded once for sequences 0 and 1 (llama.cpp's batched pattern) leaves both with the
    bank a single sequence would have, and both continue exactly as a single sequence does."""
    llm = make_llm()
    prompt, rest = tokens[:24], tokens[24:32]
    single = raw_context(llm, LAYERS, kv_unified=True)
    single.decode([(0, p, t) for p, t in enumerate(prompt)])
    alone = single.decode([(0, len(prompt) + p, t) for p, t in enumerate(rest)])
    bank_alone = single.bank(LAYERS[0], 0)
    single.close()

    shared = raw_context(llm, LAYERS, kv_unified=True)
    shared.decode([((0, 1), p, t) for p, t in enumerate(prompt)])
    assert all(shared.bank(LAYERS[0], s)["valid"].sum() > 0 for s in (0, 1))
    both = shared.decode([(s, len(prompt) + p, t) for s in (0, 1) for p, t in enumerate(rest)])
    n = len(rest)
    np.testing.assert_array_equal(both[:n], alone)
    np.testing.assert_array_equal(both[n:], alone)
    for s in (0, 1):
        np.testing.assert_array_equal(shared.bank(LAYERS[0], s)["keys"], bank_alone["keys"])
    shared.close()


def test_invalid_settings_leave_the_banks_and_their_contents(make_llm, tokens):
    llm = make_llm(pace={"layers": LAYERS})
    llm.eval(tokens[:20])
    before = llm.amb_bank(LAYERS[0])
    with pytest.raises(PaceConfigError, match="bank_size"):
        llm.configure_pace({"layers": LAYERS, "bank_size": 5000})
    with pytest.raises(PaceConfigError, match="int32"):
        llm.configure_pace({"layers": (2**32 + 12,)})
    with pytest.raises(PaceConfigError, match="w_high"):
        llm.configure_pace({"layers": LAYERS, "w_high": 1e39})
    for key, value in llm.amb_bank(LAYERS[0]).items():
        np.testing.assert_array_equal(value, before[key])


def test_mixture_of_experts_ffn_is_refused_at_configuration(tmp_path):
    """qwen2moe routes its experts outside build_ffn and sends its shared expert through it: the AMB
    refuses such a layer when it is configured, and the model runs without it."""
    pytest.importorskip("transformers")
    from pace_gguf import Llama
    from pace_gguf.convert.tiny import tiny_gguf

    path = tiny_gguf("qwen2moe", tmp_path, layers=2, tie_embeddings=False)  # llama.cpp wants output.weight
    llm = Llama(model_path=str(path), n_ctx=64, verbose=False)
    with pytest.raises(PaceConfigError, match="mixture of experts"):
        llm.configure_pace({"layers": (0,)})
    assert not llm.amb_enabled
    llm.eval(llm.tokenize(b"Hello there", add_bos=False))  # still usable
