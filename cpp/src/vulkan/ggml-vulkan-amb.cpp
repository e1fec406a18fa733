// GGML_OP_AMB on ggml-vulkan (pace-gguf). Two dispatches of amb.comp with a barrier between them:
// retrieval (one workgroup per token), then the store (one workgroup per sequence, the bank's only
// writer). The retrieval hands the store each token's similarities, case and "storable" flag through
// a scratch buffer, ggml-vulkan's split-k buffer, as its other multi-pass ops do.
#include "ggml-vulkan-amb.h"

#include <algorithm>
#include <cstring>

namespace {

using namespace pace_amb_gpu;

static_assert(sizeof(vk_op_amb_push_constants) == 22 * 4, "amb.comp's push constants are 22 scalars");

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Mesa's software driver (lavapipe) ends every loop of a shader invocation once that invocation has
// run 65535 loop iterations in all (gallivm's LP_MAX_TGSI_LOOP_ITERATIONS, shared by all loops),
// silently: a store that needs more comes out wrong (seen: T=2048, n_ff=1536, chunk 1024). An
// upper bound of the iterations of the busiest invocation of either shader, to keep such ops on the
// CPU there. GPU drivers have no such limit.
int64_t loop_iterations_bound(const ggml_tensor * op) {
    const ggml_amb_params hp = params_of(op);
    const int64_t n_ff = op->src[0]->ne[0], T = op->src[0]->ne[1], M = op->src[2]->ne[1] / 2;
    const int64_t rows = std::min<int64_t>(T, hp.chunk), d_per = ceil_div(n_ff, BLOCK);
    const bool pend = op->src[7] != nullptr;
    // chunks stored per sequence; all but a ubatch's first compute their similarities in the store
    const int64_t chunks = pend ? ceil_div(T + hp.chunk - 1, hp.chunk) : ceil_div(std::max<int64_t>(T, 1), hp.chunk);
    const int64_t chunks_with_sims = pend ? chunks : chunks - 1;
    const int64_t retrieve = ceil_div(M, NB) * (d_per + 16) + 2 * M * ceil_div(M, BLOCK) + d_per * (hp.topk + hp.negk + 2) + 2 * M;
    const int64_t per_chunk = ceil_div(rows, BLOCK) * 2 * hp.store_topk * M          // classification
                            + d_per * (rows + M) + ceil_div(M, NB) * (d_per + 16)      // merge, key norms
                            + 3 * M * ceil_div(M, BLOCK) + ceil_div(rows, BLOCK) * rows // slot and row ranks
                            + (ceil_div(T, BLOCK) + 1) * T + d_per * M;                // gathering, replacement
    const int64_t sim_rows = pend ? hp.chunk : rows; // a pending flush stores a full chunk
    const int64_t sims = ceil_div(sim_rows * M, BLOCK) * (n_ff + 1) + ceil_div(sim_rows, BLOCK) * n_ff * 2;
    const int64_t store = chunks * per_chunk + chunks_with_sims * sims + ceil_div(T, BLOCK) + (pend ? T * (d_per + 4) : 0);
    return std::max(retrieve, store);
}

constexpr int64_t LAVAPIPE_LOOP_BUDGET = 65535;

} // namespace

bool ggml_vk_amb_supported(const vk_device & device, const ggml_tensor * op) {
    const bool within_driver = device->driver_id != vk::DriverId::eMesaLlvmpipe || loop_iterations_bound(op) < LAVAPIPE_LOOP_BUDGET;
    return kernels_take(op) && within_driver && scratch_bytes(op) <= device->max_buffer_size;
}

void ggml_vk_amb(ggml_backend_vk_context * ctx, vk_context & subctx, ggml_tensor * dst) {
    vk_pipeline & retrieve = ctx->device->pipeline_amb_retrieve_f32;
    vk_pipeline & store = ctx->device->pipeline_amb_store_f32;
    ggml_pipeline_request_descriptor_sets(ctx, retrieve, 1);
    ggml_pipeline_request_descriptor_sets(ctx, store, 1);

    const size_t scratch_size = scratch_bytes(dst);
    if (ctx->prealloc_size_split_k < scratch_size) {
        ctx->prealloc_size_split_k = scratch_size;
        ggml_vk_preallocate_buffers(ctx, subctx);
    }
    if (ctx->prealloc_split_k_need_sync) {
        ggml_vk_sync_buffers(ctx, subctx);
    }

    const vk_subbuffer bank = ggml_vk_tensor_subbuffer(ctx, dst->src[2]);
    const vk_subbuffer meta = ggml_vk_tensor_subbuffer(ctx, dst->src[3]);
    // absent snapshot / pending rows: bind the bank in their place; the shaders never touch them then
    const vk_subbuffer snap = dst->src[5] ? ggml_vk_tensor_subbuffer(ctx, dst->src[5]) : bank;
    const vk_subbuffer snap_meta = dst->src[6] ? ggml_vk_tensor_subbuffer(ctx, dst->src[6]) : meta;
    const vk_subbuffer pend = dst->src[7] ? ggml_vk_tensor_subbuffer(ctx, dst->src[7]) : bank;
    const vk_subbuffer scratch = ggml_vk_subbuffer(ctx, ctx->prealloc_split_k, 0);
    const std::initializer_list<vk::DescriptorBufferInfo> buffers = {
        ggml_vk_tensor_subbuffer(ctx, dst->src[0]), ggml_vk_tensor_subbuffer(ctx, dst->src[1]), bank, meta,
        ggml_vk_tensor_subbuffer(ctx, dst->src[4]), snap, snap_meta, pend, ggml_vk_tensor_subbuffer(ctx, dst), scratch,
    };
    const vk_op_amb_push_constants pc{shape_of(dst), params_of(dst)};
    const uint32_t max_groups = ctx->device->properties.limits.maxComputeWorkGroupCount[0];

    ggml_vk_dispatch_pipeline(ctx, subctx, retrieve, buffers, pc, {std::min(pc.sh.T, max_groups), 1, 1});
    ggml_vk_sync_buffers(ctx, subctx);
    ggml_vk_dispatch_pipeline(ctx, subctx, store, buffers, pc, {std::min(pc.sh.S, max_groups), 1, 1});
    ctx->prealloc_split_k_need_sync = true;
}
