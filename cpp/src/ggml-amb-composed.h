// pace-gguf: GGML_OP_AMB composed from standard ggml ops (design A of cpp/src/BACKENDS.md), for the
// backends without a fused AMB kernel (Metal, SYCL, ...): every op used here is one those backends
// already implement, so the AMB runs where its layer runs, with its bank in that device's memory.
//
// What it computes is GGML_OP_AMB's (pace-amb-math.h, the oracle) on the same tensors (bank, meta,
// state, and in prompt granularity snapshot and pending rows; shapes in ggml.h's ggml_amb): several
// sequences per ubatch, both modes, both granularities, store chunks within and across ubatches, the
// counters and case log, rows of no sequence passed through. Where it differs (see BACKENDS.md):
// sums are reduced in another order (results agree within rounding); ties between equal similarities
// follow ggml's top_k; counters pass through f32 (exact up to 2^24 per bank); non-finite rows are not
// stored but stand in as +-FLT_MAX in the store's sums.
//
// Used by the bank owner (pace-amb.cpp) and by the design tool cpp/tests/amb-composed.cpp. Depends on
// ggml alone; the rules it shares with the fused op come from pace-amb-math.h.
#pragma once

#include "ggml.h"

#include <cstdint>
#include <vector>

namespace pace_amb_composed {

// A layer's persistent tensors: GGML_OP_AMB's bank [n_ff, 2M, S], meta [3M, S] and state
// [HEADER + n_pos, S]; in prompt granularity its snapshot (snap, snap_meta) and pending rows `pend`
// [n_ff, 2 * chunk, S], else null; plus constants the graph indexes with (set by set_constants).
struct bank_tensors {
    ggml_tensor * bank;
    ggml_tensor * meta;
    ggml_tensor * state;
    ggml_tensor * snap;
    ggml_tensor * snap_meta;
    ggml_tensor * pend;
    ggml_tensor * ident;    // f32 [M, M], the identity: one-hot rows by get_rows
    ggml_tensor * iota;     // f32 [M]: 0 .. M-1
    ggml_tensor * pend_seq; // with pend: f32 [chunk * S, S], each pending row's sequence, one-hot
    ggml_tensor * pend_at;  // with pend: f32 [1, chunk * S], each pending row's index in its sequence's part
};

// Per-ubatch inputs, computed on the host from each row's sequence and position (set_rows_of).
struct row_inputs {
    ggml_tensor * seq_onehot; // f32 [T, S]: 1 at (row, its sequence); a row of no sequence is all zero
    ggml_tensor * value_row;  // f32 [1, T]: the row's first value row in `bank` seen as [n_ff, 2M*S]
    ggml_tensor * log_entry;  // i32 [T]: the row's case-log entry in the log seen as [n_pos * S]
    ggml_tensor * log_keep;   // f32 [1, T]: 1 if the row's case is logged; 0: its entry is rewritten as is
    ggml_tensor * ordinal;    // f32 [1, T]: the row's index among its sequence's rows of the ubatch
    ggml_tensor * pend_row;   // f32 [1, T]: the row's sequence's first row in `pend` seen as [n_ff, 2*chunk*S]
};

struct graph {
    ggml_tensor *              out;    // the enhanced rows, f32 [n_ff, T]
    ggml_tensor *              cases;  // f32 [1, T]: 0 low, 1 mid, 2 high
    std::vector<ggml_tensor *> writes; // the bank, meta and state updates: expand them into the graph
};

// The graph's bounds: each store chunk of a ubatch adds a copy of the store's ~100 nodes; each row a
// store reads (in prompt granularity every sequence's pending rows and the ubatch's) a few
// transposed copies of n_ff floats in the compute buffer.
constexpr int64_t MAX_CHUNKS     = 8;
constexpr int64_t MAX_STORE_ROWS = 4096;

// Whether the composed graph computes the op for these settings on ubatches of up to n_tokens rows
// in n_seq sequences: within the bounds above.
bool covers(const ggml_amb_params & hp, bool prompt_granularity, int64_t n_tokens, int64_t n_seq);

// pend, snap and snap_meta: null unless the layer is in prompt granularity.
bank_tensors new_constants(ggml_context * ctx, ggml_tensor * bank, ggml_tensor * meta, ggml_tensor * state,
                           ggml_tensor * snap, ggml_tensor * snap_meta, ggml_tensor * pend);
void set_constants(const bank_tensors & b); // after the constants are allocated

row_inputs new_row_inputs(ggml_context * ctx, int64_t n_rows, int64_t n_seq);
// rows: the bank (sequence) index and position of each row, as GGML_OP_AMB's `tokens` [2, T]; a
// sequence outside [0, S) has no bank, a position outside [0, n_pos) is not logged.
void set_rows_of(const row_inputs & in, const bank_tensors & b, const std::vector<int32_t> & rows);

// Whether a graph node runs a kernel (views, reshapes and permutations do not).
bool computes(const ggml_tensor * node);

// x: f32 [n_ff, T], contiguous; covers() holds. prompt_span: a prompt-granularity span is open (the
// host's llama_pace_amb_decode_begin took the snapshot): the rows retrieve against the snapshot and
// go to `pend`, and each full chunk there is stored into the live bank; the host flushes the rest at
// the end of the decode, as for GGML_OP_AMB.
graph build(ggml_context * ctx, ggml_tensor * x, const bank_tensors & b, const row_inputs & in, const ggml_amb_params & hp,
            bool prompt_span);

} // namespace pace_amb_composed
