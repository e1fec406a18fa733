"""CE invariants of spec section 8 (items 1-3) and the permutation helpers."""

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings, strategies as st  # noqa: E402

from pace_gguf.convert import ce  # noqa: E402
from pace_gguf.convert.imatrix import permute_imatrix  # noqa: E402
from pace_gguf.reference import (  # noqa: E402
    cluster_experts, inverse_permutation, permute_down, permute_ffn, permute_rows,
)


def planted(n_experts=8, size=16, d=32, noise=0.3, seed=0):
    """Rows around n_experts random directions, shuffled; returns (gate, true labels)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_experts, d))
    truth = rng.permutation(np.repeat(np.arange(n_experts), size))
    gate = centers[truth] + noise * rng.standard_normal((truth.size, d))
    return gate.astype(np.float32), truth


def silu(x):
    return x / (1.0 + np.exp(-x))


def ffn(gate, up, down, h):
    return down @ (silu(gate @ h) * (up @ h))


# ---------------------------------------------------------------------- 1: balance and layout

@pytest.mark.parametrize("method", ["auction", "greedy"])
@pytest.mark.parametrize("d_ff, k", [(96, 8), (128, 1), (64, 64), (120, 5)])
def test_labels_balanced_and_perm_contiguous(method, d_ff, k):
    gate = np.random.default_rng(1).standard_normal((d_ff, 12)).astype(np.float32)
    res = cluster_experts(gate, k, seed=0, method=method)
    assert np.bincount(res.labels, minlength=k).tolist() == [d_ff // k] * k
    assert np.array_equal(np.sort(res.perm), np.arange(d_ff))
    blocks = res.labels[res.perm]
    assert np.all(np.diff(blocks) >= 0)                          # contiguous expert blocks
    assert np.array_equal(blocks, np.repeat(np.arange(k), d_ff // k))
    for e in range(k):                                           # ascending inside each expert
        assert np.all(np.diff(res.perm[blocks == e]) > 0)
    assert res.objective == pytest.approx(ce.expert_objective(gate, res.labels, k), abs=1e-6)


def test_deterministic_for_a_seed():
    gate = np.random.default_rng(2).standard_normal((256, 16)).astype(np.float32)
    a, b = cluster_experts(gate, 8, seed=3), cluster_experts(gate, 8, seed=3)
    assert np.array_equal(a.labels, b.labels) and a.objective == b.objective
    c = cluster_experts(gate, 8, seed=4)
    assert not np.array_equal(a.labels, c.labels)


def test_recovers_planted_experts():
    gate, truth = planted()
    res = cluster_experts(gate, 8, seed=0)
    # Same partition up to renaming: every found expert is exactly one planted expert.
    pairs = set(zip(res.labels.tolist(), truth.tolist()))
    assert len(pairs) == 8


def test_auction_not_worse_than_greedy_at_equal_iterations():
    gate = np.random.default_rng(5).standard_normal((512, 48)).astype(np.float32)
    for iters in (1, 3, 10):
        fast = cluster_experts(gate, 16, seed=0, max_iter=iters, tol=None)
        slow = cluster_experts(gate, 16, seed=0, max_iter=iters, tol=None, method="greedy")
        assert fast.objective >= slow.objective - 1e-7, iters


def test_auction_assignment_is_optimal_on_small_problems():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n, k = (6, 2) if trial % 2 else (6, 3)
        scores = rng.standard_normal((n, k))
        labels, _ = ce.auction_assign(scores, n // k)
        assert np.bincount(labels, minlength=k).tolist() == [n // k] * k
        best = max(sum(scores[i, lab[i]] for i in range(n))
                   for lab in set(itertools.permutations(np.repeat(np.arange(k), n // k))))
        assert scores[np.arange(n), labels].sum() >= best - 1e-4
        greedy = ce.greedy_margin_assign(scores, n // k)
        assert scores[np.arange(n), labels].sum() >= scores[np.arange(n), greedy].sum() - 1e-4


def test_greedy_baseline_visits_neurons_by_top1_minus_top2_margin():
    # A prefers expert 0 by margin 0.1 over its second choice, B by 0.2: B is served first and
    # takes expert 0, A falls back to expert 1, C (no margin) gets what is left.
    scores = np.array([[0.9, 0.8, 0.0],     # A
                       [0.7, 0.1, 0.5],     # B
                       [0.3, 0.3, 0.3]])    # C
    assert ce.greedy_margin_assign(scores, 1).tolist() == [1, 0, 2]


def test_accepts_torch_and_half_precision():
    gate = torch.randn(64, 8).to(torch.bfloat16)
    res = cluster_experts(gate, 4)
    assert np.bincount(res.labels).tolist() == [16] * 4
    res16 = cluster_experts(gate.float().numpy().astype(np.float16), 4)
    assert np.bincount(res16.labels).tolist() == [16] * 4


# ---------------------------------------------------------------------- 2: round trip

@settings(max_examples=20, deadline=None)
@given(d_ff=st.integers(1, 40), d_model=st.integers(1, 9), seed=st.integers(0, 1000),
       dtype=st.sampled_from([np.float16, np.float32, np.float64]))
def test_round_trip_is_bit_exact(d_ff, d_model, seed, dtype):
    rng = np.random.default_rng(seed)
    gate = rng.standard_normal((d_ff, d_model)).astype(dtype)
    up = rng.standard_normal((d_ff, d_model)).astype(dtype)
    down = rng.standard_normal((d_model, d_ff)).astype(dtype)
    perm = rng.permutation(d_ff)
    inv = inverse_permutation(perm)
    g2, u2, d2 = permute_ffn(*permute_ffn(gate, up, down, perm), inv)
    for a, b in ((gate, g2), (up, u2), (down, d2)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert np.array_equal(permute_rows(gate, perm)[0], gate[perm[0]])
    assert np.array_equal(permute_down(down, perm)[:, 0], down[:, perm[0]])


def test_torch_round_trip_keeps_dtype():
    down = torch.randn(5, 12).to(torch.bfloat16)
    perm = np.random.default_rng(0).permutation(12)
    out = permute_down(permute_down(down, perm), inverse_permutation(perm))
    assert out.dtype == torch.bfloat16 and torch.equal(out, down)


def test_down_layouts_and_imatrix():
    rng = np.random.default_rng(0)
    perm = rng.permutation(10)
    down = rng.standard_normal((4, 10))
    assert np.array_equal(permute_down(down.T, perm, layout="transposed"), permute_down(down, perm).T)
    # imatrix ffn_down entries are sums of squared activations per input column: they must
    # follow the columns of down.
    acts = rng.standard_normal((50, 10))
    imat = (acts ** 2).sum(0)
    name = "blk.0.ffn_down.weight"
    assert np.allclose(permute_imatrix({name: imat}, {0: perm})[name], (acts[:, perm] ** 2).sum(0), rtol=1e-12)
    stacked = np.concatenate([imat, 2 * imat])             # one entry per expert of a MoE layer
    assert np.array_equal(permute_imatrix({name: stacked}, {0: perm})[name][10:], 2 * imat[perm])


# ---------------------------------------------------------------------- 3: FFN equivalence

def test_ffn_output_preserved_in_fp32():
    rng = np.random.default_rng(0)
    d_model, d_ff = 32, 128
    gate, up = (rng.standard_normal((d_ff, d_model)).astype(np.float32) for _ in range(2))
    down = rng.standard_normal((d_model, d_ff)).astype(np.float32)
    perm = cluster_experts(gate, 8).perm
    h = rng.standard_normal((d_model, 5)).astype(np.float32)
    ref = ffn(gate, up, down, h)
    got = ffn(*permute_ffn(gate, up, down, perm), h)
    assert np.allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert not np.array_equal(perm, np.arange(d_ff))            # it really permuted


# ---------------------------------------------------------------------- bad input

@pytest.mark.parametrize("shape, k, match", [
    ((100, 8), 8, "divisible"),
    ((64, 8), 0, "n_experts"),
    ((64, 8), 128, "n_experts"),
    ((64,), 4, "gate_weight"),
    ((4, 64, 2), 4, "gate_weight"),
])
def test_cluster_bad_input(shape, k, match):
    with pytest.raises(ValueError, match=match):
        cluster_experts(np.ones(shape, dtype=np.float32), k)


def test_cluster_rejects_nan_and_bad_options():
    gate = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    bad = gate.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="gate_weight contains NaN"):
        cluster_experts(bad, 4)
    with pytest.raises(ValueError, match="method"):
        cluster_experts(gate, 4, method="kmeans++")
    with pytest.raises(ValueError, match="max_iter"):
        cluster_experts(gate, 4, max_iter=0)
    with pytest.raises(ValueError, match="tol"):
        cluster_experts(gate, 4, tol=-1.0)


def test_perm_validation():
    w = np.zeros((4, 3))
    with pytest.raises(ValueError, match="permutation"):
        permute_rows(w, [0, 1, 1, 2])
    with pytest.raises(ValueError, match="length"):
        permute_rows(w, [0, 1, 2])
    with pytest.raises(ValueError, match="integer"):
        permute_rows(w, [0.0, 1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="layout"):
        permute_down(w, [0, 1, 2], layout="gguf")
    with pytest.raises(ValueError, match="length"):
        permute_down(w, [0, 1, 2, 3])                          # hf layout permutes the 3 columns
