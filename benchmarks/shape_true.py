"""Shape-true random GGUF models for speed benchmarks: a real model's tensor names, shapes and
Q4_K_M quantization types (Q4_K, with Q6_K where llama.cpp's Q4_K_M puts it), random weights and a
real tokenizer, written with gguf-py's writer in the time it takes to write the file: no checkpoint,
no converter, no quantizer. Speed depends on shapes and types, not on weight values; answers are
noise. A GPU machine without network makes one on the spot (carry the ~6 MB vocabulary file).

    python benchmarks/shape_true.py qwen2-7b [--out FILE] [--layers N] [--vocab VOCAB.gguf]

Quantized blocks are random bytes with small fixed scales (d = dmin = 1e-4), so weights stay within
about ±0.1 and activations finite through every layer. The vocabulary is llama.cpp's
models/ggml-vocab-qwen2.gguf from the pinned source (151,936 tokens, where the real checkpoint pads
its matrices to 152,064 rows).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

MODELS = {
    # Qwen2-7B(-Instruct) / Qwen2.5-7B: the paper's main model
    "qwen2-7b": dict(arch="qwen2", vocab="qwen2", n_embd=3584, n_ff=18944, n_head=28, n_head_kv=4,
                     n_layer=28, n_ctx_train=32768, rope_freq_base=1e6, rms_eps=1e-6),
}
SCALE = 1e-4  # the f16 scales of every quantized block
LLAMA_FTYPE_MOSTLY_Q4_K_M = 15


def block_bytes(qtype) -> tuple[int, int]:
    """(weights per block, bytes per block) of a ggml type."""
    from gguf import GGML_QUANT_SIZES  # noqa: PLC0415

    return GGML_QUANT_SIZES[qtype]


def random_blocks(qtype, n_weights: int, rng: np.random.Generator) -> np.ndarray:
    """n_weights of random quantized data with finite, small scales."""
    from gguf import GGMLQuantizationType as Q  # noqa: PLC0415

    per, size = block_bytes(qtype)
    blocks = rng.integers(0, 256, (n_weights // per, size), dtype=np.uint8)
    scale = np.array([SCALE], dtype=np.float16).view(np.uint8)
    if qtype == Q.Q4_K:  # d, dmin (f16) first
        blocks[:, 0:2] = scale
        blocks[:, 2:4] = scale
    elif qtype == Q.Q6_K:  # d (f16) last
        blocks[:, size - 2:size] = scale
    else:
        raise ValueError(f"no random blocks for {qtype.name}")
    return blocks.reshape(-1)


def q4_k_m_type(name: str, il: int, n_layer: int):
    """The type llama.cpp's Q4_K_M gives a tensor (llama-quant.cpp: output, attn_v and ffn_down of the
    first and last eighth of the layers and of every third layer between take Q6_K; the rest Q4_K)."""
    from gguf import GGMLQuantizationType as Q  # noqa: PLC0415

    more_bits = il < n_layer // 8 or il >= 7 * n_layer // 8 or (il - n_layer // 8) % 3 == 2
    if name == "output" or (name in ("attn_v", "ffn_down") and more_bits):
        return Q.Q6_K
    return Q.Q4_K


def tensors(m: dict, n_vocab: int):
    """(name, shape as ggml's ne, type, layer) of every tensor, f32 for norms and biases."""
    from gguf import GGMLQuantizationType as Q  # noqa: PLC0415

    e, f, hd = m["n_embd"], m["n_ff"], m["n_embd"] // m["n_head"]
    kv = hd * m["n_head_kv"]
    yield "token_embd.weight", (e, n_vocab), Q.Q4_K, 0
    for il in range(m["n_layer"]):
        for name, shape, qtype in (
            ("attn_norm.weight", (e,), Q.F32), ("attn_q.weight", (e, e), None), ("attn_q.bias", (e,), Q.F32),
            ("attn_k.weight", (e, kv), None), ("attn_k.bias", (kv,), Q.F32), ("attn_v.weight", (e, kv), None),
            ("attn_v.bias", (kv,), Q.F32), ("attn_output.weight", (e, e), None), ("ffn_norm.weight", (e,), Q.F32),
            ("ffn_gate.weight", (e, f), None), ("ffn_up.weight", (e, f), None), ("ffn_down.weight", (f, e), None),
        ):
            yield f"blk.{il}.{name}", shape, qtype if qtype is not None else q4_k_m_type(name.split(".")[0], il, m["n_layer"]), il
    yield "output_norm.weight", (e,), Q.F32, 0
    yield "output.weight", (e, n_vocab), q4_k_m_type("output", 0, m["n_layer"]), 0


def tensor_data(name: str, shape: tuple, qtype, rng: np.random.Generator) -> np.ndarray:
    from gguf import GGMLQuantizationType as Q  # noqa: PLC0415

    n = int(np.prod(shape))
    if qtype == Q.F32:
        return (np.ones(n) if name.endswith("norm.weight") else rng.normal(0, 0.02, n)).astype(np.float32)
    return random_blocks(qtype, n, rng)


def vocab_fields(path: Path) -> list:
    from gguf import GGUFReader  # noqa: PLC0415

    reader = GGUFReader(path)
    return [(k, f) for k, f in reader.fields.items() if k.startswith("tokenizer.")]




def write(model: str, out: Path, layers: int | None = None, vocab: Path | None = None, seed: int = 0) -> Path:
    """Writes the model to `out` (through a temporary file: never a half-written GGUF) and returns it."""
    from gguf import GGUFValueType, GGUFWriter  # noqa: PLC0415

    m = dict(MODELS[model], **({"n_layer": layers} if layers else {}))
    if vocab is None:
        from pace_gguf.convert.upstream import vocab_gguf  # noqa: PLC0415

        vocab = vocab_gguf(m["vocab"])
    fields = vocab_fields(vocab)
    n_vocab = len(dict(fields)["tokenizer.ggml.tokens"].data)
    tmp = out.with_name(out.name + ".part")
    writer = GGUFWriter(tmp, m["arch"])
    writer.add_name(f"{model} shape-true random ({m['n_layer']} layers)")
    writer.add_file_type(LLAMA_FTYPE_MOSTLY_Q4_K_M)
    writer.add_context_length(m["n_ctx_train"])
    writer.add_embedding_length(m["n_embd"])
    writer.add_block_count(m["n_layer"])
    writer.add_feed_forward_length(m["n_ff"])
    writer.add_head_count(m["n_head"])
    writer.add_head_count_kv(m["n_head_kv"])
    writer.add_rope_freq_base(m["rope_freq_base"])
    writer.add_layer_norm_rms_eps(m["rms_eps"])
    for key, field in fields:
        value = field.contents()
        vtype = field.types[0]
        writer.add_key_value(key, value, vtype, field.types[1] if vtype == GGUFValueType.ARRAY else None)
    specs = list(tensors(m, n_vocab))
    for name, shape, qtype, _ in specs:
        per, size = block_bytes(qtype)
        # gguf-py's shapes are numpy's (ne reversed); a quantized tensor's rows are given in bytes
        row = shape[0] if qtype.name == "F32" else shape[0] // per * size
        np_shape = (*reversed(shape[1:]), row)
        dtype = np.dtype(np.float32 if qtype.name == "F32" else np.uint8)
        writer.add_tensor_info(name, np_shape, dtype, int(np.prod(np_shape)) * dtype.itemsize, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    for name, shape, qtype, _ in specs:
        writer.write_tensor_data(tensor_data(name, shape, qtype, rng))
    writer.close()
    tmp.replace(out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=sorted(MODELS))
    parser.add_argument("--out", type=Path, default=None, help="output GGUF (default: <model>-random-q4_k_m.gguf here)")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers, true shapes (default: the model's)")
    parser.add_argument("--vocab", type=Path, default=None, help="vocabulary GGUF (default: the pinned source's)")
    args = parser.parse_args(argv)
    out = args.out or Path(f"{args.model}-random-q4_k_m.gguf")
    print(write(args.model, out, args.layers, args.vocab))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
