"""Tiny random-weight Hugging Face checkpoints with REAL tokenizers, for fast exact tests.

The tokenizer of each architecture is rebuilt from a vocab-only GGUF of the pinned llama.cpp source
(its tokens, merges, token types and chat template), as a `tokenizers` byte-level BPE with the same
pre-tokenizer regex as the original Hugging Face tokenizer.json. Upstream's converter recognises it
by the hash of its tokenization (tokenizer.ggml.pre = "qwen2" / "llama-bpe"), so a tiny GGUF
tokenizes exactly like the real model family.

Weights are seeded normal draws scaled by 1/sqrt(fan_in) so activations and logits are O(1): with
transformers' default init (std 0.02) all logits are nearly equal and a parity test proves little.

    from pace_gguf.convert.tiny import make_tiny_hf, tiny_gguf
    folder = make_tiny_hf("qwen2", tmp_path / "hf")          # HF folder (config, safetensors, tokenizer)
    gguf   = tiny_gguf("qwen2", tmp_path)                     # the same, converted to an F32 GGUF
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..gguf_file import read_gguf_header

ARCHITECTURES = ("qwen2", "llama", "qwen2moe")

# Pre-tokenizer regexes of the original tokenizer.json files (Qwen2: single digits; Llama 3: 1-3).
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


@dataclass(frozen=True)
class _Family:
    vocab: str            # models/ggml-vocab-<vocab>.gguf
    split: str            # pre-tokenizer regex
    nfc: bool             # Qwen2 normalises to NFC
    ignore_merges: bool   # Llama 3's BPE takes whole-vocab words before merging
    bos: str | None       # prepended by the post-processor (Llama 3) or None (Qwen2)
    eos: str
    hf_class: str         # transformers model class
    bias_qkv: bool
    config_class: str = "LlamaConfig"
    config_extra: tuple = ()  # further (name, value) settings of the config


_FAMILIES = {
    "qwen2": _Family("qwen2", _QWEN2_SPLIT, True, False, None, "<|endoftext|>", "Qwen2ForCausalLM", True,
                     "Qwen2Config"),
    # a mixture of experts with a shared expert (qwen2moe), for what must refuse MoE FFNs
    "qwen2moe": _Family("qwen2", _QWEN2_SPLIT, True, False, None, "<|endoftext|>", "Qwen2MoeForCausalLM", True,
                        "Qwen2MoeConfig", (("num_experts", 4), ("num_experts_per_tok", 2),
                                           ("moe_intermediate_size", 32), ("shared_expert_intermediate_size", 64))),
    "llama": _Family("llama-bpe", _LLAMA3_SPLIT, False, True, "<|begin_of_text|>", "<|end_of_text|>",
                     "LlamaForCausalLM", False),
}


def _family(arch: str) -> _Family:
    if arch not in _FAMILIES:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    return _FAMILIES[arch]


def _read_vocab(path: Path) -> dict:
    kv = read_gguf_header(path).kv
    return {"tokens": kv.get("tokenizer.ggml.tokens"), "types": kv.get("tokenizer.ggml.token_type"),
            "merges": kv.get("tokenizer.ggml.merges"), "template": kv.get("tokenizer.chat_template")}


def build_tokenizer(arch: str):
    """A transformers PreTrainedTokenizerFast equal to the family's real tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors  # noqa: PLC0415
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415

    from .upstream import vocab_gguf  # noqa: PLC0415

    fam = _family(arch)
    data = _read_vocab(vocab_gguf(fam.vocab))
    # Type 1 = normal BPE token, 3 = control (special added token); others ([PAD...]) are fillers
    # that upstream's converter recreates from config.vocab_size.
    vocab = {tok: i for i, (tok, kind) in enumerate(zip(data["tokens"], data["types"])) if kind == 1}
    specials = [(i, tok) for i, (tok, kind) in enumerate(zip(data["tokens"], data["types"])) if kind == 3]
    merges = [tuple(m.split(" ", 1)) for m in data["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=fam.ignore_merges,
                               fuse_unk=False, byte_fallback=False))
    if fam.nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(fam.split), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    from tokenizers import AddedToken  # noqa: PLC0415

    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for _, t in specials])
    for i, t in specials:   # added tokens must keep their GGUF ids
        assert tok.token_to_id(t) == i, (t, i, tok.token_to_id(t))
    if fam.bos:
        bos_id = tok.token_to_id(fam.bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{fam.bos} $A", pair=f"{fam.bos} $A {fam.bos} $B", special_tokens=[(fam.bos, bos_id)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    template = data["template"] or _LLAMA3_TEMPLATE
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=fam.bos, eos_token=fam.eos, pad_token=fam.eos,
        chat_template=template, add_bos_token=fam.bos is not None, model_max_length=32768,
    ), len(data["tokens"])


def make_tiny_hf(arch: str, folder, *, seed: int = 0, hidden: int = 64, intermediate: int = 128,
                 layers: int = 2, heads: int = 4, kv_heads: int = 2, tie_embeddings: bool = True,
                 dtype: str = "float32") -> Path:
    """Write a tiny random checkpoint (config.json, model.safetensors, tokenizer files) to `folder`
    and return it. Deterministic for a seed. The vocab size is the real tokenizer's. `dtype`
    (float32, float16, bfloat16) is the stored weights' type; values are drawn in float32."""
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    fam = _family(arch)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer, n_vocab = build_tokenizer(arch)
    config = getattr(transformers, fam.config_class)(
        **dict(fam.config_extra),
        vocab_size=n_vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
        rms_norm_eps=1e-6, tie_word_embeddings=tie_embeddings,
        bos_token_id=tokenizer.convert_tokens_to_ids(fam.bos or fam.eos),
        eos_token_id=tokenizer.convert_tokens_to_ids(fam.eos),
    )
    model = getattr(transformers, fam.hf_class)(config).to(torch.float32)
    _randomize(model, seed)
    model.to(getattr(torch, dtype))
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    # Record what made it (for humans; nothing reads it).
    (folder / "pace_tiny.json").write_text(json.dumps({"arch": arch, "seed": seed}) + "\n")
    return folder


def _randomize(model, seed: int) -> None:
    """Seeded O(1)-scale weights: linear ~ N(0, 1/fan_in), embeddings ~ N(0, 0.5^2), norms ~ 1 ± 0.1."""
    import torch  # noqa: PLC0415

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "norm" in name:
                p.copy_(1.0 + 0.1 * noise)
            elif "embed" in name or "lm_head" in name:
                p.copy_(0.5 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / math.sqrt(p.shape[-1]))


def convert_to_gguf(hf_folder, out_path, outtype: str = "f32") -> Path:
    """Convert a Hugging Face folder with upstream's convert_hf_to_gguf.py (pinned source, own
    gguf-py, in a subprocess). outtype: f32, f16, bf16, q8_0 or auto. Returns out_path."""
    from .hf import run_upstream_converter  # noqa: PLC0415

    return run_upstream_converter(Path(hf_folder), Path(out_path), outtype)


def tiny_gguf(arch: str, folder, *, seed: int = 0, outtype: str = "f32", **shape) -> Path:
    """make_tiny_hf into <folder>/hf, then convert to <folder>/tiny-<arch>-<outtype>.gguf.
    Returns the GGUF path (the HF folder is <folder>/hf)."""
    folder = Path(folder)
    hf = make_tiny_hf(arch, folder / "hf", seed=seed, **shape)
    return convert_to_gguf(hf, folder / f"tiny-{arch}-{outtype}.gguf", outtype)
