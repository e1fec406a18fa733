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

struct builder {
    ggml_context *      ctx;
    const bank_tensors & b;
    const row_inputs &  in;
    ggml_amb_params     hp;
    int64_t             n_ff, T, M, S;

    // ---- small helpers -------------------------------------------------------------------------

    ggml_tensor * cont_t(ggml_tensor * t) const { return ggml_cont(ctx, ggml_transpose(ctx, t)); }
    ggml_tensor * one_minus(ggml_tensor * t) const { return ggml_scale_bias(ctx, t, -1.0f, 1.0f); }
    // t > theta ? 1 : 0 (strict, as the fused op; NaN gives 0)
    ggml_tensor * above(ggml_tensor * t, float theta) const { return ggml_step(ctx, ggml_scale_bias(ctx, t, 1.0f, -theta)); }
    // 1 where the row [n, T] is all finite, else 0: x*0 is 0, or NaN for inf and NaN
    ggml_tensor * finite_rows(ggml_tensor * t) const {
        return ggml_step(ctx, ggml_scale_bias(ctx, ggml_sum_rows(ctx, ggml_scale(ctx, t, 0.0f)), 1.0f, 1.0f));
    }
    ggml_tensor * column(ggml_tensor * row) const { return ggml_reshape_2d(ctx, row, T, 1); } // [1, T] -> [T, 1]
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
        ggml_tensor * onehot = ggml_get_rows(ctx, b.ident, ggml_reshape_1d(ctx, idx, k * T)); // [M, k*T]
        onehot = ggml_mul(ctx, ggml_reshape_3d(ctx, onehot, M, k, T), ggml_reshape_3d(ctx, w, 1, k, T));
        ggml_tensor * p = ggml_cont(ctx, ggml_permute(ctx, onehot, 1, 0, 2, 3)); // [k, M, T]
        return ggml_reshape_2d(ctx, ggml_sum_rows(ctx, p), M, T);
    }
    // per sequence: sum over the rows of m [M, T] -> [M, S] (m's rows are in their own sequence's bank)
    ggml_tensor * per_seq(ggml_tensor * m) const { return ggml_mul_mat(ctx, cont_t(m), in.seq_onehot); }
    // a per-slot [M, S] quantity, each row's own sequence's -> [M, T]
    ggml_tensor * per_row(ggml_tensor * q) const { return ggml_mul_mat(ctx, cont_t(q), seq_t); }
    ggml_tensor * seq_col(int64_t s) const { // [1, T]: which rows are in sequence s
        return ggml_view_2d(ctx, in.seq_onehot, 1, T, sizeof(float), s * T * sizeof(float));
    }

    // ---- views of the persistent tensors ------------------------------------------------------

    ggml_tensor * rows3(int64_t first) const { // keys (first 0) or values (first M) [n_ff, M, S]
        return ggml_view_3d(ctx, b.bank, n_ff, M, S, b.bank->nb[1], b.bank->nb[2], first * b.bank->nb[1]);
    }
    ggml_tensor * rows2(int64_t first, int64_t s) const { // the same for one sequence [n_ff, M]
        return ggml_view_2d(ctx, b.bank, n_ff, M, b.bank->nb[1], s * b.bank->nb[2] + first * b.bank->nb[1]);
    }
    ggml_tensor * meta_part(int part) const { // usage (0), valid (1), key norms (2): [M, S]
        return ggml_view_2d(ctx, b.meta, M, S, b.meta->nb[1], part * M * sizeof(float));
    }

    ggml_tensor * seq_t = nullptr; // [S, T]

    // ---- retrieval ------------------------------------------------------------------------------

    // cosines of the rows with their own sequence's keys [M, T]
    ggml_tensor * similarities(ggml_tensor * x) const {
        ggml_tensor * xn = ggml_l2_norm(ctx, x, EPS);
        ggml_tensor * knorm = ggml_clamp(ctx, meta_part(2), EPS, INFINITY); // free slots: 0 -> EPS
        ggml_tensor * sims = nullptr;
        for (int64_t s = 0; s < S; ++s) {
            ggml_tensor * d = ggml_div(ctx, ggml_mul_mat(ctx, rows2(0, s), xn),
                                       ggml_view_2d(ctx, knorm, M, 1, knorm->nb[1], s * knorm->nb[1]));
            if (S > 1) {
                d = ggml_mul(ctx, d, seq_col(s));
            }
            sims = sims ? ggml_add(ctx, sims, d) : d;
        }
        return sims;
    }

    // sum_i w[i, t] V[idx[i, t]] of each row's own bank -> [n_ff, T]
    ggml_tensor * weighted_values(ggml_tensor * idx, ggml_tensor * w) const {
        const int64_t k = idx->ne[0];
        if (T * k <= M) { // few rows: gather their neighbours' values from the bank seen as [n_ff, 2M*S]
            ggml_tensor * bank2d = ggml_view_2d(ctx, b.bank, n_ff, 2 * M * S, b.bank->nb[1], 0);
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
            ggml_tensor * part = ggml_mul_mat(ctx, cont_t(rows2(M, s)), c);
            sum = sum ? ggml_add(ctx, sum, part) : part;
        }
        return sum;
    }

    // ---- the whole op ---------------------------------------------------------------------------

    graph run(ggml_tensor * x) {
        const int k = std::min<int>(hp.topk, (int) M), kn = std::min<int>(hp.negk, (int) M), ks = std::min<int>(hp.store_topk, (int) M);
        seq_t = cont_t(in.seq_onehot);
        ggml_tensor * usage = meta_part(0), * valid = meta_part(1);

        // retrieval: the case from the largest similarity among the row's valid slots
        ggml_tensor * sims = similarities(x);
        ggml_tensor * valid_r = per_row(valid);                                   // [M, T]
        ggml_tensor * has_bank = ggml_step(ctx, ggml_sum_rows(ctx, valid_r));     // [1, T]: m > 0
        ggml_tensor * x_ok = finite_rows(x), * sims_ok = finite_rows(sims); // else the fused op says low
        ggml_tensor * gate = ggml_mul(ctx, ggml_mul(ctx, x_ok, sims_ok), has_bank);
        ggml_tensor * penalty = ggml_scale_bias(ctx, valid_r, BIG, -BIG);         // 0 or -BIG
        ggml_tensor * s_top = ggml_add(ctx, sims, penalty);
        ggml_tensor * smax = gather(s_top, ggml_reshape_2d(ctx, ggml_argmax(ctx, s_top), 1, T));
        ggml_tensor * mh = ggml_mul(ctx, above(smax, hp.theta_low), gate);       // mid or high
        ggml_tensor * hi = ggml_mul(ctx, above(smax, hp.theta_high), gate);
        ggml_tensor * mid = ggml_sub(ctx, mh, hi), * low = one_minus(mh);

        // o = beta x + a/k sum of the top-k values + bb/kn sum of the bottom-kn values (weights_of)
        const enhance_weights wm = weights_of(hp, CASE_MID), wh = weights_of(hp, CASE_HIGH);
        ggml_tensor * beta = by_case(low, mid, hi, 1.0f, wm.beta, wh.beta);
        ggml_tensor * top = ggml_top_k(ctx, s_top, k);                           // i32 [k, T]
        ggml_tensor * v_top = gather(valid_r, top);
        ggml_tensor * w_top = ggml_mul(ctx, v_top, ggml_div(ctx, by_case(low, mid, hi, 0.0f, wm.a, wh.a),
                                                            ggml_clamp(ctx, ggml_sum_rows(ctx, v_top), 1.0f, INFINITY)));
        ggml_tensor * idx = top, * w = w_top;
        if (kn > 0) {
            ggml_tensor * bottom = ggml_top_k(ctx, ggml_add(ctx, ggml_neg(ctx, sims), penalty), kn);
            ggml_tensor * v_bot = gather(valid_r, bottom);
            ggml_tensor * w_bot = ggml_mul(ctx, v_bot, ggml_div(ctx, by_case(low, mid, hi, 0.0f, wm.bb, wh.bb),
                                                                ggml_clamp(ctx, ggml_sum_rows(ctx, v_bot), 1.0f, INFINITY)));
            idx = ggml_concat(ctx, top, bottom, 0);
            w = ggml_concat(ctx, w_top, w_bot, 0);
        }
        ggml_tensor * out = ggml_add(ctx, ggml_mul(ctx, x, beta), weighted_values(idx, w));
        ggml_tensor * cases = ggml_add(ctx, mh, hi);

        graph g{out, cases, {}};
        store(g, x, out, s_top, valid_r, has_bank, x_ok, sims_ok, ks == k ? top : ggml_top_k(ctx, s_top, ks), usage, valid);
        log_cases(g, low, mid, hi, cases);
        return g;
    }

    // The store, one chunk per sequence: classify each row on the mean of its top-ks similarities
    // (the retrieval's: same rows, same bank), merge the mid rows into the union of their top-ks
    // slots, replace the least used slots with the low rows.
    void store(graph & g, ggml_tensor * x, ggml_tensor * out, ggml_tensor * s_top, ggml_tensor * valid_r, ggml_tensor * has_bank,
               ggml_tensor * x_ok, ggml_tensor * sims_ok, ggml_tensor * top_s, ggml_tensor * usage, ggml_tensor * valid) {
        const int ks = (int) top_s->ne[0];
        ggml_tensor * v_s = gather(valid_r, top_s);
        ggml_tensor * sbar = ggml_div(ctx, ggml_sum_rows(ctx, ggml_mul(ctx, gather(s_top, top_s), v_s)),
                                      ggml_clamp(ctx, ggml_sum_rows(ctx, v_s), 1.0f, INFINITY));
        ggml_tensor * classified = ggml_mul(ctx, has_bank, sims_ok); // empty bank or overflowing sims: low
        ggml_tensor * s_mh = ggml_mul(ctx, above(sbar, hp.theta_low), classified);
        ggml_tensor * s_hi = ggml_mul(ctx, above(sbar, hp.theta_high), classified);
        ggml_tensor * s_mid = ggml_mul(ctx, ggml_sub(ctx, s_mh, s_hi), x_ok);
        ggml_tensor * s_low = ggml_mul(ctx, one_minus(s_mh), x_ok);          // non-finite rows: never stored

        // Rows as the store's matrix products read them: a non-finite row has weight 0 everywhere,
        // and stands in as +-FLT_MAX so that 0 * row stays 0.
        ggml_tensor * x_rows = cont_t(ggml_clamp(ctx, x, -FLT_MAX, FLT_MAX)); // [T, n_ff]
        ggml_tensor * o_rows = cont_t(ggml_clamp(ctx, out, -FLT_MAX, FLT_MAX));

        // merge: every slot in some mid row's top-ks moves toward the mean mid key and value
        ggml_tensor * mid_w = ggml_mul(ctx, in.seq_onehot, column(s_mid)); // [T, S]
        ggml_tensor * n_mid = ggml_clamp(ctx, ggml_sum_rows(ctx, mid_w), 1.0f, INFINITY);
        ggml_tensor * kbar = ggml_div(ctx, ggml_mul_mat(ctx, x_rows, mid_w), n_mid); // [n_ff, S]
        ggml_tensor * vbar = hp.mode == MODE_CODE ? ggml_div(ctx, ggml_mul_mat(ctx, o_rows, mid_w), n_mid) : kbar;
        ggml_tensor * merged = ggml_step(ctx, per_seq(scatter(top_s, ggml_mul(ctx, v_s, s_mid)))); // [M, S]
        ggml_tensor * used = hp.mode == MODE_CODE ? merged : ggml_step(ctx, per_seq(scatter(top_s, ggml_mul(ctx, v_s, s_hi))));
        ggml_tensor * u1 = ggml_add(ctx, usage, used);
        ggml_tensor * v1 = ggml_sub(ctx, ggml_add(ctx, valid, merged), ggml_mul(ctx, valid, merged));

        // replacement: the i-th low row of a sequence (row order) goes to the i-th slot of its bank in
        // [free slots ascending, then valid ones by usage, then index]; rows beyond M are dropped
        ggml_tensor * low_w = ggml_mul(ctx, in.seq_onehot, column(s_low));            // [T, S]
        ggml_tensor * rank = ggml_scale_bias(ctx, ggml_sum_rows(ctx, cont_t(ggml_mul(ctx, ggml_cumsum(ctx, low_w), low_w))), 1.0f, -1.0f);
        ggml_tensor * is_low = ggml_sum_rows(ctx, cont_t(low_w));                     // [1, T]
        ggml_tensor * iota = ggml_reshape_2d(ctx, b.iota, M, 1);
        ggml_tensor * key = ggml_add(ctx, ggml_mul(ctx, v1, ggml_scale_bias(ctx, u1, (float) M, (float) M)), iota);
        ggml_tensor * order = ggml_argsort(ctx, key, GGML_SORT_ORDER_ASC);             // [M, S]: rank -> slot
        ggml_tensor * slot_rank = ggml_cast(ctx, ggml_argsort(ctx, ggml_cast(ctx, order, GGML_TYPE_F32), GGML_SORT_ORDER_ASC), GGML_TYPE_F32);
        ggml_tensor * diff = ggml_sub(ctx, per_row(slot_rank), rank);                 // [M, T]
        ggml_tensor * takes = ggml_mul(ctx, one_minus(ggml_add(ctx, ggml_step(ctx, diff), ggml_step(ctx, ggml_neg(ctx, diff)))), is_low);
        ggml_tensor * takes_t = cont_t(takes);                                        // [T, M]: row -> slot
        ggml_tensor * written = ggml_mul_mat(ctx, takes_t, in.seq_onehot);             // [M, S]
        ggml_tensor * u2 = ggml_add(ctx, ggml_mul(ctx, u1, one_minus(written)), written);
        ggml_tensor * v2 = ggml_sub(ctx, ggml_add(ctx, v1, written), ggml_mul(ctx, v1, written));

        // only the slots that change are computed and written: at most ks*T merged and T replaced per
        // sequence (top_k of the change mask: distinct slots; unchanged ones among them keep their rows)
        const int64_t n_changed = std::min<int64_t>(M, (int64_t) ks * T + T);
        ggml_tensor * changed = ggml_top_k(ctx, ggml_add(ctx, merged, written), (int) n_changed); // i32 [R, S]
        auto at_changed = [&](ggml_tensor * m) { return ggml_get_rows(ctx, ggml_reshape_3d(ctx, m, 1, M, S), changed); }; // [1, R, S]
        ggml_tensor * pull = at_changed(merged), * keep = one_minus(at_changed(written));
        ggml_tensor * takes3 = S == 1 ? ggml_reshape_3d(ctx, takes_t, T, M, 1)
                                      : ggml_mul(ctx, ggml_repeat_4d(ctx, takes_t, T, M, S, 1), ggml_reshape_3d(ctx, in.seq_onehot, T, 1, S));
        ggml_tensor * row_of = ggml_get_rows(ctx, takes3, changed);                     // [T, R, S]
        const float mom = hp.momentum;
        auto updated = [&](ggml_tensor * rows, ggml_tensor * mean, ggml_tensor * new_rows) {
            ggml_tensor * old = ggml_get_rows(ctx, rows, changed);                     // [n_ff, R, S]
            ggml_tensor * pulled = ggml_add(ctx, ggml_scale(ctx, old, mom), ggml_scale(ctx, ggml_reshape_3d(ctx, mean, n_ff, 1, S), 1.0f - mom));
            ggml_tensor * m = ggml_add(ctx, ggml_mul(ctx, pulled, pull), ggml_mul(ctx, old, one_minus(pull)));
            return ggml_add(ctx, ggml_mul(ctx, m, keep), ggml_mul_mat(ctx, new_rows, row_of));
        };
        ggml_tensor * keys = rows3(0), * vals = rows3(M);
        ggml_tensor * k2 = updated(keys, kbar, x_rows);
        ggml_tensor * v2rows = updated(vals, vbar, o_rows);
        ggml_tensor * kn2 = ggml_clamp(ctx, ggml_sqrt(ctx, ggml_sum_rows(ctx, ggml_sqr(ctx, k2))), EPS, INFINITY); // [1, R, S]
        ggml_tensor * knorm3 = ggml_view_3d(ctx, b.meta, 1, M, S, sizeof(float), b.meta->nb[1], 2 * M * sizeof(float));
        g.writes.push_back(ggml_set_rows(ctx, keys, k2, changed));
        g.writes.push_back(ggml_set_rows(ctx, vals, v2rows, changed));
        g.writes.push_back(ggml_set_rows(ctx, knorm3, kn2, changed));
        g.writes.push_back(ggml_cpy(ctx, u2, usage));
        g.writes.push_back(ggml_cpy(ctx, v2, valid));
    }

    // Counters (high, mid, low per sequence) and the case log per position, in `state` (i32) through f32.
    void log_cases(graph & g, ggml_tensor * low, ggml_tensor * mid, ggml_tensor * hi, ggml_tensor * cases) {
        static_assert(ST_N_MID == ST_N_HIGH + 1 && ST_N_LOW == ST_N_HIGH + 2, "counters: high, mid, low in a row");
        ggml_tensor * st = b.state;
        ggml_tensor * counters = ggml_view_2d(ctx, st, 3, S, st->nb[1], ST_N_HIGH * sizeof(int32_t));
        ggml_tensor * by_case_t = ggml_concat(ctx, ggml_concat(ctx, column(hi), column(mid), 1), column(low), 1); // [T, 3]
        ggml_tensor * counts = ggml_add(ctx, ggml_cast(ctx, counters, GGML_TYPE_F32), ggml_mul_mat(ctx, by_case_t, in.seq_onehot));
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

bool covers(const ggml_amb_params & hp, bool prompt_granularity, int64_t n_tokens) {
    return !prompt_granularity && n_tokens <= hp.chunk;
}

bool computes(const ggml_tensor * node) {
    switch (node->op) {
        case GGML_OP_NONE: case GGML_OP_VIEW: case GGML_OP_RESHAPE: case GGML_OP_PERMUTE: case GGML_OP_TRANSPOSE:
            return false;
        default:
            return true;
    }
}

bank_tensors new_constants(ggml_context * ctx, ggml_tensor * bank, ggml_tensor * meta, ggml_tensor * state) {
    const int64_t M = bank->ne[1] / 2;
    return bank_tensors{bank, meta, state, ggml_new_tensor_2d(ctx, GGML_TYPE_F32, M, M), ggml_new_tensor_1d(ctx, GGML_TYPE_F32, M)};
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
}

row_inputs new_row_inputs(ggml_context * ctx, int64_t n_rows, int64_t n_seq) {
    row_inputs in{ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n_rows, n_seq), ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 1, n_rows),
                  ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n_rows), ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 1, n_rows)};
    for (ggml_tensor * t : {in.seq_onehot, in.value_row, in.log_entry, in.log_keep}) {
        ggml_set_input(t);
    }
    return in;
}

void set_rows_of(const row_inputs & in, const bank_tensors & b, const std::vector<int32_t> & rows) {
    const int64_t T = in.seq_onehot->ne[0], S = in.seq_onehot->ne[1], M = bank_size(b);
    const int64_t n_pos = b.state->ne[0] - GGML_AMB_STATE_HEADER;
    GGML_ASSERT((int64_t) rows.size() == 2 * T);
    std::vector<float> onehot(T * S, 0.0f), value_row(T, 0.0f), keep(T, 0.0f);
    std::vector<int32_t> entry(T, -1);
    for (int64_t t = 0; t < T; ++t) {
        const int32_t s = rows[2 * t], pos = rows[2 * t + 1];
        if (s < 0 || s >= S) {
            continue; // no bank: passes through, not counted, not logged
        }
        onehot[s * T + t] = 1.0f;
        value_row[t] = (float) (s * 2 * M + M);
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
}

graph build(ggml_context * ctx, ggml_tensor * x, const bank_tensors & b, const row_inputs & in, const ggml_amb_params & hp) {
    GGML_ASSERT(x->type == GGML_TYPE_F32 && ggml_is_contiguous(x) && x->ne[0] == b.bank->ne[0]);
    GGML_ASSERT(in.seq_onehot->ne[0] == x->ne[1] && in.seq_onehot->ne[1] == b.bank->ne[2]);
    GGML_ASSERT(covers(hp, false, x->ne[1]));
    builder bld{ctx, b, in, hp, x->ne[0], x->ne[1], bank_size(b), b.bank->ne[2]};
    return bld.run(x);
}

} // namespace pace_amb_composed
