"""`pace_gguf.Llama`: llama-cpp-python's `Llama`, running on pace-gguf's patched llama.cpp.

It is a drop-in: same constructor and methods. What it adds:
* `model_path` may also be a registry name (e.g. "smollm2-135m-instruct"), pulled on first use;
* the file is checked before llama.cpp opens it, so a missing, foreign or truncated file raises
  `ModelFileError` with a message that says which, instead of a bare "failed to load";
* `pace=`: the Activation Memory Bank (AMB) of the context, with `reset_memory()`,
  `memory_stats()`, `amb_bank()` and `amb_cases()`;
* `build_id`, the identity of the native library actually in use.

AMB and llama-cpp-python's prompt-prefix reuse: a bank cannot "un-store" the tokens of a dropped
suffix, so with AMB enabled every `generate()` re-evaluates its prompt from a freshly reset bank.
The result is exactly what a new context would give; the cost is re-doing the prompt. Saved states
(`save_state()`/`load_state()`, and llama-cpp-python's prompt cache built on them) carry the bank.
"""

from __future__ import annotations

from typing import Union

from . import amb
from ._native import build_id, llama_cpp_module
from .amb import LayerStats, PaceConfig
from .errors import ContextOverflowError, ModelFileError, PaceError
from .gguf_file import check_gguf
from .registry import resolve_model

_llama_cpp = llama_cpp_module()

PaceSpec = Union[PaceConfig, dict, bool, None]


class Llama(_llama_cpp.Llama):
    def __init__(self, model_path: str, *, pace: PaceSpec = None, **kwargs):
        path = resolve_model(model_path)
        check_gguf(path)
        try:
            super().__init__(model_path=str(path), **kwargs)
        except ValueError as exc:  # llama.cpp's "Failed to load model from file" / context errors
            raise ModelFileError(f"llama.cpp could not load {path}: {exc} ({amb.last_error() or 'see its log'})") from exc
        self.configure_pace(pace)

    # -- Activation Memory Bank --------------------------------------------------------------------

    def configure_pace(self, pace: PaceSpec) -> PaceConfig:
        """Apply AMB settings and empty the banks. `pace` is one of:
        None (the model's pace.amb.* GGUF settings; off when absent), False (off), True (the
        model's settings, switched on), a dict of changes to the model's settings, or a PaceConfig.
        """
        base = amb.model_config(self._model.model)
        if pace is None:
            config = base
        elif pace is True or pace is False:
            config = base.replace(enabled=pace)
        elif isinstance(pace, dict):
            changes = dict(pace)
            if "layers" in changes:
                changes["layers"] = tuple(changes["layers"])
                changes.setdefault("enabled", bool(changes["layers"]))
            config = base.replace(**changes)
        elif isinstance(pace, PaceConfig):
            config = pace
        else:
            raise amb.PaceConfigError(f"pace must be a PaceConfig, a dict, a bool or None, got {type(pace).__name__}")
        amb.set_config(self._ctx.ctx, config)
        return config

    @property
    def pace(self) -> PaceConfig:
        """The AMB settings in effect."""
        return amb.get_config(self._ctx.ctx)

    @property
    def amb_enabled(self) -> bool:
        return self.pace.enabled

    def reset_memory(self, seq_id: int = -1) -> None:
        """Empty the AMB banks of one sequence, or of all (-1)."""
        amb.reset(self._ctx.ctx, seq_id)

    def memory_stats(self, seq_id: int = 0) -> dict[int, LayerStats]:
        """Per AMB layer: slots used and retrieval cases (high/mid/low) since the last reset."""
        return {layer: amb.layer_stats(self._ctx.ctx, layer, seq_id) for layer in sorted(self.pace.layers)}

    def amb_bank(self, layer: int, seq_id: int = 0) -> dict:
        """A copy of one bank (keys, values, usage, valid) as numpy arrays."""
        return amb.bank(self._ctx.ctx, layer, seq_id)

    def amb_cases(self, layer: int, seq_id: int = 0):
        """Retrieval case per position of the current sequence (0 low, 1 mid, 2 high)."""
        return amb.cases(self._ctx.ctx, layer, self.n_tokens, seq_id)

    @property
    def amb_memory_bytes(self) -> int:
        return amb.memory_size(self._ctx.ctx)

    # -- llama-cpp-python overrides ----------------------------------------------------------------

    def eval(self, tokens) -> None:
        # llama-cpp-python would fail deep inside with a numpy broadcast error; say what happened.
        # Its token arrays hold the n_ctx asked for, which llama.cpp may have rounded up.
        capacity = min(self.n_ctx(), len(self.input_ids))
        if len(tokens) > capacity - self.n_tokens:
            raise ContextOverflowError(
                f"{len(tokens)} tokens do not fit in the context: it holds {capacity} and {self.n_tokens} are in use; "
                "use a larger n_ctx (--n-ctx) or a shorter input"
            )
        super().eval(tokens)

    def create_completion(self, *args, **kwargs):
        # (chat completions go through here too) llama-cpp-python reports a prompt longer than the
        # context as a bare ValueError; make it the ContextOverflowError the rest of pace-gguf uses.
        try:
            result = super().create_completion(*args, **kwargs)
        except ValueError as exc:
            _raise_if_overflow(exc)
            raise
        return _overflow_checked(result) if kwargs.get("stream") else result

    def generate(self, tokens, *args, **kwargs):
        if kwargs.get("reset", True) and self.amb_enabled:
            self.n_tokens = 0  # no prefix reuse: see the module docstring
        return super().generate(tokens, *args, **kwargs)

    def load_state(self, state) -> None:
        try:
            super().load_state(state)
        except RuntimeError as exc:
            raise PaceError(f"cannot load this state into the context: {amb.last_error() or exc}") from exc

    def close(self) -> None:
        # A constructor that rejected its input never created llama_cpp's resources; without this
        # guard, llama_cpp.Llama.__del__ would print an AttributeError traceback.
        if hasattr(self, "_stack"):
            super().close()

    @property
    def build_id(self) -> str:
        return build_id()


_OVERFLOW_MESSAGE = "exceed context window"  # llama-cpp-python 0.3.36's wording


def _raise_if_overflow(exc: ValueError) -> None:
    if _OVERFLOW_MESSAGE in str(exc):
        raise ContextOverflowError(f"the prompt does not fit in the context ({exc}); "
                                   "use a larger n_ctx (--n-ctx) or a shorter input") from exc


def _overflow_checked(chunks):
    try:
        yield from chunks
    except ValueError as exc:
        _raise_if_overflow(exc)
        raise
