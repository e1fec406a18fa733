// The Activation Memory Bank's arithmetic (PaceLLM, spec sections 2.3-2.5 and 6), in plain C++.
//
// One header, two users: the CPU kernel of GGML_OP_AMB (ggml-cpu-amb.cpp, in libggml-cpu) and the
// host-side flush of prompt granularity (pace-amb.cpp, in libllama). Keeping the rules in one place
// keeps the two bit-identical. The oracle is pace_gguf/reference/amb.py; names follow it.
//
// Each library runs its own copy: everything here that has code is in an unnamed namespace
// (internal linkage). As plain inline functions they would be weak symbols exported by both
// libraries, and the dynamic linker would bind both libraries' calls to whichever copy it met first.
// The types without code (hparams, bank_view) stay in pace_amb proper, for the bank owner's interface.
//
// Conventions (decisions of spec section 6):
//  * bank, similarities and comparisons in fp32; cos = dot(x/max(|x|,eps), k/max(|k|,eps));
//  * strict '>' against both thresholds; retrieval decides on the max similarity, the store on the
//    mean of the top-min(store_topk, m) similarities;
//  * ties go to the lower slot index (top-k, bottom-k', eviction order);
//  * empty bank, "low" rows, non-finite rows and (code mode) alpha == 0 return x bit for bit;
//  * rows with a non-finite key or value are never stored.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "ggml.h" // struct ggml_amb_params

namespace pace_amb {

enum amb_case : int32_t { CASE_LOW = 0, CASE_MID = 1, CASE_HIGH = 2 };
enum amb_mode : int32_t { MODE_CODE = 0, MODE_PAPER = 1 };

constexpr float EPS = 1e-8f;

// The op's parameters, as GGML_OP_AMB carries them in op_params (declared once, in ggml.h).
using hparams = ggml_amb_params;

// One sequence's bank in one layer. keys/vals: M rows of n_ff floats; usage/valid/knorm: M floats.
struct bank_view {
    int64_t n_ff;
    int32_t M;
    float * keys;
    float * vals;
    float * usage;
    float * valid;
    float * knorm; // |K_j| clamped to EPS, kept in step with every write so retrieval need not recompute it
};

// The few rules the CUDA kernels (cpp/src/cuda) share with this file are host-and-device functions
// under nvcc; every other compiler sees plain inline functions.
#ifdef __CUDACC__
#define PACE_AMB_HOST_DEVICE __host__ __device__
#else
#define PACE_AMB_HOST_DEVICE
#endif

namespace { // internal linkage, see the top of this file

// Retrieval (spec 2.4): the case of a row whose largest similarity is smax (strict '>').
PACE_AMB_HOST_DEVICE inline int32_t case_of(const hparams & hp, float smax) {
    return smax > hp.theta_high ? CASE_HIGH : smax > hp.theta_low ? CASE_MID : CASE_LOW;
}

// Whether a row of case c comes back unchanged: low rows, and code mode with alpha == 0.
PACE_AMB_HOST_DEVICE inline bool is_identity(const hparams & hp, int32_t c) {
    return c == CASE_LOW || (hp.mode == MODE_CODE && hp.alpha == 0.0f);
}

// o = beta*x + (a/k) * sum of V over the top-k + (bb/kn) * sum of V over the bottom-kn
struct enhance_weights {
    float beta, a, bb;
};

PACE_AMB_HOST_DEVICE inline enhance_weights weights_of(const hparams & hp, int32_t c) {
    if (hp.mode == MODE_CODE) {
        return {1.0f - hp.alpha, hp.alpha * (c == CASE_HIGH ? hp.w_high : hp.w_mid), hp.alpha * hp.lambda};
    }
    return {c == CASE_HIGH ? 0.0f : 1.0f - hp.w_mid, c == CASE_HIGH ? hp.w_high : hp.w_mid, hp.lambda};
}

// Dot product with 8 independent accumulators: vectorizes without -ffast-math, and its rounding
// does not depend on the thread count.
inline float dot(const float * a, const float * b, int64_t n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        for (int j = 0; j < 8; ++j) {
            acc[j] += a[i + j] * b[i + j];
        }
    }
    float tail = 0.0f;
    for (; i < n; ++i) {
        tail += a[i] * b[i];
    }
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
}

inline float clamped_norm(const float * x, int64_t n) {
    return std::max(std::sqrt(dot(x, x, n)), EPS);
}

inline bool all_finite(const float * x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        if (!std::isfinite(x[i])) {
            return false;
        }
    }
    return true;
}

// Valid slot ids in ascending order.
inline int valid_slots(const bank_view & b, int32_t * out) {
    int m = 0;
    for (int j = 0; j < b.M; ++j) {
        if (b.valid[j] != 0.0f) {
            out[m++] = j;
        }
    }
    return m;
}

// Cosine of row x (norm xn) with every listed slot.
inline void similarities(const bank_view & b, const int32_t * slots, int m, const float * x, float xn, float * sims) {
    for (int i = 0; i < m; ++i) {
        const int j = slots[i];
        sims[i] = dot(x, b.keys + (int64_t) j * b.n_ff, b.n_ff) / (xn * b.knorm[j]);
    }
}

// Positions (into sims) of the k largest values, ties to the lower position (= lower slot id).
inline void top_k(const float * sims, int m, int k, int32_t * order, bool largest) {
    for (int i = 0; i < m; ++i) {
        order[i] = i;
    }
    // NaN (an overflowing dot product) ranks above every number, as in torch.sort, so that the
    // order stays a strict weak ordering.
    auto before = [&](int32_t p, int32_t q) {
        const bool np = std::isnan(sims[p]), nq = std::isnan(sims[q]);
        if (np != nq) {
            return largest ? np : nq;
        }
        if (!np && sims[p] != sims[q]) {
            return largest ? sims[p] > sims[q] : sims[p] < sims[q];
        }
        return p < q;
    };
    std::partial_sort(order, order + k, order + m, before);
}

// ---- retrieval (spec 2.3, 2.4): read-only -------------------------------------------------------

// Scratch for one row: sims [M] floats, slots and order [M] ints each.
struct row_scratch {
    float   * sims;
    int32_t * slots;
    int32_t * order;
};

// out += weight * mean of the values of the k most (largest) or least similar valid slots.
inline void add_mean_of_values(const bank_view & b, const int32_t * slots, const row_scratch & s, int m, int k,
                               bool largest, float weight, float * out) {
    if (k == 0) {
        return;
    }
    top_k(s.sims, m, k, s.order, largest);
    const float w = weight / k;
    for (int r = 0; r < k; ++r) {
        const float * v = b.vals + (int64_t) slots[s.order[r]] * b.n_ff;
        for (int64_t i = 0; i < b.n_ff; ++i) {
            out[i] += w * v[i];
        }
    }
}

// Enhances one row x into out; returns its case. `m`/slots: the bank's valid slots (precomputed);
// s.sims: x's similarities with them, as similarities() computes them (unused when m == 0 or x is
// not finite). The CPU kernel computes them for all rows at once, threads splitting the dot products.
inline int32_t retrieve_row_from_sims(const hparams & hp, const bank_view & b, const int32_t * slots, int m,
                                      const float * x, float * out, const row_scratch & s) {
    const int64_t n = b.n_ff;
    if (m == 0 || !all_finite(x, n)) {
        std::memcpy(out, x, n * sizeof(float));
        return CASE_LOW;
    }
    if (!all_finite(s.sims, m)) { // overflowing dot products: the reference treats the row as low
        std::memcpy(out, x, n * sizeof(float));
        return CASE_LOW;
    }
    float smax = s.sims[0];
    for (int i = 1; i < m; ++i) {
        smax = std::max(smax, s.sims[i]);
    }
    const int32_t c = case_of(hp, smax);
    if (is_identity(hp, c)) {
        std::memcpy(out, x, n * sizeof(float));
        return c;
    }
    const enhance_weights w = weights_of(hp, c);
    const int k  = std::min(hp.topk, m);
    const int kn = std::min(hp.negk, m);
    for (int64_t i = 0; i < n; ++i) {
        out[i] = w.beta * x[i];
    }
    add_mean_of_values(b, slots, s, m, k, true, w.a, out);     // positive neighbours
    add_mean_of_values(b, slots, s, m, kn, false, w.bb, out);  // least similar ones ("noise")
    return c;
}

// ---- store (spec 2.5): mutates the bank ---------------------------------------------------------

inline void write_slot(bank_view & b, int j, const float * key, const float * val) {
    std::memcpy(b.keys + (int64_t) j * b.n_ff, key, b.n_ff * sizeof(float));
    std::memcpy(b.vals + (int64_t) j * b.n_ff, val, b.n_ff * sizeof(float));
    b.knorm[j] = clamped_norm(key, b.n_ff);
    b.usage[j] = 1.0f;
    b.valid[j] = 1.0f;
}

// Writes the listed rows to free slots (ascending), then to valid slots by ascending usage (ties:
// lower index); only the first M rows are written.
inline void replace_rows(bank_view & b, const float * const * keys, const float * const * vals, int n_rows) {
    std::vector<int32_t> order;
    order.reserve(b.M);
    for (int j = 0; j < b.M; ++j) {
        if (b.valid[j] == 0.0f) {
            order.push_back(j);
        }
    }
    const size_t n_free = order.size();
    for (int j = 0; j < b.M; ++j) {
        if (b.valid[j] != 0.0f) {
            order.push_back(j);
        }
    }
    std::stable_sort(order.begin() + n_free, order.end(), [&](int32_t p, int32_t q) { return b.usage[p] < b.usage[q]; });
    const int n_write = std::min(n_rows, b.M);
    for (int i = 0; i < n_write; ++i) {
        write_slot(b, order[i], keys[i], vals[i]);
    }
}

// One store chunk of n rows: row i has raw key X[i] and enhanced value O[i].
// `sims` holds, for each stored row, its similarities with the m valid slots (row-major, stride m),
// computed by store_similarities() against the bank as it is now.
struct chunk_rows {
    std::vector<const float *> keys, vals; // finite rows only, in token order
};

// Whether a row can be stored: rows with a non-finite key or value never are.
inline bool storable(const float * key, const float * val, int64_t n_ff) {
    return all_finite(key, n_ff) && all_finite(val, n_ff);
}

inline chunk_rows finite_rows(const float * const * X, const float * const * O, int n, int64_t n_ff) {
    chunk_rows r;
    for (int i = 0; i < n; ++i) {
        if (storable(X[i], O[i], n_ff)) {
            r.keys.push_back(X[i]);
            r.vals.push_back(O[i]);
        }
    }
    return r;
}

// Similarities of rows [i0, i1) of the chunk with the valid slots; parallel callers split the rows.
inline void store_similarities(const bank_view & b, const int32_t * slots, int m, const chunk_rows & rows,
                               int i0, int i1, float * sims) {
    for (int i = i0; i < i1; ++i) {
        similarities(b, slots, m, rows.keys[i], clamped_norm(rows.keys[i], b.n_ff), sims + (int64_t) i * m);
    }
}

// Classifies the chunk's rows on the mean of their top-k similarities, then (paper) counts high
// rows' use, merges mid rows into the union of their top-k slots, and replaces with low rows.
inline void store_apply(const hparams & hp, bank_view & b, const int32_t * slots, int m, const chunk_rows & rows,
                        const float * sims) {
    const int n = (int) rows.keys.size();
    if (n == 0) {
        return;
    }
    if (m == 0) { // empty bank: the whole chunk is "low"
        replace_rows(b, rows.keys.data(), rows.vals.data(), n);
        return;
    }
    const int ks = std::min(hp.store_topk, m);
    std::vector<int32_t> order(m);
    std::vector<char> in_mid_union(b.M, 0), in_high_union(b.M, 0);
    std::vector<const float *> low_keys, low_vals;
    std::vector<double> kbar, vbar;
    int n_mid = 0;
    for (int i = 0; i < n; ++i) {
        const float * row_sims = sims + (int64_t) i * m;
        top_k(row_sims, m, ks, order.data(), true);
        float sum = 0.0f;
        for (int r = 0; r < ks; ++r) {
            sum += row_sims[order[r]];
        }
        const float sbar = sum / ks;
        if (sbar > hp.theta_high) {
            for (int r = 0; r < ks; ++r) {
                in_high_union[slots[order[r]]] = 1;
            }
        } else if (sbar > hp.theta_low) {
            for (int r = 0; r < ks; ++r) {
                in_mid_union[slots[order[r]]] = 1;
            }
            if (n_mid++ == 0) {
                kbar.assign(b.n_ff, 0.0);
                vbar.assign(b.n_ff, 0.0);
            }
            for (int64_t d = 0; d < b.n_ff; ++d) {
                kbar[d] += rows.keys[i][d];
                vbar[d] += rows.vals[i][d];
            }
        } else {
            low_keys.push_back(rows.keys[i]);
            low_vals.push_back(rows.vals[i]);
        }
    }
    if (hp.mode == MODE_PAPER) {
        for (int j = 0; j < b.M; ++j) {
            b.usage[j] += in_high_union[j] ? 1.0f : 0.0f;
        }
    }
    if (n_mid > 0) {
        std::vector<float> km(b.n_ff), vm(b.n_ff);
        for (int64_t d = 0; d < b.n_ff; ++d) {
            km[d] = (float) (kbar[d] / n_mid);
            vm[d] = hp.mode == MODE_CODE ? (float) (vbar[d] / n_mid) : km[d];
        }
        const float mom = hp.momentum;
        for (int j = 0; j < b.M; ++j) {
            if (!in_mid_union[j]) {
                continue;
            }
            float * kj = b.keys + (int64_t) j * b.n_ff;
            float * vj = b.vals + (int64_t) j * b.n_ff;
            for (int64_t d = 0; d < b.n_ff; ++d) {
                kj[d] = mom * kj[d] + (1.0f - mom) * km[d];
                vj[d] = mom * vj[d] + (1.0f - mom) * vm[d];
            }
            b.knorm[j] = clamped_norm(kj, b.n_ff);
            b.usage[j] += hp.mode == MODE_CODE ? 1.0f : 0.0f;
            b.valid[j] = 1.0f;
        }
    }
    if (!low_keys.empty()) {
        replace_rows(b, low_keys.data(), low_vals.data(), (int) low_keys.size());
    }
}

// Single-threaded store of n rows in chunks of hp.chunk (used by the host-side flush).
inline void store_rows(const hparams & hp, bank_view & b, const float * const * X, const float * const * O, int n) {
    std::vector<int32_t> slots(b.M);
    std::vector<float> sims;
    for (int c0 = 0; c0 < n; c0 += hp.chunk) {
        const int nc = std::min(hp.chunk, n - c0);
        const chunk_rows rows = finite_rows(X + c0, O + c0, nc, b.n_ff);
        const int m = valid_slots(b, slots.data());
        sims.resize((size_t) rows.keys.size() * m);
        store_similarities(b, slots.data(), m, rows, 0, (int) rows.keys.size(), sims.data());
        store_apply(hp, b, slots.data(), m, rows, sims.data());
    }
}

} // namespace
} // namespace pace_amb
