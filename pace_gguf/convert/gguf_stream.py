"""Streaming GGUF reading and writing: header parsed with struct, tensor data read one tensor at a
time, output written one tensor at a time (peak memory: the largest tensor plus a constant).

Why not gguf-py's GGUFReader/GGUFWriter: the reader builds a numpy view per string and takes ~20 s
just to open a file with a 150k-token vocabulary, and copying its fields through GGUFWriter decodes
and re-encodes every one. Here the metadata of the source is copied as raw bytes and only pace.*
keys are added or replaced. Type sizes come from gguf-py (GGML_QUANT_SIZES), the format from the
GGUF spec (v3: header, key/values, tensor infos, aligned tensor data).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConvertError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# GGUF value types
T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL, T_STRING, T_ARRAY = range(10)
T_UINT64, T_INT64, T_FLOAT64 = 10, 11, 12
_SCALAR_FMT = {T_UINT8: "B", T_INT8: "b", T_UINT16: "H", T_INT16: "h", T_UINT32: "I", T_INT32: "i",
               T_FLOAT32: "f", T_BOOL: "?", T_UINT64: "Q", T_INT64: "q", T_FLOAT64: "d"}
# ggml types whose elements can be moved individually (the permutation of ffn_down's columns)
F32, F16, BF16 = 0, 1, 30
ELEMENT_SIZE = {F32: 4, F16: 2, BF16: 2}


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]   # ggml order: ne0 (contiguous) first
    type: int                # ggml_type
    offset: int              # relative to the data section
    nbytes: int

    @property
    def rows(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) if len(self.shape) > 1 else 1


@dataclass
class GGUFSource:
    """A parsed GGUF file: metadata (raw bytes + decoded values); tensor data is read on demand."""
    path: Path
    version: int
    kv_raw: dict[str, bytes]            # key -> the key/value record exactly as in the file
    kv: dict[str, object]               # key -> decoded value (arrays of strings included)
    tensors: list[TensorInfo]
    alignment: int
    data_start: int

    def raw(self, t: TensorInfo) -> np.ndarray:
        """The tensor's bytes, read into a fresh buffer (freed when the caller drops it).

        Read, not a view of a memory map: pages of a mapped file that were touched stay in the
        process's resident set until the kernel needs the memory, so streaming a 15 GB file
        through a map shows up as a 15 GB peak RSS. Plain reads go through the page cache only."""
        return next(self.raw_chunks(t, max(t.nbytes, 1)), np.empty(0, dtype=np.uint8))

    def raw_chunks(self, t: TensorInfo, chunk_bytes: int = 64 << 20):
        """The tensor's bytes as successive buffers of at most `chunk_bytes` (for plain copies:
        memory bounded by the chunk, not the tensor)."""
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.data_start + t.offset)
            for start in range(0, t.nbytes, chunk_bytes):
                buf = np.empty(min(chunk_bytes, t.nbytes - start), dtype=np.uint8)
                if f.readinto(memoryview(buf)) != buf.nbytes:
                    raise ConvertError(f"{self.path} is truncated: {t.name} ends past the end of the file")
                yield buf

    def tensor(self, name: str) -> TensorInfo | None:
        return self._by_name.get(name)

    def __post_init__(self):
        self._by_name = {t.name: t for t in self.tensors}


def type_nbytes(ggml_type: int, shape) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType  # noqa: PLC0415

    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        raise ConvertError(f"unknown ggml tensor type {ggml_type}") from None
    n = int(np.prod(shape, dtype=np.int64))
    return n // block * size


def type_name(ggml_type: int) -> str:
    from gguf import GGMLQuantizationType  # noqa: PLC0415

    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"type{ggml_type}"


class _Cursor:
    def __init__(self, data, path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, fmt: str):
        try:
            vals = struct.unpack_from("<" + fmt, self.data, self.pos)
        except struct.error:
            raise ConvertError(f"{self.path} is truncated or corrupt: its GGUF header ends early") from None
        self.pos += struct.calcsize("<" + fmt)
        return vals if len(vals) > 1 else vals[0]

    def string(self) -> str:
        n = self.take("Q")
        if self.pos + n > len(self.data):
            raise ConvertError(f"{self.path} is truncated or corrupt: its GGUF header ends early")
        s = bytes(self.data[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def value(self, kind: int):
        if kind == T_STRING:
            return self.string()
        if kind == T_ARRAY:
            sub, n = self.take("I"), self.take("Q")
            if sub in _SCALAR_FMT:
                fmt = f"{n}{_SCALAR_FMT[sub]}"
                if self.pos + struct.calcsize("<" + fmt) > len(self.data):
                    raise ConvertError(f"{self.path} is truncated or corrupt: its GGUF header ends early")
                arr = np.frombuffer(self.data, dtype="<" + _SCALAR_FMT[sub], count=n, offset=self.pos)
                self.pos += arr.nbytes
                return arr.tolist()
            return [self.value(sub) for _ in range(n)]
        if kind not in _SCALAR_FMT:
            raise ConvertError(f"{self.path} is corrupt: unknown GGUF value type {kind}")
        return self.take(_SCALAR_FMT[kind])


def read_gguf(path) -> GGUFSource:
    """Parse a GGUF file; raises ConvertError on a missing, non-GGUF, truncated or corrupt file."""
    source = read_gguf_header(path)
    size = source.path.stat().st_size
    need = max((source.data_start + t.offset + t.nbytes for t in source.tensors), default=source.data_start)
    if size < need:
        raise ConvertError(f"{source.path} is truncated: its tensors need {need:,} bytes but the file has {size:,}")
    return source


def read_gguf_header(path) -> GGUFSource:
    """Parse a GGUF file's header (metadata and tensor infos) without checking that its tensor data
    is all there: a vocab-only GGUF of llama.cpp ends unpadded, before its empty data section."""
    path = Path(path)
    if not path.is_file():                          # (a FIFO or a device could block the reads)
        raise ConvertError(f"{path} is not a regular file" if path.exists() else f"input not found: {path}")
    size = path.stat().st_size
    if size < 24:
        raise ConvertError(f"{path} is not a GGUF file (only {size} bytes)")
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    if bytes(mm[:4]) != GGUF_MAGIC:
        raise ConvertError(f"{path} is not a GGUF file (it starts with {bytes(mm[:4])!r})")
    cur = _Cursor(memoryview(mm), path)          # slices of a memoryview are cheap, of a memmap not
    cur.pos = 4
    version, n_tensors, n_kv = cur.take("I"), cur.take("Q"), cur.take("Q")
    if version < 2:
        raise ConvertError(f"{path} is GGUF version {version}; versions 2 and 3 are supported")
    kv_raw, kv = {}, {}
    for _ in range(n_kv):
        start = cur.pos
        key = cur.string()
        kv[key] = cur.value(cur.take("I"))
        kv_raw[key] = bytes(cur.data[start:cur.pos])
    tensors = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.take("I")
        shape = tuple(int(cur.take("Q")) for _ in range(n_dims))
        ttype, offset = cur.take("I"), cur.take("Q")
        tensors.append(TensorInfo(name, shape, ttype, offset, type_nbytes(ttype, shape)))
    alignment = int(kv.get("general.alignment", DEFAULT_ALIGNMENT))
    data_start = _align(cur.pos, alignment)
    del cur, mm                    # only the header was touched; tensor data is read on demand
    return GGUFSource(path, version, kv_raw, kv, tensors, alignment, data_start)


def _align(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


# ------------------------------------------------------------------------------------ writing

def _pack_string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def pack_kv(key: str, value) -> bytes:
    """One key/value record. Python types map to GGUF types: bool -> bool, int -> int32,
    float -> float32, str -> string, list[int] -> int32 array, list[float] -> float32 array.
    Wrap in (gguf value type, value) to force another scalar type, e.g. (T_UINT32, 7)."""
    head = _pack_string(key)
    if isinstance(value, tuple):
        kind, value = value
        return head + struct.pack("<I", kind) + struct.pack("<" + _SCALAR_FMT[kind], value)
    if isinstance(value, bool):
        return head + struct.pack("<I?", T_BOOL, value)
    if isinstance(value, int):
        return head + struct.pack("<Ii", T_INT32, value)
    if isinstance(value, float):
        return head + struct.pack("<If", T_FLOAT32, value)
    if isinstance(value, str):
        return head + struct.pack("<I", T_STRING) + _pack_string(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in items):
            return head + struct.pack("<IIQ", T_ARRAY, T_INT32, len(items)) + np.asarray(items, "<i4").tobytes()
        return head + struct.pack("<IIQ", T_ARRAY, T_FLOAT32, len(items)) + np.asarray(items, "<f4").tobytes()
    raise TypeError(f"cannot store {key}={value!r} in GGUF")


@dataclass
class OutTensor:
    name: str
    shape: tuple[int, ...]
    type: int


def write_gguf(dst, src: GGUFSource, new_kv: dict[str, object], drop_prefixes: tuple[str, ...],
               out_tensors: list[OutTensor], produce, progress=None) -> None:
    """Write a GGUF to `dst`: the source's metadata minus keys starting with `drop_prefixes`, plus
    `new_kv`; tensor infos from `out_tensors`; then, one tensor at a time, `produce(name)` -> bytes
    (or an array, or an iterator of arrays to be written in turn) of exactly the announced size.
    `progress(name, nbytes)` after each tensor."""
    records = [raw for key, raw in src.kv_raw.items() if not key.startswith(drop_prefixes) and key not in new_kv]
    records += [pack_kv(k, v) for k, v in new_kv.items()]
    align = src.alignment
    infos, offset, sizes = [], 0, []
    for t in out_tensors:
        nbytes = type_nbytes(t.type, t.shape)
        infos.append(_pack_string(t.name) + struct.pack("<I", len(t.shape))
                     + struct.pack(f"<{len(t.shape)}Q", *t.shape) + struct.pack("<IQ", t.type, offset))
        sizes.append(nbytes)
        offset = _align(offset + nbytes, align)
    with open(dst, "wb") as f:
        f.write(GGUF_MAGIC + struct.pack("<IQQ", 3, len(out_tensors), len(records)))
        for rec in records:
            f.write(rec)
        for info in infos:
            f.write(info)
        f.write(b"\0" * (_align(f.tell(), align) - f.tell()))
        for t, nbytes in zip(out_tensors, sizes):
            data = produce(t.name)
            written = 0
            for piece in data if isinstance(data, Iterator) else (data,):
                # memoryview of a contiguous array: written without another copy
                view = memoryview(np.ascontiguousarray(piece)).cast("B")
                f.write(view)
                written += view.nbytes
            if written != nbytes:
                raise RuntimeError(f"{t.name}: produced {written} bytes, expected {nbytes}")
            f.write(b"\0" * (_align(nbytes, align) - nbytes))
            if progress:
                progress(t.name, nbytes)
