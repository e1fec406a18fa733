// pace-gguf's public C API, exported by libllama next to llama.h's functions and defined in
// pace-gguf's cpp/src (pace-version.cpp.in, pace-amb.cpp). Its user is Python: pace_gguf/_native.py
// and pace_gguf/amb.py bind these functions with ctypes. A header of its own keeps upstream's
// llama.h unpatched but for the session-version bump (cpp/patches/0004).
#pragma once

#include "llama.h" // LLAMA_API, llama_context, llama_model, llama_seq_id, llama_pos

#ifdef __cplusplus
extern "C" {
#endif

    // Identifies a llama.cpp build of pace-gguf (Python checks it to know the library is ours).
    // Returns e.g. "pace-gguf 0.1.0 llama.cpp b11312 patches 7:3f2a9c0d".
    LLAMA_API const char * llama_pace_version(void);
    // The RPC protocol version this build speaks (cpp/patches/0009), major << 16 | minor << 8 | patch,
    // so that a client can check a server's handshake before llama.cpp's RPC backend, which aborts
    // the process on a failed connection, meets it.
    LLAMA_API uint32_t llama_pace_rpc_protocol(void);

    //
    // Activation Memory Bank (PaceLLM) of a context, defined in pace-amb.cpp.
    // Defaults come from the model's pace.amb.* GGUF keys (disabled when absent). Layers are 0-based.
    //

#define LLAMA_PACE_MAX_LAYERS 512

    enum llama_pace_amb_mode {
        LLAMA_PACE_AMB_MODE_CODE  = 0, // the released code's rules (default)
        LLAMA_PACE_AMB_MODE_PAPER = 1, // the paper's Algorithm 1
    };

    enum llama_pace_amb_granularity {
        LLAMA_PACE_AMB_GRANULARITY_UBATCH = 0, // each ubatch reads the bank as left by the previous one
        LLAMA_PACE_AMB_GRANULARITY_PROMPT = 1, // a whole batch reads the bank as it was before the batch
    };

    struct llama_pace_amb_params {
        bool    enabled;
        int32_t mode;        // enum llama_pace_amb_mode
        int32_t granularity; // enum llama_pace_amb_granularity
        int32_t bank_size;   // slots per bank
        int32_t topk;        // retrieval: positive neighbours
        int32_t negk;        // retrieval: least similar neighbours ("noise")
        int32_t store_topk;  // store: neighbours whose mean similarity decides the case
        int32_t chunk;       // store chunk in tokens
        float   theta_high;
        float   theta_low;
        float   alpha;       // fusion weight (code mode)
        float   w_high;
        float   w_mid;
        float   lambda;      // weight of the least-similar neighbours
        float   momentum;    // merge: slot = momentum*slot + (1-momentum)*mean
        int32_t n_layers;
        int32_t layers[LLAMA_PACE_MAX_LAYERS];
    };

    struct llama_pace_amb_stats {
        int32_t bank_size;
        int32_t n_slots_used;
        int64_t n_high;          // retrieval cases since the last reset
        int64_t n_mid;
        int64_t n_low;
        int32_t n_invalidations; // resets forced by removing or moving positions the bank had absorbed
        int32_t pos_min;         // positions absorbed since the last reset (-1: none)
        int32_t pos_max;
    };

    LLAMA_API struct llama_pace_amb_params llama_pace_amb_default_params(void);
    // 0 if params are valid for a model with n_layer layers, else -1 (see llama_pace_last_error):
    // the rules set_params applies, for tools that write pace.amb.* metadata (the converter).
    LLAMA_API int32_t llama_pace_amb_validate_params(const struct llama_pace_amb_params * params, int32_t n_layer);
    // 0 on success; -1 if the model's pace.amb.* keys are invalid (see llama_pace_last_error): the
    // model still loads, with the AMB off, and out gets the defaults.
    LLAMA_API int32_t llama_pace_amb_model_params(const struct llama_model * model, struct llama_pace_amb_params * out);
    LLAMA_API int32_t llama_pace_amb_get_params(const struct llama_context * ctx, struct llama_pace_amb_params * out);
    // Validates and applies; re-allocates (empties) every bank. 0 on success, -1 if invalid.
    LLAMA_API int32_t llama_pace_amb_set_params(struct llama_context * ctx, const struct llama_pace_amb_params * params);
    // Empties the banks of one sequence (seq_id >= 0) or of all sequences (seq_id < 0).
    LLAMA_API int32_t llama_pace_amb_reset(struct llama_context * ctx, llama_seq_id seq_id);
    LLAMA_API int32_t llama_pace_amb_get_stats(const struct llama_context * ctx, llama_seq_id seq_id, int32_t layer, struct llama_pace_amb_stats * out);
    // Copies one bank out: keys and values [bank_size x n_ff] row-major, usage and valid [bank_size]; any may be NULL.
    LLAMA_API int32_t llama_pace_amb_get_bank(const struct llama_context * ctx, llama_seq_id seq_id, int32_t layer,
                                              float * keys, float * values, float * usage, float * valid, int64_t * n_ff);
    // Retrieval case per position (0 low, 1 mid, 2 high, -1 no token); returns the number written.
    LLAMA_API int32_t llama_pace_amb_get_cases(const struct llama_context * ctx, llama_seq_id seq_id, int32_t layer, int32_t * out, int32_t n_pos);
    // Evicts positions [p0, p1) of seq_id from the context's memory and moves the later positions
    // down by p1 - p0 (llama.cpp's context shift: seq_rm + seq_add), KEEPING the sequence's banks:
    // what left the window still acts through them (PaceLLM's streaming setting). Other removals
    // and shifts of absorbed positions still empty the bank. 0 on success, -1 on error.
    LLAMA_API int32_t llama_pace_amb_evict(struct llama_context * ctx, llama_seq_id seq_id, llama_pos p0, llama_pos p1);
    LLAMA_API size_t  llama_pace_amb_memory_size(const struct llama_context * ctx);
    // Host memory the banks of one AMB layer of width n_ff take with these params, for n_seq
    // sequences and n_pos positions (a context's n_ctx): what set_params allocates per layer, for
    // tools that estimate memory before loading a model. 0 if invalid (see llama_pace_last_error).
    LLAMA_API size_t  llama_pace_amb_layer_bytes(const struct llama_pace_amb_params * params, int64_t n_ff, uint32_t n_seq, uint32_t n_pos);
    // How the AMB of a layer on device `dev` runs (asked of the device's backend, as the scheduler
    // does; with the defaults and a one-token ubatch: a context asks again with its own settings).
    // The environment variable PACE_AMB_IMPL (auto, fused, composed) steers the choice.
    enum llama_pace_amb_impl {
        LLAMA_PACE_AMB_IMPL_CPU      = 0, // on the CPU, the bank in host memory: one round trip per AMB layer and ubatch
        LLAMA_PACE_AMB_IMPL_KERNEL   = 1, // the backend's GGML_OP_AMB kernel, the bank in the device's memory
        LLAMA_PACE_AMB_IMPL_COMPOSED = 2, // composed from standard ggml ops, the bank in the device's memory
    };
    // enum llama_pace_amb_impl, or -1 on error (see llama_pace_last_error).
    LLAMA_API int32_t llama_pace_amb_device_impl(ggml_backend_dev_t dev);
    // This thread's last failure: of a llama_pace_* call, or of the AMB section of a state being loaded.
    LLAMA_API const char * llama_pace_last_error(void);

#ifdef __cplusplus
}
#endif
