// pace-gguf: the Activation Memory Bank of a llama_context.
//
// * configuration: the model's pace.amb.* GGUF keys (AMB off when absent or invalid), overridable
//   per context through llama_pace_amb_set_params(); invalid values are rejected, never clamped, and
//   a reconfiguration is all or nothing;
// * banks: one per (AMB layer, sequence), fp32, on the layer's device when that device runs the AMB
//   (a GGML_OP_AMB kernel: CPU, RPC, Vulkan, CUDA; or the op composed from standard ggml ops: any
//   other backend that has those), else in host memory, where the scheduler runs the op on the CPU
//   next to its bank (see cpp/src/BACKENDS.md);
// * graph: GGML_OP_AMB, or its composed graph, on the FFN activation of AMB layers (llama_pace_amb_build);
// * lifecycle: sequence events arrive from the memory wrapper (pace-amb-memory.cpp).
//
// Partial removal (spec 6.12): the bank of a sequence remembers the range of positions it has
// absorbed. Removing positions outside that range keeps the bank (llama-cpp-python trims the unused
// tail before every eval); removing or shifting any position inside it resets the bank, because a
// bank cannot "un-store" rows. Such resets are counted (stats.n_invalidations) and logged.
//
// Tokens in several sequences: such a token reads and feeds the bank of its first sequence; at the
// end of the decode, every other sequence whose tokens in that decode were all shared with that
// first sequence gets a copy of its bank (as seq_cp would give), and one that also had tokens of its
// own is invalidated. The copy is exact when the banks were equal before the decode, e.g. a prompt
// decoded once for several parallel sequences from an empty context.
#include "pace-amb-impl.h"

#include "llama-context.h"
#include "llama-graph.h"
#include "llama-impl.h"
#include "llama-model.h"

#include "ggml-backend.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <limits>
#include <stdexcept>

using namespace pace_amb;

namespace {

thread_local std::string g_last_error;

} // namespace

void llama_pace_set_error(const std::string & msg) {
    g_last_error = msg;
}

// ---- the bank owner --------------------------------------------------------------------------------

llama_pace_amb::llama_pace_amb(const llama_model & model, uint32_t n_seq, uint32_t n_pos, uint32_t n_ubatch) :
    model(model), n_seq(n_seq), n_pos(n_pos), n_ubatch(n_ubatch), seqs(n_seq), shared_with(n_seq, -1), has_own(n_seq, 0) {
    banks.params = llama_pace_amb_defaults();
    banks.layer_index.assign(model.hparams.n_layer(), -1);
}

pace_amb::hparams llama_pace_amb::hparams() const {
    return op_params_of(banks.params);
}

const amb_layer * llama_pace_amb::layer(int32_t il) const {
    const auto & idx = banks.layer_index;
    return il >= 0 && il < (int32_t) idx.size() && idx[il] >= 0 ? &banks.layers[idx[il]] : nullptr;
}

namespace {

// Allocates zeroed banks for `p` (already validated); throws if the memory is not there.
amb_banks allocate_banks(const llama_pace_amb_params & p, const llama_model & model, uint32_t n_seq, uint32_t n_pos,
                         uint32_t n_ubatch) {
    amb_banks nb;
    nb.params = p;
    nb.layer_index.assign(model.hparams.n_layer(), -1);
    if (!p.enabled) {
        return nb;
    }
    std::vector<int32_t> ils(p.layers, p.layers + p.n_layers);
    std::sort(ils.begin(), ils.end());
    for (int32_t il : ils) {
        nb.layer_index[il] = (int32_t) nb.layers.size();
        nb.layers.push_back(amb_layer{il, (int64_t) model.hparams.n_ff(il)});
    }
    std::vector<ggml_backend_buffer_type_t> bufts;
    for (auto & l : nb.layers) {
        ggml_backend_dev_t dev = layer_device(model, l.il);
        l.impl = amb_impl_of(dev, l, p, n_seq, n_pos, n_ubatch);
        ggml_backend_buffer_type_t buft = l.impl == amb_impl::host ? host_buffer_type() : ggml_backend_dev_buffer_type(dev);
        const size_t i = std::find(bufts.begin(), bufts.end(), buft) - bufts.begin();
        if (i == bufts.size()) {
            bufts.push_back(buft);
            nb.ctxs.push_back(new_tensor_context(nb.layers.size()));
        }
        new_layer_tensors(nb.ctxs[i].get(), l, p, n_seq, n_pos);
    }
    for (size_t i = 0; i < bufts.size(); ++i) {
        ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors_from_buft(nb.ctxs[i].get(), bufts[i]);
        if (!buf) {
            throw std::runtime_error(format("failed to allocate the activation memory bank (%d slots x %u sequence(s) on %zu layer(s)) in %s",
                                            p.bank_size, n_seq, nb.layers.size(), ggml_backend_buft_name(bufts[i])));
        }
        nb.bufs.emplace_back(buf);
        ggml_backend_buffer_clear(buf, 0);
        ggml_backend_buffer_set_usage(buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS); // the op runs where its bank is
        LLAMA_LOG_INFO("%s: pace AMB bank %d x %u seq(s) in %s: %.2f MiB\n", __func__, p.bank_size, n_seq,
                       ggml_backend_buft_name(bufts[i]), ggml_backend_buffer_get_size(buf) / 1024.0 / 1024.0);
    }
    for (const auto & l : nb.layers) {
        if (l.impl == amb_impl::composed) {
            pace_amb_composed::set_constants(composed_tensors(l));
            LLAMA_LOG_INFO("%s: pace AMB layer %d: composed from ggml ops\n", __func__, l.il);
        }
        nb.graph_nodes += (uint32_t) graph_tensors(l, p, n_seq, n_pos, n_ubatch);
    }
    return nb;
}

} // namespace

void llama_pace_amb::configure(const llama_pace_amb_params & p) {
    std::string err = llama_pace_amb_check(p, model.hparams.n_layer());
    if (err.empty()) {
        err = llama_pace_amb_check_arch(p, model);
    }
    if (!err.empty()) {
        throw std::runtime_error("invalid AMB parameters: " + err);
    }
    amb_banks fresh = allocate_banks(p, model, n_seq, n_pos, n_ubatch); // throws before anything changed
    std::swap(banks, fresh);
    seqs.assign(n_seq, seq_info{});
    prompt_span_open = false;
    ++generation;
}

size_t llama_pace_amb::memory_size() const {
    size_t total = 0;
    for (const auto & buf : banks.bufs) {
        total += ggml_backend_buffer_get_size(buf.get());
    }
    return total;
}

size_t llama_pace_amb::seq_bytes(const ggml_tensor * t) const {
    return ggml_nbytes(t) / n_seq; // the sequence is always the last dimension
}

void llama_pace_amb::read_seq(const ggml_tensor * t, llama_seq_id s, void * dst) const {
    ggml_backend_tensor_get(t, dst, seq_bytes(t) * s, seq_bytes(t));
}

void llama_pace_amb::write_seq(ggml_tensor * t, llama_seq_id s, const void * src) const {
    ggml_backend_tensor_set(t, src, seq_bytes(t) * s, seq_bytes(t));
}

amb_host_seq llama_pace_amb::load(const amb_layer & l, llama_seq_id s, int parts) const {
    amb_host_seq h;
    if (parts & amb_host_seq::STATE) {
        h.state.resize(seq_bytes(l.state) / sizeof(int32_t));
        read_seq(l.state, s, h.state.data());
    }
    if (parts & amb_host_seq::META) {
        h.meta.resize(seq_bytes(l.meta) / sizeof(float));
        read_seq(l.meta, s, h.meta.data());
    }
    if (parts & amb_host_seq::BANK) {
        h.bank.resize(seq_bytes(l.bank) / sizeof(float));
        read_seq(l.bank, s, h.bank.data());
    }
    return h;
}

void llama_pace_amb::save(const amb_layer & l, llama_seq_id s, const amb_host_seq & h, int parts) const {
    if (parts & amb_host_seq::STATE) {
        write_seq(l.state, s, h.state.data());
    }
    if (parts & amb_host_seq::META) {
        write_seq(l.meta, s, h.meta.data());
    }
    if (parts & amb_host_seq::BANK) {
        write_seq(l.bank, s, h.bank.data());
    }
}

void llama_pace_amb::reset(llama_seq_id s) {
    if (s < 0) {
        for (uint32_t i = 0; i < n_seq; ++i) {
            reset((llama_seq_id) i);
        }
        return;
    }
    if (!valid_seq(s)) {
        return;
    }
    for (auto & l : banks.layers) {
        for (ggml_tensor * t : {l.bank, l.meta, l.state, l.snap, l.snap_meta, l.pend}) {
            if (t) {
                ggml_backend_tensor_memset(t, 0, seq_bytes(t) * s, seq_bytes(t));
            }
        }
    }
    const int32_t inv = seqs[s].n_invalidations;
    seqs[s] = seq_info{};
    seqs[s].n_invalidations = inv;
}

void llama_pace_amb::invalidate(llama_seq_id s, const char * why) {
    if (!valid_seq(s) || seqs[s].empty()) {
        return;
    }
    LLAMA_LOG_INFO("%s: pace AMB bank of seq %d reset: %s touched positions it had absorbed [%d, %d]\n",
                   __func__, s, why, seqs[s].pos_min, seqs[s].pos_max);
    const int32_t inv = seqs[s].n_invalidations + 1;
    reset(s);
    seqs[s].n_invalidations = inv;
}

void llama_pace_amb::copy_seq(llama_seq_id src, llama_seq_id dst) {
    for (auto & l : banks.layers) {
        save(l, dst, load(l, src, amb_host_seq::ALL), amb_host_seq::ALL);
    }
    const int32_t inv = seqs[dst].n_invalidations;
    seqs[dst] = seqs[src];
    seqs[dst].n_invalidations = inv;
}

void llama_pace_amb::note_token(const llama_seq_id * seq_ids, int32_t n_seq_id, llama_pos pos) {
    const llama_seq_id first = seq_ids[0];
    if (valid_seq(first)) {
        auto & si = seqs[first];
        si.pos_min = si.empty() ? pos : std::min(si.pos_min, pos);
        si.pos_max = std::max(si.pos_max, pos);
        has_own[first] = 1;
    }
    for (int32_t k = 1; k < n_seq_id; ++k) {
        const llama_seq_id s = seq_ids[k];
        if (valid_seq(s) && s != first) {
            // a second "first sequence" cannot be honoured: the sequence then counts as having its own tokens
            if (shared_with[s] >= 0 && shared_with[s] != first) {
                has_own[s] = 1;
            }
            shared_with[s] = first;
            any_shared = true;
        }
    }
}

void llama_pace_amb::apply_shared() {
    if (any_shared) {
        for (uint32_t s = 0; s < n_seq; ++s) {
            const llama_seq_id src = shared_with[s];
            if (src < 0) {
                continue;
            }
            if (has_own[s]) {
                invalidate((llama_seq_id) s, "tokens shared with another sequence");
            } else {
                copy_seq(src, (llama_seq_id) s);
            }
        }
    }
    std::fill(shared_with.begin(), shared_with.end(), -1);
    std::fill(has_own.begin(), has_own.end(), 0);
    any_shared = false;
}

// Prompt granularity: store the rows a multi-ubatch decode left in the pending buffers.
void llama_pace_amb::flush_pending() {
    const auto hp = hparams();
    for (auto & l : banks.layers) {
        for (uint32_t s = 0; s < n_seq; ++s) {
            amb_host_seq h = load(l, s, amb_host_seq::ALL); // once per multi-ubatch decode: copies are cheap here
            const int32_t n = h.header()[ST_N_PENDING];
            GGML_ASSERT(n >= 0 && n < hp.chunk); // the kernel stores every full chunk; loaded states are checked
            if (n > 0) {
                std::vector<float> rows(seq_bytes(l.pend) / sizeof(float));
                read_seq(l.pend, s, rows.data());
                const pending_rows pend = pending_at(rows.data(), l.n_ff, hp.chunk);
                std::vector<const float *> X(n), O(n);
                for (int32_t i = 0; i < n; ++i) {
                    X[i] = pend.keys + i * l.n_ff;
                    O[i] = pend.vals + i * l.n_ff;
                }
                auto b = h.view(l.n_ff, banks.params.bank_size);
                store_rows(hp, b, X.data(), O.data(), n);
            }
            h.header()[ST_N_PENDING] = 0;
            h.header()[ST_FLAGS] &= ~FLAG_PROMPT_SPAN;
            save(l, s, h, amb_host_seq::ALL);
        }
    }
    prompt_span_open = false;
}

// A decode that failed or was aborted: its buffered rows belong to tokens llama.cpp rolled back.
void llama_pace_amb::drop_pending() {
    for (auto & l : banks.layers) {
        for (uint32_t s = 0; s < n_seq; ++s) {
            amb_host_seq h = load(l, s, amb_host_seq::STATE);
            h.header()[ST_N_PENDING] = 0;
            h.header()[ST_FLAGS] &= ~FLAG_PROMPT_SPAN;
            save(l, s, h, amb_host_seq::STATE);
        }
    }
    prompt_span_open = false;
    std::fill(shared_with.begin(), shared_with.end(), -1);
    std::fill(has_own.begin(), has_own.end(), 0);
    any_shared = false;
}

// ---- sequence events -------------------------------------------------------------------------------

namespace {

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
void for_seqs(const llama_pace_amb & amb, llama_seq_id seq_id, F f) {
    for (uint32_t s = 0; s < amb.n_seq; ++s) {
        if (seq_id < 0 || (uint32_t) seq_id == s) {
            f((llama_seq_id) s);
        }
    }
}

} // namespace

void llama_pace_amb::on_clear() {
    reset(-1);
}

void llama_pace_amb::on_seq_rm(llama_seq_id seq_id, llama_pos p0, llama_pos p1) {
    if (evicting) {
        return; // on_evicted follows
    }
    for_seqs(*this, seq_id, [&](llama_seq_id s) {
        switch (range_overlap(seqs[s], p0, p1)) {
            case overlap::none: break;
            case overlap::all:  reset(s); break;
            case overlap::part: invalidate(s, "seq_rm"); break;
        }
    });
}

void llama_pace_amb::on_seq_cp(llama_seq_id src, llama_seq_id dst, llama_pos p0, llama_pos p1) {
    if (!valid_seq(src) || !valid_seq(dst) || src == dst) {
        return;
    }
    if (range_overlap(seqs[src], p0, p1) != overlap::all) {
        // dst receives only part of what src's bank absorbed: a bank cannot be split.
        invalidate(dst, "seq_cp of a partial range");
        return;
    }
    copy_seq(src, dst);
}

void llama_pace_amb::on_seq_keep(llama_seq_id seq_id) {
    for_seqs(*this, -1, [&](llama_seq_id s) {
        if (s != seq_id) {
            reset(s);
        }
    });
}

void llama_pace_amb::on_seq_shift(llama_seq_id seq_id, llama_pos p0, llama_pos p1) {
    if (evicting) {
        return; // on_evicted follows
    }
    for_seqs(*this, seq_id, [&](llama_seq_id s) {
        // Moving positions (context shift) leaves the bank describing tokens at other places.
        if (range_overlap(seqs[s], p0, p1) != overlap::none) {
            invalidate(s, "a position shift");
        }
    });
}

void llama_pace_amb::on_evicted(llama_seq_id s, llama_pos p0, llama_pos p1) {
    const llama_pos n = p1 - p0;
    // The case log is per position: entries of the moved tokens move with them, the freed tail is cleared.
    for (auto & l : banks.layers) {
        amb_host_seq h = load(l, s, amb_host_seq::STATE);
        int32_t * log = h.case_log();
        const llama_pos end = (llama_pos) n_pos;
        if (p1 < end) {
            std::memmove(log + p0, log + p1, (size_t) (end - p1) * sizeof(int32_t));
        }
        const llama_pos tail = std::max(p0, end - n);
        std::memset(log + tail, 0, (size_t) (end - tail) * sizeof(int32_t));
        save(l, s, h, amb_host_seq::STATE);
    }
    seq_info & si = seqs[s];
    if (si.empty() || si.pos_max < p0) {
        return;
    }
    // What the bank took from evicted tokens stays attached to the kept prefix: it counts as
    // absorbed at p0 - 1, the prefix's last position, so removing everything after the prefix (the
    // next eval's cleanup) keeps the bank, and a removal that reaches into the prefix (an undo, a
    // clear) still empties it. llama_pace_amb_evict refuses p0 == 0 when it would evict all.
    const llama_pos anchor = std::max<llama_pos>(p0 - 1, 0);
    si.pos_min = std::min(si.pos_min < p0 ? si.pos_min : std::max(p0, si.pos_min - n), anchor);
    si.pos_max = si.pos_max >= p1 ? si.pos_max - n : anchor;
}

// ---- graph -------------------------------------------------------------------------------------------

namespace {

// Per-row bank index (the first sequence id, or -1 for ids beyond the context's n_seq_max) and
// position. A row is a token of the ubatch, except after llama.cpp has kept only the output tokens
// (the last layer's FFN runs on those alone, in ubatch order, as llm_graph_input_out_ids selects them).
// GGML_OP_AMB reads them as they are (`tokens`); the composed graph through its row inputs.
class llm_graph_input_pace_amb : public llm_graph_input_i {
public:
    llm_graph_input_pace_amb(llama_pace_amb * amb, const amb_layer & layer, int64_t n_rows, bool notes) :
        amb(amb), bank(composed_tensors(layer)), n_rows(n_rows), notes(notes) {}

    ggml_tensor * tokens = nullptr; // fused: i32 [2, n_rows]
    pace_amb_composed::row_inputs composed = {};

    void set_input(const llama_ubatch * ubatch) override {
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
        }
        // One AMB layer per graph records which positions and sequences the ubatch feeds.
        for (uint32_t i = 0; notes && i < ubatch->n_tokens; ++i) {
            amb->note_token(ubatch->seq_id[i], ubatch->n_seq_id[i], ubatch->pos[i]);
        }
        GGML_ASSERT((int64_t) data.size() == 2 * n_rows);
        if (tokens) {
            ggml_backend_tensor_set(tokens, data.data(), 0, data.size() * sizeof(int32_t));
        } else {
            pace_amb_composed::set_rows_of(composed, bank, data);
        }
    }

    bool can_reuse(const llm_graph_params & params) override {
        // rows == tokens, or rows == outputs (last layer); a changed count needs a new graph, and so
        // does the composed graph when a prompt span opened or closed (it stores through pend)
        const bool rows_fit = n_rows == (int64_t) params.ubatch.n_tokens || n_rows == (int64_t) params.n_outputs;
        return rows_fit && (tokens || composed_span == amb->prompt_span_open);
    }

    bool composed_span = false; // the composed graph was built for an open prompt span

private:
    llama_pace_amb *                amb;
    pace_amb_composed::bank_tensors bank; // the layer's (for the composed graph's row inputs)
    int64_t                         n_rows;
    bool                            notes;
};

ggml_tensor * build_fused(llama_pace_amb * amb, const amb_layer & l, ggml_context * ctx0, llm_graph_input_pace_amb & input,
                          ggml_tensor * a, const char * tokens_name) {
    input.tokens = ggml_new_tensor_2d(ctx0, GGML_TYPE_I32, 2, a->ne[1]);
    ggml_set_input(input.tokens);
    ggml_set_name(input.tokens, tokens_name);
    return ggml_amb(ctx0, a, input.tokens, l.bank, l.meta, l.state, l.snap, l.snap_meta, l.pend, amb->hparams());
}

// The composed graph's updates of the bank are nodes no later node reads: they join the graph here,
// after everything the retrieval reads from the bank (their sources include the enhanced rows).
ggml_tensor * build_composed(llama_pace_amb * amb, const amb_layer & l, ggml_context * ctx0, llm_graph_result * res,
                             llm_graph_input_pace_amb & input, ggml_tensor * a) {
    input.composed = pace_amb_composed::new_row_inputs(ctx0, a->ne[1], amb->n_seq);
    input.composed_span = amb->prompt_span_open;
    const pace_amb_composed::graph g =
        pace_amb_composed::build(ctx0, a, composed_tensors(l), input.composed, amb->hparams(), input.composed_span);
    for (ggml_tensor * w : g.writes) {
        ggml_build_forward_expand(res->get_gf(), w);
    }
    return g.out;
}

} // namespace

ggml_tensor * llama_pace_amb_build(llama_pace_amb * amb, ggml_context * ctx0, llm_graph_result * res, ggml_tensor * cur, int il) {
    const amb_layer * l = amb ? amb->layer(il) : nullptr;
    if (!l) {
        return cur;
    }
    char name[GGML_MAX_NAME];
    snprintf(name, sizeof(name), "pace_amb_tokens-%d", il);
    if (ggml_get_tensor(ctx0, name) != nullptr || cur->ne[0] != l->n_ff) {
        // An FFN the hook cannot serve (a second FFN in the layer, another width): leave it alone and
        // let llama_pace_amb_set_params, which builds the graphs to check, refuse the configuration.
        if (amb->build_error.empty()) {
            amb->build_error = format("layer %d: the model's graph has an FFN activation the AMB cannot serve "
                                      "(width %lld, expected %lld, or several FFNs in the layer)",
                                      il, (long long) cur->ne[0], (long long) l->n_ff);
            LLAMA_LOG_WARN("%s: pace: %s\n", __func__, amb->build_error.c_str());
        }
        return cur;
    }
    amb->n_built.resize(amb->banks.layer_index.size(), 0);
    amb->n_built[il] += 1;
    const bool notes = l == &amb->banks.layers.front();
    auto input = std::make_unique<llm_graph_input_pace_amb>(amb, *l, cur->ne[1], notes);

    ggml_tensor * a = ggml_is_contiguous(cur) ? cur : ggml_cont(ctx0, cur);
    ggml_tensor * out;
    if (l->impl == amb_impl::composed) {
        out = build_composed(amb, *l, ctx0, res, *input, a);
        ggml_set_name(input->composed.seq_onehot, name); // what the check above finds
    } else {
        out = build_fused(amb, *l, ctx0, *input, a, name);
    }
    res->add_input(std::move(input));
    ggml_format_name(out, "ffn_amb-%d", il);
    return out;
}

uint64_t llama_pace_amb_graph_key(const llama_pace_amb * amb) {
    return amb ? amb->generation : 0;
}

uint32_t llama_pace_amb_graph_nodes(const llama_pace_amb * amb) {
    return amb ? amb->banks.graph_nodes : 0;
}

// ---- decode --------------------------------------------------------------------------------------------

void llama_pace_amb_decode_begin(llama_pace_amb * amb, uint32_t n_tokens, uint32_t n_ubatch) {
    if (!amb || !amb->enabled()) {
        return;
    }
    if (amb->prompt_span_open || amb->any_shared) {
        amb->drop_pending(); // the previous decode failed or was aborted before its end
    }
    const bool span = amb->params().granularity == LLAMA_PACE_AMB_GRANULARITY_PROMPT && n_tokens > n_ubatch;
    if (!span) {
        return;
    }
    // Every ubatch of this batch retrieves against the banks as they are now.
    for (auto & l : amb->banks.layers) {
        ggml_backend_tensor_copy(l.bank, l.snap);
        ggml_backend_tensor_copy(l.meta, l.snap_meta);
        for (uint32_t s = 0; s < amb->n_seq; ++s) {
            amb_host_seq h = amb->load(l, s, amb_host_seq::STATE);
            h.header()[ST_FLAGS] |= FLAG_PROMPT_SPAN;
            amb->save(l, s, h, amb_host_seq::STATE);
        }
    }
    amb->prompt_span_open = true;
}

void llama_pace_amb_decode_end(llama_pace_amb * amb, llama_context & lctx) {
    if (!amb || !(amb->prompt_span_open || amb->any_shared)) {
        return; // nothing to do on the host: no synchronization, as in stock llama.cpp
    }
    lctx.synchronize();
    if (amb->prompt_span_open) {
        amb->flush_pending();
    }
    amb->apply_shared();
}

// ---- public C API (pace.h) ---------------------------------------------------------------------------

namespace {

// The caller gets the message through llama_pace_last_error(); it is not logged, so that it is
// reported once, by whoever decides what to do about it.
int32_t fail(const std::string & msg) {
    g_last_error = msg;
    return -1;
}

// The bank owner of ctx, with the context's pending work finished (a graph may still be writing the
// banks).
llama_pace_amb * synced_amb(const llama_context * ctx) {
    auto * lctx = const_cast<llama_context *>(ctx);
    llama_pace_amb * amb = lctx->get_pace_amb();
    if (amb && amb->enabled()) {
        lctx->synchronize();
    }
    return amb;
}

// Builds the graphs of the new configuration and checks that the hook served every AMB layer once.
void check_graph(llama_context * ctx, llama_pace_amb * amb) {
    amb->n_built.assign(amb->banks.layer_index.size(), 0);
    amb->build_error.clear();
    ctx->pace_amb_reconfigured();
    ctx->sched_reserve();
    if (amb->build_error.empty()) {
        for (const auto & l : amb->banks.layers) {
            if (amb->n_built[l.il] == 0) {
                amb->build_error = format("layer %d: the model's graph has no FFN activation the AMB can act on", l.il);
                break;
            }
        }
    }
    std::fill(amb->n_built.begin(), amb->n_built.end(), 0);
    if (!amb->build_error.empty()) {
        throw std::runtime_error(amb->build_error);
    }
}

} // namespace

const char * llama_pace_last_error(void) {
    return g_last_error.c_str();
}

struct llama_pace_amb_params llama_pace_amb_default_params(void) {
    return llama_pace_amb_defaults();
}

int32_t llama_pace_amb_validate_params(const struct llama_pace_amb_params * params, int32_t n_layer) {
    if (!params || n_layer < 1) {
        return fail("validate: params must be given and n_layer >= 1");
    }
    const std::string err = llama_pace_amb_check(*params, n_layer);
    return err.empty() ? 0 : fail("invalid AMB parameters: " + err);
}

int32_t llama_pace_amb_model_params(const struct llama_model * model, struct llama_pace_amb_params * out) {
    try {
        *out = llama_pace_amb_params_from_model(*model);
        return 0;
    } catch (const std::exception & e) {
        *out = llama_pace_amb_defaults();
        return fail(e.what());
    }
}

int32_t llama_pace_amb_get_params(const struct llama_context * ctx, struct llama_pace_amb_params * out) {
    const auto * amb = ctx->get_pace_amb();
    *out = amb ? amb->params() : llama_pace_amb_defaults();
    return 0;
}

int32_t llama_pace_amb_set_params(struct llama_context * ctx, const struct llama_pace_amb_params * params) {
    auto * amb = synced_amb(ctx);
    if (!amb) {
        return fail("this context has no memory module, so it cannot hold an AMB bank");
    }
    const llama_pace_amb_params old = amb->params();
    try {
        amb->configure(*params);
    } catch (const std::exception & e) {
        return fail(e.what()); // nothing changed: the old banks are in place, with their contents
    }
    try {
        check_graph(ctx, amb);
        return 0;
    } catch (const std::exception & e) {
        const std::string why = e.what();
        try { // back to the previous configuration (its banks are empty now, as after any reconfiguration)
            amb->configure(old);
            ctx->pace_amb_reconfigured();
        } catch (const std::exception & e2) {
            amb->configure(llama_pace_amb_defaults()); // off: allocates nothing, cannot fail
            ctx->pace_amb_reconfigured();
            return fail(why + "; the previous AMB settings could not be restored either (" + e2.what() + "), so the AMB is off");
        }
        return fail(why);
    }
}

int32_t llama_pace_amb_reset(struct llama_context * ctx, llama_seq_id seq_id) {
    auto * amb = synced_amb(ctx);
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
    const auto * amb = synced_amb(ctx);
    const amb_layer * l = amb ? amb->layer(il) : nullptr;
    if (!l) {
        return fail(format("layer %d has no AMB bank", il));
    }
    if (!amb->valid_seq(seq_id)) {
        return fail(format("seq_id %d is out of range [0, %u)", seq_id, amb->n_seq));
    }
    amb_host_seq h = amb->load(*l, seq_id, amb_host_seq::STATE | amb_host_seq::META);
    const auto b = h.view(l->n_ff, amb->params().bank_size);
    const int32_t * st = h.header();
    *out = {};
    out->bank_size = amb->params().bank_size;
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
    const auto * amb = synced_amb(ctx);
    const amb_layer * l = amb ? amb->layer(il) : nullptr;
    if (!l || !amb->valid_seq(seq_id)) {
        return fail(format("no AMB bank for layer %d, seq_id %d", il, seq_id));
    }
    amb_host_seq h = amb->load(*l, seq_id, amb_host_seq::BANK | amb_host_seq::META);
    const auto b = h.view(l->n_ff, amb->params().bank_size);
    const size_t kv = (size_t) b.M * b.n_ff * sizeof(float);
    if (keys)   { std::memcpy(keys, b.keys, kv); }
    if (values) { std::memcpy(values, b.vals, kv); }
    if (usage)  { std::memcpy(usage, b.usage, b.M * sizeof(float)); }
    if (valid)  { std::memcpy(valid, b.valid, b.M * sizeof(float)); }
    if (n_ff)   { *n_ff = l->n_ff; }
    return 0;
}

int32_t llama_pace_amb_get_cases(const struct llama_context * ctx, llama_seq_id seq_id, int32_t il, int32_t * out, int32_t n_pos) {
    const auto * amb = synced_amb(ctx);
    const amb_layer * l = amb ? amb->layer(il) : nullptr;
    if (!l || !amb->valid_seq(seq_id)) {
        return fail(format("no AMB bank for layer %d, seq_id %d", il, seq_id));
    }
    const int32_t n = std::max(0, std::min<int32_t>(n_pos, (int32_t) amb->n_pos));
    amb_host_seq h = amb->load(*l, seq_id, amb_host_seq::STATE);
    const int32_t * log = h.case_log();
    for (int32_t i = 0; i < n; ++i) {
        out[i] = case_from_log(log[i]); // a cleared entry reads as -1 (unknown)
    }
    return n;
}

int32_t llama_pace_amb_evict(struct llama_context * ctx, llama_seq_id seq_id, llama_pos p0, llama_pos p1) {
    llama_memory_t mem = llama_get_memory(ctx);
    if (!mem) {
        return fail("this context has no memory module to evict positions from");
    }
    if (seq_id < 0 || p0 < 0 || p1 <= p0) {
        return fail(format("evict: need seq_id >= 0 and 0 <= p0 < p1, got seq_id %d, [%d, %d)", seq_id, p0, p1));
    }
    if (!llama_memory_can_shift(mem)) {
        return fail("this context's memory cannot shift positions (e.g. a recurrent model or M-RoPE), so it cannot evict a window");
    }
    const llama_pos pos_max = llama_memory_seq_pos_max(mem, seq_id);
    if (p1 > pos_max + 1) {
        return fail(format("evict: [%d, %d) reaches beyond the last position of seq %d (%d)", p0, p1, seq_id, pos_max));
    }
    auto * amb = synced_amb(ctx);
    if (amb && !amb->valid_seq(seq_id)) {
        return fail(format("seq_id %d is out of range [0, %u)", seq_id, amb->n_seq));
    }
    if (amb && p0 == 0 && !amb->seqs[seq_id].empty() && amb->seqs[seq_id].pos_max < p1) {
        return fail(format("evict: [0, %d) removes every position the bank of seq %d absorbed, leaving what it holds "
                           "attached to no token; keep at least the first token (p0 >= 1)", p1, seq_id));
    }
    if (amb) {
        amb->evicting = true;
    }
    const bool removed = llama_memory_seq_rm(mem, seq_id, p0, p1);
    if (removed) {
        llama_memory_seq_add(mem, seq_id, p1, -1, -(p1 - p0));
    }
    if (amb) {
        amb->evicting = false;
        if (removed) {
            amb->on_evicted(seq_id, p0, p1);
        }
    }
    return removed ? 0 : fail(format("evict: the memory could not remove [%d, %d) of seq %d", p0, p1, seq_id));
}

size_t llama_pace_amb_memory_size(const struct llama_context * ctx) {
    const auto * amb = ctx->get_pace_amb();
    return amb ? amb->memory_size() : 0;
}

size_t llama_pace_amb_layer_bytes(const struct llama_pace_amb_params * params, int64_t n_ff, uint32_t n_seq, uint32_t n_pos) {
    if (!params || n_ff <= 0 || n_seq == 0) {
        llama_pace_set_error("layer_bytes: no params, or n_ff or n_seq not positive");
        return 0;
    }
    const std::string err = llama_pace_amb_check(*params, LLAMA_PACE_MAX_LAYERS);
    if (!err.empty()) {
        llama_pace_set_error("invalid AMB parameters: " + err);
        return 0;
    }
    try {
        ggml_context_ptr ctx = new_tensor_context(1);
        amb_layer l{0, n_ff};
        new_layer_tensors(ctx.get(), l, *params, n_seq, n_pos);
        // what ggml_backend_alloc_ctx_tensors_from_buft takes for these tensors: each one's
        // allocation size, padded to the buffer type's alignment
        ggml_backend_buffer_type_t buft = host_buffer_type();
        const size_t align = ggml_backend_buft_get_alignment(buft);
        size_t total = 0;
        for (ggml_tensor * t = ggml_get_first_tensor(ctx.get()); t; t = ggml_get_next_tensor(ctx.get(), t)) {
            total += GGML_PAD(ggml_backend_buft_get_alloc_size(buft, t), align);
        }
        return total;
    } catch (const std::exception & e) {
        llama_pace_set_error(e.what());
        return 0;
    }
}

int32_t llama_pace_amb_device_impl(ggml_backend_dev_t dev) {
    if (!dev) {
        return fail("device_impl: no device");
    }
    try {
        const llama_pace_amb_params p = llama_pace_amb_defaults();
        // a probe at a small width; the banks' placement asks again with each layer's own shapes
        switch (amb_impl_of(dev, amb_layer{0, 64}, p, 1, 1, 1)) {
            case amb_impl::fused:    return LLAMA_PACE_AMB_IMPL_KERNEL;
            case amb_impl::composed: return LLAMA_PACE_AMB_IMPL_COMPOSED;
            case amb_impl::host:     return LLAMA_PACE_AMB_IMPL_CPU;
        }
        return fail("device_impl: unknown implementation");
    } catch (const std::exception & e) {
        return fail(e.what());
    }
}

// ---- llama_context accessors (declared in llama-context.h) ---------------------------------------

llama_pace_amb * llama_context::get_pace_amb() const {
    return pace_amb;
}

void llama_context::pace_amb_reconfigured() {
    sched_need_reserve = true;
}
