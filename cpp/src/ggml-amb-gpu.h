// What the GPU kernels of GGML_OP_AMB share (cpp/src/cuda, cpp/src/vulkan): their bounds, the shapes
// they read from the op, and the scratch buffer their two passes hand over through. Host code only;
// amb.comp mirrors the constants (GLSL cannot include this), the CUDA kernels include them.
#pragma once

#include "ggml.h"

#include <cstdint>
#include <cstring>

namespace pace_amb_gpu {

// The shared-memory arrays these size stay under 16 KiB, Vulkan's guaranteed minimum.
constexpr int BLOCK     = 256;  // threads per block / invocations per workgroup
constexpr int NB        = 4;    // slots whose dot products one reduction pass sums together
constexpr int MAX_BANK  = 256;  // shared-memory bound on the slots per sequence (default bank: 100)
constexpr int MAX_CHUNK = 1024; // shared-memory bound on a store chunk's rows (default chunk: 1024)
constexpr int64_t MAX_TOKENS   = 1 << 28;   // a token index shares an int with three flags
constexpr int64_t MAX_ELEMENTS = INT32_MAX; // indices are 32-bit

inline ggml_amb_params params_of(const ggml_tensor * op) {
    ggml_amb_params hp;
    std::memcpy(&hp, op->op_params, sizeof(hp));
    return hp;
}

// The shapes and row strides (in elements) the kernels index with; the Vulkan push constants and the
// CUDA kernel arguments start with it.
struct shape {
    uint32_t n_ff, T, M, S;
    uint32_t a_stride, o_stride, state_stride, n_pos;
    uint32_t has_snap, has_pend;
};

inline shape shape_of(const ggml_tensor * dst) {
    const ggml_tensor * a = dst->src[0];
    const ggml_tensor * bank = dst->src[2];
    const ggml_tensor * state = dst->src[4];
    shape s{};
    s.n_ff = (uint32_t) a->ne[0];
    s.T = (uint32_t) a->ne[1];
    s.M = (uint32_t) (bank->ne[1] / 2);
    s.S = (uint32_t) bank->ne[2];
    s.a_stride = (uint32_t) (a->nb[1] / sizeof(float));
    s.o_stride = (uint32_t) (dst->nb[1] / sizeof(float));
    s.state_stride = (uint32_t) (state->nb[1] / sizeof(int32_t));
    s.n_pos = (uint32_t) (state->ne[0] - GGML_AMB_STATE_HEADER);
    s.has_snap = dst->src[5] != nullptr;
    s.has_pend = dst->src[7] != nullptr;
    return s;
}

// The scratch between the two passes: similarities with M slots of R rows (T tokens, then in prompt
// granularity `chunk` pending rows per sequence, so that sequences storing at once never share a
// row), then per token its case and whether it can be stored.
inline size_t scratch_elements(const ggml_tensor * dst) {
    const int64_t T = dst->src[0]->ne[1], M = dst->src[2]->ne[1] / 2, S = dst->src[2]->ne[2];
    const int64_t R = T + (dst->src[7] != nullptr ? S * params_of(dst).chunk : 0);
    return (size_t) R * M + 2 * (size_t) T;
}

inline size_t scratch_bytes(const ggml_tensor * dst) {
    return sizeof(float) * scratch_elements(dst);
}

// Whether the kernels take this op: bank and chunk within their shared-memory bounds, 32-bit
// indices, rows as they index them.
inline bool kernels_take(const ggml_tensor * op) {
    const ggml_tensor * a = op->src[0];
    const ggml_tensor * bank = op->src[2];
    const ggml_tensor * pend = op->src[7];
    const ggml_amb_params hp = params_of(op);
    const bool fits = bank->ne[1] / 2 <= MAX_BANK && hp.chunk <= MAX_CHUNK && a->ne[1] < MAX_TOKENS
                   && ggml_nelements(bank) <= MAX_ELEMENTS && ggml_nelements(a) <= MAX_ELEMENTS
                   && ggml_nelements(op->src[4]) <= MAX_ELEMENTS
                   && (pend == nullptr || ggml_nelements(pend) <= MAX_ELEMENTS)
                   && scratch_elements(op) <= (size_t) MAX_ELEMENTS;
    // the store buffers rows in `pend` exactly when it reads the snapshot (the bank owner passes both)
    const bool layout = (op->src[5] == nullptr) == (pend == nullptr) && (pend == nullptr || ggml_is_contiguous(pend))
                     && a->nb[1] % sizeof(float) == 0 && ggml_is_contiguous_rows(op);
    return fits && layout;
}

} // namespace pace_amb_gpu
