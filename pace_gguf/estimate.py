"""`pace-gguf estimate`: the memory a run of a model needs, read from its GGUF header without
loading the weights, and whether that fits the machine.

The run is the one `pace_gguf.Llama(model, n_ctx=N)` (and `pace-gguf chat`) makes with
llama-cpp-python 0.3.36's defaults: one sequence, n_batch = n_ubatch = 512, an f16 KV cache, no
flash attention, the weights memory-mapped, logits kept for the last token only. Each component is
what that process holds in resident memory at its peak, i.e. with the context full (or holding
`tokens` tokens), so the total compares with its peak RSS:

* weights: the tensor data of the file (mapped and read in whole at load);
* KV cache: f16 K and V rows for every context cell and layer, allocated and zeroed up front;
* AMB banks: what pace-gguf's C code allocates per AMB layer (cpp/src/pace-amb.cpp, allocate_banks);
* compute: llama.cpp's compute graph at its largest, ggml's CPU work area, and the logits buffer;
* model metadata: llama.cpp's tokenizer tables and the file's mapped header;
* Python arrays: llama-cpp-python's token array and sampling candidates;
* baseline: the Python process itself (interpreter, numpy, llama_cpp, the native libraries).

Architectures whose cache is not plain attention (sliding-window, MLA, recurrent state) are
estimated as plain attention, an upper bound. On a GPU build, `n_gpu_layers` moves the weights and
KV cache of offloaded layers, and a compute buffer, to the first GPU; that split follows
llama.cpp's layer assignment but has not been checked against a GPU here.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import _bindings, amb, gguf_file
from ._native import devices, llama_cpp_module
from .amb import PaceConfig, PaceMetadataWarning
from .errors import ModelFileError
from .interrupts import deferred
from .registry import resolve_model

MiB = 2**20

# llama.cpp rounds the context up to a multiple of 256 cells (llama-context.cpp:
# `cparams.n_ctx = GGML_PAD(cparams.n_ctx, 256)`), and sizes the attention to the used cells
# rounded up the same way (llama-kv-cache.cpp, get_n_kv).
KV_PAD = 256
# llama-cpp-python 0.3.36's Llama: n_batch = min(n_ctx, 512), n_ubatch = min(n_batch, 512).
N_BATCH = 512
F16, F32 = 2, 4

# Resident memory of a Python process that has imported pace_gguf.Llama and loaded the native
# libraries, before any model: VmRSS after `from pace_gguf import Llama, _native;
# _native.native_library()` (Python 3.11, numpy 2, llama-cpp-python 0.3.36, x86-64 Linux),
# measured at 41.1-41.2 MiB in three runs.
BASELINE_BYTES = 41 * MiB
# llama.cpp's tokenizer tables (token strings, id map, BPE merge ranks, piece cache) per vocabulary
# entry (tokens + merges): the anonymous memory llama_model_load_from_file adds for the default
# model, 17,866,752 bytes for 49,152 tokens and 48,900 merges (RssAnon before and after, three runs
# alike), is 182 bytes per entry.
METADATA_BYTES_PER_ENTRY = 182
# llama-cpp-python's sampling candidates: one llama_token_data (id, logit, p) per vocabulary entry.
CANDIDATE_BYTES = 12

_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.")


# --- the model's shape, from its header --------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs from a GGUF header. Per-layer lists have n_layer entries."""

    architecture: str
    n_layer: int
    n_ctx_train: int
    n_embd: int
    n_vocab: int
    n_merges: int
    n_head: list[int]
    n_head_kv: list[int]
    head_dim_k: int
    head_dim_v: int
    n_ff: list[int]
    header_bytes: int  # everything before the tensor data (metadata, tokenizer, tensor infos)
    layer_weights: list[int]  # tensor bytes of blk.<i>.*
    input_weights: int  # token embeddings and other tensors outside the layers (stay on the CPU)
    output_weights: int  # output.* (the output layer)
    tied_output_weights: int  # without an output.weight, the output uses token_embd.weight: its size, else 0
    has_pace_keys: bool

    @property
    def weights(self) -> int:
        return sum(self.layer_weights) + self.input_weights + self.output_weights


def _ints(kv: dict, name: str) -> list[int] | None:
    """An integer key, or an integer array (per-layer values), as a list; None when absent or not integers."""
    value = kv.get(name)
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    return values if all(isinstance(v, int) and not isinstance(v, bool) for v in values) else None


def _per_layer(values: list[int] | None, n_layer: int, default: list[int] | None, what: str, path: Path) -> list[int]:
    """A per-layer hyperparameter: one value for all layers, or an array of n_layer values."""
    if values is None:
        if default is None:
            raise ModelFileError(f"{path} is not a model llama.cpp can run: its header has no {what}")
        return default
    if len(values) == 1:
        return values * n_layer
    if len(values) != n_layer:
        raise ModelFileError(f"{path}: {what} has {len(values)} values for {n_layer} layers")
    return values


def read_shape(path: str | Path) -> ModelShape:
    """The model's shape from its GGUF header; the tensor data is never read. A missing, foreign or
    truncated file raises gguf_file.read_model's ModelFileError."""
    header = gguf_file.read_model(path)
    if header.architecture is None:
        raise ModelFileError(f"{header.path} is not a model llama.cpp can run: its header has no general.architecture")
    return _shape(header)


def _shape(header: gguf_file.GGUFFile) -> ModelShape:
    kv, path, arch = header.kv, header.path, header.architecture

    def one(name: str, default: int | None = None) -> int:
        key = f"{arch}.{name}"
        return _per_layer(_ints(kv, key), 1, None if default is None else [default], key, path)[0]

    def array_length(name: str) -> int | None:
        return len(kv[name]) if isinstance(kv.get(name), Sequence) and not isinstance(kv[name], str) else None

    n_layer = one("block_count")
    n_embd = one("embedding_length")
    n_head = _per_layer(_ints(kv, f"{arch}.attention.head_count"), n_layer, None, f"{arch}.attention.head_count", path)
    # llama.cpp's defaults (llama-model.cpp, load_hparams): as many KV heads as heads, and heads of
    # n_embd / n_head values
    n_head_kv = _per_layer(_ints(kv, f"{arch}.attention.head_count_kv"), n_layer, n_head, "head_count_kv", path)
    head_dim = n_embd // max(n_head[0], 1)
    layers, inputs, outputs, sizes = [0] * n_layer, 0, 0, {t.name: t.nbytes for t in header.tensors}
    for name, size in sizes.items():
        match = _LAYER_TENSOR.match(name)
        if match and int(match.group(1)) < n_layer:
            layers[int(match.group(1))] += size
        elif name.startswith("output"):
            outputs += size
        else:
            inputs += size
    return ModelShape(
        architecture=arch,
        n_layer=n_layer,
        n_ctx_train=one("context_length", 0),
        n_embd=n_embd,
        n_vocab=array_length("tokenizer.ggml.tokens") or one("vocab_size", 0),
        n_merges=array_length("tokenizer.ggml.merges") or 0,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=one("attention.key_length", head_dim),
        head_dim_v=one("attention.value_length", head_dim),
        n_ff=_per_layer(_ints(kv, f"{arch}.feed_forward_length"), n_layer, [0] * n_layer, "feed_forward_length", path),
        header_bytes=header.data_start,
        layer_weights=layers,
        input_weights=inputs,
        output_weights=outputs,
        tied_output_weights=0 if "output.weight" in sizes else sizes.get("token_embd.weight", 0),
        has_pace_keys=any(name.startswith("pace.amb.") for name in kv),
    )


# --- the AMB settings ---------------------------------------------------------------------------------


def _model_amb_config(path: Path, needed: bool) -> PaceConfig:
    """The model's pace.amb.* settings, read by the C library's own rules (amb.model_config). The
    model is opened with llama.cpp's metadata-only load (no_alloc, the load its memory-fit pass
    uses): hyperparameters and tensor shapes, no tensor data. Invalid keys raise PaceConfigError
    when the settings are `needed` as they are, else warn and give the defaults, as Llama does."""
    lcpp = llama_cpp_module()
    params = lcpp.llama_model_default_params()
    params.no_alloc = True
    params.load_mode = 0  # LLAMA_LOAD_MODE_NONE: a metadata-only load cannot map the file
    with _bindings.native_log_silenced(), deferred():
        model = lcpp.llama_model_load_from_file(os.fsencode(path), params)
    if not model:
        raise ModelFileError(f"llama.cpp cannot read the model in {path} "
                             "(an architecture or hyperparameters it does not support)")
    try:
        return amb.model_config(model)
    except amb.PaceConfigError as exc:
        if needed:
            raise
        warnings.warn(f"{exc}; using the default AMB settings instead", PaceMetadataWarning, stacklevel=3)
        return PaceConfig()
    finally:
        lcpp.llama_model_free(model)


def amb_config(path: Path, shape: ModelShape, changes: dict | None = None) -> PaceConfig:
    """The AMB settings a run gets: the model's pace.amb.* keys with `changes` (as from the CLI's
    AMB flags, or Llama's `pace=` dict) applied, checked by the runtime's rules (PaceConfigError)."""
    changes = changes or {}
    base = _model_amb_config(path, needed=not changes) if shape.has_pace_keys else PaceConfig()
    config = base.with_changes(changes)
    amb.validate_config(config, shape.n_layer)
    return config


# --- the components -------------------------------------------------------------------------------------


def _pad(n: int, to: int) -> int:
    return -(-n // to) * to


def context_cells(n_ctx: int) -> int:
    """The context llama.cpp creates for n_ctx requested tokens (one sequence)."""
    return _pad(n_ctx, KV_PAD)


def kv_cache_bytes(shape: ModelShape, n_cells: int, layers=None) -> int:
    """llama.cpp's default f16 KV cache (llama-kv-cache.cpp): per layer with KV heads, a K tensor of
    n_embd_k_gqa x cells and a V tensor of n_embd_v_gqa x cells, n_embd_*_gqa = head dim x KV heads.
    A unified cache, or one stream per sequence, holds the same cells for one sequence."""
    layers = range(shape.n_layer) if layers is None else layers
    return sum(n_cells * (shape.head_dim_k + shape.head_dim_v) * shape.n_head_kv[il] * F16 for il in layers)


def amb_bytes(config: PaceConfig, shape: ModelShape, n_cells: int, n_seq: int = 1, layers=None) -> int:
    """What set_params allocates for the banks (per AMB layer and sequence: keys and values, their
    metadata, the case log per position; prompt granularity adds a snapshot and pending rows),
    measured by the C library from the same tensor shapes (llama_pace_amb_layer_bytes); `layers`: only
    the AMB layers among these."""
    if not config.enabled:
        return 0
    c, params = _bindings.api(), config._to_c()
    total = 0
    for il in config.layers if layers is None else [il for il in config.layers if il in layers]:
        size = c.llama_pace_amb_layer_bytes(ctypes.byref(params), shape.n_ff[il], n_seq, n_cells)
        if size == 0:
            raise amb.PaceConfigError(amb.last_error())
        total += size
    return total


def graph_bytes(shape: ModelShape, n_cells: int, n_kv: int, n_outputs: int, n_ubatch: int = N_BATCH) -> int:
    """llama.cpp's compute graph at its largest, by a formula fitted to llama.cpp's own sizes.

    llama.cpp reserves its compute buffer for the largest graph (sched_reserve in llama-context.cpp,
    logged as "CPU compute buffer size"). For SmolLM2-135M (n_embd 576, n_ff 1536, 9 heads, 3 KV
    heads of 64), a metadata-only model and contexts with n_outputs_max = 1 gave, in MiB:
    n_ubatch 512: 16.38 (n_ctx 512), 26.38 (1024), 46.38 (2048), 86.38 (4096), 166.38 (8192);
    n_ubatch 128: 4.10, 6.60, 11.60 (n_ctx 512..2048); n_ctx 256: 6.82 (256 tokens), 3.41 (128);
    and with n_batch outputs (llama.cpp's default reserve), 98.25 (n_ctx 512 and 1024). The phases:
    * attention: 4 bytes x n_ubatch x (n_kv x (n_head + 1) + 5 n_embd + n_embd_k_gqa + n_embd_v_gqa):
      the f32 scores of every head (soft_max works in place) and the f32 mask, plus the residual,
      normed input, Q, roped Q and attention output rows and the new K and V rows; it matches the
      nine attention-bound points above to the printed 0.01 MiB;
    * feed-forward, larger only for short contexts: 4 bytes x n_ubatch x (4 n_ff + 1.5 n_embd)
      (6.84 MiB where llama.cpp gives 6.82);
    * logits: n_outputs rows of n_vocab f32, plus 2 n_embd per token: 98.25 MiB for 512 rows, as
      llama.cpp gives at n_ctx 512 and 1024 (at 2048 it gives 99.38: the logits do not fit the gap
      the attention tensors left; the formula is within 1.2% there).
    """
    n_ub = min(n_ubatch, n_cells)
    n_head, n_ff = max(shape.n_head), max(shape.n_ff)
    kv_rows = max(shape.n_head_kv) * (shape.head_dim_k + shape.head_dim_v)
    attention = F32 * n_ub * (n_kv * (n_head + 1) + 5 * shape.n_embd + kv_rows)
    feed_forward = F32 * n_ub * (4 * n_ff + 3 * shape.n_embd // 2)
    logits = F32 * (n_outputs * shape.n_vocab + n_ub * 2 * shape.n_embd)
    return max(attention, feed_forward, logits)


def compute_bytes(shape: ModelShape, n_cells: int, n_kv: int) -> int:
    """Peak host memory of a decode at n_kv attended cells: the graph with one logit row
    (llama-cpp-python asks for the last token's logits only; llama.cpp's reserve for n_batch rows is
    address space the run never touches), ggml's CPU work area, and llama.cpp's output buffer.

    The work area is sized for the largest node: without flash attention, the product of the scores
    with the f16 V cache first converts the scores to f16, 2 bytes x n_kv x n_ubatch x n_head.
    The output buffer holds the one logit row (n_vocab f32)."""
    work = F16 * n_kv * min(N_BATCH, n_cells) * max(shape.n_head)
    return graph_bytes(shape, n_cells, n_kv, n_outputs=1) + work + F32 * shape.n_vocab


# --- the estimate ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    name: str
    free: int
    total: int
    runs_amb: bool = False  # its backend runs the AMB op, so the banks of AMB layers placed on it live there


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run needs, per component, in host memory (RAM) and, with offloaded layers, on the GPU."""

    model: str
    n_ctx: int  # the context llama.cpp creates (the request rounded up to a multiple of 256)
    n_ctx_train: int
    tokens: int  # tokens the context holds at the peak (n_ctx: full)
    amb: PaceConfig
    weights: int
    kv_cache: int
    amb_banks: int
    compute: int
    model_metadata: int
    python_arrays: int
    baseline: int
    ram_available: int | None  # None: unknown on this system
    gpu: Device | None = None  # the device offloaded layers go to (None: no GPU backend, or none offloaded)
    gpu_layers: int = 0
    gpu_weights: int = 0
    gpu_kv_cache: int = 0
    gpu_amb_banks: int = 0
    gpu_compute: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return (self.weights + self.kv_cache + self.amb_banks + self.compute + self.model_metadata
                + self.python_arrays + self.baseline)

    @property
    def gpu_total(self) -> int:
        return self.gpu_weights + self.gpu_kv_cache + self.gpu_amb_banks + self.gpu_compute

    @property
    def fits_ram(self) -> bool | None:
        return None if self.ram_available is None else self.total <= self.ram_available

    @property
    def fits_gpu(self) -> bool | None:
        """None when nothing is offloaded, or the device's free memory is unknown."""
        if not self.gpu_layers or self.gpu is None or self.gpu.free <= 0:
            return None
        return self.gpu_total <= self.gpu.free

    @property
    def fits(self) -> bool:
        """Nothing known not to fit (an unknown amount of free memory is not held against it)."""
        return self.fits_ram is not False and self.fits_gpu is not False


def ram_available() -> int | None:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping), else the free
    pages where the system reports them; None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # not a name this system knows
        return None


def gpu_devices() -> list[Device]:
    """GPU devices of the loaded ggml build (RPC servers added to this process count as GPUs, as
    llama.cpp places layers on them), with their free and total memory; empty on a CPU-only build."""
    return [Device(d["name"], d["memory_free"], d["memory_total"], d["runs_amb"]) for d in devices()
            if d["type"] in ("GPU", "iGPU")]


def offloaded_layers(n_layer: int, n_gpu_layers: int) -> range:
    """Layers llama.cpp puts on the GPU (llama-model.cpp: i_gpu_start = n_layer + 1 - n_gpu_layers);
    index n_layer is the output layer. n_gpu_layers < 0 means all."""
    n = n_layer + 1 if n_gpu_layers < 0 else min(n_gpu_layers, n_layer + 1)
    return range(n_layer + 1 - n, n_layer + 1)


@dataclass(frozen=True)
class _Placement:
    """Where llama.cpp puts weights and KV cache with n_gpu_layers on a GPU build."""

    host_weights: int
    gpu_weights: int
    gpu_kv_layers: list[int]
    gpu_layers: int  # offloaded layers, the output layer included


def _placement(shape: ModelShape, n_gpu_layers: int, gpu: Device | None) -> _Placement:
    on_gpu = offloaded_layers(shape.n_layer, n_gpu_layers) if gpu else range(0)
    layers = [il for il in on_gpu if il < shape.n_layer]
    output_on_gpu = shape.n_layer in on_gpu
    layer_weights = sum(shape.layer_weights[il] for il in layers)
    # tied output weights: llama.cpp copies the token embeddings to the output layer's device
    output_weights = shape.output_weights + shape.tied_output_weights if output_on_gpu else 0
    host = shape.weights - layer_weights - (shape.output_weights if output_on_gpu else 0)
    return _Placement(host, layer_weights + output_weights, layers, len(on_gpu))


def estimate(model: str | Path, n_ctx: int, *, pace: dict | None = None, n_gpu_layers: int = 0,
             tokens: int | None = None) -> MemoryEstimate:
    """The memory `Llama(model, n_ctx=n_ctx, pace=pace, n_gpu_layers=n_gpu_layers)` needs when its
    context holds `tokens` tokens (default: full, the worst case). `model`: a GGUF path or a
    registry name, as for Llama."""
    path = resolve_model(model)
    if n_ctx < 1:
        raise ValueError(f"n_ctx must be positive, got {n_ctx}")
    shape = read_shape(path)
    config = amb_config(path, shape, pace)
    cells = context_cells(n_ctx)
    tokens = cells if tokens is None else min(max(tokens, 1), cells)
    devices = gpu_devices() if n_gpu_layers else []
    gpu = devices[0] if devices else None
    place = _placement(shape, n_gpu_layers, gpu)
    gpu_kv = kv_cache_bytes(shape, cells, place.gpu_kv_layers)
    # an AMB layer's bank lives on its device when that device runs the op, else in RAM
    gpu_amb = amb_bytes(config, shape, cells, layers=place.gpu_kv_layers) if gpu and gpu.runs_amb else 0
    return MemoryEstimate(
        model=str(model),
        n_ctx=cells,
        n_ctx_train=shape.n_ctx_train,
        tokens=tokens,
        amb=config,
        weights=place.host_weights,
        kv_cache=kv_cache_bytes(shape, cells) - gpu_kv,
        amb_banks=amb_bytes(config, shape, cells) - gpu_amb,
        compute=compute_bytes(shape, cells, n_kv=min(cells, _pad(tokens, KV_PAD))),
        model_metadata=shape.header_bytes + METADATA_BYTES_PER_ENTRY * (shape.n_vocab + shape.n_merges),
        # input_ids: n_ctx int32. llama-cpp-python also allocates `scores`, n_batch x n_vocab f32,
        # but writes it only with logits_all=True (0.3.36 samples inside llama.cpp): never resident.
        python_arrays=4 * n_ctx + CANDIDATE_BYTES * shape.n_vocab,
        baseline=BASELINE_BYTES,
        ram_available=ram_available(),
        gpu=gpu,
        gpu_layers=place.gpu_layers,
        gpu_weights=place.gpu_weights,
        gpu_kv_cache=gpu_kv,
        gpu_amb_banks=gpu_amb,
        # a device's compute buffer is allocated whole, at llama.cpp's reserve size (n_batch logit rows)
        gpu_compute=graph_bytes(shape, cells, cells, n_outputs=min(N_BATCH, cells)) if place.gpu_layers else 0,
        notes=_notes(shape, n_ctx, n_gpu_layers, devices),
    )


def _notes(shape: ModelShape, n_ctx: int, n_gpu_layers: int, devices: list[Device]) -> list[str]:
    notes = []
    if context_cells(n_ctx) != n_ctx:
        notes.append(f"llama.cpp rounds n_ctx {n_ctx} up to {context_cells(n_ctx)} (a multiple of {KV_PAD})")
    if shape.n_ctx_train and n_ctx > shape.n_ctx_train:
        notes.append(f"n_ctx {n_ctx} is beyond the model's training context ({shape.n_ctx_train}): "
                     "estimated anyway, but answers degrade past it")
    if n_gpu_layers and not devices:
        notes.append("no GPU backend is compiled into this build: --n-gpu-layers is ignored, everything stays in RAM")
    elif devices and devices[0].free <= 0:
        notes.append(f"the free memory of {devices[0].name} is unknown")
    return notes


# --- output ---------------------------------------------------------------------------------------------

ROWS = [
    ("weights", "weights"),
    ("KV cache", "kv_cache"),
    ("AMB banks", "amb_banks"),
    ("compute buffers", "compute"),
    ("model metadata", "model_metadata"),
    ("Python arrays", "python_arrays"),
    ("process baseline", "baseline"),
]
GPU_ROWS = [("GPU weights", "gpu_weights"), ("GPU KV cache", "gpu_kv_cache"), ("GPU AMB banks", "gpu_amb_banks"),
            ("GPU compute", "gpu_compute")]


def _mib(n: int) -> str:
    return f"{n / MiB:,.1f}"


def _amb_text(config: PaceConfig) -> str:
    if not config.enabled:
        return "AMB off"
    layers = ",".join(map(str, config.layers))
    return f"AMB on layers {layers}, bank {config.bank_size}, {config.granularity} granularity"


def verdict(e: MemoryEstimate) -> str:
    available = "available unknown" if e.ram_available is None else f"{_mib(e.ram_available)} MiB available"
    ram = f"needs {_mib(e.total)} MiB of RAM, {available}"
    gpu = ""
    if e.gpu_layers and e.gpu is not None:
        free = f"{_mib(e.gpu.free)} MiB free" if e.gpu.free > 0 else "free memory unknown"
        gpu = f"; {e.gpu.name} ({e.gpu_layers} layers): needs {_mib(e.gpu_total)} MiB, {free}"
    word = "does not fit" if not e.fits else "fits" if e.fits_ram else "cannot tell whether it fits"
    return f"{word}: {ram}{gpu}"


def report(e: MemoryEstimate) -> str:
    """The table `pace-gguf estimate` prints: one row per component in MiB, then the verdict."""
    head = f"{e.model}: n_ctx {e.n_ctx} (trained with {e.n_ctx_train or 'unknown'}), {_amb_text(e.amb)}"
    width = max(len(label) for label, _ in ROWS + GPU_ROWS)

    def row(label: str, n: int) -> str:
        return f"{label:<{width}}  {_mib(n):>9}"

    lines = [head, f"{'component':<{width}}  {'MiB':>9}"]
    lines += [row(label, getattr(e, name)) for label, name in ROWS] + [row("total (RAM)", e.total)]
    if e.gpu_layers:
        lines += [row(label, getattr(e, name)) for label, name in GPU_ROWS] + [row("total (GPU)", e.gpu_total)]
    lines += [f"note: {note}" for note in e.notes]
    lines.append(verdict(e))
    return "\n".join(lines)


def to_json(e: MemoryEstimate) -> dict:
    """The estimate as plain data (bytes), with the totals and verdicts."""
    return {**dataclasses.asdict(e), "total": e.total, "gpu_total": e.gpu_total, "fits_ram": e.fits_ram,
            "fits_gpu": e.fits_gpu, "fits": e.fits, "verdict": verdict(e)}
