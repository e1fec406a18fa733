"""Long documents: `ask` a question about, or `summarize`, inputs of any length with a `pace_gguf.Llama`.

    result = llm.ask(Path("report.pdf"), "What was the budget?")           # a ReadResult
    for piece in llm.summarize(Path("notes.md"), stream=True): print(piece, end="")

The strategies (direct, map-reduce, refine, stream, error; "auto" picks direct when the input fits
and map-reduce when it does not) are described in `strategies`; the result says which one ran.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

from ..documents import load_sources
from ..errors import PaceError
from .prompts import LENGTHS, STYLES, PromptBuilder
from .result import ChunkResult, PhaseTiming, Progress, ReadResult
from .runner import Runner
from .strategies import STRATEGIES, make_task, run

__all__ = ["LENGTHS", "STRATEGIES", "STYLES", "ChunkResult", "PhaseTiming", "Progress", "ReadResult", "ReadStream",
           "read"]


class ReadStream:
    """Iterates over the final text's pieces as they are generated; `.result` once it is exhausted."""

    def __init__(self, pieces: Iterator[str], result: ReadResult):
        self._pieces = pieces
        self._result = result
        self._done = False

    def __iter__(self):
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration:
            self._done = True
            raise

    @property
    def result(self) -> ReadResult:
        if not self._done:
            raise PaceError("the result is complete only after the stream has been read to its end")
        return self._result


def read(llm, task_name: str, source, question: str | None = None, *, strategy: str = "auto",
         length: str | int = "medium", style: str = "paragraph", max_tokens: int | None = None,
         chunk_tokens: int | None = None, overlap: int = 64, system: str | None = None, stream: bool = False,
         on_text: Callable[[str], None] | None = None, progress: Callable[[Progress], None] | None = None,
         **sampling) -> ReadResult | ReadStream:
    """The engine behind `Llama.ask` and `Llama.summarize` (see there)."""
    if strategy not in STRATEGIES:
        raise PaceError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    for name, value, least in (("max_tokens", max_tokens, 1), ("chunk_tokens", chunk_tokens, 16)):
        if value is not None and (not isinstance(value, int) or value < least):
            raise PaceError(f"{name} must be an integer of at least {least}, got {value!r}")
    if not isinstance(overlap, int) or overlap < 0:
        raise PaceError(f"overlap must be a non-negative integer, got {overlap!r}")
    task = make_task(task_name, question, length=length, style=style, max_tokens=max_tokens,
                     chunk_tokens=chunk_tokens, overlap=overlap)
    documents = load_sources(source)
    result = ReadResult(task=task_name, text="", strategy=strategy, requested_strategy=strategy, document_tokens=0,
                        n_ctx=llm.n_ctx(), amb_enabled=llm.amb_enabled, documents=[d.name for d in documents])
    sampling.setdefault("temperature", 0.0)
    # Greedy decoding of a long input by a small model easily loops on a sentence it read.
    sampling.setdefault("repeat_penalty", 1.1)
    runner = Runner(llm, result, sampling, progress)
    pieces = _collect(run(strategy, task, _joined(documents), PromptBuilder(llm, system), runner), result, llm, on_text)
    if stream:
        return ReadStream(pieces, result)
    for _ in pieces:
        pass
    return result


def _collect(pieces: Iterator[str], result: ReadResult, llm, on_text) -> Iterator[str]:
    parts = []
    for piece in pieces:
        parts.append(piece)
        if on_text:
            on_text(piece)
        yield piece
    result.text = "".join(parts).strip()
    if llm.amb_enabled:
        result.amb_stats = {layer: dataclasses.asdict(stats) for layer, stats in llm.memory_stats().items()}


def _joined(documents) -> str:
    """One text; several documents each get a heading with their name."""
    if len(documents) == 1:
        return documents[0].text
    return "\n\n".join(f"=== {d.name} ===\n\n{d.text.strip()}" for d in documents)
