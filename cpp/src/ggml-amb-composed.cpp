// pace-gguf: GGML_OP_AMB composed from standard ggml ops (see ggml-amb-composed.h and BACKENDS.md).
//
// Masks stand in for branches: a row's case is two 0/1 flags (mid-or-high, high), its bank a one-hot
// row over the sequences, and every rule of pace-amb-math.h becomes arithmetic on those flags, exact
// where the fused op is exact (a 0/1 flag times a finite number). The store rewrites only the slots
// that change (top_k of a change mask); the rest of the bank is never touched.
#include "ggml-amb-composed.h"

#include "ggml-backend.h"
#include "pace-amb-layout.h"

#include <algorithm>
#include <cfloat>
#include <cmath>

using namespace pace_amb;

namespace pace_amb_composed {

namespace {

constexpr float BIG       = 1e4f;          // pushes free slots out of every top-k (similarities are in [-1, 1])
constexpr float COUNT_MAX = 2147483520.0f; // the largest float below 2^31: counters stay valid int32

// Where a step reads a bank: keys and values [n_ff, M, S]; usage, valid flags and key norms [M, S].
// The live bank's start as views of its tensors; after a store chunk they are that chunk's writes, so
// that the next chunk reads the bank as the chunk before left it (a data dependency, not an order).
struct bank_reads {
    ggml_tensor * keys, * vals, * usage, * valid, * knorm;
};

// How rows see a bank: what the retrieval decides on and the store classifies with.
struct seen {
    ggml_tensor * sims;     // [M, R] cosines with the row's own sequence's keys
    ggml_tensor * s_top;    // [M, R] the same with free slots pushed to -BIG
    ggml_tensor * penalty;  // [M, R] 0 for valid slots, -BIG for free ones
    ggml_tensor * valid_r;  // [M, R] the row's bank's valid flags
    ggml_tensor * has_bank; // [1, R] the row's bank has a valid slot
    ggml_tensor * x_ok;     // [1, R] the row is finite
    ggml_tensor * sims_ok;  // [1, R] its similarities are finite
};

struct builder {
    ggml_context *       ctx;
    const bank_tensors & b;
    const row_inputs &   in;
    ggml_amb_params      hp;
    int64_t              n_ff, M, S;
    int64_t              T;        // rows of the step
    ggml_tensor *        onehot;   // [T, S]: the rows' sequences (the ubatch's, or a store chunk's mask)
    ggml_tensor *        onehot_t; // [S, T]

    // The same builder over other rows, e.g. one store chunk's (a mask over the rows).
    builder with_rows(ggml_tensor * rows_onehot) const {
        builder r = *this;
        r.T = rows_onehot->ne[0];
        r.onehot = rows_onehot;
        r.onehot_t = cont_t(rows_onehot);
        return r;
    }

    // ---- small helpers -------------------------------------------------------------------------

    ggml_tensor * cont_t(ggml_tensor * t) const { return ggml_cont(ctx, ggml_transpose(ctx, t)); }
    ggml_tensor * one_minus(ggml_tensor * t) const { return ggml_scale_bias(ctx, t, -1.0f, 1.0f); }
    // t > theta ? 1 : 0 (strict, as the fused op; NaN gives 0)
    ggml_tensor * above(ggml_tensor * t, float theta) const { return ggml_step(ctx, ggml_scale_bias(ctx, t, 1.0f, -theta)); }
    // 1 where the row [n, T] is all finite, else 0: x*0 is 0, or NaN for inf and NaN
    ggml_tensor * finite_rows(ggml_tensor * t) const {
        return ggml_step(ctx, ggml_scale_bias(ctx, ggml_sum_rows(ctx, ggml_scale(ctx, t, 0.0f)), 1.0f, 1.0f));
    }
    ggml_tensor * column(ggml_tensor * row) const { return ggml_reshape_2d(ctx, row, row->ne[1], 1); } // [1, n] -> [n, 1]
    // c_mid * mid + c_high * high (+ c_low * low): exactly one flag is 1, so the result is exact
    ggml_tensor * by_case(ggml_tensor * low, ggml_tensor * mid, ggml_tensor * high, float c_low, float c_mid, float c_high) const {
        ggml_tensor * r = ggml_add(ctx, ggml_scale(ctx, mid, c_mid), ggml_scale(ctx, high, c_high));
        return c_low == 0.0f ? r : ggml_add(ctx, r, ggml_scale(ctx, low, c_low));
    }
    // values of s [M, T] at idx [k, T] -> [k, T]
    ggml_tensor * gather(ggml_tensor * s, ggml_tensor * idx) const {
        const int64_t k = idx->ne[0];
        return ggml_reshape_2d(ctx, ggml_get_rows(ctx, ggml_reshape_3d(ctx, s, 1, M, T), idx), k, T);
    }
    // sum_i w[i, t] * onehot(idx[i, t]) -> [M, T]
    ggml_tensor * scatter(ggml_tensor * idx, ggml_tensor * w) const {
        const int64_t k = idx->ne[0];
        ggml_tensor * slots = ggml_get_rows(ctx, b.ident, ggml_reshape_1d(ctx, idx, k * T)); // [M, k*T]
        slots = ggml_mul(ctx, ggml_reshape_3d(ctx, slots, M, k, T), ggml_reshape_3d(ctx, w, 1, k, T));
        ggml_tensor * p = ggml_cont(ctx, ggml_permute(ctx, slots, 1, 0, 2, 3)); // [k, M, T]
        return ggml_reshape_2d(ctx, ggml_sum_rows(ctx, p), M, T);
    }
    // per sequence: sum over the rows of m [M, T] -> [M, S] (m's rows are in their own sequence's bank)
    ggml_tensor * per_seq(ggml_tensor * m) const { return ggml_mul_mat(ctx, cont_t(m), onehot); }
    // a per-sequence [n, S] quantity, each row's own sequence's -> [n, T]
    ggml_tensor * per_row(ggml_tensor * q) const { return ggml_mul_mat(ctx, cont_t(q), onehot_t); }
    ggml_tensor * seq_col(int64_t s) const { // [1, T]: which rows are in sequence s
        return ggml_view_2d(ctx, onehot, 1, T, sizeof(float), s * onehot->nb[1]);
    }

    // ---- views of the persistent tensors ------------------------------------------------------

    bank_reads reads_of(ggml_tensor * bank, ggml_tensor * meta) const {
        auto part = [&](int i) { return ggml_view_2d(ctx, meta, M, S, meta->nb[1], i * M * sizeof(float)); };
        return {ggml_view_3d(ctx, bank, n_ff, M, S, bank->nb[1], bank->nb[2], 0),
                ggml_view_3d(ctx, bank, n_ff, M, S, bank->nb[1], bank->nb[2], M * bank->nb[1]), part(0), part(1), part(2)};
    }
    ggml_tensor * seq_rows(ggml_tensor * rows3, int64_t s) const { // one sequence's keys or values [n_ff, M]
        return ggml_view_2d(ctx, rows3, n_ff, M, rows3->nb[1], s * rows3->nb[2]);
    }

    // ---- retrieval ------------------------------------------------------------------------------

    // cosines of the rows with their own sequence's keys [M, T]
    ggml_tensor * similarities(ggml_tensor * x, const bank_reads & r) const {
        ggml_tensor * xn = ggml_l2_norm(ctx, x, EPS);
        ggml_tensor * knorm = ggml_clamp(ctx, r.knorm, EPS, INFINITY); // free slots: 0 -> EPS
        ggml_tensor * sims = nullptr;
        for (int64_t s = 0; s < S; ++s) {
            ggml_tensor * d = ggml_div(ctx, ggml_mul_mat(ctx, seq_rows(r.keys, s), xn),
                                       ggml_view_2d(ctx, knorm, M, 1, knorm->nb[1], s * knorm->nb[1]));
            if (S > 1) {
                d = ggml_mul(ctx, d, seq_col(s));
            }
            sims = sims ? ggml_add(ctx, sims, d) : d;
        }
        return sims;
    }

    seen look(ggml_tensor * x, const bank_reads & r) const {
        seen v;
        v.sims = similarities(x, r);
        v.valid_r = per_row(r.valid);
        v.has_bank = ggml_step(ctx, ggml_sum_rows(ctx, v.valid_r)); // m > 0
        v.x_ok = finite_rows(x);
        v.sims_ok = finite_rows(v.sims);
        v.penalty = ggml_scale_bias(ctx, v.valid_r, BIG, -BIG);
        v.s_top = ggml_add(ctx, v.sims, v.penalty);
        return v;
    }

    // sum_i w[i, t] V[idx[i, t]] of each row's own bank -> [n_ff, T]; bank: the tensor r is read from
    ggml_tensor * weighted_values(ggml_tensor * idx, ggml_tensor * w, const bank_reads & r, ggml_tensor * bank) const {
        const int64_t k = idx->ne[0];
        if (T * k <= M) { // few rows: gather their neighbours' values from the bank seen as [n_ff, 2M*S]
            ggml_tensor * bank2d = ggml_view_2d(ctx, bank, n_ff, 2 * M * S, bank->nb[1], 0);
            ggml_tensor * at = ggml_cast(ctx, ggml_add(ctx, ggml_cast(ctx, idx, GGML_TYPE_F32), in.value_row), GGML_TYPE_I32);
            ggml_tensor * sel = ggml_get_rows(ctx, bank2d, ggml_reshape_1d(ctx, at, k * T)); // [n_ff, k*T]
            sel = ggml_cont(ctx, ggml_permute(ctx, ggml_reshape_3d(ctx, sel, n_ff, k, T), 1, 0, 2, 3)); // [k, n_ff, T]
            return ggml_reshape_2d(ctx, ggml_mul_mat(ctx, sel, ggml_reshape_3d(ctx, w, k, 1, T)), n_ff, T);
        }
        // many rows: a coefficient matrix [M, T] times each sequence's transposed values
        ggml_tensor * coef = scatter(idx, w);
        ggml_tensor * sum = nullptr;
        for (int64_t s = 0; s < S; ++s) {
            ggml_tensor * c = S > 1 ? ggml_mul(ctx, coef, seq_col(s)) : coef;
            ggml_tensor * part = ggml_mul_mat(ctx, cont_t(seq_rows(r.vals, s)), c);
            sum = sum ? ggml_add(ctx, sum, part) : part;
        }
        return sum;
    }

    // ---- the whole op ---------------------------------------------------------------------------

    graph run(ggml_tensor * x, bool span) {
        const int k = std::min<int>(hp.topk, (int) M), kn = std::min<int>(hp.negk, (int) M), ks = std::min<int>(hp.store_topk, (int) M);
        // in a prompt span every ubatch retrieves against the snapshot the host took before the prompt
        ggml_tensor * bank_seen = span ? b.snap : b.bank;
        const bank_reads live = reads_of(b.bank, b.meta), r = span ? reads_of(b.snap, b.snap_meta) : live;

        // retrieval: the case from the largest similarity among the row's valid slots
        const seen v = look(x, r);
        ggml_tensor * gate = ggml_mul(ctx, ggml_mul(ctx, v.x_ok, v.sims_ok), v.has_bank); // else the fused op says low
        ggml_tensor * smax = gather(v.s_top, ggml_reshape_2d(ctx, ggml_argmax(ctx, v.s_top), 1, T));
        ggml_tensor * mh = ggml_mul(ctx, above(smax, hp.theta_low), gate);       // mid or high
        ggml_tensor * hi = ggml_mul(ctx, above(smax, hp.theta_high), gate);
        ggml_tensor * mid = ggml_sub(ctx, mh, hi), * low = one_minus(mh);

        // o = beta x + a/k sum of the top-k values + bb/kn sum of the bottom-kn values (weights_of)
        const enhance_weights wm = weights_of(hp, CASE_MID), wh = weights_of(hp, CASE_HIGH);
        ggml_tensor * beta = by_case(low, mid, hi, 1.0f, wm.beta, wh.beta);
        ggml_tensor * top = ggml_top_k(ctx, v.s_top, k);                         // i32 [k, T]
        ggml_tensor * v_top = gather(v.valid_r, top);
        ggml_tensor * w_top = ggml_mul(ctx, v_top, ggml_div(ctx, by_case(low, mid, hi, 0.0f, wm.a, wh.a),
                                                            ggml_clamp(ctx, ggml_sum_rows(ctx, v_top), 1.0f, INFINITY)));
        ggml_tensor * idx = top, * w = w_top;
        if (kn > 0) {
            ggml_tensor * bottom = ggml_top_k(ctx, ggml_add(ctx, ggml_neg(ctx, v.sims), v.penalty), kn);
            ggml_tensor * v_bot = gather(v.valid_r, bottom);
            ggml_tensor * w_bot = ggml_mul(ctx, v_bot, ggml_div(ctx, by_case(low, mid, hi, 0.0f, wm.bb, wh.bb),
                                                                ggml_clamp(ctx, ggml_sum_rows(ctx, v_bot), 1.0f, INFINITY)));
            idx = ggml_concat(ctx, top, bottom, 0);
            w = ggml_concat(ctx, w_top, w_bot, 0);
        }
        ggml_tensor * out = ggml_add(ctx, ggml_mul(ctx, x, beta), weighted_values(idx, w, r, bank_seen));
        ggml_tensor * cases = ggml_add(ctx, mh, hi);

        graph g{out, cases, {}};
        if (span) { // the store reads the live bank, not the snapshot the retrieval saw
            store_pending(g, x, out, live);
        } else {
            // The first store chunk classifies with the retrieval's similarities (same rows, same bank),
            // as the fused op does; that also puts every write after the retrieval's reads of the bank.
            ggml_tensor * top_s = ks == k ? top : ggml_top_k(ctx, v.s_top, ks);
            if (T <= hp.chunk) {
                store(g, x, out, v, top_s, live);
            } else {
                store_chunks(g, x, out, v, top_s, live);
            }
        }
        log_cases(g, low, mid, hi, cases);
        return g;
    }

    // [1, R]: 1 where lo <= pos < hi (positions are integers in f32)
    ggml_tensor * within(ggml_tensor * pos, float lo, float hi) const {
        return ggml_mul(ctx, above(pos, lo - 0.5f), ggml_step(ctx, ggml_scale_bias(ctx, pos, -1.0f, hi - 0.5f)));
    }

    // Ubatch granularity, more rows than a chunk: each sequence's rows in chunks of hp.chunk, in row
    // order, each stored against the bank the chunk before left (the fused op's store_seq).
    void store_chunks(graph & g, ggml_tensor * x, ggml_tensor * out, const seen & first, ggml_tensor * first_top, bank_reads live) {
        const int64_t C = hp.chunk, n_chunks = (T + C - 1) / C;
        const int ks = (int) first_top->ne[0];
        for (int64_t c = 0; c < n_chunks; ++c) {
            const builder chunk = with_rows(ggml_mul(ctx, onehot, column(within(in.ordinal, (float) (c * C), (float) ((c + 1) * C)))));
            if (c == 0) {
                live = chunk.store(g, x, out, first, first_top, live);
            } else {
                const seen v = chunk.look(x, live);
                live = chunk.store(g, x, out, v, ggml_top_k(ctx, v.s_top, ks), live);
            }
        }
    }

    // Prompt granularity, a span open: each sequence's rows join its pending rows (`pend`, and its
    // count in `state`); every full chunk among them is stored into the live bank, the rest stays in
    // pend for the next ubatch or the host's flush at the end of the decode (the fused op's buffer_rows).
    void store_pending(graph & g, ggml_tensor * x, ggml_tensor * out, bank_reads live) {
        const int64_t C = hp.chunk, P = C * S; // P: pend's rows of keys (and of values)
        const int ks = std::min<int>(hp.store_topk, (int) M);
        ggml_tensor * count = ggml_view_2d(ctx, b.state, 1, S, b.state->nb[1], ST_N_PENDING * sizeof(int32_t));
        // a count outside [0, C) would index outside pend; the fused op restarts from 0 (the host
        // checks every state it loads, so this is a guard, not a path)
        ggml_tensor * pending = ggml_cast(ctx, count, GGML_TYPE_F32);
        pending = ggml_mul(ctx, pending, within(pending, 0.0f, (float) C)); // [1, S]

        // every row that may be stored: the pending ones (each sequence's C slots), then the ubatch's
        auto pend_part = [&](int64_t first) { // keys (0) or values (C) of every sequence -> [n_ff, P]
            ggml_tensor * v3 = ggml_view_3d(ctx, b.pend, n_ff, C, S, b.pend->nb[1], b.pend->nb[2], first * b.pend->nb[1]);
            return ggml_reshape_2d(ctx, ggml_cont(ctx, v3), n_ff, P);
        };
        ggml_tensor * X = ggml_concat(ctx, pend_part(0), x, 1), * O = ggml_concat(ctx, pend_part(C), out, 1);
        ggml_tensor * pend_live = above(ggml_sub(ctx, ggml_mul_mat(ctx, cont_t(pending), cont_t(b.pend_seq)), b.pend_at), 0.5f);
        ggml_tensor * member = ggml_concat(ctx, ggml_mul(ctx, b.pend_seq, column(pend_live)), onehot, 0); // [P + T, S]
        ggml_tensor * at = ggml_add(ctx, per_row(pending), in.ordinal);                  // a new row's place in its chunks
        ggml_tensor * place = ggml_concat(ctx, b.pend_at, at, 1);                        // [1, P + T]
        ggml_tensor * end = ggml_add(ctx, pending, ggml_sum_rows(ctx, onehot));          // [1, S]: rows in all

        ggml_tensor * n_full = nullptr;                                                  // [1, S]: chunks stored
        for (int64_t c = 0; c < (C - 1 + T) / C; ++c) {
            ggml_tensor * full = above(end, (float) ((c + 1) * C) - 0.5f);
            ggml_tensor * mask = ggml_mul(ctx, ggml_mul(ctx, member, column(within(place, (float) (c * C), (float) ((c + 1) * C)))), full);
            const builder chunk = with_rows(mask);
            const seen v = chunk.look(X, live);
            live = chunk.store(g, X, O, v, ggml_top_k(ctx, v.s_top, ks), live);
            n_full = n_full ? ggml_add(ctx, n_full, full) : full;
        }

        // what stays pending: each sequence's rows after its last full chunk, moved to the front of its
        // part of pend. The rows that went into a chunk (and rows of no sequence) are written to slot
        // C - 1, which no pending row holds (fewer than C rows stay): set_rows writes every row it gets.
        ggml_tensor * stored = ggml_scale(ctx, n_full, (float) C);
        g.writes.push_back(ggml_cpy(ctx, ggml_sub(ctx, end, stored), count));
        ggml_tensor * d = ggml_sub(ctx, at, per_row(stored));                            // [1, T]
        ggml_tensor * keep = ggml_mul(ctx, ggml_step(ctx, ggml_scale_bias(ctx, d, 1.0f, 0.5f)), ggml_sum_rows(ctx, onehot_t));
        ggml_tensor * slot = ggml_add(ctx, ggml_mul(ctx, keep, d), ggml_scale_bias(ctx, keep, -(float) (C - 1), (float) (C - 1)));
        slot = ggml_clamp(ctx, slot, 0.0f, (float) (C - 1)); // in [0, C) by construction; an index is never trusted
        ggml_tensor * key_row = ggml_add(ctx, in.pend_row, slot);
        ggml_tensor * pend2d = ggml_view_2d(ctx, b.pend, n_ff, 2 * P, b.pend->nb[1], 0);
        auto new_rows = [&](ggml_tensor * all) { return ggml_view_2d(ctx, all, n_ff, T, all->nb[1], P * all->nb[1]); }; // from the concat: after its read of pend
        auto rows_at = [&](ggml_tensor * r) { return ggml_reshape_1d(ctx, ggml_cast(ctx, r, GGML_TYPE_I32), T); };
        g.writes.push_back(ggml_set_rows(ctx, pend2d, new_rows(X), rows_at(key_row)));
        g.writes.push_back(ggml_set_rows(ctx, pend2d, new_rows(O), rows_at(ggml_scale_bias(ctx, key_row, 1.0f, (float) C))));
    }

    // One store chunk (this builder's rows: those of the chunk, each in its sequence): classify each
    // row on the mean of its top-ks similarities, merge the mid rows into the union of their top-ks
    // slots, replace the least used slots with the low rows. Returns the bank as the chunk leaves it.
    bank_reads store(graph & g, ggml_tensor * x, ggml_tensor * out, const seen & v, ggml_tensor * top_s, const bank_reads & r) const {
        ggml_tensor * v_s = gather(v.valid_r, top_s);
        ggml_tensor * sbar = ggml_div(ctx, ggml_sum_rows(ctx, ggml_mul(ctx, gather(v.s_top, top_s), v_s)),
                                      ggml_clamp(ctx, ggml_sum_rows(ctx, v_s), 1.0f, INFINITY));
        ggml_tensor * classified = ggml_mul(ctx, v.has_bank, v.sims_ok); // empty bank or overflowing sims: low
        ggml_tensor * s_mh = ggml_mul(ctx, above(sbar, hp.theta_low), classified);
        ggml_tensor * s_hi = ggml_mul(ctx, above(sbar, hp.theta_high), classified);
        ggml_tensor * s_mid = ggml_mul(ctx, ggml_sub(ctx, s_mh, s_hi), v.x_ok);
        ggml_tensor * s_low = ggml_mul(ctx, one_minus(s_mh), v.x_ok);          // non-finite rows: never stored

        // Rows as the store's matrix products read them: a non-finite row has weight 0 everywhere,
        // and stands in as +-FLT_MAX so that 0 * row stays 0.
        ggml_tensor * x_rows = cont_t(ggml_clamp(ctx, x, -FLT_MAX, FLT_MAX)); // [T, n_ff]
        ggml_tensor * o_rows = cont_t(ggml_clamp(ctx, out, -FLT_MAX, FLT_MAX));

        // merge: every slot in some mid row's top-ks moves toward the mean mid key and value
        ggml_tensor * mid_w = ggml_mul(ctx, onehot, column(s_mid)); // [T, S]
        ggml_tensor * n_mid = ggml_clamp(ctx, ggml_sum_rows(ctx, mid_w), 1.0f, INFINITY);
        ggml_tensor * kbar = ggml_div(ctx, ggml_mul_mat(ctx, x_rows, mid_w), n_mid); // [n_ff, S]
        ggml_tensor * vbar = hp.mode == MODE_CODE ? ggml_div(ctx, ggml_mul_mat(ctx, o_rows, mid_w), n_mid) : kbar;
        ggml_tensor * merged = ggml_step(ctx, per_seq(scatter(top_s, ggml_mul(ctx, v_s, s_mid)))); // [M, S]
        ggml_tensor * used = hp.mode == MODE_CODE ? merged : ggml_step(ctx, per_seq(scatter(top_s, ggml_mul(ctx, v_s, s_hi))));
        ggml_tensor * u1 = ggml_add(ctx, r.usage, used);
        ggml_tensor * v1 = ggml_sub(ctx, ggml_add(ctx, r.valid, merged), ggml_mul(ctx, r.valid, merged));

        // replacement: the i-th low row of a sequence (row order) goes to the i-th slot of its bank in
        // [free slots ascending, then valid ones by usage, then index]; rows beyond M are dropped
        ggml_tensor * low_w = ggml_mul(ctx, onehot, column(s_low));                     // [T, S]
        ggml_tensor * rank = ggml_scale_bias(ctx, ggml_sum_rows(ctx, cont_t(ggml_mul(ctx, ggml_cumsum(ctx, low_w), low_w))), 1.0f, -1.0f);
        ggml_tensor * is_low = ggml_sum_rows(ctx, cont_t(low_w));                     // [1, T]
        ggml_tensor * iota = ggml_reshape_2d(ctx, b.iota, M, 1);
        ggml_tensor * key = ggml_add(ctx, ggml_mul(ctx, v1, ggml_scale_bias(ctx, u1, (float) M, (float) M)), iota);
        ggml_tensor * order = ggml_argsort(ctx, key, GGML_SORT_ORDER_ASC);             // [M, S]: rank -> slot
        ggml_tensor * slot_rank = ggml_cast(ctx, ggml_argsort(ctx, ggml_cast(ctx, order, GGML_TYPE_F32), GGML_SORT_ORDER_ASC), GGML_TYPE_F32);
        ggml_tensor * diff = ggml_sub(ctx, per_row(slot_rank), rank);                 // [M, T]
        ggml_tensor * takes = ggml_mul(ctx, one_minus(ggml_add(ctx, ggml_step(ctx, diff), ggml_step(ctx, ggml_neg(ctx, diff)))), is_low);
        ggml_tensor * takes_t = cont_t(takes);                                        // [T, M]: row -> slot
        ggml_tensor * written = ggml_mul_mat(ctx, takes_t, onehot);                   // [M, S]
        ggml_tensor * u2 = ggml_add(ctx, ggml_mul(ctx, u1, one_minus(written)), written);
        ggml_tensor * v2 = ggml_sub(ctx, ggml_add(ctx, v1, written), ggml_mul(ctx, v1, written));

        // only the slots that change are computed and written: at most ks*T merged and T replaced per
        // sequence (top_k of the change mask: distinct slots; unchanged ones among them keep their rows)
        const int ks = (int) top_s->ne[0];
        const int64_t n_changed = std::min<int64_t>(M, (int64_t) ks * T + T);
        ggml_tensor * changed = ggml_top_k(ctx, ggml_add(ctx, merged, written), (int) n_changed); // i32 [R, S]
        auto at_changed = [&](ggml_tensor * m) { return ggml_get_rows(ctx, ggml_reshape_3d(ctx, m, 1, M, S), changed); }; // [1, R, S]
        ggml_tensor * pull = at_changed(merged), * keep = one_minus(at_changed(written));
        ggml_tensor * takes3 = S == 1 ? ggml_reshape_3d(ctx, takes_t, T, M, 1)
                                      : ggml_mul(ctx, ggml_repeat_4d(ctx, takes_t, T, M, S, 1), ggml_reshape_3d(ctx, onehot, T, 1, S));
        ggml_tensor * row_of = ggml_get_rows(ctx, takes3, changed);                     // [T, R, S]
        const float mom = hp.momentum;
        auto updated = [&](ggml_tensor * rows, ggml_tensor * mean, ggml_tensor * new_rows) {
            ggml_tensor * old = ggml_get_rows(ctx, rows, changed);                     // [n_ff, R, S]
            ggml_tensor * pulled = ggml_add(ctx, ggml_scale(ctx, old, mom), ggml_scale(ctx, ggml_reshape_3d(ctx, mean, n_ff, 1, S), 1.0f - mom));
            ggml_tensor * m = ggml_add(ctx, ggml_mul(ctx, pulled, pull), ggml_mul(ctx, old, one_minus(pull)));
            return ggml_add(ctx, ggml_mul(ctx, m, keep), ggml_mul_mat(ctx, new_rows, row_of));
        };
        ggml_tensor * k2 = updated(r.keys, kbar, x_rows);
        ggml_tensor * v2rows = updated(r.vals, vbar, o_rows);
        ggml_tensor * kn2 = ggml_clamp(ctx, ggml_sqrt(ctx, ggml_sum_rows(ctx, ggml_sqr(ctx, k2))), EPS, INFINITY); // [1, R, S]
        ggml_tensor * knorm3 = ggml_view_3d(ctx, r.knorm, 1, M, S, sizeof(float), r.knorm->nb[1], 0);
        bank_reads after;
        after.keys = ggml_set_rows(ctx, r.keys, k2, changed);
        after.vals = ggml_set_rows(ctx, r.vals, v2rows, changed);
        ggml_tensor * knorm_w = ggml_set_rows(ctx, knorm3, kn2, changed);
        after.knorm = ggml_view_2d(ctx, knorm_w, M, S, knorm_w->nb[2], 0);
        after.usage = ggml_cpy(ctx, u2, r.usage);
        after.valid = ggml_cpy(ctx, v2, r.valid);
        for (ggml_tensor * w : {after.keys, after.vals, knorm_w, after.usage, after.valid}) {
            g.writes.push_back(w);
        }
        return after;
    }

    // Counters (high, mid, low per sequence) and the case log per position, in `state` (i32) through f32.
    void log_cases(graph & g, ggml_tensor * low, ggml_tensor * mid, ggml_tensor * hi, ggml_tensor * cases) const {
        static_assert(ST_N_MID == ST_N_HIGH + 1 && ST_N_LOW == ST_N_HIGH + 2, "counters: high, mid, low in a row");
        ggml_tensor * st = b.state;
        ggml_tensor * counters = ggml_view_2d(ctx, st, 3, S, st->nb[1], ST_N_HIGH * sizeof(int32_t));
        ggml_tensor * by_case_t = ggml_concat(ctx, ggml_concat(ctx, column(hi), column(mid), 1), column(low), 1); // [T, 3]
        ggml_tensor * counts = ggml_add(ctx, ggml_cast(ctx, counters, GGML_TYPE_F32), ggml_mul_mat(ctx, by_case_t, onehot));
        g.writes.push_back(ggml_cpy(ctx, ggml_clamp(ctx, counts, 0.0f, COUNT_MAX), counters));

        const int64_t n_pos = st->ne[0] - GGML_AMB_STATE_HEADER;
        ggml_tensor * log = ggml_view_2d(ctx, st, n_pos, S, st->nb[1], GGML_AMB_STATE_HEADER * sizeof(int32_t));
        ggml_tensor * entries = ggml_reshape_2d(ctx, ggml_cast(ctx, log, GGML_TYPE_F32), 1, n_pos * S);
        ggml_tensor * old = ggml_get_rows(ctx, entries, in.log_entry); // [1, T]
        ggml_tensor * now = ggml_add(ctx, old, ggml_mul(ctx, in.log_keep, ggml_sub(ctx, ggml_scale_bias(ctx, cases, 1.0f, 1.0f), old)));
        ggml_tensor * logged = ggml_set_rows(ctx, entries, ggml_reshape_2d(ctx, now, 1, T), in.log_entry);
        g.writes.push_back(ggml_cpy(ctx, ggml_reshape_2d(ctx, logged, n_pos, S), log));
    }
};

int64_t bank_size(const bank_tensors & b) { return b.bank->ne[1] / 2; }

} // namespace

bool covers(const ggml_amb_params & hp, bool prompt_granularity, int64_t n_tokens, int64_t n_seq) {
    const int64_t C = hp.chunk;
    if (C < 1 || n_tokens < 1 || n_seq < 1) {
        return false;
    }
    // a span's ubatch fills at most (C - 1 + T) / C chunks; outside a span, T / C rounded up
    const int64_t n_chunks = (C - 1 + n_tokens) / C;
    const int64_t rows     = prompt_granularity ? C * n_seq + n_tokens : n_tokens;
    return n_chunks <= MAX_CHUNKS && rows <= MAX_STORE_ROWS;
}

bool computes(const ggml_tensor * node) {
    switch (node->op) {
        case GGML_OP_NONE: case GGML_OP_VIEW: case GGML_OP_RESHAPE: case GGML_OP_PERMUTE: case GGML_OP_TRANSPOSE:
            return false;
        default:
            return true;
    }
}

bank_tensors new_constants(ggml_context * ctx, ggml_tensor * bank, ggml_tensor * meta, ggml_tensor * state,
                           ggml_tensor * snap, ggml_tensor * snap_meta, ggml_tensor * pend) {
    const int64_t M = bank->ne[1] / 2, S = bank->ne[2];
    bank_tensors b{bank, meta, state, snap, snap_meta, pend, ggml_new_tensor_2d(ctx, GGML_TYPE_F32, M, M),
                   ggml_new_tensor_1d(ctx, GGML_TYPE_F32, M), nullptr, nullptr};
    if (pend) {
        const int64_t C = pend->ne[1] / 2;
        b.pend_seq = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, C * S, S);
        b.pend_at  = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 1, C * S);
    }
    return b;
}

void set_constants(const bank_tensors & b) {
    const int64_t M = bank_size(b);
    std::vector<float> ident(M * M, 0.0f), iota(M);
    for (int64_t j = 0; j < M; ++j) {
        ident[j * M + j] = 1.0f;
        iota[j] = (float) j;
    }
    ggml_backend_tensor_set(b.ident, ident.data(), 0, ggml_nbytes(b.ident));
    ggml_backend_tensor_set(b.iota, iota.data(), 0, ggml_nbytes(b.iota));
    if (b.pend) {
        const int64_t C = b.pend->ne[1] / 2, S = b.pend->ne[2];
        std::vector<float> seq(C * S * S, 0.0f), at(C * S);
        for (int64_t s = 0; s < S; ++s) {
            for (int64_t j = 0; j < C; ++j) {
                seq[s * C * S + s * C + j] = 1.0f;
                at[s * C + j] = (float) j;
            }
        }
        ggml_backend_tensor_set(b.pend_seq, seq.data(), 0, ggml_nbytes(b.pend_seq));
        ggml_backend_tensor_set(b.pend_at, at.data(), 0, ggml_nbytes(b.pend_at));
    }
}

row_inputs new_row_inputs(ggml_context * ctx, int64_t n_rows, int64_t n_seq) {
    row_inputs in{ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n_rows, n_seq), ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 1, n_rows),
                  ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n_rows), ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 1, n_rows),
                  ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 1, n_rows), ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 1, n_rows)};
    for (ggml_tensor * t : {in.seq_onehot, in.value_row, in.log_entry, in.log_keep, in.ordinal, in.pend_row}) {
        ggml_set_input(t);
    }
    return in;
}

void set_rows_of(const row_inputs & in, const bank_tensors & b, const std::vector<int32_t> & rows) {
    const int64_t T = in.seq_onehot->ne[0], S = in.seq_onehot->ne[1], M = bank_size(b);
    const int64_t n_pos = b.state->ne[0] - GGML_AMB_STATE_HEADER;
    GGML_ASSERT((int64_t) rows.size() == 2 * T);
    const int64_t C = b.pend ? b.pend->ne[1] / 2 : 0;
    std::vector<float> onehot(T * S, 0.0f), value_row(T, 0.0f), keep(T, 0.0f), ordinal(T, 0.0f), pend_row(T, 0.0f);
    std::vector<int32_t> entry(T, -1);
    std::vector<int64_t> seen_of_seq(S, 0);
    for (int64_t t = 0; t < T; ++t) {
        const int32_t s = rows[2 * t], pos = rows[2 * t + 1];
        if (s < 0 || s >= S) {
            continue; // no bank: passes through, not counted, not logged
        }
        onehot[s * T + t] = 1.0f;
        value_row[t] = (float) (s * 2 * M + M);
        ordinal[t] = (float) seen_of_seq[s]++;
        pend_row[t] = (float) (s * 2 * C);
        if (pos >= 0 && pos < n_pos) {
            entry[t] = (int32_t) (s * n_pos + pos);
            keep[t] = 1.0f;
        }
    }
    // A row that logs nothing rewrites an entry no other row of the ubatch writes, with its own value
    // (there is one: a state has n_pos >= n_ubatch positions per sequence, more than the rows logged).
    if (std::find(entry.begin(), entry.end(), -1) != entry.end()) {
        std::vector<int32_t> used(entry);
        std::sort(used.begin(), used.end());
        int32_t spare = 0;
        for (int32_t e : used) {
            spare += e == spare; // entries ascending: the first gap is free
        }
        GGML_ASSERT(spare < n_pos * S);
        std::replace(entry.begin(), entry.end(), -1, spare);
    }
    // an input the graph does not read has no buffer (value_row: large ubatches multiply, not gather)
    auto set = [](ggml_tensor * t, const void * data) {
        if (t->buffer) {
            ggml_backend_tensor_set(t, data, 0, ggml_nbytes(t));
        }
    };
    set(in.seq_onehot, onehot.data());
    set(in.value_row, value_row.data());
    set(in.log_entry, entry.data());
    set(in.log_keep, keep.data());
    set(in.ordinal, ordinal.data());
    set(in.pend_row, pend_row.data());
}

graph build(ggml_context * ctx, ggml_tensor * x, const bank_tensors & b, const row_inputs & in, const ggml_amb_params & hp,
            bool prompt_span) {
    GGML_ASSERT(x->type == GGML_TYPE_F32 && ggml_is_contiguous(x) && x->ne[0] == b.bank->ne[0]);
    GGML_ASSERT(in.seq_onehot->ne[0] == x->ne[1] && in.seq_onehot->ne[1] == b.bank->ne[2]);
    GGML_ASSERT(covers(hp, b.pend != nullptr, x->ne[1], b.bank->ne[2]));
    GGML_ASSERT(!prompt_span || (b.pend && b.snap && b.snap_meta && b.pend->ne[1] == 2 * (int64_t) hp.chunk));
    const builder bld{ctx, b, in, hp, x->ne[0], bank_size(b), b.bank->ne[2], 0, nullptr, nullptr};
    return bld.with_rows(in.seq_onehot).run(x, prompt_span);
}

} // namespace pace_amb_composed
