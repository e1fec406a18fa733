"""The Activation Memory Bank from Python: configuration and the ctypes layer over the
`llama_pace_amb_*` functions of cpp/src/pace.h (implemented in cpp/src/pace-amb.cpp).

Validation lives in one place, the C library: `set_params` rejects invalid values with a message
that names the parameter, and this module raises it as `PaceConfigError`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import numbers
from dataclasses import dataclass

import numpy as np

from ._native import native_library
from .errors import PaceError

MAX_LAYERS = 512
MODES = ("code", "paper")
GRANULARITIES = ("ubatch", "prompt")


class PaceConfigError(PaceError, ValueError):
    """Invalid Activation Memory Bank parameters or pace.* metadata."""


class PaceMetadataWarning(UserWarning):
    """A model's pace.amb.* settings were rejected and replaced by the defaults (AMB off)."""


class _Params(ctypes.Structure):
    _fields_ = [
        ("enabled", ctypes.c_bool),
        ("mode", ctypes.c_int32),
        ("granularity", ctypes.c_int32),
        ("bank_size", ctypes.c_int32),
        ("topk", ctypes.c_int32),
        ("negk", ctypes.c_int32),
        ("store_topk", ctypes.c_int32),
        ("chunk", ctypes.c_int32),
        ("theta_high", ctypes.c_float),
        ("theta_low", ctypes.c_float),
        ("alpha", ctypes.c_float),
        ("w_high", ctypes.c_float),
        ("w_mid", ctypes.c_float),
        ("lambda_", ctypes.c_float),
        ("momentum", ctypes.c_float),
        ("n_layers", ctypes.c_int32),
        ("layers", ctypes.c_int32 * MAX_LAYERS),
    ]


class _Stats(ctypes.Structure):
    _fields_ = [
        ("bank_size", ctypes.c_int32),
        ("n_slots_used", ctypes.c_int32),
        ("n_high", ctypes.c_int64),
        ("n_mid", ctypes.c_int64),
        ("n_low", ctypes.c_int64),
        ("n_invalidations", ctypes.c_int32),
        ("pos_min", ctypes.c_int32),
        ("pos_max", ctypes.c_int32),
    ]


def _is_int32(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and -(2**31) <= value < 2**31


@dataclass(frozen=True)
class PaceConfig:
    """Activation Memory Bank settings of a context. Layers are 0-based (the paper's "13, 27" is 12, 26).

    Defaults are the released PaceLLM code's. `mode`: "code" (default) or "paper" (Algorithm 1);
    `granularity`: "ubatch" (each ubatch reads the bank left by the previous one) or "prompt"
    (a whole batch, i.e. one llama_decode of up to n_batch tokens, reads the bank as it was before
    it, like one Hugging Face forward of the prompt).
    """

    enabled: bool = False
    layers: tuple[int, ...] = ()
    bank_size: int = 100
    theta_high: float = 0.75
    theta_low: float = 0.25
    topk: int = 5
    negk: int = 2
    store_topk: int = 5
    alpha: float = 0.2
    w_high: float = 1.0
    w_mid: float = 0.5
    negative_weight: float = 0.1
    momentum: float = 0.5
    chunk: int = 1024
    mode: str = "code"
    granularity: str = "ubatch"

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

    def _to_c(self) -> _Params:
        if self.mode not in MODES:
            raise PaceConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.granularity not in GRANULARITIES:
            raise PaceConfigError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        layers = tuple(self.layers)
        if len(layers) > MAX_LAYERS:
            raise PaceConfigError(f"layers: at most {MAX_LAYERS} layers, got {len(layers)}")
        bad = [i for i in layers if not _is_int32(i)]
        if bad:
            raise PaceConfigError(f"layers must be integers in the int32 range, got {bad[0]!r}")
        p = _Params()
        p.enabled = bool(self.enabled)
        p.mode = MODES.index(self.mode)
        p.granularity = GRANULARITIES.index(self.granularity)
        for name in ("bank_size", "topk", "negk", "store_topk", "chunk"):
            value = getattr(self, name)
            if not _is_int32(value):
                raise PaceConfigError(f"{name} must be an integer in the int32 range, got {value!r}")
            setattr(p, name, value)
        for name in ("theta_high", "theta_low", "alpha", "w_high", "w_mid", "negative_weight", "momentum"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise PaceConfigError(f"{name} must be a number, got {value!r}")
            # float32 as in C: a value beyond its range becomes inf, which the C rules reject by name
            setattr(p, "lambda_" if name == "negative_weight" else name, float(value))
        p.n_layers = len(layers)
        for i, layer in enumerate(layers):
            p.layers[i] = layer
        return p

    @classmethod
    def _from_c(cls, p: _Params) -> "PaceConfig":
        return cls(
            enabled=bool(p.enabled), layers=tuple(p.layers[: p.n_layers]), bank_size=p.bank_size,
            theta_high=p.theta_high, theta_low=p.theta_low, topk=p.topk, negk=p.negk,
            store_topk=p.store_topk, alpha=p.alpha, w_high=p.w_high, w_mid=p.w_mid,
            negative_weight=p.lambda_, momentum=p.momentum, chunk=p.chunk,
            mode=MODES[p.mode], granularity=GRANULARITIES[p.granularity],
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


def _bind(name: str, restype, argtypes):
    fn = getattr(native_library(), name)
    fn.restype = restype
    fn.argtypes = argtypes
    return fn


def last_error() -> str:
    # a message may quote a GGUF string, which is untrusted bytes
    return _bind("llama_pace_last_error", ctypes.c_char_p, [])().decode("utf-8", errors="replace")


def _check(status: int, what: str) -> int:
    if status < 0:  # the C library's message names the parameter or key; `what` is the fallback
        raise PaceConfigError(last_error() or f"{what} failed")
    return status


def model_config(model_ptr) -> PaceConfig:
    """The AMB settings a model's pace.amb.* GGUF keys give (disabled when absent)."""
    p = _Params()
    fn = _bind("llama_pace_amb_model_params", ctypes.c_int32, [ctypes.c_void_p, ctypes.POINTER(_Params)])
    _check(fn(model_ptr, ctypes.byref(p)), "invalid pace.amb metadata")
    return PaceConfig._from_c(p)


def validate_config(config: PaceConfig, n_layer: int) -> None:
    """Raise PaceConfigError, naming the parameter, unless `config` is valid for a model with
    `n_layer` layers: the runtime's own rules (for tools that write pace.amb.* metadata)."""
    fn = _bind("llama_pace_amb_validate_params", ctypes.c_int32, [ctypes.POINTER(_Params), ctypes.c_int32])
    if not 1 <= n_layer < 2**31:
        raise PaceConfigError(f"the model's layer count must be a positive int32, got {n_layer}")
    _check(fn(ctypes.byref(config._to_c()), n_layer), "invalid AMB settings")


def get_config(ctx_ptr) -> PaceConfig:
    p = _Params()
    _bind("llama_pace_amb_get_params", ctypes.c_int32, [ctypes.c_void_p, ctypes.POINTER(_Params)])(ctx_ptr, ctypes.byref(p))
    return PaceConfig._from_c(p)


def set_config(ctx_ptr, config: PaceConfig) -> None:
    fn = _bind("llama_pace_amb_set_params", ctypes.c_int32, [ctypes.c_void_p, ctypes.POINTER(_Params)])
    _check(fn(ctx_ptr, ctypes.byref(config._to_c())), "invalid AMB settings")


def reset(ctx_ptr, seq_id: int = -1) -> None:
    _check(_bind("llama_pace_amb_reset", ctypes.c_int32, [ctypes.c_void_p, ctypes.c_int32])(ctx_ptr, seq_id), "reset")


def layer_stats(ctx_ptr, layer: int, seq_id: int = 0) -> LayerStats:
    s = _Stats()
    fn = _bind("llama_pace_amb_get_stats", ctypes.c_int32,
               [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.POINTER(_Stats)])
    _check(fn(ctx_ptr, seq_id, layer, ctypes.byref(s)), "stats")
    return LayerStats(layer, s.n_slots_used, s.bank_size, s.n_high, s.n_mid, s.n_low, s.n_invalidations)


def bank(ctx_ptr, layer: int, seq_id: int = 0) -> dict[str, np.ndarray]:
    """A copy of one bank: keys and values [bank_size, n_ff], usage [bank_size], valid (bool)."""
    fp = ctypes.POINTER(ctypes.c_float)
    fn = _bind("llama_pace_amb_get_bank", ctypes.c_int32,
               [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, fp, fp, fp, fp, ctypes.POINTER(ctypes.c_int64)])
    n_ff = ctypes.c_int64()
    _check(fn(ctx_ptr, seq_id, layer, None, None, None, None, ctypes.byref(n_ff)), "bank")
    m = get_config(ctx_ptr).bank_size
    keys, values = np.zeros((m, n_ff.value), np.float32), np.zeros((m, n_ff.value), np.float32)
    usage, valid = np.zeros(m, np.float32), np.zeros(m, np.float32)
    ptr = lambda a: a.ctypes.data_as(fp)  # noqa: E731
    _check(fn(ctx_ptr, seq_id, layer, ptr(keys), ptr(values), ptr(usage), ptr(valid), None), "bank")
    return {"keys": keys, "values": values, "usage": usage, "valid": valid != 0}


def cases(ctx_ptr, layer: int, n_pos: int, seq_id: int = 0) -> np.ndarray:
    """Retrieval case per position (0 low, 1 mid, 2 high, -1 no token) of one AMB layer."""
    out = np.zeros(n_pos, np.int32)
    fn = _bind("llama_pace_amb_get_cases", ctypes.c_int32,
               [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.POINTER(ctypes.c_int32), ctypes.c_int32])
    n = _check(fn(ctx_ptr, seq_id, layer, out.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)), n_pos), "cases")
    return out[:n]


def memory_size(ctx_ptr) -> int:
    return _bind("llama_pace_amb_memory_size", ctypes.c_size_t, [ctypes.c_void_p])(ctx_ptr)


def evict(ctx_ptr, seq_id: int, p0: int, p1: int) -> None:
    """Evict positions [p0, p1) of a sequence, moving later ones down, keeping its banks."""
    fn = _bind("llama_pace_amb_evict", ctypes.c_int32, [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32])
    if fn(ctx_ptr, seq_id, p0, p1) < 0:
        raise PaceError(last_error() or "evict failed")
