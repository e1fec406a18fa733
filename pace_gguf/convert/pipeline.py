"""The conversion pipeline: HF folder or F32/F16/BF16 GGUF -> (upstream converter) -> CE reorder +
pace.* metadata -> (llama.cpp quantize) -> OUT.

Every intermediate and the result are written to hidden temp files in OUT's folder; OUT appears
only by an atomic rename once everything succeeded, so a failure, Ctrl-C or SIGTERM never leaves
a partial OUT (nor temp files: they are removed in `finally`). A process killed outright (SIGKILL)
cannot clean up: its temp files carry its PID, and the next run writing to that folder removes
those whose process is gone.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pace_gguf.amb import AMB_SETTINGS
from pace_gguf.atomic_files import publish, remove_stale_parts, temp_paths

from ..gguf_file import read_gguf, type_name
from .errors import ConvertError

# pace.amb.* key -> GGUF value kind (what cpp/src/pace-amb.cpp reads; layers: an array)
AMB_KEYS = {s.key: (list if s.kind is tuple else s.kind) for s in AMB_SETTINGS}
# pace.amb.* key -> PaceConfig field (they differ for "lambda", a Python keyword)
_CONFIG_FIELDS = {s.key: s.name for s in AMB_SETTINGS}


@dataclass
class ConvertOptions:
    quant: str = "Q8_0"
    experts: int = 64               # 0 = no CE
    seed: int = 0
    imatrix: Path | None = None
    amb: dict = field(default_factory=dict)   # AMB_KEYS name -> value, only what the user gave
    threads: int = 0
    verbose: bool = False
    progress: bool = True


@dataclass
class ConvertSummary:
    output: Path
    seconds: float
    size: int
    peak_rss_mb: float
    quant: str
    experts: int
    objectives: dict[int, float]
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"wrote {self.output} ({self.size / 2**20:,.1f} MiB, {self.quant}) in {self.seconds:.1f} s, "
               f"peak RAM {self.peak_rss_mb:,.0f} MiB"]
        if self.experts:
            objs = ", ".join(f"{i}:{v:.4f}" for i, v in self.objectives.items())
            out.append(f"CE: {self.experts} experts per layer; objective (mean cosine to expert centre) per layer: {objs}")
        else:
            out.append("CE: off (--experts 0)")
        return out + self.notes


def amb_metadata(amb: dict, n_layer: int | None) -> dict:
    """pace.amb.* keys for the given settings (only those given); enabled=true when layers are.
    The settings are first checked, for a model of `n_layer` layers, by the runtime's own rules:
    a file the runtime would refuse is never written."""
    unknown = [name for name in amb if name not in AMB_KEYS]
    if unknown:
        raise ConvertError(f"unknown AMB setting {unknown[0]!r}; known: {', '.join(AMB_KEYS)}")
    amb = dict(amb)
    if "layers" in amb:
        amb.setdefault("enabled", True)
    if amb:
        _check_amb(amb, n_layer)
    return {f"pace.amb.{name}": [int(v) for v in value] if AMB_KEYS[name] is list else AMB_KEYS[name](value)
            for name, value in amb.items()}


def _check_amb(amb: dict, n_layer: int | None) -> None:
    """What the runtime will see (its defaults plus these keys) must pass its own validation."""
    from pace_gguf.amb import PaceConfig, PaceConfigError, validate_config  # noqa: PLC0415

    if n_layer is None:
        raise ConvertError("cannot check the --amb-* settings: the input does not say how many layers the model has")
    changes = {_CONFIG_FIELDS[name]: value for name, value in amb.items()}
    try:
        validate_config(PaceConfig().with_changes(changes), n_layer)
    except PaceConfigError as exc:
        raise ConvertError(str(exc)) from None


def _prepare_output(src: Path, out: Path) -> Path:
    """Check OUT's folder, and remove the temp files that killed runs left there."""
    out = out.expanduser()
    if not out.parent.is_dir():
        raise ConvertError(f"output folder does not exist: {out.parent}")
    if out.is_dir():
        raise ConvertError(f"output {out} is a folder; give a file name such as {out / 'model.gguf'}")
    if src.exists() and out.exists() and out.resolve() == src.resolve():
        raise ConvertError("output and input are the same file; write to another name")
    if not os.access(out.parent, os.W_OK):
        raise ConvertError(f"output folder is not writable: {out.parent}")
    remove_stale_parts(out.parent)
    return out


def _hf_outtype(src: Path, quant: str) -> str:
    """Intermediate type of upstream's converter: the target itself for F32/F16/BF16; for quantized
    targets F32 when the checkpoint is fp32 (upstream's auto would round it to F16), else auto."""
    if quant in ("F32", "F16", "BF16"):
        return quant.lower()
    import json  # noqa: PLC0415

    for path in sorted(src.glob("*.safetensors")):
        with open(path, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__" and len(v["shape"]) >= 2}
        return "f32" if dtypes == {"F32"} else "auto"
    return "auto"


def _log(msg: str) -> None:
    print(f"pace-gguf: {msg}", file=sys.stderr, flush=True)


def convert(src, out, opts: ConvertOptions) -> ConvertSummary:
    """Run the whole pipeline; returns the summary. Raises ConvertError (one line) on bad input."""
    from .quantize import FLOAT_TARGETS, parse_quant  # noqa: PLC0415

    t0 = time.perf_counter()
    src, out = Path(src).expanduser(), Path(out)
    opts.quant = parse_quant(opts.quant)
    if opts.experts < 0:
        raise ConvertError(f"--experts must be >= 0, got {opts.experts}")
    if not src.exists():
        raise ConvertError(f"input not found: {src}")
    if not (src.is_dir() or src.is_file()):         # a FIFO or a device could block the reads
        raise ConvertError(f"{src} is neither a Hugging Face model folder nor a regular (GGUF) file")
    out = _prepare_output(src, out)
    # A GGUF input is parsed once, here: its header also has the layer count the AMB check needs.
    source = None if src.is_dir() else read_gguf(src)
    amb_kv = amb_metadata(opts.amb, _layer_count(src, source) if opts.amb else None)
    imatrix = None
    if opts.imatrix is not None:
        from .imatrix import load_imatrix  # noqa: PLC0415
        imatrix = load_imatrix(opts.imatrix)
        if opts.quant in FLOAT_TARGETS:
            raise ConvertError(f"--imatrix only applies to quantized types, not {opts.quant}")

    with temp_paths(out, 3) as (t_upstream, t_reordered, t_quant):
        if source is None:
            from .hf import check_hf_folder, run_upstream_converter  # noqa: PLC0415
            check_hf_folder(src)
            outtype = _hf_outtype(src, opts.quant)
            _log(f"converting {src} with llama.cpp's convert_hf_to_gguf.py (--outtype {outtype})")
            run_upstream_converter(src, t_upstream, outtype, verbose=opts.verbose, progress=opts.progress)
            source = read_gguf(t_upstream)
        objectives = _reorder_step(source, t_reordered, opts, amb_kv)
        if source.path == t_upstream:
            del source
            t_upstream.unlink(missing_ok=True)        # free disk before quantizing
        final = t_reordered
        if _needs_quantize(t_reordered, opts.quant):
            from .imatrix import permute_imatrix  # noqa: PLC0415
            from .quantize import quantize  # noqa: PLC0415
            if imatrix is not None:
                imatrix = permute_imatrix(imatrix, objectives["perms"])
            _log(f"quantizing to {opts.quant} with llama.cpp" + (" (imatrix)" if imatrix else ""))
            quantize(t_reordered, t_quant, opts.quant, imatrix=imatrix, nthread=opts.threads,
                     show_progress=opts.progress)
            final = t_quant
        publish(final, out)
    return ConvertSummary(out, time.perf_counter() - t0, out.stat().st_size, _peak_rss_mb(), opts.quant,
                          opts.experts, objectives["objective"])


def _layer_count(src: Path, source) -> int | None:
    """The model's block count, from config.json (`source` None: a HF folder) or the GGUF header."""
    if source is None:
        from .hf import check_hf_folder, layer_count  # noqa: PLC0415
        return layer_count(check_hf_folder(src))
    count = source.kv.get(f"{source.kv.get('general.architecture')}.block_count")
    return count if isinstance(count, int) else None


def _needs_quantize(path: Path, quant: str) -> bool:
    """False when every tensor already has the target's float type (F32/F16/BF16 from the same type)."""
    from .quantize import FLOAT_TARGETS  # noqa: PLC0415

    if quant not in FLOAT_TARGETS:
        return True
    src = read_gguf(path)
    want = FLOAT_TARGETS[quant]
    # 1-D tensors (norms) stay F32 in every llama.cpp float file type
    return any(t.type != want and len(t.shape) > 1 for t in src.tensors)


def _reorder_step(source, dst: Path, opts: ConvertOptions, amb_kv: dict) -> dict:
    """CE (when opts.experts) + metadata, streamed from `source` into `dst`."""
    from .reorder import ReorderPlan, cluster_all, plan_reorder, reorder_tensors  # noqa: PLC0415

    kv, drop = dict(amb_kv), ()
    if amb_kv:
        drop += ("pace.amb.",)                       # the user's settings replace the file's
    if opts.experts:
        plan = plan_reorder(source, opts.experts)
        bar = _bar(len(plan.layers), "CE clustering", "layer", opts.progress)
        cluster_all(source, plan, opts.experts, opts.seed, on_layer=lambda r: bar.update(1))
        bar.close()
        kv.update({"pace.ce.experts": opts.experts, "pace.ce.seed": opts.seed,
                   "pace.ce.objective": [float(v) for v in plan.objectives()]})
        drop += ("pace.ce.",)
    else:
        plan = ReorderPlan([], 0)
    total = sum(t.nbytes for t in source.tensors)
    bar = _bar(total, "write", "B", opts.progress, unit_scale=True)
    reorder_tensors(source, dst, plan, opts.experts, kv, drop, progress=lambda name, n: bar.update(n))
    bar.close()
    return {"objective": {i: plan.results[i].objective for i in plan.layers},
            "perms": {i: plan.results[i].perm for i in plan.layers}}


def _bar(total, desc, unit, enabled, **kw):
    from tqdm import tqdm  # noqa: PLC0415

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr, **kw)


def _peak_rss_mb() -> float:
    """Peak resident memory of this process and of the finished children (upstream's converter)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024.0


# --------------------------------------------------------------------------- reorder (GGUF only)

def reorder(src, out, *, experts: int = 64, seed: int = 0, requantize: bool = False,
            progress: bool = True, threads: int = 0) -> ConvertSummary:
    """CE on an existing GGUF. ffn_down must be F32/F16/BF16, unless `requantize`: then the file is
    dequantized to F32, reordered and quantized back to its file type (lossy: a second rounding)."""
    t0 = time.perf_counter()
    src, out = Path(src).expanduser(), Path(out)
    if src.is_dir():
        raise ConvertError(f"{src} is a folder; `reorder` takes a GGUF file (use `convert` for Hugging Face folders)")
    out = _prepare_output(src, out)
    if experts <= 0:
        raise ConvertError(f"--experts must be >= 1 for reorder, got {experts}")
    source = read_gguf(src)
    opts = ConvertOptions(experts=experts, seed=seed, progress=progress, threads=threads)
    from .quantize import quantize  # noqa: PLC0415
    from .reorder import ELEMENT_SIZE, plan_reorder  # noqa: PLC0415

    quantized = [t.name for t in source.tensors if t.name.endswith("ffn_down.weight") and t.type not in ELEMENT_SIZE]
    if quantized and not requantize:
        plan_reorder(source, experts)                 # raises the explanatory error
    with temp_paths(out, 3) as (t_f32, t_reordered, t_quant):
        qtype = None
        if quantized:
            qtype = _file_quant_name(source)
            _log(f"--requantize: dequantizing {src.name} to F32, then back to {qtype} after CE (lossy)")
            quantize(src, t_f32, "F32", allow_requantize=True, show_progress=progress, nthread=threads)
            source = read_gguf(t_f32)
        objectives = _reorder_step(source, t_reordered, opts, {})
        final, notes = t_reordered, []
        if qtype:
            quantize(t_reordered, t_quant, qtype, show_progress=progress, nthread=threads)
            final = t_quant
            err = requantize_error(source, read_gguf(t_quant), objectives["perms"])
            notes.append(f"--requantize cost: ffn_down weights requantized to {qtype} after CE differ from the "
                         f"input's by a relative RMS error of {err:.2e} (a second rounding on top of the "
                         "original one; converting from the F16/BF16 original avoids it)")
        publish(final, out)
    return ConvertSummary(out, time.perf_counter() - t0, out.stat().st_size, _peak_rss_mb(),
                          qtype or type_name(source.tensors[0].type), experts, objectives["objective"], notes)


def requantize_error(before, after, perms: dict) -> float:
    """Relative RMS difference of the ffn_down weights of `after` (CE-permuted, requantized) and
    `before` (the dequantized input), over all CE layers, with the permutation undone."""
    from .reorder import as_float32  # noqa: PLC0415

    num = den = 0.0
    for layer, perm in perms.items():
        name = f"blk.{layer}.ffn_down.weight"
        old = as_float32(before, name)
        new = as_float32(after, name)
        restored = np.empty_like(new)
        restored[:, perm] = new                     # new column j holds old column perm[j]
        num += float(np.square(restored.astype(np.float64) - old).sum())
        den += float(np.square(old.astype(np.float64)).sum())
    return (num / den) ** 0.5 if den else 0.0


def _file_quant_name(source) -> str:
    """The QUANT_TYPES name of a file's general.file_type (for --requantize)."""
    from pace_gguf._native import llama_cpp_module  # noqa: PLC0415

    from .quantize import QUANT_TYPES  # noqa: PLC0415

    lib = llama_cpp_module().llama_cpp
    ftype = source.kv.get("general.file_type")
    for name, const in QUANT_TYPES.items():
        if getattr(lib, const, None) == ftype:
            return name
    raise ConvertError(f"{source.path.name} has file type {ftype}, which --requantize cannot reproduce")
