// pace-gguf: the tensors of an AMB layer and where its op runs (the kernel of the layer's device, the
// composed graph, or the CPU), asked of the backends with tensors of the layer's shapes. Used by the
// bank owner (pace-amb.cpp) when it allocates banks and builds graphs, and by the C API's
// llama_pace_amb_layer_bytes and llama_pace_amb_device_impl.
#include "pace-amb-impl.h"

#include "llama-model.h"

#include "ggml-backend.h"

#include <algorithm>
#include <cstdlib>
#include <stdexcept>

namespace pace_amb {

hparams op_params_of(const llama_pace_amb_params & p) {
    return {p.theta_high, p.theta_low, p.alpha, p.w_high, p.w_mid, p.lambda, p.momentum,
            p.topk, p.negk, p.store_topk, p.chunk, p.mode};
}

// The tensors of one AMB layer for `p` (already validated), in `ctx`: bank, metadata and state, plus
// the snapshot and pending rows of prompt granularity. One place for the layout's shapes, which
// allocate_banks allocates and llama_pace_amb_layer_bytes measures.
void new_layer_tensors(ggml_context * ctx, amb_layer & l, const llama_pace_amb_params & p, uint32_t n_seq, uint32_t n_pos) {
    const int64_t M = p.bank_size, S = n_seq;
    l.bank  = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, l.n_ff, 2 * M, S);
    l.meta  = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 3 * M, S);
    l.state = ggml_new_tensor_2d(ctx, GGML_TYPE_I32, GGML_AMB_STATE_HEADER + (int64_t) n_pos, S);
    ggml_format_name(l.bank, "pace_amb_bank-%d", l.il);
    ggml_format_name(l.meta, "pace_amb_meta-%d", l.il);
    ggml_format_name(l.state, "pace_amb_state-%d", l.il);
    if (p.granularity == LLAMA_PACE_AMB_GRANULARITY_PROMPT) {
        l.snap      = ggml_dup_tensor(ctx, l.bank);
        l.snap_meta = ggml_dup_tensor(ctx, l.meta);
        l.pend      = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, l.n_ff, 2 * (int64_t) p.chunk, S);
    }
    if (l.impl == amb_impl::composed) {
        const pace_amb_composed::bank_tensors b =
            pace_amb_composed::new_constants(ctx, l.bank, l.meta, l.state, l.snap, l.snap_meta, l.pend);
        l.ident    = b.ident;
        l.iota     = b.iota;
        l.pend_seq = b.pend_seq;
        l.pend_at  = b.pend_at;
    }
}

pace_amb_composed::bank_tensors composed_tensors(const amb_layer & l) {
    return {l.bank, l.meta, l.state, l.snap, l.snap_meta, l.pend, l.ident, l.iota, l.pend_seq, l.pend_at};
}

constexpr int TENSORS_PER_LAYER = 10;

ggml_context_ptr new_tensor_context(size_t n_layers) {
    ggml_init_params ip = {ggml_tensor_overhead() * TENSORS_PER_LAYER * n_layers + 1024, nullptr, true};
    ggml_context_ptr ctx(ggml_init(ip));
    if (!ctx) {
        throw std::runtime_error("failed to create the AMB tensor context");
    }
    return ctx;
}

ggml_backend_buffer_type_t host_buffer_type() {
    return ggml_backend_dev_buffer_type(ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU));
}

namespace {

// Whether `dev`'s backend runs GGML_OP_AMB on layer l's tensors: asked of the backend itself with
// an op of the layer's shapes and n_tokens rows. The banks' placement asks with the largest ubatch:
// a backend may take small ops only (ggml-vulkan on lavapipe does), and once a bank lives on the
// device every later op must run there.
bool device_runs_amb(ggml_backend_dev_t dev, const amb_layer & l, const llama_pace_amb_params & p, uint32_t n_seq, uint32_t n_pos,
                     uint32_t n_tokens) {
    ggml_context_ptr ctx = new_tensor_context(2);
    amb_layer probe{l.il, l.n_ff};
    new_layer_tensors(ctx.get(), probe, p, n_seq, n_pos);
    ggml_tensor * a = ggml_new_tensor_2d(ctx.get(), GGML_TYPE_F32, l.n_ff, n_tokens);
    ggml_tensor * tokens = ggml_new_tensor_2d(ctx.get(), GGML_TYPE_I32, 2, n_tokens);
    ggml_tensor * out = ggml_amb(ctx.get(), a, tokens, probe.bank, probe.meta, probe.state,
                                 probe.snap, probe.snap_meta, probe.pend, op_params_of(p));
    return ggml_backend_dev_supports_op(dev, out);
}

// The composed graph of layer l's shapes on n_tokens rows (in a prompt span or not), built without
// data (a probe).
struct composed_probe {
    static constexpr size_t MAX_TENSORS = 16384; // a few hundred per store chunk, views included; 8 chunks at most
    ggml_context_ptr ctx;
    ggml_cgraph *    gf       = nullptr;
    int              n_tensors = 0;         // what the graph adds: row inputs, nodes and views

    composed_probe(const amb_layer & l, const llama_pace_amb_params & p, uint32_t n_seq, uint32_t n_pos, uint32_t n_tokens,
                   bool span) {
        ggml_init_params ip = {ggml_tensor_overhead() * MAX_TENSORS + ggml_graph_overhead_custom(MAX_TENSORS, false), nullptr, true};
        ctx.reset(ggml_init(ip));
        if (!ctx) {
            throw std::runtime_error("failed to create the AMB probe context");
        }
        amb_layer probe{l.il, l.n_ff, amb_impl::composed};
        new_layer_tensors(ctx.get(), probe, p, n_seq, n_pos);
        ggml_tensor * a = ggml_new_tensor_2d(ctx.get(), GGML_TYPE_F32, l.n_ff, n_tokens);
        const int before = count_tensors();
        const pace_amb_composed::row_inputs in = pace_amb_composed::new_row_inputs(ctx.get(), n_tokens, n_seq);
        const pace_amb_composed::graph g = pace_amb_composed::build(ctx.get(), a, composed_tensors(probe), in, op_params_of(p), span);
        n_tensors = count_tensors() - before;
        gf = ggml_new_graph_custom(ctx.get(), MAX_TENSORS, false);
        ggml_build_forward_expand(gf, g.out);
        for (ggml_tensor * w : g.writes) {
            ggml_build_forward_expand(gf, w);
        }
    }

    int count_tensors() const {
        int n = 0;
        for (ggml_tensor * t = ggml_get_first_tensor(ctx.get()); t; t = ggml_get_next_tensor(ctx.get(), t)) {
            ++n;
        }
        return n;
    }
};

// Whether a prompt span can be open for layers of these settings: in prompt granularity only.
std::vector<bool> spans_of(const llama_pace_amb_params & p) {
    return p.granularity == LLAMA_PACE_AMB_GRANULARITY_PROMPT ? std::vector<bool>{false, true} : std::vector<bool>{false};
}

// Whether `dev`'s backend runs every op of the composed graph of layer l's shapes (as above), in and
// out of a prompt span.
bool device_runs_composed(ggml_backend_dev_t dev, const amb_layer & l, const llama_pace_amb_params & p, uint32_t n_seq,
                          uint32_t n_pos, uint32_t n_tokens) {
    for (const bool span : spans_of(p)) {
        const composed_probe probe(l, p, n_seq, n_pos, n_tokens, span);
        for (int i = 0; i < ggml_graph_n_nodes(probe.gf); ++i) {
            ggml_tensor * node = ggml_graph_node(probe.gf, i);
            if (pace_amb_composed::computes(node) && !ggml_backend_dev_supports_op(dev, node)) {
                return false;
            }
        }
    }
    return true;
}

// PACE_AMB_IMPL: "auto" (or unset), "fused" (never the composed graph) or "composed" (the composed
// graph wherever it computes the op, the CPU included: how tests check it against the fused op).
std::string impl_choice() {
    const char * env = std::getenv("PACE_AMB_IMPL");
    const std::string choice = env && *env ? env : "auto";
    if (choice != "auto" && choice != "fused" && choice != "composed") {
        throw std::runtime_error("PACE_AMB_IMPL must be auto, fused or composed, got '" + choice + "'");
    }
    return choice;
}

} // namespace

// How layer l's AMB runs on device `dev`: its backend's GGML_OP_AMB kernel; else the composed graph
// if the backend runs all of it and it covers the settings (pace_amb_composed::covers); else the CPU
// kernel with the bank in host memory (a bank on a device that cannot run the op would be copied to
// the CPU for every ubatch, and the op's updates would go to the copy).
amb_impl amb_impl_of(ggml_backend_dev_t dev, const amb_layer & l, const llama_pace_amb_params & p, uint32_t n_seq,
                     uint32_t n_pos, uint32_t n_ubatch) {
    const std::string choice = impl_choice();
    const bool on_cpu = ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_CPU;
    auto composable = [&] {
        return pace_amb_composed::covers(op_params_of(p), p.granularity == LLAMA_PACE_AMB_GRANULARITY_PROMPT, n_ubatch, n_seq) &&
               (on_cpu || device_runs_composed(dev, l, p, n_seq, n_pos, n_ubatch));
    };
    if (choice == "composed" && composable()) {
        return amb_impl::composed;
    }
    if (on_cpu || device_runs_amb(dev, l, p, n_seq, n_pos, n_ubatch)) {
        return amb_impl::fused;
    }
    if (choice == "auto" && composable()) {
        return amb_impl::composed;
    }
    return amb_impl::host;
}

ggml_backend_dev_t layer_device(const llama_model & model, int32_t il) {
    ggml_backend_dev_t dev = model.dev_layer(il);
    return dev ? dev : ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
}

int graph_tensors(const amb_layer & l, const llama_pace_amb_params & p, uint32_t n_seq, uint32_t n_pos, uint32_t n_ubatch) {
    if (l.impl != amb_impl::composed) {
        return 4; // the op, its row input and a contiguous copy of the activation, and one to spare
    }
    // small ubatches gather the neighbours' values, large ones multiply; a span stores through pend: count all
    int n = 0;
    for (const bool span : spans_of(p)) {
        for (const uint32_t n_tokens : {1u, n_ubatch}) {
            n = std::max(n, composed_probe(l, p, n_seq, n_pos, n_tokens, span).n_tensors);
        }
    }
    return n;
}

} // namespace pace_amb
