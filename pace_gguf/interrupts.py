"""Ctrl-C and termination signals that end pace-gguf cleanly.

* `Terminated`: SIGTERM or SIGHUP raised as an exception (like Ctrl-C's KeyboardInterrupt), so
  that `finally` blocks remove temp files and stop child processes before the process exits.
* `deferred()`: around native calls that report through Python callbacks. llama.cpp logs through
  llama-cpp-python's Python log callback, even when nothing is shown; an exception raised by a
  signal handler inside a ctypes callback is printed and discarded by ctypes ("Exception ignored
  on calling ctypes callback"), so Ctrl-C would be lost. Inside `deferred()`, the signal is only
  recorded, and raised once the native call has returned.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

# Signals that end pace-gguf through an exception (their handlers raise), so cleanup code runs.
TERMINATION_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s)


class Terminated(BaseException):
    """The process was asked to end (SIGTERM, SIGHUP). A BaseException, like KeyboardInterrupt, so
    that `except Exception` does not swallow it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def termination_raises():
    """SIGTERM and SIGHUP raise `Terminated` inside the block (main thread only)."""
    if not _in_main_thread():
        yield
        return
    saved = {s: signal.signal(s, _raise_terminated) for s in TERMINATION_SIGNALS}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


@contextmanager
def deferred():
    """Hold SIGINT and the termination signals while the block runs (a native call), then raise
    what the first of them would have raised. Only signals with Python handlers are held."""
    if not _in_main_thread():
        yield
        return
    caught: list[int] = []
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, *TERMINATION_SIGNALS)}
    saved = {s: h for s, h in saved.items() if callable(h)}
    for s in saved:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    if caught:
        saved[caught[0]](caught[0], None)
