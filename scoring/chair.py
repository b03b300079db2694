"""CHAIR (Rohrbach et al., 2018) and recall of captions, at the level of a vocabulary's categories.

``score_caption`` checks one caption against its image's ground-truth categories (distinct
categories, as CHAIR counts them); ``chair_rates`` gives CHAIR_i (hallucinated / all mentioned
categories) and CHAIR_s (share of captions with a hallucination) from per-caption counts, and
``ChairScores.from_captions`` adds recall pooled over all captions. (The analysis CLI averages
per-caption recall instead, over the captions whose image has a ground truth.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .mentions import PROSE, WordRule, find_mentions
from .vocabulary import Vocabulary

__all__ = ["CaptionScore", "ChairScores", "chair_rates", "score_caption"]


@dataclass(frozen=True)
class CaptionScore:
    """One caption against its image's ground truth.

    Attributes:
        mentioned: the distinct categories the caption names, sorted.
        hallucinated: those absent from the ground truth, sorted.
        n_truth: how many distinct ground-truth categories the image has.
        n_found: how many of them the caption names.
    """

    mentioned: tuple[str, ...]
    hallucinated: tuple[str, ...]
    n_truth: int
    n_found: int

    @property
    def recall(self) -> float | None:
        """``n_found / n_truth``; None for an image without ground-truth objects."""
        return self.n_found / self.n_truth if self.n_truth else None


def score_caption(text: str, truth: Iterable[str], vocabulary: Vocabulary, *, rule: WordRule = PROSE) -> CaptionScore:
    """Check ``text`` against the ground-truth categories ``truth``, finding mentions with ``rule``."""
    truth = set(truth)
    said = sorted({m.category for m in find_mentions(text, vocabulary, rule=rule)})
    return CaptionScore(
        mentioned=tuple(said),
        hallucinated=tuple(c for c in said if c not in truth),
        n_truth=len(truth),
        n_found=len(truth & set(said)),
    )


def chair_rates(n_mentioned: Sequence[int], n_hallucinated: Sequence[int]) -> tuple[float, float]:
    """``(CHAIR_i, CHAIR_s)`` from per-caption counts of mentioned and hallucinated categories.

    CHAIR_i is 0.0 when nothing is mentioned, CHAIR_s 0.0 without captions.
    """
    if len(n_mentioned) != len(n_hallucinated):
        raise ValueError(f"{len(n_mentioned)} mention counts but {len(n_hallucinated)} hallucination counts")
    mentioned, wrong = sum(n_mentioned), sum(n_hallucinated)
    chair_i = wrong / mentioned if mentioned else 0.0
    chair_s = sum(n > 0 for n in n_hallucinated) / len(n_hallucinated) if n_hallucinated else 0.0
    return chair_i, chair_s


@dataclass(frozen=True)
class ChairScores:
    """CHAIR over a set of captions.

    Attributes:
        chair_i: hallucinated category mentions / all category mentions (distinct per caption).
        chair_s: fraction of captions with at least one hallucinated category.
        recall: ground-truth categories mentioned / all ground-truth categories (distinct per
            image, pooled over the captions; 1.0 when there are none).
        n_captions: how many captions were scored.
    """

    chair_i: float
    chair_s: float
    recall: float
    n_captions: int

    @classmethod
    def from_captions(cls, scores: Sequence[CaptionScore]) -> ChairScores:
        """Pool the per-caption ``scores``."""
        chair_i, chair_s = chair_rates([len(s.mentioned) for s in scores], [len(s.hallucinated) for s in scores])
        n_truth = sum(s.n_truth for s in scores)
        recall = sum(s.n_found for s in scores) / n_truth if n_truth else 1.0
        return cls(chair_i=chair_i, chair_s=chair_s, recall=recall, n_captions=len(scores))
