"""What `ask` and `summarize` return: the text and an account of how it was produced."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class PhaseTiming:
    """Tokens processed in one phase (prefill or decode) and the seconds it took."""

    tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.seconds += seconds


@dataclass
class ChunkResult:
    """One model call of a chunked strategy: which part of the input it read and what it produced."""

    stage: str          # "map", "reduce" (level n), "refine"
    index: int
    input_tokens: int   # prompt tokens of this call
    text: str


@dataclass
class ReadResult:
    """The answer or summary, with the strategy actually used and what it cost."""

    task: str                    # "ask" or "summarize"
    text: str
    strategy: str                # the one actually used (never "auto")
    requested_strategy: str
    document_tokens: int         # tokens of the input documents (as the model tokenizes them)
    n_ctx: int
    tokens_read: int = 0         # all prompt tokens processed, over every model call
    tokens_generated: int = 0    # all tokens generated, over every model call
    prefill: PhaseTiming = field(default_factory=PhaseTiming)
    decode: PhaseTiming = field(default_factory=PhaseTiming)
    amb_enabled: bool = False
    amb_stats: dict = field(default_factory=dict)   # layer -> LayerStats as a dict, after the last call
    chunks: list[ChunkResult] = field(default_factory=list)
    evicted_tokens: int = 0      # stream: tokens that left the window (the bank kept what they left)
    evictions: int = 0
    documents: list[str] = field(default_factory=list)
    finish_reason: str = ""      # of the final call: "stop" (the model ended) or "length" (max tokens)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["prefill"]["tokens_per_second"] = self.prefill.tokens_per_second
        out["decode"]["tokens_per_second"] = self.decode.tokens_per_second
        return out

    def summary_line(self) -> str:
        """One line for a terminal: strategy, tokens and speeds."""
        parts = [f"strategy {self.strategy}", f"document {self.document_tokens} tokens",
                 f"read {self.tokens_read} ({self.prefill.tokens_per_second:.0f} tok/s)",
                 f"generated {self.tokens_generated} ({self.decode.tokens_per_second:.1f} tok/s)"]
        if self.chunks:
            parts.append(f"{len(self.chunks)} model calls")
        if self.evictions:
            parts.append(f"evicted {self.evicted_tokens} tokens in {self.evictions} steps")
        parts.append("AMB on" if self.amb_enabled else "AMB off")
        return ", ".join(parts)


@dataclass(frozen=True)
class Progress:
    """Handed to a progress callback after each batch of a prefill."""

    phase: str          # e.g. "read", "map 2/5", "reduce", "refine 3/4", "stream"
    done: int           # tokens of this phase processed so far
    total: int          # tokens this phase will process
    tokens_per_second: float
