#version 450
// GGML_OP_AMB on ggml-vulkan (pace-gguf): the same rules as the CPU kernel (cpp/src/ggml-cpu-amb.cpp,
// arithmetic in pace-amb-math.h), in two dispatches that ggml-vulkan-amb.cpp issues with a barrier
// between them:
//
//  AMB_RETRIEVE  one workgroup per token: cosine similarities with its sequence's valid slots, the
//                case, the enhanced row. Writes to a scratch buffer, per token, the similarities
//                (reused by the store, as the CPU kernel reuses them), the case and whether the row
//                can be stored.
//  AMB_STORE     one workgroup per sequence, the bank's only writer: counters and case log, then the
//                store chunk by chunk (ubatch granularity), or the rows buffered in `pend` and stored
//                a full chunk at a time (prompt granularity).
//
// Every list (valid slots, picks, replacement order, a chunk's rows) is built in parallel, each entry
// placed at its rank by the invocation that owns it, so that no invocation carries serial work (Mesa's
// lavapipe also ends an invocation's loops after 65,535 iterations in all: ggml-vulkan-amb.cpp).
//
// Tie-breaks follow the CPU kernel: the lower slot wins among equal similarities; NaN ranks above
// every number. Sums are reduced in a tree, so results agree with the CPU op within rounding, not
// bit for bit.
#extension GL_EXT_control_flow_attributes : enable

#define BLOCK 256       // pace_amb_gpu::BLOCK
#define NB 4            // pace_amb_gpu::NB: slots whose dot products one pass reduces together
#define MAX_M 256       // largest bank (pace_amb_gpu::MAX_BANK, ggml-amb-gpu.h)
#define MAX_CHUNK 1024  // largest store chunk (pace_amb_gpu::MAX_CHUNK)
#define EPS 1e-8

// mirrors of pace-amb-math.h and pace-amb-layout.h
#define CASE_LOW 0
#define CASE_MID 1
#define CASE_HIGH 2
#define MODE_CODE 0
#define STATE_HEADER 8
#define ST_N_PENDING 0
#define ST_N_HIGH 1
#define ST_FLAGS 4
#define FLAG_PROMPT_SPAN 1

layout(local_size_x = BLOCK, local_size_y = 1, local_size_z = 1) in;

layout(push_constant) uniform parameter {
    uint n_ff; uint T; uint M; uint S;
    uint a_stride; uint o_stride; uint state_stride; uint n_pos;
    uint has_snap; uint has_pend;
    float theta_high; float theta_low; float alpha; float w_high; float w_mid; float lambda; float momentum;
    int topk; int negk; int store_topk; int chunk; int mode;
} p;

layout(binding = 0) readonly buffer A     { float a[]; };
layout(binding = 1) readonly buffer TOK   { int tok[]; };
// coherent: the store's invocations read what others of the workgroup wrote (after sync())
layout(binding = 2) coherent buffer BANK  { float bank[]; };
layout(binding = 3) coherent buffer META  { float meta[]; };
layout(binding = 4) coherent buffer STATE { int state[]; };
layout(binding = 5) readonly buffer SNAP  { float snap[]; };
layout(binding = 6) readonly buffer SNAPM { float snap_meta[]; };
layout(binding = 7) coherent buffer PEND  { float pend[]; };
layout(binding = 8) coherent buffer D     { float dst[]; };
layout(binding = 9) coherent buffer SCRATCH { float scratch[]; }; // sims [R*M] | case [T] | storable [T] (sim_rows)

shared float red[NB * BLOCK];
shared int   s_slots[MAX_M];  // valid slots, ascending
shared float s_sims[MAX_M];
shared int   s_order[MAX_M];
shared int   s_int[8];
shared float s_float[4];

uint tid() { return gl_LocalInvocationID.x; }

// A barrier that also makes this invocation's buffer writes visible to the workgroup's others (the
// store's steps hand bank rows, metadata and similarities from one invocation to another).
void sync() {
    memoryBarrierShared();
    memoryBarrierBuffer();
    barrier();
}

bool is_finite(float v) { return !isnan(v) && !isinf(v); }

// Sums red[k*BLOCK + 0..BLOCK) into red[k*BLOCK] for k < n. Called in uniform control flow.
void reduce(uint n) {
    barrier();
    [[unroll]] for (uint s = BLOCK / 2; s > 0; s >>= 1) {
        if (tid() < s) {
            for (uint k = 0; k < n; ++k) {
                red[k * BLOCK + tid()] += red[k * BLOCK + tid() + s];
            }
        }
        barrier();
    }
}

// ---- one sequence's bank: keys in rows [0, M), values in [M, 2M); meta: usage, valid, key norms ----
uint bank_base(uint seq) { return seq * 2u * p.M * p.n_ff; }
uint key_at(uint seq, uint j) { return bank_base(seq) + j * p.n_ff; }
uint val_at(uint seq, uint j) { return bank_base(seq) + (p.M + j) * p.n_ff; }
uint usage_at(uint seq, uint j) { return seq * 3u * p.M + j; }
uint valid_at(uint seq, uint j) { return seq * 3u * p.M + p.M + j; }
uint knorm_at(uint seq, uint j) { return seq * 3u * p.M + 2u * p.M + j; }

float key(bool from_snap, uint seq, uint j, uint d) { return from_snap ? snap[key_at(seq, j) + d] : bank[key_at(seq, j) + d]; }
float valv(bool from_snap, uint seq, uint j, uint d) { return from_snap ? snap[val_at(seq, j) + d] : bank[val_at(seq, j) + d]; }
float valid(bool from_snap, uint seq, uint j) { return from_snap ? snap_meta[valid_at(seq, j)] : meta[valid_at(seq, j)]; }
float knorm(bool from_snap, uint seq, uint j) { return from_snap ? snap_meta[knorm_at(seq, j)] : meta[knorm_at(seq, j)]; }

// scratch: per row, its similarities with the slots: R = T token rows, then (prompt granularity)
// each sequence's `chunk` pending rows, so that sequences storing at once never share a row.
uint sim_rows() { return p.T + (p.has_pend != 0 ? p.S * uint(p.chunk) : 0u); }
uint sim_at(uint row, int q) { return row * p.M + uint(q); }

uint state_at(uint seq, uint field) { return seq * p.state_stride + field; }
bool prompt_span(uint seq) { return p.has_snap != 0 && (state[state_at(seq, ST_FLAGS)] & FLAG_PROMPT_SPAN) != 0; }

// Lists the valid slots into s_slots (ascending: each at its rank); returns their count (uniform).
int list_slots(bool from_snap, uint seq) {
    for (uint j = tid(); j < p.M; j += BLOCK) {
        if (valid(from_snap, seq, j) != 0.0) {
            int rank = 0;
            for (uint k = 0; k < j; ++k) {
                rank += valid(from_snap, seq, k) != 0.0 ? 1 : 0;
            }
            s_slots[rank] = int(j);
        }
    }
    if (tid() == 0) {
        int m = 0;
        for (uint j = 0; j < p.M; ++j) {
            m += valid(from_snap, seq, j) != 0.0 ? 1 : 0;
        }
        s_int[0] = m;
    }
    barrier();
    const int m = s_int[0];
    barrier();
    return m;
}

// ---- rows: activations/enhanced rows of token t, or rows of the pending buffer ------------------
const uint SRC_TOKENS = 0;
const uint SRC_PEND   = 1;

uint pend_key_at(uint seq, uint i) { return (seq * 2u * uint(p.chunk) + i) * p.n_ff; }
uint pend_val_at(uint seq, uint i) { return (seq * 2u * uint(p.chunk) + uint(p.chunk) + i) * p.n_ff; }
float row_key(uint src, uint seq, uint r, uint d) { return src == SRC_TOKENS ? a[r * p.a_stride + d] : pend[pend_key_at(seq, r) + d]; }
float row_val(uint src, uint seq, uint r, uint d) { return src == SRC_TOKENS ? dst[r * p.o_stride + d] : pend[pend_val_at(seq, r) + d]; }
uint sim_row(uint src, uint seq, uint r) { return src == SRC_TOKENS ? r : p.T + seq * uint(p.chunk) + r; }

// Cosine of token t's row (clamped norm rn) with the m listed slots, into s_sims[0, m).
void similarities(bool from_snap, uint seq, uint t, float rn, int m) {
    for (int i0 = 0; i0 < m; i0 += NB) {
        const uint nb = uint(min(NB, m - i0));
        float acc[NB];
        [[unroll]] for (uint k = 0; k < NB; ++k) { acc[k] = 0.0; }
        for (uint d = tid(); d < p.n_ff; d += BLOCK) {
            const float x = a[t * p.a_stride + d];
            [[unroll]] for (uint k = 0; k < NB; ++k) {
                if (k < nb) {
                    acc[k] += x * key(from_snap, seq, uint(s_slots[i0 + k]), d);
                }
            }
        }
        [[unroll]] for (uint k = 0; k < NB; ++k) { red[k * BLOCK + tid()] = acc[k]; }
        reduce(nb);
        if (tid() < nb) {
            const uint k = tid(), j = uint(s_slots[i0 + k]);
            s_sims[i0 + k] = red[k * BLOCK] / (rn * knorm(from_snap, seq, j));
        }
        barrier();
    }
}

// Clamped norm of token t's row, and (in s_int[1]) whether the row is finite.
float token_norm(uint t) {
    float sq = 0.0, bad = 0.0;
    for (uint d = tid(); d < p.n_ff; d += BLOCK) {
        const float x = a[t * p.a_stride + d];
        sq += x * x;
        bad += is_finite(x) ? 0.0 : 1.0;
    }
    red[tid()] = sq;
    red[BLOCK + tid()] = bad;
    reduce(2);
    if (tid() == 0) {
        s_float[0] = max(sqrt(red[0]), EPS);
        s_int[1] = red[BLOCK] == 0.0 ? 1 : 0;
    }
    barrier();
    const float rn = s_float[0];
    barrier();
    return rn;
}

// ---- top-k: the r-th pick is the best position strictly after the (r-1)-th in the order -----------
// "p before q": larger (or smaller) similarity first, NaN above every number, then the lower position.
bool before(float sp, float sq, int ip, int iq, bool largest) {
    const bool np = isnan(sp), nq = isnan(sq);
    if (np != nq) {
        return largest ? np : nq;
    }
    if (!np && sp != sq) {
        return largest ? sp > sq : sp < sq;
    }
    return ip < iq;
}

#ifdef AMB_RETRIEVE
// ---- retrieval: one workgroup per token -------------------------------------------------------------

void copy_row(uint t) {
    for (uint d = tid(); d < p.n_ff; d += BLOCK) {
        dst[t * p.o_stride + d] = a[t * p.a_stride + d];
    }
}

// Positions (into s_sims) of the k largest or smallest, in order, into s_order[at, at + k): each
// position goes to its rank in the order.
void pick(int m, int k, bool largest, int at) {
    for (int i = int(tid()); i < m; i += BLOCK) {
        int rank = 0;
        for (int q = 0; q < m; ++q) {
            rank += before(s_sims[q], s_sims[i], q, i, largest) ? 1 : 0;
        }
        if (rank < k) {
            s_order[at + rank] = i;
        }
    }
}

// Thread 0: the case and the enhanced row's coefficients (s_int: 2 case, 3 k, 4 kn; s_float: beta,
// a/k, bb/kn); k = kn = 0 for an identity row.
void decide(int m) {
    bool finite = true;
    float smax = s_sims[0];
    for (int i = 0; i < m; ++i) {
        finite = finite && is_finite(s_sims[i]);
        smax = max(smax, s_sims[i]);
    }
    const int c = !finite ? CASE_LOW : smax > p.theta_high ? CASE_HIGH : smax > p.theta_low ? CASE_MID : CASE_LOW;
    const bool identity = c == CASE_LOW || (p.mode == MODE_CODE && p.alpha == 0.0);
    float beta, wa, wb;
    if (p.mode == MODE_CODE) {
        beta = 1.0 - p.alpha;
        wa   = p.alpha * (c == CASE_HIGH ? p.w_high : p.w_mid);
        wb   = p.alpha * p.lambda;
    } else {
        beta = c == CASE_HIGH ? 0.0 : 1.0 - p.w_mid;
        wa   = c == CASE_HIGH ? p.w_high : p.w_mid;
        wb   = p.lambda;
    }
    const int k = identity ? 0 : min(p.topk, m), kn = identity ? 0 : min(p.negk, m);
    s_int[2] = c;
    s_int[3] = k;
    s_int[4] = kn;
    s_float[1] = beta;
    s_float[2] = k > 0 ? wa / float(k) : 0.0;
    s_float[3] = kn > 0 ? wb / float(kn) : 0.0;
}

// Writes o = beta*x + sum of the picked values, in the CPU kernel's order; returns (uniform) whether
// every element of o is finite.
bool enhance(uint t, uint seq, bool from_snap) {
    const int k = s_int[3], kn = s_int[4];
    const float beta = s_float[1], w = s_float[2], wn = s_float[3];
    float bad = 0.0;
    for (uint d = tid(); d < p.n_ff; d += BLOCK) {
        const float x = a[t * p.a_stride + d];
        float o = x;
        if (k > 0) {
            o = beta * x;
            for (int r = 0; r < k; ++r) {
                o += w * valv(from_snap, seq, uint(s_slots[s_order[r]]), d);
            }
            for (int r = 0; r < kn; ++r) {
                o += wn * valv(from_snap, seq, uint(s_slots[s_order[k + r]]), d);
            }
        }
        dst[t * p.o_stride + d] = o;
        bad += is_finite(o) ? 0.0 : 1.0;
    }
    red[tid()] = bad;
    reduce(1);
    const bool finite = red[0] == 0.0;
    barrier();
    return finite;
}

void write_scratch(uint t, int c, bool storable) {
    if (tid() == 0) {
        scratch[sim_rows() * p.M + t] = float(c);
        scratch[sim_rows() * p.M + p.T + t] = storable ? 1.0 : 0.0;
    }
}

void retrieve(uint t) {
    const int seq_i = tok[2 * t];
    if (seq_i < 0 || seq_i >= int(p.S)) { // a sequence without a bank passes through unchanged
        copy_row(t);
        write_scratch(t, CASE_LOW, false);
        return;
    }
    const uint seq = uint(seq_i);
    const bool from_snap = prompt_span(seq);
    const int m = list_slots(from_snap, seq);
    const float xn = token_norm(t);
    const bool x_finite = s_int[1] != 0;
    if (m == 0 || !x_finite) {
        copy_row(t);
        write_scratch(t, CASE_LOW, x_finite);
        return;
    }
    similarities(from_snap, seq, t, xn, m);
    for (int i = int(tid()); i < m; i += BLOCK) {
        scratch[sim_at(t, i)] = s_sims[i];
    }
    if (tid() == 0) {
        decide(m);
    }
    barrier();
    pick(m, s_int[3], true, 0);
    pick(m, s_int[4], false, s_int[3]);
    barrier();
    const int c = s_int[2];
    const bool o_finite = enhance(t, seq, from_snap);
    write_scratch(t, c, o_finite);
}

void main() {
    for (uint t = gl_WorkGroupID.x; t < p.T; t += gl_NumWorkGroups.x) {
        retrieve(t);
        barrier();
    }
}
#endif

#ifdef AMB_STORE
// ---- store: one workgroup per sequence ------------------------------------------------------------

#define ROW_MASK    0x0fffffff
#define ROW_STORED  (1 << 28)   // the row can be stored
#define ROW_MID     (1 << 29)
#define ROW_LOW     (1 << 30)
#define SLOT_HIGH 1
#define SLOT_MID  2

shared int s_rows[MAX_CHUNK];  // the chunk's rows (token or pend index) with ROW_* flags
shared int s_flags[MAX_M];     // per slot: in the high / mid union
shared int s_low[MAX_M];       // the first M low rows, in order

uint case_at(uint t) { return sim_rows() * p.M + t; }
uint storable_at(uint t) { return sim_rows() * p.M + p.T + t; }

shared int s_count[3];         // tokens per case in this ubatch

int saturating_add(int count, int add) { // a count restored from a state may already be near the top
    return count > 2147483647 - add ? 2147483647 : count + add;
}

// Counters and the case log: each token logs its own position (positions are unique within a
// sequence's ubatch), the counts add up in shared memory.
void log_cases(uint seq) {
    if (tid() < 3) {
        s_count[tid()] = 0;
    }
    barrier();
    for (uint t = tid(); t < p.T; t += BLOCK) {
        if (tok[2 * t] == int(seq)) {
            const int c = int(scratch[case_at(t)]);
            atomicAdd(s_count[c], 1);
            const int pos = tok[2 * t + 1];
            if (pos >= 0 && pos < int(p.n_pos)) {
                state[state_at(seq, STATE_HEADER + uint(pos))] = c + 1;
            }
        }
    }
    barrier();
    if (tid() < 3) { // ST_N_HIGH, ST_N_MID, ST_N_LOW
        const uint counter = state_at(seq, ST_N_HIGH + tid());
        state[counter] = saturating_add(state[counter], s_count[CASE_HIGH - int(tid())]);
    }
    sync();
}

// Classifies row i of the chunk on the mean of its top-ks similarities (sims(q) = similarity with
// listed slot q); marks the unions; returns the row's ROW_* class flag.
#define CLASSIFY(SIM)                                                                          \
    {                                                                                          \
        const int ks = min(p.store_topk, m);                                                   \
        float sum = 0.0;                                                                       \
        int prev = -1;                                                                         \
        for (int r = 0; r < ks; ++r) {                                                         \
            int best = -1;                                                                     \
            for (int q = 0; q < m; ++q) {                                                      \
                const bool after_prev = prev < 0 || before(SIM(prev), SIM(q), prev, q, true);  \
                if (after_prev && (best < 0 || before(SIM(q), SIM(best), q, best, true))) {    \
                    best = q;                                                                  \
                }                                                                              \
            }                                                                                  \
            sum += SIM(best);                                                                  \
            prev = best;                                                                       \
        }                                                                                      \
        const float sbar = sum / float(ks);                                                    \
        const int union_flag = sbar > p.theta_high ? SLOT_HIGH : sbar > p.theta_low ? SLOT_MID : 0; \
        if (union_flag != 0) {                                                                 \
            prev = -1;                                                                         \
            for (int r = 0; r < ks; ++r) {                                                     \
                int best = -1;                                                                 \
                for (int q = 0; q < m; ++q) {                                                  \
                    const bool after_prev = prev < 0 || before(SIM(prev), SIM(q), prev, q, true); \
                    if (after_prev && (best < 0 || before(SIM(q), SIM(best), q, best, true))) { \
                        best = q;                                                              \
                    }                                                                          \
                }                                                                              \
                atomicOr(s_flags[s_slots[best]], union_flag);                                  \
                prev = best;                                                                   \
            }                                                                                  \
        }                                                                                      \
        row_class = union_flag == SLOT_HIGH ? 0 : union_flag == SLOT_MID ? ROW_MID : ROW_LOW;  \
    }

#define SCRATCH_SIM(q) scratch[sim_at(row, q)]

// Similarities of the chunk's stored rows with the m listed slots, into scratch, against the bank as
// it is now: one (row, slot) pair per invocation in turn.
void chunk_similarities(uint src, uint seq, int n, int m) {
    for (int pair = int(tid()); pair < n * m; pair += BLOCK) {
        const int i = pair / m, q = pair % m;
        if ((s_rows[i] & ROW_STORED) != 0) {
            const uint r = uint(s_rows[i] & ROW_MASK), j = uint(s_slots[q]);
            float dot = 0.0, sq = 0.0;
            for (uint d = 0; d < p.n_ff; ++d) {
                const float x = row_key(src, seq, r, d);
                dot += x * bank[key_at(seq, j) + d];
                sq += x * x;
            }
            scratch[sim_at(sim_row(src, seq, r), q)] = dot / (max(sqrt(sq), EPS) * meta[knorm_at(seq, j)]);
        }
    }
    sync();
}

// Classifies the chunk's stored rows from their similarities in scratch (the retrieval's for the
// first chunk of a ubatch, else chunk_similarities'), one row per invocation in turn.
void classify(uint src, uint seq, int n, int m, bool reuse) {
    if (!reuse) {
        chunk_similarities(src, seq, n, m);
    }
    for (int i = int(tid()); i < n; i += BLOCK) {
        if ((s_rows[i] & ROW_STORED) != 0) {
            const uint row = sim_row(src, seq, uint(s_rows[i] & ROW_MASK));
            int row_class;
            CLASSIFY(SCRATCH_SIM)
            s_rows[i] |= row_class;
        }
    }
    sync();
}

// Clamped norms of the listed slots' keys s_order[0, n), then usage/valid: usage = `use` if `set`,
// else usage += `use`.
void finish_slots(uint seq, int n, float use, bool set) {
    for (int i0 = 0; i0 < n; i0 += NB) {
        const uint nb = uint(min(NB, n - i0));
        float acc[NB];
        [[unroll]] for (uint k = 0; k < NB; ++k) { acc[k] = 0.0; }
        for (uint d = tid(); d < p.n_ff; d += BLOCK) {
            [[unroll]] for (uint k = 0; k < NB; ++k) {
                if (k < nb) {
                    const float v = bank[key_at(seq, uint(s_order[i0 + k])) + d];
                    acc[k] += v * v;
                }
            }
        }
        [[unroll]] for (uint k = 0; k < NB; ++k) { red[k * BLOCK + tid()] = acc[k]; }
        reduce(nb);
        if (tid() < nb) {
            const uint k = tid(), j = uint(s_order[i0 + k]);
            meta[knorm_at(seq, j)] = max(sqrt(red[k * BLOCK]), EPS);
            meta[usage_at(seq, j)] = set ? use : meta[usage_at(seq, j)] + use;
            meta[valid_at(seq, j)] = 1.0;
        }
        sync();
    }
}

// Mid rows: merge their mean key and value into every slot of the mid union.
void merge_mid(uint src, uint seq, int n) {
    for (uint j = tid(); j < p.M; j += BLOCK) { // the union's slots, ascending
        if ((s_flags[j] & SLOT_MID) != 0) {
            int rank = 0;
            for (uint k = 0; k < j; ++k) {
                rank += (s_flags[k] & SLOT_MID) != 0 ? 1 : 0;
            }
            s_order[rank] = int(j);
        }
    }
    if (tid() == 0) {
        int n_mid = 0, n_slots = 0;
        for (int i = 0; i < n; ++i) {
            n_mid += (s_rows[i] & ROW_MID) != 0 ? 1 : 0;
        }
        for (uint j = 0; j < p.M; ++j) {
            n_slots += (s_flags[j] & SLOT_MID) != 0 ? 1 : 0;
        }
        s_int[5] = n_mid;
        s_int[6] = n_slots;
    }
    sync();
    const int n_mid = s_int[5], n_slots = s_int[6];
    sync();
    if (n_mid > 0) { // (no early return: lavapipe mishandles them next to barriers)
        const float mom = p.momentum;
        for (uint d = tid(); d < p.n_ff; d += BLOCK) {
            // compensated sums: the CPU sums in double, and a chunk can hold a thousand mid rows
            precise float ks = 0.0, vs = 0.0, kc = 0.0, vc = 0.0;
            for (int i = 0; i < n; ++i) {
                if ((s_rows[i] & ROW_MID) != 0) {
                    const uint r = uint(s_rows[i] & ROW_MASK);
                    precise const float ky = row_key(src, seq, r, d) - kc, kt = ks + ky;
                    kc = (kt - ks) - ky;
                    ks = kt;
                    precise const float vy = row_val(src, seq, r, d) - vc, vt = vs + vy;
                    vc = (vt - vs) - vy;
                    vs = vt;
                }
            }
            const float km = ks / float(n_mid);
            const float vm = p.mode == MODE_CODE ? vs / float(n_mid) : km;
            for (int q = 0; q < n_slots; ++q) {
                const uint j = uint(s_order[q]);
                bank[key_at(seq, j) + d] = mom * bank[key_at(seq, j) + d] + (1.0 - mom) * km;
                bank[val_at(seq, j) + d] = mom * bank[val_at(seq, j) + d] + (1.0 - mom) * vm;
            }
        }
        sync();
        finish_slots(seq, n_slots, p.mode == MODE_CODE ? 1.0 : 0.0, false);
    }
}

// Low rows (`low_flag` marks them): write them to free slots (ascending), then to valid slots by
// ascending usage (ties: lower index); only the first M.
void replace_low(uint src, uint seq, int n, int low_flag) {
    // the replacement order: free slots ascending, then valid ones by usage, ties to the lower index
    for (uint j = tid(); j < p.M; j += BLOCK) {
        const bool free_j = meta[valid_at(seq, j)] == 0.0;
        const float u = meta[usage_at(seq, j)];
        int rank = 0;
        for (uint k = 0; k < p.M; ++k) {
            const bool free_k = meta[valid_at(seq, k)] == 0.0;
            if (free_j) {
                rank += free_k && k < j ? 1 : 0;
            } else {
                const float uk = meta[usage_at(seq, k)];
                rank += free_k || uk < u || (uk == u && k < j) ? 1 : 0;
            }
        }
        s_order[rank] = int(j);
    }
    // s_low[k]: the k-th low row, for k < M; each low row finds its own rank
    if (tid() == 0) {
        s_int[7] = 0;
    }
    sync();
    for (int i = int(tid()); i < n; i += BLOCK) {
        if ((s_rows[i] & low_flag) != 0) {
            int rank = 0;
            for (int k = 0; k < i; ++k) {
                rank += (s_rows[k] & low_flag) != 0 ? 1 : 0;
            }
            if (rank < int(p.M)) {
                s_low[rank] = s_rows[i] & ROW_MASK;
                atomicAdd(s_int[7], 1);
            }
        }
    }
    sync();
    const int n_write = s_int[7];
    sync();
    if (n_write > 0) {
        for (int i = 0; i < n_write; ++i) {
            const uint j = uint(s_order[i]), r = uint(s_low[i]);
            for (uint d = tid(); d < p.n_ff; d += BLOCK) {
                bank[key_at(seq, j) + d] = row_key(src, seq, r, d);
                bank[val_at(seq, j) + d] = row_val(src, seq, r, d);
            }
        }
        sync();
        finish_slots(seq, n_write, 1.0, true);
    }
}

// A chunk against a bank with m valid slots: classify, count high rows' use (paper), merge the
// mid rows, replace with the low ones.
void store_classified(uint src, uint seq, int n, int m, bool reuse) {
    for (uint j = tid(); j < p.M; j += BLOCK) {
        s_flags[j] = 0;
    }
    sync();
    classify(src, seq, n, m, reuse);
    if (p.mode != MODE_CODE) {
        for (uint j = tid(); j < p.M; j += BLOCK) {
            meta[usage_at(seq, j)] += (s_flags[j] & SLOT_HIGH) != 0 ? 1.0 : 0.0;
        }
        sync();
    }
    merge_mid(src, seq, n);
    replace_low(src, seq, n, ROW_LOW);
}

// One store chunk of the n rows in s_rows (ROW_STORED set on those that can be stored).
void store_chunk(uint src, uint seq, int n, bool reuse) {
    const int m = list_slots(false, seq);
    if (m == 0) { // empty bank: the whole chunk is "low"
        replace_low(src, seq, n, ROW_STORED);
    } else {
        store_classified(src, seq, n, m, reuse);
    }
}

// The sequence's rows [first, first + chunk) in token order into s_rows (each token at its rank
// among the sequence's tokens); returns their count (uniform).
int gather_rows(uint seq, int first) {
    for (uint t = tid(); t < p.T; t += BLOCK) {
        if (tok[2 * t] == int(seq)) {
            int rank = 0;
            for (uint u = 0; u < t; ++u) {
                rank += tok[2 * u] == int(seq) ? 1 : 0;
            }
            if (rank >= first && rank < first + p.chunk) {
                s_rows[rank - first] = int(t) | (scratch[storable_at(t)] != 0.0 ? ROW_STORED : 0);
            }
        }
    }
    if (tid() == 0) {
        int total = 0;
        for (uint t = 0; t < p.T; ++t) {
            total += tok[2 * t] == int(seq) ? 1 : 0;
        }
        s_int[2] = clamp(total - first, 0, p.chunk);
    }
    sync();
    const int n = s_int[2];
    sync();
    return n;
}

// Ubatch granularity: the sequence's rows in chunks.
void store_ubatch(uint seq) {
    int first = 0;
    int n = gather_rows(seq, first);
    while (n > 0) {
        store_chunk(SRC_TOKENS, seq, n, first == 0);
        first += p.chunk;
        n = gather_rows(seq, first);
    }
}

// Prompt granularity: append the rows to `pend`, storing each full chunk.
void buffer_rows(uint seq) {
    if (tid() == 0) {
        const int n = state[state_at(seq, ST_N_PENDING)];
        s_int[4] = n < 0 || n >= p.chunk ? 0 : n; // never write outside pend
    }
    sync();
    for (uint t = 0; t < p.T; ++t) {
        if (tok[2 * t] != int(seq)) {
            continue;
        }
        const uint n = uint(s_int[4]);
        for (uint d = tid(); d < p.n_ff; d += BLOCK) {
            pend[pend_key_at(seq, n) + d] = a[t * p.a_stride + d];
            pend[pend_val_at(seq, n) + d] = dst[t * p.o_stride + d];
        }
        sync();
        if (int(n) + 1 == p.chunk) {
            for (int i = int(tid()); i < p.chunk; i += BLOCK) { // rows with a non-finite key or value are never stored
                bool finite = true;
                for (uint d = 0; d < p.n_ff; ++d) {
                    finite = finite && is_finite(row_key(SRC_PEND, seq, uint(i), d)) && is_finite(row_val(SRC_PEND, seq, uint(i), d));
                }
                s_rows[i] = i | (finite ? ROW_STORED : 0);
            }
            sync();
            store_chunk(SRC_PEND, seq, p.chunk, false);
        }
        if (tid() == 0) {
            s_int[4] = int(n) + 1 == p.chunk ? 0 : int(n) + 1;
        }
        sync();
    }
    if (tid() == 0) {
        state[state_at(seq, ST_N_PENDING)] = s_int[4];
    }
}

void main() {
    for (uint seq = gl_WorkGroupID.x; seq < p.S; seq += gl_NumWorkGroups.x) {
        log_cases(seq);
        sync();
        if (prompt_span(seq) && p.has_pend != 0) {
            buffer_rows(seq);
        } else {
            store_ubatch(seq);
        }
        sync();
    }
}
#endif
