"""The reading strategies of `ask` and `summarize`, for inputs that fit the context and for inputs that do not.

* direct: the whole input in one prompt.
* map-reduce: token-sized pieces (paragraph/line boundaries, with overlap), one call each, then
  calls that combine the partial results, recursively while they do not fit together.
* refine: the pieces in order, each call seeing the running answer or summary.
* stream: PaceLLM's setting. One context reads the document window by window: the prompt's
  instruction stays at the front (attention sinks), the oldest document positions are evicted as
  new ones come (llama.cpp's context shift), and the AMB banks are kept across the evictions, so
  what left the window still acts through them. With the AMB off it is StreamingLLM-style reading.
* error: refuse an input that does not fit, saying how many tokens it has and what it would need.

Never a silent truncation: every strategy either reads all of the input or raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from ..errors import ContextOverflowError, PaceError
from .chunking import split_text
from .prompts import LENGTHS, STYLES, Prompt, PromptBuilder, summary_instruction
from .runner import Runner

STRATEGIES = ("auto", "direct", "map-reduce", "refine", "stream", "error")
# Below this many document tokens per window or piece, chunked reading is pointless.
MIN_PIECE_TOKENS = 128


@dataclass(frozen=True)
class Task:
    """What to produce, and within how many tokens."""

    name: str                 # "ask" or "summarize"
    question: str | None
    max_tokens: int           # of the final answer or summary
    partial_max_tokens: int   # of each map/refine step
    summary_how: str = ""
    chunk_tokens: int | None = None  # document tokens per piece (None: as many as fit)
    overlap: int = 64
    bullets: bool = False     # summarize: one bullet per part when they fit (no combining call)

    def fields(self, **extra) -> dict:
        return {"question": self.question or "", "summary_how": self.summary_how, **extra}


def make_task(name: str, question: str | None, *, length: str | int, style: str, max_tokens: int | None,
              chunk_tokens: int | None, overlap: int) -> Task:
    if name == "summarize":
        if style not in STYLES:
            raise PaceError(f"style must be one of {STYLES}, got {style!r}")
        if isinstance(length, str) and length not in LENGTHS:
            raise PaceError(f"length must be one of {tuple(LENGTHS)} or a number of tokens, got {length!r}")
        named = length if isinstance(length, str) else "medium"
        budget = max_tokens or (LENGTHS[length][1] if isinstance(length, str) else int(length))
        return Task(name, None, budget, min(budget, 192), summary_instruction(named, style), chunk_tokens, overlap,
                    bullets=style == "bullets")
    if not question or not question.strip():
        raise PaceError("the question is empty")
    budget = max_tokens or 256
    return Task(name, question.strip(), budget, min(budget, 128), "", chunk_tokens, overlap)


def run(strategy: str, task: Task, text: str, builder: PromptBuilder, runner: Runner) -> Iterator[str]:
    """Yield the final text's pieces; fill runner.result along the way (`strategy` is checked by the caller)."""
    document = builder.document_tokens(text)
    result = runner.result
    result.document_tokens = len(document)
    direct = builder.build(task.name, "direct", **task.fields())
    fits = direct.overhead + len(document) + task.max_tokens <= runner.llm.n_ctx()
    if strategy == "auto":
        strategy = "direct" if fits else "map-reduce"
    result.strategy = strategy
    if strategy in ("direct", "error") and not fits:
        raise _overflow(task, direct, document, runner.llm.n_ctx(), strategy)
    if strategy in ("direct", "error"):
        yield from runner.complete(direct, document, task.max_tokens, "read")
    elif strategy == "stream":
        yield from _stream(task, document, builder, runner)
    else:
        pieces = _pieces(task, text, document, builder, runner.llm.n_ctx(), strategy)
        yield from (_map_reduce if strategy == "map-reduce" else _refine)(task, pieces, builder, runner)


def _overflow(task: Task, prompt: Prompt, document: list[int], n_ctx: int, strategy: str) -> ContextOverflowError:
    need = prompt.overhead + len(document) + task.max_tokens
    return ContextOverflowError(
        f"the input has {len(document)} tokens; with the instructions ({prompt.overhead}) and room for the answer "
        f"({task.max_tokens}) it needs a context of {need} tokens, and this one holds {n_ctx}. Use a larger n_ctx "
        f"(--n-ctx) or a strategy for long inputs (map-reduce, refine, stream) instead of {strategy}")


# --- map-reduce and refine -------------------------------------------------------------------------------


def _pieces(task: Task, text: str, document: list[int], builder: PromptBuilder, n_ctx: int, kind: str) -> list[list[int]]:
    step = "map" if kind == "map-reduce" else "refine"
    probe = builder.build(task.name, step, **task.fields(part=999, parts=999, running=""))
    # refine's prompt also carries the running result, up to partial_max_tokens long
    room = n_ctx - probe.overhead - task.partial_max_tokens - (task.partial_max_tokens if step == "refine" else 0)
    if room < MIN_PIECE_TOKENS:
        raise ContextOverflowError(
            f"a context of {n_ctx} tokens leaves {max(room, 0)} tokens per piece for {kind} after the instructions "
            f"and the answer (at least {MIN_PIECE_TOKENS} needed); use a larger n_ctx or a smaller max_tokens")
    size = min(task.chunk_tokens or room, room)
    if len(document) <= size:
        return [document]
    count = lambda s: len(builder.document_tokens(s))  # noqa: E731
    return [builder.document_tokens(p) for p in split_text(text, size, count, overlap=task.overlap)]


def _map_reduce(task: Task, pieces: list[list[int]], builder: PromptBuilder, runner: Runner) -> Iterator[str]:
    partials = []
    for i, piece in enumerate(pieces):
        prompt = builder.build(task.name, "map", **task.fields(part=i + 1, parts=len(pieces)))
        partials.append(runner.complete_text(prompt, piece, task.partial_max_tokens, f"map {i + 1}/{len(pieces)}",
                                             "map", i))
    if task.name == "ask":
        relevant = [p for p in partials if "nothing relevant" not in p.lower()]
        partials = relevant or partials
    bullets = "".join(map(_note, partials))
    if task.bullets and len(builder.document_tokens(bullets)) <= task.max_tokens:
        yield bullets.rstrip()  # one bullet per part already fits the length asked for: nothing to combine
        return
    yield from _reduce(task, partials, builder, runner, level=1)


def _reduce(task: Task, partials: list[str], builder: PromptBuilder, runner: Runner, level: int) -> Iterator[str]:
    n_ctx = runner.llm.n_ctx()
    kind = "reduce"
    prompt = builder.build(task.name, kind, **task.fields())
    notes = [builder.document_tokens(_note(p)) for p in partials]
    if prompt.overhead + sum(map(len, notes)) + task.max_tokens <= n_ctx:
        yield from runner.complete(prompt, [t for n in notes for t in n], task.max_tokens, f"reduce {level}", kind, 0)
        return
    # Too many partial results for one call: combine them in groups first (summaries of summaries).
    room = n_ctx - prompt.overhead - task.partial_max_tokens
    groups, current = [], []
    for note in notes:
        if current and sum(map(len, current)) + len(note) > room:
            groups.append(current)
            current = []
        current.append(note)
    groups.append(current)
    if len(groups) >= len(partials):
        raise ContextOverflowError(f"the partial results do not fit together in a context of {n_ctx} tokens; "
                                   "use a larger n_ctx or a smaller max_tokens")
    merged = [runner.complete_text(prompt, [t for n in g for t in n], task.partial_max_tokens,
                                   f"reduce {level} ({i + 1}/{len(groups)})", kind, i) for i, g in enumerate(groups)]
    yield from _reduce(task, merged, builder, runner, level + 1)


def _note(text: str) -> str:
    return f"- {' '.join(text.split())}\n"


def _refine(task: Task, pieces: list[list[int]], builder: PromptBuilder, runner: Runner) -> Iterator[str]:
    running = ""
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        kind = "refine" if i else "map"
        prompt = builder.build(task.name, kind, **task.fields(part=i + 1, parts=len(pieces), running=running))
        phase = f"refine {i + 1}/{len(pieces)}"
        if last:
            yield from runner.complete(prompt, piece, task.max_tokens, phase, "refine", i)
        else:
            running = runner.complete_text(prompt, piece, task.partial_max_tokens, phase, "refine", i)


# --- stream ------------------------------------------------------------------------------------------------


def _stream(task: Task, document: list[int], builder: PromptBuilder, runner: Runner) -> Iterator[str]:
    """Read the document through one context, evicting the oldest window positions (banks kept)."""
    llm = runner.llm
    prompt = builder.build(task.name, "stream", **task.fields())
    keep = len(prompt.prefix)                                    # the instruction: attention sinks
    limit = llm.n_ctx() - len(prompt.suffix) - task.max_tokens  # what the cache may hold while reading
    window = limit - keep
    if window < MIN_PIECE_TOKENS:
        raise ContextOverflowError(
            f"a context of {llm.n_ctx()} tokens leaves a reading window of {max(window, 0)} tokens after the "
            f"instructions and the answer (at least {MIN_PIECE_TOKENS} needed); use a larger n_ctx")
    # Evict a quarter window at a time (each eviction shifts the whole cache); a batch never needs more.
    batch_size = min(llm.n_batch, window)
    step = max(window // 4, batch_size)
    runner.start()
    runner.feed(prompt.prefix, "stream", total=len(document) + prompt.overhead)
    done = len(prompt.prefix)
    for start in range(0, len(document), batch_size):
        batch = document[start:start + batch_size]
        overflow = llm.n_tokens + len(batch) - limit
        if overflow > 0:
            runner.evict(keep, min(max(overflow, step), llm.n_tokens - keep))
        runner.feed(batch, "stream", total=len(document) + prompt.overhead, done=done)
        done += len(batch)
    runner.feed(prompt.suffix, "stream", total=len(document) + prompt.overhead, done=done)
    yield from runner.generate(task.max_tokens, prompt.stop)
