"""Importance matrices (llama-imatrix output) for quantization, with CE applied to them.

An imatrix entry of blk.N.ffn_down.weight is indexed by ffn_down's input column, i.e. by neuron, so
it gets the same permutation as ffn_down's columns (spec 3.3). Both file formats of llama.cpp are
read: GGUF (tensors "<name>.in_sum2" and "<name>.counts") and the legacy .dat. The values handed to
llama_model_quantize are the per-column means, computed as tools/quantize/quantize.cpp does.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

from .errors import ConvertError

_DOWN = re.compile(r"^blk\.(\d+)\.ffn_down\.weight$")


def load_imatrix(path) -> dict[str, np.ndarray]:
    """name -> float32 importance values (sums divided by counts)."""
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"imatrix file not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    return _load_gguf(path) if magic == b"GGUF" else _load_legacy(path)


def _load_gguf(path: Path) -> dict[str, np.ndarray]:
    from ..gguf_file import read_gguf  # noqa: PLC0415
    from .reorder import as_float32  # noqa: PLC0415

    src = read_gguf(path)
    out = {}
    for t in src.tensors:
        if not t.name.endswith(".in_sum2"):
            continue
        name = t.name[: -len(".in_sum2")]
        sums = as_float32(src, t.name).astype(np.float32)                   # [n_expert, ne0]
        counts_t = src.tensor(name + ".counts")
        if counts_t is None:
            raise ConvertError(f"{path}: {name} has in_sum2 but no counts")
        counts = as_float32(src, counts_t.name).reshape(-1)                 # [n_expert]
        sums = sums.reshape(counts.size, -1)
        vals = np.where(counts[:, None] > 0, sums / np.maximum(counts[:, None], 1e-30), 1.0)
        out[name] = vals.reshape(-1).astype(np.float32)
    if not out:
        raise ConvertError(f"{path} is a GGUF file without imatrix data (no *.in_sum2 tensors)")
    return out


def _load_legacy(path: Path) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    out, pos = {}, 0
    try:
        (n,) = struct.unpack_from("<i", data, pos)
        pos += 4
        for _ in range(n):
            (ln,) = struct.unpack_from("<i", data, pos)
            name = data[pos + 4: pos + 4 + ln].decode("utf-8")
            pos += 4 + ln
            ncall, nval = struct.unpack_from("<ii", data, pos)
            pos += 8
            vals = np.frombuffer(data, "<f4", nval, pos).astype(np.float32)
            pos += 4 * nval
            out[name] = vals / ncall if ncall > 0 else vals
    except (struct.error, ValueError, UnicodeDecodeError):
        raise ConvertError(f"{path} is not a valid imatrix file (GGUF or legacy .dat)") from None
    if n <= 0 or not out:
        raise ConvertError(f"{path} is not a valid imatrix file (no entries)")
    return out


def permute_imatrix(entries: dict[str, np.ndarray], perms: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
    """ffn_down entries of the CE layers permuted like ffn_down's columns; other entries unchanged."""
    out = dict(entries)
    for name, vals in entries.items():
        m = _DOWN.match(name)
        if m and int(m.group(1)) in perms:
            perm = perms[int(m.group(1))]
            if vals.size % perm.size:
                raise ConvertError(f"imatrix entry {name} has {vals.size} values, not a multiple of d_ff = {perm.size}")
            out[name] = vals.reshape(-1, perm.size)[:, perm].reshape(-1)
    return out


def save_legacy(path, entries: dict[str, np.ndarray], ncall: int = 1) -> None:
    """Write entries in the legacy .dat layout (used by tests to make imatrix files)."""
    with open(path, "wb") as f:
        f.write(struct.pack("<i", len(entries)))
        for name, vals in entries.items():
            b = name.encode()
            f.write(struct.pack("<i", len(b)) + b + struct.pack("<ii", ncall, vals.size))
            f.write((np.asarray(vals, "<f4") * ncall).tobytes())
