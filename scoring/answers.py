"""Short answers compared with their gold answer: words, normalising rules and exact match.

Two normalising rules are in use, and each caller keeps its own so that scores stay comparable
over time: ``normalize_answer`` (strip spaces and trailing full stops, lower case; the built-in
scenes' evaluation) keeps inner punctuation, ``normalize_words`` (the words joined by single
spaces; the analysis CLI) drops all punctuation.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence

__all__ = ["exact_match", "first_word", "normalize_answer", "normalize_words", "same_answer", "word_overlap", "words"]

_WORD = re.compile(r"[a-z0-9]+")
_LETTERS = re.compile(r"[a-z]+")


def words(text: str) -> list[str]:
    """The words of ``text``: runs of ASCII letters and digits, lower case."""
    return _WORD.findall(text.lower())


def first_word(text: str, *, digits: bool = True) -> str:
    """The first word, lower case (POPE reads only that): ``"Yes, there is."`` → ``"yes"``; ``""`` if none.

    With ``digits=False`` a word is letters only, so digits are skipped: ``"3 yes"`` → ``"yes"``.
    """
    found = (_WORD if digits else _LETTERS).findall(text.lower())
    return found[0] if found else ""


def normalize_answer(text: str) -> str:
    """Lower-case, strip spaces and trailing full stops: ``" Yes."`` → ``"yes"``."""
    return text.strip().rstrip(".").strip().lower()


def normalize_words(text: str) -> str:
    """The words of ``text`` joined by single spaces: ``"A red, round circle."`` → ``"a red round circle"``."""
    return " ".join(words(text))


def same_answer(prediction: str, answer: str, *, normalize: Callable[[str], str] = normalize_answer) -> bool:
    """Whether ``prediction`` equals ``answer`` once both are normalised by ``normalize``."""
    return normalize(prediction) == normalize(answer)


def exact_match(
    predictions: Sequence[str], answers: Sequence[str], *, normalize: Callable[[str], str] = normalize_answer
) -> float:
    """Fraction of predictions equal to their answer after ``normalize`` (0.0 with no answers)."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions but {len(answers)} answers")
    if not answers:
        return 0.0
    hits = sum(same_answer(p, a, normalize=normalize) for p, a in zip(predictions, answers, strict=True))
    return hits / len(answers)


def word_overlap(prediction: str, reference: str) -> float:
    """Token-level F1 of two answers: their shared ``words`` (as multisets) against both lengths.

    1.0 for the same words in any order, 0.0 when none is shared; two empty answers overlap fully.

    >>> word_overlap("A red circle.", "a red square")
    0.6666666666666666
    """
    a, b = Counter(words(prediction)), Counter(words(reference))
    if not a and not b:
        return 1.0
    shared = sum((a & b).values())
    return 2 * shared / (sum(a.values()) + sum(b.values()))
