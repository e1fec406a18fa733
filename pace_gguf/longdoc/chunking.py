"""Splitting text into pieces of at most N tokens, on the most natural boundary that works.

Paragraphs (blank lines) first, then lines, then sentences, then words; a "word" longer than a
whole chunk (a minified line, a base64 blob) is cut by characters. Consecutive pieces share up to
`overlap` tokens of whole units, so a fact cut by a boundary is whole in at least one of them.
"""

from __future__ import annotations

import re
from typing import Callable

TokenCounter = Callable[[str], int]

# Each level splits a unit that is still too long, keeping the separator with the text before it.
_SPLITTERS = (
    re.compile(r"(?<=\n)\s*\n"),          # blank line: paragraphs
    re.compile(r"(?<=\n)"),               # line
    re.compile(r"(?<=[.!?;:])\s+"),       # sentence
    re.compile(r"(?<=\s)"),               # word
)
# Joining two units can merge their edge tokens; keep a margin so a packed chunk stays within N.
_MARGIN = 0.97


def split_text(text: str, max_tokens: int, count: TokenCounter, overlap: int = 0) -> list[str]:
    """Pieces of `text`, each at most `max_tokens` tokens by `count`, in order, covering all of it."""
    if max_tokens < 8:
        raise ValueError(f"a chunk must hold at least 8 tokens, got {max_tokens}")
    budget = max(1, int(max_tokens * _MARGIN))
    units = [(u, count(u)) for u in _units(text, budget, count, 0)]
    return _pack(units, budget, min(overlap, budget // 2))


def _units(text: str, budget: int, count: TokenCounter, level: int) -> list[str]:
    if count(text) <= budget:
        return [text]
    if level == len(_SPLITTERS):
        return _cut_by_characters(text, budget, count)
    parts = [p for p in _SPLITTERS[level].split(text) if p]
    if len(parts) == 1:
        return _units(text, budget, count, level + 1)
    return [unit for part in parts for unit in _units(part, budget, count, level + 1)]


def _cut_by_characters(text: str, budget: int, count: TokenCounter) -> list[str]:
    """The longest prefixes that fit, found by bisection (token counts grow with the prefix)."""
    out = []
    while text:
        lo, hi = 1, len(text)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count(text[:mid]) <= budget:
                lo = mid
            else:
                hi = mid - 1
        out.append(text[:lo])
        text = text[lo:]
    return out


def _pack(units: list[tuple[str, int]], budget: int, overlap: int) -> list[str]:
    chunks: list[str] = []
    current: list[tuple[str, int]] = []
    size = 0
    for unit in units:
        if current and size + unit[1] > budget:
            chunks.append("".join(u for u, _ in current))
            current = _tail(current, overlap, budget - unit[1])
            size = sum(n for _, n in current)
        current.append(unit)
        size += unit[1]
    if current:
        chunks.append("".join(u for u, _ in current))
    return [c for c in chunks if c.strip()]


def _tail(units: list[tuple[str, int]], overlap: int, room: int) -> list[tuple[str, int]]:
    """The last units of a chunk, at most `overlap` tokens (and what fits beside the next unit)."""
    limit = min(overlap, room)
    tail: list[tuple[str, int]] = []
    size = 0
    for unit in reversed(units):
        if size + unit[1] > limit:
            break
        tail.insert(0, unit)
        size += unit[1]
    return tail
