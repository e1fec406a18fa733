"""Fuzzing the AMB section of session states (cpp/src/pace-amb-memory.cpp): crafted states must
either load or be refused with PaceError, and the context must stay usable either way.

A real state is saved from the tiny model with the AMB on both layers (bank of 8 slots, chunk 4;
ubatch and prompt granularity), then mutated: random bytes at random offsets of the AMB section,
targeted values in its fields (counts, flags, floats incl. NaN/inf, the case log, positions, header
shapes), truncations (in the AMB section or anywhere) and extensions. Each case is loaded through
`Llama.load_state` (whole-context state) or `llama_state_seq_set_data` (sequences 0 and 1 of a
2-sequence context, and ids beyond n_seq_max), then the context must decode and its AMB stats be
readable and sane. Cases that once failed live in corpus/state-*.json and are replayed every run.

Example count: $PACE_FUZZ_EXAMPLES per target (default 50); tests/fuzz/run_sanitized.py runs
thousands under ASan/UBSan. $PACE_FUZZ_CASE_FILE, when set, receives each case as JSON before it
runs, so a case that kills the process (a sanitizer report) can be recovered.
"""

from __future__ import annotations

import ctypes
import json
import math
import struct
from dataclasses import dataclass, field

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from amb_state import AmbSection  # noqa: E402  (tests/amb_state.py)
from pace_fuzz import CORPUS, count, fuzz_examples, record  # noqa: E402  (tests/fuzz/pace_fuzz.py)

M, CHUNK, N_CTX = 8, 4, 64
LAYERS = (0, 1)
TEXT = b"The keeper of the lighthouse wrote every ship into a log: its name, its flag and the hour."
GRANULARITIES = ("ubatch", "prompt")
PLAUSIBLE = ("keys", "values", "usage", "valid", "knorm", "header", "cases", "pos_")
# The largest case count the fuzzers restore. A count near INT32_MAX once overflowed at the next
# decode (corpus/state-case-count-overflow.json; the counters saturate since); lower it to keep a
# known bug of that kind out of the fuzzers' way while the corpus replay reproduces it.
COUNT_MAX = 2**31 - 1

INTS = [0, 1, -1, 2, 3, 4, 7, 8, 9, 16, 32, 63, 64, 65, 255, 256, 1 << 16, 1 << 24, 1 << 28,
        2**31 - 1, 2**31 - 2, -(2**31), -(2**31) + 1, -2]
FLOATS = [math.nan, -math.nan, math.inf, -math.inf, 0.0, -0.0, 1.0, -1.0, 2.0, 0.5, 1e-45, 1e-38, -1e-30,
          1e30, 3.4028234663852886e38, -3.4028234663852886e38, 1e38]
SETTINGS = settings(max_examples=fuzz_examples(), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---- cases ----------------------------------------------------------------------------------------

@dataclass
class StateCase:
    """A mutation of a base state, relative to its AMB section: what corpus files hold."""

    granularity: str = "ubatch"
    api: str = "state"        # "state": Llama.load_state; "seq": llama_state_seq_set_data
    src_seq: int = 0          # seq api: the sequence whose state is mutated...
    dst_seq: int = 0          # ...and the one it is loaded into
    unified: bool = False     # seq api: a unified KV cache (it accepts ids past n_seq_max, up to 255)
    edits: list = field(default_factory=list)  # [offset from the section start, hex bytes]
    truncate: int | None = None  # new length, relative to the section start (negative: into the KV part)
    append: str = ""          # hex bytes added at the end
    note: str = ""
    expect: str = ""          # corpus seeds: "loaded" or "refused" (empty: either)

    def apply(self, state: bytes) -> bytes:
        start = AmbSection(state).start
        out = bytearray(state)
        for offset, data in self.edits:
            raw = bytes.fromhex(data)
            pos = start + offset
            if 0 <= pos < len(out):
                out[pos:pos + len(raw)] = raw[: len(out) - pos]
        if self.truncate is not None:
            del out[max(0, start + self.truncate):]
        return bytes(out) + bytes.fromhex(self.append)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "StateCase":
        return cls(**json.loads(text))


@st.composite
def mutations(draw, section: Section, total: int) -> dict:
    """edits/truncate/append of a StateCase for a section of `total` state bytes."""
    size = section.end - section.start
    fields = section.fields()
    edits, truncate, append = [], None, ""
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["bytes", "field", "field", "plausible", "plausible", "truncate", "append"]))
        if kind == "bytes":
            offset = draw(st.integers(0, size - 1))
            edits.append([offset, draw(st.binary(min_size=1, max_size=8)).hex()])
        elif kind == "field":
            name, fmt, offset, count = draw(st.sampled_from(fields))
            index = draw(st.integers(0, count - 1)) if count > 1 else 0
            if fmt == "<f":
                value = draw(st.sampled_from(FLOATS) | st.floats(width=32))
            elif fmt == "<q":
                value = draw(st.sampled_from(INTS + [2**63 - 1, -(2**63), 2**40]) | st.integers(-(2**63), 2**63 - 1))
            else:
                value = draw(st.sampled_from(INTS) | st.integers(-(2**31), 2**31 - 1))
                fmt = "<I" if value >= 2**31 else "<i"
                if fmt == "<i" and value < 0 and name in ("magic", "version", "n_layers", "n_seq", "n_pos"):
                    value &= 0xFFFFFFFF
                    fmt = "<I"
            if name.startswith("header") and index in (1, 2, 3) and COUNT_MAX < value < 2**31:
                value = COUNT_MAX  # see COUNT_MAX
            edits.append([offset + index * struct.calcsize(fmt), struct.pack(fmt, value).hex()])
        elif kind == "plausible":
            # a value the loader's checks accept, so that the kernel then runs on it
            name, fmt, offset, count = draw(st.sampled_from([f for f in fields if f[0].startswith(PLAUSIBLE)]))
            index = draw(st.integers(0, count - 1)) if count > 1 else 0
            if name.startswith(("keys", "values")):
                value = draw(st.sampled_from([0.0, -0.0, 1e-45, 1e-38, 1e30, 3.4028234663852886e38, -1e38])
                             | st.floats(width=32, allow_nan=False, allow_infinity=False))
            elif name.startswith(("usage", "knorm")):
                value = draw(st.sampled_from([0.0, 1e-45, 1.0, 1e30, 3.4028234663852886e38])
                             | st.floats(0, width=32, allow_infinity=False))
            elif name.startswith("cases"):
                value = draw(st.integers(0, 3))
            elif name.startswith("header"):
                index = draw(st.integers(1, 3))  # the case counts
                value = draw(st.sampled_from([0, 1, COUNT_MAX, 2**30]) | st.integers(0, COUNT_MAX))
            elif name.startswith("valid"):
                value = draw(st.sampled_from([0.0, 1.0, -0.0]))
            else:  # positions
                value = draw(st.sampled_from([-1, 0, 1, 23, 24, 63, 64, 2**31 - 1]) | st.integers(0, 2**31 - 1))
            edits.append([offset + index * 4, struct.pack(fmt, value).hex()])
        elif kind == "truncate":
            # mostly inside the AMB section; sometimes into the KV cache part before it
            # (never to nothing: llama-cpp-python takes 0 bytes read of a 0-byte state as success)
            truncate = draw(st.integers(0, size - 1) | st.integers(-(total - size) + 1, size - 1))
        else:
            append = draw(st.binary(min_size=1, max_size=64)).hex()
    return {"edits": edits, "truncate": truncate, "append": append}


# ---- contexts -------------------------------------------------------------------------------------

def amb_pace(granularity: str) -> dict:
    return {"layers": LAYERS, "bank_size": M, "chunk": CHUNK, "granularity": granularity}


class WholeState:
    """A Llama with the AMB on, and its state after a prompt (Llama.save_state / load_state)."""

    def __init__(self, path, granularity: str):
        from pace_gguf import Llama

        self.llm = Llama(model_path=str(path), n_ctx=N_CTX, n_batch=16, n_ubatch=4, n_threads=1, n_threads_batch=1,
                         seed=0, verbose=False, pace=amb_pace(granularity))
        self.tokens = self.llm.tokenize(TEXT, add_bos=False)
        self.llm.eval(self.tokens[:24])
        assert all(s.slots_used > 0 for s in self.llm.memory_stats().values())
        self.base = self.llm.save_state()
        self.section = AmbSection(self.base.llama_state)

    def run(self, case: StateCase, target: str = "corpus") -> None:
        from pace_gguf import PaceError

        data = case.apply(self.base.llama_state)
        state = self.base.__class__(scores=self.base.scores, input_ids=self.base.input_ids, n_tokens=self.base.n_tokens,
                                    llama_state=data, llama_state_size=len(data), seed=self.base.seed)
        llm = self.llm
        try:
            llm.load_state(state)
            loaded = True
        except PaceError:
            loaded = False
        count(target, "loaded" if loaded else "refused")
        assert case.expect in ("", "loaded" if loaded else "refused"), case
        check_stats(llm.memory_stats().values())
        amb_failure = not loaded and not case.append and (case.truncate is None or case.truncate >= 0)
        if amb_failure:  # refused in the AMB section: banks empty, never half-restored
            assert all(s.slots_used == 0 for s in llm.memory_stats().values()), llm.memory_stats()
        if loaded:  # continue from the restored banks: the kernel runs on whatever passed the checks
            llm.eval(self.tokens[24:30])
            check_stats(llm.memory_stats().values())
            restored = llm.save_state()  # what it saves must load again
            llm.load_state(restored)
        llm.reset()
        llm.eval(self.tokens[:10])
        stats = llm.memory_stats()
        check_stats(stats.values())
        assert all(s.slots_used > 0 and s.high + s.mid + s.low >= 1 for s in stats.values()), stats


def check_stats(stats) -> None:
    for s in stats:
        assert 0 <= s.slots_used <= s.bank_size == M, s
        assert s.high >= 0 and s.mid >= 0 and s.low >= 0, s


class SeqState:
    """A raw 2-sequence context (llama_state_seq_get_data / set_data), AMB on, both sequences fed.
    With a unified KV cache, ids past n_seq_max (sequences without a bank) are valid targets too;
    a split cache asserts on them (upstream's GGML_ASSERT, a caller error), so they are not sent."""

    SEQS = (0, 1)
    BEYOND = (2, 5, 200)

    def __init__(self, path, granularity: str, unified: bool):
        from pace_gguf import Llama, _native, amb

        self.lc, self.amb = _native.llama_cpp_module().llama_cpp, amb
        self.llm = Llama(model_path=str(path), n_ctx=N_CTX, n_threads=1, n_threads_batch=1, verbose=False, pace=False)
        params = self.lc.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 2 * N_CTX, 32, 4, 2
        params.n_threads = params.n_threads_batch = 1
        params.kv_unified = unified
        self.targets = self.SEQS + (self.BEYOND if unified else ())
        self.ctx = self.lc.llama_init_from_model(self.llm._model.model, params)
        assert self.ctx
        amb.set_config(self.ctx, amb.PaceConfig(enabled=True, layers=LAYERS, bank_size=M, chunk=CHUNK,
                                                granularity=granularity))
        self.tokens = self.llm.tokenize(TEXT, add_bos=False)
        self.feed(0)
        self.base = {s: self.get(s) for s in self.SEQS}
        self.base.update({s: self.get(s) for s in self.targets if s not in self.SEQS})
        self.sections = {s: AmbSection(self.base[s]) for s in self.SEQS}

    def feed(self, start: int, n: int = 12, seqs=SEQS) -> None:
        items = [(s, start + p, t) for s in seqs for p, t in enumerate(self.tokens[start:start + n])]
        batch = self.lc.llama_batch_init(len(items), 0, 1)
        try:
            for i, (s, pos, tok) in enumerate(items):
                # an output row per sequence: the last layer computes only the rows that have one
                last = i == len(items) - 1 or items[i + 1][0] != s
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, pos, 1, last
                batch.seq_id[i][0] = s
            batch.n_tokens = len(items)
            assert self.lc.llama_decode(self.ctx, batch) == 0
        finally:
            self.lc.llama_batch_free(batch)

    def get(self, seq: int) -> bytes:
        size = self.lc.llama_state_seq_get_size(self.ctx, seq)
        buf = (ctypes.c_uint8 * size)()
        assert self.lc.llama_state_seq_get_data(self.ctx, buf, size, seq) == size
        return bytes(buf)

    def stats(self, seq: int):
        return [self.amb.layer_stats(self.ctx, il, seq) for il in LAYERS]

    def run(self, case: StateCase, target: str = "corpus") -> None:
        data = case.apply(self.base[case.src_seq])
        buf = (ctypes.c_uint8 * max(len(data), 1)).from_buffer_copy(data.ljust(1, b"\0"))
        n = self.lc.llama_state_seq_set_data(self.ctx, buf, len(data), case.dst_seq)
        assert n <= len(data)
        count(target, "loaded" if n == len(data) else "refused")
        assert case.expect in ("", "loaded" if n == len(data) else "refused"), case
        for s in self.SEQS:
            check_stats(self.stats(s))
        if n == len(data) and case.dst_seq in self.SEQS:
            self.feed(12, 4, seqs=(case.dst_seq,))  # continue the restored sequence
            check_stats(self.stats(case.dst_seq))
        # usable: cleared and fed again, both sequences fill their banks
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)
        self.feed(0)
        for s in self.SEQS:
            stats = self.stats(s)
            check_stats(stats)
            assert all(x.slots_used > 0 for x in stats), stats

    def close(self) -> None:
        self.lc.llama_free(self.ctx)


@pytest.fixture(scope="module")
def contexts(tiny_model_path):
    made = {}

    def get(api: str, granularity: str, unified: bool = False):
        key = (api, granularity, unified and api == "seq")
        if key not in made:
            made[key] = (WholeState(tiny_model_path, granularity) if api == "state"
                         else SeqState(tiny_model_path, granularity, unified))
        return made[key]

    yield get
    for ctx in made.values():
        if isinstance(ctx, SeqState):
            ctx.close()


# ---- targets --------------------------------------------------------------------------------------

@SETTINGS
@given(data=st.data())
def test_fuzz_whole_state(contexts, data):
    granularity = data.draw(st.sampled_from(GRANULARITIES), label="granularity")
    target = contexts("state", granularity)
    state = target.base.llama_state
    case = StateCase(granularity=granularity, api="state", **data.draw(mutations(target.section, len(state))))
    record(case)
    target.run(case, "state: Llama.load_state")


@SETTINGS
@given(data=st.data())
def test_fuzz_sequence_state(contexts, data):
    granularity = data.draw(st.sampled_from(GRANULARITIES), label="granularity")
    unified = data.draw(st.booleans(), label="unified")
    target = contexts("seq", granularity, unified)
    src = data.draw(st.sampled_from(SeqState.SEQS), label="src")
    dst = data.draw(st.sampled_from(target.targets), label="dst")
    section = target.sections[src]
    case = StateCase(granularity=granularity, api="seq", src_seq=src, dst_seq=dst, unified=unified,
                     **data.draw(mutations(section, len(target.base[src]))))
    record(case)
    target.run(case, "state: llama_state_seq_set_data")


def test_unmutated_states_load(contexts):
    """The fuzzers' baseline: the saved states load as they are (a fuzzer that only sees refusals
    tests nothing)."""
    for granularity in GRANULARITIES:
        target = contexts("state", granularity)
        target.llm.load_state(target.base)
        target.run(StateCase(granularity=granularity), "baseline")
        for unified in (False, True):
            seq = contexts("seq", granularity, unified)
            for s in seq.targets:
                data = seq.base[s]
                buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
                assert seq.lc.llama_state_seq_set_data(seq.ctx, buf, len(data), s) == len(data)
                seq.run(StateCase(granularity=granularity, api="seq", src_seq=s, dst_seq=s, unified=unified), "baseline")


@pytest.mark.parametrize("path", sorted(CORPUS.glob("state-*.json")), ids=lambda p: p.stem)
def test_state_corpus(contexts, path):
    case = StateCase.from_json(path.read_text())
    record(case)
    contexts(case.api, case.granularity, case.unified).run(case, "corpus replay")
