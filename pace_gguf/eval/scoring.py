"""Scores of an answer against its reference answers: normalised contains-match (needle in a
haystack), exact match and token F1 (SQuAD's normalisation), and multiple-choice accuracy when the
references are option letters ("(B) ...")."""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation + "‘’“”–—"})
# An option letter (A-H) given as "(B)", "B)", "B." or "B:", alone on a line, or after "answer (is)":
# the reference answers' form and the usual forms of an answer. A-H, not A-Z: "I." is a word. The
# first one counts: a base model often goes on with more "Answer: X" lines after its own.
_OPTION_MARK = re.compile(r"\(([A-H])\)|(?<![A-Za-z])([A-H])[).:](?!\w)|^[ \t]*([A-H])[ \t]*$"
                          r"|[Aa]nswer(?: is)?:?\s+([A-H])\b", re.M)
_OPTION_LIST = re.compile(r"\(([A-H])\)\s*(.*?)(?=\s*\([A-H]\)|$)", re.S)


def normalize(text: str) -> str:
    """Lower case, no punctuation or articles, single spaces (SQuAD's answer normalisation), NFKC."""
    text = unicodedata.normalize("NFKC", text).lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def contains_match(prediction: str, answers: list[str]) -> bool:
    """Some reference answer appears in the prediction as whole words, after normalisation."""
    said = f" {normalize(prediction)} "
    return any(f" {normalize(a)} " in said for a in answers if normalize(a))


def exact_match(prediction: str, answers: list[str]) -> bool:
    return any(normalize(prediction) == normalize(a) for a in answers)


def token_f1(prediction: str, answers: list[str]) -> float:
    """The best token-overlap F1 over the reference answers."""
    said = normalize(prediction).split()
    best = 0.0
    for answer in answers:
        wanted = normalize(answer).split()
        common = sum((Counter(said) & Counter(wanted)).values())
        if common:
            precision, recall = common / len(said), common / len(wanted)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def option_letter(text: str) -> str | None:
    """The first option letter marked in `text` ("(B) ...", "B.", "Answer: C"), or None."""
    for m in _OPTION_MARK.finditer(text.strip()):
        return next(g for g in m.groups() if g)
    return None


def options_in(question: str) -> dict[str, str]:
    """The options listed in a multiple-choice question: {"A": "text of A", ...}."""
    return {letter: text.strip() for letter, text in _OPTION_LIST.findall(question)}


def chosen_option(prediction: str, question: str) -> str | None:
    """The option a prediction chose: its letter when it gives one, else the option whose text it
    repeats best (a small model often answers with the option's words and no letter)."""
    letter = option_letter(prediction)
    if letter:
        return letter
    options = options_in(question)
    scored = [(token_f1(prediction, [text]), letter) for letter, text in options.items()]
    best = max(scored, default=(0.0, None))
    return best[1] if best[0] > 0 else None


def is_multiple_choice(answers: list[str]) -> bool:
    return bool(answers) and all(a.lstrip().startswith("(") and option_letter(a) for a in answers)


def score(prediction: str, answers: list[str], question: str = "") -> dict:
    """Every score of one answer. `correct` is the headline: the chosen option for multiple choice,
    otherwise contains-match."""
    if is_multiple_choice(answers):
        chosen = chosen_option(prediction, question)
        return {"kind": "choice", "chosen": chosen, "correct": chosen in {option_letter(a) for a in answers}}
    return {"kind": "text", "correct": contains_match(prediction, answers),
            "exact": exact_match(prediction, answers), "f1": token_f1(prediction, answers)}
