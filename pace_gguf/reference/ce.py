"""Cortical Expert (CE) in the reference: the converter's clustering (pace_gguf.convert.ce, the one
implementation, re-exported here) and the FFN permutation helpers the transformers integration
(hf.py) uses on numpy arrays and torch tensors. numpy only (torch only when given torch tensors).
"""

from __future__ import annotations

import numpy as np

from pace_gguf.convert.ce import (  # noqa: F401  (re-exported)
    ClusterResult, cluster_experts, expert_objective, permutation_from_labels, to_numpy,
)


def inverse_permutation(perm) -> np.ndarray:
    perm = check_permutation(perm)
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size, dtype=perm.dtype)
    return inv


def check_permutation(perm, n: int | None = None) -> np.ndarray:
    """Validate that ``perm`` is a permutation of 0..n-1; returns it as int64 numpy."""
    arr = to_numpy(perm)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"perm must be a 1-D integer array, got {arr.dtype} of shape {arr.shape}")
    arr = arr.astype(np.int64)
    if n is not None and arr.size != n:
        raise ValueError(f"perm has length {arr.size}, expected {n}")
    if not np.array_equal(np.sort(arr), np.arange(arr.size)):
        raise ValueError("perm is not a permutation of 0..len(perm)-1")
    return arr


def permute_rows(weight, perm):
    """gate/up weights [d_ff, d_model] (or a bias [d_ff]): new row p = old row perm[p]."""
    return _take(weight, perm, axis=0)


def permute_down(weight, perm, layout: str = "hf"):
    """down weight: layout "hf" = [d_model, d_ff] (HF and GGUF-as-numpy) permutes columns;
    layout "transposed" = [d_ff, d_model] permutes rows."""
    if layout not in ("hf", "transposed"):
        raise ValueError(f"layout must be 'hf' or 'transposed', got {layout!r}")
    return _take(weight, perm, axis=1 if layout == "hf" else 0)


def permute_ffn(gate, up, down, perm, down_layout: str = "hf"):
    """(gate', up', down') = (gate[perm], up[perm], down[:, perm]) for the default HF layout."""
    return permute_rows(gate, perm), permute_rows(up, perm), permute_down(down, perm, down_layout)


def _take(arr, perm, axis):
    """Index ``arr`` along ``axis`` with a validated perm; keeps numpy/torch type and dtype."""
    ndim = len(arr.shape)
    if ndim == 0 or not -ndim <= axis < ndim:
        raise ValueError(f"array of shape {tuple(arr.shape)} has no axis {axis} to permute")
    perm = check_permutation(perm, arr.shape[axis])
    if hasattr(arr, "index_select"):                       # torch tensor, any dtype
        import torch
        return arr.index_select(axis % ndim, torch.as_tensor(perm, device=arr.device))
    return np.take(np.asarray(arr), perm, axis=axis)
