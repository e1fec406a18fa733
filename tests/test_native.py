"""The library Python loads is pace-gguf's patched llama.cpp, and importing stays light."""

import subprocess
import sys
from pathlib import Path

import pace_gguf
from pace_gguf import _native, paths


def test_loaded_libllama_exports_the_pace_symbol():
    lib = _native.native_library()
    assert hasattr(lib, "llama_pace_version")
    assert Path(_native.loaded_library_path()).parent == paths.lib_dir()  # LIB_DIR unless PACE_GGUF_LIB_DIR is set


def test_build_id_names_version_and_pinned_llama_cpp():
    build = _native.build_id()
    assert build.startswith(f"pace-gguf {pace_gguf.__version__} llama.cpp b11312 patches ")
    n_patches = len(list((Path(__file__).parents[1] / "cpp" / "patches").glob("*.patch")))
    assert f"patches {n_patches}:" in build


def test_cpu_backend_is_compiled_in():
    assert any(name.upper().startswith("CPU") for name in _native.compiled_backends())


def test_import_pace_gguf_imports_neither_torch_nor_llama_cpp():
    code = "import sys, pace_gguf; print('torch' in sys.modules, 'llama_cpp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_llama_is_a_llama_cpp_subclass():
    import llama_cpp

    assert issubclass(pace_gguf.Llama, llama_cpp.Llama)
