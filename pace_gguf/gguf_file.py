"""Check a GGUF file before llama.cpp loads it, so bad input gets a clear error instead of a crash.

llama.cpp reports a missing, foreign or truncated file as a generic "failed to load model"; here each
case gets its own message naming the file and what is wrong with it. The header is parsed by ggml's
own GGUF reader (the one llama.cpp will use, and fast: a 150k-token vocabulary parses in
milliseconds where gguf-py's pure-Python reader takes seconds).
"""

from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from . import _bindings
from .errors import ModelFileError

GGUF_MAGIC = b"GGUF"
GGUF_TYPE_STRING = 8  # enum gguf_type


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


# Integer GGUF types (enum gguf_type) -> ctypes, and counts llama.cpp asserts on (llama-hparams.h's
# LLAMA_MAX_LAYERS and LLAMA_MAX_EXPERTS) instead of reporting: an assert ends the process silently.
_INT_TYPES = {0: ctypes.c_uint8, 1: ctypes.c_int8, 2: ctypes.c_uint16, 3: ctypes.c_int16, 4: ctypes.c_uint32,
              5: ctypes.c_int32, 10: ctypes.c_uint64, 11: ctypes.c_int64}
_COUNT_LIMITS = {"block_count": 512, "expert_count": 1024}


def _check_counts(lib: SimpleNamespace, ctx, path: Path, arch: str) -> None:
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
    lib = _bindings.api()
    with gguf_header(path) as ctx:
        n_tensors = lib.gguf_get_n_tensors(ctx)
        data = lib.gguf_get_data_offset(ctx)
        needed = max((data + lib.gguf_get_tensor_offset(ctx, i) + lib.gguf_get_tensor_size(ctx, i)
                      for i in range(n_tensors)), default=data)
        key = lib.gguf_find_key(ctx, b"general.architecture")
        is_str = key >= 0 and lib.gguf_get_kv_type(ctx, key) == GGUF_TYPE_STRING  # ggml aborts on a type mismatch
        arch = lib.gguf_get_val_str(ctx, key).decode() if is_str else None
        if arch is not None:
            _check_counts(lib, ctx, path, arch)
    size = path.stat().st_size
    if size < needed:
        raise ModelFileError(f"{path} is truncated: its tensors need {needed:,} bytes but the file has {size:,}")
    return GGUFSummary(path=path, size=size, n_tensors=n_tensors, architecture=arch)
