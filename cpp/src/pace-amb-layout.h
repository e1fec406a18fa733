// The layout of GGML_OP_AMB's per-sequence tensors (shapes: ggml_amb in ggml.h), defined once for
// the two sides that read and write them: the CPU kernel (ggml-cpu-amb.cpp, in libggml-cpu) and the
// bank owner (pace-amb*.cpp, in libllama: banks, prompt-granularity flush, C API, session state).
// Like pace-amb-math.h, everything with code has internal linkage, so that each library keeps its own.
#pragma once

#include "ggml.h"
#include "pace-amb-math.h"

#include <cstdint>

namespace pace_amb {

// `state`, per sequence: a header of GGML_AMB_STATE_HEADER ints, then the case log, one int per
// position: case + 1, so that a cleared entry (0) means "no token seen there".
enum state_field : int32_t { ST_N_PENDING = 0, ST_N_HIGH = 1, ST_N_MID = 2, ST_N_LOW = 3, ST_FLAGS = 4, ST_COUNT };
static_assert(ST_COUNT <= GGML_AMB_STATE_HEADER, "the state fields must fit in GGML_AMB_STATE_HEADER");
constexpr int32_t FLAG_PROMPT_SPAN = 1;             // read the snapshot, buffer rows in pend
constexpr int32_t CASE_LOG_MAX     = CASE_HIGH + 1; // largest valid case log entry

namespace { // internal linkage, see pace-amb-math.h

// One sequence's header; its case log follows at + GGML_AMB_STATE_HEADER.
inline int32_t * state_row(const ggml_tensor * state, int64_t seq) {
    return (int32_t *) ((char *) state->data + seq * state->nb[1]);
}

inline int32_t * case_log_row(const ggml_tensor * state, int64_t seq) {
    return state_row(state, seq) + GGML_AMB_STATE_HEADER;
}

inline int32_t case_log_entry(int32_t c) { return c + 1; }
inline int32_t case_from_log(int32_t entry) { return entry - 1; } // -1: no token

// One sequence's bank of M slots from its part of `bank` (n_ff floats per row: M keys, then M
// values) and of `meta` (M floats each: usage, valid, key norms).
inline bank_view bank_view_at(float * bank, float * meta, int64_t n_ff, int32_t M) {
    return bank_view{n_ff, M, bank, bank + (int64_t) M * n_ff, meta, meta + M, meta + 2 * M};
}

// The same in the tensors bank [n_ff, 2M, n_seq] and meta [3M, n_seq] (or their snapshots).
inline bank_view bank_view_of(const ggml_tensor * bank, const ggml_tensor * meta, int64_t seq) {
    return bank_view_at((float *) ((char *) bank->data + seq * bank->nb[2]),
                        (float *) ((char *) meta->data + seq * meta->nb[1]),
                        bank->ne[0], (int32_t) (bank->ne[1] / 2));
}

// Prompt granularity: one sequence's rows waiting for a full store chunk in `pend` [n_ff, 2*chunk,
// n_seq]: raw keys in rows [0, chunk), their enhanced values in rows [chunk, 2*chunk).
struct pending_rows {
    float * keys;
    float * vals;
};

inline pending_rows pending_at(float * rows, int64_t n_ff, int64_t chunk) {
    return pending_rows{rows, rows + chunk * n_ff};
}

inline pending_rows pending_of(const ggml_tensor * pend, int64_t seq) {
    return pending_at((float *) ((char *) pend->data + seq * pend->nb[2]), pend->ne[0], pend->ne[1] / 2);
}

} // namespace
} // namespace pace_amb
