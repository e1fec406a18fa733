"""AMB hyperparameters (spec 2.8) of the PyTorch reference, with validation.

The settings the runtime has too carry its names and defaults (pace_gguf.amb.AMB_SETTINGS, the
one table); the rest are the reference's own (retrieval chunking, legacy switches, eps). The
validation is the oracle's own, written from the spec; tests/test_amb_settings.py checks that it
accepts and refuses what the C library does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from ..amb import AMB_SETTINGS, MODES

_DEFAULT = {setting.name: setting.default for setting in AMB_SETTINGS}


@dataclass(frozen=True)
class AmbConfig:
    """Hyperparameters of one Activation Memory Bank.

    Defaults are the released code's (spec 2.8, "CLEAN" column), as the runtime's.
    """

    # Slots M in the bank.
    bank_size: int = _DEFAULT["bank_size"]
    # Case thresholds; both compared with strict ">" (spec 2.3).
    theta_high: float = _DEFAULT["theta_high"]
    theta_low: float = _DEFAULT["theta_low"]
    # Retrieval: mean of the top-k values (positive) and of the bottom-k' values (negative).
    topk: int = _DEFAULT["topk"]
    negk: int = _DEFAULT["negk"]
    # Store: decision statistic is the mean of the top-min(store_topk, m) similarities.
    store_topk: int = _DEFAULT["store_topk"]
    # Code semantics: o = (1 - alpha) x + alpha r. Ignored in paper semantics (no alpha there).
    alpha: float = _DEFAULT["alpha"]
    # r = w_high*p + negative_weight*q (high) / w_mid*p + negative_weight*q (mid).
    w_high: float = _DEFAULT["w_high"]
    w_mid: float = _DEFAULT["w_mid"]
    negative_weight: float = _DEFAULT["negative_weight"]
    # Merge: slot <- momentum*slot + (1 - momentum)*mean.
    momentum: float = _DEFAULT["momentum"]
    # Store chunk C (semantic: the bank is updated chunk by chunk).
    chunk: int = _DEFAULT["chunk"]
    # Retrieval chunk: a memory bound only, no effect on results (spec 2.6, 8.8).
    retrieve_chunk: int = 1024
    # "code" = released package rules (default); "paper" = Algorithm 1 (spec 2.4 table, 2.9).
    mode: str = _DEFAULT["mode"]
    # Legacy compat: no valid mask, all M slots (zeros when empty) take part in every top-k.
    legacy_zero_slots: bool = False
    # Legacy compat: more than M low rows in a chunk keep the LAST M (cyclic slot order) not the first.
    legacy_keep_last: bool = False
    # Released code skips the store while the module is in training mode; True stores anyway.
    store_in_training: bool = False
    # Norm clamp of the cosine: dot / (max(|x|, eps) * max(|k|, eps)).
    eps: float = 1e-8

    def __post_init__(self) -> None:
        _check_int("bank_size", self.bank_size, minimum=1)
        _check_int("topk", self.topk, minimum=1)
        _check_int("negk", self.negk, minimum=0)
        _check_int("store_topk", self.store_topk, minimum=1)
        _check_int("chunk", self.chunk, minimum=1)
        _check_int("retrieve_chunk", self.retrieve_chunk, minimum=1)
        for name in ("theta_high", "theta_low", "alpha", "momentum"):
            _check_unit(name, getattr(self, name))
        if self.theta_low > self.theta_high:
            raise ValueError(
                f"theta_low ({self.theta_low}) must be <= theta_high ({self.theta_high})"
            )
        for name in ("w_high", "w_mid", "negative_weight"):
            _check_finite(name, getattr(self, name))
        _check_finite("eps", self.eps)
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        for name in ("legacy_zero_slots", "legacy_keep_last", "store_in_training"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AmbConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown AmbConfig field(s): {unknown}")
        return cls(**data)


def _check_int(name: str, value, minimum: int) -> None:
    # bool is an int subclass; reject it so that e.g. topk=True is not silently 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_finite(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def _check_unit(name: str, value) -> None:
    _check_finite(name, value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
