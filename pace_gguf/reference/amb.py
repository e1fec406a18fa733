"""Activation Memory Bank (AMB), the PyTorch oracle of spec sections 2 and 6.

One ``ActivationMemoryBank`` holds the state of one AMB layer for one stream: keys K (raw
intermediate activations), values V (enhanced activations), usage u and a valid mask, all fp32.
``bank(a)`` takes the gated product ``a = act(W_gate h) * (W_up h)`` of one forward call and returns
the enhanced ``o`` (same shape and dtype) that ``down_proj`` should consume.

Semantics (normative: spec 2.3-2.6, decisions of spec 6):

* Visibility (2.6): every token of one forward retrieves against the bank as it was at the start of
  that forward; only then is the forward stored, in chunks of ``chunk`` rows in token order.
* Retrieval decides on the max similarity; the store decides on the mean of the top-min(store_topk, m)
  similarities. Both use strict ``>`` and compare in fp32.
* cos(x, k) = dot(x, k) / (max(|x|, eps) * max(|k|, eps)), computed as a dot of eps-clamped
  normalised vectors in fp32.
* Ties (top-k, bottom-k', eviction order) go to the lower slot index (stable sorts).
* Exact identity: an empty bank, a "low" row and (code semantics) alpha == 0 return the input
  bits unchanged. The released code computes 0.8x + 0.2x instead, which differs by up to 1 ulp.
* Non-finite rows (NaN/Inf in the key or the value) are never stored (skipped in merge means and
  replacement; store label ``NOT_STORED``). In retrieval they are classified "low", so their output is
  the input row unchanged: the NaN stays visible downstream instead of being masked.
* Paper semantics (``mode="paper"``, Algorithm 1, spec 2.4/2.9): high o = w_hi*p + lam*q,
  mid o = (1 - w_mid)*x + w_mid*p + lam*q (w_hi=1, w_mid=1/2 give the spec's table exactly);
  alpha is not used. Store: per-token classification as in code mode (the paper's chunk-level
  test is ambiguous, spec 2.9), high rows add 1 to u of every slot in the union of their
  top-min(store_topk, m) slots (once per slot per chunk, like the code's merge), mid rows pull K and
  V of the union of their top slots toward the mean RAW key of the mid rows (the paper's mu_c read
  per token class), without a usage increment; low rows are replaced as in code mode.
  Order within a chunk: high usage increments, then merge, then replacement.

Prompt granularity (spec 6.9): between ``begin_prompt()`` and ``end_prompt()`` every forward
retrieves against a frozen snapshot of the bank taken at the prompt start, while the store buffers rows
and writes them into the live bank in ``chunk``-row chunks aligned to the prompt start; the last
partial chunk is flushed by ``end_prompt()``. The result equals one forward of the whole prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import AmbConfig

# Case labels (retrieval and store).
LOW, MID, HIGH = 0, 1, 2
# Store label of a row that was not stored because it has non-finite entries.
NOT_STORED = -1


@dataclass
class BankState:
    """One bank's tensors: keys/values [M, d_ff] fp32, usage [M] fp32, valid [M] bool."""

    keys: torch.Tensor
    values: torch.Tensor
    usage: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def empty(cls, bank_size: int, d_ff: int, device=None) -> "BankState":
        zeros = lambda *s: torch.zeros(*s, dtype=torch.float32, device=device)  # noqa: E731
        return cls(zeros(bank_size, d_ff), zeros(bank_size, d_ff), zeros(bank_size),
                   torch.zeros(bank_size, dtype=torch.bool, device=device))

    def clone(self) -> "BankState":
        return BankState(self.keys.clone(), self.values.clone(), self.usage.clone(),
                         self.valid.clone())

    def to(self, device) -> "BankState":
        return BankState(self.keys.to(device), self.values.to(device), self.usage.to(device),
                         self.valid.to(device))

    def to_numpy(self) -> dict:
        return {name: getattr(self, name).detach().cpu().numpy()
                for name in ("keys", "values", "usage", "valid")}


@dataclass
class ForwardStats:
    """Counters of one forward call: retrieval cases, and store cases of the rows stored during it."""

    n_tokens: int
    high: int
    mid: int
    low: int
    store_high: int = 0
    store_mid: int = 0
    store_low: int = 0
    store_skipped: int = 0


@dataclass
class _PromptState:
    frozen: BankState | None = None                      # taken lazily at the first forward
    pending: list = field(default_factory=list)          # [(keys, values)] not yet stored


class ActivationMemoryBank:
    """The bank of one AMB layer. ``d_ff`` may be left out: it is taken from the first input."""

    def __init__(self, config: AmbConfig | None = None, d_ff: int | None = None, device=None):
        self.config = config if config is not None else AmbConfig()
        if not isinstance(self.config, AmbConfig):
            raise ValueError(f"config must be an AmbConfig, got {type(config).__name__}")
        if d_ff is not None and (isinstance(d_ff, bool) or not isinstance(d_ff, int) or d_ff < 1):
            raise ValueError(f"d_ff must be a positive int, got {d_ff!r}")
        self.d_ff = d_ff
        self.state: BankState | None = None
        if d_ff is not None:
            self.state = BankState.empty(self.config.bank_size, d_ff, device)
        self.history: list[ForwardStats] = []
        self.last_cases: torch.Tensor | None = None        # retrieval labels of the last forward
        self.last_store_cases: torch.Tensor | None = None  # store labels of rows stored in it
        self._prompt: _PromptState | None = None

    # ------------------------------------------------------------------ public API

    def __call__(self, x: torch.Tensor, store: bool = True) -> torch.Tensor:
        return self.forward(x, store=store)

    def forward(self, x: torch.Tensor, store: bool = True) -> torch.Tensor:
        """One forward call: retrieve all rows of ``x`` (any leading shape), then store them."""
        x2 = self._as_rows(x)
        read_state = self._read_state()
        out, cases = self._retrieve(x2.float(), read_state)
        # Identity short-circuit keeps the caller's tensor (and dtype) bit for bit.
        result = x2 if out is None else out.to(x.dtype)
        stats = ForwardStats(int(x2.shape[0]), *_case_counts(cases))
        self.last_cases = cases.cpu()
        store_cases = []
        if store:
            values = x2 if out is None else result
            store_cases = self._store_forward(x2.float(), values.float())
        self.last_store_cases = (torch.cat(store_cases) if store_cases
                                 else torch.zeros(0, dtype=torch.int8))
        _add_store_counts(stats, self.last_store_cases)
        self.history.append(stats)
        return result.reshape(x.shape)

    def retrieve(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Read-only retrieval: (enhanced rows [N, d_ff] in x's dtype, case labels [N] int8)."""
        x2 = self._as_rows(x)
        out, cases = self._retrieve(x2.float(), self._read_state())
        return (x2 if out is None else out.to(x.dtype)), cases

    def store(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Store rows (raw keys, enhanced values) in chunks; returns the store label per row."""
        k2, v2 = self._as_rows(keys), self._as_rows(values)
        if k2.shape != v2.shape:
            raise ValueError(f"keys and values must have the same shape, got "
                             f"{tuple(k2.shape)} and {tuple(v2.shape)}")
        return torch.cat(self._store_chunks(k2.float(), v2.float()))

    def reset(self) -> None:
        """Empty the bank, forget counters and end any open prompt."""
        if self.state is not None:
            self.state = BankState.empty(self.config.bank_size, self.d_ff, self.state.keys.device)
        self.history.clear()
        self.last_cases = self.last_store_cases = None
        self._prompt = None

    def snapshot(self) -> BankState:
        """A deep copy of the live bank (an empty bank of width 0 if never used)."""
        if self.state is None:
            return BankState.empty(self.config.bank_size, 0)
        return self.state.clone()

    def load_snapshot(self, snap: BankState) -> None:
        """Restore a snapshot taken from a bank with the same size (spec 6.12 option a)."""
        m, d = snap.keys.shape
        if m != self.config.bank_size or snap.values.shape != snap.keys.shape \
                or snap.usage.shape != (m,) or snap.valid.shape != (m,):
            raise ValueError(f"snapshot shapes do not fit a bank of size {self.config.bank_size}")
        if self.d_ff is not None and d != self.d_ff:
            raise ValueError(f"snapshot d_ff {d} does not match the bank's d_ff {self.d_ff}")
        self.d_ff = d
        self.state = BankState(snap.keys.float().clone(), snap.values.float().clone(),
                               snap.usage.float().clone(), snap.valid.bool().clone())

    @property
    def n_valid(self) -> int:
        return 0 if self.state is None else int(self.state.valid.sum())

    @property
    def counts(self) -> dict:
        """Retrieval case totals over all forwards since the last reset."""
        return {"high": sum(s.high for s in self.history), "mid": sum(s.mid for s in self.history),
                "low": sum(s.low for s in self.history)}

    def begin_prompt(self) -> None:
        """Start prompt granularity (spec 6.9): frozen reads, prompt-aligned store chunks."""
        if self._prompt is not None:
            raise RuntimeError("begin_prompt() called twice without end_prompt()")
        self._prompt = _PromptState()

    def end_prompt(self) -> torch.Tensor:
        """Flush the buffered partial chunk; returns the store labels of the flushed rows."""
        if self._prompt is None:
            raise RuntimeError("end_prompt() called without begin_prompt()")
        pending, self._prompt = self._prompt.pending, None
        if not pending:
            return torch.zeros(0, dtype=torch.int8)
        keys = torch.cat([k for k, _ in pending])
        values = torch.cat([v for _, v in pending])
        return torch.cat(self._store_chunks(keys, values))

    # ------------------------------------------------------------------ plumbing

    def _as_rows(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"activations must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 1 or not x.is_floating_point():
            raise ValueError(f"activations must be a floating tensor [..., d_ff], got "
                             f"{x.dtype} of shape {tuple(x.shape)}")
        d = x.shape[-1]
        if self.d_ff is None:
            self.d_ff = d
        if d != self.d_ff:
            raise ValueError(f"activations last dim {d} does not match the bank's d_ff {self.d_ff}")
        if self.state is None:
            self.state = BankState.empty(self.config.bank_size, d, x.device)
        elif self.state.keys.device != x.device:
            self.state = self.state.to(x.device)   # the bank follows its layer's device
        return x.reshape(-1, d)

    def _read_state(self) -> BankState:
        if self._prompt is None:
            return self.state
        if self._prompt.frozen is None:
            # Nothing has been stored since begin_prompt(), so this equals the bank at that time.
            self._prompt.frozen = self.state.clone()
        return self._prompt.frozen

    def _usable_slots(self, state: BankState) -> torch.Tensor:
        """Slot ids that take part in similarity: valid ones, or all M in legacy mode."""
        if self.config.legacy_zero_slots:
            return torch.arange(self.config.bank_size, device=state.keys.device)
        return torch.nonzero(state.valid).flatten()

    # ------------------------------------------------------------------ retrieval (spec 2.3, 2.4)

    def _retrieve(self, x: torch.Tensor, state: BankState):
        """Returns (o or None for exact identity, int8 case labels). Never mutates the bank."""
        n = x.shape[0]
        slots = self._usable_slots(state)
        if slots.numel() == 0:
            return None, torch.full((n,), LOW, dtype=torch.int8, device=x.device)
        keys_n = _normalize(state.keys[slots], self.config.eps)
        values = state.values[slots]
        outs, cases = [], []
        for start in range(0, n, self.config.retrieve_chunk):
            o, c = self._retrieve_chunk(x[start:start + self.config.retrieve_chunk], keys_n, values)
            outs.append(o)
            cases.append(c)
        cases = torch.cat(cases)
        if self.config.mode == "code" and self.config.alpha == 0.0:
            return None, cases   # o = 1*x + 0*r: the output never changes (spec 8.6)
        return torch.cat(outs), cases

    def _retrieve_chunk(self, x, keys_n, values):
        cfg = self.config
        m = keys_n.shape[0]
        sims = _normalize(x, cfg.eps) @ keys_n.T                          # [n, m] fp32
        ok = torch.isfinite(x).all(1) & torch.isfinite(sims).all(1)
        sims = torch.where(ok[:, None], sims, torch.zeros_like(sims))     # keep sorts NaN-free
        desc = torch.sort(sims, dim=1, descending=True, stable=True).indices
        smax = sims.gather(1, desc[:, :1]).squeeze(1)
        high = ok & (smax > cfg.theta_high)
        mid = ok & ~high & (smax > cfg.theta_low)
        cases = torch.full(smax.shape, LOW, dtype=torch.int8, device=x.device)
        cases[mid] = MID
        cases[high] = HIGH
        beta, coef = self._coefficients(high, mid, desc, sims, m)
        o = beta[:, None] * x + coef @ values
        # Low rows (and non-finite rows) keep their exact input bits.
        o = torch.where((high | mid)[:, None], o, x)
        return o, cases

    def _coefficients(self, high, mid, desc, sims, m):
        """Per-token beta and coefficient matrix C [n, m] of the unified form (spec 2.4)."""
        cfg = self.config
        k, kn = min(cfg.topk, m), min(cfg.negk, m)
        if cfg.mode == "code":
            a_hi, a_mid = cfg.alpha * cfg.w_high, cfg.alpha * cfg.w_mid
            b = cfg.alpha * cfg.negative_weight
            beta_hi = beta_mid = 1.0 - cfg.alpha
        else:
            a_hi, a_mid, b = cfg.w_high, cfg.w_mid, cfg.negative_weight
            beta_hi, beta_mid = 0.0, 1.0 - cfg.w_mid
        a = torch.where(high, a_hi, torch.where(mid, a_mid, 0.0)).to(sims.dtype)
        bb = torch.where(high | mid, b, 0.0).to(sims.dtype)
        beta = torch.where(high, beta_hi, torch.where(mid, beta_mid, 1.0)).to(sims.dtype)
        coef = torch.zeros_like(sims)
        coef.scatter_add_(1, desc[:, :k], (a / k)[:, None].expand(-1, k).contiguous())
        if kn > 0:
            asc = torch.sort(sims, dim=1, stable=True).indices[:, :kn]   # lower index wins ties
            coef.scatter_add_(1, asc, (bb / kn)[:, None].expand(-1, kn).contiguous())
        return beta, coef

    # ------------------------------------------------------------------ store (spec 2.5)

    def _store_forward(self, keys, values) -> list:
        """Store one forward's rows, or buffer them in prompt granularity."""
        if self._prompt is None:
            return self._store_chunks(keys, values)
        # Copies: the caller may reuse its activation buffers before the chunk is complete.
        self._prompt.pending.append((keys.clone(), values.clone()))
        buffered = sum(k.shape[0] for k, _ in self._prompt.pending)
        full = buffered - buffered % self.config.chunk
        if full == 0:
            return []
        all_k = torch.cat([k for k, _ in self._prompt.pending])
        all_v = torch.cat([v for _, v in self._prompt.pending])
        self._prompt.pending = [(all_k[full:], all_v[full:])] if full < buffered else []
        return self._store_chunks(all_k[:full], all_v[:full])

    def _store_chunks(self, keys, values) -> list:
        c = self.config.chunk
        return [self._store_chunk(keys[s:s + c], values[s:s + c])
                for s in range(0, keys.shape[0], c)] or [torch.zeros(0, dtype=torch.int8)]

    def _store_chunk(self, keys, values) -> torch.Tensor:
        cfg, st = self.config, self.state
        labels = torch.full((keys.shape[0],), NOT_STORED, dtype=torch.int8, device=keys.device)
        rows = torch.nonzero(torch.isfinite(keys).all(1) & torch.isfinite(values).all(1)).flatten()
        keys, values = keys[rows], values[rows]
        slots = self._usable_slots(st)
        if slots.numel() == 0:
            labels[rows] = LOW                      # empty bank: the whole chunk is "low"
            self._replace(keys, values)
            return labels.cpu()
        sims = _normalize(keys, cfg.eps) @ _normalize(st.keys[slots], cfg.eps).T
        ks = min(cfg.store_topk, slots.numel())
        top_vals, top_idx = torch.sort(sims, dim=1, descending=True, stable=True)
        sbar = top_vals[:, :ks].mean(1)
        top_slots = slots[top_idx[:, :ks]]          # global slot ids
        high = sbar > cfg.theta_high
        mid = ~high & (sbar > cfg.theta_low)
        low = ~high & ~mid
        labels[rows[high]], labels[rows[mid]], labels[rows[low]] = HIGH, MID, LOW
        if cfg.mode == "paper" and bool(high.any()):
            st.usage[torch.unique(top_slots[high])] += 1.0
        if bool(mid.any()):
            self._merge(torch.unique(top_slots[mid]), keys[mid], values[mid])
        if bool(low.any()):
            self._replace(keys[low], values[low])
        return labels.cpu()

    def _merge(self, slots, keys, values) -> None:
        """Pull the given slots toward one chunk mean (spec 2.5; paper: raw mean for K and V)."""
        cfg, st = self.config, self.state
        kbar = keys.mean(0)
        vbar = values.mean(0) if cfg.mode == "code" else kbar
        mom = cfg.momentum
        st.keys[slots] = mom * st.keys[slots] + (1.0 - mom) * kbar
        st.values[slots] = mom * st.values[slots] + (1.0 - mom) * vbar
        if cfg.mode == "code":
            st.usage[slots] += 1.0
        st.valid[slots] = True

    def _replace(self, keys, values) -> None:
        """Write rows to free slots (ascending) then to the lowest-usage valid slots (spec 2.5)."""
        n, m_total = keys.shape[0], self.config.bank_size
        if n == 0:
            return
        st = self.state
        free = torch.nonzero(~st.valid).flatten()
        used = torch.nonzero(st.valid).flatten()
        used = used[torch.sort(st.usage[used], stable=True).indices]   # lower index wins ties
        order = torch.cat([free, used])
        if self.config.legacy_keep_last and n > m_total:
            # Legacy: row i goes to order[i % M]; the last writer of each slot wins.
            rows = torch.arange(n - m_total, n, device=keys.device)
            dest = order[rows % m_total]
        else:
            rows = torch.arange(min(n, m_total), device=keys.device)   # the first M rows win
            dest = order[:rows.numel()]
        st.keys[dest] = keys[rows]
        st.values[dest] = values[rows]
        st.usage[dest] = 1.0
        st.valid[dest] = True


def _normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(eps)


def _case_counts(cases: torch.Tensor) -> tuple[int, int, int]:
    return (int((cases == HIGH).sum()), int((cases == MID).sum()), int((cases == LOW).sum()))


def _add_store_counts(stats: ForwardStats, labels: torch.Tensor) -> None:
    stats.store_high = int((labels == HIGH).sum())
    stats.store_mid = int((labels == MID).sum())
    stats.store_low = int((labels == LOW).sum())
    stats.store_skipped = int((labels == NOT_STORED).sum())


def bank_to_numpy(bank: ActivationMemoryBank) -> dict:
    """The live bank as numpy arrays (keys, values, usage, valid)."""
    return bank.snapshot().to_numpy()


__all__ = ["ActivationMemoryBank", "BankState", "ForwardStats", "LOW", "MID", "HIGH",
           "NOT_STORED", "bank_to_numpy"]
