// pace-gguf: the Activation Memory Bank of a llama_context (internal interface of libllama).
//
// Upstream files call only what is declared here: llama-context.cpp owns one llama_pace_amb per
// context and forwards sequence/state events to it; llama-graph.cpp's build_ffn calls
// llama_pace_amb_build() just before the down projection. The public C API is in llama.h
// (llama_pace_amb_*), implemented in pace-amb.cpp.
#pragma once

#include "llama.h"

#include <cstdint>
#include <memory>

struct ggml_context;
struct ggml_tensor;
struct llama_model;
struct llama_cparams;
class llm_graph_result;
class llama_io_read_i;
class llama_io_write_i;

struct llama_pace_amb;

// Creates the bank owner of a context from the model's pace.amb.* keys; throws std::runtime_error
// (with the offending key) if they are invalid. `memory` identifies the context's memory module in
// the llama_memory_* hooks below.
llama_pace_amb * llama_pace_amb_init(const llama_model & model, const llama_cparams & cparams, llama_memory_t memory);
void llama_pace_amb_free(llama_pace_amb * amb);

struct llama_pace_amb_deleter {
    void operator()(llama_pace_amb * amb) const { llama_pace_amb_free(amb); }
};
using llama_pace_amb_ptr = std::unique_ptr<llama_pace_amb, llama_pace_amb_deleter>;

// Graph: returns `cur` enhanced by GGML_OP_AMB in AMB layers, `cur` itself elsewhere (so a context
// without AMB builds exactly upstream's graph).
ggml_tensor * llama_pace_amb_build(llama_pace_amb * amb, ggml_context * ctx0, llm_graph_result * res, ggml_tensor * cur, int il);
// Changes whenever the AMB part of the graph changes; part of the graph-reuse key.
uint64_t llama_pace_amb_graph_key(const llama_pace_amb * amb);

// Decode: prompt granularity freezes the banks before a multi-ubatch batch and flushes the rows
// still buffered after it.
void llama_pace_amb_decode_begin(llama_pace_amb * amb, uint32_t n_tokens, uint32_t n_ubatch);
void llama_pace_amb_decode_end(llama_pace_amb * amb);

// Sequence events, called by the llama_memory_* C API (identified by the memory module).
void llama_pace_amb_on_clear  (llama_memory_t mem);
void llama_pace_amb_on_seq_rm (llama_memory_t mem, llama_seq_id seq_id, llama_pos p0, llama_pos p1);
void llama_pace_amb_on_seq_cp (llama_memory_t mem, llama_seq_id src, llama_seq_id dst, llama_pos p0, llama_pos p1);
void llama_pace_amb_on_seq_keep(llama_memory_t mem, llama_seq_id seq_id);
void llama_pace_amb_on_seq_shift(llama_memory_t mem, llama_seq_id seq_id, llama_pos p0, llama_pos p1);

// Session state: written after the memory module, read back with shape checks (throws on mismatch).
void llama_pace_amb_state_write(const llama_pace_amb * amb, llama_io_write_i & io, llama_seq_id seq_id = -1);
void llama_pace_amb_state_read (llama_pace_amb * amb, llama_io_read_i & io, llama_seq_id seq_id = -1);
