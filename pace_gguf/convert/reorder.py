"""Cortical Expert (CE) reordering of a GGUF, streamed tensor by tensor (spec section 3.3).

For every layer N with blk.N.ffn_gate/ffn_up/ffn_down, the neurons (rows of ffn_gate) are clustered
by cluster_experts (ce.py), and the same permutation moves
  * the rows of ffn_gate and ffn_up (and their biases): a row is one neuron, any tensor type;
  * the columns of ffn_down (ggml ne0 = d_ff, the quantization-block axis): element by element,
    so ffn_down must be F32, F16 or BF16 - permute BEFORE quantizing.
Everything else is copied byte for byte, so the result stays a standard GGUF that computes the same
function (up to float reassociation).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import numpy as np
from gguf import GGMLQuantizationType as GGMLType

from ..gguf_file import GGUFFile, type_name, write_gguf
from .ce import cluster_experts
from .errors import ConvertError

# types whose elements can be moved one by one (the permutation of ffn_down's columns)
ELEMENT_SIZE = {GGMLType.F32: 4, GGMLType.F16: 2, GGMLType.BF16: 2}

_FFN = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down)\.(weight|bias)$")


@dataclass
class LayerCE:
    layer: int
    perm: np.ndarray
    objective: float
    seconds: float


@dataclass
class ReorderPlan:
    layers: list[int]                        # layers with a gated FFN, ascending
    d_ff: int
    results: dict[int, LayerCE] = field(default_factory=dict)

    def objectives(self) -> list[float]:
        return [self.results[i].objective for i in self.layers]


def gated_ffn_layers(src: GGUFFile) -> list[int]:
    names = {t.name for t in src.tensors}
    layers = sorted({int(m.group(1)) for n in names if (m := _FFN.match(n))})
    return [i for i in layers if all(f"blk.{i}.ffn_{p}.weight" in names for p in ("gate", "up", "down"))]


def plan_reorder(src: GGUFFile, n_experts: int) -> ReorderPlan:
    """Check that CE with `n_experts` applies to this file; raises ConvertError with one line if not."""
    layers = gated_ffn_layers(src)
    if not layers:
        arch = src.kv.get("general.architecture", "?")
        raise ConvertError(f"{src.path.name} ({arch}) has no gated FFN (blk.N.ffn_gate/ffn_up/ffn_down); "
                           "CE needs one (use --experts 0 to convert without CE)")
    d_ff = src.tensor(f"blk.{layers[0]}.ffn_gate.weight").shape[1]
    for i in layers:
        gate, down = src.tensor(f"blk.{i}.ffn_gate.weight"), src.tensor(f"blk.{i}.ffn_down.weight")
        if len(gate.shape) != 2 or len(down.shape) != 2:
            raise ConvertError(f"layer {i}: ffn tensors are not 2-D (a mixture-of-experts FFN?); CE is not supported")
        if d_ff % n_experts if n_experts else False:
            raise ConvertError(f"layer {i}: d_ff = {gate.shape[1]} is not divisible by --experts {n_experts}; "
                               f"choose a divisor of {gate.shape[1]}")
        if n_experts > gate.shape[1]:
            raise ConvertError(f"--experts {n_experts} exceeds d_ff = {gate.shape[1]}")
        if down.type not in ELEMENT_SIZE:
            raise ConvertError(
                f"blk.{i}.ffn_down.weight is quantized ({type_name(down.type)}): its neurons lie along the "
                "quantization blocks, so CE must run on F32/F16/BF16 weights; convert from the F16/BF16 "
                "original, or pass --requantize to dequantize, reorder and quantize again (lossy)")
    return ReorderPlan(layers, d_ff)


def as_float32(src: GGUFFile, name: str) -> np.ndarray:
    """A tensor as float32 numpy, shape [ne1, ne0] (rows x row length)."""
    t = src.tensor(name)
    raw = src.raw(t)
    rows = (int(np.prod(t.shape[1:], dtype=np.int64)), t.shape[0])
    if t.type == GGMLType.F32:
        return raw.view("<f4").reshape(rows)
    if t.type == GGMLType.F16:
        return raw.view("<f2").astype(np.float32).reshape(rows)
    if t.type == GGMLType.BF16:
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(rows)
    from gguf.quants import dequantize  # noqa: PLC0415

    return dequantize(np.asarray(raw), GGMLType(t.type)).astype(np.float32).reshape(rows)


def cluster_layer(src: GGUFFile, layer: int, n_experts: int, seed: int) -> LayerCE:
    gate = as_float32(src, f"blk.{layer}.ffn_gate.weight")      # [d_ff, d_model]: neurons are rows
    t0 = time.perf_counter()
    res = cluster_experts(gate, n_experts, seed=seed)
    return LayerCE(layer, res.perm, res.objective, time.perf_counter() - t0)


def permuted_bytes(src: GGUFFile, name: str, perm: np.ndarray) -> np.ndarray:
    """The tensor's bytes with its neuron axis permuted (rows of gate/up, columns of down)."""
    m = _FFN.match(name)
    t = src.tensor(name)
    raw = src.raw(t)
    part, kind = m.group(2), m.group(3)
    if kind == "bias":
        if part == "down":
            return raw                                          # indexed by d_model: unchanged
        size = ELEMENT_SIZE.get(t.type)
        if size is None:
            raise ConvertError(f"{name} has unsupported type {type_name(t.type)}")
        return raw.reshape(-1, size)[perm]
    if part in ("gate", "up"):
        return raw.reshape(t.shape[1], -1)[perm]               # whole rows, any type
    size = ELEMENT_SIZE[t.type]                                 # down: [d_model rows, d_ff columns]
    return raw.reshape(t.shape[1], t.shape[0], size)[:, perm, :]


def cluster_all(src: GGUFFile, plan: ReorderPlan, n_experts: int, seed: int, on_layer=None) -> None:
    """Cluster every gated layer first (reads one gate tensor at a time), so the per-layer
    objectives are known before the header is written."""
    for layer in plan.layers:
        plan.results[layer] = cluster_layer(src, layer, n_experts, seed)
        if on_layer:
            on_layer(plan.results[layer])


def reorder_tensors(src: GGUFFile, dst, plan: ReorderPlan, n_experts: int, extra_kv: dict,
                    drop_prefixes: tuple[str, ...] = (), progress=None) -> None:
    """Write `dst`: `src` with the permutations in `plan` applied (n_experts > 0; run cluster_all
    first), source keys starting with `drop_prefixes` removed and `extra_kv` added."""
    def produce(name: str):
        m = _FFN.match(name)
        if n_experts and m and int(m.group(1)) in plan.results:
            return permuted_bytes(src, name, plan.results[int(m.group(1))].perm)
        return src.raw_chunks(src.tensor(name))

    write_gguf(dst, src, extra_kv, drop_prefixes, produce, progress)
