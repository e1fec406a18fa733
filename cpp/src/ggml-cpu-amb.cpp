// CPU kernel of GGML_OP_AMB (compiled into libggml-cpu; dispatched from ggml-cpu.c).
//
// Phase 1, all threads: every token retrieves against its sequence's bank as it was before the op
//          (or against the frozen snapshot in prompt granularity) and writes its enhanced row.
// Phase 2: counters and the per-position case log (thread 0), then the store: for each sequence, its
//          rows in token order, in chunks; all threads compute the chunk's similarities, thread 0
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

// wdata layout: labels [T] i32 | nth x (sims, slots, order: [M] each) | chunk sims [chunk x M] f32
struct amb_work {
    int32_t * labels;
    char *    per_thread;
    size_t    per_thread_size;
    float *   chunk_sims;

    amb_work(const amb_op & op, void * wdata, int nth) {
        char * p = (char *) wdata;
        labels = (int32_t *) p;
        per_thread = p + labels_size(op);
        per_thread_size = thread_size(op);
        chunk_sims = (float *) (per_thread + nth * per_thread_size);
    }
    static size_t labels_size(const amb_op & op) { return GGML_PAD(op.T * sizeof(int32_t), 64); }
    static size_t thread_size(const amb_op & op) { return GGML_PAD(3 * (size_t) op.M * sizeof(float), 64); }

    row_scratch scratch(int ith, int M) const {
        char * p = per_thread + ith * per_thread_size;
        return row_scratch{(float *) p, (int32_t *) (p + M * sizeof(float)), (int32_t *) (p + 2 * M * sizeof(float))};
    }
};

size_t chunk_rows_max(const amb_op & op) {
    return (size_t) std::min<int64_t>(op.hp.chunk, std::max<int64_t>(op.T, 1));
}

void retrieve_tokens(const amb_op & op, const amb_work & w, int ith, int nth) {
    const row_scratch s = w.scratch(ith, op.M);
    for (int64_t t = ith; t < op.T; t += nth) {
        const int seq = op.seq_of(t);
        if (seq < 0 || seq >= op.S) { // a sequence without a bank passes through unchanged
            std::memcpy(op.o_row(t), op.x_row(t), op.n_ff * sizeof(float));
            w.labels[t] = CASE_LOW;
            continue;
        }
        const bank_view b = op.view(seq, op.prompt_span(seq));
        const int m = valid_slots(b, s.slots);
        w.labels[t] = retrieve_row(op.hp, b, s.slots, m, op.x_row(t), op.o_row(t), s);
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

// Ubatch granularity: store the sequence's rows in chunks; similarities in parallel.
void store_seq(const amb_op & op, const amb_work & w, int seq, const std::vector<int64_t> & rows,
               const ggml_compute_params * params) {
    const int ith = params->ith, nth = params->nth;
    bank_view b = op.view(seq, false);
    const row_scratch s = w.scratch(ith, op.M);
    for (size_t c0 = 0; c0 < rows.size(); c0 += op.hp.chunk) {
        const size_t nc = std::min(rows.size() - c0, (size_t) op.hp.chunk);
        std::vector<const float *> X(nc), O(nc);
        for (size_t i = 0; i < nc; ++i) {
            X[i] = op.x_row(rows[c0 + i]);
            O[i] = op.o_row(rows[c0 + i]);
        }
        const chunk_rows cr = finite_rows(X.data(), O.data(), (int) nc, op.n_ff);
        const int m = valid_slots(b, s.slots);
        const int n = (int) cr.keys.size();
        const int per = (n + nth - 1) / nth;
        store_similarities(b, s.slots, m, cr, std::min(n, ith * per), std::min(n, (ith + 1) * per), w.chunk_sims);
        ggml_barrier(params->threadpool);
        if (ith == 0) {
            store_apply(op.hp, b, s.slots, m, cr, w.chunk_sims);
        }
        ggml_barrier(params->threadpool);
    }
}

} // namespace

size_t ggml_amb_work_size(const struct ggml_tensor * dst, int n_threads) {
    const amb_op op(const_cast<ggml_tensor *>(dst));
    return amb_work::labels_size(op) + (size_t) n_threads * amb_work::thread_size(op)
         + chunk_rows_max(op) * op.M * sizeof(float);
}

void ggml_compute_forward_amb(const struct ggml_compute_params * params, struct ggml_tensor * dst) {
    const amb_op op(dst);
    const amb_work w(op, params->wdata, params->nth);

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
