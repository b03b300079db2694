"""Mentions of a vocabulary's categories in a text, and answers marked against a ground truth.

``find_mentions`` finds every surface form of a ``Vocabulary`` on word boundaries. What a word is
depends on who reads: the app reads prose (``PROSE``: any case, a hyphenated compound is one word),
the built-in scenes read their tokenizer's words (``TOKENS``: lower-cased runs of ASCII letters and
digits). ``mark_answer`` splits an answer into plain and highlighted segments: a mentioned category
present in the truth is ``correct``, one absent is ``hallucinated``; when no truth is known, the
full model's answer can stand in, and mentions it lacks are marked ``not in full answer``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .vocabulary import Vocabulary

__all__ = [
    "CORRECT",
    "HALLUCINATED",
    "MAX_TRUTH_CHARS",
    "NOT_IN_REFERENCE",
    "PROSE",
    "TOKENS",
    "Mention",
    "WordRule",
    "find_mentions",
    "mark_answer",
    "parse_truth",
]

CORRECT = "correct"
HALLUCINATED = "hallucinated"
NOT_IN_REFERENCE = "not in full answer"
MAX_TRUTH_CHARS = 1000  # a typed ground truth longer than this is refused, not echoed


@dataclass(frozen=True)
class WordRule:
    """Where a mention may start and end.

    Attributes:
        word_chars: the body of a regex character class: a mention never has one of these
            characters right before or right after it.
        ignore_case: match the forms in any case on the text as given (True), or lower-case the
            text and match the forms exactly (False; offsets then index ``text.lower()``, which
            equals ``text`` for ASCII).
    """

    word_chars: str
    ignore_case: bool


PROSE = WordRule(word_chars=r"\w-", ignore_case=True)
"""A whole word or phrase in any case, not part of a longer word or of a hyphenated compound."""
TOKENS = WordRule(word_chars="a-z0-9", ignore_case=False)
"""A whole run of lower-case ASCII letters and digits (``re.findall(r"[a-z0-9]+", text.lower())``,
the words of the built-in scenes): hyphens, underscores and any other character separate words."""


@dataclass(frozen=True)
class Mention:
    """One mention of a category in a text: ``text[start:end]``."""

    start: int
    end: int
    surface: str
    category: str


def find_mentions(text: str, vocabulary: Vocabulary, *, rule: WordRule = PROSE) -> list[Mention]:
    """Every mention in ``text``, longest form first, on ``rule``'s word boundaries, in text order.

    A space inside a form matches any run of whitespace.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}")
    forms = sorted(vocabulary.forms, key=len, reverse=True)
    if not forms:
        return []
    edge = f"[{rule.word_chars}]"
    pattern = re.compile(
        f"(?<!{edge})(" + "|".join(re.escape(f).replace(r"\ ", r"\s+") for f in forms) + f")(?!{edge})",
        re.IGNORECASE if rule.ignore_case else 0,
    )
    searched = text if rule.ignore_case else text.lower()
    out = []
    for m in pattern.finditer(searched):
        words = m.group(0).split()
        # Case-insensitive matching also accepts Unicode case variants ("ſtar", the Kelvin sign K)
        # whose lower case is not the form; their case fold is.
        category = vocabulary.forms.get(" ".join(words).lower()) or vocabulary.forms.get(" ".join(words).casefold())
        if category is not None:
            out.append(Mention(m.start(), m.end(), m.group(0), category))
    return out


def parse_truth(text: str, vocabulary: Vocabulary) -> set[str]:
    """Categories from a user's comma-separated object list (empty when it names none).

    Unknown names are a ``ValueError`` quoting at most a few of them, each cut short.
    """
    if not isinstance(text, str):
        raise ValueError("ground truth must be a comma-separated string of object names")
    if len(text) > MAX_TRUTH_CHARS:
        raise ValueError(f"the ground truth has {len(text)} characters; the limit is {MAX_TRUTH_CHARS}")
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if vocabulary.canonical(n) is None]
    if unknown:
        shown = ", ".join(repr(n if len(n) <= 30 else n[:29] + "…") for n in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ValueError(
            f"unknown object name(s) {shown}{more} for the {vocabulary.name} vocabulary; "
            f"known categories include {', '.join(vocabulary.categories[:12])}, ..."
        )
    return {vocabulary.canonical(n) for n in names}


def mark_answer(
    text: str,
    vocabulary: Vocabulary,
    *,
    truth: Iterable[str] | None = None,
    reference: str | None = None,
    wrong_attributes: Mapping[int, str] | None = None,
) -> dict:
    """Segments of ``text`` with labels, and the truth categories the answer missed (``PROSE`` words).

    Args:
        truth: the ground-truth categories, when known.
        reference: otherwise, the full model's answer: its mentions act as the truth and the label
            for the others is ``"not in full answer"`` instead of ``"hallucinated"``.
        wrong_attributes: with a truth, mentions (by start offset in ``text``) of a category that is
            in the image but with a colour or count it does not have, and why: they are marked
            ``"hallucinated"`` too and listed in ``wrong_attributes`` ("two red circles: 1 in the
            image"), while ``hallucinated`` keeps listing absent categories only.
    Returns:
        ``{"segments": [(text, label | None), ...], "mentioned": [...], "hallucinated": [...],
        "not_in_full_answer": [...], "missed": [...], "basis": "ground truth" | "full answer" |
        "none"}``; concatenating the segments' texts gives back ``text``. ``hallucinated`` is
        filled only against a ground truth; against the full answer the mentions it lacks are in
        ``not_in_full_answer`` (they may well be in the image).
    """
    mentions = find_mentions(text, vocabulary)
    if truth is not None:
        known, wrong, basis = set(truth), HALLUCINATED, "ground truth"
    elif reference is not None:
        known, wrong, basis = (
            {m.category for m in find_mentions(reference, vocabulary)},
            NOT_IN_REFERENCE,
            "full answer",
        )
    else:
        known, wrong, basis = None, None, "none"
    attribute_errors = wrong_attributes if truth is not None and wrong_attributes else {}
    segments, pos, misattributed = [], 0, []
    for m in mentions:
        if m.start > pos:
            segments.append((text[pos : m.start], None))
        label = None if known is None else (CORRECT if m.category in known else wrong)
        if label == CORRECT and m.start in attribute_errors:
            label = HALLUCINATED
            misattributed.append(f"{text[m.start : m.end]}: {attribute_errors[m.start]}")
        segments.append((text[m.start : m.end], label))
        pos = m.end
    if pos < len(text):
        segments.append((text[pos:], None))
    mentioned = sorted({m.category for m in mentions})
    absent = sorted(c for c in mentioned if known is not None and c not in known)
    return {
        "segments": segments,
        "mentioned": mentioned,
        "hallucinated": absent if wrong == HALLUCINATED else [],
        "not_in_full_answer": absent if wrong == NOT_IN_REFERENCE else [],
        "wrong_attributes": misattributed,
        "missed": sorted(known - set(mentioned)) if known is not None else [],
        "basis": basis,
    }
