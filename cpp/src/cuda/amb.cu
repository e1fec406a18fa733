// GGML_OP_AMB on ggml-cuda (pace-gguf): launches the two kernels of amb-kernels.cuh on the backend's
// stream, the retrieval (one block per token) and then the store (one block per sequence). The stream
// orders them: the store reads the retrieval's scratch and enhanced rows.
#include <cuda_runtime.h>

#include "amb.cuh"
#include "amb-kernels.cuh"

#include "../ggml-amb-gpu.h"

bool pace_amb_cuda_supported(const ggml_tensor * op) {
    return pace_amb_gpu::kernels_take(op);
}

size_t pace_amb_cuda_scratch_bytes(const ggml_tensor * op) {
    return pace_amb_gpu::scratch_bytes(op);
}

void pace_amb_cuda_launch(ggml_tensor * dst, cudaStream_t stream, void * scratch) {
    const pace_amb_cuda::args p = pace_amb_cuda::args_of(dst, scratch);
    if (p.sh.T == 0) {
        return; // nothing to retrieve, log or store
    }
    pace_amb_cuda::amb_retrieve<<<p.sh.T, pace_amb_gpu::BLOCK, 0, stream>>>(p);
    pace_amb_cuda::amb_store<<<p.sh.S, pace_amb_gpu::BLOCK, 0, stream>>>(p);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) {
        GGML_ABORT("pace-gguf: GGML_OP_AMB kernel launch failed: %s", cudaGetErrorString(err));
    }
}
