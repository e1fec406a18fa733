"""Cortical Expert (CE) clustering (spec section 3). numpy only.

Neurons are the rows of ``gate_proj.weight`` ([d_ff, d_model]; the same array a GGUF reader returns
for ``ffn_gate``). They are L2-normalised and grouped by balanced spherical k-means into
``n_experts`` experts of exactly ``d_ff / n_experts`` neurons each. The permutation ``perm``
(new position -> old neuron) lists the neurons of expert 0 in ascending original index, then expert 1,
and so on, so expert e occupies positions ``[e*s, (e+1)*s)``.

Two assignment methods share the same k-means loop (init, centre update, stopping rule):

* ``"auction"`` (default, fast): each iteration solves the balanced assignment exactly up to a tiny
  eps (maximise the summed score with every expert holding exactly s neurons) by a vectorised Jacobi
  auction, warm-started with the previous iteration's expert prices. The score of a neuron for its
  OWN expert is the cosine to that expert's centre computed without the neuron itself (a
  Hartigan-style leave-one-out correction): with plain scores every neuron is pulled toward the
  centre it helped to build and Lloyd iterations freeze almost at once. No Python loop per neuron.
* ``"greedy"`` (spec 3.2 backend B, the released fallback): plain scores; neurons in descending margin
  order each take their most preferred expert with free capacity. A Python loop per neuron; kept as
  the baseline.

The objective is the mean cosine of each neuron to its expert's centre (the normalised mean of the
expert's normalised rows), which equals sum_e |sum of rows of e| / d_ff.

Ties go to the lower index everywhere (stable sorts, first argmax). Results are deterministic for a
seed on a given BLAS thread count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

METHODS = ("auction", "greedy")
# Final auction eps relative to the score spread: each neuron ends within eps of its best choice.
EPS_REL = 1e-5


@dataclass
class ClusterResult:
    perm: np.ndarray        # [d_ff] int64, new position -> old neuron
    labels: np.ndarray      # [d_ff] int64, expert of each ORIGINAL neuron
    objective: float        # mean cosine of each neuron to its expert's centre
    iterations: int         # k-means iterations run
    converged: bool         # stopped because the labels (or objective) stopped changing
    seconds: float          # wall time of the clustering


def cluster_experts(gate_weight, n_experts: int, seed: int = 0, *, max_iter: int = 100,
                    method: str = "auction", tol: float | None = 3e-3, patience: int = 3,
                    verbose: bool = False) -> ClusterResult:
    """Balanced spherical k-means over the normalised gate rows.

    gate_weight: [d_ff, d_model] array (numpy, or a torch tensor: it is copied to fp32 numpy).
    Stops after ``max_iter`` iterations, when the labels repeat, or (``tol`` not None) when the best
    objective improved by less than a factor (1 + tol) over the last ``patience`` iterations.
    ``tol=None`` gives the released rule (labels repeat or max_iter). The best labels seen are
    returned; ``iterations`` counts the iterations run.
    """
    t0 = time.perf_counter()
    feats = _normalized_rows(gate_weight)
    d_ff = feats.shape[0]
    _check_experts(n_experts, d_ff)
    _check_int("max_iter", max_iter, 1)
    _check_int("patience", patience, 1)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if tol is not None and not (np.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be None or a finite number >= 0, got {tol!r}")
    size = d_ff // n_experts
    init = np.random.default_rng(seed).permutation(d_ff)[:n_experts]
    sums = feats[init].copy()                  # the initial centres, as unnormalised sums
    assign = _make_assigner(method, size)
    labels, best_labels, best_hist = None, None, [-np.inf]
    converged, it = False, 0
    for it in range(1, max_iter + 1):
        scores = feats @ _normalize(sums).T
        if method == "auction" and labels is not None:
            _leave_one_out(scores, sums, labels)
        new_labels = assign(scores)
        sums = _expert_sums(feats, new_labels, n_experts)
        obj = float(np.linalg.norm(sums, axis=1).sum() / d_ff)
        if obj > best_hist[-1]:
            best_labels = new_labels
        best_hist.append(max(obj, best_hist[-1]))
        if verbose:
            print(f"  iter {it}: objective {obj:.6f}")
        repeated = labels is not None and np.array_equal(new_labels, labels)
        labels = new_labels
        if repeated or _stalled(best_hist, tol, patience):
            converged = True
            break
    return ClusterResult(permutation_from_labels(best_labels), best_labels, best_hist[-1], it,
                         converged, time.perf_counter() - t0)


def _leave_one_out(scores, sums, labels) -> None:
    """Own-expert score := cos(f_i, sum_own - f_i), i.e. the centre without neuron i (in place)."""
    rows = np.arange(labels.size)
    norms = np.linalg.norm(sums, axis=1).astype(np.float64)[labels]
    dot = scores[rows, labels].astype(np.float64) * norms          # f_i . sum_own  (|f_i| = 1)
    rest = np.sqrt(np.maximum(norms * norms - 2.0 * dot + 1.0, 0.0))
    scores[rows, labels] = np.where(rest > 1e-6, (dot - 1.0) / np.maximum(rest, 1e-6), 0.0)


def _stalled(best_hist, tol, patience) -> bool:
    """True when the best objective gained less than a factor (1 + tol) in ``patience`` iterations."""
    if tol is None or len(best_hist) <= patience + 1:
        return False
    before, now = best_hist[-1 - patience], best_hist[-1]
    return now <= before + tol * abs(before)


def permutation_from_labels(labels) -> np.ndarray:
    """Expert-major permutation: ascending original index inside each expert (stable sort)."""
    return np.argsort(np.asarray(labels), kind="stable").astype(np.int64)


def expert_objective(gate_weight, labels, n_experts: int) -> float:
    """Mean cosine of each neuron to its expert's centre, for any given labelling."""
    feats = _normalized_rows(gate_weight)
    sums = _expert_sums(feats, np.asarray(labels, dtype=np.int64), n_experts)
    return float(np.linalg.norm(sums, axis=1).sum() / feats.shape[0])


# ---------------------------------------------------------------------- balanced assignment

def _make_assigner(method: str, size: int):
    if method == "greedy":
        return lambda scores: greedy_margin_assign(scores, size)
    prices = None

    def assign(scores):
        nonlocal prices
        labels, prices = auction_assign(scores, size, prices)
        return labels
    return assign


def greedy_margin_assign(scores: np.ndarray, size: int) -> np.ndarray:
    """Spec 3.2 backend B: descending-margin order, each neuron takes its best expert with room."""
    n, k = scores.shape
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    pref = np.argsort(-scores, axis=1, kind="stable")
    rows = np.arange(n)
    margin = scores[rows, pref[:, 0]] - scores[rows, pref[:, 1]]
    order = np.argsort(-margin, kind="stable")
    room = [size] * k
    labels = np.empty(n, dtype=np.int64)
    pref_list = pref.tolist()
    for i in order.tolist():             # the sequential loop this baseline is defined by
        for e in pref_list[i]:
            if room[e]:
                room[e] -= 1
                labels[i] = e
                break
    return labels


def auction_assign(scores: np.ndarray, size: int, prices=None, eps: float | None = None,
                   max_rounds: int = 100_000):
    """Balanced assignment by a Jacobi auction (every expert ends with exactly ``size`` neurons).

    Each unassigned neuron bids for its best expert net of price, raising it by its margin over
    the second best plus eps; an expert keeps its ``size`` highest bids. With eps-scaling the result
    is within d_ff*eps of the optimal summed score. Returns (labels, prices for a warm start).
    """
    n, k = scores.shape
    scores = scores.astype(np.float64)
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or Inf")
    if k == 1:
        return np.zeros(n, dtype=np.int64), np.zeros(1)
    spread = float(scores.max() - scores.min()) or 1.0
    final_eps = eps if eps is not None else spread * EPS_REL
    prices = np.zeros(k) if prices is None else prices.copy()
    # Cold start: coarse-to-fine eps. Warm start: prices are already near the optimum.
    phases = [final_eps] if (prices.any() or eps is not None) else \
        [spread * f for f in (1e-2, 1e-4)] + [final_eps]
    for phase_eps in phases:
        labels, prices = _auction_phase(scores, size, prices, phase_eps, max_rounds)
    return labels, prices


def _auction_phase(scores, size, reserve, eps, max_rounds):
    """One eps phase. Each expert holds up to ``size`` (bid, neuron) pairs; an expert with a free
    seat is entered at its reserve price, a full one at its lowest held bid. Only the experts that
    received bids in a round are touched, so late rounds with few bidders are cheap."""
    n, k = scores.shape
    held_bid = np.full((k, size), -np.inf)
    held_who = np.full((k, size), -1, dtype=np.int64)
    labels = np.full(n, -1, dtype=np.int64)
    price = reserve.astype(np.float64).copy()
    free = np.arange(n)
    for _ in range(max_rounds):
        if free.size == 0:
            return labels, price
        value = scores[free] - price
        best = value.argmax(1)                      # first max: lower expert index wins ties
        rows = np.arange(free.size)
        value[rows, best] = -np.inf
        new_bids = scores[free, best] - value.max(1) + eps
        settle = _settle_few if free.size <= 2 * k else _settle_bids
        free = settle(held_bid, held_who, labels, price, reserve, free, best, new_bids)
    raise RuntimeError("auction did not converge; scores may contain NaN")


def _settle_few(held_bid, held_who, labels, price, reserve, bidders, best, bids):
    """Cheap round for the auction's long tail of few bidders: only the highest bid per expert
    is seated (over the lowest holder or into a free seat); the other bidders bid again."""
    order = np.lexsort((bidders, -bids, best))
    best_sorted = best[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = best_sorted[1:] != best_sorted[:-1]
    win, lose = order[first], order[~first]
    experts, who = best[win], bidders[win]
    seat = held_bid[experts].argmin(1)              # free seats hold -inf: filled first
    evicted = held_who[experts, seat]
    evicted = evicted[evicted >= 0]
    labels[evicted] = -1
    held_bid[experts, seat] = bids[win]
    held_who[experts, seat] = who
    labels[who] = experts
    lowest = held_bid[experts].min(1)
    price[experts] = np.where(np.isneginf(lowest), reserve[experts], lowest)
    return np.sort(np.concatenate([bidders[lose], evicted]))


def _settle_bids(held_bid, held_who, labels, price, reserve, bidders, best, bids):
    """Each expert that got bids keeps its ``size`` highest among holders and bidders (holders
    win ties, then the lower neuron). Updates the state in place; returns the new free neurons."""
    size = held_bid.shape[1]
    order = np.lexsort((bidders, -bids, best))
    best, bids, bidders = best[order], bids[order], bidders[order]
    experts, first, inverse, counts = np.unique(best, return_index=True, return_inverse=True,
                                                return_counts=True)
    width = size + int(counts.max())
    cand_bid = np.full((experts.size, width), -np.inf)
    cand_who = np.full((experts.size, width), -1, dtype=np.int64)
    cand_bid[:, :size] = held_bid[experts]
    cand_who[:, :size] = held_who[experts]
    col = size + np.arange(best.size) - first[inverse]
    cand_bid[inverse, col] = bids
    cand_who[inverse, col] = bidders
    keep = np.argsort(-cand_bid, axis=1, kind="stable")[:, :size]
    new_bid = np.take_along_axis(cand_bid, keep, 1)
    new_who = np.take_along_axis(cand_who, keep, 1)
    kept = np.zeros(cand_bid.shape, dtype=bool)
    np.put_along_axis(kept, keep, True, 1)
    dropped = cand_who[~kept & (cand_who >= 0)]
    labels[dropped] = -1
    seated = new_who >= 0
    labels[new_who[seated]] = np.broadcast_to(experts[:, None], new_who.shape)[seated]
    held_bid[experts], held_who[experts] = new_bid, new_who
    full = seated.all(1)
    price[experts] = np.where(full, new_bid.min(1), reserve[experts])
    return np.sort(dropped)


# ---------------------------------------------------------------------- small helpers

def to_numpy(arr) -> np.ndarray:
    """numpy view/copy of a numpy array or a torch tensor (bf16 as fp32), without importing torch."""
    if hasattr(arr, "detach"):                             # torch tensor without importing torch
        arr = arr.detach().cpu()
        if str(arr.dtype) == "torch.bfloat16":
            arr = arr.float()
        return arr.numpy()
    return np.asarray(arr)


def _normalized_rows(gate_weight) -> np.ndarray:
    arr = to_numpy(gate_weight)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"gate_weight must be a 2-D [d_ff, d_model] array, got shape {arr.shape}")
    arr = np.asarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError("gate_weight contains NaN or Inf")
    return _normalize(arr)


def _normalize(x: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def _expert_sums(feats, labels, n_experts):
    """Sum of the rows of each expert: one contiguous gather-and-sum per expert (a loop over
    experts, not neurons; much faster than a one-hot GEMM or np.add.at)."""
    order = np.argsort(labels, kind="stable")
    bounds = np.cumsum(np.bincount(labels, minlength=n_experts))[:-1]
    return np.stack([feats[idx].sum(0) for idx in np.split(order, bounds)])


def _check_experts(n_experts, d_ff):
    _check_int("n_experts", n_experts, 1)
    if d_ff % n_experts:                      # also rejects n_experts > d_ff
        raise ValueError(f"d_ff ({d_ff}) must be divisible by n_experts ({n_experts})")


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
