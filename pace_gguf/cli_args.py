"""argparse pieces shared by the pace-gguf subcommands: value types (chat, convert, reorder, ...),
and the model and AMB options of the commands that run a model.

Each value type raises argparse.ArgumentTypeError with a message that says what was expected, which
argparse prints as a usage error (exit status 2).
"""

from __future__ import annotations

import argparse
import sys

from . import registry
from .amb import AMB_SETTINGS, AmbSetting
from .errors import PaceError


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def port_number(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in 0..65535, got {text}")
    return value


def layer_list(text: str) -> tuple[int, ...]:
    """"12,26" -> (12, 26): 0-based layer indices."""
    try:
        layers = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices such as 12,26, got {text!r}") from None
    if not layers or min(layers) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative layer indices, got {text!r}")
    return layers


# --- pieces shared by the subcommands that load a model (chat, ask, summarize, serve) ----------------


def progress_line(msg: str) -> None:
    """One `pace-gguf: ...` status line on stderr (stdout carries only answers)."""
    print(f"pace-gguf: {msg}", file=sys.stderr, flush=True)


# The AMB settings that have a flag (their rows of amb.AMB_SETTINGS), and the argparse type of each
# kind of value a row accepts (its `values`).
AMB_FLAGS = tuple(setting for setting in AMB_SETTINGS if setting.flag)
AMB_VALUE_TYPES = {"layers": layer_list, "int >= 1": positive_int, "int >= 0": non_negative_int,
                   "[0, 1]": probability, "real": float}


def amb_argument(setting: AmbSetting) -> dict:
    """add_argument keywords (type or choices, help) for one AMB setting's option."""
    if setting.choices:
        return {"choices": setting.choices, "help": setting.help}
    # (PaceConfig.with_changes: naming layers switches the AMB on)
    text = f"{setting.help} (implies --amb)" if setting.kind is tuple else f"{setting.help} (default {setting.default})"
    return {"type": AMB_VALUE_TYPES[setting.values], "help": text}


def add_amb_args(p: argparse.ArgumentParser, stats: bool = True) -> None:
    g = p.add_argument_group("Activation Memory Bank (defaults: the model's pace.amb.* metadata, else off)")
    g.add_argument("--amb", action=argparse.BooleanOptionalAction, default=None, help="switch the AMB on or off")
    for setting in AMB_FLAGS:
        g.add_argument(setting.flag, dest=f"amb_{setting.name}", default=None, **amb_argument(setting))
    if stats:
        g.add_argument("--stats", action="store_true", help="after each answer, print per AMB layer the slots used and case counts")


def pace_changes(args: argparse.Namespace) -> dict:
    """AMB settings given on the command line, as changes to the model's pace.amb.* defaults."""
    given = {setting.name: getattr(args, f"amb_{setting.name}") for setting in AMB_FLAGS}
    changes = {name: value for name, value in given.items() if value is not None}
    if args.amb is not None:
        changes["enabled"] = args.amb
    return changes


def add_model_args(p: argparse.ArgumentParser, n_ctx: int = 4096) -> None:
    p.add_argument("-m", "--model", default=None,
                   help=f"registry name or GGUF path (default: {registry.DEFAULT_MODEL})")
    if n_ctx:
        p.add_argument("--n-ctx", type=positive_int, default=n_ctx, help=f"context size in tokens (default {n_ctx})")
    else:
        p.add_argument("--n-ctx", type=non_negative_int, default=0,
                       help="context size in tokens (default 0: the model's training context)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: llama.cpp's choice)")
    p.add_argument("--n-gpu-layers", type=int, default=0, help="layers to offload to a GPU build (-1: all)")
    p.add_argument("--rpc", default=None, metavar="HOST:PORT,...",
                   help="`pace-gguf rpc-server`s whose devices take layers, first one first (with --n-gpu-layers)")
    p.add_argument("--seed", type=int, default=0xFFFFFFFF, help="sampling seed (default: random)")
    p.add_argument("--verbose", action="store_true", help="show llama.cpp's own log")


def add_model_argument(p: argparse.ArgumentParser) -> None:
    """The model as an optional positional MODEL, besides -m (see model_name)."""
    p.add_argument("model_name", nargs="?", default=None, metavar="MODEL", help="registry name or GGUF path (same as -m)")


def model_name(args: argparse.Namespace) -> str | None:
    """The model given as MODEL or with -m (None: neither, the default model)."""
    if args.model_name and args.model and args.model_name != args.model:
        raise PaceError(f"two models given ({args.model_name} and -m {args.model}): give one")
    return args.model or args.model_name


def load_llama(args: argparse.Namespace, pace: dict | None = None, **kwargs):
    """The model and context the model and AMB flags describe (kwargs: more Llama arguments;
    `pace`: AMB settings instead of the flags, for commands that have none)."""
    from . import Llama  # noqa: PLC0415 (loads llama.cpp: only when a command needs it)

    path = registry.resolve_model(args.model, progress=progress_line)
    return Llama(
        model_path=str(path),
        n_ctx=args.n_ctx,
        n_threads=args.threads,
        n_gpu_layers=args.n_gpu_layers,
        rpc_servers=args.rpc,
        seed=args.seed,
        verbose=args.verbose,
        pace=pace_changes(args) if pace is None else pace,
        **kwargs,
    )
