"""The analysis CLI's rows scored and summarised: CHAIR and recall for captions, POPE for yes/no questions.

Per-answer scores are plain dicts (one row of the results file); the aggregate functions reduce a
list of such rows. The rules come from the ``scoring`` package, read the analysis CLI's way
(``PROSE`` word boundaries, ``normalize_words``, per-caption recall averaged); object mentions come
from a ``scoring.Vocabulary``, so the same code scores the built-in scenes (shape categories) and
COCO captions (80 categories with synonyms).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from scoring import Vocabulary, chair_rates, gold_label, normalize_words, same_answer, score_caption, yes_no
from scoring import pope_scores as pope_summary

__all__ = ["aggregate", "chair_scores", "pope_scores", "score_answer"]

WRONG_COLOUR_KIND = "attribute"  # scenes.tasks' kind of "Is there a {wrong colour} {shape}?" questions


def score_answer(task: str, answer: str, gold: str | None, truth: Iterable[str] | None, vocab: Vocabulary) -> dict:
    """Scores of one answer.

    Args:
        task: ``"caption"`` (CHAIR against ``truth``), ``"exists"`` / ``"pope"`` (yes/no against
            ``gold``), anything else exact match against ``gold`` after normalisation.
    Returns:
        caption: ``mentioned``, ``hallucinated`` (category lists), ``recall``, ``length`` (words);
        yes/no: ``pred`` (yes, no or other), ``correct``; others: ``correct``.
    """
    if task == "caption":
        if truth is None:
            raise ValueError("captions need the ground-truth objects of their image")
        scored = score_caption(answer, truth, vocab)
        return {
            "mentioned": list(scored.mentioned),
            "hallucinated": list(scored.hallucinated),
            "recall": scored.recall,
            "length": len(answer.split()),
        }
    if gold is None:
        raise ValueError(f"task {task!r} needs a gold answer")
    if task in ("exists", "pope"):
        pred = yes_no(answer)
        return {"pred": pred, "correct": pred == gold_label(gold)}
    return {"correct": same_answer(answer, gold, normalize=normalize_words)}


def chair_scores(rows: Sequence[Mapping[str, Any]]) -> dict[str, float | int | None]:
    """CHAIR_s, CHAIR_i (hallucinated / all mentioned categories), recall and length of captions.

    Also, where the rows have them (``run``): ``length_ratio``, the captions' total length over
    the full model's on the same images; and on built-in scenes the attribute scores: ``attr_i``,
    mentions of present objects with a wrong colour or count over all such mentions, ``attr_s``,
    captions with at least one, and ``any_s``, captions with a hallucinated object or attribute.
    """
    rows = [r for r in rows if r.get("task") == "caption"]
    empty = ("chair_s", "chair_i", "recall", "length", "length_ratio", "attr_i", "attr_s", "any_s")
    if not rows:
        return {"n": 0} | dict.fromkeys(empty)
    chair_i, chair_s = chair_rates([len(r["mentioned"]) for r in rows], [len(r["hallucinated"]) for r in rows])
    recalls = [r["recall"] for r in rows if r.get("recall") is not None]
    full = [r["full_length"] for r in rows if r.get("full_length") is not None]
    scores = {
        "n": len(rows),
        "chair_s": chair_s,
        "chair_i": chair_i,
        "recall": sum(recalls) / len(recalls) if recalls else None,
        "length": sum(r["length"] for r in rows) / len(rows),
        "length_ratio": sum(r["length"] for r in rows) / sum(full) if len(full) == len(rows) and sum(full) else None,
        "attr_i": None,
        "attr_s": None,
        "any_s": None,
    }
    if all(r.get("attribute_errors") is not None for r in rows):
        wrong = [len(r["attribute_errors"]) for r in rows]
        mentions = sum(r["present_mentions"] for r in rows)
        if mentions:  # captions that name no present object have no attribute to get wrong
            scores["attr_i"] = sum(wrong) / mentions
            scores["attr_s"] = sum(w > 0 for w in wrong) / len(rows)
        scores["any_s"] = sum(w > 0 or bool(r["hallucinated"]) for w, r in zip(wrong, rows, strict=True)) / len(rows)
    return scores


def pope_scores(rows: Sequence[Mapping[str, Any]]) -> dict[str, float | int | None]:
    """Accuracy, precision, recall, F1 (``yes`` positive) and yes-ratio of yes/no answers.

    Only POPE's question types count: the built-in scenes' wrong-colour questions (``kind ==
    "attribute"``) are an attribute test, not an object-existence one, and ``aggregate`` scores
    them on their own as the task ``"wrong colour"``.
    """
    rows = [r for r in rows if r.get("task") in ("exists", "pope") and r.get("kind") != WRONG_COLOUR_KIND]
    if not rows:
        return {"n": 0, "accuracy": None, "precision": None, "recall": None, "f1": None, "yes_ratio": None}
    return {"n": len(rows), **pope_summary([r["pred"] for r in rows], [r["gold"] for r in rows])}


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _per_image(rows: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    """One value of a selection number per image: the mean over its rows. A pre-LLM method's rows of
    one image share its value; an in-LLM method's (``kept_per == "question"``) hold one per question."""
    by_item: dict[Any, list[float]] = {}
    for r in rows:
        if r.get(key) is not None:
            by_item.setdefault(r.get("item_id"), []).append(r[key])
    return [sum(values) / len(values) for values in by_item.values()]


def aggregate(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """All the summary numbers of a group of rows (one method at one budget, say); ``agreement`` is
    the share of answers equal to the full model's on the same image and question, ``overlap``
    their mean word overlap with it (``scoring.word_overlap``)."""
    other = [r for r in rows if r.get("task") not in ("caption", "exists", "pope") and "correct" in r]
    wrong_colour = [r for r in rows if r.get("task") == "exists" and r.get("kind") == WRONG_COLOUR_KIND]
    erank = _per_image(rows, "kept_erank")
    retained = _per_image(rows, "retained_attention")
    by_task: dict[str, list[bool]] = {}
    for r in other:
        by_task.setdefault(r["task"], []).append(bool(r["correct"]))
    for r in wrong_colour:
        by_task.setdefault("wrong colour", []).append(bool(r["correct"]))
    return {
        "chair": chair_scores(rows),
        "pope": pope_scores(rows),
        "task_accuracy": {task: sum(hits) / len(hits) for task, hits in sorted(by_task.items())},
        "other_accuracy": sum(r["correct"] for r in other) / len(other) if other else None,
        "agreement": _mean([r["agrees"] for r in rows if r.get("agrees") is not None]),
        "overlap": _mean([r["overlap"] for r in rows if r.get("overlap") is not None]),
        "n_other": len(other),
        "kept_erank": sum(erank) / len(erank) if erank else None,
        "retained_attention": sum(retained) / len(retained) if retained else None,
    }
