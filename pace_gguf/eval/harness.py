"""Runs every case under every configuration on one model, and scores each answer.

The configurations of a case run one after another (case-major order), so an evaluation stopped
early still compares them on the same cases. Each answer comes from `Llama.ask` with the case's
strategy, greedy, from an empty context and empty banks.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass

from ..errors import ContextOverflowError
from . import scoring
from .cases import Case
from .configs import EvalConfig


@dataclass
class Outcome:
    """One case answered under one configuration."""

    case: str
    config: str
    prediction: str
    correct: bool | None          # None: the case was skipped under this configuration
    scores: dict
    strategy: str                 # the strategy that ran
    document_tokens: int
    tokens_read: int
    seconds: float
    skipped: str | None = None    # why: e.g. the document does not fit a direct read

    def to_dict(self) -> dict:
        return asdict(self)


def n_layer(llm) -> int:
    arch = llm.metadata["general.architecture"]
    return int(llm.metadata[f"{arch}.block_count"])


def check_configs(llm, configs: list[EvalConfig]) -> None:
    """Apply each configuration once, so a bad setting fails before hours of evaluation."""
    for config in configs:
        llm.configure_pace(config.pace_for(n_layer(llm)))


def run_case(llm, case: Case, config: EvalConfig, max_tokens: int) -> Outcome:
    llm.configure_pace(config.pace_for(n_layer(llm)))
    start = time.perf_counter()
    try:
        result = llm.ask(case.document, case.question, strategy=config.strategy, max_tokens=max_tokens)
    except ContextOverflowError as exc:
        return Outcome(case.id, config.name, "", None, {}, config.strategy, 0, 0, 0.0, skipped=str(exc))
    scores = scoring.score(result.text, list(case.answers), case.question)
    return Outcome(case.id, config.name, result.text, scores["correct"], scores, result.strategy,
                   result.document_tokens, result.tokens_read, time.perf_counter() - start)


def run(llm, cases: list[Case], configs: list[EvalConfig], max_tokens: int, progress: str = "bar",
        done: list[Outcome] | None = None) -> list[Outcome]:
    """All outcomes, appended to `done` as they come (the caller keeps them if this is interrupted).
    progress: "bar" (tqdm, for a terminal), "lines" (a line per run, for a log file) or "none"."""
    outcomes = done if done is not None else []
    check_configs(llm, configs)
    with _Progress(cases, configs, progress) as report:
        for case in cases:
            for config in configs:
                report.starting(case, config)
                outcomes.append(run_case(llm, case, config, max_tokens))
                report.finished(case, outcomes[-1])
    return outcomes


class _Progress:
    """tqdm over the grid, weighted by document size (a 28k-token case takes far longer than a 1k
    one, so counting runs would give a useless ETA), or a line per finished run, or nothing."""

    def __init__(self, cases: list[Case], configs: list[EvalConfig], mode: str):
        self._bar = None
        self._lines = mode == "lines"
        self._runs, self._done, self._correct = len(cases) * len(configs), 0, 0
        if mode == "bar":
            from tqdm import tqdm  # noqa: PLC0415

            self._bar = tqdm(total=sum(len(c.document) for c in cases) * len(configs), file=sys.stderr,
                             bar_format="{l_bar}{bar}| {postfix} [{elapsed}<{remaining}]", leave=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.close()

    def starting(self, case: Case, config: EvalConfig) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(f"run {self._done + 1}/{self._runs}: {case.id} [{config.name}], "
                                      f"{self._correct} correct so far")

    def finished(self, case: Case, outcome: Outcome) -> None:
        self._done += 1
        self._correct += bool(outcome.correct)
        if self._bar is not None:
            self._bar.update(len(case.document))
        if self._lines:
            verdict = "skipped" if outcome.correct is None else ("right" if outcome.correct else "wrong")
            print(f"pace-gguf: run {self._done}/{self._runs} {case.id} [{outcome.config}]: {verdict}, "
                  f"{outcome.tokens_read} tokens read in {outcome.seconds:.1f} s", file=sys.stderr, flush=True)
