"""AMB invariants of spec section 8 (items 5-14) and hand-built cases with orthonormal keys."""

import math

import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings, strategies as st  # noqa: E402

from pace_gguf.reference import (  # noqa: E402
    HIGH, LOW, MID, NOT_STORED, ActivationMemoryBank, AmbConfig, BankState,
)

D = 16


def basis(*idx, d=D):
    """Sum of unit vectors e_i (one row per call)."""
    v = torch.zeros(d)
    v[list(idx)] = 1.0
    return v


def unit(v):
    return v / v.norm()


def make_bank(keys, values=None, usage=None, valid=None, **cfg):
    """A bank holding the given rows in slots 0..n-1 of a bank of size cfg['bank_size']."""
    cfg.setdefault("bank_size", keys.shape[0])
    m, n = cfg["bank_size"], keys.shape[0]
    bank = ActivationMemoryBank(AmbConfig(**cfg), d_ff=keys.shape[1])
    state = BankState.empty(m, keys.shape[1])
    state.keys[:n] = keys
    state.values[:n] = values if values is not None else torch.randn(n, keys.shape[1])
    state.usage[:n] = usage if usage is not None else torch.ones(n)
    state.valid[:n] = True if valid is None else valid
    if valid is not None:
        state.usage[:n][~valid] = 0
    bank.load_snapshot(state)
    return bank


def clustered_stream(n_forwards=6, size=12, d=D, seed=0):
    """Rows near a few random directions, so that high, mid and low all occur."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, d, generator=g)
    out = []
    for _ in range(n_forwards):
        pick = torch.randint(0, 4, (size,), generator=g)
        noise = torch.randn(size, d, generator=g) * torch.rand(size, 1, generator=g) * 1.5
        out.append(centers[pick] + noise)
    return out


def states_close(a, b, atol=1e-6):
    return (torch.equal(a.usage, b.usage) and torch.equal(a.valid, b.valid)
            and torch.allclose(a.keys, b.keys, rtol=0, atol=atol)
            and torch.allclose(a.values, b.values, rtol=0, atol=atol))


def state_equal(a, b):
    return all(torch.equal(getattr(a, n), getattr(b, n)) for n in ("keys", "values", "usage", "valid"))


# ---------------------------------------------------------------------- 5, 6: identity cases

def test_empty_bank_is_bit_exact_identity():
    bank = ActivationMemoryBank(AmbConfig(bank_size=4))
    x = torch.randn(2, 3, D)
    out = bank(x)
    assert torch.equal(out, x) and out.dtype == x.dtype
    assert bank.last_cases.tolist() == [LOW] * 6
    # After a reset the first forward is the identity again.
    bank(torch.randn(5, D))
    bank.reset()
    assert bank.n_valid == 0
    y = torch.randn(4, D)
    assert torch.equal(bank(y), y)


def test_bf16_low_rows_keep_exact_bits():
    bank = make_bank(torch.eye(D)[:4])
    x = torch.randn(3, D).to(torch.bfloat16)
    x[:, :4] = 0                                    # orthogonal to every key -> low
    out = bank(x)
    assert out.dtype == torch.bfloat16 and torch.equal(out, x)


def test_alpha_zero_never_changes_output_but_bank_updates():
    bank = ActivationMemoryBank(AmbConfig(bank_size=6, alpha=0.0, chunk=5))
    before = None
    for x in clustered_stream():
        assert torch.equal(bank(x), x)
        snap = bank.snapshot()
        if before is not None:
            assert not state_equal(before, snap) or bank.history[-1].store_high == x.shape[0]
        before = snap
    assert bank.n_valid == 6
    assert sum(s.high + s.mid for s in bank.history) > 0   # cases were non-trivial


# ---------------------------------------------------------------------- 7, 8: read-only retrieval

def test_retrieval_is_read_only_and_outputs_ignore_the_store():
    stream = clustered_stream()
    a = ActivationMemoryBank(AmbConfig(bank_size=6, chunk=4))
    b = ActivationMemoryBank(AmbConfig(bank_size=6, chunk=1024))
    for x in stream[:3]:
        a(x)
    b.load_snapshot(a.snapshot())
    snap = a.snapshot()
    out_retrieve, cases = a.retrieve(stream[3])
    assert state_equal(snap, a.snapshot())          # retrieve() left the bank untouched
    # One forward's outputs depend only on the bank before it, not on its own store chunking.
    out_a, out_b = a(stream[3]), b(stream[3])
    assert torch.equal(out_a, out_retrieve) and torch.equal(out_a, out_b)
    assert torch.equal(cases, a.last_cases)
    # Later forwards do depend on earlier ones: here the two chunkings left different banks.
    assert not state_equal(a.snapshot(), b.snapshot())


def test_retrieve_chunk_has_no_effect():
    stream = clustered_stream(seed=3)
    outs = []
    for rc in (1, 5, 1024):
        bank = ActivationMemoryBank(AmbConfig(bank_size=6, chunk=7, retrieve_chunk=rc))
        outs.append([bank(x) for x in stream] + [bank.snapshot()])
    for other in outs[1:]:
        for o1, o2 in zip(outs[0][:-1], other[:-1]):
            assert torch.allclose(o1, o2, rtol=0, atol=1e-6)
        assert torch.allclose(outs[0][-1].keys, other[-1].keys, atol=1e-6)


def test_store_chunk_changes_the_bank_in_a_known_way():
    rows = torch.eye(D)[:8] * 3.0                     # 8 mutually orthogonal rows
    whole = ActivationMemoryBank(AmbConfig(bank_size=4, chunk=8), d_ff=D)
    whole.store(rows, rows)
    # One chunk against an empty bank: replaced as a whole, the first 4 rows win.
    assert torch.equal(whole.state.keys, rows[:4])
    halves = ActivationMemoryBank(AmbConfig(bank_size=4, chunk=4), d_ff=D)
    halves.store(rows, rows)
    # Second chunk sees the first: orthogonal -> low -> evicts the u=1 slots in index order.
    assert torch.equal(halves.state.keys, rows[4:])


# ---------------------------------------------------------------------- 9: seeding

@pytest.mark.parametrize("n", [3, 5, 9])
def test_seeding_an_empty_bank(n):
    bank = ActivationMemoryBank(AmbConfig(bank_size=5, chunk=1024))
    x = torch.randn(n, D)
    out = bank(x)
    k = min(n, 5)
    assert bank.n_valid == k
    assert torch.equal(bank.state.keys[:k], x[:k])
    assert torch.equal(bank.state.values[:k], out[:k])
    assert bank.state.usage[:k].tolist() == [1.0] * k
    assert bank.state.usage[k:].tolist() == [0.0] * (5 - k)
    assert bank.last_store_cases.tolist() == [LOW] * n


# ---------------------------------------------------------------------- 10: hand-built cases

def hand_bank(**cfg):
    keys = torch.eye(D)[:8]                           # orthonormal keys e_0..e_7
    values = torch.randn(8, D, generator=torch.Generator().manual_seed(1))
    return make_bank(keys, values, **cfg), values


def test_high_case_code_semantics():
    bank, v = hand_bank()
    x = basis(0)[None]
    out, cases = bank.retrieve(x)
    # sims: slot 0 -> 1, all others 0. Ties go to the lower slot: top-5 = 0..4, bottom-2 = 1, 2.
    expected = 0.8 * x + 0.2 * v[[0, 1, 2, 3, 4]].mean(0) + 0.02 * v[[1, 2]].mean(0)
    assert cases.tolist() == [HIGH]
    assert torch.allclose(out, expected, atol=1e-6)


def test_mid_case_code_semantics():
    bank, v = hand_bank()
    x = (0.5 * basis(0) + math.sqrt(0.75) * basis(9))[None]    # cos 0.5 with e_0
    out, cases = bank.retrieve(x)
    expected = 0.8 * x + 0.1 * v[[0, 1, 2, 3, 4]].mean(0) + 0.02 * v[[1, 2]].mean(0)
    assert cases.tolist() == [MID]
    assert torch.allclose(out, expected, atol=1e-6)


def test_low_case_is_exact_input():
    bank, _ = hand_bank()
    x = torch.randn(3, D)
    x[:, :8] = 0                                       # orthogonal to all keys
    x[2] = -basis(0) + 0.1 * basis(12)                 # negative cosine is low too
    out, cases = bank.retrieve(x)
    assert cases.tolist() == [LOW] * 3 and torch.equal(out, x)


def test_thresholds_are_strict():
    x = unit(basis(0) + basis(9))[None]
    bank, _ = hand_bank()
    keys_n = bank.state.keys / bank.state.keys.norm(dim=1, keepdim=True)
    sim = float(((x / x.norm(dim=1, keepdim=True)) @ keys_n.T).max())
    below = float(torch.nextafter(torch.tensor(sim), torch.tensor(0.0)))
    assert hand_bank(theta_high=sim, theta_low=0.1)[0].retrieve(x)[1].tolist() == [MID]
    assert hand_bank(theta_high=below, theta_low=0.1)[0].retrieve(x)[1].tolist() == [HIGH]
    assert hand_bank(theta_high=0.9, theta_low=sim)[0].retrieve(x)[1].tolist() == [LOW]
    assert hand_bank(theta_high=0.9, theta_low=below)[0].retrieve(x)[1].tolist() == [MID]


def test_zero_query_and_zero_key_have_similarity_zero():
    keys = torch.stack([basis(0), torch.zeros(D)])
    values = torch.randn(2, D)
    bank = make_bank(keys, values, theta_low=0.0, theta_high=0.5, topk=1, negk=1)
    out, cases = bank.retrieve(torch.zeros(1, D))
    assert cases.tolist() == [LOW] and torch.equal(out, torch.zeros(1, D))
    # The zero key has similarity 0 (not NaN): a query along e_0 is high, its least similar slot
    # is the zero key.
    x = basis(0)[None]
    out, cases = bank.retrieve(x)
    assert cases.tolist() == [HIGH]
    assert torch.allclose(out, 0.8 * x + 0.2 * values[0] + 0.02 * values[1], atol=1e-6)


def test_paper_semantics_coefficients():
    bank, v = hand_bank(mode="paper", alpha=0.2)
    hi = basis(0)[None]
    mid = (0.5 * basis(0) + math.sqrt(0.75) * basis(9))[None]
    p, q = v[[0, 1, 2, 3, 4]].mean(0), v[[1, 2]].mean(0)
    out_hi, c_hi = bank.retrieve(hi)
    out_mid, c_mid = bank.retrieve(mid)
    assert c_hi.tolist() == [HIGH] and c_mid.tolist() == [MID]
    assert torch.allclose(out_hi, p + 0.1 * q, atol=1e-6)             # x discarded
    assert torch.allclose(out_mid, 0.5 * mid + 0.5 * p + 0.1 * q, atol=1e-6)


def test_partial_bank_clamps_k_unless_legacy_zero_slots():
    keys = basis(0)[None]
    v0 = torch.randn(1, D)
    x = basis(0)[None]
    clean = make_bank(keys, v0, bank_size=8)
    out, _ = clean.retrieve(x)
    # k = k' = 1 on a 1-slot bank: p = q = V_0.
    assert torch.allclose(out, 0.8 * x + 0.2 * v0 + 0.02 * v0, atol=1e-6)
    legacy = make_bank(keys, v0, bank_size=8, legacy_zero_slots=True)
    out, _ = legacy.retrieve(x)
    # Zero slots take part: top-5 = slots 0..4 (V = 0 except slot 0), bottom-2 = slots 1, 2.
    assert torch.allclose(out, 0.8 * x + 0.2 * v0 / 5, atol=1e-6)


def test_negative_topk_zero_drops_the_negative_term():
    bank, v = hand_bank(negk=0)
    x = basis(0)[None]
    out, _ = bank.retrieve(x)
    assert torch.allclose(out, 0.8 * x + 0.2 * v[:5].mean(0), atol=1e-6)


# ---------------------------------------------------------------------- 11: merge rule

def test_merge_rule_code_semantics():
    keys = torch.eye(D)[:10]
    values = torch.randn(10, D)
    bank = make_bank(keys, values, usage=torch.arange(1.0, 11.0))
    rows = torch.stack([unit(basis(0, 1, 2, 3, 4)), unit(basis(2, 3, 4, 5, 6))])  # mean top-5 .447
    vals = torch.randn(2, D)
    labels = bank.store(rows, vals)
    assert labels.tolist() == [MID, MID]
    union = list(range(7))
    st = bank.state
    assert torch.allclose(st.keys[union], 0.5 * keys[union] + 0.5 * rows.mean(0), atol=1e-7)
    assert torch.allclose(st.values[union], 0.5 * values[union] + 0.5 * vals.mean(0), atol=1e-7)
    assert torch.equal(st.keys[7:], keys[7:]) and torch.equal(st.values[7:], values[7:])
    # +1 per slot per chunk, even for slots 2..4 that are in both rows' top-5.
    assert st.usage.tolist() == [2, 3, 4, 5, 6, 7, 8, 8, 9, 10]


def test_merge_rule_paper_semantics():
    keys = torch.eye(D)[:10]
    values = torch.randn(10, D)
    bank = make_bank(keys, values, mode="paper")
    rows = torch.stack([unit(basis(0, 1, 2, 3, 4)), unit(basis(2, 3, 4, 5, 6))])
    bank.store(rows, torch.randn(2, D))
    union = list(range(7))
    mu = rows.mean(0)                                  # raw mean for K AND V, no usage change
    assert torch.allclose(bank.state.keys[union], 0.5 * keys[union] + 0.5 * mu, atol=1e-7)
    assert torch.allclose(bank.state.values[union], 0.5 * values[union] + 0.5 * mu, atol=1e-7)
    assert bank.state.usage.tolist() == [1.0] * 10


def test_store_decides_on_mean_of_top_k_not_max():
    bank, _ = hand_bank()
    x = basis(0)[None]
    assert bank.retrieve(x)[1].tolist() == [HIGH]      # max sim 1
    assert bank.store(x, x).tolist() == [LOW]          # mean of top-5 = 0.2 -> replaced


def test_high_rows_change_nothing_in_code_but_count_usage_in_paper():
    keys = torch.eye(D)[:6]
    for mode, expected_usage in (("code", [1.0] * 6), ("paper", [2, 2, 1, 1, 1, 1])):
        bank = make_bank(keys.clone(), torch.randn(6, D), store_topk=1, mode=mode)
        before = bank.snapshot()
        # Top-1 slots {0}, {1}, {0}: paper adds 1 per slot of the union, once per chunk.
        labels = bank.store(torch.stack([basis(0), basis(1), 2 * basis(0)]), torch.randn(3, D))
        assert labels.tolist() == [HIGH, HIGH, HIGH]
        assert bank.state.usage.tolist() == expected_usage
        assert torch.equal(bank.state.keys, before.keys)


# ---------------------------------------------------------------------- 12, 15: replacement

def test_replacement_free_slots_first_then_lowest_usage():
    keys = torch.eye(D)[:6]
    valid = torch.tensor([True, False, True, False, True, False])
    bank = make_bank(keys, usage=torch.tensor([3.0, 0, 1, 0, 2, 0]), valid=valid)
    rows = torch.eye(D)[8:13] * 2.0                   # orthogonal to all keys: low
    assert bank.store(rows, rows + 1).tolist() == [LOW] * 5
    st = bank.state
    # free 1, 3, 5 (ascending), then valid by usage: slot 2 (u=1), slot 4 (u=2); slot 0 survives.
    for row, slot in enumerate([1, 3, 5, 2, 4]):
        assert torch.equal(st.keys[slot], rows[row]) and torch.equal(st.values[slot], rows[row] + 1)
    assert torch.equal(st.keys[0], keys[0])
    assert st.usage.tolist() == [3.0, 1, 1, 1, 1, 1] and bool(st.valid.all())


def test_replacement_ties_go_to_lower_slot_and_extra_rows_are_dropped():
    bank = make_bank(torch.eye(D)[:4], usage=torch.tensor([2.0, 1.0, 2.0, 1.0]))
    rows = torch.eye(D)[8:15]                          # 7 low rows, M = 4
    bank.store(rows, rows)
    # Order: u=1 slots 1, 3, then u=2 slots 0, 2; the first 4 rows win.
    assert torch.equal(bank.state.keys[[1, 3, 0, 2]], rows[:4])


def test_legacy_keep_last_replacement():
    bank = ActivationMemoryBank(AmbConfig(bank_size=4, legacy_keep_last=True), d_ff=D)
    rows = torch.eye(D)[:6] * 2
    bank.store(rows, rows)
    # Row i goes to slot i % 4 and the last writer wins: slots hold rows 4, 5, 2, 3.
    assert torch.equal(bank.state.keys, rows[[4, 5, 2, 3]])


def test_merge_happens_before_replacement():
    bank = make_bank(torch.eye(D)[:6])                 # full, usage all 1
    rows = torch.stack([unit(basis(0, 1, 2, 3, 4)), basis(10)])    # one mid, one low
    assert bank.store(rows, rows).tolist() == [MID, LOW]
    # The merge raised u of slots 0..4 to 2, so the low row evicts slot 5 (not slot 0).
    assert torch.equal(bank.state.keys[5], basis(10))
    assert bank.state.usage.tolist() == [2, 2, 2, 2, 2, 1]


# ---------------------------------------------------------------------- 13: invariants over time

@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), bank_size=st.integers(1, 9), chunk=st.integers(1, 12),
       mode=st.sampled_from(["code", "paper"]))
def test_invariants_over_a_random_stream(seed, bank_size, chunk, mode):
    bank = ActivationMemoryBank(AmbConfig(bank_size=bank_size, chunk=chunk, mode=mode))
    prev = None
    # One store chunk per forward, so "u grew or was reset to 1" can be checked per forward.
    for x in clustered_stream(n_forwards=6, size=chunk, seed=seed):
        bank(x)
        st_ = bank.snapshot()
        assert bank.n_valid <= bank_size
        assert bool(torch.isfinite(st_.keys).all() and torch.isfinite(st_.values).all())
        assert bool((st_.usage[st_.valid] >= 1).all()) and bool((st_.usage[~st_.valid] == 0).all())
        if prev is not None:
            assert bool((st_.valid >= prev.valid).all())               # valid never decreases
            grew = st_.usage >= prev.usage
            reset_to_one = st_.usage == 1
            assert bool((grew | reset_to_one).all())
        prev = st_


def test_high_only_stream_leaves_bank_unchanged():
    keys = torch.randn(5, D)
    bank = make_bank(keys, store_topk=1)
    before = bank.snapshot()
    for _ in range(3):
        out = bank(keys[[0, 2, 4, 1]] * 2.0)          # each row equals a stored key: sim 1
        assert bank.last_cases.tolist() == [HIGH] * 4
    assert state_equal(before, bank.snapshot())
    assert out.shape == (4, D)


# ---------------------------------------------------------------------- 14: determinism and reset

def test_same_document_twice_with_and_without_reset():
    doc = clustered_stream(seed=7)
    bank = ActivationMemoryBank(AmbConfig(bank_size=6, chunk=5))
    first = [bank(x) for x in doc]
    bank.reset()
    second = [bank(x) for x in doc]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    third = [bank(x) for x in doc]                     # no reset: the bank carries over
    assert not torch.equal(first[0], third[0])


# ---------------------------------------------------------------------- non-finite rows

def test_non_finite_rows_are_never_stored():
    bank = ActivationMemoryBank(AmbConfig(bank_size=8))
    x = torch.randn(5, D)
    x[1, 3] = math.nan
    x[3, 0] = math.inf
    out = bank(x)
    assert torch.equal(out[[0, 2, 4]], x[[0, 2, 4]])
    assert bank.last_store_cases.tolist() == [LOW, NOT_STORED, LOW, NOT_STORED, LOW]
    assert bank.n_valid == 3 and torch.equal(bank.state.keys[:3], x[[0, 2, 4]])
    assert bank.history[-1].store_skipped == 2
    # With a filled bank, a NaN row is classified low and passed through unchanged.
    y = torch.randn(3, D)
    y[0, 0] = math.nan
    out = bank(y)
    assert bank.last_cases[0] == LOW and bool(torch.isnan(out[0, 0]))
    assert torch.equal(out[0, 1:], y[0, 1:])
    assert bool(torch.isfinite(bank.state.keys).all() and torch.isfinite(bank.state.values).all())


# ---------------------------------------------------------------------- counters and snapshots

def test_counters_and_snapshot_round_trip():
    bank = ActivationMemoryBank(AmbConfig(bank_size=6, chunk=5))
    stream = clustered_stream(seed=11)
    for x in stream:
        bank(x)
        s = bank.history[-1]
        assert s.high + s.mid + s.low == s.n_tokens == x.shape[0]
        assert s.high == int((bank.last_cases == HIGH).sum())
    assert bank.counts == {k: sum(getattr(s, k) for s in bank.history) for k in ("high", "mid", "low")}
    snap = bank.snapshot()
    after = bank(stream[0])
    bank.load_snapshot(snap)
    assert torch.equal(bank(stream[0]), after)
    arrays = snap.to_numpy()
    assert arrays["keys"].shape == (6, D) and arrays["valid"].dtype == bool


def test_snapshot_is_a_copy():
    bank = ActivationMemoryBank(AmbConfig(bank_size=3), d_ff=D)
    snap = bank.snapshot()
    bank(torch.randn(2, D))
    assert snap.valid.sum() == 0 and bank.n_valid == 2


# ---------------------------------------------------------------------- prompt granularity (6.9)

@pytest.mark.parametrize("splits", [[50], [7, 20, 3, 20], [16, 16, 16, 2], [1] * 50])
def test_prompt_granularity_equals_one_forward(splits):
    cfg = AmbConfig(bank_size=6, chunk=16)
    warm = clustered_stream(n_forwards=2, size=10, seed=5)
    prompt = torch.cat(clustered_stream(n_forwards=5, size=10, seed=6))
    ref = ActivationMemoryBank(cfg)
    for x in warm:
        ref(x)
    split = ActivationMemoryBank(cfg)
    split.load_snapshot(ref.snapshot())
    ref_out = ref(prompt)
    split.begin_prompt()
    outs, cases, start = [], [], 0
    for n in splits:
        outs.append(split(prompt[start:start + n]))
        cases.append(split.last_cases)
        start += n
    split.end_prompt()
    # Equal up to BLAS blocking (a GEMM's last bit may depend on its row count).
    assert torch.equal(torch.cat(cases), ref.last_cases)
    assert torch.allclose(torch.cat(outs), ref_out, rtol=0, atol=1e-6)
    assert states_close(split.snapshot(), ref.snapshot())


def test_ubatch_granularity_differs_from_one_forward():
    cfg = AmbConfig(bank_size=6, chunk=16)
    prompt = torch.cat(clustered_stream(n_forwards=5, size=10, seed=6))
    ref, split = ActivationMemoryBank(cfg), ActivationMemoryBank(cfg)
    ref_out = ref(prompt)
    outs = [split(prompt[:25]), split(prompt[25:])]
    assert torch.equal(outs[0], ref_out[:25])         # the first ubatch sees the same empty bank
    assert not torch.equal(outs[1], ref_out[25:])
