"""Shared setup for the reference tests."""

try:
    import torch
except ImportError:          # the test modules skip themselves via importorskip
    torch = None

if torch is not None:
    # The tensors here are tiny: extra threads only add synchronisation cost (and on a busy
    # 2-core machine, heavy contention). One thread also keeps BLAS blocking fixed.
    torch.set_num_threads(1)
