"""The AMB section that ends a saved llama.cpp state (layout version 2 of cpp/src/pace-amb-memory.cpp),
read independently of the C code: the hardening tests and the state fuzzer edit states through it.
Importable from test modules because tests/conftest.py puts this folder on sys.path."""

from __future__ import annotations

import struct

MAGIC, VERSION = 0x424D4150, 2
HEADER_INTS = 8                   # GGML_AMB_STATE_HEADER: ints before each sequence's case log
ST_N_PENDING, ST_FLAGS = 0, 4     # header fields (cpp/src/pace-amb-layout.h)


class AmbSection:
    def __init__(self, state: bytes):
        self.start = state.rfind(struct.pack("<II", MAGIC, VERSION))
        assert self.start > 0, "no AMB section"
        n_layers, self.n_seq, self.M, self.n_pos = struct.unpack_from("<IIiI", state, self.start + 8)
        pos = self.start + 24
        self.layers = []
        for _ in range(n_layers):
            self.layers.append(struct.unpack_from("<iq", state, pos))
            pos += 12
        self.data = pos
        self.per_seq = [(2 * self.M * n_ff + 3 * self.M + HEADER_INTS + self.n_pos) * 4 for _, n_ff in self.layers]
        self.end = self.data + self.n_seq * sum(self.per_seq) + 8 * self.n_seq
        assert self.end == len(state), "the AMB section must end the state"

    def block(self, layer: int, seq: int) -> int:
        """Byte offset of the bank of sequence `seq` in AMB layer number `layer`."""
        return self.data + sum(self.per_seq[:layer]) * self.n_seq + self.per_seq[layer] * seq

    def offset(self, layer: int, part: str, index: int = 0, seq: int = 0) -> int:
        """Byte offset of entry `index` of a bank's keys, meta (usage, valid, key norms) or state."""
        base = self.block(layer, seq)
        meta = base + 2 * self.M * self.layers[layer][1] * 4
        return {"key": base, "meta": meta, "state": meta + 3 * self.M * 4}[part] + 4 * index

    def positions(self) -> int:
        """Byte offset of the per-sequence absorbed ranges (pos_min, pos_max)."""
        return self.data + self.n_seq * sum(self.per_seq)

    def fields(self):
        """(name, struct format, offset from the section start, count): every field of the section."""
        out = [("magic", "<I", 0, 1), ("version", "<I", 4, 1), ("n_layers", "<I", 8, 1), ("n_seq", "<I", 12, 1),
               ("M", "<i", 16, 1), ("n_pos", "<I", 20, 1)]
        for i in range(len(self.layers)):
            out += [(f"il{i}", "<i", 24 + 12 * i, 1), (f"n_ff{i}", "<q", 28 + 12 * i, 1)]
        for i, (_, n_ff) in enumerate(self.layers):
            for s in range(self.n_seq):
                b = self.block(i, s) - self.start
                meta = b + 2 * self.M * n_ff * 4
                state = meta + 3 * self.M * 4
                out += [(f"keys{i}.{s}", "<f", b, self.M * n_ff), (f"values{i}.{s}", "<f", b + self.M * n_ff * 4, self.M * n_ff),
                        (f"usage{i}.{s}", "<f", meta, self.M), (f"valid{i}.{s}", "<f", meta + 4 * self.M, self.M),
                        (f"knorm{i}.{s}", "<f", meta + 8 * self.M, self.M),
                        (f"header{i}.{s}", "<i", state, HEADER_INTS),
                        (f"cases{i}.{s}", "<i", state + 4 * HEADER_INTS, self.n_pos)]
        pos = self.positions() - self.start
        for s in range(self.n_seq):
            out += [(f"pos_min{s}", "<i", pos + 8 * s, 1), (f"pos_max{s}", "<i", pos + 8 * s + 4, 1)]
        return out
