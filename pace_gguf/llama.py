"""`pace_gguf.Llama`: llama-cpp-python's `Llama`, running on pace-gguf's patched llama.cpp.

It is a drop-in: same constructor and methods. What it adds:
* `model_path` may also be a registry name (e.g. "smollm2-135m-instruct"), pulled on first use;
* the file is checked before llama.cpp opens it, so a missing, foreign or truncated file raises
  `ModelFileError` with a message that says which, instead of a bare "failed to load";
* `build_id`, the identity of the native library actually in use.
PaceLLM's per-context options (the Activation Memory Bank) will join the constructor here.
"""

from __future__ import annotations

from ._native import build_id, llama_cpp_module
from .errors import ModelFileError
from .gguf_file import check_gguf
from .registry import resolve_model

_llama_cpp = llama_cpp_module()


class Llama(_llama_cpp.Llama):
    def __init__(self, model_path: str, **kwargs):
        path = resolve_model(model_path)
        check_gguf(path)
        try:
            super().__init__(model_path=str(path), **kwargs)
        except ValueError as exc:  # llama.cpp's "Failed to load model from file"
            raise ModelFileError(f"llama.cpp could not load {path}: {exc}") from exc

    def close(self) -> None:
        # A constructor that rejected its input never created llama_cpp's resources; without this
        # guard, llama_cpp.Llama.__del__ would print an AttributeError traceback.
        if hasattr(self, "_stack"):
            super().close()

    @property
    def build_id(self) -> str:
        return build_id()
