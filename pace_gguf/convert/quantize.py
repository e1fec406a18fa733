"""Quantization through llama.cpp's own API (llama_model_quantize in pace-gguf's library).

It runs in a child process, because llama_model_quantize cannot be stopped: it has no abort
callback, and a Ctrl-C that arrives while it runs reaches Python only inside its log callback,
where ctypes discards the exception. The child runs in its own session, so a Ctrl-C typed at the
terminal reaches only the parent, which kills the child and removes the temp files; if the
parent is killed outright, the kernel kills the child too (PR_SET_PDEATHSIG, Linux).

Progress: llama.cpp logs one line per tensor ("[  3/ 26] blk.0.ffn_down.weight - ..."); a log
callback in the child turns those into a tqdm bar on the shared stderr.
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import re
import signal
import subprocess
import sys

from .errors import ConvertError

# CLI name -> llama_ftype constant name in llama_cpp
QUANT_TYPES = {
    "F32": "LLAMA_FTYPE_ALL_F32", "F16": "LLAMA_FTYPE_MOSTLY_F16", "BF16": "LLAMA_FTYPE_MOSTLY_BF16",
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "Q5_K_S": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "Q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0", "Q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1",
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "Q4_K_S": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "Q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "Q3_K_M": "LLAMA_FTYPE_MOSTLY_Q3_K_M", "Q3_K_S": "LLAMA_FTYPE_MOSTLY_Q3_K_S",
    "Q3_K_L": "LLAMA_FTYPE_MOSTLY_Q3_K_L", "Q2_K": "LLAMA_FTYPE_MOSTLY_Q2_K",
    "IQ4_NL": "LLAMA_FTYPE_MOSTLY_IQ4_NL", "IQ4_XS": "LLAMA_FTYPE_MOSTLY_IQ4_XS",
}
# Source-tensor ggml type of the unquantized targets (no llama_model_quantize needed when equal)
FLOAT_TARGETS = {"F32": 0, "F16": 1, "BF16": 30}
QUANT_SLAB_BYTES = 256 << 20
_TENSOR_LINE = re.compile(rb"\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")


def parse_quant(name: str) -> str:
    key = name.upper()
    if key not in QUANT_TYPES:
        raise ConvertError(f"unknown quantization type {name!r}; choose one of {', '.join(QUANT_TYPES)}")
    return key


def quantize(src, dst, qtype: str, *, imatrix: dict | None = None, nthread: int = 0,
             allow_requantize: bool = False, show_progress: bool = True) -> None:
    """llama_model_quantize(src -> dst) to `qtype` (a QUANT_TYPES key), optionally with imatrix
    values {tensor name: float32 array}, in a child process. Raises ConvertError when llama.cpp
    reports failure; an interrupt stops the child at once (dst is then the caller's to remove)."""
    job = {"src": str(src), "dst": str(dst), "qtype": qtype, "imatrix": imatrix, "nthread": nthread,
           "allow_requantize": allow_requantize, "show_progress": show_progress}
    cmd = [sys.executable, "-c", _CHILD_MAIN, str(os.getpid())]
    with subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_child_env(),
                          start_new_session=True) as proc:
        try:
            out, _ = proc.communicate(pickle.dumps(job))
        except BaseException:                   # Ctrl-C, SIGTERM: stop llama.cpp now
            proc.kill()
            proc.wait()
            raise
    if proc.returncode != 0:
        raise ConvertError(_child_failure(qtype, proc.returncode, out))


# sys.path[0] of `python -c` is the working directory, where a source checkout of pace_gguf
# (without its compiled library) could shadow the one this process runs: drop it first.
_CHILD_MAIN = "import sys; del sys.path[0]; from pace_gguf.convert.quantize import _child_main; _child_main()"


def _child_env() -> dict:
    """This environment, with the folder of the pace_gguf this process runs first on the path."""
    import pace_gguf  # noqa: PLC0415

    root = os.path.dirname(os.path.dirname(os.path.abspath(pace_gguf.__file__)))
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))


def _child_failure(qtype: str, returncode: int, out: bytes) -> str:
    if returncode < 0:
        return f"llama.cpp's quantizer was killed by {signal.Signals(-returncode).name} while quantizing to {qtype}"
    try:
        return json.loads(out)["error"]
    except (ValueError, KeyError, TypeError):
        return f"llama.cpp's quantizer failed while quantizing to {qtype} (exit status {returncode}; see above)"


def _child_main() -> None:
    """The child of `quantize`: the job comes pickled on stdin, a failure goes back as JSON on
    stdout (anything llama.cpp itself prints to stdout is sent to stderr instead)."""
    _die_with_parent(int(sys.argv[1]))
    result = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        _quantize_here(**pickle.load(sys.stdin.buffer))
    except ConvertError as exc:
        json.dump({"error": str(exc)}, result)
        result.close()
        sys.exit(1)


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to kill this process when its parent dies (Linux; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:                  # it died before the request took effect
        sys.exit(1)


def _quantize_here(src: str, dst: str, qtype: str, imatrix: dict | None, nthread: int,
                   allow_requantize: bool, show_progress: bool) -> None:
    from pace_gguf._native import llama_cpp_module  # noqa: PLC0415

    lib = llama_cpp_module().llama_cpp
    params = lib.llama_model_quantize_default_params()
    params.ftype = getattr(lib, QUANT_TYPES[qtype])
    params.nthread = nthread
    params.allow_requantize = allow_requantize
    # llama.cpp's default slab is 8 GiB of rows: a 7B embedding would be converted to float32
    # whole (2.2 GB). Smaller slabs give the same bytes with memory bounded per tensor.
    params.max_buf_size = QUANT_SLAB_BYTES
    keep = []                                   # owners of the buffers the C side points into
    if imatrix:
        arr = (lib.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, vals) in enumerate(imatrix.items()):
            buf = (ctypes.c_float * vals.size).from_buffer_copy(vals.astype("<f4").tobytes())
            keep.append(buf)
            arr[i].name = name.encode()
            arr[i].data = ctypes.cast(buf, ctypes.POINTER(ctypes.c_float))
            arr[i].size = vals.size
        arr[len(imatrix)].name = None           # the list ends with a NULL name
        keep.append(arr)
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(lib.llama_model_imatrix_data))
    log = _LogCapture(lib, show_progress)
    with log:
        rc = lib.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(params))
    if rc != 0:
        raise ConvertError(f"llama.cpp could not quantize to {qtype}: {log.last_error() or f'error code {rc}'}")


class _LogCapture:
    """Route llama.cpp's log to a tqdm bar (tensor lines) and keep errors, for the quantize call
    only: the callback installed before (llama-cpp-python's, or a user's) is restored after it."""

    def __init__(self, lib, show_progress: bool):
        self.lib, self.show, self.lines, self.bar = lib, show_progress, [], None
        self._cb = lib.llama_log_callback(self._on_log)    # kept alive while installed
        self._previous = (lib.llama_log_callback(), ctypes.c_void_p())

    def _on_log(self, level, text, user_data):
        line = text or b""
        self.lines.append(line)
        m = _TENSOR_LINE.search(line)
        if m and self.show:
            if self.bar is None:
                from tqdm import tqdm  # noqa: PLC0415
                self.bar = tqdm(total=int(m.group(2)), desc="quantize", unit="tensor", file=sys.stderr)
            self.bar.set_postfix_str(m.group(3).decode(errors="replace")[-32:], refresh=False)
            self.bar.update(int(m.group(1)) - self.bar.n)

    def last_error(self) -> str:
        text = b"".join(self.lines).decode(errors="replace")
        errs = [ln.strip() for ln in text.splitlines() if "error" in ln.lower() or "failed" in ln.lower()]
        return errs[-1] if errs else ""

    def __enter__(self):
        callback, user_data = self._previous
        self.lib.llama_log_get(ctypes.byref(callback), ctypes.byref(user_data))
        self.lib.llama_log_set(self._cb, ctypes.c_void_p(0))
        return self

    def __exit__(self, *exc):
        self.lib.llama_log_set(*self._previous)
        if self.bar is not None:
            self.bar.update(self.bar.total - self.bar.n)
            self.bar.close()
        return False
