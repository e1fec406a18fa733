"""Output files that appear whole or not at all (the converter's GGUFs, chat's saved sessions).

Write to `temp_paths(out, n)`: hidden temp files in OUT's own folder (so the final rename stays on
one file system), removed on exit whatever happens; then `publish(tmp, out)`: an atomic rename into
place. A process killed outright (SIGKILL) cannot clean up: its temp files carry its PID, and
`remove_stale_parts(folder)` removes those whose process is gone.
"""

from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

# Temp file names: .OUT.pace-gguf-<pid>-<random>.part<i>, the pid of the process writing them.
_PART_TAG = "pace-gguf-"
_PART_NAME = re.compile(r"^\..+\." + _PART_TAG + r"(\d+)-[^.]+\.part\d+$")


@contextmanager
def temp_paths(out: Path, n: int):
    """n hidden temp file paths next to `out`, removed on exit whatever happens."""
    paths = []
    try:
        for i in range(n):
            fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.{_PART_TAG}{os.getpid()}-",
                                        suffix=f".part{i}")
            os.close(fd)
            paths.append(Path(name))
        yield paths
    finally:
        for p in paths:
            p.unlink(missing_ok=True)


def publish(tmp: Path, out: Path) -> None:
    """Atomic rename into place, with the permissions a normal new file gets (mkstemp makes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, out)


def remove_stale_parts(folder: Path) -> None:
    """Remove the temp files in `folder` that processes no longer running left there."""
    for path in folder.iterdir():
        m = _PART_NAME.match(path.name)
        if m and not _process_exists(int(m.group(1))):
            try:
                path.unlink(missing_ok=True)
            except OSError:                         # e.g. another user's, in a sticky folder: not ours to fail on
                pass


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                         # someone else's process
        return True
    return True
