"""What pace-gguf relies on in llama-cpp-python beyond its documented API, in one place.

pace_gguf.Llama subclasses llama_cpp.Llama and hands its native pointers to pace-gguf's C API, so
it depends on a few internals of the llama-cpp-python version pyproject.toml pins: the
attributes listed in LLAMA_ATTRIBUTES and MODULE_ATTRIBUTES, and the wording of one error.
Everything pace-gguf touches of them goes through the functions here; tests/test_llama_cpp_compat.py
checks that the installed llama-cpp-python is the pinned one and still has each of them, so an
upgrade fails there, loudly, rather than somewhere deep in a generation.

This module imports nothing of llama_cpp itself: it works on the module and the objects it is given.
"""

from __future__ import annotations

import ctypes
from types import ModuleType

# Attributes of a llama_cpp.Llama instance (dotted: attributes of attributes) used below.
LLAMA_ATTRIBUTES = (
    "ctx",             # property: the llama_context pointer (self._ctx.ctx)
    "model",           # property: the llama_model pointer (self._model.model)
    "context_params",  # the llama_context_params it asked for (set before anything is loaded)
    "_model",          # set once the model is loaded (the constructor's first native step)
    "_model.n_ctx_train",
    "_model.token_get_text",
    "_ctx.kv_cache_clear",
    "_stack",          # set at the start of the constructor; close() needs it
    "input_ids",       # the tokens the context holds: input_ids[:n_tokens]
    "n_tokens",
    "_requires_eval",  # False: the logits of the last held token are live
)
# Attributes of the llama_cpp package used below and by pace_gguf._native.
MODULE_ATTRIBUTES = (
    "__version__",
    "Llama",
    "llama_cpp._lib",  # the loaded libllama (ctypes.CDLL)
    "llama_backend_init",
    "llama_print_system_info",
)

# llama-cpp-python's ValueError for a prompt longer than the context (Llama.create_completion,
# "Requested tokens (N) exceed context window of M"): the only sign of that case it gives.
_OVERFLOW_WORDING = "exceed context window"


def missing_attributes(obj, names) -> list[str]:
    """Those of the dotted `names` that `obj` lacks."""
    missing = []
    for name in names:
        target = obj
        for part in name.split("."):
            if not hasattr(target, part):
                missing.append(name)
                break
            target = getattr(target, part)
    return missing


# -- the llama_cpp package ------------------------------------------------------------------------------


def shared_library(llama_cpp: ModuleType) -> ctypes.CDLL:
    """The libllama llama-cpp-python loaded."""
    return llama_cpp.llama_cpp._lib


# -- a llama_cpp.Llama ----------------------------------------------------------------------------------


def context_pointer(llm):
    """The llama_context of `llm` (for pace-gguf's C API)."""
    return llm.ctx


def model_pointer(llm):
    """The llama_model of `llm`."""
    return llm.model


def model_loaded(llm) -> bool:
    """Whether the constructor got as far as loading the model (it failed after it, or not at all)."""
    return hasattr(llm, "_model")


def resources_created(llm) -> bool:
    """Whether the constructor got far enough that close() has something to free."""
    return hasattr(llm, "_stack")


def n_ctx_train(llm) -> int:
    return llm._model.n_ctx_train()


def logits_live(llm) -> bool:
    """Whether the logits of the last held token are available (no re-evaluation needed)."""
    return not llm._requires_eval


def token_capacity(llm) -> int:
    """How many tokens llama-cpp-python's token record holds (the n_ctx asked for, which llama.cpp
    may have rounded up)."""
    return len(llm.input_ids)


def token_text(llm, token: int) -> str:
    """The text of one token as the vocabulary spells it (special tokens included)."""
    return llm._model.token_get_text(token)


def held_tokens(llm) -> list[int]:
    """The tokens the context holds, as llama-cpp-python keeps track of them."""
    return llm.input_ids[:llm.n_tokens].tolist()


def forget_tokens(llm) -> None:
    """Tell llama-cpp-python the context holds nothing it can reuse (the next prompt is evaluated
    whole; its own prefix matching then clears the cache)."""
    llm.n_tokens = 0


def set_held_tokens(llm, tokens) -> None:
    """Tell llama-cpp-python the context holds `tokens` (after loading a state or session into it),
    without their logits, as its own load_state does."""
    llm.input_ids[:len(tokens)] = tokens
    llm.n_tokens = len(tokens)
    llm._requires_eval = True


def drop_held_tokens(llm, p0: int, p1: int) -> None:
    """Tell llama-cpp-python that positions [p0, p1) left the context and the later ones moved down
    (after llama.cpp's context shift)."""
    n = llm.n_tokens
    llm.input_ids[p0:n - (p1 - p0)] = llm.input_ids[p1:n].copy()
    llm.n_tokens = n - (p1 - p0)


def clear_context(llm) -> None:
    """Empty the context (KV cache and, in pace-gguf's build, the AMB banks) and its token record."""
    llm._ctx.kv_cache_clear()
    forget_tokens(llm)


def is_overflow_error(exc: BaseException) -> bool:
    """Whether `exc` is llama-cpp-python's error for a prompt that does not fit in the context."""
    return isinstance(exc, ValueError) and _OVERFLOW_WORDING in str(exc)
