"""`pace-gguf eval niah` and `pace-gguf eval longdoc`: several configurations compared on one model
in one run; results.json, report.md and (niah) heatmap PNGs in --out."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from ..cli_args import add_model_args, add_model_argument, load_llama, model_name, positive_int, progress_line
from ..errors import PaceError
from . import cases as eval_cases
from . import harness, report
from .configs import parse_config

DEFAULT_CONFIGS = ("off", "on")


def cmd_niah(args: argparse.Namespace) -> int:
    needles = eval_cases.load_needles(args.needles) if args.needles else eval_cases.DEFAULT_NEEDLES
    haystack = eval_cases.load_haystack(args.haystack, args.split)
    return _evaluate(args, "niah", lambda llm: eval_cases.niah_cases(
        llm, haystack, needles, args.lengths, args.depths, args.repeats),
        {"haystack": str(args.haystack), "lengths": list(args.lengths), "depths": list(args.depths),
         "repeats": args.repeats, "needles": str(args.needles or "built-in")})


def cmd_longdoc(args: argparse.Namespace) -> int:
    rows = eval_cases.leval_cases(args.data, args.split, args.per_document, args.limit)
    return _evaluate(args, "longdoc", lambda llm: rows,
                     {"data": str(args.data), "per_document": args.per_document, "limit": args.limit})


def cmd_rescore(args: argparse.Namespace) -> int:
    """Score the stored answers of finished evaluations again and rewrite their reports."""
    import json  # noqa: PLC0415

    for folder in args.folders:
        path = folder / report.JSON_NAME
        try:
            old = json.loads(path.read_text())
            new = report.rescored(old)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PaceError(f"{path}: not a pace-gguf evaluation result ({exc})") from None
        for written in report.write(new, folder):
            progress_line(f"wrote {written}")
    return 0


def _evaluate(args: argparse.Namespace, kind: str, make_cases, settings: dict) -> int:
    """Checks the inputs and the configurations, runs, writes the report even when interrupted."""
    from .. import machine  # noqa: PLC0415

    configs = [parse_config(spec) for spec in (args.config or DEFAULT_CONFIGS)]
    if len({c.name for c in configs}) != len(configs):
        raise PaceError("the same --config is given twice")
    args.model = model_name(args)
    out_dir = args.out or Path("pace-eval") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    llm = load_llama(args, pace={"enabled": False})  # each configuration sets its own
    cases = make_cases(llm)
    harness.check_configs(llm, configs)
    meta = {"title": f"{'Needle in a haystack' if kind == 'niah' else 'Long-document QA'}: "
                     f"{Path(llm.model_path).name}",
            "command": "pace-gguf " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if args.command_line is None
            else args.command_line,
            "machine": machine.describe(), "model": _model_info(llm),
            "settings": {**settings, "split": args.split, "max_tokens": args.max_tokens}}
    progress_line(f"{len(cases)} cases x {len(configs)} configurations on {meta['model']['name']}; "
                  f"writing to {out_dir}")
    outcomes: list[harness.Outcome] = []
    complete = False
    try:
        progress = "none" if args.no_progress else ("bar" if sys.stderr.isatty() else "lines")
        harness.run(llm, cases, configs, args.max_tokens, progress, done=outcomes)
        complete = True
    finally:  # an interrupted run keeps what it finished, marked incomplete
        if outcomes:
            built = report.build(kind, meta, configs, cases, outcomes, complete)
            for path in report.write(built, out_dir):
                progress_line(f"wrote {path}")
            if complete:
                print(report.markdown(built))
    return 0


def _model_info(llm) -> dict:
    return {"name": Path(llm.model_path).name, "path": str(llm.model_path),
            "architecture": llm.metadata.get("general.architecture", "?"), "n_layer": harness.n_layer(llm),
            "n_ctx": llm.n_ctx(), "n_ctx_train": int(llm.metadata.get(
                f"{llm.metadata.get('general.architecture')}.context_length", 0))}


def _add_common(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    p.add_argument("--config", action="append", metavar="SPEC",
                   help="a configuration to compare, repeatable: off, on (AMB on default layers), "
                        "layers=12,26, layers=12,26,mode=paper, on,theta_high=0.7, off,strategy=stream ... "
                        "(default: off and on; the first is the baseline)")
    p.add_argument("--split", choices=eval_cases.SPLITS, default="all",
                   help="dev or test: alternate haystack files / documents, to tune on one and confirm on the other")
    p.add_argument("--max-tokens", type=positive_int, default=32, help="answer length in tokens (default 32)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default pace-eval/<kind>-<time>)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (on a terminal) or progress lines (otherwise) on stderr")
    p.add_argument("--command-line", default=None, help=argparse.SUPPRESS)  # what reports quote (publish script)
    add_model_args(p, n_ctx=0)


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate AMB settings and strategies: needle in a haystack, long-document QA")
    kinds = p.add_subparsers(dest="eval_kind", required=True)

    n = kinds.add_parser("niah", help="needle in a haystack over a grid of lengths and depths",
                         description="Hide a fact (the needle) at several depths in filler text of several lengths, "
                         "ask for it, score by normalised contains-match; every configuration on every case.")
    n.add_argument("--haystack", type=Path, required=True, help="filler text: a .txt file or a folder of them")
    n.add_argument("--needles", type=Path, default=None,
                   help="JSONL of {\"needle\", \"question\" (text or list of phrasings), \"answer\"} (default: built-in)")
    n.add_argument("--lengths", type=eval_cases.parse_lengths, default=eval_cases.parse_lengths("1k,2k,4k,7k"),
                   help="document lengths in tokens, k = 1024 (default 1k,2k,4k,7k)")
    n.add_argument("--depths", type=eval_cases.parse_depths, default=eval_cases.parse_depths("0,25,50,75,100"),
                   help="needle depths in percent (default 0,25,50,75,100)")
    n.add_argument("--repeats", type=positive_int, default=1, help="cases per grid cell, needles in turn (default 1)")
    _add_common(n)
    n.set_defaults(func=cmd_niah)

    d = kinds.add_parser("longdoc", help="long-document QA on L-Eval JSONL (exact match, F1, multiple choice)",
                         description="Questions about long documents (L-Eval format: input, instructions, outputs); "
                         "multiple-choice accuracy when the answers are option letters, else contains-match, exact "
                         "match and token F1.")
    d.add_argument("--data", type=Path, required=True, help="L-Eval JSONL file")
    d.add_argument("--per-document", type=positive_int, default=None, help="at most N questions per document")
    d.add_argument("--limit", type=positive_int, default=None, help="at most N questions in all")
    _add_common(d)
    d.set_defaults(func=cmd_longdoc)

    r = kinds.add_parser("rescore", help="score the stored answers of finished evaluations again (after a scoring "
                         "change) and rewrite their reports; no model runs")
    r.add_argument("folders", nargs="+", type=Path, metavar="DIR", help="output folders of eval niah / eval longdoc")
    r.set_defaults(func=cmd_rescore)
