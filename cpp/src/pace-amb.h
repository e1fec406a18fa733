// pace-gguf: the Activation Memory Bank of a llama_context (internal interface of libllama).
//
// Upstream files call only what is declared here:
// * llama-model.cpp renders pace.* GGUF keys with llama_pace_gguf_value() (typed, exact);
// * llama-context.cpp wraps its memory module with llama_pace_memory_wrap(): the wrapper owns the
//   bank owner, so every sequence operation on the memory (the public llama_memory_* functions and
//   llama.cpp's own rollbacks alike) and every session state read/write reach the banks;
// * llama-context.cpp's decode calls llama_pace_amb_decode_begin/_end around its ubatch loop;
// * llama-graph.cpp's build_ffn calls llama_pace_amb_build() just before the down projection, and
//   llama-context.cpp's graph_max_nodes makes room for what it adds (llama_pace_amb_graph_nodes).
// The public C API (llama_pace_amb_*, for ctypes) is in pace.h, implemented in pace-amb.cpp.
#pragma once

#include "llama.h"
#include "gguf.h"

#include <cstdint>
#include <memory>
#include <string>

struct ggml_context;
struct ggml_tensor;
struct llama_model;
struct llama_cparams;
struct llama_context;
struct llama_memory_i;
class llm_graph_result;

struct llama_pace_amb;

// The value of GGUF key `key_id` as "<type>:<value>" with floats printed exactly (%.9g for f32), so
// that pace-amb.cpp can check types and ranges; arrays longer than the AMB could use are not expanded.
std::string llama_pace_gguf_value(const gguf_context * ctx, int64_t key_id);

// Wraps the context's memory module (nullptr stays nullptr). `amb_out` receives the bank owner the
// wrapper owns. Invalid pace.amb.* keys never fail the context: the AMB starts off and
// llama_pace_amb_model_params() reports why.
std::unique_ptr<llama_memory_i> llama_pace_memory_wrap(std::unique_ptr<llama_memory_i> memory, const llama_model & model,
                                                       const llama_cparams & cparams, llama_pace_amb ** amb_out);

// Graph: returns `cur` enhanced by GGML_OP_AMB in AMB layers, `cur` itself elsewhere (so a context
// without AMB builds exactly upstream's graph).
ggml_tensor * llama_pace_amb_build(llama_pace_amb * amb, ggml_context * ctx0, llm_graph_result * res, ggml_tensor * cur, int il);
// Changes whenever the AMB part of the graph changes; part of the graph-reuse key.
uint64_t llama_pace_amb_graph_key(const llama_pace_amb * amb);
// Graph nodes (and tensors) the AMB adds to a graph: llama-context.cpp's graph_max_nodes adds them.
uint32_t llama_pace_amb_graph_nodes(const llama_pace_amb * amb);

// Decode: prompt granularity freezes the banks before a multi-ubatch batch; the end flushes the
// rows still buffered (synchronizing the context only then) and gives sequences that shared tokens
// their bank. A decode that fails or is aborted never reaches _end: the next _begin drops its rows.
void llama_pace_amb_decode_begin(llama_pace_amb * amb, uint32_t n_tokens, uint32_t n_ubatch);
void llama_pace_amb_decode_end(llama_pace_amb * amb, llama_context & lctx);
