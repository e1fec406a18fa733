"""`pace_gguf.Llama`: llama-cpp-python's `Llama`, running on pace-gguf's patched llama.cpp.

It is a drop-in: same constructor and methods. What it adds:
* `model_path` may also be a registry name (e.g. "smollm2-135m-instruct"), pulled on first use;
* the file is checked before llama.cpp opens it, so a missing, foreign or truncated file raises
  `ModelFileError` with a message that says which, instead of a bare "failed to load";
* `pace=`: the Activation Memory Bank (AMB) of the context, with `reset_memory()`,
  `memory_stats()`, `amb_bank()` and `amb_cases()`;
* `build_id`, the identity of the native library actually in use.
* `rpc_servers=`: "HOST:PORT,..." of `pace-gguf rpc-server`s whose devices take layers
  (`n_gpu_layers`), as llama-cpp-python's earlier versions and llama.cpp's `--rpc` (pace_gguf.rpc).

AMB and llama-cpp-python's prompt-prefix reuse: a bank cannot "un-store" the tokens of a dropped
suffix. With the AMB on, `generate()` keeps the cached context only when the new prompt continues
everything the context holds (the next turn of the same conversation: the bank goes on as in one
long context); any other prompt is evaluated from a freshly reset bank, as a new context would.
Saved states (`save_state()`/`load_state()`, and llama-cpp-python's prompt cache built on them)
carry the bank.

`ask()` and `summarize()` read documents of any length (see pace_gguf.longdoc).
"""

from __future__ import annotations

import warnings
from typing import Union

from . import _llama_cpp_compat as compat
from . import amb, rpc
from ._native import build_id, llama_cpp_module
from .amb import LayerStats, PaceConfig, PaceMetadataWarning
from .errors import ContextCreationError, ContextOverflowError, ModelFileError, PaceError
from .gguf_file import check_gguf
from .interrupts import deferred
from .registry import resolve_model

_llama_cpp = llama_cpp_module()

PaceSpec = Union[PaceConfig, dict, bool, None]


class Llama(_llama_cpp.Llama):
    def __init__(self, model_path: str, *, pace: PaceSpec = None, rpc_servers: str | list[str] | None = None,
                 **kwargs):
        path = resolve_model(model_path)
        check_gguf(path)
        if rpc_servers:
            rpc.add_servers(rpc_servers)
        try:
            with deferred():  # llama.cpp logs the load through a Python callback (see interrupts)
                super().__init__(model_path=str(path), **kwargs)
        except UnicodeEncodeError as exc:  # llama-cpp-python passes the path on as UTF-8 text
            raise ModelFileError(f"{path}: llama.cpp can only open file names that are valid UTF-8") from exc
        except ValueError as exc:  # llama-cpp-python's "Failed to load model" / "Failed to create llama_context"
            raise self._load_error(path, exc) from exc
        self.configure_pace(pace)

    def _load_error(self, path, exc: ValueError) -> PaceError:
        """Which step failed, told by how far llama-cpp-python's constructor got: no model yet means
        the file could not be loaded; a model means its context (sized by n_ctx) could not be made."""
        if not compat.model_loaded(self):
            return ModelFileError(f"llama.cpp could not load {path}: {exc} ({amb.last_error() or 'see its log'})")
        return ContextCreationError(
            f"llama.cpp could not create a context of {self.context_params.n_ctx} tokens for {path.name}: its KV "
            "cache, allocated up front, probably does not fit in memory; use a smaller n_ctx (--n-ctx; the model "
            f"was trained with {compat.n_ctx_train(self)}; --verbose shows llama.cpp's reason)"
        )

    # -- Activation Memory Bank --------------------------------------------------------------------

    def configure_pace(self, pace: PaceSpec) -> PaceConfig:
        """Apply AMB settings and empty the banks. `pace` is one of:
        None (the model's pace.amb.* GGUF settings; off when absent), False (off), True (the
        model's settings, switched on), a dict of changes to the model's settings, or a PaceConfig.
        """
        base = self._model_pace_config(needed=pace is None or pace is True or pace == {})
        if pace is None:
            config = base
        elif pace is True or pace is False:
            config = base.replace(enabled=pace)
        elif isinstance(pace, dict):
            config = base.with_changes(pace)
        elif isinstance(pace, PaceConfig):
            config = pace
        else:
            raise amb.PaceConfigError(f"pace must be a PaceConfig, a dict, a bool or None, got {type(pace).__name__}")
        amb.set_config(compat.context_pointer(self), config)
        return config

    def _model_pace_config(self, needed: bool) -> PaceConfig:
        """The model's pace.amb.* settings. Invalid ones do not make the model unusable: unless the
        caller asked for exactly those settings (`needed`), they are replaced by the defaults (AMB
        off) with a warning that says why."""
        try:
            return amb.model_config(compat.model_pointer(self))
        except amb.PaceConfigError as exc:
            if needed:
                raise
            warnings.warn(f"{exc}; using the default AMB settings instead", PaceMetadataWarning, stacklevel=3)
            return PaceConfig()

    @property
    def pace(self) -> PaceConfig:
        """The AMB settings in effect."""
        return amb.get_config(compat.context_pointer(self))

    @property
    def amb_enabled(self) -> bool:
        return self.pace.enabled

    def reset_memory(self, seq_id: int = -1) -> None:
        """Empty the AMB banks of one sequence, or of all (-1)."""
        amb.reset(compat.context_pointer(self), seq_id)

    def memory_stats(self, seq_id: int = 0) -> dict[int, LayerStats]:
        """Per AMB layer: slots used and retrieval cases (high/mid/low) since the last reset."""
        ctx = compat.context_pointer(self)
        return {layer: amb.layer_stats(ctx, layer, seq_id) for layer in sorted(self.pace.layers)}

    def amb_bank(self, layer: int, seq_id: int = 0) -> dict:
        """A copy of one bank (keys, values, usage, valid) as numpy arrays."""
        return amb.bank(compat.context_pointer(self), layer, seq_id)

    def amb_cases(self, layer: int, seq_id: int = 0):
        """Retrieval case per position of the current sequence (0 low, 1 mid, 2 high)."""
        return amb.cases(compat.context_pointer(self), layer, self.n_tokens, seq_id)

    @property
    def amb_memory_bytes(self) -> int:
        return amb.memory_size(compat.context_pointer(self))

    def evict_window(self, p0: int, p1: int, seq_id: int = 0) -> None:
        """Evict cached positions [p0, p1) and move the later ones down (llama.cpp's context shift),
        keeping the AMB banks: what left the window still acts through them. The token history that
        llama-cpp-python keeps follows, so the next `eval`/`generate` continues after the window."""
        n = self.n_tokens
        if not 0 <= p0 < p1 <= n:
            raise PaceError(f"evict_window: need 0 <= p0 < p1 <= {n} (the cached tokens), got [{p0}, {p1})")
        amb.evict(compat.context_pointer(self), seq_id, p0, p1)
        compat.drop_held_tokens(self, p0, p1)

    # -- long documents (pace_gguf.longdoc) ---------------------------------------------------------

    def ask(self, source, question: str, *, strategy: str = "auto", **options):
        """Answer `question` about `source`: a text (str), a file (pathlib.Path; "-" is stdin), a
        Document, or a list of these, of any length. `strategy`: "auto" (direct when it fits, else
        map-reduce), "direct", "map-reduce", "refine", "stream" or "error". Options: max_tokens,
        chunk_tokens, overlap, system, stream=True (returns an iterator of text pieces whose
        `.result` is the ReadResult), on_text (callback per piece), progress (callback per prefill
        batch), and sampling arguments of create_completion (temperature defaults to 0).
        Returns a `pace_gguf.longdoc.ReadResult`."""
        from . import longdoc  # noqa: PLC0415

        return longdoc.read(self, "ask", source, question, strategy=strategy, **options)

    def summarize(self, source, *, strategy: str = "auto", length: str | int = "medium", style: str = "paragraph",
                  **options):
        """Summarize `source` (as in `ask`). `length`: "short", "medium", "long" or a number of tokens;
        `style`: "paragraph" or "bullets". Long inputs default to map-reduce. Returns a ReadResult
        (or a stream, as in `ask`)."""
        from . import longdoc  # noqa: PLC0415

        return longdoc.read(self, "summarize", source, strategy=strategy, length=length, style=style, **options)

    # -- llama-cpp-python overrides ----------------------------------------------------------------

    @property
    def _capacity(self) -> int:
        # llama-cpp-python's token arrays hold the n_ctx asked for, which llama.cpp may have rounded up
        return min(self.n_ctx(), compat.token_capacity(self))

    def eval(self, tokens) -> None:
        # llama-cpp-python would fail deep inside with a numpy broadcast error; say what happened.
        if len(tokens) > self._capacity - self.n_tokens:
            raise ContextOverflowError(
                f"{len(tokens)} tokens do not fit in the context: it holds {self._capacity} and {self.n_tokens} are in "
                "use; use a larger n_ctx (--n-ctx) or a shorter input"
            )
        # One call per n_batch tokens, the llama_decode calls llama-cpp-python makes anyway, each
        # with Ctrl-C held until it returns (see interrupts): a long prompt stops within a batch.
        for start in range(0, max(len(tokens), 1), self.n_batch):
            with deferred():
                super().eval(tokens[start:start + self.n_batch])

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
        if kwargs.get("reset", True) and self.amb_enabled and not self._continues_context(tokens):
            compat.forget_tokens(self)  # no prefix reuse: see the module docstring
        n_prompt = len(tokens)
        try:
            yield from super().generate(tokens, *args, **kwargs)
        except ContextOverflowError as exc:
            if self.n_tokens < n_prompt:
                raise  # the prompt itself did not fit
            # the last token sampled (and already handed out) is the one that found no room
            raise ContextOverflowError(
                f"the answer ran out of context after {self.n_tokens - n_prompt + 1} tokens (the prompt took "
                f"{n_prompt} of {self._capacity}); use a larger n_ctx (--n-ctx) or a smaller max_tokens (--max-tokens)"
            ) from exc

    def _continues_context(self, tokens) -> bool:
        """Whether llama-cpp-python's prefix reuse would keep every cached position: the prompt is the
        cached tokens plus more (or exactly them, with their logits still live). Any shorter reuse
        removes positions the bank absorbed, which empties it while the cache keeps the prefix."""
        held = compat.held_tokens(self)
        n = len(held)
        if n == 0 or len(tokens) < n or list(tokens[:n]) != held:
            return False
        return len(tokens) > n or compat.logits_live(self)

    def load_state(self, state) -> None:
        try:
            super().load_state(state)
        except RuntimeError as exc:
            raise PaceError(f"cannot load this state into the context: {amb.last_error() or exc}") from exc

    def close(self) -> None:
        # A constructor that rejected its input never created llama_cpp's resources; without this
        # guard, llama_cpp.Llama.__del__ would print an AttributeError traceback.
        if compat.resources_created(self):
            super().close()

    @property
    def build_id(self) -> str:
        return build_id()


def _raise_if_overflow(exc: ValueError) -> None:
    if compat.is_overflow_error(exc):
        raise ContextOverflowError(f"the prompt does not fit in the context ({exc}); "
                                   "use a larger n_ctx (--n-ctx) or a shorter input") from exc


def _overflow_checked(chunks):
    try:
        yield from chunks
    except ValueError as exc:
        _raise_if_overflow(exc)
        raise
