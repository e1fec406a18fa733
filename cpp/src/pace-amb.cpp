// pace-gguf: the Activation Memory Bank of a llama_context.
//
// * configuration: the model's pace.amb.* GGUF keys (AMB disabled when absent), overridable per
//   context through llama_pace_amb_set_params(); invalid values are rejected, never clamped;
// * banks: one per (AMB layer, sequence), fp32, in a host buffer (the op has a CPU kernel; on a GPU
//   build the scheduler runs it on the CPU next to its bank);
// * graph: GGML_OP_AMB on the FFN activation of AMB layers (llama_pace_amb_build);
// * lifecycle: reset on clear/seq_rm, deep copy on seq_cp, saved with the session state.
//
// Partial removal (spec 6.12): the bank of a sequence remembers the range of positions it has
// absorbed. Removing positions outside that range keeps the bank (llama-cpp-python trims the unused
// tail before every eval); removing or shifting any position inside it resets the bank, because a
// bank cannot "un-store" rows. Such resets are counted (stats.n_invalidations) and logged.
#include "pace-amb.h"

#include "llama-context.h"
#include "llama-graph.h"
#include "llama-impl.h"
#include "llama-io.h"
#include "llama-model.h"
#include "pace-amb-math.h"

#include "ggml-backend.h"
#include "ggml-cpp.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

constexpr uint32_t STATE_MAGIC   = 0x424d4150; // "PAMB"
constexpr uint32_t STATE_VERSION = 1;
constexpr int32_t  MAX_BANK_SIZE = 4096;
constexpr int32_t  MAX_CHUNK     = 65536;

enum : int32_t { ST_N_PENDING = 0, ST_N_HIGH = 1, ST_N_MID = 2, ST_N_LOW = 3, ST_FLAGS = 4 };
constexpr int32_t FLAG_PROMPT_SPAN = 1;

thread_local std::string g_last_error;

// ---- configuration -------------------------------------------------------------------------------

llama_pace_amb_params default_params() {
    llama_pace_amb_params p = {};
    p.enabled     = false;
    p.mode        = LLAMA_PACE_AMB_MODE_CODE;
    p.granularity = LLAMA_PACE_AMB_GRANULARITY_UBATCH;
    p.bank_size   = 100;
    p.topk        = 5;
    p.negk        = 2;
    p.store_topk  = 5;
    p.chunk       = 1024;
    p.theta_high  = 0.75f;
    p.theta_low   = 0.25f;
    p.alpha       = 0.2f;
    p.w_high      = 1.0f;
    p.w_mid       = 0.5f;
    p.lambda      = 0.1f;
    p.momentum    = 0.5f;
    p.n_layers    = 0;
    return p;
}

// Empty string when valid, else what is wrong (naming the parameter).
std::string validate(const llama_pace_amb_params & p, uint32_t n_layer) {
    std::ostringstream err;
    auto unit = [&](const char * name, float v) {
        if (!(std::isfinite(v) && v >= 0.0f && v <= 1.0f)) {
            err << name << " must be in [0, 1], got " << v;
        }
    };
    if (p.mode != LLAMA_PACE_AMB_MODE_CODE && p.mode != LLAMA_PACE_AMB_MODE_PAPER) {
        err << "mode must be 0 (code) or 1 (paper), got " << p.mode;
    } else if (p.granularity != LLAMA_PACE_AMB_GRANULARITY_UBATCH && p.granularity != LLAMA_PACE_AMB_GRANULARITY_PROMPT) {
        err << "granularity must be 0 (ubatch) or 1 (prompt), got " << p.granularity;
    } else if (p.bank_size < 1 || p.bank_size > MAX_BANK_SIZE) {
        err << "bank_size must be in [1, " << MAX_BANK_SIZE << "], got " << p.bank_size;
    } else if (p.topk < 1 || p.store_topk < 1 || p.negk < 0) {
        err << "topk and store_topk must be >= 1 and negk >= 0, got " << p.topk << ", " << p.store_topk << ", " << p.negk;
    } else if (p.chunk < 1 || p.chunk > MAX_CHUNK) {
        err << "chunk must be in [1, " << MAX_CHUNK << "], got " << p.chunk;
    } else if (p.n_layers < 0 || p.n_layers > LLAMA_PACE_MAX_LAYERS) {
        err << "n_layers must be in [0, " << LLAMA_PACE_MAX_LAYERS << "], got " << p.n_layers;
    } else if (p.enabled && p.n_layers == 0) {
        err << "AMB is enabled but no layers are given";
    }
    if (err.tellp() == 0) { unit("theta_high", p.theta_high); }
    if (err.tellp() == 0) { unit("theta_low", p.theta_low); }
    if (err.tellp() == 0) { unit("alpha", p.alpha); }
    if (err.tellp() == 0) { unit("momentum", p.momentum); }
    if (err.tellp() == 0 && p.theta_low > p.theta_high) {
        err << "theta_low (" << p.theta_low << ") must be <= theta_high (" << p.theta_high << ")";
    }
    if (err.tellp() == 0 && !(std::isfinite(p.w_high) && std::isfinite(p.w_mid) && std::isfinite(p.lambda))) {
        err << "w_high, w_mid and lambda must be finite";
    }
    for (int32_t i = 0; err.tellp() == 0 && i < p.n_layers; ++i) {
        if (p.layers[i] < 0 || (uint32_t) p.layers[i] >= n_layer) {
            err << "layer " << p.layers[i] << " is out of range: the model has layers 0.." << n_layer - 1;
        }
        for (int32_t j = 0; err.tellp() == 0 && j < i; ++j) {
            if (p.layers[j] == p.layers[i]) {
                err << "layer " << p.layers[i] << " is listed twice";
            }
        }
    }
    return err.str();
}

// GGUF values arrive as llama.cpp's string rendering of the key (numbers, "true", "[12, 26]").
struct gguf_reader {
    const llama_model & model;

    const std::string * find(const char * key) const {
        auto it = model.gguf_kv.find(key);
        return it == model.gguf_kv.end() ? nullptr : &it->second;
    }
    [[noreturn]] void fail(const char * key, const std::string & value, const char * want) const {
        throw std::runtime_error(std::string("invalid GGUF key ") + key + " = '" + value + "': expected " + want);
    }
    void get_bool(const char * key, bool & out) const {
        if (const auto * v = find(key)) {
            if (*v == "true" || *v == "1") { out = true; } else if (*v == "false" || *v == "0") { out = false; } else { fail(key, *v, "a bool"); }
        }
    }
    void get_int(const char * key, int32_t & out) const {
        if (const auto * v = find(key)) {
            char * end = nullptr;
            const long x = std::strtol(v->c_str(), &end, 10);
            if (v->empty() || *end != '\0') { fail(key, *v, "an integer"); }
            out = (int32_t) x;
        }
    }
    void get_float(const char * key, float & out) const {
        if (const auto * v = find(key)) {
            char * end = nullptr;
            const float x = std::strtof(v->c_str(), &end);
            if (v->empty() || *end != '\0') { fail(key, *v, "a number"); }
            out = x;
        }
    }
    void get_choice(const char * key, int32_t & out, const char * a, const char * b) const {
        if (const auto * v = find(key)) {
            if (*v == a) { out = 0; } else if (*v == b) { out = 1; } else { fail(key, *v, (std::string(a) + " or " + b).c_str()); }
        }
    }
    void get_layers(const char * key, llama_pace_amb_params & p) const {
        const auto * v = find(key);
        if (!v) {
            return;
        }
        if (v->size() < 2 || v->front() != '[' || v->back() != ']') { fail(key, *v, "an array of layer indices"); }
        std::string body = v->substr(1, v->size() - 2);
        std::replace(body.begin(), body.end(), ',', ' ');
        std::istringstream in(body);
        p.n_layers = 0;
        long x;
        while (in >> x) {
            if (p.n_layers == LLAMA_PACE_MAX_LAYERS) { fail(key, *v, "at most LLAMA_PACE_MAX_LAYERS layers"); }
            p.layers[p.n_layers++] = (int32_t) x;
        }
        if (!in.eof()) { fail(key, *v, "an array of layer indices"); }
    }
};

llama_pace_amb_params params_from_gguf(const llama_model & model) {
    llama_pace_amb_params p = default_params();
    const gguf_reader r{model};
    r.get_bool  ("pace.amb.enabled",     p.enabled);
    r.get_layers("pace.amb.layers",      p);
    r.get_int   ("pace.amb.bank_size",   p.bank_size);
    r.get_int   ("pace.amb.topk",        p.topk);
    r.get_int   ("pace.amb.negk",        p.negk);
    r.get_int   ("pace.amb.store_topk",  p.store_topk);
    r.get_int   ("pace.amb.chunk",       p.chunk);
    r.get_float ("pace.amb.theta_high",  p.theta_high);
    r.get_float ("pace.amb.theta_low",   p.theta_low);
    r.get_float ("pace.amb.alpha",       p.alpha);
    r.get_float ("pace.amb.w_high",      p.w_high);
    r.get_float ("pace.amb.w_mid",       p.w_mid);
    r.get_float ("pace.amb.lambda",      p.lambda);
    r.get_float ("pace.amb.momentum",    p.momentum);
    r.get_choice("pace.amb.mode",        p.mode, "code", "paper");
    r.get_choice("pace.amb.granularity", p.granularity, "ubatch", "prompt");
    const std::string err = validate(p, model.hparams.n_layer());
    if (!err.empty()) {
        throw std::runtime_error("invalid pace.amb.* metadata in the model: " + err);
    }
    return p;
}

// ---- sequence events: the registry from memory module to bank owner -------------------------------

std::mutex g_registry_mutex;
std::unordered_map<llama_memory_t, llama_pace_amb *> g_registry;

} // namespace

// ---- the bank owner --------------------------------------------------------------------------------

struct amb_layer {
    int32_t     il;
    int64_t     n_ff;
    ggml_tensor * bank      = nullptr; // f32 [n_ff, 2M, S]
    ggml_tensor * meta      = nullptr; // f32 [3M, S]
    ggml_tensor * state     = nullptr; // i32 [HEADER + n_pos, S]
    ggml_tensor * snap      = nullptr; // prompt granularity only
    ggml_tensor * snap_meta = nullptr;
    ggml_tensor * pend      = nullptr; // f32 [n_ff, 2*chunk, S], prompt granularity only
};

struct llama_pace_amb {
    const llama_model & model;
    llama_memory_t      memory;
    uint32_t            n_seq;
    uint32_t            n_pos;

    llama_pace_amb_params      params;
    std::vector<amb_layer>     layers;      // ascending il
    std::vector<int32_t>       layer_index; // il -> index in layers, or -1
    ggml_context_ptr           ctx;
    ggml_backend_buffer_ptr    buf;
    uint64_t                   generation = 0;
    bool                       prompt_span_open = false;

    struct seq_info {
        llama_pos pos_min = -1; // range of positions absorbed by the bank since its last reset
        llama_pos pos_max = -1;
        int32_t   n_invalidations = 0;
        bool empty() const { return pos_max < 0; }
    };
    std::vector<seq_info> seqs;

    llama_pace_amb(const llama_model & model, llama_memory_t memory, uint32_t n_seq, uint32_t n_pos) :
        model(model), memory(memory), n_seq(n_seq), n_pos(n_pos), seqs(n_seq) {}

    pace_amb::hparams hparams() const {
        const auto & p = params;
        return {p.theta_high, p.theta_low, p.alpha, p.w_high, p.w_mid, p.lambda, p.momentum,
                p.topk, p.negk, p.store_topk, p.chunk, p.mode};
    }

    const amb_layer * layer(int32_t il) const {
        return il >= 0 && il < (int32_t) layer_index.size() && layer_index[il] >= 0 ? &layers[layer_index[il]] : nullptr;
    }

    void configure(const llama_pace_amb_params & p) {
        params = p;
        layers.clear();
        buf.reset();
        ctx.reset();
        layer_index.assign(model.hparams.n_layer(), -1);
        seqs.assign(n_seq, seq_info{});
        prompt_span_open = false;
        ++generation;
        if (!p.enabled) {
            return;
        }
        std::vector<int32_t> ils(p.layers, p.layers + p.n_layers);
        std::sort(ils.begin(), ils.end());
        for (int32_t il : ils) {
            layer_index[il] = (int32_t) layers.size();
            layers.push_back(amb_layer{il, (int64_t) model.hparams.n_ff(il)});
        }
        allocate();
    }

    void allocate() {
        const bool prompt = params.granularity == LLAMA_PACE_AMB_GRANULARITY_PROMPT;
        ggml_init_params ip = {ggml_tensor_overhead() * 6 * layers.size() + 1024, nullptr, true};
        ctx.reset(ggml_init(ip));
        const int64_t M = params.bank_size, S = n_seq;
        for (auto & l : layers) {
            l.bank  = ggml_new_tensor_3d(ctx.get(), GGML_TYPE_F32, l.n_ff, 2 * M, S);
            l.meta  = ggml_new_tensor_2d(ctx.get(), GGML_TYPE_F32, 3 * M, S);
            l.state = ggml_new_tensor_2d(ctx.get(), GGML_TYPE_I32, GGML_AMB_STATE_HEADER + n_pos, S);
            ggml_format_name(l.bank, "pace_amb_bank-%d", l.il);
            ggml_format_name(l.meta, "pace_amb_meta-%d", l.il);
            ggml_format_name(l.state, "pace_amb_state-%d", l.il);
            if (prompt) {
                l.snap      = ggml_dup_tensor(ctx.get(), l.bank);
                l.snap_meta = ggml_dup_tensor(ctx.get(), l.meta);
                l.pend      = ggml_new_tensor_3d(ctx.get(), GGML_TYPE_F32, l.n_ff, 2 * (int64_t) params.chunk, S);
            }
        }
        // Host memory: the op's kernel is the CPU one, which updates the bank in place.
        ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
        buf.reset(ggml_backend_alloc_ctx_tensors_from_buft(ctx.get(), ggml_backend_dev_buffer_type(cpu)));
        if (!buf) {
            throw std::runtime_error("failed to allocate the activation memory bank");
        }
        ggml_backend_buffer_clear(buf.get(), 0);
        LLAMA_LOG_INFO("%s: pace AMB on %zu layer(s), bank %d x %d seq(s), %.2f MiB\n", __func__, layers.size(),
                params.bank_size, n_seq, ggml_backend_buffer_get_size(buf.get()) / 1024.0 / 1024.0);
    }

    size_t memory_size() const { return buf ? ggml_backend_buffer_get_size(buf.get()) : 0; }

    bool valid_seq(llama_seq_id s) const { return s >= 0 && (uint32_t) s < n_seq; }

    // Bytes of one sequence's part of a per-sequence tensor (the sequence is always the last dim).
    size_t seq_bytes(const ggml_tensor * t) const { return ggml_nbytes(t) / n_seq; }

    void clear_slice(ggml_tensor * t, llama_seq_id s) const {
        if (t) {
            ggml_backend_tensor_memset(t, 0, seq_bytes(t) * s, seq_bytes(t));
        }
    }
    void copy_slice(ggml_tensor * t, llama_seq_id src, llama_seq_id dst) const {
        if (t) {
            std::memmove((char *) t->data + seq_bytes(t) * dst, (const char *) t->data + seq_bytes(t) * src, seq_bytes(t));
        }
    }

    void reset(llama_seq_id s) {
        if (s < 0) {
            for (uint32_t i = 0; i < n_seq; ++i) {
                reset((llama_seq_id) i);
            }
            return;
        }
        if (!valid_seq(s)) {
            return;
        }
        for (auto & l : layers) {
            for (ggml_tensor * t : {l.bank, l.meta, l.state, l.snap, l.snap_meta, l.pend}) {
                clear_slice(t, s);
            }
        }
        const int32_t inv = seqs[s].n_invalidations;
        seqs[s] = seq_info{};
        seqs[s].n_invalidations = inv;
    }

    void invalidate(llama_seq_id s, const char * why) {
        if (!valid_seq(s) || seqs[s].empty()) {
            return;
        }
        LLAMA_LOG_INFO("%s: pace AMB bank of seq %d reset: %s touched positions it had absorbed [%d, %d]\n",
                __func__, s, why, seqs[s].pos_min, seqs[s].pos_max);
        const int32_t inv = seqs[s].n_invalidations + 1;
        reset(s);
        seqs[s].n_invalidations = inv;
    }

    void note_position(llama_seq_id s, llama_pos pos) {
        if (valid_seq(s)) {
            auto & si = seqs[s];
            si.pos_min = si.empty() ? pos : std::min(si.pos_min, pos);
            si.pos_max = std::max(si.pos_max, pos);
        }
    }

    int32_t * state_of(const amb_layer & l, llama_seq_id s) const {
        return (int32_t *) ((char *) l.state->data + s * l.state->nb[1]);
    }

    pace_amb::bank_view view(const amb_layer & l, llama_seq_id s) const {
        float * k = (float *) ((char *) l.bank->data + s * l.bank->nb[2]);
        float * m = (float *) ((char *) l.meta->data + s * l.meta->nb[1]);
        const int32_t M = params.bank_size;
        return {l.n_ff, M, k, k + (int64_t) M * l.n_ff, m, m + M, m + 2 * M};
    }

    // Prompt granularity: store the rows a multi-ubatch decode left in the pending buffers.
    void flush_pending() {
        const auto hp = hparams();
        for (auto & l : layers) {
            for (uint32_t s = 0; s < n_seq; ++s) {
                int32_t * st = state_of(l, s);
                const int32_t n = st[ST_N_PENDING];
                if (n > 0) {
                    const float * px = (const float *) ((const char *) l.pend->data + s * l.pend->nb[2]);
                    const float * po = px + (int64_t) params.chunk * l.n_ff;
                    std::vector<const float *> X(n), O(n);
                    for (int32_t i = 0; i < n; ++i) {
                        X[i] = px + i * l.n_ff;
                        O[i] = po + i * l.n_ff;
                    }
                    auto b = view(l, s);
                    pace_amb::store_rows(hp, b, X.data(), O.data(), n);
                }
                st[ST_N_PENDING] = 0;
                st[ST_FLAGS] &= ~FLAG_PROMPT_SPAN;
            }
        }
        prompt_span_open = false;
    }
};

// ---- graph -------------------------------------------------------------------------------------------

namespace {

// Per-row bank index (the sequence id, or -1 for ids beyond the context's n_seq_max) and position.
// A row is a token of the ubatch, except after llama.cpp has kept only the output tokens (the last
// layer's FFN runs on those alone, in ubatch order, as llm_graph_input_out_ids selects them).
class llm_graph_input_pace_amb : public llm_graph_input_i {
public:
    llm_graph_input_pace_amb(llama_pace_amb * amb, ggml_tensor * tokens) : amb(amb), tokens(tokens) {}

    void set_input(const llama_ubatch * ubatch) override {
        const int64_t n_rows = tokens->ne[1];
        const bool outputs_only = n_rows < (int64_t) ubatch->n_tokens;
        std::vector<int32_t> data;
        data.reserve(2 * n_rows);
        for (uint32_t i = 0; i < ubatch->n_tokens && (int64_t) data.size() < 2 * n_rows; ++i) {
            if (outputs_only && !ubatch->output[i]) {
                continue;
            }
            const llama_seq_id s = ubatch->seq_id[i][0];
            data.push_back(amb->valid_seq(s) ? s : -1);
            data.push_back(ubatch->pos[i]);
            amb->note_position(s, ubatch->pos[i]);
        }
        GGML_ASSERT((int64_t) data.size() == 2 * n_rows);
        ggml_backend_tensor_set(tokens, data.data(), 0, data.size() * sizeof(int32_t));
    }

    bool can_reuse(const llm_graph_params & params) override {
        // rows == tokens, or rows == outputs (last layer); a changed count needs a new graph
        return tokens->ne[1] == (int64_t) params.ubatch.n_tokens || tokens->ne[1] == (int64_t) params.n_outputs;
    }

private:
    llama_pace_amb * amb;
    ggml_tensor *    tokens;
};

} // namespace

ggml_tensor * llama_pace_amb_build(llama_pace_amb * amb, ggml_context * ctx0, llm_graph_result * res, ggml_tensor * cur, int il) {
    const amb_layer * l = amb ? amb->layer(il) : nullptr;
    if (!l) {
        return cur;
    }
    GGML_ASSERT(cur->ne[0] == l->n_ff && "AMB layer activation width differs from the model's n_ff");
    ggml_tensor * tokens = ggml_new_tensor_2d(ctx0, GGML_TYPE_I32, 2, cur->ne[1]);
    ggml_set_input(tokens);
    ggml_format_name(tokens, "pace_amb_tokens-%d", il);
    res->add_input(std::make_unique<llm_graph_input_pace_amb>(amb, tokens));

    const auto hp = amb->hparams();
    const ggml_amb_params op = {hp.theta_high, hp.theta_low, hp.alpha, hp.w_high, hp.w_mid, hp.lambda, hp.momentum,
                                hp.topk, hp.negk, hp.store_topk, hp.chunk, hp.mode};
    ggml_tensor * a = ggml_is_contiguous(cur) ? cur : ggml_cont(ctx0, cur);
    ggml_tensor * out = ggml_amb(ctx0, a, tokens, l->bank, l->meta, l->state,
                                 l->snap, l->snap_meta, l->pend, op);
    ggml_format_name(out, "ffn_amb-%d", il);
    return out;
}

uint64_t llama_pace_amb_graph_key(const llama_pace_amb * amb) {
    return amb ? amb->generation : 0;
}

// ---- lifecycle -----------------------------------------------------------------------------------------

llama_pace_amb * llama_pace_amb_init(const llama_model & model, const llama_cparams & cparams, llama_memory_t memory) {
    g_last_error.clear();
    auto amb = std::make_unique<llama_pace_amb>(model, memory, std::max(1u, cparams.n_seq_max), cparams.n_ctx);
    try {
        amb->configure(params_from_gguf(model));
    } catch (const std::exception & e) {
        g_last_error = e.what(); // the context is not created; Python reads why through llama_pace_last_error
        throw;
    }
    if (memory) {
        std::lock_guard<std::mutex> lock(g_registry_mutex);
        g_registry[memory] = amb.get();
    }
    return amb.release();
}

void llama_pace_amb_free(llama_pace_amb * amb) {
    if (!amb) {
        return;
    }
    {
        std::lock_guard<std::mutex> lock(g_registry_mutex);
        auto it = g_registry.find(amb->memory);
        if (it != g_registry.end() && it->second == amb) {
            g_registry.erase(it);
        }
    }
    delete amb;
}

void llama_pace_amb_decode_begin(llama_pace_amb * amb, uint32_t n_tokens, uint32_t n_ubatch) {
    if (!amb || amb->layers.empty()) {
        return;
    }
    if (amb->prompt_span_open) {
        amb->flush_pending(); // a previous decode ended early (abort/failure)
    }
    const bool span = amb->params.granularity == LLAMA_PACE_AMB_GRANULARITY_PROMPT && n_tokens > n_ubatch;
    if (!span) {
        return;
    }
    // Every ubatch of this batch retrieves against the banks as they are now.
    for (auto & l : amb->layers) {
        std::memcpy(l.snap->data, l.bank->data, ggml_nbytes(l.bank));
        std::memcpy(l.snap_meta->data, l.meta->data, ggml_nbytes(l.meta));
        for (uint32_t s = 0; s < amb->n_seq; ++s) {
            amb->state_of(l, s)[ST_FLAGS] |= FLAG_PROMPT_SPAN;
        }
    }
    amb->prompt_span_open = true;
}

void llama_pace_amb_decode_end(llama_pace_amb * amb) {
    if (amb && amb->prompt_span_open) {
        amb->flush_pending();
    }
}

// ---- sequence events ---------------------------------------------------------------------------------

namespace {

llama_pace_amb * amb_of(llama_memory_t mem) {
    std::lock_guard<std::mutex> lock(g_registry_mutex);
    auto it = g_registry.find(mem);
    return it == g_registry.end() || it->second->layers.empty() ? nullptr : it->second;
}

// Which of the bank's absorbed positions [pos_min, pos_max] the range [p0, p1) covers.
enum class overlap { none, all, part };

overlap range_overlap(const llama_pace_amb::seq_info & si, llama_pos p0, llama_pos p1) {
    if (si.empty()) {
        return overlap::none;
    }
    p0 = p0 < 0 ? 0 : p0;
    const llama_pos end = p1 < 0 ? std::numeric_limits<llama_pos>::max() : p1;
    if (end <= si.pos_min || p0 > si.pos_max) {
        return overlap::none;
    }
    return p0 <= si.pos_min && end > si.pos_max ? overlap::all : overlap::part;
}

template <typename F>
void for_seqs(llama_pace_amb * amb, llama_seq_id seq_id, F f) {
    for (uint32_t s = 0; s < amb->n_seq; ++s) {
        if (seq_id < 0 || (uint32_t) seq_id == s) {
            f((llama_seq_id) s);
        }
    }
}

} // namespace

void llama_pace_amb_on_clear(llama_memory_t mem) {
    if (auto * amb = amb_of(mem)) {
        amb->reset(-1);
    }
}

void llama_pace_amb_on_seq_rm(llama_memory_t mem, llama_seq_id seq_id, llama_pos p0, llama_pos p1) {
    auto * amb = amb_of(mem);
    if (!amb) {
        return;
    }
    for_seqs(amb, seq_id, [&](llama_seq_id s) {
        switch (range_overlap(amb->seqs[s], p0, p1)) {
            case overlap::none: break;
            case overlap::all:  amb->reset(s); break;
            case overlap::part: amb->invalidate(s, "seq_rm"); break;
        }
    });
}

void llama_pace_amb_on_seq_cp(llama_memory_t mem, llama_seq_id src, llama_seq_id dst, llama_pos p0, llama_pos p1) {
    auto * amb = amb_of(mem);
    if (!amb || !amb->valid_seq(src) || !amb->valid_seq(dst) || src == dst) {
        return;
    }
    if (range_overlap(amb->seqs[src], p0, p1) != overlap::all) {
        // dst receives only part of what src's bank absorbed: a bank cannot be split.
        amb->invalidate(dst, "seq_cp of a partial range");
        return;
    }
    for (auto & l : amb->layers) {
        for (ggml_tensor * t : {l.bank, l.meta, l.state}) {
            amb->copy_slice(t, src, dst);
        }
    }
    const int32_t inv = amb->seqs[dst].n_invalidations;
    amb->seqs[dst] = amb->seqs[src];
    amb->seqs[dst].n_invalidations = inv;
}

void llama_pace_amb_on_seq_keep(llama_memory_t mem, llama_seq_id seq_id) {
    if (auto * amb = amb_of(mem)) {
        for_seqs(amb, -1, [&](llama_seq_id s) {
            if (s != seq_id) {
                amb->reset(s);
            }
        });
    }
}

void llama_pace_amb_on_seq_shift(llama_memory_t mem, llama_seq_id seq_id, llama_pos p0, llama_pos p1) {
    auto * amb = amb_of(mem);
    if (!amb) {
        return;
    }
    for_seqs(amb, seq_id, [&](llama_seq_id s) {
        // Moving positions (context shift) leaves the bank describing tokens at other places; only
        // a shift that moves everything the bank saw is harmless, and then positions are re-learned.
        if (range_overlap(amb->seqs[s], p0, p1) != overlap::none) {
            amb->invalidate(s, "a position shift");
        }
    });
}

// ---- session state -------------------------------------------------------------------------------------

namespace {

// The whole tensor (seq_id < 0) or one sequence's part of it.
void write_slice(const llama_pace_amb & amb, llama_io_write_i & io, ggml_tensor * t, llama_seq_id seq_id) {
    const size_t per = amb.seq_bytes(t);
    seq_id < 0 ? io.write_tensor(t, 0, ggml_nbytes(t)) : io.write_tensor(t, per * seq_id, per);
}

void read_slice(const llama_pace_amb & amb, llama_io_read_i & io, ggml_tensor * t, llama_seq_id seq_id) {
    const size_t per = amb.seq_bytes(t);
    seq_id < 0 ? io.read_tensor(t, 0, ggml_nbytes(t)) : io.read_tensor(t, per * seq_id, per);
}

template <typename T> void write_val(llama_io_write_i & io, T v) { io.write(&v, sizeof(v)); }
template <typename T> T read_val(llama_io_read_i & io) { T v; io.read(&v, sizeof(v)); return v; }

} // namespace

void llama_pace_amb_state_write(const llama_pace_amb * amb, llama_io_write_i & io, llama_seq_id seq_id) {
    write_val<uint32_t>(io, STATE_MAGIC);
    write_val<uint32_t>(io, STATE_VERSION);
    const uint32_t n_layers = amb ? (uint32_t) amb->layers.size() : 0;
    write_val<uint32_t>(io, n_layers);
    if (n_layers == 0) {
        return;
    }
    write_val<uint32_t>(io, seq_id < 0 ? amb->n_seq : 1);
    write_val<int32_t>(io, amb->params.bank_size);
    write_val<uint32_t>(io, amb->n_pos);
    for (const auto & l : amb->layers) {
        write_val<int32_t>(io, l.il);
        write_val<int64_t>(io, l.n_ff);
    }
    for (const auto & l : amb->layers) {
        for (ggml_tensor * t : {l.bank, l.meta, l.state}) {
            write_slice(*amb, io, t, seq_id);
        }
    }
    for (uint32_t s = 0; s < amb->n_seq; ++s) {
        if (seq_id < 0 || (uint32_t) seq_id == s) {
            write_val<int32_t>(io, amb->seqs[s].pos_min);
            write_val<int32_t>(io, amb->seqs[s].pos_max);
        }
    }
}

static void state_read_checked(llama_pace_amb * amb, llama_io_read_i & io, llama_seq_id seq_id) {
    if (read_val<uint32_t>(io) != STATE_MAGIC || read_val<uint32_t>(io) != STATE_VERSION) {
        throw std::runtime_error("state has no pace AMB section (written by another build?)");
    }
    const uint32_t n_layers = read_val<uint32_t>(io);
    const uint32_t want = amb ? (uint32_t) amb->layers.size() : 0;
    if (n_layers != want) {
        throw std::runtime_error(format("state holds AMB banks for %u layer(s), this context has %u", n_layers, want));
    }
    if (n_layers == 0) {
        return;
    }
    const uint32_t n_seq = read_val<uint32_t>(io);
    const int32_t  M     = read_val<int32_t>(io);
    const uint32_t n_pos = read_val<uint32_t>(io);
    const uint32_t want_seq = seq_id < 0 ? amb->n_seq : 1;
    if (n_seq != want_seq || M != amb->params.bank_size || n_pos != amb->n_pos) {
        throw std::runtime_error(format("state AMB bank shape (seqs %u, slots %d, positions %u) does not match this context "
                "(seqs %u, slots %d, positions %u)", n_seq, M, n_pos, want_seq, amb->params.bank_size, amb->n_pos));
    }
    for (const auto & l : amb->layers) {
        const int32_t il = read_val<int32_t>(io);
        const int64_t n_ff = read_val<int64_t>(io);
        if (il != l.il || n_ff != l.n_ff) {
            throw std::runtime_error(format("state AMB layer %d (n_ff %lld) does not match this context's layer %d (n_ff %lld)",
                    il, (long long) n_ff, l.il, (long long) l.n_ff));
        }
    }
    for (const auto & l : amb->layers) {
        for (ggml_tensor * t : {l.bank, l.meta, l.state}) {
            read_slice(*amb, io, t, seq_id);
        }
    }
    for (uint32_t s = 0; s < amb->n_seq; ++s) {
        if (seq_id < 0 || (uint32_t) seq_id == s) {
            amb->seqs[s].pos_min = read_val<int32_t>(io);
            amb->seqs[s].pos_max = read_val<int32_t>(io);
        }
    }
}

void llama_pace_amb_state_read(llama_pace_amb * amb, llama_io_read_i & io, llama_seq_id seq_id) {
    try {
        state_read_checked(amb, io, seq_id);
    } catch (const std::exception & e) {
        g_last_error = std::string("state file: ") + e.what();
        if (amb) {
            amb->reset(seq_id); // never keep a half-restored bank
        }
        throw;
    }
}

// ---- llama_context accessors (declared in llama-context.h) ---------------------------------------

llama_pace_amb * llama_context::get_pace_amb() const {
    return pace_amb.get();
}

void llama_context::pace_amb_reconfigured() {
    sched_need_reserve = true;
}

// ---- public C API (llama.h) ---------------------------------------------------------------------------

namespace {

int32_t fail(const std::string & msg) {
    g_last_error = msg;
    LLAMA_LOG_ERROR("pace: %s\n", msg.c_str());
    return -1;
}

const amb_layer * find_layer(const llama_pace_amb * amb, int32_t il) {
    return amb ? amb->layer(il) : nullptr;
}

} // namespace

const char * llama_pace_last_error(void) {
    return g_last_error.c_str();
}

struct llama_pace_amb_params llama_pace_amb_default_params(void) {
    return default_params();
}

int32_t llama_pace_amb_model_params(const struct llama_model * model, struct llama_pace_amb_params * out) {
    try {
        *out = params_from_gguf(*model);
        return 0;
    } catch (const std::exception & e) {
        return fail(e.what());
    }
}

int32_t llama_pace_amb_get_params(const struct llama_context * ctx, struct llama_pace_amb_params * out) {
    const auto * amb = ctx->get_pace_amb();
    *out = amb ? amb->params : default_params();
    return 0;
}

int32_t llama_pace_amb_set_params(struct llama_context * ctx, const struct llama_pace_amb_params * params) {
    auto * amb = ctx->get_pace_amb();
    if (!amb) {
        return fail("this context has no memory module, so it cannot hold an AMB bank");
    }
    const std::string err = validate(*params, amb->model.hparams.n_layer());
    if (!err.empty()) {
        return fail("invalid AMB parameters: " + err);
    }
    try {
        amb->configure(*params);
    } catch (const std::exception & e) {
        return fail(e.what());
    }
    ctx->pace_amb_reconfigured();
    return 0;
}

int32_t llama_pace_amb_reset(struct llama_context * ctx, llama_seq_id seq_id) {
    auto * amb = ctx->get_pace_amb();
    if (!amb) {
        return 0;
    }
    if (seq_id >= 0 && !amb->valid_seq(seq_id)) {
        return fail(format("seq_id %d is out of range [0, %u)", seq_id, amb->n_seq));
    }
    amb->reset(seq_id);
    return 0;
}

int32_t llama_pace_amb_get_stats(const struct llama_context * ctx, llama_seq_id seq_id, int32_t il, struct llama_pace_amb_stats * out) {
    const auto * amb = ctx->get_pace_amb();
    const amb_layer * l = find_layer(amb, il);
    if (!l) {
        return fail(format("layer %d has no AMB bank", il));
    }
    if (!amb->valid_seq(seq_id)) {
        return fail(format("seq_id %d is out of range [0, %u)", seq_id, amb->n_seq));
    }
    const auto b = amb->view(*l, seq_id);
    const int32_t * st = amb->state_of(*l, seq_id);
    *out = {};
    out->bank_size = amb->params.bank_size;
    for (int32_t j = 0; j < b.M; ++j) {
        out->n_slots_used += b.valid[j] != 0.0f;
    }
    out->n_high          = st[ST_N_HIGH];
    out->n_mid           = st[ST_N_MID];
    out->n_low           = st[ST_N_LOW];
    out->n_invalidations = amb->seqs[seq_id].n_invalidations;
    out->pos_min         = amb->seqs[seq_id].pos_min;
    out->pos_max         = amb->seqs[seq_id].pos_max;
    return 0;
}

int32_t llama_pace_amb_get_bank(const struct llama_context * ctx, llama_seq_id seq_id, int32_t il,
        float * keys, float * values, float * usage, float * valid, int64_t * n_ff) {
    const auto * amb = ctx->get_pace_amb();
    const amb_layer * l = find_layer(amb, il);
    if (!l || !amb->valid_seq(seq_id)) {
        return fail(format("no AMB bank for layer %d, seq_id %d", il, seq_id));
    }
    const auto b = amb->view(*l, seq_id);
    const size_t kv = (size_t) b.M * b.n_ff * sizeof(float);
    if (keys)   { std::memcpy(keys, b.keys, kv); }
    if (values) { std::memcpy(values, b.vals, kv); }
    if (usage)  { std::memcpy(usage, b.usage, b.M * sizeof(float)); }
    if (valid)  { std::memcpy(valid, b.valid, b.M * sizeof(float)); }
    if (n_ff)   { *n_ff = l->n_ff; }
    return 0;
}

int32_t llama_pace_amb_get_cases(const struct llama_context * ctx, llama_seq_id seq_id, int32_t il, int32_t * out, int32_t n_pos) {
    const auto * amb = ctx->get_pace_amb();
    const amb_layer * l = find_layer(amb, il);
    if (!l || !amb->valid_seq(seq_id)) {
        return fail(format("no AMB bank for layer %d, seq_id %d", il, seq_id));
    }
    const int32_t n = std::min<int32_t>(n_pos, (int32_t) amb->n_pos);
    const int32_t * log = amb->state_of(*l, seq_id) + GGML_AMB_STATE_HEADER;
    for (int32_t i = 0; i < n; ++i) {
        out[i] = log[i] - 1; // the log stores case + 1, so that 0 (cleared) reads as -1 (unknown)
    }
    return n;
}

size_t llama_pace_amb_memory_size(const struct llama_context * ctx) {
    const auto * amb = ctx->get_pace_amb();
    return amb ? amb->memory_size() : 0;
}
