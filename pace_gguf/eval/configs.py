"""Configurations compared by an evaluation: AMB settings and a long-document strategy, written on
the command line as `--config SPEC`:

    off                          AMB off (strategy: direct)
    on                           AMB on the model's default layers (amb.default_layers)
    layers=12,26                 AMB on layers 12 and 26, other settings the defaults
    layers=12,26,mode=paper      ... with any AMB setting of pace_gguf.amb.AMB_SETTINGS by name
    on,theta_high=0.7,alpha=0.3  default layers with other thresholds
    off,strategy=stream          a long-document strategy (direct, stream, map-reduce, refine, auto)

A bare number after `layers=` continues the layer list. The spec itself is the configuration's name
in reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..amb import AMB_SETTINGS, PaceConfigError, default_layers
from ..longdoc import STRATEGIES

_SETTINGS = {setting.name: setting for setting in AMB_SETTINGS}
DEFAULT_STRATEGY = "direct"  # the only strategy that reads the haystack whole; others via strategy=


@dataclass(frozen=True)
class EvalConfig:
    name: str                               # the spec as given
    pace: dict = field(default_factory=dict)  # changes for Llama.configure_pace ("layers": "default" resolved later)
    strategy: str = DEFAULT_STRATEGY

    def pace_for(self, n_layer: int) -> dict:
        """The AMB changes for a model of n_layer layers ("on" means its default layers)."""
        if self.pace.get("layers") == "default":
            return {**self.pace, "layers": default_layers(n_layer)}
        return dict(self.pace)

    @property
    def amb(self) -> bool:
        return bool(self.pace.get("layers")) and self.pace.get("enabled", True)


def parse_config(spec: str) -> EvalConfig:
    """EvalConfig from a spec (module docstring); PaceConfigError naming the bad part otherwise."""
    pace: dict = {"enabled": False}
    strategy = DEFAULT_STRATEGY
    last_key = None
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            raise PaceConfigError(f"config {spec!r}: empty item")
        if part in ("off", "on"):
            pace = {"enabled": False} if part == "off" else {"layers": "default"}
        elif "=" not in part:
            if last_key != "layers" or not part.isdigit():
                raise PaceConfigError(f"config {spec!r}: {part!r} is not off, on or key=value")
            pace["layers"] = (*pace["layers"], int(part))
        else:
            key, value = (s.strip() for s in part.split("=", 1))
            if key == "strategy":
                if value not in STRATEGIES or value == "error":
                    raise PaceConfigError(f"config {spec!r}: strategy must be one of "
                                          f"{tuple(s for s in STRATEGIES if s != 'error')}, got {value!r}")
                strategy = value
            else:
                if key == "layers":
                    pace.pop("enabled", None)  # naming layers switches the AMB on (PaceConfig.with_changes)
                pace[key] = _value(spec, key, value)
            last_key = key
            continue
        last_key = None
    return EvalConfig(spec, pace, strategy)


def _value(spec: str, key: str, text: str):
    setting = _SETTINGS.get(key)
    if setting is None:
        raise PaceConfigError(f"config {spec!r}: unknown setting {key!r}; known: strategy, "
                              f"{', '.join(_SETTINGS)}")
    try:
        if setting.kind is tuple:
            return (int(text),) if text else ()
        if setting.kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "on", "off"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "on")
        return setting.kind(text)
    except ValueError:
        raise PaceConfigError(f"config {spec!r}: {key}={text!r} is not a valid {setting.values}") from None
