// pace-gguf: the bank owner of a context, shared by pace-amb.cpp (banks, graph, decode, C API),
// pace-amb-params.cpp (settings) and pace-amb-memory.cpp (sequence events, session state).
#pragma once

#include "pace.h"
#include "pace-amb.h"
#include "pace-amb-layout.h"

#include "ggml-amb-composed.h"
#include "ggml-cpp.h"

#include <string>
#include <vector>

struct llama_model;

// ---- settings (pace-amb-params.cpp) ---------------------------------------------------------------

llama_pace_amb_params llama_pace_amb_defaults();
// Empty when valid, else what is wrong, naming the parameter.
std::string llama_pace_amb_check(const llama_pace_amb_params & p, int64_t n_layer);
// The settings of the model's pace.amb.* keys; throws std::runtime_error naming the key if invalid.
llama_pace_amb_params llama_pace_amb_params_from_model(const llama_model & model);
// Why the model's settings cannot be used with this model's architecture, or empty.
std::string llama_pace_amb_check_arch(const llama_pace_amb_params & p, const llama_model & model);

// ---- the bank owner (pace-amb.cpp) ----------------------------------------------------------------

// How an AMB layer's op runs (amb_impl_of in pace-amb.cpp):
enum class amb_impl {
    host,     // GGML_OP_AMB's CPU kernel, the bank in host memory (on a GPU build: a round trip per ubatch)
    fused,    // GGML_OP_AMB on the layer's device, which has a kernel for it (CPU, RPC, Vulkan, CUDA)
    composed, // standard ggml ops on the layer's device (ggml-amb-composed.h): Metal, SYCL, ...
};

struct amb_layer {
    int32_t       il;
    int64_t       n_ff;
    amb_impl      impl      = amb_impl::host;
    ggml_tensor * bank      = nullptr; // f32 [n_ff, 2M, S]
    ggml_tensor * meta      = nullptr; // f32 [3M, S]: usage, valid, key norms
    ggml_tensor * state     = nullptr; // i32 [HEADER + n_pos, S]
    ggml_tensor * snap      = nullptr; // prompt granularity only
    ggml_tensor * snap_meta = nullptr;
    ggml_tensor * pend      = nullptr; // f32 [n_ff, 2*chunk, S], prompt granularity only
    ggml_tensor * ident     = nullptr; // the composed graph's constants (composed only)
    ggml_tensor * iota      = nullptr;
    ggml_tensor * pend_seq  = nullptr; // (composed, prompt granularity)
    ggml_tensor * pend_at   = nullptr;
};

// Everything a configuration allocates; built whole, then swapped in (all or nothing). Each layer's
// tensors live where the op will run: on the layer's device when that device runs the AMB (its
// backend's GGML_OP_AMB kernel, or the composed graph), else in host memory next to the CPU kernel.
// One buffer per buffer type, marked as weights so that the scheduler runs each op where its bank is.
struct amb_banks {
    llama_pace_amb_params                params;
    std::vector<amb_layer>               layers;      // ascending il
    std::vector<int32_t>                 layer_index; // il -> index in layers, or -1
    std::vector<ggml_context_ptr>        ctxs;        // one per buffer type
    std::vector<ggml_backend_buffer_ptr> bufs;
    uint32_t                             graph_nodes = 0; // tensors the layers add to a graph, at most
};

// ---- an AMB layer's tensors and where its op runs (pace-amb-layers.cpp) ---------------------------

namespace pace_amb {

hparams op_params_of(const llama_pace_amb_params & p);
// The tensors of one AMB layer for `p` (already validated), in `ctx`: bank, metadata and state, the
// snapshot and pending rows of prompt granularity, the composed graph's constants.
void new_layer_tensors(ggml_context * ctx, amb_layer & l, const llama_pace_amb_params & p, uint32_t n_seq, uint32_t n_pos);
ggml_context_ptr new_tensor_context(size_t n_layers); // room for the tensors of n_layers layers
pace_amb_composed::bank_tensors composed_tensors(const amb_layer & l);
ggml_backend_buffer_type_t host_buffer_type();
ggml_backend_dev_t layer_device(const llama_model & model, int32_t il); // the CPU if the model has none
// How layer l's op runs on `dev`, for contexts of n_seq sequences, n_pos positions and ubatches of up
// to n_ubatch rows; throws if PACE_AMB_IMPL is not auto, fused or composed.
amb_impl amb_impl_of(ggml_backend_dev_t dev, const amb_layer & l, const llama_pace_amb_params & p, uint32_t n_seq,
                     uint32_t n_pos, uint32_t n_ubatch);
// Tensors layer l (its impl set) adds to a graph, at most.
int graph_tensors(const amb_layer & l, const llama_pace_amb_params & p, uint32_t n_seq, uint32_t n_pos, uint32_t n_ubatch);

} // namespace pace_amb

// One sequence of one AMB layer, copied to the host (layout: pace-amb-layout.h). The parts not asked
// for stay empty.
struct amb_host_seq {
    enum part : int { STATE = 1, META = 2, BANK = 4, ALL = 7 };
    std::vector<float>   bank;  // keys then values, [2M x n_ff]
    std::vector<float>   meta;  // usage, valid, knorm [3M]
    std::vector<int32_t> state; // header, then the case log

    pace_amb::bank_view view(int64_t n_ff, int32_t M) { return pace_amb::bank_view_at(bank.data(), meta.data(), n_ff, M); }
    int32_t * header() { return state.data(); }
    int32_t * case_log() { return state.data() + GGML_AMB_STATE_HEADER; }
};

struct llama_pace_amb {
    const llama_model & model;
    const uint32_t      n_seq;
    const uint32_t      n_pos;
    const uint32_t      n_ubatch; // the largest ubatch an op will see

    amb_banks   banks;
    std::string model_params_error; // why the model's pace.amb.* keys were rejected (AMB then off)
    uint64_t    generation = 0;
    bool        prompt_span_open = false;
    bool        evicting = false; // inside llama_pace_amb_evict: its own seq_rm/seq_add keep the banks

    struct seq_info {
        llama_pos pos_min = -1; // range of positions absorbed by the bank since its last reset
        llama_pos pos_max = -1;
        int32_t   n_invalidations = 0;
        bool empty() const { return pos_max < 0; }
    };
    std::vector<seq_info> seqs;

    // Tokens of the current decode that belong to several sequences (see note_token).
    std::vector<llama_seq_id> shared_with; // per sequence: the first sequence of its shared tokens, or -1
    std::vector<char>         has_own;     // per sequence: it also had tokens of its own
    bool                      any_shared = false;

    // Graph-build check: how often each AMB layer was built, and any layer the hook could not serve.
    std::vector<int32_t> n_built;
    std::string          build_error;

    llama_pace_amb(const llama_model & model, uint32_t n_seq, uint32_t n_pos, uint32_t n_ubatch);

    const llama_pace_amb_params & params() const { return banks.params; }
    bool enabled() const { return !banks.layers.empty(); }
    pace_amb::hparams hparams() const;
    const amb_layer * layer(int32_t il) const;

    // Validates, allocates new banks and swaps them in; on any failure the old ones stay. Throws.
    void configure(const llama_pace_amb_params & p);
    size_t memory_size() const;

    bool valid_seq(llama_seq_id s) const { return s >= 0 && (uint32_t) s < n_seq; }
    size_t seq_bytes(const ggml_tensor * t) const;
    // Host access to one sequence's share of a per-sequence tensor, wherever the banks live
    // (ggml_backend_tensor_get/set: a memcpy in host memory, a transfer from a device).
    void read_seq(const ggml_tensor * t, llama_seq_id s, void * dst) const;
    void write_seq(ggml_tensor * t, llama_seq_id s, const void * src) const;
    amb_host_seq load(const amb_layer & l, llama_seq_id s, int parts) const;
    void save(const amb_layer & l, llama_seq_id s, const amb_host_seq & h, int parts) const;

    void reset(llama_seq_id s);                       // s < 0: all sequences
    void invalidate(llama_seq_id s, const char * why); // reset, counted and logged
    void copy_seq(llama_seq_id src, llama_seq_id dst);
    void note_token(const llama_seq_id * seq_ids, int32_t n_seq_id, llama_pos pos);

    void flush_pending();
    void drop_pending();
    void apply_shared();

    // Sequence events (from the memory wrapper).
    void on_clear();
    void on_seq_rm(llama_seq_id seq_id, llama_pos p0, llama_pos p1);
    void on_seq_cp(llama_seq_id src, llama_seq_id dst, llama_pos p0, llama_pos p1);
    void on_seq_keep(llama_seq_id seq_id);
    void on_seq_shift(llama_seq_id seq_id, llama_pos p0, llama_pos p1);
    // After llama_pace_amb_evict removed [p0, p1) and moved the later positions down: the banks stay,
    // their absorbed range and case log follow the positions.
    void on_evicted(llama_seq_id seq_id, llama_pos p0, llama_pos p1);
};

// ---- session state (pace-amb-memory.cpp) ----------------------------------------------------------

class llama_io_read_i;
class llama_io_write_i;

void llama_pace_amb_state_write(const llama_pace_amb * amb, llama_io_write_i & io, llama_seq_id seq_id);
// Reads and checks everything before it changes a bank: a state that fails a check throws and leaves
// the banks as they were.
void llama_pace_amb_state_read(llama_pace_amb * amb, llama_io_read_i & io, llama_seq_id seq_id);

// Records the message returned by llama_pace_last_error().
void llama_pace_set_error(const std::string & msg);
