// A ggml backend device, "CUDAHost0", that runs GGML_OP_AMB through the CUDA kernels' own source
// (cpp/src/cuda/amb-kernels.cuh) on host fibers (amb-cuda-host.h), and every other op on the CPU
// backend. Compiled into test-backend-ops only: with PACE_CUDA_HOST=1 (cpp/backend_ops.py
// --cuda-host), test-backend-ops compares the CUDA kernels with the CPU op on machines without a GPU.
#include "amb-cuda-host.h"

#include "cuda/amb-kernels.cuh"

#include "ggml-backend-impl.h"
#include "ggml-backend.h"
#include "ggml-impl.h"

namespace {

using pace_amb_gpu::BLOCK;

// Fibers switch some 500,000 times a second here (two system calls each): a bound on the switches
// one op may take (barrier phases times threads, roughly), so that test-backend-ops' largest cases
// (2048 tokens) stay with real GPUs and the emulation takes minutes.
constexpr int64_t MAX_EMULATED_SWITCHES = int64_t(1) << 27;

int64_t emulated_switches(const ggml_tensor * op) {
    const int64_t T = op->src[0]->ne[1], M = op->src[2]->ne[1] / 2;
    const int64_t phases_per_row = (M / pace_amb_gpu::NB + 1) * 10; // a tree reduction per NB slots
    const int64_t chunks = T / pace_amb_gpu::params_of(op).chunk + 1;
    return (T + chunks) * phases_per_row * BLOCK;
}

struct host_context {
    ggml_backend_t cpu = nullptr;
    cuda_host::block_runner block{(uint32_t) BLOCK};
    std::vector<float> scratch;
};

void run_amb(host_context & ctx, ggml_tensor * op) {
    ctx.scratch.assign(pace_amb_gpu::scratch_elements(op), NAN); // never read before written
    const pace_amb_cuda::args p = pace_amb_cuda::args_of(op, ctx.scratch.data());
    if (p.sh.T == 0) {
        return;
    }
    cuda_host::launch(pace_amb_cuda::amb_retrieve, p.sh.T, ctx.block, p);
    cuda_host::launch(pace_amb_cuda::amb_store, p.sh.S, ctx.block, p);
}

const char * backend_name(ggml_backend_t) { return "CUDAHost"; }

void backend_free(ggml_backend_t backend) {
    auto * ctx = (host_context *) backend->context;
    ggml_backend_free(ctx->cpu);
    delete ctx;
    delete backend;
}

ggml_status graph_compute(ggml_backend_t backend, ggml_cgraph * graph) {
    auto * ctx = (host_context *) backend->context;
    for (int i = 0; i < graph->n_nodes; ++i) {
        ggml_tensor * node = graph->nodes[i];
        if (node->op == GGML_OP_AMB) {
            run_amb(*ctx, node);
            continue;
        }
        ggml_cgraph one = ggml_graph_view(graph, i, i + 1);
        const ggml_status status = ggml_backend_graph_compute(ctx->cpu, &one);
        if (status != GGML_STATUS_SUCCESS) {
            return status;
        }
    }
    return GGML_STATUS_SUCCESS;
}

const ggml_guid_t backend_guid() {
    static ggml_guid guid = {0x70, 0x61, 0x63, 0x65, 0x2d, 0x63, 0x75, 0x64, 0x61, 0x2d, 0x68, 0x6f, 0x73, 0x74, 0x00, 0x01};
    return &guid;
}

const ggml_backend_i backend_iface = {
    /* .get_name            = */ backend_name,
    /* .free                = */ backend_free,
    /* .set_tensor_async    = */ nullptr,
    /* .get_tensor_async    = */ nullptr,
    /* .set_tensor_2d_async = */ nullptr,
    /* .get_tensor_2d_async = */ nullptr,
    /* .cpy_tensor_async    = */ nullptr,
    /* .synchronize         = */ nullptr,
    /* .graph_plan_create   = */ nullptr,
    /* .graph_plan_free     = */ nullptr,
    /* .graph_plan_update   = */ nullptr,
    /* .graph_plan_compute  = */ nullptr,
    /* .graph_compute       = */ graph_compute,
    /* .event_record        = */ nullptr,
    /* .event_wait          = */ nullptr,
    /* .graph_optimize      = */ nullptr,
};

ggml_backend_dev_t cpu_device() { return ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU); }

const char * dev_name(ggml_backend_dev_t) { return "CUDAHost0"; }
const char * dev_description(ggml_backend_dev_t) { return "pace-gguf's CUDA AMB kernels on host fibers (tests only)"; }
void dev_memory(ggml_backend_dev_t, size_t * free, size_t * total) { *free = *total = 0; }
enum ggml_backend_dev_type dev_type(ggml_backend_dev_t) { return GGML_BACKEND_DEVICE_TYPE_GPU; }

void dev_props(ggml_backend_dev_t dev, ggml_backend_dev_props * props) {
    *props = {};
    props->name = dev_name(dev);
    props->description = dev_description(dev);
    props->type = dev_type(dev);
}

ggml_backend_t dev_init(ggml_backend_dev_t dev, const char *) {
    auto * ctx = new host_context;
    ctx->cpu = ggml_backend_dev_init(cpu_device(), nullptr);
    return new ggml_backend{backend_guid(), backend_iface, dev, ctx};
}

ggml_backend_buffer_type_t dev_buffer_type(ggml_backend_dev_t) { return ggml_backend_dev_buffer_type(cpu_device()); }

bool dev_supports_op(ggml_backend_dev_t, const ggml_tensor * op) {
    if (op->op == GGML_OP_AMB) {
        return pace_amb_gpu::kernels_take(op) && emulated_switches(op) <= MAX_EMULATED_SWITCHES;
    }
    return ggml_backend_dev_supports_op(cpu_device(), op);
}

bool dev_supports_buft(ggml_backend_dev_t, ggml_backend_buffer_type_t buft) { return ggml_backend_buft_is_host(buft); }

const ggml_backend_device_i device_iface = {
    /* .get_name             = */ dev_name,
    /* .get_description      = */ dev_description,
    /* .get_memory           = */ dev_memory,
    /* .get_type             = */ dev_type,
    /* .get_props            = */ dev_props,
    /* .init_backend         = */ dev_init,
    /* .get_buffer_type      = */ dev_buffer_type,
    /* .get_host_buffer_type = */ nullptr,
    /* .buffer_from_host_ptr = */ nullptr,
    /* .supports_op          = */ dev_supports_op,
    /* .supports_buft        = */ dev_supports_buft,
    /* .offload_op           = */ nullptr,
    /* .event_new            = */ nullptr,
    /* .event_free           = */ nullptr,
    /* .event_synchronize    = */ nullptr,
};

const char * reg_name(ggml_backend_reg_t) { return "CUDAHost"; }
size_t reg_device_count(ggml_backend_reg_t) { return 1; }
ggml_backend_dev_t reg_device(ggml_backend_reg_t reg, size_t) {
    static ggml_backend_device device = {device_iface, reg, nullptr};
    return &device;
}

const ggml_backend_reg_i reg_iface = {
    /* .get_name         = */ reg_name,
    /* .get_device_count = */ reg_device_count,
    /* .get_device       = */ reg_device,
    /* .get_proc_address = */ nullptr,
};

} // namespace

// Registers the device with ggml (once). Called by test-backend-ops-amb.inc when PACE_CUDA_HOST is set.
void pace_register_cuda_host() {
    static ggml_backend_reg reg = {GGML_BACKEND_API_VERSION, reg_iface, nullptr};
    ggml_backend_register(&reg);
}
