// GGML_OP_AMB's CUDA kernels (pace-gguf): the algorithm of the Vulkan shader (cpp/src/vulkan/amb.comp,
// checked against the CPU op on lavapipe), statement for statement, in two kernels that amb.cu
// launches one after the other on the backend's stream:
//
//  amb_retrieve  one block per token: cosine similarities with its sequence's valid slots, the case,
//                the enhanced row. Writes to the scratch buffer, per token, the similarities (reused
//                by the store, as the CPU kernel reuses them), the case and whether the row can be
//                stored.
//  amb_store     one block per sequence, the bank's only writer: counters and case log, then the
//                store chunk by chunk (ubatch granularity), or the rows buffered in `pend` and stored
//                a full chunk at a time (prompt granularity).
//
// Every list (valid slots, picks, replacement order, a chunk's rows) is built in parallel, each entry
// placed at its rank by the thread that owns it. Threads share data through shared memory and the
// bank only across __syncthreads(), which every thread of the block reaches (no warp intrinsics, no
// divergent barriers): that is what lets cpp/tests/amb-cuda-host.h run this same source on host
// threads for test-backend-ops on machines without a GPU.
//
// Tie-breaks follow the CPU kernel: the lower slot wins among equal similarities; NaN ranks above
// every number. Sums are reduced in a tree, so results agree with the CPU op within rounding.
#pragma once

#include "../ggml-amb-gpu.h"
#include "../pace-amb-layout.h"

#include <cstdint>

namespace pace_amb_cuda {

using pace_amb_gpu::BLOCK;
using pace_amb_gpu::NB;
using pace_amb_gpu::MAX_BANK;
using pace_amb_gpu::MAX_CHUNK;

struct args {
    const float   * a;         // activations [n_ff, T] (row stride sh.a_stride)
    const int32_t * tok;       // per token: sequence, position
    float         * bank;      // per sequence: M keys, M values
    float         * meta;      // per sequence: usage, valid, key norms (M each)
    int32_t       * state;     // per sequence: header, case log
    const float   * snap;      // prompt granularity: the bank as the prompt found it (else null)
    const float   * snap_meta;
    float         * pend;      // prompt granularity: rows waiting for a full chunk (else null)
    float         * dst;       // enhanced rows (row stride sh.o_stride)
    float         * scratch;   // pace_amb_gpu::scratch_elements(op) floats
    pace_amb_gpu::shape sh;
    ggml_amb_params     hp;
};

// The kernels' arguments for op `dst` (GGML_OP_AMB), whose tensors the device can address.
static inline args args_of(ggml_tensor * dst, void * scratch) {
    args p{};
    p.a = (const float *) dst->src[0]->data;
    p.tok = (const int32_t *) dst->src[1]->data;
    p.bank = (float *) dst->src[2]->data;
    p.meta = (float *) dst->src[3]->data;
    p.state = (int32_t *) dst->src[4]->data;
    p.snap = dst->src[5] ? (const float *) dst->src[5]->data : nullptr;
    p.snap_meta = dst->src[6] ? (const float *) dst->src[6]->data : nullptr;
    p.pend = dst->src[7] ? (float *) dst->src[7]->data : nullptr;
    p.dst = (float *) dst->data;
    p.scratch = (float *) scratch;
    p.sh = pace_amb_gpu::shape_of(dst);
    p.hp = pace_amb_gpu::params_of(dst);
    return p;
}

// ---- per-block shared memory ---------------------------------------------------------------------
__shared__ float   red[NB * BLOCK];
__shared__ int32_t s_slots[MAX_BANK];  // valid slots, ascending
__shared__ float   s_sims[MAX_BANK];
__shared__ int32_t s_order[MAX_BANK];
__shared__ int32_t s_int[8];
__shared__ float   s_float[4];

static __device__ __forceinline__ uint32_t tid() { return threadIdx.x; }
static __device__ __forceinline__ int32_t imin(int32_t x, int32_t y) { return x < y ? x : y; }
static __device__ __forceinline__ bool is_finite(float v) { return !isnan(v) && !isinf(v); }

// Sums red[k*BLOCK + 0..BLOCK) into red[k*BLOCK] for k < n. Called by every thread of the block.
static __device__ void reduce(uint32_t n) {
    __syncthreads();
    for (uint32_t s = BLOCK / 2; s > 0; s >>= 1) {
        if (tid() < s) {
            for (uint32_t k = 0; k < n; ++k) {
                red[k * BLOCK + tid()] += red[k * BLOCK + tid() + s];
            }
        }
        __syncthreads();
    }
}

// ---- one sequence's bank: keys in rows [0, M), values in [M, 2M); meta: usage, valid, key norms ----
static __device__ __forceinline__ uint32_t bank_base(const args & p, uint32_t seq) { return seq * 2u * p.sh.M * p.sh.n_ff; }
static __device__ __forceinline__ uint32_t key_at(const args & p, uint32_t seq, uint32_t j) { return bank_base(p, seq) + j * p.sh.n_ff; }
static __device__ __forceinline__ uint32_t val_at(const args & p, uint32_t seq, uint32_t j) { return bank_base(p, seq) + (p.sh.M + j) * p.sh.n_ff; }
static __device__ __forceinline__ uint32_t usage_at(const args & p, uint32_t seq, uint32_t j) { return seq * 3u * p.sh.M + j; }
static __device__ __forceinline__ uint32_t valid_at(const args & p, uint32_t seq, uint32_t j) { return seq * 3u * p.sh.M + p.sh.M + j; }
static __device__ __forceinline__ uint32_t knorm_at(const args & p, uint32_t seq, uint32_t j) { return seq * 3u * p.sh.M + 2u * p.sh.M + j; }

static __device__ __forceinline__ const float * bank_of(const args & p, bool from_snap) { return from_snap ? p.snap : p.bank; }
static __device__ __forceinline__ const float * meta_of(const args & p, bool from_snap) { return from_snap ? p.snap_meta : p.meta; }

// scratch: per row, its similarities with the slots: R = T token rows, then (prompt granularity) each
// sequence's `chunk` pending rows.
static __device__ __forceinline__ uint32_t sim_rows(const args & p) { return p.sh.T + (p.sh.has_pend != 0 ? p.sh.S * uint32_t(p.hp.chunk) : 0u); }
static __device__ __forceinline__ uint32_t sim_at(const args & p, uint32_t row, int32_t q) { return row * p.sh.M + uint32_t(q); }
static __device__ __forceinline__ uint32_t case_at(const args & p, uint32_t t) { return sim_rows(p) * p.sh.M + t; }
static __device__ __forceinline__ uint32_t storable_at(const args & p, uint32_t t) { return sim_rows(p) * p.sh.M + p.sh.T + t; }

static __device__ __forceinline__ uint32_t state_at(const args & p, uint32_t seq, uint32_t field) { return seq * p.sh.state_stride + field; }
static __device__ __forceinline__ bool prompt_span(const args & p, uint32_t seq) {
    return p.sh.has_snap != 0 && (p.state[state_at(p, seq, pace_amb::ST_FLAGS)] & pace_amb::FLAG_PROMPT_SPAN) != 0;
}

// Lists the valid slots into s_slots (ascending: each at its rank); returns their count.
static __device__ int32_t list_slots(const args & p, bool from_snap, uint32_t seq) {
    const float * meta = meta_of(p, from_snap);
    for (uint32_t j = tid(); j < p.sh.M; j += BLOCK) {
        if (meta[valid_at(p, seq, j)] != 0.0f) {
            int32_t rank = 0;
            for (uint32_t k = 0; k < j; ++k) {
                rank += meta[valid_at(p, seq, k)] != 0.0f ? 1 : 0;
            }
            s_slots[rank] = int32_t(j);
        }
    }
    if (tid() == 0) {
        int32_t m = 0;
        for (uint32_t j = 0; j < p.sh.M; ++j) {
            m += meta[valid_at(p, seq, j)] != 0.0f ? 1 : 0;
        }
        s_int[0] = m;
    }
    __syncthreads();
    const int32_t m = s_int[0];
    __syncthreads();
    return m;
}

// ---- rows: activations/enhanced rows of token t, or rows of the pending buffer ------------------
enum row_source { SRC_TOKENS, SRC_PEND };

static __device__ __forceinline__ uint32_t pend_key_at(const args & p, uint32_t seq, uint32_t i) { return (seq * 2u * uint32_t(p.hp.chunk) + i) * p.sh.n_ff; }
static __device__ __forceinline__ uint32_t pend_val_at(const args & p, uint32_t seq, uint32_t i) { return (seq * 2u * uint32_t(p.hp.chunk) + uint32_t(p.hp.chunk) + i) * p.sh.n_ff; }
static __device__ __forceinline__ float row_key(const args & p, row_source src, uint32_t seq, uint32_t r, uint32_t d) {
    return src == SRC_TOKENS ? p.a[r * p.sh.a_stride + d] : p.pend[pend_key_at(p, seq, r) + d];
}
static __device__ __forceinline__ float row_val(const args & p, row_source src, uint32_t seq, uint32_t r, uint32_t d) {
    return src == SRC_TOKENS ? p.dst[r * p.sh.o_stride + d] : p.pend[pend_val_at(p, seq, r) + d];
}
static __device__ __forceinline__ uint32_t sim_row(const args & p, row_source src, uint32_t seq, uint32_t r) {
    return src == SRC_TOKENS ? r : p.sh.T + seq * uint32_t(p.hp.chunk) + r;
}

// Cosine of token t's row (clamped norm rn) with the m listed slots, into s_sims[0, m).
static __device__ void similarities(const args & p, bool from_snap, uint32_t seq, uint32_t t, float rn, int32_t m) {
    const float * keys = bank_of(p, from_snap);
    const float * meta = meta_of(p, from_snap);
    for (int32_t i0 = 0; i0 < m; i0 += NB) {
        const uint32_t nb = uint32_t(imin(NB, m - i0));
        float acc[NB];
        for (uint32_t k = 0; k < NB; ++k) { acc[k] = 0.0f; }
        for (uint32_t d = tid(); d < p.sh.n_ff; d += BLOCK) {
            const float x = p.a[t * p.sh.a_stride + d];
            for (uint32_t k = 0; k < NB; ++k) {
                if (k < nb) {
                    acc[k] += x * keys[key_at(p, seq, uint32_t(s_slots[i0 + k])) + d];
                }
            }
        }
        for (uint32_t k = 0; k < NB; ++k) { red[k * BLOCK + tid()] = acc[k]; }
        reduce(nb);
        if (tid() < nb) {
            const uint32_t k = tid(), j = uint32_t(s_slots[i0 + k]);
            s_sims[i0 + k] = red[k * BLOCK] / (rn * meta[knorm_at(p, seq, j)]);
        }
        __syncthreads();
    }
}

// Clamped norm of token t's row, and (in s_int[1]) whether the row is finite.
static __device__ float token_norm(const args & p, uint32_t t) {
    float sq = 0.0f, bad = 0.0f;
    for (uint32_t d = tid(); d < p.sh.n_ff; d += BLOCK) {
        const float x = p.a[t * p.sh.a_stride + d];
        sq += x * x;
        bad += is_finite(x) ? 0.0f : 1.0f;
    }
    red[tid()] = sq;
    red[BLOCK + tid()] = bad;
    reduce(2);
    if (tid() == 0) {
        s_float[0] = fmaxf(sqrtf(red[0]), pace_amb::EPS);
        s_int[1] = red[BLOCK] == 0.0f ? 1 : 0;
    }
    __syncthreads();
    const float rn = s_float[0];
    __syncthreads();
    return rn;
}

// "p before q": larger (or smaller) similarity first, NaN above every number, then the lower position.
static __device__ __forceinline__ bool before(float sp, float sq, int32_t ip, int32_t iq, bool largest) {
    const bool np = isnan(sp), nq = isnan(sq);
    if (np != nq) {
        return largest ? np : nq;
    }
    if (!np && sp != sq) {
        return largest ? sp > sq : sp < sq;
    }
    return ip < iq;
}

// ---- retrieval: one block per token ---------------------------------------------------------------

static __device__ void copy_row(const args & p, uint32_t t) {
    for (uint32_t d = tid(); d < p.sh.n_ff; d += BLOCK) {
        p.dst[t * p.sh.o_stride + d] = p.a[t * p.sh.a_stride + d];
    }
}

// Positions (into s_sims) of the k largest or smallest, in order, into s_order[at, at + k): each
// position goes to its rank in the order.
static __device__ void pick(int32_t m, int32_t k, bool largest, int32_t at) {
    for (int32_t i = int32_t(tid()); i < m; i += BLOCK) {
        int32_t rank = 0;
        for (int32_t q = 0; q < m; ++q) {
            rank += before(s_sims[q], s_sims[i], q, i, largest) ? 1 : 0;
        }
        if (rank < k) {
            s_order[at + rank] = i;
        }
    }
}

// Thread 0: the case and the enhanced row's coefficients (s_int: 2 case, 3 k, 4 kn; s_float: beta,
// a/k, bb/kn); k = kn = 0 for an identity row.
static __device__ void decide(const args & p, int32_t m) {
    using namespace pace_amb;
    bool finite = true;
    float smax = s_sims[0];
    for (int32_t i = 0; i < m; ++i) {
        finite = finite && is_finite(s_sims[i]);
        smax = fmaxf(smax, s_sims[i]);
    }
    const ggml_amb_params & hp = p.hp;
    const int32_t c = finite ? case_of(hp, smax) : CASE_LOW;
    const bool identity = is_identity(hp, c);
    const enhance_weights wt = weights_of(hp, c);
    const int32_t k = identity ? 0 : imin(hp.topk, m), kn = identity ? 0 : imin(hp.negk, m);
    s_int[2] = c;
    s_int[3] = k;
    s_int[4] = kn;
    s_float[1] = wt.beta;
    s_float[2] = k > 0 ? wt.a / float(k) : 0.0f;
    s_float[3] = kn > 0 ? wt.bb / float(kn) : 0.0f;
}

// Writes o = beta*x + sum of the picked values, in the CPU kernel's order; returns whether every
// element of o is finite.
static __device__ bool enhance(const args & p, uint32_t t, uint32_t seq, bool from_snap) {
    const float * vals = bank_of(p, from_snap);
    const int32_t k = s_int[3], kn = s_int[4];
    const float beta = s_float[1], w = s_float[2], wn = s_float[3];
    float bad = 0.0f;
    for (uint32_t d = tid(); d < p.sh.n_ff; d += BLOCK) {
        const float x = p.a[t * p.sh.a_stride + d];
        float o = x;
        if (k > 0) {
            o = beta * x;
            for (int32_t r = 0; r < k; ++r) {
                o += w * vals[val_at(p, seq, uint32_t(s_slots[s_order[r]])) + d];
            }
            for (int32_t r = 0; r < kn; ++r) {
                o += wn * vals[val_at(p, seq, uint32_t(s_slots[s_order[k + r]])) + d];
            }
        }
        p.dst[t * p.sh.o_stride + d] = o;
        bad += is_finite(o) ? 0.0f : 1.0f;
    }
    red[tid()] = bad;
    reduce(1);
    const bool finite = red[0] == 0.0f;
    __syncthreads();
    return finite;
}

static __device__ void write_scratch(const args & p, uint32_t t, int32_t c, bool storable) {
    if (tid() == 0) {
        p.scratch[case_at(p, t)] = float(c);
        p.scratch[storable_at(p, t)] = storable ? 1.0f : 0.0f;
    }
}

static __device__ void retrieve(const args & p, uint32_t t) {
    const int32_t seq_i = p.tok[2 * t];
    if (seq_i < 0 || seq_i >= int32_t(p.sh.S)) { // a sequence without a bank passes through unchanged
        copy_row(p, t);
        write_scratch(p, t, pace_amb::CASE_LOW, false);
        return;
    }
    const uint32_t seq = uint32_t(seq_i);
    const bool from_snap = prompt_span(p, seq);
    const int32_t m = list_slots(p, from_snap, seq);
    const float xn = token_norm(p, t);
    const bool x_finite = s_int[1] != 0;
    if (m == 0 || !x_finite) {
        copy_row(p, t);
        write_scratch(p, t, pace_amb::CASE_LOW, x_finite);
        return;
    }
    similarities(p, from_snap, seq, t, xn, m);
    for (int32_t i = int32_t(tid()); i < m; i += BLOCK) {
        p.scratch[sim_at(p, t, i)] = s_sims[i];
    }
    if (tid() == 0) {
        decide(p, m);
    }
    __syncthreads();
    pick(m, s_int[3], true, 0);
    pick(m, s_int[4], false, s_int[3]);
    __syncthreads();
    const int32_t c = s_int[2];
    const bool o_finite = enhance(p, t, seq, from_snap);
    write_scratch(p, t, c, o_finite);
}

static __global__ void __launch_bounds__(BLOCK) amb_retrieve(const args p) {
    for (uint32_t t = blockIdx.x; t < p.sh.T; t += gridDim.x) {
        retrieve(p, t);
        __syncthreads();
    }
}

// ---- store: one block per sequence ----------------------------------------------------------------

constexpr int32_t ROW_MASK   = 0x0fffffff;
constexpr int32_t ROW_STORED = 1 << 28; // the row can be stored
constexpr int32_t ROW_MID    = 1 << 29;
constexpr int32_t ROW_LOW    = 1 << 30;
constexpr int32_t SLOT_HIGH  = 1;
constexpr int32_t SLOT_MID   = 2;

__shared__ int32_t s_rows[MAX_CHUNK];  // the chunk's rows (token or pend index) with ROW_* flags
__shared__ int32_t s_flags[MAX_BANK];  // per slot: in the high / mid union
__shared__ int32_t s_low[MAX_BANK];    // the first M low rows, in order
__shared__ int32_t s_count[3];         // tokens per case in this ubatch

static __device__ __forceinline__ int32_t saturating_add(int32_t count, int32_t add) { // a restored count may be near the top
    return count > 2147483647 - add ? 2147483647 : count + add;
}

// Counters and the case log: each token logs its own position (positions are unique within a
// sequence's ubatch), the counts add up in shared memory.
static __device__ void log_cases(const args & p, uint32_t seq) {
    if (tid() < 3) {
        s_count[tid()] = 0;
    }
    __syncthreads();
    for (uint32_t t = tid(); t < p.sh.T; t += BLOCK) {
        if (p.tok[2 * t] == int32_t(seq)) {
            const int32_t c = int32_t(p.scratch[case_at(p, t)]);
            atomicAdd(&s_count[c], 1);
            const int32_t pos = p.tok[2 * t + 1];
            if (pos >= 0 && pos < int32_t(p.sh.n_pos)) {
                p.state[state_at(p, seq, GGML_AMB_STATE_HEADER + uint32_t(pos))] = c + 1; // pace_amb::case_log_entry
            }
        }
    }
    __syncthreads();
    if (tid() < 3) { // ST_N_HIGH, ST_N_MID, ST_N_LOW
        const uint32_t counter = state_at(p, seq, pace_amb::ST_N_HIGH + tid());
        p.state[counter] = saturating_add(p.state[counter], s_count[pace_amb::CASE_HIGH - int32_t(tid())]);
    }
    __syncthreads();
}

// The position (into sims) of the best similarity strictly after `prev` in the order (prev < 0: the best).
static __device__ int32_t next_best(const float * sims, int32_t m, int32_t prev) {
    int32_t best = -1;
    for (int32_t q = 0; q < m; ++q) {
        const bool after_prev = prev < 0 || before(sims[prev], sims[q], prev, q, true);
        if (after_prev && (best < 0 || before(sims[q], sims[best], q, best, true))) {
            best = q;
        }
    }
    return best;
}

// Classifies a row on the mean of its top-ks similarities with the listed slots (sims[q]: with slot
// s_slots[q]); marks the unions; returns the row's ROW_* class flag.
static __device__ int32_t classify_row(const args & p, const float * sims, int32_t m) {
    const int32_t ks = imin(p.hp.store_topk, m);
    float sum = 0.0f;
    int32_t prev = -1;
    for (int32_t r = 0; r < ks; ++r) {
        prev = next_best(sims, m, prev);
        sum += sims[prev];
    }
    const float sbar = sum / float(ks);
    const int32_t row_case = pace_amb::case_of(p.hp, sbar); // the retrieval's thresholds, on the mean
    const int32_t union_flag = row_case == pace_amb::CASE_HIGH ? SLOT_HIGH : row_case == pace_amb::CASE_MID ? SLOT_MID : 0;
    if (union_flag != 0) {
        prev = -1;
        for (int32_t r = 0; r < ks; ++r) {
            prev = next_best(sims, m, prev);
            atomicOr(&s_flags[s_slots[prev]], union_flag);
        }
    }
    return union_flag == SLOT_HIGH ? 0 : union_flag == SLOT_MID ? ROW_MID : ROW_LOW;
}

// Similarities of the chunk's stored rows with the m listed slots, into scratch, against the bank as
// it is now: one (row, slot) pair per thread in turn.
static __device__ void chunk_similarities(const args & p, row_source src, uint32_t seq, int32_t n, int32_t m) {
    for (int32_t pair = int32_t(tid()); pair < n * m; pair += BLOCK) {
        const int32_t i = pair / m, q = pair % m;
        if ((s_rows[i] & ROW_STORED) != 0) {
            const uint32_t r = uint32_t(s_rows[i] & ROW_MASK), j = uint32_t(s_slots[q]);
            float dot = 0.0f, sq = 0.0f;
            for (uint32_t d = 0; d < p.sh.n_ff; ++d) {
                const float x = row_key(p, src, seq, r, d);
                dot += x * p.bank[key_at(p, seq, j) + d];
                sq += x * x;
            }
            p.scratch[sim_at(p, sim_row(p, src, seq, r), q)] = dot / (fmaxf(sqrtf(sq), pace_amb::EPS) * p.meta[knorm_at(p, seq, j)]);
        }
    }
    __syncthreads();
}

// Classifies the chunk's stored rows from their similarities in scratch (the retrieval's for the
// first chunk of a ubatch, else chunk_similarities'), one row per thread in turn.
static __device__ void classify(const args & p, row_source src, uint32_t seq, int32_t n, int32_t m, bool reuse) {
    if (!reuse) {
        chunk_similarities(p, src, seq, n, m);
    }
    for (int32_t i = int32_t(tid()); i < n; i += BLOCK) {
        if ((s_rows[i] & ROW_STORED) != 0) {
            const uint32_t row = sim_row(p, src, seq, uint32_t(s_rows[i] & ROW_MASK));
            s_rows[i] |= classify_row(p, p.scratch + sim_at(p, row, 0), m);
        }
    }
    __syncthreads();
}

// Clamped norms of the listed slots' keys s_order[0, n), then usage/valid: usage = `use` if `set`,
// else usage += `use`.
static __device__ void finish_slots(const args & p, uint32_t seq, int32_t n, float use, bool set) {
    for (int32_t i0 = 0; i0 < n; i0 += NB) {
        const uint32_t nb = uint32_t(imin(NB, n - i0));
        float acc[NB];
        for (uint32_t k = 0; k < NB; ++k) { acc[k] = 0.0f; }
        for (uint32_t d = tid(); d < p.sh.n_ff; d += BLOCK) {
            for (uint32_t k = 0; k < NB; ++k) {
                if (k < nb) {
                    const float v = p.bank[key_at(p, seq, uint32_t(s_order[i0 + k])) + d];
                    acc[k] += v * v;
                }
            }
        }
        for (uint32_t k = 0; k < NB; ++k) { red[k * BLOCK + tid()] = acc[k]; }
        reduce(nb);
        if (tid() < nb) {
            const uint32_t k = tid(), j = uint32_t(s_order[i0 + k]);
            p.meta[knorm_at(p, seq, j)] = fmaxf(sqrtf(red[k * BLOCK]), pace_amb::EPS);
            p.meta[usage_at(p, seq, j)] = set ? use : p.meta[usage_at(p, seq, j)] + use;
            p.meta[valid_at(p, seq, j)] = 1.0f;
        }
        __syncthreads();
    }
}

// Mid rows: merge their mean key and value into every slot of the mid union.
static __device__ void merge_mid(const args & p, row_source src, uint32_t seq, int32_t n) {
    for (uint32_t j = tid(); j < p.sh.M; j += BLOCK) { // the union's slots, ascending
        if ((s_flags[j] & SLOT_MID) != 0) {
            int32_t rank = 0;
            for (uint32_t k = 0; k < j; ++k) {
                rank += (s_flags[k] & SLOT_MID) != 0 ? 1 : 0;
            }
            s_order[rank] = int32_t(j);
        }
    }
    if (tid() == 0) {
        int32_t n_mid = 0, n_slots = 0;
        for (int32_t i = 0; i < n; ++i) {
            n_mid += (s_rows[i] & ROW_MID) != 0 ? 1 : 0;
        }
        for (uint32_t j = 0; j < p.sh.M; ++j) {
            n_slots += (s_flags[j] & SLOT_MID) != 0 ? 1 : 0;
        }
        s_int[5] = n_mid;
        s_int[6] = n_slots;
    }
    __syncthreads();
    const int32_t n_mid = s_int[5], n_slots = s_int[6];
    __syncthreads();
    if (n_mid == 0) {
        return; // uniform across the block
    }
    const float mom = p.hp.momentum;
    const bool code = p.hp.mode == pace_amb::MODE_CODE;
    for (uint32_t d = tid(); d < p.sh.n_ff; d += BLOCK) {
        // compensated sums (the CPU sums in double, and a chunk can hold a thousand mid rows);
        // nvcc does not reassociate these, even with -use_fast_math
        float ks = 0.0f, vs = 0.0f, kc = 0.0f, vc = 0.0f;
        for (int32_t i = 0; i < n; ++i) {
            if ((s_rows[i] & ROW_MID) != 0) {
                const uint32_t r = uint32_t(s_rows[i] & ROW_MASK);
                const float ky = row_key(p, src, seq, r, d) - kc, kt = ks + ky;
                kc = (kt - ks) - ky;
                ks = kt;
                const float vy = row_val(p, src, seq, r, d) - vc, vt = vs + vy;
                vc = (vt - vs) - vy;
                vs = vt;
            }
        }
        const float km = ks / float(n_mid);
        const float vm = code ? vs / float(n_mid) : km;
        for (int32_t q = 0; q < n_slots; ++q) {
            const uint32_t j = uint32_t(s_order[q]);
            p.bank[key_at(p, seq, j) + d] = mom * p.bank[key_at(p, seq, j) + d] + (1.0f - mom) * km;
            p.bank[val_at(p, seq, j) + d] = mom * p.bank[val_at(p, seq, j) + d] + (1.0f - mom) * vm;
        }
    }
    __syncthreads();
    finish_slots(p, seq, n_slots, code ? 1.0f : 0.0f, false);
}

// Low rows (`low_flag` marks them): write them to free slots (ascending), then to valid slots by
// ascending usage (ties: lower index); only the first M.
static __device__ void replace_low(const args & p, row_source src, uint32_t seq, int32_t n, int32_t low_flag) {
    // the replacement order: free slots ascending, then valid ones by usage, ties to the lower index
    for (uint32_t j = tid(); j < p.sh.M; j += BLOCK) {
        const bool free_j = p.meta[valid_at(p, seq, j)] == 0.0f;
        const float u = p.meta[usage_at(p, seq, j)];
        int32_t rank = 0;
        for (uint32_t k = 0; k < p.sh.M; ++k) {
            const bool free_k = p.meta[valid_at(p, seq, k)] == 0.0f;
            if (free_j) {
                rank += free_k && k < j ? 1 : 0;
            } else {
                const float uk = p.meta[usage_at(p, seq, k)];
                rank += free_k || uk < u || (uk == u && k < j) ? 1 : 0;
            }
        }
        s_order[rank] = int32_t(j);
    }
    // s_low[k]: the k-th low row, for k < M; each low row finds its own rank
    if (tid() == 0) {
        s_int[7] = 0;
    }
    __syncthreads();
    for (int32_t i = int32_t(tid()); i < n; i += BLOCK) {
        if ((s_rows[i] & low_flag) != 0) {
            int32_t rank = 0;
            for (int32_t k = 0; k < i; ++k) {
                rank += (s_rows[k] & low_flag) != 0 ? 1 : 0;
            }
            if (rank < int32_t(p.sh.M)) {
                s_low[rank] = s_rows[i] & ROW_MASK;
                atomicAdd(&s_int[7], 1);
            }
        }
    }
    __syncthreads();
    const int32_t n_write = s_int[7];
    __syncthreads();
    if (n_write == 0) {
        return; // uniform across the block
    }
    for (int32_t i = 0; i < n_write; ++i) {
        const uint32_t j = uint32_t(s_order[i]), r = uint32_t(s_low[i]);
        for (uint32_t d = tid(); d < p.sh.n_ff; d += BLOCK) {
            p.bank[key_at(p, seq, j) + d] = row_key(p, src, seq, r, d);
            p.bank[val_at(p, seq, j) + d] = row_val(p, src, seq, r, d);
        }
    }
    __syncthreads();
    finish_slots(p, seq, n_write, 1.0f, true);
}

// A chunk against a bank with m valid slots: classify, count high rows' use (paper), merge the mid
// rows, replace with the low ones.
static __device__ void store_classified(const args & p, row_source src, uint32_t seq, int32_t n, int32_t m, bool reuse) {
    for (uint32_t j = tid(); j < p.sh.M; j += BLOCK) {
        s_flags[j] = 0;
    }
    __syncthreads();
    classify(p, src, seq, n, m, reuse);
    if (p.hp.mode != pace_amb::MODE_CODE) {
        for (uint32_t j = tid(); j < p.sh.M; j += BLOCK) {
            p.meta[usage_at(p, seq, j)] += (s_flags[j] & SLOT_HIGH) != 0 ? 1.0f : 0.0f;
        }
        __syncthreads();
    }
    merge_mid(p, src, seq, n);
    replace_low(p, src, seq, n, ROW_LOW);
}

// One store chunk of the n rows in s_rows (ROW_STORED set on those that can be stored).
static __device__ void store_chunk(const args & p, row_source src, uint32_t seq, int32_t n, bool reuse) {
    const int32_t m = list_slots(p, false, seq);
    if (m == 0) { // empty bank: the whole chunk is "low"
        replace_low(p, src, seq, n, ROW_STORED);
    } else {
        store_classified(p, src, seq, n, m, reuse);
    }
}

// The sequence's rows [first, first + chunk) in token order into s_rows (each token at its rank
// among the sequence's tokens); returns their count.
static __device__ int32_t gather_rows(const args & p, uint32_t seq, int32_t first) {
    for (uint32_t t = tid(); t < p.sh.T; t += BLOCK) {
        if (p.tok[2 * t] == int32_t(seq)) {
            int32_t rank = 0;
            for (uint32_t u = 0; u < t; ++u) {
                rank += p.tok[2 * u] == int32_t(seq) ? 1 : 0;
            }
            if (rank >= first && rank < first + p.hp.chunk) {
                s_rows[rank - first] = int32_t(t) | (p.scratch[storable_at(p, t)] != 0.0f ? ROW_STORED : 0);
            }
        }
    }
    if (tid() == 0) {
        int32_t total = 0;
        for (uint32_t t = 0; t < p.sh.T; ++t) {
            total += p.tok[2 * t] == int32_t(seq) ? 1 : 0;
        }
        const int32_t left = total - first;
        s_int[2] = left < 0 ? 0 : imin(left, p.hp.chunk);
    }
    __syncthreads();
    const int32_t n = s_int[2];
    __syncthreads();
    return n;
}

// Ubatch granularity: the sequence's rows in chunks.
static __device__ void store_ubatch(const args & p, uint32_t seq) {
    int32_t first = 0;
    int32_t n = gather_rows(p, seq, first);
    while (n > 0) {
        store_chunk(p, SRC_TOKENS, seq, n, first == 0);
        first += p.hp.chunk;
        n = gather_rows(p, seq, first);
    }
}

// Prompt granularity: append the rows to `pend`, storing each full chunk.
static __device__ void buffer_rows(const args & p, uint32_t seq) {
    if (tid() == 0) {
        const int32_t n = p.state[state_at(p, seq, pace_amb::ST_N_PENDING)];
        s_int[4] = n < 0 || n >= p.hp.chunk ? 0 : n; // never write outside pend
    }
    __syncthreads();
    for (uint32_t t = 0; t < p.sh.T; ++t) {
        if (p.tok[2 * t] != int32_t(seq)) {
            continue; // uniform: every thread reads the same token
        }
        const uint32_t n = uint32_t(s_int[4]);
        for (uint32_t d = tid(); d < p.sh.n_ff; d += BLOCK) {
            p.pend[pend_key_at(p, seq, n) + d] = p.a[t * p.sh.a_stride + d];
            p.pend[pend_val_at(p, seq, n) + d] = p.dst[t * p.sh.o_stride + d];
        }
        __syncthreads();
        if (int32_t(n) + 1 == p.hp.chunk) {
            for (int32_t i = int32_t(tid()); i < p.hp.chunk; i += BLOCK) { // rows with a non-finite key or value are never stored
                bool finite = true;
                for (uint32_t d = 0; d < p.sh.n_ff; ++d) {
                    finite = finite && is_finite(row_key(p, SRC_PEND, seq, uint32_t(i), d)) && is_finite(row_val(p, SRC_PEND, seq, uint32_t(i), d));
                }
                s_rows[i] = i | (finite ? ROW_STORED : 0);
            }
            __syncthreads();
            store_chunk(p, SRC_PEND, seq, p.hp.chunk, false);
        }
        if (tid() == 0) {
            s_int[4] = int32_t(n) + 1 == p.hp.chunk ? 0 : int32_t(n) + 1;
        }
        __syncthreads();
    }
    if (tid() == 0) {
        p.state[state_at(p, seq, pace_amb::ST_N_PENDING)] = s_int[4];
    }
}

static __global__ void __launch_bounds__(BLOCK) amb_store(const args p) {
    for (uint32_t seq = blockIdx.x; seq < p.sh.S; seq += gridDim.x) {
        log_cases(p, seq);
        if (prompt_span(p, seq) && p.sh.has_pend != 0) {
            buffer_rows(p, seq);
        } else {
            store_ubatch(p, seq);
        }
        __syncthreads();
    }
}

} // namespace pace_amb_cuda
