// pace-gguf: the memory wrapper that connects a context's memory module to its bank owner, and the
// banks' part of the session state.
//
// The wrapper forwards every call to the memory module it owns and tells the bank owner about
// sequence operations as they happen: the public llama_memory_* functions, llama.cpp's rollback of
// a failed or aborted ubatch, and session state reads and writes all go through it.
//
// Session state: everything read is untrusted. The banks' section is read whole into staging
// buffers and checked (shapes, counts, flags, finite floats, the case log) before any bank changes.
#include "pace-amb-impl.h"

#include "llama-impl.h"
#include "llama-io.h"
#include "llama-memory.h"
#include "llama-model.h"
#include "llama-cparams.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

using namespace pace_amb;

namespace {

class llama_pace_memory : public llama_memory_i {
public:
    llama_pace_memory(std::unique_ptr<llama_memory_i> inner, std::unique_ptr<llama_pace_amb> amb) :
        inner(std::move(inner)), amb(std::move(amb)) {}

    llama_memory_context_ptr init_batch(llama_batch_allocr & balloc, uint32_t n_ubatch, bool embd_all) override {
        return inner->init_batch(balloc, n_ubatch, embd_all);
    }
    llama_memory_context_ptr init_full() override { return inner->init_full(); }
    llama_memory_context_ptr init_update(llama_context * lctx, bool optimize) override {
        return inner->init_update(lctx, optimize);
    }
    bool get_can_shift() const override { return inner->get_can_shift(); }

    void clear(bool data) override {
        inner->clear(data);
        amb->on_clear();
    }
    bool seq_rm(llama_seq_id seq_id, llama_pos p0, llama_pos p1) override {
        const bool removed = inner->seq_rm(seq_id, p0, p1);
        if (removed) {
            amb->on_seq_rm(seq_id, p0, p1);
        }
        return removed;
    }
    void seq_cp(llama_seq_id src, llama_seq_id dst, llama_pos p0, llama_pos p1) override {
        inner->seq_cp(src, dst, p0, p1);
        amb->on_seq_cp(src, dst, p0, p1);
    }
    void seq_keep(llama_seq_id seq_id) override {
        inner->seq_keep(seq_id);
        amb->on_seq_keep(seq_id);
    }
    void seq_add(llama_seq_id seq_id, llama_pos p0, llama_pos p1, llama_pos shift) override {
        inner->seq_add(seq_id, p0, p1, shift);
        if (shift != 0) {
            amb->on_seq_shift(seq_id, p0, p1);
        }
    }
    void seq_div(llama_seq_id seq_id, llama_pos p0, llama_pos p1, int d) override {
        inner->seq_div(seq_id, p0, p1, d);
        if (d != 1) {
            amb->on_seq_shift(seq_id, p0, p1);
        }
    }
    llama_pos seq_pos_min(llama_seq_id seq_id) const override { return inner->seq_pos_min(seq_id); }
    llama_pos seq_pos_max(llama_seq_id seq_id) const override { return inner->seq_pos_max(seq_id); }

    std::map<ggml_backend_buffer_type_t, size_t> memory_breakdown() const override {
        auto out = inner->memory_breakdown();
        for (const auto & buf : amb->banks.bufs) {
            out[ggml_backend_buffer_get_type(buf.get())] += ggml_backend_buffer_get_size(buf.get());
        }
        return out;
    }

    void state_write(llama_io_write_i & io, llama_seq_id seq_id, llama_state_seq_flags flags) const override {
        inner->state_write(io, seq_id, flags);
        llama_pace_amb_state_write(amb.get(), io, seq_id);
    }
    void state_read(llama_io_read_i & io, llama_seq_id seq_id, llama_state_seq_flags flags) override {
        inner->state_read(io, seq_id, flags);
        llama_pace_amb_state_read(amb.get(), io, seq_id);
    }

private:
    std::unique_ptr<llama_memory_i> inner;
    std::unique_ptr<llama_pace_amb> amb;
};

} // namespace

std::unique_ptr<llama_memory_i> llama_pace_memory_wrap(std::unique_ptr<llama_memory_i> memory, const llama_model & model,
                                                       const llama_cparams & cparams, llama_pace_amb ** amb_out) {
    *amb_out = nullptr;
    if (!memory) {
        return memory;
    }
    auto amb = std::make_unique<llama_pace_amb>(model, std::max(1u, cparams.n_seq_max), cparams.n_ctx,
                                                std::max(1u, cparams.n_ubatch));
    try {
        amb->configure(llama_pace_amb_params_from_model(model));
    } catch (const std::exception & e) {
        // The model still loads: its AMB settings are refused, the AMB stays off, and
        // llama_pace_amb_model_params() says why.
        amb->model_params_error = e.what();
        LLAMA_LOG_WARN("%s: pace: the AMB is off: %s\n", __func__, e.what());
    }
    *amb_out = amb.get();
    return std::make_unique<llama_pace_memory>(std::move(memory), std::move(amb));
}

// ---- session state -------------------------------------------------------------------------------

namespace {

constexpr uint32_t STATE_MAGIC   = 0x424d4150; // "PAMB"
constexpr uint32_t STATE_VERSION = 2;

template <typename T> void write_val(llama_io_write_i & io, T v) { io.write(&v, sizeof(v)); }
template <typename T> T read_val(llama_io_read_i & io) { T v; io.read(&v, sizeof(v)); return v; }

// The sequences a state section covers: all (seq_id < 0), one, or none (a sequence without a bank).
std::vector<llama_seq_id> section_seqs(const llama_pace_amb & amb, llama_seq_id seq_id) {
    std::vector<llama_seq_id> out;
    for (uint32_t s = 0; s < amb.n_seq; ++s) {
        if (seq_id < 0 || (uint32_t) seq_id == s) {
            out.push_back((llama_seq_id) s);
        }
    }
    return out;
}

} // namespace

void llama_pace_amb_state_write(const llama_pace_amb * amb, llama_io_write_i & io, llama_seq_id seq_id) {
    write_val<uint32_t>(io, STATE_MAGIC);
    write_val<uint32_t>(io, STATE_VERSION);
    const uint32_t n_layers = amb ? (uint32_t) amb->banks.layers.size() : 0;
    write_val<uint32_t>(io, n_layers);
    if (n_layers == 0) {
        return;
    }
    const std::vector<llama_seq_id> seqs = section_seqs(*amb, seq_id);
    write_val<uint32_t>(io, (uint32_t) seqs.size());
    write_val<int32_t>(io, amb->params().bank_size);
    write_val<uint32_t>(io, amb->n_pos);
    for (const auto & l : amb->banks.layers) {
        write_val<int32_t>(io, l.il);
        write_val<int64_t>(io, l.n_ff);
    }
    for (const auto & l : amb->banks.layers) {
        for (llama_seq_id s : seqs) {
            amb_host_seq h = amb->load(l, s, amb_host_seq::ALL);
            io.write(h.bank.data(), h.bank.size() * sizeof(float));
            io.write(h.meta.data(), h.meta.size() * sizeof(float));
            // The rows a failed decode left buffered are never saved: the header says none are pending.
            h.header()[ST_N_PENDING] = 0;
            h.header()[ST_FLAGS] = 0;
            io.write(h.state.data(), h.state.size() * sizeof(int32_t));
        }
    }
    for (llama_seq_id s : seqs) {
        write_val<int32_t>(io, amb->seqs[s].pos_min);
        write_val<int32_t>(io, amb->seqs[s].pos_max);
    }
}

namespace {

[[noreturn]] void corrupt(const std::string & what) {
    throw std::runtime_error("the AMB section of the state is corrupt: " + what);
}

// Checks one (layer, sequence) of a state being read before it is used.
void check_bank(const llama_pace_amb & amb, const amb_layer & l, amb_host_seq & b) {
    const int32_t M = amb.params().bank_size;
    const bank_view bv = b.view(l.n_ff, M);
    for (int32_t j = 0; j < M; ++j) {
        if (bv.valid[j] != 0.0f && bv.valid[j] != 1.0f) {
            corrupt(format("layer %d slot %d: valid flag %g", l.il, j, bv.valid[j]));
        }
        if (!(std::isfinite(bv.usage[j]) && bv.usage[j] >= 0.0f)) {
            corrupt(format("layer %d slot %d: usage %g", l.il, j, bv.usage[j]));
        }
        float * k = bv.keys + (int64_t) j * l.n_ff, * v = bv.vals + (int64_t) j * l.n_ff;
        if (bv.valid[j] == 0.0f) {
            std::memset(k, 0, l.n_ff * sizeof(float));
            std::memset(v, 0, l.n_ff * sizeof(float));
            bv.usage[j] = bv.knorm[j] = 0.0f;
            continue;
        }
        if (!all_finite(k, l.n_ff) || !all_finite(v, l.n_ff)) {
            corrupt(format("layer %d slot %d holds non-finite values", l.il, j));
        }
        bv.knorm[j] = clamped_norm(k, l.n_ff); // derived data is recomputed, not trusted
    }
    int32_t * st = b.state.data();
    if (st[ST_N_PENDING] != 0 || st[ST_FLAGS] != 0) {
        corrupt(format("layer %d: %d pending rows, flags %d (a saved state has none)", l.il, st[ST_N_PENDING], st[ST_FLAGS]));
    }
    for (int32_t f : {ST_N_HIGH, ST_N_MID, ST_N_LOW}) {
        if (st[f] < 0) {
            corrupt(format("layer %d: negative case count %d", l.il, st[f]));
        }
    }
    for (int32_t f = ST_COUNT; f < GGML_AMB_STATE_HEADER; ++f) {
        if (st[f] != 0) {
            corrupt(format("layer %d: unknown header field %d = %d", l.il, f, st[f]));
        }
    }
    for (size_t i = GGML_AMB_STATE_HEADER; i < b.state.size(); ++i) {
        if (st[i] < 0 || st[i] > CASE_LOG_MAX) {
            corrupt(format("layer %d: case log entry %d", l.il, st[i]));
        }
    }
}

void read_header(const llama_pace_amb * amb, llama_io_read_i & io, size_t n_seq_want, uint32_t & n_seq) {
    const uint32_t n_layers = read_val<uint32_t>(io);
    const uint32_t want = amb ? (uint32_t) amb->banks.layers.size() : 0;
    if (n_layers != want) {
        throw std::runtime_error(format("state holds AMB banks for %u layer(s), this context has %u", n_layers, want));
    }
    if (n_layers == 0) {
        n_seq = 0;
        return;
    }
    n_seq = read_val<uint32_t>(io);
    const int32_t  M     = read_val<int32_t>(io);
    const uint32_t n_pos = read_val<uint32_t>(io);
    if (n_seq != n_seq_want || M != amb->params().bank_size || n_pos != amb->n_pos) {
        throw std::runtime_error(format("state AMB bank shape (seqs %u, slots %d, positions %u) does not match this context "
                "(seqs %zu, slots %d, positions %u)", n_seq, M, n_pos, n_seq_want, amb->params().bank_size, amb->n_pos));
    }
    for (const auto & l : amb->banks.layers) {
        const int32_t il = read_val<int32_t>(io);
        const int64_t n_ff = read_val<int64_t>(io);
        if (il != l.il || n_ff != l.n_ff) {
            throw std::runtime_error(format("state AMB layer %d (n_ff %lld) does not match this context's layer %d (n_ff %lld)",
                    il, (long long) n_ff, l.il, (long long) l.n_ff));
        }
    }
}

void state_read_checked(llama_pace_amb * amb, llama_io_read_i & io, llama_seq_id seq_id) {
    if (read_val<uint32_t>(io) != STATE_MAGIC || read_val<uint32_t>(io) != STATE_VERSION) {
        throw std::runtime_error("state has no pace AMB section of this version (written by another build?)");
    }
    const std::vector<llama_seq_id> seqs = amb ? section_seqs(*amb, seq_id) : std::vector<llama_seq_id>{};
    uint32_t n_seq = 0;
    read_header(amb, io, seqs.size(), n_seq);
    if (n_seq == 0) {
        return;
    }
    std::vector<amb_host_seq> staged;
    for (const auto & l : amb->banks.layers) {
        for (size_t i = 0; i < seqs.size(); ++i) {
            amb_host_seq b;
            b.bank.resize(amb->seq_bytes(l.bank) / sizeof(float));
            b.meta.resize(amb->seq_bytes(l.meta) / sizeof(float));
            b.state.resize(amb->seq_bytes(l.state) / sizeof(int32_t));
            io.read(b.bank.data(), b.bank.size() * sizeof(float));
            io.read(b.meta.data(), b.meta.size() * sizeof(float));
            io.read(b.state.data(), b.state.size() * sizeof(int32_t));
            check_bank(*amb, l, b);
            staged.push_back(std::move(b));
        }
    }
    std::vector<llama_pace_amb::seq_info> infos(seqs.size());
    for (auto & si : infos) {
        si.pos_min = read_val<int32_t>(io);
        si.pos_max = read_val<int32_t>(io);
        const bool none = si.pos_min == -1 && si.pos_max == -1;
        if (!none && !(si.pos_min >= 0 && si.pos_min <= si.pos_max)) {
            corrupt(format("absorbed positions [%d, %d]", si.pos_min, si.pos_max));
        }
    }
    // Everything checked: commit.
    size_t k = 0;
    for (const auto & l : amb->banks.layers) {
        for (llama_seq_id s : seqs) {
            amb->save(l, s, staged[k++], amb_host_seq::ALL);
        }
    }
    for (size_t i = 0; i < seqs.size(); ++i) {
        const int32_t inv = amb->seqs[seqs[i]].n_invalidations;
        amb->seqs[seqs[i]] = infos[i];
        amb->seqs[seqs[i]].n_invalidations = inv;
    }
}

} // namespace

void llama_pace_amb_state_read(llama_pace_amb * amb, llama_io_read_i & io, llama_seq_id seq_id) {
    try {
        if (amb) {
            amb->drop_pending(); // rows a failed decode left buffered do not belong to the restored state
        }
        state_read_checked(amb, io, seq_id);
    } catch (const std::exception & e) {
        llama_pace_set_error(std::string("state file: ") + e.what());
        if (amb) {
            amb->reset(seq_id); // the memory module was restored already; never keep banks that do not match it
        }
        throw;
    }
}
