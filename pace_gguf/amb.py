"""The Activation Memory Bank from Python: configuration and the ctypes layer over the
`llama_pace_amb_*` functions of cpp/src/pace.h (implemented in cpp/src/pace-amb.cpp).

Validation lives in one place, the C library: `set_params` rejects invalid values with a message
that names the parameter, and this module raises it as `PaceConfigError`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import numbers
from dataclasses import dataclass, field

import numpy as np

from . import _bindings
from ._bindings import MAX_LAYERS
from .errors import PaceError
from .interrupts import deferred

MODES = ("code", "paper")  # enum llama_pace_amb_mode, in value order
GRANULARITIES = ("ubatch", "prompt")  # enum llama_pace_amb_granularity


class PaceConfigError(PaceError, ValueError):
    """Invalid Activation Memory Bank parameters or pace.* metadata."""


class PaceMetadataWarning(UserWarning):
    """A model's pace.amb.* settings were rejected and replaced by the defaults (AMB off)."""


def _is_int32(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and -(2**31) <= value < 2**31


def _setting(default, description: str, *, key: str | None = None, flag: str | None = None, values: str = "",
             choices: tuple[str, ...] = ()):
    """A PaceConfig field with what its AmbSetting row says about it (see there)."""
    return field(default=default, metadata={"key": key, "help": description, "flag": flag, "values": values,
                                            "choices": choices})


@dataclass(frozen=True)
class PaceConfig:
    """Activation Memory Bank settings of a context. Layers are 0-based (the paper's "13, 27" is 12, 26).

    Defaults are the released PaceLLM code's. `mode`: "code" (default) or "paper" (Algorithm 1);
    `granularity`: "ubatch" (each ubatch reads the bank left by the previous one) or "prompt"
    (a whole batch, i.e. one llama_decode of up to n_batch tokens, reads the bank as it was before
    it, like one Hugging Face forward of the prompt).

    Each field is one row of AMB_SETTINGS (its C member, GGUF key and CLI flag).
    """

    enabled: bool = _setting(False, "switch the AMB on or off", values="bool")
    layers: tuple[int, ...] = _setting((), "0-based layers with an Activation Memory Bank, e.g. 12,26",
                                       flag="--amb-layers", values="layers")
    bank_size: int = _setting(100, "slots per bank", flag="--amb-bank", values="int >= 1")
    theta_high: float = _setting(0.75, "similarity above which a token reuses the bank", flag="--amb-theta-high",
                                 values="[0, 1]")
    theta_low: float = _setting(0.25, "similarity above which a token fuses with the bank", flag="--amb-theta-low",
                                values="[0, 1]")
    topk: int = _setting(5, "retrieval: positive neighbours", values="int >= 1")
    negk: int = _setting(2, "retrieval: least similar neighbours (noise)", values="int >= 0")
    store_topk: int = _setting(5, "store: neighbours whose mean similarity decides the case", values="int >= 1")
    alpha: float = _setting(0.2, "fusion weight of the retrieved activation", flag="--amb-alpha", values="[0, 1]")
    w_high: float = _setting(1.0, "weight of the retrieved activation in the high case", values="real")
    w_mid: float = _setting(0.5, "weight of the retrieved activation in the mid case", values="real")
    # the paper's lambda: `lambda` in C and GGUF, a Python keyword here
    negative_weight: float = _setting(0.1, "weight of the least similar neighbours (the paper's lambda)",
                                      key="lambda", values="real")
    momentum: float = _setting(0.5, "merge: slot = momentum*slot + (1-momentum)*mean", values="[0, 1]")
    chunk: int = _setting(1024, "store chunk in tokens", values="int >= 1")
    mode: str = _setting("code", "code (released code's rules, default) or paper (Algorithm 1)",
                         flag="--amb-mode", values="choice", choices=MODES)
    granularity: str = _setting(
        "ubatch", "ubatch (default) or prompt (a whole batch of up to n_batch prompt tokens reads the bank as before it)",
        flag="--amb-granularity", values="choice", choices=GRANULARITIES)

    def replace(self, **changes) -> "PaceConfig":
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise PaceConfigError(f"unknown AMB setting(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def with_changes(self, changes: dict) -> "PaceConfig":
        """These settings with a dict of changes applied (Llama's `pace=` dict, the CLI's AMB flags,
        a server request's "pace"): `layers` may be any sequence, and naming layers switches the
        AMB on (an empty list: off) unless `enabled` is given too."""
        changes = dict(changes)
        if "layers" in changes:
            changes["layers"] = tuple(changes["layers"])
            changes.setdefault("enabled", bool(changes["layers"]))
        return self.replace(**changes)

    # -- conversion to and from the C struct ----------------------------------------------------

    def _to_c(self) -> _bindings.AmbParams:
        p = _bindings.AmbParams()
        for setting in AMB_SETTINGS:
            setting.to_c(p, getattr(self, setting.name))
        return p

    @classmethod
    def _from_c(cls, p: _bindings.AmbParams) -> "PaceConfig":
        return cls(**{setting.name: setting.from_c(p) for setting in AMB_SETTINGS})


@dataclass(frozen=True)
class AmbSetting:
    """One AMB setting and its spelling in each part of pace-gguf: a row of AMB_SETTINGS.

    The C library validates values (set_params, validate_params); `values` only lets a command
    line reject an ill-formed one early: "bool", "layers", "int >= 1", "int >= 0", "[0, 1]",
    "real" or "choice" (one of `choices`)."""

    name: str           # PaceConfig field; key of Llama's pace= dict and of a server request's "pace"
    key: str            # member of struct llama_pace_amb_params (pace.h) and GGUF key pace.amb.<key>
    kind: type          # bool, tuple (layers), int, float or str (one of `choices`)
    default: object
    help: str
    flag: str | None    # option of the commands that run a model (chat, ask, summarize, serve); None: none
    values: str
    choices: tuple[str, ...]

    @property
    def gguf_key(self) -> str:
        return f"pace.amb.{self.key}"

    @property
    def ctype(self):
        """Its type in struct llama_pace_amb_params (layers: the array, with n_layers beside it)."""
        return dict(_bindings.AmbParams._fields_)[self.key]

    def to_c(self, p: _bindings.AmbParams, value) -> None:
        """Set its member of `p` to `value`, or raise PaceConfigError naming the setting."""
        if self.kind is str:
            if value not in self.choices:
                raise PaceConfigError(f"{self.name} must be one of {self.choices}, got {value!r}")
            setattr(p, self.key, self.choices.index(value))
        elif self.kind is tuple:
            _layers_to_c(p, value)
        elif self.kind is int:
            if not _is_int32(value):
                raise PaceConfigError(f"{self.name} must be an integer in the int32 range, got {value!r}")
            setattr(p, self.key, value)
        elif self.kind is float:
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise PaceConfigError(f"{self.name} must be a number, got {value!r}")
            # float32 as in C: a value beyond its range becomes inf, which the C rules reject by name
            setattr(p, self.key, float(value))
        else:
            setattr(p, self.key, bool(value))

    def from_c(self, p: _bindings.AmbParams):
        if self.kind is str:
            return self.choices[getattr(p, self.key)]
        if self.kind is tuple:
            return tuple(p.layers[: p.n_layers])
        return self.kind(getattr(p, self.key))


def _layers_to_c(p: _bindings.AmbParams, layers) -> None:
    layers = tuple(layers)
    if len(layers) > MAX_LAYERS:
        raise PaceConfigError(f"layers: at most {MAX_LAYERS} layers, got {len(layers)}")
    bad = [i for i in layers if not _is_int32(i)]
    if bad:
        raise PaceConfigError(f"layers must be integers in the int32 range, got {bad[0]!r}")
    p.n_layers = len(layers)
    for i, layer in enumerate(layers):
        p.layers[i] = layer


# Every AMB setting, in PaceConfig's order: the one table that PaceConfig's C conversion, the CLI's
# --amb-* flags (cli_args) and the converter's pace.amb.* keys are made from.
AMB_SETTINGS: tuple[AmbSetting, ...] = tuple(
    AmbSetting(name=f.name, key=f.metadata["key"] or f.name, kind=type(f.default), default=f.default,
               help=f.metadata["help"], flag=f.metadata["flag"], values=f.metadata["values"],
               choices=f.metadata["choices"])
    for f in dataclasses.fields(PaceConfig)
)


@dataclass(frozen=True)
class LayerStats:
    """One AMB layer of one sequence: bank occupancy and retrieval cases since the last reset."""

    layer: int
    slots_used: int
    bank_size: int
    high: int
    mid: int
    low: int
    invalidations: int

    def __str__(self) -> str:
        return (f"layer {self.layer}: slots {self.slots_used}/{self.bank_size}, high {self.high}, "
                f"mid {self.mid}, low {self.low}, invalidations {self.invalidations}")


def last_error() -> str:
    # a message may quote a GGUF string, which is untrusted bytes
    return _bindings.api().llama_pace_last_error().decode("utf-8", errors="replace")


def _check(status: int, what: str) -> int:
    if status < 0:  # the C library's message names the parameter or key; `what` is the fallback
        raise PaceConfigError(last_error() or f"{what} failed")
    return status


def default_layers(n_layer: int) -> tuple[int, int]:
    """Two AMB layers for a model of n_layer layers: the paper's 0-based layers 12 and 26 (of
    Qwen2-7B's 28) as they are when the model has at least 27 layers, else at the same relative
    depths (12/27 and 26/27 of the way through). What `--config on` of `pace-gguf eval` and the
    benchmarks mean by "the default layers"; the paper itself tuned layers per task."""
    if n_layer < 2:
        raise PaceConfigError(f"a model needs at least 2 layers for the default AMB layers, it has {n_layer}")
    if n_layer >= 27:
        return (12, 26)
    return (round(12 / 27 * (n_layer - 1)), round(26 / 27 * (n_layer - 1)))


def default_config() -> PaceConfig:
    """The C library's defaults (llama_pace_amb_default_params), which PaceConfig() repeats."""
    return PaceConfig._from_c(_bindings.api().llama_pace_amb_default_params())


def model_config(model_ptr) -> PaceConfig:
    """The AMB settings a model's pace.amb.* GGUF keys give (disabled when absent)."""
    p = _bindings.AmbParams()
    _check(_bindings.api().llama_pace_amb_model_params(model_ptr, ctypes.byref(p)), "invalid pace.amb metadata")
    return PaceConfig._from_c(p)


def validate_config(config: PaceConfig, n_layer: int) -> None:
    """Raise PaceConfigError, naming the parameter, unless `config` is valid for a model with
    `n_layer` layers: the runtime's own rules (for tools that write pace.amb.* metadata)."""
    if not 1 <= n_layer < 2**31:
        raise PaceConfigError(f"the model's layer count must be a positive int32, got {n_layer}")
    _check(_bindings.api().llama_pace_amb_validate_params(ctypes.byref(config._to_c()), n_layer), "invalid AMB settings")


def get_config(ctx_ptr) -> PaceConfig:
    p = _bindings.AmbParams()
    _bindings.api().llama_pace_amb_get_params(ctx_ptr, ctypes.byref(p))
    return PaceConfig._from_c(p)


def set_config(ctx_ptr, config: PaceConfig) -> None:
    # A new configuration re-reserves the graph (tens of ms), which llama.cpp logs through
    # llama-cpp-python's Python callback: Ctrl-C is held until it returns (see interrupts), or
    # ctypes would print and drop the KeyboardInterrupt raised inside that callback.
    with deferred():
        status = _bindings.api().llama_pace_amb_set_params(ctx_ptr, ctypes.byref(config._to_c()))
    _check(status, "invalid AMB settings")


def reset(ctx_ptr, seq_id: int = -1) -> None:
    _check(_bindings.api().llama_pace_amb_reset(ctx_ptr, seq_id), "reset")


def layer_stats(ctx_ptr, layer: int, seq_id: int = 0) -> LayerStats:
    s = _bindings.AmbStats()
    _check(_bindings.api().llama_pace_amb_get_stats(ctx_ptr, seq_id, layer, ctypes.byref(s)), "stats")
    return LayerStats(layer, s.n_slots_used, s.bank_size, s.n_high, s.n_mid, s.n_low, s.n_invalidations)


def bank(ctx_ptr, layer: int, seq_id: int = 0) -> dict[str, np.ndarray]:
    """A copy of one bank: keys and values [bank_size, n_ff], usage [bank_size], valid (bool)."""
    get_bank = _bindings.api().llama_pace_amb_get_bank
    n_ff = ctypes.c_int64()
    _check(get_bank(ctx_ptr, seq_id, layer, None, None, None, None, ctypes.byref(n_ff)), "bank")
    m = get_config(ctx_ptr).bank_size
    keys, values = np.zeros((m, n_ff.value), np.float32), np.zeros((m, n_ff.value), np.float32)
    usage, valid = np.zeros(m, np.float32), np.zeros(m, np.float32)
    ptr = lambda a: a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))  # noqa: E731
    _check(get_bank(ctx_ptr, seq_id, layer, ptr(keys), ptr(values), ptr(usage), ptr(valid), None), "bank")
    return {"keys": keys, "values": values, "usage": usage, "valid": valid != 0}


def cases(ctx_ptr, layer: int, n_pos: int, seq_id: int = 0) -> np.ndarray:
    """Retrieval case per position (0 low, 1 mid, 2 high, -1 no token) of one AMB layer."""
    out = np.zeros(n_pos, np.int32)
    n = _check(_bindings.api().llama_pace_amb_get_cases(
        ctx_ptr, seq_id, layer, out.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)), n_pos), "cases")
    return out[:n]


def memory_size(ctx_ptr) -> int:
    return _bindings.api().llama_pace_amb_memory_size(ctx_ptr)


def evict(ctx_ptr, seq_id: int, p0: int, p1: int) -> None:
    """Evict positions [p0, p1) of a sequence, moving later ones down, keeping its banks."""
    if _bindings.api().llama_pace_amb_evict(ctx_ptr, seq_id, p0, p1) < 0:
        raise PaceError(last_error() or "evict failed")
