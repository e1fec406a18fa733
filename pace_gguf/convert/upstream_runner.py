"""Run llama.cpp's convert_hf_to_gguf.py with its big pass-through tensors streamed in row chunks.

Why: upstream materialises every tensor whole, and as float32 when the checkpoint is bf16. For the
152064 x 3584 embedding of a 7B model that is a 2.2 GB float32 copy plus gguf-py's bf16 rounding
temporaries (uint64), 4.5 GB peak for the whole conversion. Upstream already has the mechanism
that avoids it, gguf.LazyChunkedTensor (written one row chunk at a time, quantized per chunk),
but uses it for one architecture only. This runner gives that mechanism every tensor the model
class passes through unchanged (its modify_tensors yields the very tensor it was given), read
straight from the safetensors file. Whatever upstream transforms (permuted q/k, fused, split or
scaled tensors) stays on upstream's own path, so names, order, types and values are upstream's.
Row chunks are exact: every type the converter writes (F32, F16, BF16, Q8_0) rounds within a row.

Runs in upstream's interpreter setup (its gguf-py and conversion/ on sys.path), never imports
pace_gguf:  python upstream_runner.py <convert_hf_to_gguf.py> [converter arguments]
$PACE_GGUF_CHUNK_BYTES sets the float32 bytes per chunk (default 64 MiB; tests use tiny chunks);
$PACE_GGUF_UPSTREAM_QUIET=1 silences upstream's per-tensor INFO log.
"""

from __future__ import annotations

import logging
import os
import runpy
import sys

import gguf
import numpy as np
import torch
from conversion import base

CHUNK_BYTES = int(os.environ.get("PACE_GGUF_CHUNK_BYTES", 64 << 20))
# safetensors dtype -> how its bytes are viewed (bf16 as raw uint16, widened below)
_VIEW = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}
_SOURCE_ATTR = "_pace_local_tensor"
streamed: list[str] = []


def _tag_local_tensors() -> None:
    """Remember, on each lazy tensor read from a local safetensors file, where its bytes are."""
    original = base.LazyTorchTensor.from_local_tensor.__func__

    def from_local_tensor(cls, local):
        lazy = original(cls, local)
        lazy.__dict__[_SOURCE_ATTR] = local
        return lazy

    base.LazyTorchTensor.from_local_tensor = classmethod(from_local_tensor)


def _file_source(tensor):
    """(LocalTensor, widened) when `tensor` is a file's tensor as is, or prepare_tensors'
    `.to(torch.float32)` of one (widened=True); else (None, False)."""
    own = getattr(tensor, "__dict__", {})
    if _SOURCE_ATTR in own:
        return own[_SOURCE_ATTR], False
    args = own.get("_args", ())
    if (_method_name(own.get("_func")) == "to" and not own.get("_kwargs") and len(args) == 2
            and args[1] is torch.float32 and _SOURCE_ATTR in getattr(args[0], "__dict__", {})):
        return args[0].__dict__[_SOURCE_ATTR], True
    return None, False


def _method_name(func) -> str | None:
    """The method a lazy node calls, when gguf.LazyBase recorded it as a method call (its
    attribute wrapper is a closure over the method's name); else None."""
    code, cells = getattr(func, "__code__", None), getattr(func, "__closure__", None) or ()
    if code is None or code.co_freevars != ("name",):
        return None
    name = cells[0].cell_contents
    return name if isinstance(name, str) else None


def _chunk_loader(local, first: int, stop: int, widen: bool):
    cols = int(local.shape[1])
    dtype = np.dtype(_VIEW[local.dtype])

    def load() -> np.ndarray:
        # a plain read, not a memory map: mapped pages would stay resident for the whole tensor
        count = (stop - first) * cols
        offset = local.data_range.offset + first * cols * dtype.itemsize
        arr = np.fromfile(local.data_range.filename, dtype=dtype, count=count, offset=offset)
        if arr.size != count:
            raise OSError(f"{local.data_range.filename} ended early (truncated while converting?)")
        arr = arr.reshape(stop - first, cols)
        if local.dtype == "BF16":
            return (arr.astype(np.uint32) << 16).view(np.float32)   # exact, as torch's .to(float32)
        return arr.astype(np.float32) if widen else arr
    return load


def as_chunked(tensor):
    """A gguf.LazyChunkedTensor with the same values as `tensor`, or None when it is not a plain
    2-D file tensor bigger than one chunk (those keep upstream's path)."""
    local, widen = _file_source(tensor)
    if local is None or local.dtype not in _VIEW or len(local.shape) != 2 or sys.byteorder != "little":
        return None
    rows, cols = (int(n) for n in local.shape)
    out_dtype = np.float32 if widen or local.dtype == "BF16" else _VIEW[local.dtype]
    if tuple(tensor.shape) != (rows, cols) or rows * cols * 4 <= CHUNK_BYTES:
        return None
    step = max(1, CHUNK_BYTES // (cols * 4))
    chunks = [_chunk_loader(local, a, min(a + step, rows), widen) for a in range(0, rows, step)]
    return gguf.LazyChunkedTensor(chunks, shape=(rows, cols), dtype=out_dtype)


def _stream_pass_through_tensors() -> None:
    """Wrap each model's modify_tensors (per instance, for the duration of prepare_tensors)."""
    original = base.ModelBase.prepare_tensors

    def prepare_tensors(self):
        inner = self.modify_tensors

        def modify_tensors(data_torch, name, bid):
            for new_name, out in inner(data_torch, name, bid):
                chunked = as_chunked(out) if out is data_torch else None
                if chunked is not None:
                    streamed.append(new_name)
                yield new_name, chunked if chunked is not None else out

        self.modify_tensors = modify_tensors
        try:
            return original(self)
        finally:
            del self.modify_tensors

    base.ModelBase.prepare_tensors = prepare_tensors


def main() -> None:
    converter, *args = sys.argv[1:]
    if os.environ.get("PACE_GGUF_UPSTREAM_QUIET"):
        logging.disable(logging.INFO)      # upstream logs a line per tensor at INFO
    _tag_local_tensors()
    _stream_pass_through_tensors()
    sys.argv = [converter, *args]
    try:
        runpy.run_path(converter, run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise
    print(f"pace-gguf: streamed {len(streamed)} tensors in row chunks: {', '.join(streamed)}",
          file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
