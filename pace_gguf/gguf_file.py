"""Check a GGUF file before llama.cpp sees it, so bad input gets a clear error instead of a crash.

llama.cpp reports a missing, foreign or truncated file as a generic "failed to load model"; here each
case gets its own message naming the file and what is wrong with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ModelFileError

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class GGUFSummary:
    path: Path
    size: int
    n_tensors: int
    architecture: str | None


def _open_checked(path: Path) -> bytes:
    """Return the first 4 bytes, turning every file-system problem into a ModelFileError."""
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a GGUF file")
    try:
        with open(path, "rb") as f:
            return f.read(4)
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror or exc}") from exc


def check_gguf(path: str | Path) -> GGUFSummary:
    """Validate that `path` is a complete GGUF file; raise ModelFileError otherwise."""
    from gguf import GGUFReader  # noqa: PLC0415  (keeps `import pace_gguf` light)

    path = Path(path).expanduser()
    magic = _open_checked(path)
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"{path} is not a GGUF file (it starts with {magic!r}, expected {GGUF_MAGIC!r})")
    size = path.stat().st_size
    try:
        reader = GGUFReader(path, "r")
    except Exception as exc:  # gguf raises ValueError/IndexError/struct errors on damaged headers
        raise ModelFileError(f"{path} is not a valid GGUF file: its header is truncated or corrupt ({exc})") from exc
    needed = max((t.data_offset + t.n_bytes for t in reader.tensors), default=reader.data_offset)
    if size < needed:
        raise ModelFileError(f"{path} is truncated: its tensors need {needed:,} bytes but the file has {size:,}")
    arch_field = reader.get_field("general.architecture")
    arch = arch_field.contents() if arch_field is not None else None
    return GGUFSummary(path=path, size=size, n_tensors=len(reader.tensors), architecture=arch)
