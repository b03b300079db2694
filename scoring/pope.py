"""Yes/no questions (POPE's object existence): reading an answer, accuracy and POPE's summary.

POPE reads only an answer's first word. ``yes_no`` and ``pope_scores`` follow the analysis CLI:
a first word of letters and digits, anything but ``yes``/``no`` read as ``"other"``, gold answers
stripped and lower-cased (``gold_label``). ``yes_no_accuracy`` follows the built-in scenes'
evaluation: a first word of letters only, compared with ``answers.normalize_answer``.
"""

from __future__ import annotations

from collections.abc import Sequence

from .answers import exact_match, first_word

__all__ = ["YES_NO", "gold_label", "pope_scores", "yes_no", "yes_no_accuracy"]

YES_NO = ("yes", "no")


def yes_no(answer: str) -> str:
    """``"yes"`` or ``"no"`` when the answer's first word is one of them, else ``"other"``."""
    word = first_word(answer)
    return word if word in YES_NO else "other"


def gold_label(gold: str) -> str:
    """A gold yes/no answer as compared with ``yes_no``: stripped, lower case."""
    return gold.strip().lower()


def yes_no_accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Accuracy of yes/no answers, reading only the first word (letters only) of each prediction."""
    return exact_match([first_word(p, digits=False) for p in predictions], answers)


def pope_scores(predictions: Sequence[str], golds: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (``yes`` positive) and yes-ratio of ``yes_no`` readings.

    Args:
        predictions: ``yes_no`` readings (``"yes"``, ``"no"`` or ``"other"``), at least one.
        golds: the gold answers, read with ``gold_label``.
    """
    if len(predictions) != len(golds) or not golds:
        raise ValueError(f"need as many predictions as gold answers, at least one: {len(predictions)}, {len(golds)}")
    gold = [gold_label(g) for g in golds]
    pred = list(predictions)
    tp = sum(p == "yes" and g == "yes" for p, g in zip(pred, gold))
    fp = sum(p == "yes" and g == "no" for p, g in zip(pred, gold))
    fn = sum(p != "yes" and g == "yes" for p, g in zip(pred, gold))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": sum(p == g for p, g in zip(pred, gold)) / len(pred),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": sum(p == "yes" for p in pred) / len(pred),
    }
