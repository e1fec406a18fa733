// GGML_OP_AMB on ggml-cuda (pace-gguf): what cpp/patches/0011 calls from ggml-cuda.cu. Kept free of
// ggml-cuda's own headers (they need cuBLAS), so that amb.cu compiles on its own for every
// architecture: CI checks it with nvcc alone (tests/test_cuda_compile.py).
#pragma once

#include "ggml.h"

#include <cstddef>

// cudaStream_t comes from the includer: ggml-cuda.cu (through its common.cuh) or amb.cu.

// Whether the kernels take this op (shared-memory bounds, 32-bit indices: ggml-amb-gpu.h).
bool pace_amb_cuda_supported(const ggml_tensor * op);

// Bytes of scratch the op needs between its two kernels (the caller allocates it from its pool).
size_t pace_amb_cuda_scratch_bytes(const ggml_tensor * op);

// Launches the retrieval, then the store, on `stream`; `scratch` holds pace_amb_cuda_scratch_bytes.
void pace_amb_cuda_launch(ggml_tensor * dst, cudaStream_t stream, void * scratch);
