"""Fuzzing the model's pace.* GGUF metadata (cpp/src/pace-amb-params.cpp and llama_pace_gguf_value in
llama-model.cpp): any set of pace.amb.* keys, of any GGUF type (scalars, strings, arrays of any item
type, nested arrays), with any values (huge, negative, NaN/inf, long arrays), plus unknown pace.*
keys. Loading with pace=False must always work (with a PaceMetadataWarning exactly when the keys
are invalid); pace=None must give exactly the settings an independent Python model of the rules
predicts, or raise PaceConfigError when that model says the keys are invalid. Valid enabled settings
then run the kernel (a few decoded tokens). Files GGUF's own reader refuses (nested arrays) must
give ModelFileError. Cases that once failed live in corpus/meta-*.json and are replayed every run.

The model is pace_fuzz's tiny one (113 KB): a variant is written and loaded twice per example.
"""

from __future__ import annotations

import json
import math
import struct
import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pace_fuzz import (  # noqa: E402  (tests/fuzz/pace_fuzz.py)
    ARR, BOOL, CORPUS, F32, F64, I8, I16, I32, I64, N_LAYER, STR, U8, U16, U32, U64, count, fuzz_examples, gguf_kv,
    record,
)

SETTINGS = settings(max_examples=fuzz_examples(), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

INT_TYPES = {U8: (0, 2**8 - 1), I8: (-(2**7), 2**7 - 1), U16: (0, 2**16 - 1), I16: (-(2**15), 2**15 - 1),
             U32: (0, 2**32 - 1), I32: (-(2**31), 2**31 - 1), U64: (0, 2**64 - 1), I64: (-(2**63), 2**63 - 1)}
SCALAR_TYPES = list(INT_TYPES) + [F32, F64, BOOL, STR]
ALL_TYPES = SCALAR_TYPES + [ARR]

BOOL_KEYS = ("enabled",)
INT_KEYS = ("bank_size", "topk", "negk", "store_topk", "chunk")
FLOAT_KEYS = ("theta_high", "theta_low", "alpha", "w_high", "w_mid", "lambda", "momentum")
CHOICE_KEYS = {"mode": ("code", "paper"), "granularity": ("ubatch", "prompt")}
KEYS = BOOL_KEYS + ("layers",) + INT_KEYS + FLOAT_KEYS + tuple(CHOICE_KEYS)
FIELD = {"lambda": "negative_weight"}  # PaceConfig's name of a key, where it differs

# Strings that are not UTF-8, or that an error message cuts in the middle of a UTF-8 character (it
# quotes 40 bytes), once made the model unloadable even with pace=False (corpus/meta-utf8-*.json,
# fixed in pace-amb-params.cpp and pace_gguf.amb.last_error). False limits strings to ASCII.
NON_UTF8 = True


# ---- generated metadata ---------------------------------------------------------------------------

@dataclass
class MetaCase:
    """pace.* keys to add to the tiny model: [key, GGUF type, value] with value as gguf_value takes
    it (arrays: [item type, items]; strings and binary values as "hex:..."): what corpus files hold."""

    keys: list = field(default_factory=list)
    note: str = ""

    def encoded(self) -> list[bytes]:
        return [gguf_kv(_bytes(key), vtype, _decode(vtype, value)) for key, vtype, value in self.keys]

    def to_json(self) -> str:
        return json.dumps({"keys": [[_text(k), t, _encode(t, v)] for k, t, v in self.keys], "note": self.note},
                          sort_keys=True, allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> "MetaCase":
        d = json.loads(text)
        return cls(keys=[[k, t, _decode(t, v)] for k, t, v in d["keys"]], note=d.get("note", ""))


def _bytes(s) -> bytes:
    if isinstance(s, bytes):
        return s
    return bytes.fromhex(s[4:]) if s.startswith("hex:") else s.encode()


def _text(s) -> str:
    if isinstance(s, bytes):
        try:
            return s.decode()
        except UnicodeDecodeError:
            return "hex:" + s.hex()
    return s


def _encode(vtype, value):
    if vtype == STR:
        return _text(value)
    if vtype == ARR:
        return [value[0], [_encode(value[0], v) for v in value[1]]]
    return value


def _decode(vtype, value):
    if vtype == STR:
        return _bytes(value)
    if vtype == ARR:
        return [value[0], [_decode(value[0], v) for v in value[1]]]
    return value


def _utf8_text(max_size=60):
    return st.text(st.characters(codec="utf-8" if NON_UTF8 else "ascii"), max_size=max_size).map(str.encode)


def strings():
    special = [b"code", b"paper", b"ubatch", b"prompt", b"", b"CODE", b" code", b"code ", b"code\0", b"code\0paper",
               b"50", b"0.5", b"[0, 1]", b"true", b"x" * 5000]
    out = st.sampled_from(special) | _utf8_text()
    if NON_UTF8:
        out = out | st.binary(max_size=60) | st.sampled_from([b"a" + "\u00e9".encode() * 40, b"\xff", b"code\xff"])
    return out


def value_of(vtype: int, depth: int = 0):
    """A strategy for a value of GGUF type `vtype` (interesting values first)."""
    if vtype in INT_TYPES:
        lo, hi = INT_TYPES[vtype]
        edges = [v for v in (0, 1, 2, 3, 5, 8, 100, 512, 513, 4096, 4097, 65536, 65537, 2**31 - 1, 2**31, 2**32 + 1,
                             -1, -(2**31), -(2**31) - 1, lo, hi) if lo <= v <= hi]
        return st.sampled_from(edges) | st.integers(lo, hi)
    if vtype in (F32, F64):
        edges = [0.0, -0.0, 1.0, 0.5, 0.25, 0.75, 1.0000001, -1e-30, math.nan, math.inf, -math.inf, 1e-45,
                 3.4028234663852886e38, 1e39 if vtype == F64 else 1.0, 1e300 if vtype == F64 else 0.2]
        return st.sampled_from(edges) | st.floats(width=32 if vtype == F32 else 64)
    if vtype == BOOL:
        return st.sampled_from([0, 1]) | st.integers(0, 255)  # any byte: ggml reads it as != 0
    if vtype == STR:
        return strings()
    # arrays: any item type; nested arrays only at depth 0 (GGUF's reader refuses them anyway)
    item_types = SCALAR_TYPES + ([ARR] if depth == 0 else [])
    return st.sampled_from(item_types).flatmap(
        lambda it: st.tuples(st.just(it), array_items(it, depth + 1)).map(list))


def array_items(item_type: int, depth: int):
    items = value_of(item_type, depth)
    if item_type in INT_TYPES:
        lo, hi = INT_TYPES[item_type]
        layer_like = st.lists(st.integers(max(lo, -2), min(hi, N_LAYER + 1)), max_size=4)
        sizes = st.sampled_from([0, 511, 512, 513, 100_000])
        big = sizes.map(lambda n: [i % N_LAYER for i in range(n)])
        return layer_like | st.lists(items, max_size=8) | big
    if item_type == STR:
        return st.lists(items, max_size=4)
    return st.lists(items, max_size=8 if depth < 2 else 2)


def right_value(name: str):
    """A value of the key's own type (often valid)."""
    if name in BOOL_KEYS:
        return st.tuples(st.just(BOOL), st.sampled_from([1, 1, 0]) | st.integers(0, 255))
    if name == "layers":
        item = st.sampled_from(list(INT_TYPES))
        return st.tuples(st.just(ARR), item.flatmap(lambda it: st.tuples(
            st.just(it), st.lists(st.integers(0, N_LAYER - 1), max_size=3) | array_items(it, 1)).map(list)))
    if name in INT_KEYS:
        small = {"bank_size": st.integers(1, 16), "chunk": st.integers(1, 16)}.get(name, st.integers(0, 12))
        return st.sampled_from(list(INT_TYPES)).flatmap(
            lambda t: st.tuples(st.just(t), small.filter(lambda v: INT_TYPES[t][0] <= v <= INT_TYPES[t][1])
                                | value_of(t)))
    if name in FLOAT_KEYS:
        return st.sampled_from([F32, F64]).flatmap(
            lambda t: st.tuples(st.just(t), st.floats(0, 1, width=32) | value_of(t)))
    return st.tuples(st.just(STR), st.sampled_from([c.encode() for c in CHOICE_KEYS[name]]) | strings())


@st.composite
def any_value(draw):
    vtype = draw(st.sampled_from(ALL_TYPES))
    return vtype, draw(value_of(vtype))


def valid_value(name: str):
    """A value the rules accept on its own (thetas may still be out of order)."""
    def int_typed(values):
        return st.tuples(st.sampled_from([I32, U32, I64, U64, I16, U16]), values).filter(
            lambda tv: INT_TYPES[tv[0]][0] <= tv[1] <= INT_TYPES[tv[0]][1])
    unit = st.sampled_from([0.0, 1.0, 0.5, 0.25, 0.75, 1e-45, 0.99999994]) | st.floats(0, 1, width=32)
    if name == "enabled":
        return st.just((BOOL, 1))
    if name == "layers":
        return st.sampled_from([U8, I8, U16, I16, U32, I32, U64, I64]).flatmap(lambda t: st.tuples(
            st.just(ARR), st.tuples(st.just(t), st.permutations(list(range(N_LAYER))).flatmap(
                lambda p: st.integers(1, N_LAYER).map(lambda n: p[:n]))).map(list)))
    if name == "bank_size":
        return int_typed(st.integers(1, 16) | st.sampled_from([1, 4095, 4096]))
    if name in ("topk", "store_topk"):
        return int_typed(st.integers(1, 20) | st.sampled_from([2**31 - 1, 2**16]))
    if name == "negk":
        return int_typed(st.integers(0, 20) | st.sampled_from([2**31 - 1, 2**16]))
    if name == "chunk":
        return int_typed(st.integers(1, 16) | st.sampled_from([1, 65535, 65536]))
    if name in ("theta_high", "theta_low", "alpha", "momentum"):
        return st.tuples(st.sampled_from([F32, F64]), unit)
    if name in ("w_high", "w_mid", "lambda"):
        return st.tuples(st.sampled_from([F32, F64]), unit | st.floats(width=32, allow_nan=False, allow_infinity=False))
    return st.tuples(st.just(STR), st.sampled_from([c.encode() for c in CHOICE_KEYS[name]]))


@st.composite
def meta_cases(draw) -> MetaCase:
    """Half of the cases: every key valid on its own, the AMB enabled (the kernel then runs on the
    settings); the rest: a random subset of keys, each of its own type (often valid) or any type."""
    keys = []
    if draw(st.booleans()):
        names = ["enabled", "layers"] + draw(st.lists(st.sampled_from(KEYS[2:]), unique=True))
        for name in names:
            vtype, value = draw(valid_value(name))
            keys.append([f"pace.amb.{name}", vtype, value])
    else:
        for name in draw(st.lists(st.sampled_from(KEYS), unique=True, max_size=len(KEYS))):
            kind = draw(st.integers(0, 3))
            vtype, value = draw(valid_value(name) if kind == 0 else right_value(name) if kind < 3 else any_value())
            keys.append([f"pace.amb.{name}", vtype, value])
    # keys llama_pace_gguf_value renders but nothing reads: unknown pace.amb.*, pace.ce.*, odd names
    others = st.sampled_from(["pace.amb.unknown", "pace.ce.experts", "pace.ce.objective", "pace.", "pace.amb.",
                              "pace.amb.layers.0", "pace.amb.enabled ", "pace.\u00e9t\u00e9"])
    for name in draw(st.lists(others, unique=True, max_size=3)):
        vtype, value = draw(any_value())
        keys.append([name, vtype, value])
    draw(st.randoms()).shuffle(keys)
    return MetaCase(keys=keys)


# ---- the rules, independently ---------------------------------------------------------------------

class Invalid(Exception):
    pass


def _int32(vtype, value) -> int:
    if vtype not in INT_TYPES or not -(2**31) <= value < 2**31:
        raise Invalid
    return value


def _float(vtype, value) -> float:
    if vtype not in (F32, F64):
        raise Invalid
    with np.errstate(over="ignore"):
        f = float(np.float32(value))
    if not (math.isfinite(value) and math.isfinite(f)):
        raise Invalid
    return f


def expected_config(case: MetaCase):
    """The PaceConfig fields the keys give, or None when they are invalid (pace-amb-params.cpp's rules)."""
    from pace_gguf.amb import PaceConfig

    given_keys = {_bytes(k): (t, v) for k, t, v in case.keys}
    cfg = {k: float(np.float32(v)) if isinstance(v, float) else v for k, v in PaceConfig().__dict__.items()}
    try:
        for name in KEYS:
            key = f"pace.amb.{name}".encode()
            if key not in given_keys:
                continue
            vtype, value = given_keys[key]
            if name in BOOL_KEYS:
                if vtype != BOOL:
                    raise Invalid
                cfg["enabled"] = value != 0
            elif name == "layers":
                if vtype != ARR or value[0] not in INT_TYPES or len(value[1]) > 512:
                    raise Invalid
                cfg["layers"] = tuple(_int32(value[0], v) for v in value[1])
            elif name in INT_KEYS:
                cfg[name] = _int32(vtype, value)
            elif name in FLOAT_KEYS:
                cfg[FIELD.get(name, name)] = _float(vtype, value)
            else:
                text = value.split(b"\0")[0] if vtype == STR else None  # ggml hands C strings on
                if text not in [c.encode() for c in CHOICE_KEYS[name]]:
                    raise Invalid
                cfg[name] = text.decode()
        c = cfg
        ok = (1 <= c["bank_size"] <= 4096 and c["topk"] >= 1 and c["store_topk"] >= 1 and c["negk"] >= 0
              and 1 <= c["chunk"] <= 65536 and not (c["enabled"] and not c["layers"])
              and all(0.0 <= c[k] <= 1.0 for k in ("theta_high", "theta_low", "alpha", "momentum"))
              and c["theta_low"] <= c["theta_high"]
              and all(0 <= il < N_LAYER for il in c["layers"]) and len(set(c["layers"])) == len(c["layers"]))
        return c if ok else None
    except Invalid:
        return None


def gguf_refuses(case: MetaCase) -> bool:
    """Nested arrays: ggml's GGUF reader refuses the whole file."""
    return any(t == ARR and v[0] == ARR for _, t, v in case.keys)


# ---- the check ------------------------------------------------------------------------------------

def run_case(folder, tiny_model, case: MetaCase, target: str) -> None:
    from pace_gguf import Llama
    from pace_gguf.amb import PaceConfigError, PaceMetadataWarning
    from pace_gguf.errors import ModelFileError

    record(case)
    path = tiny_model.write(folder / "meta.gguf", case.encoded())
    kwargs = {"n_ctx": 64, "n_batch": 8, "n_ubatch": 4, "n_threads": 1, "n_threads_batch": 1, "verbose": False}
    if gguf_refuses(case):
        for pace in (False, None):
            with pytest.raises(ModelFileError):
                Llama(model_path=str(path), pace=pace, **kwargs)
        count(target, "file refused")
        return
    want = expected_config(case)
    # pace=False: always loads, AMB off, warns exactly when the keys are invalid
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        llm = Llama(model_path=str(path), pace=False, **kwargs)
    try:
        warned = [w for w in caught if issubclass(w.category, PaceMetadataWarning)]
        assert bool(warned) == (want is None), (warned, want)
        assert not llm.amb_enabled
        llm.eval(llm.tokenize(b"Hello there", add_bos=False))
    finally:
        llm.close()
    # pace=None: the model's own settings, exactly, or PaceConfigError
    if want is None:
        with pytest.raises(PaceConfigError) as refused:
            Llama(model_path=str(path), pace=None, **kwargs)
        assert 0 < len(str(refused.value)) < 600, str(refused.value)
        count(target, "refused")
        return
    llm = Llama(model_path=str(path), pace=None, **kwargs)
    try:
        got = llm.pace.__dict__
        for key, value in want.items():
            if isinstance(value, float):
                assert got[key] == value or (value == 0.0 and got[key] == 0.0), (key, got[key], value)
            else:
                assert got[key] == value, (key, got[key], value)
        tokens = llm.tokenize(b"The theater in Athens hosted plays.", add_bos=False)
        llm.eval(tokens)  # with the AMB on: the kernel runs on the fuzzed settings
        # (memory_stats() of a context with layers but the AMB off raises "layer 0 has no AMB bank")
        for stats in (llm.memory_stats() if want["enabled"] else {}).values():
            assert 0 <= stats.slots_used <= stats.bank_size == want["bank_size"], stats
            assert stats.high + stats.mid + stats.low >= 1, stats
        count(target, "enabled" if want["enabled"] else "valid, off")
    finally:
        llm.close()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("meta")


@SETTINGS
@given(case=meta_cases())
def test_fuzz_pace_metadata(folder, tiny_model, case):
    run_case(folder, tiny_model, case, "metadata: pace.* keys")


@pytest.mark.parametrize("path", sorted(CORPUS.glob("meta-*.json")), ids=lambda p: p.stem)
def test_metadata_corpus(folder, tiny_model, path):
    run_case(folder, tiny_model, MetaCase.from_json(path.read_text()), "corpus replay")


def test_roundtrip_of_the_case_format():
    case = MetaCase(keys=[["pace.amb.mode", STR, b"\xffcode"], ["pace.amb.layers", ARR, [ARR, [[I32, [1, 2]]]]],
                          ["pace.amb.alpha", F32, math.nan]])
    again = MetaCase.from_json(case.to_json())
    assert again.encoded() == case.encoded()
    assert struct.unpack_from("<Q", again.encoded()[0])[0] == len("pace.amb.mode")
