"""Bind llama-cpp-python to pace-gguf's patched llama.cpp libraries.

llama-cpp-python is installed without a native library of its own and loads `libllama` from
LLAMA_CPP_LIB_PATH when `llama_cpp` is first imported. So this module sets that variable for the
time of that import (and restores it: child processes and the user's environment are left as they
were), and checks afterwards that the library that got loaded is ours (it exports
`llama_pace_version`) rather than some other libllama. The libraries come from the package's lib/
folder, or from $PACE_GGUF_LIB_DIR when set (e.g. a portable build, see README).

llama-cpp-python's multimodal module (llama_cpp.mtmd_cpp, libmtmd, read from MTMD_CPP_LIB) is
imported only by its vision chat handlers, never by `import llama_cpp` nor by its server; pace-gguf
builds no libmtmd, so that variable is left alone.
"""

from __future__ import annotations

import ctypes
import os
import sys
from contextlib import contextmanager
from functools import lru_cache
from types import ModuleType

from . import _bindings
from . import _llama_cpp_compat as compat
from .errors import NativeLibraryError
from .paths import LIB_DIR_ENV, lib_dir

_LIB_PATH_ENV = "LLAMA_CPP_LIB_PATH"  # read once, when llama_cpp.llama_cpp is imported


def _library_file(name: str) -> str:
    if sys.platform == "win32":
        return f"{name}.dll"
    return f"lib{name}.dylib" if sys.platform == "darwin" else f"lib{name}.so"


@lru_cache(maxsize=None)
def llama_cpp_module() -> ModuleType:
    """Import llama_cpp bound to our libraries; raises NativeLibraryError if that is impossible."""
    folder = lib_dir()
    if not (folder / _library_file("llama")).exists():
        if os.environ.get(LIB_DIR_ENV):
            raise NativeLibraryError(f"{LIB_DIR_ENV}={os.environ[LIB_DIR_ENV]} holds no {_library_file('llama')}")
        raise NativeLibraryError(
            f"pace-gguf's llama.cpp library is missing from {folder}: install the package with "
            "`pip install .` (see README) rather than importing it from a source checkout"
        )
    with _environment(_LIB_PATH_ENV, str(folder)):
        import llama_cpp  # noqa: PLC0415  (loads libllama from LLAMA_CPP_LIB_PATH on first import)

    if not hasattr(compat.shared_library(llama_cpp), "llama_pace_version"):
        if os.environ.get(LIB_DIR_ENV):
            raise NativeLibraryError(
                f"{LIB_DIR_ENV}={os.environ[LIB_DIR_ENV]} holds a libllama without pace-gguf's patches"
            )
        raise NativeLibraryError(
            "llama_cpp was imported before pace_gguf and loaded a libllama without pace-gguf's patches; "
            "import pace_gguf first, or set LLAMA_CPP_LIB_PATH to " + str(folder)
        )
    return llama_cpp


@contextmanager
def _environment(name: str, value: str):
    """os.environ[name] = value inside the block only."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


def native_library() -> ctypes.CDLL:
    """The loaded libllama (pace-gguf's patched build)."""
    return compat.shared_library(llama_cpp_module())


def build_id() -> str:
    """Identity string of the loaded patched build, from `llama_pace_version()`."""
    return _bindings.api().llama_pace_version().decode()


def loaded_library_path() -> str:
    return native_library()._name


def compiled_backends() -> list[str]:
    """Names of the ggml backends compiled into the build (e.g. CPU, CUDA, RPC)."""
    c = _bindings.api()
    llama_cpp_module().llama_backend_init()
    return [c.ggml_backend_reg_name(c.ggml_backend_reg_get(i)).decode() for i in range(c.ggml_backend_reg_count())]


def device_names() -> list[str]:
    """Names of the backend devices llama.cpp can use (e.g. CPU, CUDA0, RPC0)."""
    return [d["name"] for d in devices()]


DEVICE_TYPES = ("CPU", "GPU", "iGPU", "accelerator", "meta")  # enum ggml_backend_dev_type
AMB_IMPLS = ("cpu", "kernel", "composed")  # enum llama_pace_amb_impl


def devices() -> list[dict]:
    """The backend devices llama.cpp can use (compiled in, plus RPC servers added to this process): name,
    description, type, free and total memory, and how an AMB layer placed on it runs (`amb`: "kernel", its
    backend's GGML_OP_AMB kernel; "composed", standard ggml ops; "cpu", on the CPU, the bank in host memory)
    and whether that is on the device itself (`runs_amb`)."""
    c = _bindings.api()
    llama_cpp_module().llama_backend_init()
    out = []
    for i in range(c.ggml_backend_dev_count()):
        dev = c.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        c.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        kind = c.ggml_backend_dev_type(dev)
        impl = c.llama_pace_amb_device_impl(dev)
        if not 0 <= impl < len(AMB_IMPLS):
            raise NativeLibraryError(f"cannot tell how the AMB runs on device "
                                     f"{c.ggml_backend_dev_name(dev).decode()}: {c.llama_pace_last_error().decode()}")
        out.append({"name": c.ggml_backend_dev_name(dev).decode(), "description": c.ggml_backend_dev_description(dev).decode(),
                    "type": DEVICE_TYPES[kind] if 0 <= kind < len(DEVICE_TYPES) else str(kind),
                    "memory_free": free.value, "memory_total": total.value,
                    "amb": AMB_IMPLS[impl], "runs_amb": impl != 0})
    return out


def system_info() -> str:
    """llama.cpp's system info line (`llama_print_system_info`): per backend, the features the
    loaded ggml was compiled for and uses, e.g. "CPU : SSE3 = 1 | AVX2 = 1 | ... | AMX_INT8 = 1 | ..."."""
    lcpp = llama_cpp_module()
    lcpp.llama_backend_init()
    return lcpp.llama_print_system_info().decode(errors="replace").strip()
