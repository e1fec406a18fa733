"""PyTorch reference of PaceLLM: the oracle every kernel is checked against.

* ``AmbConfig``, ``ActivationMemoryBank`` (amb.py): the Activation Memory Bank (spec 2, 6).
* ``enable_amb``, ``disable_amb``, ``reset_memory``, ``get_banks``, ``run_prompt_and_generate``,
  ``ce_reorder_model`` (hf.py): transformers integration for Llama/Qwen2-family models.
* ``cluster_experts`` (the converter's own, pace_gguf.convert.ce, re-exported) and the ``permute_*``
  helpers (ce.py): Cortical Expert clustering and FFN permutation (spec 3). ce.py needs numpy only.
* ``write_golden`` (golden.py, also ``python -m pace_gguf.reference.golden``): golden dumps.

Names are loaded lazily, so ``import pace_gguf.reference.ce`` works without torch and torch is
imported only when an AMB/transformers name is first used.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "AmbConfig": "config",
    "ActivationMemoryBank": "amb",
    "BankState": "amb",
    "ForwardStats": "amb",
    "LOW": "amb",
    "MID": "amb",
    "HIGH": "amb",
    "NOT_STORED": "amb",
    "enable_amb": "hf",
    "disable_amb": "hf",
    "reset_memory": "hf",
    "get_banks": "hf",
    "ce_reorder_model": "hf",
    "run_prompt_and_generate": "hf",
    "GenerationResult": "hf",
    "AmbMLP": "hf",
    "cluster_experts": "ce",
    "ClusterResult": "ce",
    "permutation_from_labels": "ce",
    "inverse_permutation": "ce",
    "permute_rows": "ce",
    "permute_down": "ce",
    "permute_ffn": "ce",
    "expert_objective": "ce",
    "write_golden": "golden",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
