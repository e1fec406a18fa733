"""`pace-gguf convert` and `pace-gguf reorder` subcommands.

Registered in pace_gguf/cli.py by `convert_cli.register(sub)`. Light at import: the pipeline (and
torch, through upstream's converter subprocess) is loaded only when a command runs.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

from pace_gguf.amb import AMB_SETTINGS, AmbSetting
from pace_gguf.cli_args import amb_argument, non_negative_int

# The AMB settings as convert's --amb-<key> options, grouped by kind (each group in AMB_SETTINGS'
# order): the order of the options in --help and of the pace.amb.* keys convert writes.
_KIND_ORDER = (tuple, bool, int, float, str)
_AMB_OPTIONS = tuple(sorted(AMB_SETTINGS, key=lambda s: _KIND_ORDER.index(s.kind)))
# convert leaves the ranges to the runtime's rules (pipeline.amb_metadata), whose one-line error
# names the pace.amb key: its options only parse the numbers
_PARSE_ONLY = {int: non_negative_int, float: float}


def _add_ce_args(p: argparse.ArgumentParser, default_experts: int) -> None:
    p.add_argument("--experts", type=non_negative_int, default=default_experts,
                   help=f"CE experts per layer, must divide d_ff (default {default_experts}; 0 = no CE)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="CE k-means seed (default 0)")
    p.add_argument("--threads", type=non_negative_int, default=0, help="quantization threads (default: all cores)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def register(sub) -> None:
    """Add the `convert` and `reorder` subcommands to pace-gguf's subparsers."""
    from .quantize import QUANT_TYPES  # noqa: PLC0415  (no torch, no llama_cpp)

    p = sub.add_parser("convert", help="HF checkpoint or F32/F16/BF16 GGUF -> CE-reordered, quantized GGUF",
                       description="Convert a Hugging Face model folder (safetensors) or an F32/F16/BF16 GGUF "
                                   "into a CE-reordered GGUF with pace.* metadata, quantized by llama.cpp.")
    p.add_argument("src", nargs="?", type=Path, help="Hugging Face model folder or GGUF file")
    p.add_argument("-o", "--output", type=Path, help="output GGUF file")
    p.add_argument("--quant", default="Q8_0", type=str.upper,
                   help=f"output type (default Q8_0): {', '.join(QUANT_TYPES)}")
    p.add_argument("--imatrix", type=Path, default=None, help="importance matrix file of llama-imatrix (GGUF or .dat)")
    p.add_argument("--list-architectures", action="store_true", help="print the architectures llama.cpp's converter knows")
    p.add_argument("--verbose", action="store_true", help="show the output of llama.cpp's converter")
    _add_ce_args(p, 64)
    g = p.add_argument_group("Activation Memory Bank defaults written as pace.amb.* (absent: AMB off)")
    for setting in _AMB_OPTIONS:
        g.add_argument(f"--amb-{setting.key.replace('_', '-')}", dest=f"amb_{setting.key}", default=None,
                       **_amb_option(setting))
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("reorder", help="apply CE to an existing F32/F16/BF16 GGUF",
                       description="Apply Cortical Expert reordering to a GGUF file (ffn_down must be F32/F16/BF16 "
                                   "unless --requantize).")
    p.add_argument("src", type=Path, help="input GGUF file")
    p.add_argument("-o", "--output", type=Path, required=True, help="output GGUF file")
    p.add_argument("--requantize", action="store_true",
                   help="for a quantized file: dequantize, reorder, quantize again to its type (lossy)")
    _add_ce_args(p, 64)
    p.set_defaults(func=cmd_reorder)


def _amb_option(setting: AmbSetting) -> dict:
    """add_argument keywords of convert's option for one AMB setting (the run commands' ones, but
    for the points above)."""
    if setting.kind is bool:
        return {"action": argparse.BooleanOptionalAction, "help": setting.gguf_key}
    option = amb_argument(setting)
    if setting.kind is tuple:
        option["help"] = f"{setting.help} (sets pace.amb.enabled=true)"
    if setting.kind in _PARSE_ONLY:
        option["type"] = _PARSE_ONLY[setting.kind]
    return option


def _amb_settings(args) -> dict:
    """pace.amb.* key -> value of the --amb-* options given."""
    given = {s.key: getattr(args, f"amb_{s.key}") for s in _AMB_OPTIONS}
    return {key: value for key, value in given.items() if value is not None}


def _print_summary(summary) -> None:
    for line in summary.lines():
        print(f"pace-gguf: {line}", file=sys.stderr)


def cmd_convert(args) -> int:
    from .errors import ConvertError  # noqa: PLC0415

    if args.list_architectures:
        from .hf import upstream_architectures  # noqa: PLC0415
        print("\n".join(upstream_architectures()))
        return 0
    if args.src is None or args.output is None:
        raise ConvertError("convert needs SRC and -o OUT.gguf (see `pace-gguf convert --help`)")
    from .pipeline import ConvertOptions, convert  # noqa: PLC0415

    opts = ConvertOptions(quant=args.quant, experts=args.experts, seed=args.seed, imatrix=args.imatrix,
                          amb=_amb_settings(args), threads=args.threads, verbose=args.verbose,
                          progress=args.progress)
    with _os_errors_as_one_line(args.output):
        _print_summary(convert(args.src, args.output, opts))
    return 0


@contextmanager
def _os_errors_as_one_line(out):
    """A full disk, a vanished folder or a permission change mid-run: one error line, not a
    traceback (the pipeline has already removed its temp files; OUT was never touched)."""
    from .errors import ConvertError  # noqa: PLC0415

    try:
        yield
    except OSError as exc:
        what = exc.strerror or str(exc)
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        raise ConvertError(f"could not write {out}: {what}{where}; nothing was written") from exc


def cmd_reorder(args) -> int:
    from .pipeline import reorder  # noqa: PLC0415

    with _os_errors_as_one_line(args.output):
        _print_summary(reorder(args.src, args.output, experts=args.experts, seed=args.seed,
                               requantize=args.requantize, progress=args.progress, threads=args.threads))
    return 0
