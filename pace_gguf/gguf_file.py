"""Check a GGUF file before llama.cpp loads it, so bad input gets a clear error instead of a crash.

llama.cpp reports a missing, foreign or truncated file as a generic "failed to load model"; here each
case gets its own message naming the file and what is wrong with it. The header is parsed by ggml's
own GGUF reader (the one llama.cpp will use, and fast: a 150k-token vocabulary parses in
milliseconds where gguf-py's pure-Python reader takes seconds).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

from ._native import native_library
from .errors import ModelFileError

GGUF_MAGIC = b"GGUF"
GGUF_TYPE_STRING = 8  # enum gguf_type


@dataclass(frozen=True)
class GGUFSummary:
    path: Path
    size: int
    n_tensors: int
    architecture: str | None


class _InitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


_LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_SILENT = _LOG_CALLBACK(lambda level, text, user_data: None)


def _gguf_api() -> ctypes.CDLL:
    lib = native_library()
    signatures = {
        "gguf_init_from_file": (ctypes.c_void_p, [ctypes.c_char_p, _InitParams]),
        "gguf_free": (None, [ctypes.c_void_p]),
        "gguf_get_data_offset": (ctypes.c_size_t, [ctypes.c_void_p]),
        "gguf_get_n_tensors": (ctypes.c_int64, [ctypes.c_void_p]),
        "gguf_get_tensor_offset": (ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_int64]),
        "gguf_get_tensor_size": (ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_int64]),
        "gguf_find_key": (ctypes.c_int64, [ctypes.c_void_p, ctypes.c_char_p]),
        "gguf_get_val_str": (ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_int64]),
        "gguf_get_kv_type": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int64]),
        "gguf_get_val_data": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int64]),
        "ggml_log_get": (None, [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_void_p)]),
        "ggml_log_set": (None, [ctypes.c_void_p, ctypes.c_void_p]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


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


def _parse_header(lib: ctypes.CDLL, path: Path) -> int:
    """ggml's GGUF context for the file's header (no tensor data read), its own log silenced."""
    old_cb, old_ud = ctypes.c_void_p(), ctypes.c_void_p()
    lib.ggml_log_get(ctypes.byref(old_cb), ctypes.byref(old_ud))
    lib.ggml_log_set(ctypes.cast(_SILENT, ctypes.c_void_p), None)
    try:
        return lib.gguf_init_from_file(os.fsencode(path), _InitParams(True, None))
    finally:
        lib.ggml_log_set(old_cb, old_ud)


# Integer GGUF types (enum gguf_type) -> ctypes, and counts llama.cpp asserts on (llama-hparams.h's
# LLAMA_MAX_LAYERS and LLAMA_MAX_EXPERTS) instead of reporting: an assert ends the process silently.
_INT_TYPES = {0: ctypes.c_uint8, 1: ctypes.c_int8, 2: ctypes.c_uint16, 3: ctypes.c_int16, 4: ctypes.c_uint32,
              5: ctypes.c_int32, 10: ctypes.c_uint64, 11: ctypes.c_int64}
_COUNT_LIMITS = {"block_count": 512, "expert_count": 1024}


def _check_counts(lib: ctypes.CDLL, ctx, path: Path, arch: str) -> None:
    for name, limit in _COUNT_LIMITS.items():
        key = lib.gguf_find_key(ctx, f"{arch}.{name}".encode())
        kind = _INT_TYPES.get(lib.gguf_get_kv_type(ctx, key)) if key >= 0 else None
        if kind is None:
            continue  # absent, or of another type: llama.cpp reports that itself
        value = kind.from_address(lib.gguf_get_val_data(ctx, key)).value
        if not 0 <= value <= limit:
            raise ModelFileError(f"{path} is not a usable model: {arch}.{name} is {value}, "
                                 f"llama.cpp supports at most {limit}")


def check_gguf(path: str | Path) -> GGUFSummary:
    """Validate that `path` is a complete GGUF file; raise ModelFileError otherwise."""
    path = Path(path).expanduser()
    magic = _read_magic(path)
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"{path} is not a GGUF file (it starts with {magic!r}, expected {GGUF_MAGIC!r})")
    lib = _gguf_api()
    ctx = _parse_header(lib, path)
    if not ctx:
        raise ModelFileError(f"{path} is not a valid GGUF file: its header is truncated or corrupt")
    try:
        n_tensors = lib.gguf_get_n_tensors(ctx)
        data = lib.gguf_get_data_offset(ctx)
        needed = max((data + lib.gguf_get_tensor_offset(ctx, i) + lib.gguf_get_tensor_size(ctx, i)
                      for i in range(n_tensors)), default=data)
        key = lib.gguf_find_key(ctx, b"general.architecture")
        is_str = key >= 0 and lib.gguf_get_kv_type(ctx, key) == GGUF_TYPE_STRING  # ggml aborts on a type mismatch
        arch = lib.gguf_get_val_str(ctx, key).decode() if is_str else None
        if arch is not None:
            _check_counts(lib, ctx, path, arch)
    finally:
        lib.gguf_free(ctx)
    size = path.stat().st_size
    if size < needed:
        raise ModelFileError(f"{path} is truncated: its tensors need {needed:,} bytes but the file has {size:,}")
    return GGUFSummary(path=path, size=size, n_tensors=n_tensors, architecture=arch)
