"""pace-gguf: PaceLLM for the llama.cpp / GGUF runtime.

`import pace_gguf` is light: it imports neither torch nor llama_cpp. `pace_gguf.Llama` loads
llama-cpp-python bound to pace-gguf's patched llama.cpp on first access; `pace_gguf.reference`
(the PyTorch oracle) needs torch and is only imported when asked for.
"""

__version__ = "0.1.0"

__all__ = ["Llama", "PaceError", "ModelFileError", "RegistryError", "NativeLibraryError", "__version__"]

from .errors import ModelFileError, NativeLibraryError, PaceError, RegistryError


def __getattr__(name):
    if name == "Llama":
        from .llama import Llama  # noqa: PLC0415  (binds llama_cpp to our library on first use)

        return Llama
    raise AttributeError(f"module 'pace_gguf' has no attribute {name!r}")
