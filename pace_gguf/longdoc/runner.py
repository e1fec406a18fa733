"""One model call at a time, on the caller's `pace_gguf.Llama`: prefill in batches with progress and
timings, window eviction for `stream`, generation with streaming.

Each independent call starts from an empty context and empty AMB banks; `stream` instead keeps one
context for the whole document and evicts old positions while keeping the banks.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator

from .. import _llama_cpp_compat as compat
from .prompts import Prompt
from .result import ChunkResult, Progress, ReadResult

ProgressCallback = Callable[[Progress], None]


class Runner:
    def __init__(self, llm, result: ReadResult, sampling: dict, progress: ProgressCallback | None):
        self.llm = llm
        self.result = result
        self.sampling = sampling
        self.progress = progress

    # -- prefill ------------------------------------------------------------------------------------

    def start(self) -> None:
        """An empty context: no cached tokens and empty banks (a new, unrelated prompt)."""
        self.llm.reset()
        self.llm.reset_memory()

    def feed(self, tokens: list[int], phase: str, total: int | None = None, done: int = 0) -> None:
        """Evaluate tokens after what the context holds, batch by batch, reporting progress."""
        total = total if total is not None else len(tokens)
        step = self.llm.n_batch
        for start in range(0, len(tokens), step):
            batch = tokens[start:start + step]
            t0 = time.perf_counter()
            self.llm.eval(batch)
            self.result.prefill.add(len(batch), time.perf_counter() - t0)
            self.result.tokens_read += len(batch)
            if self.progress:
                self.progress(Progress(phase, done + start + len(batch), total, self.result.prefill.tokens_per_second))

    # -- generation -----------------------------------------------------------------------------------

    def generate(self, max_tokens: int, stop: tuple[str, ...]) -> Iterator[str]:
        """Sample after what the context holds (nothing is re-evaluated), yielding text pieces."""
        n_prompt = self.llm.n_tokens
        t0 = time.perf_counter()
        chunks = self.llm.create_completion(
            prompt=compat.held_tokens(self.llm), max_tokens=max_tokens, stop=list(stop), stream=True,
            **self.sampling)
        finish = ""
        for chunk in chunks:
            choice = chunk["choices"][0]
            finish = choice.get("finish_reason") or finish
            if choice["text"]:
                yield choice["text"]
        # llama-cpp-python evaluates each sampled token before sampling the next, so the context
        # holds all answer tokens but the last one sampled: an end-of-turn token (not part of the
        # answer) or, when max_tokens cut the answer, its last token, counted here.
        generated = self.llm.n_tokens - n_prompt + (1 if finish == "length" else 0)
        self.result.decode.add(generated, time.perf_counter() - t0)
        self.result.tokens_generated += generated
        self.result.finish_reason = finish

    def complete(self, prompt: Prompt, document: list[int], max_tokens: int, phase: str,
                 stage: str | None = None, index: int = 0) -> Iterator[str]:
        """One independent call: fresh context, the whole prompt, then the answer (streamed)."""
        tokens = prompt.prefix + document + prompt.suffix
        self.start()
        self.feed(tokens, phase)
        pieces = []
        for piece in self.generate(max_tokens, prompt.stop):
            pieces.append(piece)
            yield piece
        if stage is not None:
            self.result.chunks.append(ChunkResult(stage, index, len(tokens), "".join(pieces).strip()))

    def complete_text(self, prompt: Prompt, document: list[int], max_tokens: int, phase: str,
                      stage: str, index: int) -> str:
        return "".join(self.complete(prompt, document, max_tokens, phase, stage, index)).strip()

    # -- stream ---------------------------------------------------------------------------------------

    def evict(self, keep: int, count: int) -> None:
        """Drop `count` positions after the first `keep`, keeping the banks (see Llama.evict_window)."""
        self.llm.evict_window(keep, keep + count)
        self.result.evicted_tokens += count
        self.result.evictions += 1
