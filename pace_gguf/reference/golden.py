"""Golden dumps of the AMB reference for later ggml parity tests (spec 8.18).

``write_golden(path, ...)`` (or ``python -m pace_gguf.reference.golden --out x.npz``) builds a tiny
fp32 Llama/Qwen2 model with random weights (or loads one), enables AMB on the given layers, runs a
token stream through the KV cache in the given forward sizes and writes an ``.npz``.

npz keys (F = forward index from 0, L = 0-based decoder layer index):

* ``meta``: 0-d unicode array, JSON with amb_config, layers, forward_sizes, granularity, seed,
  model_source, model config (``model_config``), per-layer retrieval case totals and case codes.
* ``tokens`` int64 [T]; ``forward_sizes`` int64 [n_forwards]; ``layers`` int64 [n_layers].
* ``logits`` float32 [T, vocab]: the logits of every token of the stream, in order.
* ``final_logits`` float32 [vocab]: the logits of the last token.
* ``L{L}_F{F}_cases`` int8 [forward_sizes[F]]: retrieval case per token of forward F
  (0 = low, 1 = mid, 2 = high; an empty bank counts as low).
* ``L{L}_F{F}_store_cases`` int8 [n]: store label of each row written during forward F, in order
  (0 low, 1 mid, 2 high, -1 not stored because non-finite). In "prompt" granularity rows are stored
  when a chunk is complete, so n may differ from forward_sizes[F]; the rows flushed at the prompt end
  are appended to the last forward.
* ``L{L}_F{F}_keys`` / ``_values`` float32 [M, d_ff], ``_usage`` float32 [M], ``_valid`` bool [M]:
  the bank after forward F (after the final flush for the last forward in "prompt" granularity).

Thresholds are compared in fp32, ties go to the lower slot index; see amb.py for the semantics.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from .amb import LOW, MID, HIGH
from .config import AmbConfig
from .hf import GRANULARITIES, _cached_forward, _check_sizes, enable_amb, get_banks

ARCHS = ("qwen2", "llama")
DEFAULT_FORWARDS = (24, 24, 9, 1, 1, 1, 1)
DEFAULT_CONFIG = AmbConfig(bank_size=8, chunk=16)
STREAM_IDS = 8


def build_tiny_model(arch: str = "qwen2", seed: int = 0, *, vocab_size: int = 256,
                     hidden_size: int = 64, intermediate_size: int = 128, num_layers: int = 2,
                     num_heads: int = 4, num_kv_heads: int = 2):
    """A tiny fp32 causal LM with seeded random weights (eval mode, eager attention)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    config_cls, model_cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM),
                             "llama": (LlamaConfig, LlamaForCausalLM)}[arch]
    config = config_cls(vocab_size=vocab_size, hidden_size=hidden_size,
                        intermediate_size=intermediate_size, num_hidden_layers=num_layers,
                        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                        max_position_embeddings=1024, tie_word_embeddings=False)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return model_cls(config).float().eval()


@torch.no_grad()
def run_golden(model, tokens, forward_sizes, layers, config: AmbConfig,
               granularity: str = "ubatch") -> dict:
    """Run the stream and return the npz arrays (see the module docstring)."""
    from transformers import DynamicCache

    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    tokens = torch.as_tensor(tokens, dtype=torch.long).flatten()
    sizes = _check_sizes(forward_sizes, tokens.numel())
    enable_amb(model, layers=layers, config=config)
    banks = get_banks(model)
    model.eval()
    cache, out, logits, start = DynamicCache(), {}, [], 0
    if granularity == "prompt":
        for bank in banks.values():
            bank.begin_prompt()
    for f, size in enumerate(sizes):
        logits.append(_cached_forward(model, tokens[None, start:start + size], cache)[0].float())
        start += size
        for layer, bank in banks.items():
            store_cases = bank.last_store_cases
            if granularity == "prompt" and f == len(sizes) - 1:
                store_cases = torch.cat([store_cases, bank.end_prompt()])
            _dump_forward(out, f"L{layer}_F{f}", bank, store_cases)
    logits = torch.cat(logits).cpu().numpy()
    out.update(tokens=tokens.numpy(), forward_sizes=np.asarray(sizes, dtype=np.int64),
               layers=np.asarray(sorted(banks), dtype=np.int64), logits=logits,
               final_logits=logits[-1])
    meta = {"amb_config": config.to_dict(), "layers": sorted(banks), "forward_sizes": sizes,
            "granularity": granularity, "model_config": model.config.to_dict(),
            "case_totals": {str(i): b.counts for i, b in banks.items()},
            "case_codes": {"low": LOW, "mid": MID, "high": HIGH, "not_stored": -1}}
    out["meta"] = np.asarray(json.dumps(meta, default=str))
    return out


def _dump_forward(out: dict, prefix: str, bank, store_cases) -> None:
    out[f"{prefix}_cases"] = bank.last_cases.numpy().astype(np.int8)
    out[f"{prefix}_store_cases"] = store_cases.numpy().astype(np.int8)
    for name, arr in bank.snapshot().to_numpy().items():
        out[f"{prefix}_{name}"] = arr


def write_golden(path, model=None, *, arch: str = "qwen2", seed: int = 0, tokens=None,
                 forward_sizes=DEFAULT_FORWARDS, layers=(0, 1), config: AmbConfig | None = None,
                 granularity: str = "ubatch", save_model: str | None = None) -> dict:
    """Write a golden ``.npz`` (see module docstring); returns the arrays written.

    model: an HF causal LM (cast to fp32 here) or None for ``build_tiny_model(arch, seed)``.
    tokens: the stream; default sum(forward_sizes) seeded random ids drawn from 0..STREAM_IDS-1.
    save_model: directory to ``save_pretrained`` the model into (for conversion to GGUF).
    """
    source = f"tiny random {arch}" if model is None else type(model).__name__
    model = build_tiny_model(arch, seed) if model is None else model.float().eval()
    if save_model:
        model.save_pretrained(save_model)
    if tokens is None:
        n = sum(forward_sizes) if not isinstance(forward_sizes, int) else forward_sizes
        gen = torch.Generator().manual_seed(seed)
        # Few distinct ids so that activations recur and high/mid/low all occur.
        tokens = torch.randint(0, min(STREAM_IDS, model.config.vocab_size), (n,), generator=gen)
    arrays = run_golden(model, tokens, forward_sizes, layers,
                        config if config is not None else DEFAULT_CONFIG, granularity)
    meta = json.loads(str(arrays["meta"]))
    meta.update(model_source=source, seed=seed)
    arrays["meta"] = np.asarray(json.dumps(meta, default=str))
    np.savez(path, **arrays)
    return arrays


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pace_gguf.reference.golden",
                                description="Write an AMB golden dump (.npz) of a tiny fp32 model.")
    p.add_argument("--out", required=True, help="output .npz path")
    p.add_argument("--arch", choices=ARCHS, default="qwen2")
    p.add_argument("--model", help="HF model directory to load instead of a random tiny model")
    p.add_argument("--save-model", help="save the model used (save_pretrained) to this directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--forward-sizes", type=_int_list, default=list(DEFAULT_FORWARDS))
    p.add_argument("--layers", type=_int_list, default=[0, 1])
    p.add_argument("--granularity", choices=GRANULARITIES, default="ubatch")
    p.add_argument("--config-json", default="{}",
                   help='AmbConfig overrides as JSON, e.g. \'{"bank_size": 8, "chunk": 16}\'')
    args = p.parse_args(argv)
    config = AmbConfig.from_dict({**DEFAULT_CONFIG.to_dict(), **json.loads(args.config_json)})
    model = None
    if args.model:
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    arrays = write_golden(args.out, model, arch=args.arch, seed=args.seed,
                          forward_sizes=args.forward_sizes, layers=args.layers, config=config,
                          granularity=args.granularity, save_model=args.save_model)
    meta = json.loads(str(arrays["meta"]))
    print(f"wrote {args.out}: {len(arrays)} arrays, case totals {meta['case_totals']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
