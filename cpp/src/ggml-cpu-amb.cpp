// CPU kernel of GGML_OP_AMB (compiled into libggml-cpu; dispatched from ggml-cpu.c).
//
// Phase 1: every token retrieves against its sequence's bank as it was before the op (or against
//          the frozen snapshot in prompt granularity) and writes its enhanced row. Thread 0 lists each
//          sequence's valid slots; all threads then share the (token, slot) dot products, so that a
//          single decoded token keeps every thread busy; then they split the tokens.
// Phase 2: counters and the per-position case log (thread 0), then the store: for each sequence, its
//          rows in token order, in chunks; the first chunk reuses the retrieval's similarities (same
//          rows, same bank: bit-identical), later chunks are computed by all threads; thread 0
//          applies merge and replacement. In prompt granularity the rows are instead buffered in
//          `pend` and stored a full chunk at a time (the host flushes the rest at the end of a decode).
#include "ggml-cpu-amb.h"

#include "ggml-cpu-impl.h"
#include "pace-amb-layout.h"

#include <vector>

using namespace pace_amb;

namespace {

struct amb_op {
    const ggml_tensor * a;
    const int32_t *     tok;
    ggml_tensor *       dst;
    hparams             hp;
    int64_t             n_ff, T;
    int32_t             M, S;

    explicit amb_op(ggml_tensor * d) :
        a(d->src[0]), tok((const int32_t *) d->src[1]->data), dst(d),
        n_ff(d->src[0]->ne[0]), T(d->src[0]->ne[1]),
        M((int32_t) (d->src[2]->ne[1] / 2)), S((int32_t) d->src[2]->ne[2]) {
        std::memcpy(&hp, d->op_params, sizeof(hp));
    }

    int32_t * state(int s) const { return state_row(dst->src[4], s); }
    int32_t * case_log(int s) const { return case_log_row(dst->src[4], s); }
    int64_t n_pos() const { return dst->src[4]->ne[0] - GGML_AMB_STATE_HEADER; }
    bool prompt_span(int s) const { return (state(s)[ST_FLAGS] & FLAG_PROMPT_SPAN) && dst->src[5] != nullptr; }

    bank_view view(int s, bool snapshot) const {
        return snapshot ? bank_view_of(dst->src[5], dst->src[6], s) : bank_view_of(dst->src[2], dst->src[3], s);
    }
    const float * x_row(int64_t t) const { return (const float *) ((const char *) a->data + t * a->nb[1]); }
    float *       o_row(int64_t t) const { return (float *) ((char *) dst->data + t * dst->nb[1]); }
    int seq_of(int64_t t) const { return tok[2 * t]; }
};

// wdata: labels [T] i32 | norms [T] f32 | slots [S x M] i32 | n_slots [S] i32 | token sims [T x M] f32
//        | nth x order [M] i32 | chunk sims [chunk x M] f32. Each part padded to 64 bytes.
struct amb_work {
    int32_t * labels;
    float *   norms;      // |x_t| clamped to EPS
    int32_t * slots;      // per sequence: its valid slots, ascending (of the bank it retrieves from)
    int32_t * n_slots;
    float *   token_sims; // per token: similarities with its sequence's valid slots
    int32_t * orders;
    float *   chunk_sims;

    static size_t pad(size_t n) { return GGML_PAD(n, 64); }

    amb_work(const amb_op & op, void * wdata, int nth) {
        char * p = (char *) wdata;
        labels     = (int32_t *) p; p += pad(op.T * sizeof(int32_t));
        norms      = (float *) p;   p += pad(op.T * sizeof(float));
        slots      = (int32_t *) p; p += pad((size_t) op.S * op.M * sizeof(int32_t));
        n_slots    = (int32_t *) p; p += pad(op.S * sizeof(int32_t));
        token_sims = (float *) p;   p += pad((size_t) op.T * op.M * sizeof(float));
        orders     = (int32_t *) p; p += nth * pad(op.M * sizeof(int32_t));
        chunk_sims = (float *) p;
        per_thread_order = pad(op.M * sizeof(int32_t)) / sizeof(int32_t);
    }
    static size_t size(const amb_op & op, int nth);

    row_scratch scratch(const amb_op & op, int ith, int64_t t) const {
        return row_scratch{token_sims + t * op.M, slots + (int64_t) op.seq_of(t) * op.M, thread_ints(ith)};
    }
    int32_t * thread_ints(int ith) const { return orders + ith * per_thread_order; } // [M] per thread

private:
    size_t per_thread_order;
};

size_t chunk_rows_max(const amb_op & op) {
    return (size_t) std::min<int64_t>(op.hp.chunk, std::max<int64_t>(op.T, 1));
}

size_t amb_work::size(const amb_op & op, int nth) {
    return pad(op.T * sizeof(int32_t)) + pad(op.T * sizeof(float)) + pad((size_t) op.S * op.M * sizeof(int32_t))
         + pad(op.S * sizeof(int32_t)) + pad((size_t) op.T * op.M * sizeof(float)) + nth * pad(op.M * sizeof(int32_t))
         + chunk_rows_max(op) * op.M * sizeof(float);
}

bool has_bank(const amb_op & op, int64_t t) {
    return op.seq_of(t) >= 0 && op.seq_of(t) < op.S;
}

// Thread 0: each sequence's valid slots, in the bank its tokens retrieve from.
void list_slots(const amb_op & op, const amb_work & w) {
    for (int s = 0; s < op.S; ++s) {
        w.n_slots[s] = valid_slots(op.view(s, op.prompt_span(s)), w.slots + (int64_t) s * op.M);
    }
}

// All threads: norms of the rows, then the (token, slot) dot products, dealt out in turn (a bank
// with few valid slots, or one token, still gives every thread a share).
void token_similarities(const amb_op & op, const amb_work & w, int ith, int nth) {
    for (int64_t t = ith; t < op.T; t += nth) {
        w.norms[t] = clamped_norm(op.x_row(t), op.n_ff);
    }
    const int64_t n_pairs = op.T * op.M;
    for (int64_t p = ith; p < n_pairs; p += nth) {
        const int64_t t = p / op.M, i = p % op.M;
        if (has_bank(op, t) && i < w.n_slots[op.seq_of(t)]) {
            const bank_view b = op.view(op.seq_of(t), op.prompt_span(op.seq_of(t)));
            const int32_t j = w.slots[(int64_t) op.seq_of(t) * op.M + i];
            w.token_sims[p] = dot(op.x_row(t), b.keys + (int64_t) j * b.n_ff, b.n_ff);
        }
    }
}

// All threads, tokens split: the similarities from the dot products (as similarities() computes
// them), then the enhanced row.
void retrieve_tokens(const amb_op & op, const amb_work & w, int ith, int nth) {
    for (int64_t t = ith; t < op.T; t += nth) {
        if (!has_bank(op, t)) { // a sequence without a bank passes through unchanged
            std::memcpy(op.o_row(t), op.x_row(t), op.n_ff * sizeof(float));
            w.labels[t] = CASE_LOW;
            continue;
        }
        const int seq = op.seq_of(t);
        const bank_view b = op.view(seq, op.prompt_span(seq));
        const row_scratch s = w.scratch(op, ith, t);
        const int m = w.n_slots[seq];
        for (int i = 0; i < m; ++i) {
            s.sims[i] = s.sims[i] / (w.norms[t] * b.knorm[s.slots[i]]);
        }
        w.labels[t] = retrieve_row_from_sims(op.hp, b, s.slots, m, op.x_row(t), op.o_row(t), s);
    }
}

void log_cases(const amb_op & op, const amb_work & w) {
    for (int64_t t = 0; t < op.T; ++t) {
        if (op.seq_of(t) < 0 || op.seq_of(t) >= op.S) {
            continue;
        }
        int32_t * st = op.state(op.seq_of(t));
        const int32_t c = w.labels[t];
        int32_t & count = st[c == CASE_HIGH ? ST_N_HIGH : c == CASE_MID ? ST_N_MID : ST_N_LOW];
        count += count < INT32_MAX; // saturates: a count restored from a state may already be at the top
        const int32_t pos = op.tok[2 * t + 1];
        if (pos >= 0 && pos < op.n_pos()) {
            op.case_log(op.seq_of(t))[pos] = case_log_entry(c);
        }
    }
}

std::vector<int64_t> tokens_of_seq(const amb_op & op, int seq) {
    std::vector<int64_t> rows;
    for (int64_t t = 0; t < op.T; ++t) {
        if (op.seq_of(t) == seq) {
            rows.push_back(t);
        }
    }
    return rows;
}

// Prompt granularity: append rows to the sequence's pending buffer, storing each full chunk.
void buffer_rows(const amb_op & op, int seq, const std::vector<int64_t> & rows) {
    const pending_rows pend = pending_of(op.dst->src[7], seq);
    int32_t * st = op.state(seq);
    bank_view b = op.view(seq, false);
    if (st[ST_N_PENDING] < 0 || st[ST_N_PENDING] >= op.hp.chunk) {
        st[ST_N_PENDING] = 0; // never write outside pend (the host checks every state it loads)
    }
    for (int64_t t : rows) {
        const int32_t n = st[ST_N_PENDING];
        std::memcpy(pend.keys + n * op.n_ff, op.x_row(t), op.n_ff * sizeof(float));
        std::memcpy(pend.vals + n * op.n_ff, op.o_row(t), op.n_ff * sizeof(float));
        st[ST_N_PENDING] = n + 1;
        if (n + 1 == op.hp.chunk) {
            std::vector<const float *> X(op.hp.chunk), O(op.hp.chunk);
            for (int i = 0; i < op.hp.chunk; ++i) {
                X[i] = pend.keys + i * op.n_ff;
                O[i] = pend.vals + i * op.n_ff;
            }
            store_rows(op.hp, b, X.data(), O.data(), op.hp.chunk);
            st[ST_N_PENDING] = 0;
        }
    }
}

// The first chunk's similarities: the retrieval's, of the same rows against the same bank (nothing
// stored into it yet), for the rows finite_rows keeps.
void reuse_similarities(const amb_op & op, const amb_work & w, const std::vector<int64_t> & rows, size_t nc, int m) {
    int r = 0;
    for (size_t i = 0; i < nc; ++i) {
        const int64_t t = rows[i];
        if (storable(op.x_row(t), op.o_row(t), op.n_ff)) {
            std::memcpy(w.chunk_sims + (int64_t) r++ * m, w.token_sims + t * op.M, m * sizeof(float));
        }
    }
}

// Ubatch granularity: store the sequence's rows in chunks; similarities in parallel.
void store_seq(const amb_op & op, const amb_work & w, int seq, const std::vector<int64_t> & rows,
               const ggml_compute_params * params) {
    const int ith = params->ith, nth = params->nth;
    bank_view b = op.view(seq, false);
    int32_t * slots = w.thread_ints(ith);
    for (size_t c0 = 0; c0 < rows.size(); c0 += op.hp.chunk) {
        const size_t nc = std::min(rows.size() - c0, (size_t) op.hp.chunk);
        std::vector<const float *> X(nc), O(nc);
        for (size_t i = 0; i < nc; ++i) {
            X[i] = op.x_row(rows[c0 + i]);
            O[i] = op.o_row(rows[c0 + i]);
        }
        const chunk_rows cr = finite_rows(X.data(), O.data(), (int) nc, op.n_ff);
        const int m = valid_slots(b, slots);
        const int n = (int) cr.keys.size();
        if (c0 == 0) {
            if (ith == 0) {
                reuse_similarities(op, w, rows, nc, m);
            }
        } else {
            const int per = (n + nth - 1) / nth;
            store_similarities(b, slots, m, cr, std::min(n, ith * per), std::min(n, (ith + 1) * per), w.chunk_sims);
        }
        ggml_barrier(params->threadpool);
        if (ith == 0) {
            store_apply(op.hp, b, slots, m, cr, w.chunk_sims);
        }
        ggml_barrier(params->threadpool);
    }
}

} // namespace

size_t ggml_amb_work_size(const struct ggml_tensor * dst, int n_threads) {
    const amb_op op(const_cast<ggml_tensor *>(dst));
    return amb_work::size(op, n_threads);
}

void ggml_compute_forward_amb(const struct ggml_compute_params * params, struct ggml_tensor * dst) {
    const amb_op op(dst);
    const amb_work w(op, params->wdata, params->nth);

    if (params->ith == 0) {
        list_slots(op, w);
    }
    ggml_barrier(params->threadpool);
    token_similarities(op, w, params->ith, params->nth);
    ggml_barrier(params->threadpool);
    retrieve_tokens(op, w, params->ith, params->nth);
    ggml_barrier(params->threadpool);

    if (params->ith == 0) {
        log_cases(op, w);
    }
    for (int seq = 0; seq < op.S; ++seq) {
        const std::vector<int64_t> rows = tokens_of_seq(op, seq);
        if (rows.empty()) {
            continue;
        }
        if (op.prompt_span(seq)) {
            if (params->ith == 0) {
                buffer_rows(op, seq, rows);
            }
        } else {
            store_seq(op, w, seq, rows, params);
        }
    }
}
