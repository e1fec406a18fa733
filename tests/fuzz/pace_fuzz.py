"""Shared helpers of the fuzz tests (tests/fuzz): example count, corpus folder, case recording,
GGUF key-value encoding and a tiny GGUF model written from scratch.

The model is a 2-layer Llama with a 261-token byte-level vocabulary and random F32 weights (113 KB,
no torch needed): thousands of metadata variants of it can be written and loaded in minutes, where
the converter's tiny models carry a 128k-token vocabulary (32 MB each). Its key-value section is
encoded here directly, so a variant is "base keys + fuzzed pace.* keys" in front of the same tensor
section, and any GGUF value type can be written (including nested arrays, which gguf-py refuses).

PACE_FUZZ_EXAMPLES sets the examples per hypothesis target (default 50: the fast uninstrumented
subset CI runs; tests/fuzz/run_sanitized.py runs thousands under ASan/UBSan). PACE_FUZZ_CASE_FILE,
when set, receives each case (JSON) before it runs, so a case that kills the process can be found.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

CORPUS = Path(__file__).resolve().parent / "corpus"


def record(case) -> None:
    """Write `case.to_json()` to $PACE_FUZZ_CASE_FILE (if set) before the case runs, and append it
    to $PACE_FUZZ_CASE_LOG (if set)."""
    path = os.environ.get("PACE_FUZZ_CASE_FILE")
    if path:
        with open(path, "w") as f:
            f.write(case.to_json())  # closed before the case runs: survives an abort of the process
    log = os.environ.get("PACE_FUZZ_CASE_LOG")  # every case, in order (cases share a context)
    if log:
        with open(log, "a") as f:
            f.write(case.to_json() + "\n")


# Cases run per target and outcome ("test_fuzz_whole_state": {"loaded": 12, "refused": 38}), written
# to $PACE_FUZZ_STATS at the end of the session (conftest.py) for tests/fuzz/run_sanitized.py.
OUTCOMES: dict[str, dict[str, int]] = {}


def count(target: str, outcome: str) -> None:
    per = OUTCOMES.setdefault(target, {})
    per[outcome] = per.get(outcome, 0) + 1
    write_outcomes()  # at every case: a sanitizer's abort skips the end of the session


def write_outcomes() -> None:
    path = os.environ.get("PACE_FUZZ_STATS")
    if path:
        Path(path).write_text(json.dumps(OUTCOMES, indent=1, sort_keys=True) + "\n")


def fuzz_examples(default: int = 50) -> int:
    """Examples per hypothesis target: $PACE_FUZZ_EXAMPLES, else `default`."""
    value = os.environ.get("PACE_FUZZ_EXAMPLES")
    return max(1, int(value)) if value else default


# ---- GGUF encoding --------------------------------------------------------------------------------

# enum gguf_type
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
SCALAR_FORMATS = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "B",
                  U64: "Q", I64: "q", F64: "d"}
TYPE_NAMES = {U8: "u8", I8: "i8", U16: "u16", I16: "i16", U32: "u32", I32: "i32", F32: "f32", BOOL: "bool",
              STR: "str", ARR: "arr", U64: "u64", I64: "i64", F64: "f64"}


def gguf_string(data: bytes | str) -> bytes:
    data = data.encode() if isinstance(data, str) else data
    return struct.pack("<Q", len(data)) + data


def gguf_value(vtype: int, value) -> bytes:
    """The encoding of a value of GGUF type `vtype` (without the type tag). Arrays: value is
    (item_type, [items]); an item type of ARR nests (which ggml's reader refuses as a whole file)."""
    if vtype == STR:
        return gguf_string(value)
    if vtype == ARR:
        item_type, items = value
        out = struct.pack("<IQ", item_type, len(items))
        if item_type in SCALAR_FORMATS:
            return out + struct.pack(f"<{len(items)}{SCALAR_FORMATS[item_type]}", *items)
        return out + b"".join(gguf_value(item_type, item) for item in items)
    return struct.pack("<" + SCALAR_FORMATS[vtype], value)


def gguf_kv(key: str | bytes, vtype: int, value) -> bytes:
    return gguf_string(key) + struct.pack("<I", vtype) + gguf_value(vtype, value)


# ---- the tiny model -------------------------------------------------------------------------------

N_EMBD, N_HEAD, N_HEAD_KV, N_FF, N_LAYER = 32, 4, 2, 64, 2
ALIGN = 32


def _byte_tokens() -> list[str]:
    """The 256 byte-level BPE tokens (GPT-2's printable mapping of bytes to characters)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


class TinyModel:
    """A GGUF written as header + base keys + extra keys + the fixed tensor section."""

    def __init__(self, base_kv: list[bytes], tensor_info: bytes, tensor_data: bytes, n_tensors: int):
        self.base_kv, self.tensor_info, self.tensor_data, self.n_tensors = base_kv, tensor_info, tensor_data, n_tensors

    def __repr__(self) -> str:  # (hypothesis prints the arguments of a failing example)
        return f"TinyModel({len(self.base_kv)} keys, {self.n_tensors} tensors)"

    def encode(self, extra_kv: list[bytes] = ()) -> bytes:
        kvs = list(self.base_kv) + list(extra_kv)
        head = b"GGUF" + struct.pack("<IQQ", 3, self.n_tensors, len(kvs)) + b"".join(kvs) + self.tensor_info
        return head + b"\0" * (-len(head) % ALIGN) + self.tensor_data

    def write(self, path: Path, extra_kv: list[bytes] = ()) -> Path:
        path.write_bytes(self.encode(extra_kv))
        return path


def make_tiny_model(seed: int = 0) -> TinyModel:
    rng = np.random.default_rng(seed)
    tokens = _byte_tokens() + ["<|endoftext|>"]
    n_vocab = len(tokens)
    space = tokens[ord(" ")]
    merges = [f"{space} t", "h e", f"{space} a", "i n"]
    tokens += [m.replace(" ", "") for m in merges]  # merged tokens must exist
    n_vocab = len(tokens)
    types = [1] * n_vocab
    types[256] = 3  # control
    kv = [
        gguf_kv("general.architecture", STR, "llama"),
        gguf_kv("general.name", STR, "pace-fuzz-tiny"),
        gguf_kv("llama.context_length", U32, 512),
        gguf_kv("llama.embedding_length", U32, N_EMBD),
        gguf_kv("llama.block_count", U32, N_LAYER),
        gguf_kv("llama.feed_forward_length", U32, N_FF),
        gguf_kv("llama.attention.head_count", U32, N_HEAD),
        gguf_kv("llama.attention.head_count_kv", U32, N_HEAD_KV),
        gguf_kv("llama.attention.layer_norm_rms_epsilon", F32, 1e-6),
        gguf_kv("llama.rope.freq_base", F32, 10000.0),
        gguf_kv("llama.vocab_size", U32, n_vocab),
        gguf_kv("general.file_type", U32, 0),
        gguf_kv("tokenizer.ggml.model", STR, "gpt2"),
        gguf_kv("tokenizer.ggml.pre", STR, "default"),
        gguf_kv("tokenizer.ggml.tokens", ARR, (STR, tokens)),
        gguf_kv("tokenizer.ggml.token_type", ARR, (I32, types)),
        gguf_kv("tokenizer.ggml.merges", ARR, (STR, merges)),
        gguf_kv("tokenizer.ggml.bos_token_id", U32, 256),
        gguf_kv("tokenizer.ggml.eos_token_id", U32, 256),
        gguf_kv("tokenizer.ggml.add_bos_token", BOOL, False),
    ]
    head_dim = N_EMBD // N_HEAD
    shapes = {"token_embd.weight": (n_vocab, N_EMBD), "output_norm.weight": (N_EMBD,)}
    for il in range(N_LAYER):
        shapes.update({
            f"blk.{il}.attn_norm.weight": (N_EMBD,),
            f"blk.{il}.attn_q.weight": (N_EMBD, N_EMBD),
            f"blk.{il}.attn_k.weight": (N_HEAD_KV * head_dim, N_EMBD),
            f"blk.{il}.attn_v.weight": (N_HEAD_KV * head_dim, N_EMBD),
            f"blk.{il}.attn_output.weight": (N_EMBD, N_EMBD),
            f"blk.{il}.ffn_norm.weight": (N_EMBD,),
            f"blk.{il}.ffn_gate.weight": (N_FF, N_EMBD),
            f"blk.{il}.ffn_up.weight": (N_FF, N_EMBD),
            f"blk.{il}.ffn_down.weight": (N_EMBD, N_FF),
        })
    info, data = b"", b""
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            arr = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name == "token_embd.weight":
            arr = 0.5 * rng.standard_normal(shape)
        else:
            arr = rng.standard_normal(shape) / np.sqrt(shape[-1])
        raw = arr.astype("<f4").tobytes()
        # numpy shape (rows, cols) is ggml's ne = [cols, rows]
        dims = tuple(reversed(shape))
        info += gguf_string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, 0, len(data))
        data += raw + b"\0" * (-len(raw) % ALIGN)
    return TinyModel(kv, info, data, len(shapes))
