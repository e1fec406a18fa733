// pace-gguf: design prototype for issue "the memory bank on every ggml backend" (design A).
//
// Builds one AMB layer's retrieval and store from standard ggml ops (mul_mat, l2_norm, top_k,
// argmax, argsort, get_rows, cumsum, step, sum_rows, arithmetic), runs it on a backend (the CPU, or
// any device ggml was built with: --device Vulkan0), and compares it with the fused GGML_OP_AMB on
// the CPU, the oracle: enhanced rows, case labels, and the bank after the store. Then it times both
// and counts the composed graph's nodes. `--impl fused` runs the device's own GGML_OP_AMB kernel
// instead (cpp/src/vulkan/amb.comp on Vulkan), against the same oracle, with the store in chunks of
// --chunk rows: the check and the timing of a backend kernel.
//
// Scope of the prototype: one sequence, ubatch granularity, the released code's rules ("code"
// mode), one store chunk (n_tokens <= chunk), finite rows. Not covered: several sequences per
// ubatch, prompt granularity (snapshot, pending rows), paper mode, the counters and case log,
// non-finite rows. Ties between equal similarities are left to top_k (the fused op: lower slot).
//
//   cmake --build build/<wheel tag> --target pace-amb-composed
//   build/<wheel tag>/bin/pace-amb-composed [--device NAME] [--impl composed|fused] [--n-ff N]
//                                           [--tokens T] [--chunk C] [--reps R]
#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

constexpr float EPS = 1e-8f;
constexpr float BIG = 1e4f; // pushes empty slots out of every top-k (similarities are in [-1, 1])

struct layer_tensors {
    ggml_tensor * x;     // f32 [n_ff, T]
    ggml_tensor * bank;  // f32 [n_ff, 2M, 1]: keys, then values
    ggml_tensor * meta;  // f32 [3M, 1]: usage, valid, key norms
    ggml_tensor * ident; // f32 [M, M] identity: one-hot rows by get_rows
    ggml_tensor * iota;  // f32 [M]: 0 .. M-1
};

struct composed {
    ggml_tensor * out;   // enhanced rows [n_ff, T]
    ggml_tensor * cases; // [1, 1, T]: 0 low, 1 mid, 2 high
    std::vector<ggml_tensor *> writes;
};

ggml_tensor * sum_over_dim1(ggml_context * ctx, ggml_tensor * t) { // [a, b, c] -> [a, c]
    ggml_tensor * p = ggml_cont(ctx, ggml_permute(ctx, t, 1, 0, 2, 3)); // [b, a, c]
    return ggml_reshape_2d(ctx, ggml_sum_rows(ctx, p), t->ne[0], t->ne[2]);
}

// sum_i w[i, t] * onehot(idx[i, t]) -> [M, T]; idx i32 [k, T], w f32 [k, T]
ggml_tensor * scatter_weights(ggml_context * ctx, ggml_tensor * ident, ggml_tensor * idx, ggml_tensor * w) {
    const int64_t k = idx->ne[0], T = idx->ne[1], M = ident->ne[0];
    ggml_tensor * onehot = ggml_get_rows(ctx, ident, ggml_reshape_1d(ctx, idx, k * T)); // [M, k*T]
    onehot = ggml_reshape_3d(ctx, onehot, M, k, T);
    return sum_over_dim1(ctx, ggml_mul(ctx, onehot, ggml_reshape_3d(ctx, w, 1, k, T)));
}

// values of s [M, T] at idx [k, T] -> [k, T]
ggml_tensor * gather(ggml_context * ctx, ggml_tensor * s, ggml_tensor * idx) {
    const int64_t M = s->ne[0], T = s->ne[1], k = idx->ne[0];
    ggml_tensor * g = ggml_get_rows(ctx, ggml_reshape_3d(ctx, s, 1, M, T), idx); // [1, k, T]
    return ggml_reshape_2d(ctx, g, k, T);
}

ggml_tensor * step_above(ggml_context * ctx, ggml_tensor * x, float theta) { // x > theta ? 1 : 0
    return ggml_step(ctx, ggml_scale_bias(ctx, x, 1.0f, -theta));
}

ggml_tensor * one_minus(ggml_context * ctx, ggml_tensor * x) {
    return ggml_scale_bias(ctx, x, -1.0f, 1.0f);
}

// sum_i w[i, t] * rows[idx[i, t]] of `rows` [n_ff, M] -> [n_ff, T], by gathering the k rows of
// each token (small ubatches: k*T rows instead of the whole bank)
ggml_tensor * gathered_mean(ggml_context * ctx, ggml_tensor * rows, ggml_tensor * idx, ggml_tensor * w) {
    const int64_t n_ff = rows->ne[0], k = idx->ne[0], T = idx->ne[1];
    ggml_tensor * sel = ggml_get_rows(ctx, rows, ggml_reshape_1d(ctx, idx, k * T));          // [n_ff, k*T]
    sel = ggml_cont(ctx, ggml_permute(ctx, ggml_reshape_3d(ctx, sel, n_ff, k, T), 1, 0, 2, 3)); // [k, n_ff, T]
    return ggml_reshape_2d(ctx, ggml_mul_mat(ctx, sel, ggml_reshape_3d(ctx, w, k, 1, T)), n_ff, T);
}

composed build_composed(ggml_context * ctx, const layer_tensors & L, const ggml_amb_params & hp) {
    const int64_t n_ff = L.x->ne[0], T = L.x->ne[1], M = L.bank->ne[1] / 2;
    const int k = std::min<int>(hp.topk, (int) M), kn = std::min<int>(hp.negk, (int) M);
    GGML_ASSERT(hp.store_topk == hp.topk && hp.mode == 0 && T <= hp.chunk && kn > 0); // the prototype's scope
    const bool small = T * (k + kn) <= M; // gather the neighbours' rows rather than multiply by the whole bank

    ggml_tensor * K  = ggml_view_2d(ctx, L.bank, n_ff, M, L.bank->nb[1], 0);
    ggml_tensor * V  = ggml_view_2d(ctx, L.bank, n_ff, M, L.bank->nb[1], M * L.bank->nb[1]);
    ggml_tensor * u  = ggml_view_1d(ctx, L.meta, M, 0);
    ggml_tensor * v  = ggml_view_1d(ctx, L.meta, M, M * sizeof(float));
    ggml_tensor * kn_view = ggml_view_2d(ctx, L.meta, 1, M, sizeof(float), 2 * M * sizeof(float)); // [1, M]: a row per slot

    // ---- retrieval: cosines (with the stored key norms), top-k / bottom-k' among valid slots, case
    ggml_tensor * S  = ggml_div(ctx, ggml_mul_mat(ctx, K, ggml_l2_norm(ctx, L.x, EPS)), ggml_reshape_2d(ctx, kn_view, M, 1));
    ggml_tensor * empty_penalty = ggml_scale_bias(ctx, v, BIG, -BIG);                               // 0 or -BIG
    ggml_tensor * St = ggml_add(ctx, S, empty_penalty);
    ggml_tensor * Sb = ggml_add(ctx, ggml_neg(ctx, S), empty_penalty);
    ggml_tensor * it = ggml_top_k(ctx, St, k);   // i32 [k, T]
    ggml_tensor * ib = ggml_top_k(ctx, Sb, kn);  // i32 [kn, T]
    ggml_tensor * smax = gather(ctx, St, ggml_reshape_2d(ctx, ggml_argmax(ctx, St), 1, T)); // [1, T]
    ggml_tensor * hi = step_above(ctx, smax, hp.theta_high);
    ggml_tensor * mh = step_above(ctx, smax, hp.theta_low); // mid or high
    // code mode: o = (1 - a*mh) x + a*(w_mid*mh + (w_high - w_mid)*hi) mean(top) + a*lambda*mh mean(bottom)
    ggml_tensor * beta = ggml_scale_bias(ctx, mh, -hp.alpha, 1.0f);
    ggml_tensor * a_w  = ggml_add(ctx, ggml_scale(ctx, mh, hp.alpha * hp.w_mid), ggml_scale(ctx, hi, hp.alpha * (hp.w_high - hp.w_mid)));
    ggml_tensor * b_w  = ggml_scale(ctx, mh, hp.alpha * hp.lambda);
    ggml_tensor * v2d  = ggml_reshape_2d(ctx, v, 1, M);
    ggml_tensor * vt   = ggml_reshape_2d(ctx, ggml_get_rows(ctx, v2d, ggml_reshape_1d(ctx, it, k * T)), k, T);
    ggml_tensor * vb   = ggml_reshape_2d(ctx, ggml_get_rows(ctx, v2d, ggml_reshape_1d(ctx, ib, kn * T)), kn, T);
    ggml_tensor * nt   = ggml_clamp(ctx, ggml_sum_rows(ctx, vt), 1.0f, INFINITY); // [1, T]: min(k, valid)
    ggml_tensor * nb   = ggml_clamp(ctx, ggml_sum_rows(ctx, vb), 1.0f, INFINITY);
    ggml_tensor * wt   = ggml_mul(ctx, vt, ggml_div(ctx, a_w, nt));
    ggml_tensor * wb   = ggml_mul(ctx, vb, ggml_div(ctx, b_w, nb));
    ggml_tensor * from_bank;
    if (small) {
        ggml_tensor * idx = ggml_concat(ctx, it, ib, 0); // i32 [k + kn, T]
        from_bank = gathered_mean(ctx, V, idx, ggml_concat(ctx, wt, wb, 0));
    } else {
        ggml_tensor * C = ggml_add(ctx, scatter_weights(ctx, L.ident, it, wt), scatter_weights(ctx, L.ident, ib, wb)); // [M, T]
        from_bank = ggml_mul_mat(ctx, ggml_cont(ctx, ggml_transpose(ctx, V)), C);
    }
    ggml_tensor * O = ggml_add(ctx, ggml_mul(ctx, L.x, beta), from_bank);
    ggml_tensor * cases = ggml_add(ctx, hi, mh);

    // ---- store, one chunk: classify on the mean of the top-k similarities
    ggml_tensor * sbar = ggml_div(ctx, ggml_sum_rows(ctx, ggml_mul(ctx, gather(ctx, St, it), vt)), nt); // [1, T]
    ggml_tensor * nonempty = ggml_step(ctx, ggml_sum_rows(ctx, ggml_reshape_2d(ctx, v, M, 1))); // [1, 1]: any valid slot
    ggml_tensor * s_mh = ggml_mul(ctx, step_above(ctx, sbar, hp.theta_low), nonempty);
    ggml_tensor * s_hi = ggml_mul(ctx, step_above(ctx, sbar, hp.theta_high), nonempty);
    ggml_tensor * s_mid = ggml_sub(ctx, s_mh, s_hi);
    ggml_tensor * s_low = one_minus(ctx, s_mh);

    // merge: every slot in some mid row's top-k is pulled halfway to the mean mid key and value
    ggml_tensor * Xt = ggml_cont(ctx, ggml_transpose(ctx, L.x)); // [T, n_ff]
    ggml_tensor * Ot = ggml_cont(ctx, ggml_transpose(ctx, O));
    ggml_tensor * mid_col = ggml_reshape_2d(ctx, s_mid, T, 1);
    ggml_tensor * n_mid = ggml_clamp(ctx, ggml_sum_rows(ctx, mid_col), 1.0f, INFINITY);
    ggml_tensor * kbar = ggml_div(ctx, ggml_mul_mat(ctx, Xt, mid_col), n_mid); // [n_ff, 1]
    ggml_tensor * vbar = ggml_div(ctx, ggml_mul_mat(ctx, Ot, mid_col), n_mid);
    ggml_tensor * hits = scatter_weights(ctx, L.ident, it, ggml_mul(ctx, vt, s_mid)); // [M, T]
    ggml_tensor * U = ggml_reshape_1d(ctx, ggml_step(ctx, ggml_sum_rows(ctx, ggml_cont(ctx, ggml_transpose(ctx, hits)))), M);
    ggml_tensor * u1 = ggml_add(ctx, u, U);
    ggml_tensor * v1 = ggml_sub(ctx, ggml_add(ctx, v, U), ggml_mul(ctx, v, U));

    // replacement: the i-th low row (token order) goes to the i-th slot of [free slots ascending,
    // then valid ones by usage, then index]; rows beyond M are dropped
    ggml_tensor * key = ggml_add(ctx, L.iota, ggml_mul(ctx, v1, ggml_scale_bias(ctx, u1, (float) M, (float) M)));
    ggml_tensor * order = ggml_argsort(ctx, key, GGML_SORT_ORDER_ASC);                 // i32 [M]: rank -> slot
    ggml_tensor * P = ggml_cont(ctx, ggml_transpose(ctx, ggml_get_rows(ctx, L.ident, order))); // [rank, slot]
    ggml_tensor * rank = ggml_scale_bias(ctx, ggml_cumsum(ctx, ggml_reshape_1d(ctx, s_low, T)), 1.0f, -1.0f); // [T]
    ggml_tensor * diff = ggml_sub(ctx, ggml_repeat(ctx, ggml_reshape_2d(ctx, L.iota, M, 1), ggml_new_tensor_2d(ctx, GGML_TYPE_F32, M, T)),
                                  ggml_reshape_2d(ctx, rank, 1, T));                   // [M(rank), T]
    ggml_tensor * is_rank = one_minus(ctx, ggml_add(ctx, ggml_step(ctx, diff), ggml_step(ctx, ggml_neg(ctx, diff))));
    ggml_tensor * R = ggml_mul(ctx, is_rank, ggml_reshape_2d(ctx, s_low, 1, T));        // [rank, T]
    ggml_tensor * At = ggml_cont(ctx, ggml_transpose(ctx, ggml_mul_mat(ctx, P, R)));    // [T, slot]: token -> slot
    ggml_tensor * w = ggml_reshape_1d(ctx, ggml_sum_rows(ctx, At), M);                  // [M]: slot written
    ggml_tensor * u2 = ggml_add(ctx, ggml_mul(ctx, u1, one_minus(ctx, w)), w);
    ggml_tensor * v2 = ggml_sub(ctx, ggml_add(ctx, v1, w), ggml_mul(ctx, v1, w));

    // only the slots that change are computed and written: at most k*T merged and T replaced ones
    // (top_k of the change mask: unique indices, unchanged slots among them rewrite their own values)
    const int64_t R_max = std::min<int64_t>(M, (int64_t) k * T + T);
    ggml_tensor * changed = ggml_top_k(ctx, ggml_reshape_2d(ctx, ggml_add(ctx, U, w), M, 1), (int) R_max); // i32 [R]
    ggml_tensor * U_sel = ggml_reshape_2d(ctx, ggml_get_rows(ctx, ggml_reshape_2d(ctx, U, 1, M), changed), 1, R_max);
    ggml_tensor * keep = one_minus(ctx, ggml_reshape_2d(ctx, ggml_get_rows(ctx, ggml_reshape_2d(ctx, w, 1, M), changed), 1, R_max));
    ggml_tensor * A_sel = ggml_get_rows(ctx, At, changed); // [T, R]: which token each changed slot takes
    const float mom = hp.momentum;
    auto updated = [&](ggml_tensor * B, ggml_tensor * mean, ggml_tensor * rowsT) {
        ggml_tensor * old = ggml_get_rows(ctx, B, changed);                               // [n_ff, R]
        ggml_tensor * pulled = ggml_add(ctx, ggml_scale(ctx, old, mom), ggml_scale(ctx, mean, 1.0f - mom));
        ggml_tensor * merged = ggml_add(ctx, ggml_mul(ctx, pulled, U_sel), ggml_mul(ctx, old, one_minus(ctx, U_sel)));
        return ggml_add(ctx, ggml_mul(ctx, merged, keep), ggml_mul_mat(ctx, rowsT, A_sel));
    };
    ggml_tensor * K2 = updated(K, kbar, Xt);
    ggml_tensor * V2 = updated(V, vbar, Ot);
    ggml_tensor * kn2 = ggml_clamp(ctx, ggml_sqrt(ctx, ggml_sum_rows(ctx, ggml_sqr(ctx, K2))), EPS, INFINITY); // [1, R]

    composed c{O, cases, {}};
    c.writes = {ggml_set_rows(ctx, K, K2, changed), ggml_set_rows(ctx, V, V2, changed),
                ggml_cpy(ctx, u2, u), ggml_cpy(ctx, v2, v),
                ggml_set_rows(ctx, kn_view, ggml_reshape_2d(ctx, kn2, 1, R_max), changed)};
    return c;
}

// ---- harness ---------------------------------------------------------------------------------------

struct options {
    std::string device = "CPU";
    int64_t n_ff = 1536;
    int64_t tokens = 64;
    int reps = 5;
    int threads = 2;
    int chunk = 1024;   // store chunk of the fused op (the composed graph stores one chunk)
    bool fused = false; // --impl fused: the device's GGML_OP_AMB kernel instead of the composed graph
};

struct state {
    std::vector<float> x, bank, meta;
};

// A bank whose first half holds copies of rows like this ubatch's at three noise levels (high,
// mid and low similarity), usage 1..4, the rest free; rows of uniform noise.
state make_state(int64_t n_ff, int64_t T, int M, unsigned seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
    state s;
    s.x.resize(n_ff * T);
    for (float & f : s.x) f = uni(rng);
    s.bank.assign(n_ff * 2 * M, 0.0f);
    s.meta.assign(3 * M, 0.0f);
    const float noise[3] = {0.2f, 1.0f, 4.0f};
    for (int j = 0; j < M / 2; ++j) {
        const float * src = s.x.data() + (j % T) * n_ff;
        float * key = s.bank.data() + j * n_ff, * val = s.bank.data() + (M + j) * n_ff;
        double nrm = 0;
        for (int64_t i = 0; i < n_ff; ++i) {
            key[i] = src[i] + noise[j % 3] * uni(rng);
            val[i] = uni(rng);
            nrm += (double) key[i] * key[i];
        }
        s.meta[j] = (float) (1 + j % 4);
        s.meta[M + j] = 1.0f;
        s.meta[2 * M + j] = std::max((float) std::sqrt(nrm), EPS);
    }
    // the next ubatch's rows resemble the bank's: new noise on the same sources
    for (int64_t t = 0; t < T; ++t) {
        for (int64_t i = 0; i < n_ff; ++i) s.x[t * n_ff + i] += 0.3f * uni(rng);
    }
    return s;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct run_result {
    std::vector<float> out, bank, meta;
    std::vector<int> cases;
    double seconds_per_call = 0;
    int n_nodes = 0; // computing nodes
};

ggml_amb_params default_params(int chunk = 1024) {
    return {0.75f, 0.25f, 0.2f, 1.0f, 0.5f, 0.1f, 0.5f, 5, 2, 5, chunk, 0};
}

run_result run(ggml_backend_t backend, bool fused, const state & s, int64_t n_ff, int64_t T, int M, int reps, int chunk) {
    ggml_init_params ip = {ggml_tensor_overhead() * 1024 + ggml_graph_overhead_custom(4096, false), nullptr, true};
    ggml_context * ctx = ggml_init(ip);
    layer_tensors L;
    L.x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n_ff, T);
    L.bank = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, n_ff, 2 * M, 1);
    L.meta = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 3 * M, 1);
    L.ident = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, M, M);
    L.iota = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, M);
    ggml_tensor * tokens = ggml_new_tensor_2d(ctx, GGML_TYPE_I32, 2, T);
    ggml_tensor * st = ggml_new_tensor_2d(ctx, GGML_TYPE_I32, GGML_AMB_STATE_HEADER + T, 1);
    ggml_backend_buffer_t leaves = ggml_backend_alloc_ctx_tensors(ctx, backend);

    ggml_backend_tensor_set(L.x, s.x.data(), 0, ggml_nbytes(L.x));
    ggml_backend_tensor_set(L.bank, s.bank.data(), 0, ggml_nbytes(L.bank));
    ggml_backend_tensor_set(L.meta, s.meta.data(), 0, ggml_nbytes(L.meta));
    std::vector<float> ident(M * M, 0.0f), iota(M);
    for (int j = 0; j < M; ++j) { ident[j * M + j] = 1.0f; iota[j] = (float) j; }
    ggml_backend_tensor_set(L.ident, ident.data(), 0, ggml_nbytes(L.ident));
    ggml_backend_tensor_set(L.iota, iota.data(), 0, ggml_nbytes(L.iota));
    std::vector<int32_t> tok(2 * T), zeros(GGML_AMB_STATE_HEADER + T, 0);
    for (int64_t t = 0; t < T; ++t) { tok[2 * t] = 0; tok[2 * t + 1] = (int32_t) t; }
    ggml_backend_tensor_set(tokens, tok.data(), 0, ggml_nbytes(tokens));
    ggml_backend_tensor_set(st, zeros.data(), 0, ggml_nbytes(st));

    ggml_cgraph * gf = ggml_new_graph_custom(ctx, 4096, false);
    ggml_tensor * out, * cases = nullptr;
    if (fused) {
        out = ggml_amb(ctx, L.x, tokens, L.bank, L.meta, st, nullptr, nullptr, nullptr, default_params(chunk));
        ggml_build_forward_expand(gf, out);
    } else {
        composed c = build_composed(ctx, L, default_params());
        out = c.out;
        cases = c.cases;
        ggml_set_output(out);
        ggml_set_output(cases);
        ggml_build_forward_expand(gf, out);
        ggml_build_forward_expand(gf, cases);
        for (ggml_tensor * wr : c.writes) ggml_build_forward_expand(gf, wr);
    }
    ggml_gallocr_t galloc = ggml_gallocr_new(ggml_backend_get_default_buffer_type(backend));
    GGML_ASSERT(ggml_gallocr_alloc_graph(galloc, gf));
    GGML_ASSERT(ggml_backend_graph_compute(backend, gf) == GGML_STATUS_SUCCESS);

    run_result r;
    for (int i = 0; i < ggml_graph_n_nodes(gf); ++i) { // kernels: nodes that compute (not views)
        switch (ggml_graph_node(gf, i)->op) {
            case GGML_OP_NONE: case GGML_OP_VIEW: case GGML_OP_RESHAPE: case GGML_OP_PERMUTE: case GGML_OP_TRANSPOSE: break;
            default: r.n_nodes++;
        }
    }
    r.out.resize(n_ff * T);
    r.bank.resize(s.bank.size());
    r.meta.resize(s.meta.size());
    ggml_backend_tensor_get(out, r.out.data(), 0, ggml_nbytes(out));
    ggml_backend_tensor_get(L.bank, r.bank.data(), 0, ggml_nbytes(L.bank));
    ggml_backend_tensor_get(L.meta, r.meta.data(), 0, ggml_nbytes(L.meta));
    r.cases.resize(T);
    if (fused) {
        std::vector<int32_t> log(GGML_AMB_STATE_HEADER + T);
        ggml_backend_tensor_get(st, log.data(), 0, ggml_nbytes(st));
        for (int64_t t = 0; t < T; ++t) r.cases[t] = log[GGML_AMB_STATE_HEADER + t] - 1;
    } else {
        std::vector<float> c(T);
        ggml_backend_tensor_get(cases, c.data(), 0, ggml_nbytes(cases));
        for (int64_t t = 0; t < T; ++t) r.cases[t] = (int) c[t];
    }
    // timing: the same graph again (the bank keeps changing, as in a real decode)
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) {
        ggml_backend_graph_compute(backend, gf);
    }
    ggml_backend_synchronize(backend);
    r.seconds_per_call = seconds_since(t0) / reps;

    ggml_gallocr_free(galloc);
    ggml_backend_buffer_free(leaves);
    ggml_free(ctx);
    return r;
}

double max_rel_diff(const std::vector<float> & a, const std::vector<float> & b, size_t begin, size_t end) {
    double num = 0, den = 1e-30;
    for (size_t i = begin; i < end; ++i) {
        num = std::max(num, (double) std::fabs(a[i] - b[i]));
        den = std::max(den, (double) std::fabs(b[i]));
    }
    return num / den;
}

options parse(int argc, char ** argv) {
    options o;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i];
        if (a == "--device") o.device = argv[i + 1];
        else if (a == "--n-ff") o.n_ff = std::stoll(argv[i + 1]);
        else if (a == "--tokens") o.tokens = std::stoll(argv[i + 1]);
        else if (a == "--reps") o.reps = std::stoi(argv[i + 1]);
        else if (a == "--threads") o.threads = std::stoi(argv[i + 1]);
        else if (a == "--chunk") o.chunk = std::stoi(argv[i + 1]);
        else if (a == "--impl") o.fused = std::string(argv[i + 1]) == "fused";
    }
    return o;
}

} // namespace

int main(int argc, char ** argv) {
    const options o = parse(argc, argv);
    ggml_backend_load_all();
    const int M = 100;
    ggml_backend_t cpu = ggml_backend_cpu_init();
    ggml_backend_cpu_set_n_threads(cpu, o.threads);
    ggml_backend_dev_t dev = ggml_backend_dev_by_name(o.device.c_str());
    if (!dev) {
        fprintf(stderr, "no device %s\n", o.device.c_str());
        return 2;
    }
    ggml_backend_t backend = o.device == "CPU" ? cpu : ggml_backend_dev_init(dev, nullptr);

    const state s = make_state(o.n_ff, o.tokens, M, 42);
    const run_result ref = run(cpu, true, s, o.n_ff, o.tokens, M, o.reps, o.chunk);
    const run_result got = run(backend, o.fused, s, o.n_ff, o.tokens, M, o.reps, o.chunk);
    const char * impl = o.fused ? "fused" : "composed";

    int same = 0, n_case[3] = {0, 0, 0};
    for (int64_t t = 0; t < o.tokens; ++t) {
        same += ref.cases[t] == got.cases[t];
        n_case[std::clamp(ref.cases[t], 0, 2)]++;
    }
    const size_t kv = (size_t) M * o.n_ff;
    int usage_same = 0, valid_same = 0;
    for (int j = 0; j < M; ++j) {
        usage_same += ref.meta[j] == got.meta[j];
        valid_same += ref.meta[M + j] == got.meta[M + j];
    }
    printf("device %s, n_ff %lld, tokens %lld, bank %d (half full)\n", o.device.c_str(), (long long) o.n_ff, (long long) o.tokens, M);
    printf("  cases (fused, CPU): low %d, mid %d, high %d; %s (%s) agrees on %d/%lld\n", n_case[0], n_case[1], n_case[2],
           impl, o.device.c_str(), same, (long long) o.tokens);
    printf("  enhanced rows: max |diff| / max |fused| = %.3g\n", max_rel_diff(got.out, ref.out, 0, ref.out.size()));
    printf("  bank after the store: keys %.3g, values %.3g (relative); usage equal %d/%d, valid equal %d/%d\n",
           max_rel_diff(got.bank, ref.bank, 0, kv), max_rel_diff(got.bank, ref.bank, kv, 2 * kv), usage_same, M, valid_same, M);
    printf("  time per call: fused (CPU) %.1f us, %s (%s) %.1f us, %d computing nodes\n", ref.seconds_per_call * 1e6,
           impl, o.device.c_str(), got.seconds_per_call * 1e6, got.n_nodes);
    if (backend != cpu) ggml_backend_free(backend);
    ggml_backend_free(cpu);
    return same == o.tokens ? 0 : 1;
}
