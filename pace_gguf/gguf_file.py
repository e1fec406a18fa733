"""GGUF files, read and written through ggml's own GGUF API (gguf.h, the code llama.cpp loads with).

* `check_gguf`: a model file is checked before llama.cpp loads it. llama.cpp reports a missing,
  foreign or truncated file as a generic "failed to load model"; here each case gets its own
  message naming the file and what is wrong with it.
* `read_gguf`: metadata (decoded) and tensor infos; tensor data is read on demand, one tensor at a
  time, so the converter's memory stays at the largest tensor.
* `write_gguf`: a GGUF with the tensor infos of a source file, its metadata with keys removed and
  added, and tensor data streamed from the caller.

ggml's reader is fast (a 150k-token vocabulary parses in milliseconds where gguf-py's pure-Python
GGUFReader takes seconds) and validates the header thoroughly; its writer lays the file out as the
reader expects. Only the tensor data passes through Python.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

from . import _bindings
from .errors import ModelFileError

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class GGUFSummary:
    path: Path
    size: int
    n_tensors: int
    architecture: str | None


def _read_magic(path: Path) -> bytes:
    """Return the first 4 bytes, turning every file-system problem into a ModelFileError."""
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a GGUF file")
    if not path.is_file():  # a FIFO or a device: opening or reading it could block forever
        raise ModelFileError(f"{path} is not a regular file, so it cannot be a GGUF model")
    try:
        with open(path, "rb") as f:
            return f.read(4)
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror or exc}") from exc


@contextmanager
def gguf_header(path: Path):
    """ggml's GGUF context of the file's header (no tensor data read), read with _bindings.api()'s
    gguf_* functions and freed after the block; ModelFileError if ggml cannot parse it."""
    lib = _bindings.api()
    # ggml logs why a file is not valid GGUF: silenced, as pace-gguf says it in its own words
    with _bindings.native_log_silenced():
        ctx = lib.gguf_init_from_file(os.fsencode(path), _bindings.GGUFInitParams(True, None))
    if not ctx:
        raise ModelFileError(f"{path} is not a valid GGUF file: its header is truncated or corrupt")
    try:
        yield ctx
    finally:
        lib.gguf_free(ctx)


# Counts llama.cpp asserts on (llama-hparams.h's LLAMA_MAX_LAYERS and LLAMA_MAX_EXPERTS) instead of
# reporting: an assert ends the process silently.
_COUNT_LIMITS = {"block_count": 512, "expert_count": 1024}
# GGUF scalar types -> numpy (gguf-py's table)
_SCALARS = GGUFReader.gguf_scalar_to_np


def _check_counts(source: GGUFFile) -> None:
    arch = source.architecture
    for name, limit in _COUNT_LIMITS.items():
        value = source.kv.get(f"{arch}.{name}") if arch else None
        if not isinstance(value, int) or isinstance(value, bool):
            continue  # absent, or not an integer: llama.cpp reports that itself
        if not 0 <= value <= limit:
            raise ModelFileError(f"{source.path} is not a usable model: {arch}.{name} is {value}, "
                                 f"llama.cpp supports at most {limit}")


def _check_complete(source: GGUFFile) -> int:
    """The file's size; ModelFileError if it is shorter than its tensors."""
    size = source.path.stat().st_size
    need = max((source.data_start + t.offset + t.nbytes for t in source.tensors), default=source.data_start)
    if size < need:
        raise ModelFileError(f"{source.path} is truncated: its tensors need {need:,} bytes but the file has {size:,}")
    return size


def read_model(path: str | Path) -> GGUFFile:
    """The header of a GGUF file llama.cpp can open: complete, with no layer or expert count that
    llama.cpp would assert on; ModelFileError otherwise."""
    source = read_gguf_header(path)
    _check_counts(source)
    _check_complete(source)
    return source


def check_gguf(path: str | Path) -> GGUFSummary:
    """Validate that `path` is a complete GGUF file llama.cpp can open; raise ModelFileError otherwise."""
    source = read_model(path)
    return GGUFSummary(path=source.path, size=source.path.stat().st_size, n_tensors=len(source.tensors),
                       architecture=source.architecture)


# ------------------------------------------------------------------------------------- reading

def _scalars(address: int, kind: int, n: int) -> np.ndarray:
    dtype = np.dtype(_SCALARS[GGUFValueType(kind)]).newbyteorder("<")
    return np.frombuffer((ctypes.c_char * (n * dtype.itemsize)).from_address(address), dtype=dtype).copy()


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _strings(lib: SimpleNamespace, ctx, key: int) -> list[str]:
    return [_text(lib.gguf_get_arr_str(ctx, key, i)) for i in range(lib.gguf_get_arr_n(ctx, key))]


class StringArray(Sequence):
    """A string array of a GGUF header (a vocabulary, its merges), decoded on first use: the
    250k tokens of Gemma take most of a second through ggml's API, and most readers only need
    the metadata around them, or the length."""

    def __init__(self, path: Path, key: str, n: int):
        self._path, self._key, self._n = path, key, n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        return self._items[i]

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"StringArray({self._key!r}, {self._n} strings)"

    @cached_property
    def _items(self) -> list[str]:
        lib = _bindings.api()
        with gguf_header(self._path) as ctx:
            key = lib.gguf_find_key(ctx, self._key.encode())
            items = _strings(lib, ctx, key) if key >= 0 else []
        if len(items) != self._n:
            raise ModelFileError(f"{self._path} changed while it was read ({self._key})")
        return items


def _value(lib: SimpleNamespace, ctx, key: int, path: Path):
    """Key `key`'s value as Python: int, float, bool, str, a list of numbers, or a StringArray
    (decoded from `path` on first use)."""
    kind = lib.gguf_get_kv_type(ctx, key)
    if kind == GGUFValueType.STRING:
        return _text(lib.gguf_get_val_str(ctx, key))
    if kind != GGUFValueType.ARRAY:
        return _scalars(lib.gguf_get_val_data(ctx, key), kind, 1)[0].item()
    n, item = lib.gguf_get_arr_n(ctx, key), lib.gguf_get_arr_type(ctx, key)
    if item == GGUFValueType.STRING:
        return StringArray(path, _text(lib.gguf_get_key(ctx, key)), n)
    return _scalars(lib.gguf_get_arr_data(ctx, key), item, n).tolist() if n else []


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]   # ggml order: ne0 (contiguous) first
    type: int                # ggml_type
    offset: int              # relative to the data section
    nbytes: int


@dataclass
class GGUFFile:
    """A GGUF file's metadata (decoded) and tensor infos; tensor data is read on demand."""
    path: Path
    kv: dict[str, object]
    tensors: list[TensorInfo]
    data_start: int
    _by_name: dict[str, TensorInfo] = field(init=False, repr=False)

    def __post_init__(self):
        self._by_name = {t.name: t for t in self.tensors}

    def tensor(self, name: str) -> TensorInfo | None:
        return self._by_name.get(name)

    @property
    def architecture(self) -> str | None:
        arch = self.kv.get("general.architecture")
        return arch if isinstance(arch, str) else None

    def raw(self, t: TensorInfo) -> np.ndarray:
        """The tensor's bytes, read into a fresh buffer (freed when the caller drops it).

        Read, not a view of a memory map: pages of a mapped file that were touched stay in the
        process's resident set until the kernel needs the memory, so streaming a 15 GB file
        through a map shows up as a 15 GB peak RSS. Plain reads go through the page cache only."""
        return next(self.raw_chunks(t, max(t.nbytes, 1)), np.empty(0, dtype=np.uint8))

    def raw_chunks(self, t: TensorInfo, chunk_bytes: int = 64 << 20) -> Iterator[np.ndarray]:
        """The tensor's bytes as successive buffers of at most `chunk_bytes` (for plain copies:
        memory bounded by the chunk, not the tensor)."""
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.data_start + t.offset)
            for start in range(0, t.nbytes, chunk_bytes):
                buf = np.empty(min(chunk_bytes, t.nbytes - start), dtype=np.uint8)
                if f.readinto(memoryview(buf)) != buf.nbytes:
                    raise ModelFileError(f"{self.path} is truncated: {t.name} ends past the end of the file")
                yield buf


def _tensor_info(lib: SimpleNamespace, ctx, i: int) -> TensorInfo:
    ne = lib.gguf_get_tensor_ne(ctx, i)
    n_dims = max([d + 1 for d in range(4) if ne[d] != 1], default=1)
    return TensorInfo(_text(lib.gguf_get_tensor_name(ctx, i)), tuple(int(ne[d]) for d in range(n_dims)),
                      lib.gguf_get_tensor_type(ctx, i), lib.gguf_get_tensor_offset(ctx, i),
                      lib.gguf_get_tensor_size(ctx, i))


def read_gguf_header(path: str | Path) -> GGUFFile:
    """A GGUF file's metadata and tensor infos, without checking that its tensor data is all there
    (a vocab-only GGUF of llama.cpp ends before its empty data section)."""
    path = Path(path).expanduser()
    magic = _read_magic(path)
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"{path} is not a GGUF file (it starts with {magic!r}, expected {GGUF_MAGIC!r})")
    lib = _bindings.api()
    with gguf_header(path) as ctx:
        kv = {_text(lib.gguf_get_key(ctx, i)): _value(lib, ctx, i, path) for i in range(lib.gguf_get_n_kv(ctx))}
        tensors = [_tensor_info(lib, ctx, i) for i in range(lib.gguf_get_n_tensors(ctx))]
        return GGUFFile(path, kv, tensors, lib.gguf_get_data_offset(ctx))


def read_gguf(path: str | Path) -> GGUFFile:
    """read_gguf_header, and a ModelFileError if the file is shorter than its tensors."""
    source = read_gguf_header(path)
    _check_complete(source)
    return source


def type_name(ggml_type: int) -> str:
    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"type{ggml_type}"


# ------------------------------------------------------------------------------------- writing

def _set_value(lib: SimpleNamespace, ctx, key: str, value) -> None:
    """Python types map to GGUF types: bool -> bool, int -> int32, float -> float32, str -> string,
    a sequence of ints -> int32 array, of other numbers -> float32 array."""
    k = key.encode()
    if isinstance(value, bool):
        lib.gguf_set_val_bool(ctx, k, value)
    elif isinstance(value, int):
        lib.gguf_set_val_i32(ctx, k, value)
    elif isinstance(value, float):
        lib.gguf_set_val_f32(ctx, k, value)
    elif isinstance(value, str):
        lib.gguf_set_val_str(ctx, k, value.encode())
    elif isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
        ints = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in items)
        kind, dtype = (GGUFValueType.INT32, "<i4") if ints else (GGUFValueType.FLOAT32, "<f4")
        data = np.asarray(items, dtype=dtype)
        lib.gguf_set_arr_data(ctx, k, kind, data.ctypes.data, len(items))
    else:
        raise TypeError(f"cannot store {key}={value!r} in GGUF")


def _metadata(src: GGUFFile, new_kv: dict[str, object], drop_prefixes: tuple[str, ...]) -> tuple[bytes, int]:
    """The output's header and its alignment: the source's keys minus `drop_prefixes` (and those
    `new_kv` replaces, which go at the end), then `new_kv`; the source's tensor infos; padding."""
    lib = _bindings.api()
    with gguf_header(src.path) as ctx:
        for key in src.kv:
            if key.startswith(drop_prefixes) or key in new_kv:
                lib.gguf_remove_key(ctx, key.encode())
        for key, value in new_kv.items():
            _set_value(lib, ctx, key, value)
        header = ctypes.create_string_buffer(lib.gguf_get_meta_size(ctx))
        lib.gguf_get_meta_data(ctx, header)
        return header.raw, lib.gguf_get_alignment(ctx)


def write_gguf(dst, src: GGUFFile, new_kv: dict[str, object], drop_prefixes: tuple[str, ...], produce,
               progress=None) -> None:
    """Write a GGUF to `dst` with `src`'s tensors (names, shapes, types, layout) and metadata (see
    _metadata); then, one tensor at a time, `produce(name)` -> bytes (or an array, or an iterator
    of arrays to be written in turn) of exactly the tensor's size. `progress(name, nbytes)` after each."""
    header, alignment = _metadata(src, new_kv, drop_prefixes)
    with open(dst, "wb") as f:
        f.write(header)
        for t in sorted(src.tensors, key=lambda t: t.offset):
            f.write(b"\0" * (len(header) + t.offset - f.tell()))   # the previous tensor's padding
            data = produce(t.name)
            written = 0
            for piece in data if isinstance(data, Iterator) else (data,):
                # memoryview of a contiguous array: written without another copy
                view = memoryview(np.ascontiguousarray(piece)).cast("B")
                f.write(view)
                written += view.nbytes
            if written != t.nbytes:
                raise RuntimeError(f"{t.name}: produced {written} bytes, expected {t.nbytes}")
            if progress:
                progress(t.name, t.nbytes)
        f.write(b"\0" * (-f.tell() % alignment))
