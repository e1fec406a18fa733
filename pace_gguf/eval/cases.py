"""The inputs of an evaluation: a needle-in-a-haystack grid built from any text folder, and the
questions of an L-Eval JSONL file. Every case is a document, a question and its reference answers.

Splits make a held-out evaluation possible: "dev" and "test" take alternate haystack files (or
halves of one file) and alternate L-Eval documents, so settings tuned on one are confirmed on
the other.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..documents import read_path
from ..errors import DocumentError, PaceError
from . import scoring

SPLITS = ("all", "dev", "test")
MULTIPLE_CHOICE_HINT = "Answer with the letter of the correct option."


@dataclass(frozen=True)
class Case:
    id: str
    document: str
    question: str
    answers: tuple[str, ...]
    where: dict = field(default_factory=dict)  # its place in the grid: length/depth/needle, or document/question


# --- needle in a haystack ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Needle:
    text: str                      # the sentence hidden in the haystack
    questions: tuple[str, ...]     # phrasings of the question, used in turn
    answers: tuple[str, ...]


# Facts no model knows beforehand, so an answer can only come from the document.
DEFAULT_NEEDLES = (
    Needle("The secret ingredient in Grandma Rosa's lentil soup is smoked paprika.",
           ("What is the secret ingredient in Grandma Rosa's lentil soup?",
            "Which ingredient does Grandma Rosa keep secret in her lentil soup?"), ("smoked paprika",)),
    Needle("The access code for the old observatory on Marrow Hill is 7291.",
           ("What is the access code for the old observatory on Marrow Hill?",
            "Which code opens the old observatory on Marrow Hill?"), ("7291",)),
    Needle("Captain Ilse Moreau named her sailboat the Silver Heron.",
           ("What did Captain Ilse Moreau name her sailboat?", "What is the name of Captain Ilse Moreau's sailboat?"),
           ("Silver Heron",)),
    Needle("The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.",
           ("What is the best thing to do in San Francisco?",
            "According to the text, what should one do in San Francisco?"), ("Dolores Park",)),
)


def parse_lengths(text: str) -> tuple[int, ...]:
    """"1k,2k,4k,7k" or "1024,3000" -> token counts (k = 1024)."""
    lengths = []
    for part in filter(None, (p.strip().lower() for p in text.split(","))):
        m = re.fullmatch(r"(\d+)(k?)", part)
        if not m or int(m.group(1)) == 0:
            raise PaceError(f"lengths: {part!r} is not a token count such as 2048 or 2k")
        lengths.append(int(m.group(1)) * (1024 if m.group(2) else 1))
    if not lengths:
        raise PaceError("lengths: give at least one length, e.g. 1k,2k,4k")
    return tuple(sorted(set(lengths)))


def parse_depths(text: str) -> tuple[float, ...]:
    """"0,25,50,75,100" -> depths in percent of the document before the needle."""
    try:
        depths = tuple(sorted({float(p) for p in text.split(",") if p.strip()}))
    except ValueError:
        raise PaceError(f"depths: expected percentages such as 0,50,100, got {text!r}") from None
    if not depths or depths[0] < 0 or depths[-1] > 100:
        raise PaceError(f"depths: expected percentages in 0..100, got {text!r}")
    return depths


def load_needles(path: Path) -> tuple[Needle, ...]:
    """JSONL, one needle per line: {"needle": ..., "question": str or [phrasings], "answer": str or [answers]}."""
    needles = []
    for number, row in _jsonl_rows(path):
        try:
            questions, answers = _strings(row["question"]), _strings(row["answer"])
            if not isinstance(row["needle"], str) or not row["needle"].strip() or not questions or not answers:
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise PaceError(f"{path}:{number}: expected {{\"needle\": text, \"question\": text or list, "
                            f"\"answer\": text or list}}") from None
        needles.append(Needle(row["needle"].strip(), questions, answers))
    if not needles:
        raise PaceError(f"{path}: no needles in it")
    return tuple(needles)


def load_haystack(path: Path, split: str = "all") -> str:
    """The filler text: a file, or the .txt files of a folder in name order. Splits take alternate
    files (a single file: its first or second half of paragraphs)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".txt" and p.is_file())
        if not files:
            raise DocumentError(f"{path}: no .txt files in this folder")
        if split != "all":
            files = files[SPLITS.index(split) - 1::2] or files
        return "\n\n".join(read_path(f).text.strip() for f in files)
    text = read_path(path).text
    if split == "all":
        return text
    paragraphs = text.split("\n\n")
    half = len(paragraphs) // 2
    return "\n\n".join(paragraphs[:half] if split == "dev" else paragraphs[half:])


def niah_cases(llm, haystack: str, needles: tuple[Needle, ...], lengths: tuple[int, ...],
               depths: tuple[float, ...], repeats: int = 1) -> list[Case]:
    """A case per (length, depth, repeat): the haystack's first tokens, `length` in all with the
    needle, the needle placed at a sentence end `depth` percent into the text. Needles and their
    phrasings are used in turn over the grid, so each appears at several lengths and depths."""
    need = max(lengths)
    tokens = llm.tokenize(haystack[: need * 12].encode("utf-8"), add_bos=False, special=False)
    if len(tokens) < need:
        raise PaceError(f"the haystack has {len(tokens)} tokens, fewer than the longest length asked for ({need}); "
                        "give a larger haystack or shorter lengths")
    cases = []
    for length in lengths:
        for depth in depths:
            for repeat in range(repeats):
                turn = len(cases)
                needle = needles[turn % len(needles)]
                question = needle.questions[(turn // len(needles)) % len(needle.questions)]
                body_tokens = length - len(llm.tokenize(f" {needle.text} ".encode(), add_bos=False, special=False))
                body = llm.detokenize(tokens[:body_tokens]).decode("utf-8", errors="ignore")
                cases.append(Case(f"L{length}-D{depth:g}-R{repeat}", _insert(body, needle.text, depth), question,
                                  needle.answers, {"length": length, "depth": depth, "needle": needles.index(needle),
                                                   "repeat": repeat}))
    return cases


def _insert(body: str, needle: str, depth: float) -> str:
    """The needle after the sentence that ends nearest before `depth` percent of the body."""
    cut = round(len(body) * depth / 100)
    if 0 < cut < len(body):
        ends = [m.end() for m in re.finditer(r"[.!?][\"')]*\s+", body[:cut])]
        cut = ends[-1] if ends else 0
    before, after = body[:cut].rstrip(), body[cut:].lstrip()
    return " ".join(part for part in (before, needle, after) if part)


# --- L-Eval ------------------------------------------------------------------------------------------------


def leval_cases(path: Path, split: str = "all", per_document: int | None = None,
                limit: int | None = None) -> list[Case]:
    """The questions of an L-Eval JSONL file (rows with `input`, `instructions`, `outputs`): split
    by document, at most `per_document` questions from each, at most `limit` in all."""
    cases = []
    for number, row in _jsonl_rows(path):
        index = number - 1
        document, questions, answers = _leval_row(path, number, row)
        if split != "all" and index % 2 != SPLITS.index(split) - 1:
            continue
        for q, (question, references) in enumerate(list(zip(questions, answers))[:per_document]):
            if scoring.is_multiple_choice(list(references)):
                question = f"{question.rstrip()}\n{MULTIPLE_CHOICE_HINT}"
            cases.append(Case(f"doc{index}-q{q}", document, question.strip(), references,
                              {"document": index, "question": q}))
    if not cases:
        raise PaceError(f"{path}: no questions in the {split} split")
    return cases[:limit]


def _leval_row(path: Path, number: int, row) -> tuple[str, list, list]:
    try:
        document, questions, answers = row["input"], row["instructions"], row["outputs"]
        if not (isinstance(document, str) and document.strip() and isinstance(questions, list)
                and isinstance(answers, list) and len(questions) == len(answers)
                and all(isinstance(q, str) for q in questions)):
            raise TypeError
        answers = [_strings(a) for a in answers]
    except (KeyError, TypeError):
        raise PaceError(f"{path}:{number}: not an L-Eval row (expected \"input\": text, and \"instructions\" and "
                        "\"outputs\": lists of texts of the same length)") from None
    return document, questions, answers


# --- shared --------------------------------------------------------------------------------------------------


def _jsonl_rows(path: Path):
    """(line number, object) for each non-blank line; one clear error for a bad line."""
    text = read_path(path).text
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except ValueError as exc:
                raise PaceError(f"{path}:{number}: not JSON ({exc.msg})") from None


def _strings(value) -> tuple[str, ...]:
    values = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(v, str) and v.strip() for v in values):
        raise TypeError
    return tuple(v.strip() for v in values)
