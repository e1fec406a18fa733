// GGML_OP_AMB on ggml-vulkan (pace-gguf): the dispatch of the two shaders in amb.comp. Compiled into
// libggml-vulkan; cpp/patches/0010 hooks it into ggml-vulkan.cpp (pipelines, graph, supports_op).
#pragma once

#include "ggml-vulkan-common.h"
#include "../ggml-amb-gpu.h"

// Mirrors amb.comp's push constants: the shapes (10 uints), then the op's parameters as
// ggml_amb_params lays them out (7 floats, 5 ints: std430 places them the same way).
struct vk_op_amb_push_constants {
    pace_amb_gpu::shape sh;
    ggml_amb_params     hp;
};

// Whether the shaders take this op: bank and chunk within their shared-memory bounds, 32-bit indices.
bool ggml_vk_amb_supported(const vk_device & device, const ggml_tensor * op);

void ggml_vk_amb(ggml_backend_vk_context * ctx, vk_context & subctx, ggml_tensor * dst);
