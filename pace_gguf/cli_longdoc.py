"""`pace-gguf ask` and `pace-gguf summarize`: long documents from files or stdin.

The answer streams to stdout (with --json: one JSON object at the end instead); the strategy used and
the token counts go to stderr. Inputs are read and checked before the model loads, so a bad file
costs nothing. A progress bar (tqdm) shows long prefills on a terminal, nothing when stderr is piped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli_args import add_amb_args, add_model_args, load_llama, non_negative_float, non_negative_int, positive_int
from .documents import load_sources
from .errors import PaceError
from .longdoc import LENGTHS, STRATEGIES, STYLES


def cmd_ask(args: argparse.Namespace) -> int:
    return _read(args, "ask", question=args.question)


def cmd_summarize(args: argparse.Namespace) -> int:
    return _read(args, "summarize", length=args.length, style=args.style)


def _read(args: argparse.Namespace, task: str, **task_options) -> int:
    if task == "ask" and not args.question.strip():
        raise PaceError("the question (-q) is empty")
    documents = load_sources([Path(f) for f in args.files])  # before the model: a bad file costs nothing
    llm = load_llama(args)
    with _ProgressBar(enabled=not args.json and not args.no_progress and sys.stderr.isatty()) as bar:
        stream = getattr(llm, task)(
            documents, strategy=args.strategy, max_tokens=args.max_tokens, chunk_tokens=args.chunk_tokens,
            overlap=args.overlap, temperature=args.temperature, seed=args.seed, stream=True, progress=bar.update,
            **task_options)
        for piece in stream:
            bar.close()  # the answer starts: the prefill is over
            if not args.json:
                sys.stdout.write(piece)
                sys.stdout.flush()
    result = stream.result
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    print(f"pace-gguf: {result.summary_line()}", file=sys.stderr)
    if args.stats and result.amb_stats:
        for layer, stats in result.amb_stats.items():
            print(f"  layer {layer}: slots {stats['slots_used']}/{stats['bank_size']}, high {stats['high']}, "
                  f"mid {stats['mid']}, low {stats['low']}, invalidations {stats['invalidations']}", file=sys.stderr)
    return 0


class _ProgressBar:
    """tqdm over the prefill of each phase (tokens, tokens/s, ETA); a no-op when disabled."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._bar = None
        self._phase = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, progress) -> None:
        if not self.enabled:
            return
        if progress.phase != self._phase:
            from tqdm import tqdm  # noqa: PLC0415

            self.close()
            self._phase = progress.phase
            self._bar = tqdm(total=progress.total, desc=progress.phase, unit="tok", file=sys.stderr, leave=False)
        self._bar.update(progress.done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._phase = None


def _add_reading_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="text, Markdown, source code or PDF files; - reads stdin")
    p.add_argument("--strategy", choices=STRATEGIES, default="auto",
                   help="how to read an input longer than the context (default auto: direct when it fits, "
                        "else map-reduce)")
    p.add_argument("--max-tokens", type=positive_int, default=None, help="tokens of the answer or summary")
    p.add_argument("--chunk-tokens", type=positive_int, default=None,
                   help="document tokens per piece for map-reduce and refine (default: as many as fit)")
    p.add_argument("--overlap", type=non_negative_int, default=64, help="tokens shared by consecutive pieces (default 64)")
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="sampling temperature (default 0: greedy)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object (text, strategy, tokens, "
                                                       "timings, AMB statistics, each chunk's output)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_args(p, n_ctx=0)
    add_amb_args(p)


def register(sub) -> None:
    p = sub.add_parser("ask", help="answer a question about files of any length")
    p.add_argument("-q", "--question", required=True, help="the question")
    _add_reading_args(p)
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("summarize", help="summarize files of any length")
    p.add_argument("--length", choices=tuple(LENGTHS), default="medium", help="summary length (default medium)")
    p.add_argument("--style", choices=STYLES, default="paragraph",
                   help="paragraph, or bullets (map-reduce: one bullet per part when they fit)")
    _add_reading_args(p)
    p.set_defaults(func=cmd_summarize)
