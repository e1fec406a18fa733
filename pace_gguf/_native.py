"""Bind llama-cpp-python to pace-gguf's patched llama.cpp libraries.

llama-cpp-python is installed without a native library of its own and loads `libllama` from
LLAMA_CPP_LIB_PATH when `llama_cpp` is first imported. So this module must set that variable before
anything imports `llama_cpp`, and it checks afterwards that the library that got loaded is ours
(it exports `llama_pace_version`) rather than some other libllama. The libraries come from the
package's lib/ folder, or from $PACE_GGUF_LIB_DIR when set (e.g. a portable build, see README).
"""

from __future__ import annotations

import ctypes
import os
import sys
from functools import lru_cache
from types import ModuleType

from .errors import NativeLibraryError
from .paths import LIB_DIR_ENV, lib_dir

_LIB_ENV_VARS = ("LLAMA_CPP_LIB_PATH", "MTMD_CPP_LIB")


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
    if "llama_cpp.llama_cpp" not in sys.modules:
        for var in _LIB_ENV_VARS:
            os.environ[var] = str(folder)
    import llama_cpp  # noqa: PLC0415  (must follow the environment set-up above)

    if not hasattr(llama_cpp.llama_cpp._lib, "llama_pace_version"):
        if os.environ.get(LIB_DIR_ENV):
            raise NativeLibraryError(
                f"{LIB_DIR_ENV}={os.environ[LIB_DIR_ENV]} holds a libllama without pace-gguf's patches"
            )
        raise NativeLibraryError(
            "llama_cpp was imported before pace_gguf and loaded a libllama without pace-gguf's patches; "
            "import pace_gguf first, or set LLAMA_CPP_LIB_PATH to " + str(folder)
        )
    return llama_cpp


def native_library() -> ctypes.CDLL:
    """The loaded libllama (pace-gguf's patched build)."""
    return llama_cpp_module().llama_cpp._lib


def build_id() -> str:
    """Identity string of the loaded patched build, from `llama_pace_version()`."""
    fn = native_library().llama_pace_version
    fn.restype = ctypes.c_char_p
    fn.argtypes = []
    return fn().decode()


def loaded_library_path() -> str:
    return native_library()._name


def compiled_backends() -> list[str]:
    """Names of the ggml backend devices compiled into the build (e.g. CPU, CUDA0)."""
    lcpp = llama_cpp_module()
    lib = lcpp.llama_cpp._lib
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_name.restype = ctypes.c_char_p
    lib.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
    lcpp.llama_backend_init()
    return [lib.ggml_backend_dev_name(lib.ggml_backend_dev_get(i)).decode() for i in range(lib.ggml_backend_dev_count())]


def system_info() -> str:
    """llama.cpp's system info line (`llama_print_system_info`): per backend, the features the
    loaded ggml was compiled for and uses, e.g. "CPU : SSE3 = 1 | AVX2 = 1 | ... | AMX_INT8 = 1 | ..."."""
    lcpp = llama_cpp_module()
    lcpp.llama_backend_init()
    return lcpp.llama_print_system_info().decode(errors="replace").strip()
