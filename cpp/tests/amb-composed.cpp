// pace-gguf: the AMB composed from standard ggml ops (cpp/src/ggml-amb-composed.cpp, design A of
// cpp/src/BACKENDS.md) on a device, against the fused GGML_OP_AMB on the CPU, the oracle.
//
// Runs one AMB layer's op on a ubatch drawn to meet all three cases, in S sequences whose banks hold
// --fill of their 100 slots (default 50), on a backend (the CPU, or any device ggml was built with: --device Vulkan0), and
// compares with the fused op on the CPU: enhanced rows, case labels, the banks after the store
// (keys, values, usage, valid), the counters. Then it times both, counts the composed graph's
// nodes and lists its ops with their types (what a backend's supports_op is asked). `--impl fused`
// runs the device's own GGML_OP_AMB kernel instead (cpp/src/vulkan/amb.comp on Vulkan, cpp/src/cuda
// on CUDA): the check and the timing of a backend kernel. The store goes in chunks of --chunk rows;
// `--span P` opens a prompt-granularity span with P rows already pending per sequence: the rows
// retrieve against a snapshot unlike the live bank and join the pending rows, every full chunk is
// stored, and the pending rows left (count and rows) are compared too.
// Exit status 0 when every case label, counter and pending count agrees; 3 when the device's
// supports_op declines a node (nothing is compared then: the runtime would not put it there).
//
//   cmake --build build/<wheel tag> --target pace-amb-composed
//   build/<wheel tag>/pace-amb-composed [--device NAME] [--impl composed|fused] [--n-ff N]
//       [--tokens T] [--seqs S] [--mode code|paper] [--fill SLOTS] [--chunk C] [--span P] [--reps R]
#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"

#include "ggml-amb-composed.h"
#include "pace-amb-layout.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace {

// ---- harness ---------------------------------------------------------------------------------------

struct options {
    std::string device = "CPU";
    int64_t n_ff = 1536;
    int64_t tokens = 64;
    int64_t seqs = 1;
    int reps = 5;
    int threads = 2;
    int chunk = 1024;   // store chunk
    int mode = 0;       // 0 code, 1 paper
    int fill = 50;      // valid slots per bank (of 100)
    int span = -1;      // --span P: a prompt span is open with P rows pending per sequence
    bool fused = false; // --impl fused: the device's GGML_OP_AMB kernel instead of the composed graph
};

constexpr int M = 100;

struct state {
    std::vector<float> x, bank, meta;
    std::vector<float> snap, snap_meta, pend; // with --span
    std::vector<int32_t> rows;                // sequence, position
};

// Per sequence, a bank whose first `fill` slots hold copies of the rows `src` at three noise levels
// (high, mid and low similarity), usage 1..4, the rest free.
void fill_banks(std::vector<float> & bank_data, std::vector<float> & meta_data, const std::vector<float> & src_rows, int64_t n_ff,
                int64_t S, int fill, std::mt19937 & rng) {
    std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
    const int64_t n_src = (int64_t) src_rows.size() / n_ff;
    bank_data.assign(n_ff * 2 * M * S, 0.0f);
    meta_data.assign(3 * M * S, 0.0f);
    const float noise[3] = {0.2f, 1.0f, 4.0f};
    for (int64_t s = 0; s < S; ++s) {
        float * bank = bank_data.data() + s * 2 * M * n_ff, * meta = meta_data.data() + s * 3 * M;
        for (int j = 0; j < fill; ++j) {
            const float * src = src_rows.data() + ((j * S + s) % n_src) * n_ff;
            float * key = bank + j * n_ff, * val = bank + (M + j) * n_ff;
            double nrm = 0;
            for (int64_t i = 0; i < n_ff; ++i) {
                key[i] = src[i] + noise[j % 3] * uni(rng);
                val[i] = uni(rng);
                nrm += (double) key[i] * key[i];
            }
            meta[j] = (float) (1 + j % 4);
            meta[M + j] = 1.0f;
            meta[2 * M + j] = std::max((float) std::sqrt(nrm), pace_amb::EPS);
        }
    }
}

// Banks as above, rows of uniform noise dealt to the sequences in turn, every 16th row to no sequence
// at all; with a span, a snapshot drawn like the banks but apart from them (other noise, other slots
// filled) and `span` pending rows per sequence, themselves like the ubatch's.
state make_state(const options & o, unsigned seed) {
    const int64_t n_ff = o.n_ff, T = o.tokens, S = o.seqs;
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
    state st;
    st.x.resize(n_ff * T);
    for (float & f : st.x) f = uni(rng);
    fill_banks(st.bank, st.meta, st.x, n_ff, S, o.fill, rng);
    if (o.span >= 0) {
        fill_banks(st.snap, st.snap_meta, st.x, n_ff, S, std::min(M, o.fill + 25), rng);
        st.pend.assign(n_ff * 2 * o.chunk * S, 0.0f);
        for (int64_t s = 0; s < S; ++s) {
            for (int64_t j = 0; j < o.span; ++j) {
                float * key = st.pend.data() + (s * 2 * o.chunk + j) * n_ff, * val = key + o.chunk * n_ff;
                const float * src = st.x.data() + ((j * S + s) % T) * n_ff;
                for (int64_t i = 0; i < n_ff; ++i) {
                    key[i] = src[i] + 0.5f * uni(rng);
                    val[i] = uni(rng);
                }
            }
        }
    }
    // the next ubatch's rows resemble the banks': new noise on the same sources
    for (int64_t t = 0; t < T; ++t) {
        for (int64_t i = 0; i < n_ff; ++i) st.x[t * n_ff + i] += 0.3f * uni(rng);
        const bool none = T > 1 && t % 16 == 15;
        st.rows.push_back(none ? -1 : (int32_t) (t % S));
        st.rows.push_back((int32_t) (t / S));
    }
    return st;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct run_result {
    std::vector<float> out, bank, meta, pend;
    std::vector<int32_t> state;
    double seconds_per_call = 0;
    int n_nodes = 0;              // computing nodes
    std::string declined;         // the first node the backend's supports_op declined (nothing ran)
    std::set<std::string> kinds;  // each computing node's op and types, e.g. "GET_ROWS f32,i32->f32"
};

// "OP src types->type": what a backend's supports_op decides on (besides shapes and layouts)
std::string kind_of(const ggml_tensor * node) {
    std::string k = ggml_op_desc(node);
    for (int i = 0; i < GGML_MAX_SRC && node->src[i]; ++i) {
        k += (i ? "," : " ") + std::string(ggml_type_name(node->src[i]->type));
    }
    return k + "->" + ggml_type_name(node->type);
}

ggml_amb_params params_of(const options & o) {
    return {0.75f, 0.25f, 0.2f, 1.0f, 0.5f, 0.1f, 0.5f, 5, 2, 5, o.chunk, o.mode};
}

int count_kernels(ggml_cgraph * gf) {
    int n = 0;
    for (int i = 0; i < ggml_graph_n_nodes(gf); ++i) {
        n += pace_amb_composed::computes(ggml_graph_node(gf, i));
    }
    return n;
}

run_result run(ggml_backend_t backend, bool fused, const state & st, const options & o) {
    const int64_t n_ff = o.n_ff, T = o.tokens, S = o.seqs;
    constexpr size_t MAX_NODES = 16384;
    ggml_init_params ip = {ggml_tensor_overhead() * MAX_NODES + ggml_graph_overhead_custom(MAX_NODES, false), nullptr, true};
    ggml_context * ctx = ggml_init(ip);
    const bool span = o.span >= 0;
    ggml_tensor * x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n_ff, T);
    ggml_tensor * bank = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, n_ff, 2 * M, S);
    ggml_tensor * meta = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 3 * M, S);
    ggml_tensor * state_t = ggml_new_tensor_2d(ctx, GGML_TYPE_I32, GGML_AMB_STATE_HEADER + T, S);
    ggml_tensor * snap = span ? ggml_dup_tensor(ctx, bank) : nullptr;
    ggml_tensor * snap_meta = span ? ggml_dup_tensor(ctx, meta) : nullptr;
    ggml_tensor * pend = span ? ggml_new_tensor_3d(ctx, GGML_TYPE_F32, n_ff, 2 * o.chunk, S) : nullptr;
    ggml_tensor * tokens = ggml_new_tensor_2d(ctx, GGML_TYPE_I32, 2, T);
    const pace_amb_composed::bank_tensors b = pace_amb_composed::new_constants(ctx, bank, meta, state_t, snap, snap_meta, pend);
    const pace_amb_composed::row_inputs in = pace_amb_composed::new_row_inputs(ctx, T, S);
    ggml_backend_buffer_t leaves = ggml_backend_alloc_ctx_tensors(ctx, backend);

    ggml_backend_tensor_set(x, st.x.data(), 0, ggml_nbytes(x));
    ggml_backend_tensor_set(bank, st.bank.data(), 0, ggml_nbytes(bank));
    ggml_backend_tensor_set(meta, st.meta.data(), 0, ggml_nbytes(meta));
    ggml_backend_tensor_set(tokens, st.rows.data(), 0, ggml_nbytes(tokens));
    std::vector<int32_t> header(ggml_nelements(state_t), 0);
    if (span) { // what llama_pace_amb_decode_begin and the ubatches before left
        for (int64_t s = 0; s < S; ++s) {
            header[s * state_t->ne[0] + pace_amb::ST_N_PENDING] = o.span;
            header[s * state_t->ne[0] + pace_amb::ST_FLAGS]     = pace_amb::FLAG_PROMPT_SPAN;
        }
        ggml_backend_tensor_set(snap, st.snap.data(), 0, ggml_nbytes(snap));
        ggml_backend_tensor_set(snap_meta, st.snap_meta.data(), 0, ggml_nbytes(snap_meta));
        ggml_backend_tensor_set(pend, st.pend.data(), 0, ggml_nbytes(pend));
    }
    ggml_backend_tensor_set(state_t, header.data(), 0, ggml_nbytes(state_t));
    pace_amb_composed::set_constants(b);
    pace_amb_composed::set_rows_of(in, b, st.rows);

    ggml_cgraph * gf = ggml_new_graph_custom(ctx, MAX_NODES, false);
    ggml_tensor * out;
    if (fused) {
        out = ggml_amb(ctx, x, tokens, bank, meta, state_t, snap, snap_meta, pend, params_of(o));
        ggml_build_forward_expand(gf, out);
    } else {
        const pace_amb_composed::graph g = pace_amb_composed::build(ctx, x, b, in, params_of(o), span);
        out = g.out;
        ggml_set_output(out);
        ggml_build_forward_expand(gf, out);
        for (ggml_tensor * wr : g.writes) ggml_build_forward_expand(gf, wr);
    }
    run_result r;
    // what the runtime's placement asks too (a kernel may decline an op, e.g. over lavapipe's loop budget)
    for (int i = 0; i < ggml_graph_n_nodes(gf) && r.declined.empty(); ++i) {
        ggml_tensor * node = ggml_graph_node(gf, i);
        if (pace_amb_composed::computes(node) && !ggml_backend_supports_op(backend, node)) {
            r.declined = kind_of(node);
        }
    }
    if (!r.declined.empty()) {
        ggml_backend_buffer_free(leaves);
        ggml_free(ctx);
        return r;
    }
    ggml_gallocr_t galloc = ggml_gallocr_new(ggml_backend_get_default_buffer_type(backend));
    GGML_ASSERT(ggml_gallocr_alloc_graph(galloc, gf));
    GGML_ASSERT(ggml_backend_graph_compute(backend, gf) == GGML_STATUS_SUCCESS);

    r.n_nodes = count_kernels(gf);
    for (int i = 0; i < ggml_graph_n_nodes(gf); ++i) {
        if (pace_amb_composed::computes(ggml_graph_node(gf, i))) {
            r.kinds.insert(kind_of(ggml_graph_node(gf, i)));
        }
    }
    r.out.resize(n_ff * T);
    r.bank.resize(st.bank.size());
    r.meta.resize(st.meta.size());
    r.state.resize(ggml_nelements(state_t));
    ggml_backend_tensor_get(out, r.out.data(), 0, ggml_nbytes(out));
    ggml_backend_tensor_get(bank, r.bank.data(), 0, ggml_nbytes(bank));
    ggml_backend_tensor_get(meta, r.meta.data(), 0, ggml_nbytes(meta));
    ggml_backend_tensor_get(state_t, r.state.data(), 0, ggml_nbytes(state_t));
    if (pend) {
        r.pend.resize(ggml_nelements(pend));
        ggml_backend_tensor_get(pend, r.pend.data(), 0, ggml_nbytes(pend));
    }
    // timing: the same graph again (the bank keeps changing, as in a real decode)
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < o.reps; ++i) {
        ggml_backend_graph_compute(backend, gf);
    }
    ggml_backend_synchronize(backend);
    r.seconds_per_call = seconds_since(t0) / o.reps;

    ggml_gallocr_free(galloc);
    ggml_backend_buffer_free(leaves);
    ggml_free(ctx);
    return r;
}

// max |a - b| / max |b| over the rows of one half of every sequence's bank (half 0 keys, 1 values)
double bank_diff(const std::vector<float> & a, const std::vector<float> & b, int64_t n_ff, int64_t S, int half) {
    double num = 0, den = 1e-30;
    for (int64_t s = 0; s < S; ++s) {
        const size_t begin = (size_t) (s * 2 * M + half * M) * n_ff, end = begin + (size_t) M * n_ff;
        for (size_t i = begin; i < end; ++i) {
            num = std::max(num, (double) std::fabs(a[i] - b[i]));
            den = std::max(den, (double) std::fabs(b[i]));
        }
    }
    return num / den;
}

double max_rel_diff(const std::vector<float> & a, const std::vector<float> & b) {
    double num = 0, den = 1e-30;
    for (size_t i = 0; i < a.size(); ++i) {
        num = std::max(num, (double) std::fabs(a[i] - b[i]));
        den = std::max(den, (double) std::fabs(b[i]));
    }
    return num / den;
}

options parse(int argc, char ** argv) {
    options o;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i];
        if (a == "--device") o.device = argv[i + 1];
        else if (a == "--n-ff") o.n_ff = std::stoll(argv[i + 1]);
        else if (a == "--tokens") o.tokens = std::stoll(argv[i + 1]);
        else if (a == "--seqs") o.seqs = std::stoll(argv[i + 1]);
        else if (a == "--reps") o.reps = std::stoi(argv[i + 1]);
        else if (a == "--threads") o.threads = std::stoi(argv[i + 1]);
        else if (a == "--chunk") o.chunk = std::stoi(argv[i + 1]);
        else if (a == "--mode") o.mode = std::string(argv[i + 1]) == "paper";
        else if (a == "--fill") o.fill = std::clamp(std::stoi(argv[i + 1]), 0, M);
        else if (a == "--span") o.span = std::stoi(argv[i + 1]);
        else if (a == "--impl") o.fused = std::string(argv[i + 1]) == "fused";
    }
    return o;
}

} // namespace

int main(int argc, char ** argv) {
    const options o = parse(argc, argv);
    ggml_backend_load_all();
    ggml_backend_t cpu = ggml_backend_cpu_init();
    ggml_backend_cpu_set_n_threads(cpu, o.threads);
    ggml_backend_dev_t dev = ggml_backend_dev_by_name(o.device.c_str());
    if (!dev) {
        fprintf(stderr, "no device %s\n", o.device.c_str());
        return 2;
    }
    if (o.chunk < 1 || o.span >= o.chunk) {
        fprintf(stderr, "--chunk must be at least 1 and --span below it\n");
        return 2;
    }
    if (!o.fused && !pace_amb_composed::covers(params_of(o), o.span >= 0, o.tokens, o.seqs)) {
        fprintf(stderr, "the composed graph does not cover these settings (ggml-amb-composed.h: covers)\n");
        return 2;
    }
    ggml_backend_t backend = o.device == "CPU" ? cpu : ggml_backend_dev_init(dev, nullptr);

    const int64_t T = o.tokens, S = o.seqs;
    const state st = make_state(o, 42);
    const run_result ref = run(cpu, true, st, o);
    const run_result got = run(backend, o.fused, st, o);
    const char * impl = o.fused ? "fused" : "composed";
    if (!got.declined.empty()) { // exit status 3: not a disagreement, the device does not take it
        printf("device %s declines the %s op: its supports_op refuses %s\n", o.device.c_str(), impl, got.declined.c_str());
        if (backend != cpu) ggml_backend_free(backend);
        ggml_backend_free(cpu);
        return 3;
    }

    // case labels from the case log (case + 1 per position; rows of no sequence are not logged)
    int same = 0, n_logged = 0, n_case[3] = {0, 0, 0};
    const int64_t row_len = GGML_AMB_STATE_HEADER + T;
    for (int64_t t = 0; t < T; ++t) {
        const int32_t s = st.rows[2 * t], pos = st.rows[2 * t + 1];
        if (s < 0) continue;
        const size_t at = s * row_len + GGML_AMB_STATE_HEADER + pos;
        n_logged++;
        same += ref.state[at] == got.state[at];
        n_case[std::clamp(ref.state[at] - 1, 0, 2)]++;
    }
    bool counters_same = true;
    for (int64_t s = 0; s < S; ++s) {
        for (int f = 1; f <= 3; ++f) counters_same &= ref.state[s * row_len + f] == got.state[s * row_len + f];
    }
    int usage_same = 0, valid_same = 0;
    for (int64_t s = 0; s < S; ++s) {
        for (int j = 0; j < M; ++j) {
            usage_same += ref.meta[s * 3 * M + j] == got.meta[s * 3 * M + j];
            valid_same += ref.meta[s * 3 * M + M + j] == got.meta[s * 3 * M + M + j];
        }
    }
    // pending rows (a span): each sequence's count, and its rows below the count
    bool pending_same = true;
    double pend_keys = 0, pend_vals = 0;
    for (int64_t s = 0; o.span >= 0 && s < S; ++s) {
        const int32_t n = ref.state[s * row_len + pace_amb::ST_N_PENDING];
        pending_same &= n == got.state[s * row_len + pace_amb::ST_N_PENDING];
        for (int32_t j = 0; j < std::min(n, o.chunk); ++j) {
            for (int64_t i = 0; i < o.n_ff; ++i) {
                const size_t k = (s * 2 * o.chunk + j) * o.n_ff + i, v = k + o.chunk * o.n_ff;
                pend_keys = std::max(pend_keys, (double) std::fabs(got.pend[k] - ref.pend[k]));
                pend_vals = std::max(pend_vals, (double) std::fabs(got.pend[v] - ref.pend[v]));
            }
        }
    }
    printf("device %s, n_ff %lld, tokens %lld, %lld sequence(s), %s mode, bank %d (%d slots filled), chunk %d, %s\n",
           o.device.c_str(), (long long) o.n_ff, (long long) T, (long long) S, o.mode ? "paper" : "code", M, o.fill, o.chunk,
           o.span >= 0 ? ("prompt span, " + std::to_string(o.span) + " rows pending").c_str() : "ubatch granularity");
    printf("  cases (fused, CPU): low %d, mid %d, high %d; %s (%s) agrees on %d/%d; counters %s\n", n_case[0], n_case[1],
           n_case[2], impl, o.device.c_str(), same, n_logged, counters_same ? "equal" : "DIFFER");
    printf("  enhanced rows: max |diff| / max |fused| = %.3g\n", max_rel_diff(got.out, ref.out));
    printf("  banks after the store: keys %.3g, values %.3g (relative); usage equal %d/%lld, valid equal %d/%lld\n",
           bank_diff(got.bank, ref.bank, o.n_ff, S, 0), bank_diff(got.bank, ref.bank, o.n_ff, S, 1), usage_same,
           (long long) (M * S), valid_same, (long long) (M * S));
    printf("  time per call: fused (CPU) %.1f us, %s (%s) %.1f us, %d computing nodes\n", ref.seconds_per_call * 1e6,
           impl, o.device.c_str(), got.seconds_per_call * 1e6, got.n_nodes);
    if (o.span >= 0) {
        printf("  pending rows after: counts %s (sequence 0: %d); max |diff| keys %.3g, values %.3g\n",
               pending_same ? "equal" : "DIFFER", ref.state[pace_amb::ST_N_PENDING], pend_keys, pend_vals);
    }
    if (!o.fused) {
        printf("  ops:");
        for (const std::string & k : got.kinds) printf(" %s;", k.c_str());
        printf("\n");
    }
    if (backend != cpu) ggml_backend_free(backend);
    ggml_backend_free(cpu);
    return same == n_logged && counters_same && pending_same ? 0 : 1;
}
