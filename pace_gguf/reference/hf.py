"""transformers integration: AMB in the MLP of selected decoder layers (spec 2.1).

``enable_amb(model, layers=[12, 26], config=AmbConfig())`` swaps ``model.model.layers[i].mlp``
(LlamaMLP, Qwen2MLP or any gated MLP with gate_proj/up_proj/down_proj/act_fn) for an ``AmbMLP``
that reuses the same projection modules, so parameters and state-dict keys are unchanged. Layer
indices are 0-based: the paper's "13 and 27" are [12, 26] (spec 6.18).

``run_prompt_and_generate`` feeds a prompt as forwards of given sizes through the KV cache
(emulating llama.cpp ubatches) and then greedy-decodes with 1-token forwards.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from torch import nn

from .amb import ActivationMemoryBank
from .config import AmbConfig

GRANULARITIES = ("ubatch", "prompt")


class AmbMLP(nn.Module):
    """Gated MLP with an AMB between the gated product and down_proj."""

    def __init__(self, mlp: nn.Module, bank: ActivationMemoryBank, layer_idx: int):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        self.act_fn = mlp.act_fn
        for attr in ("config", "hidden_size", "intermediate_size"):
            if hasattr(mlp, attr):
                setattr(self, attr, getattr(mlp, attr))
        # A tuple is not registered as a submodule, so the parameters are not listed twice.
        self._original = (mlp,)
        self.bank = bank
        self.layer_idx = layer_idx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act_fn(self.gate_proj(x)) * self.up_proj(x)
        # The released code does not store while training (spec 2.5); config can override.
        store = not self.training or self.bank.config.store_in_training
        return self.down_proj(self.bank(a, store=store))

    def extra_repr(self) -> str:
        return f"layer_idx={self.layer_idx}, bank_size={self.bank.config.bank_size}"


def decoder_layers(model: nn.Module):
    """The decoder layer list of a *ForCausalLM or a bare decoder model."""
    for path in (("model", "layers"), ("layers",)):
        obj = model
        for name in path:
            obj = getattr(obj, name, None)
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ValueError(f"model of type {type(model).__name__} has no decoder layer list "
                     "(expected model.model.layers or model.layers)")


def enable_amb(model: nn.Module, layers=(12, 26), config: AmbConfig | None = None
               ) -> dict[int, ActivationMemoryBank]:
    """Put a fresh AMB into the MLP of each listed layer (0-based); returns {layer: bank}.

    Calling it again replaces the banks (and config) of the listed layers.
    """
    config = config if config is not None else AmbConfig()
    if not isinstance(config, AmbConfig):
        raise ValueError(f"config must be an AmbConfig, got {type(config).__name__}")
    blocks = decoder_layers(model)
    indices = _check_layers(layers, len(blocks))
    banks = {}
    for i in indices:
        mlp = _plain_mlp(blocks[i].mlp, i)
        banks[i] = ActivationMemoryBank(config)
        blocks[i].mlp = AmbMLP(mlp, banks[i], i)
    return banks


def disable_amb(model: nn.Module) -> int:
    """Restore the original MLP modules; returns how many were restored."""
    blocks = decoder_layers(model)
    restored = 0
    for block in blocks:
        if isinstance(block.mlp, AmbMLP):
            block.mlp = block.mlp._original[0]
            restored += 1
    return restored


def get_banks(model: nn.Module) -> dict[int, ActivationMemoryBank]:
    """{layer index: bank} for every AMB layer of the model."""
    return {i: b.mlp.bank for i, b in enumerate(decoder_layers(model)) if isinstance(b.mlp, AmbMLP)}


def reset_memory(model: nn.Module) -> int:
    """Empty every bank of the model (do this before each independent document, spec 6.11)."""
    banks = get_banks(model)
    for bank in banks.values():
        bank.reset()
    return len(banks)


@torch.no_grad()
def ce_reorder_model(model: nn.Module, n_experts: int = 64, seed: int = 0, **cluster_kwargs
                     ) -> dict:
    """Apply CE in place to every decoder layer (spec 3.1: all layers, independent of AMB layers):
    gate/up rows and down columns (and gate/up biases, if any) permuted by ``cluster_experts``
    on the layer's gate weight. Returns {layer: ClusterResult}. Outputs are unchanged up to fp
    rounding (spec 3.5)."""
    from .ce import cluster_experts, permute_down, permute_rows

    results = {}
    for i, block in enumerate(decoder_layers(model)):
        mlp = _plain_mlp(block.mlp, i)
        res = cluster_experts(mlp.gate_proj.weight, n_experts, seed=seed, **cluster_kwargs)
        for proj in (mlp.gate_proj, mlp.up_proj):
            proj.weight.copy_(permute_rows(proj.weight, res.perm))
            if proj.bias is not None:
                proj.bias.copy_(permute_rows(proj.bias, res.perm))
        mlp.down_proj.weight.copy_(permute_down(mlp.down_proj.weight, res.perm))
        results[i] = res
    return results


@dataclass
class GenerationResult:
    tokens: list[int]                                  # generated token ids (greedy)
    prompt_logits: torch.Tensor                        # [n_prompt, vocab] fp32
    step_logits: list = field(default_factory=list)    # logits that chose each generated token


@torch.no_grad()
def run_prompt_and_generate(model: nn.Module, input_ids, forward_sizes=None, *,
                            max_new_tokens: int = 0, granularity: str = "ubatch",
                            reset: bool = True) -> GenerationResult:
    """Run the prompt as consecutive forwards of ``forward_sizes`` tokens (a list summing to the
    prompt length, or an int ubatch size; default: one forward) through a KV cache, then
    greedy-generate ``max_new_tokens`` tokens with 1-token forwards. Puts the model in eval mode.

    granularity "ubatch": each forward retrieves against the bank left by earlier forwards.
    granularity "prompt": all prompt forwards retrieve against the bank as it was before the prompt
    and store in chunks aligned to the prompt start (spec 6.9); equals one forward of the prompt.
    Greedy ties go to the lower token id. Batch size 1 only (spec 6.10).
    """
    from transformers import DynamicCache

    ids = _prompt_ids(input_ids)
    sizes = _check_sizes(forward_sizes, ids.numel())
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    banks = get_banks(model)
    if reset:
        reset_memory(model)
    model.eval()
    device = next(model.parameters()).device
    ids = ids.to(device)
    cache = DynamicCache()
    if granularity == "prompt":
        for bank in banks.values():
            bank.begin_prompt()
    logits, start = [], 0
    try:
        for size in sizes:
            logits.append(_cached_forward(model, ids[None, start:start + size], cache)[0].float())
            start += size
    finally:
        if granularity == "prompt":
            for bank in banks.values():
                bank.end_prompt()
    result = GenerationResult([], torch.cat(logits))
    last = result.prompt_logits[-1]
    for step in range(max_new_tokens):
        token = int(torch.argmax(last))
        result.tokens.append(token)
        result.step_logits.append(last)
        if step + 1 == max_new_tokens:
            break
        last = _cached_forward(model, torch.tensor([[token]], device=device), cache)[0, -1].float()
    return result


def _cached_forward(model, ids, cache):
    """model(ids) appending to ``cache`` in place; returns the logits [1, n, vocab]."""
    # transformers renamed ``past_key_values`` to ``cache``; accept either spelling.
    params = inspect.signature(model.forward).parameters
    name = "cache" if "cache" in params else "past_key_values"
    return model(input_ids=ids, use_cache=True, **{name: cache}).logits


# ---------------------------------------------------------------------- validation helpers

def _check_layers(layers, n_layers: int) -> list[int]:
    if isinstance(layers, int):
        layers = [layers]
    try:
        indices = list(layers)
    except TypeError:
        raise ValueError(f"layers must be a list of ints, got {layers!r}") from None
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_layers:
            raise ValueError(f"layers must hold 0-based ints in [0, {n_layers}), got {i!r}")
    if len(set(indices)) != len(indices):
        raise ValueError(f"layers contains duplicates: {indices}")
    return indices


def _plain_mlp(mlp: nn.Module, idx: int) -> nn.Module:
    if isinstance(mlp, AmbMLP):
        return mlp._original[0]
    missing = [a for a in ("gate_proj", "up_proj", "down_proj", "act_fn") if not hasattr(mlp, a)]
    if missing:
        raise ValueError(f"layer {idx}: {type(mlp).__name__} is not a gated MLP "
                         f"(missing {missing}); AMB supports Llama/Qwen2-family MLPs")
    return mlp


def _prompt_ids(input_ids) -> torch.Tensor:
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    if ids.dim() == 2:
        if ids.shape[0] != 1:
            raise ValueError(f"input_ids must hold one sequence (batch 1), got shape "
                             f"{tuple(ids.shape)}")
        ids = ids[0]
    if ids.dim() != 1 or ids.numel() == 0:
        raise ValueError(f"input_ids must be a non-empty 1-D sequence, got shape {tuple(ids.shape)}")
    return ids


def _check_sizes(forward_sizes, n: int) -> list[int]:
    if forward_sizes is None:
        return [n]
    if isinstance(forward_sizes, int) and not isinstance(forward_sizes, bool):
        if forward_sizes < 1:
            raise ValueError(f"forward_sizes must be >= 1, got {forward_sizes}")
        return [min(forward_sizes, n - s) for s in range(0, n, forward_sizes)]
    sizes = list(forward_sizes)
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes) \
            or sum(sizes) != n:
        raise ValueError(f"forward_sizes must be positive ints summing to the prompt length {n}, "
                         f"got {sizes}")
    return sizes
