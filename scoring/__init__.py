"""Scoring model answers against ground truth, in pure Python: shared by the scenes, the app and the analysis.

    from scoring import COCO_VOCABULARY, mark_answer, score_caption
    score_caption("Two men walk their puppies.", {"person", "dog"}, COCO_VOCABULARY).recall   # 1.0
    mark_answer("A dog on a sofa.", COCO_VOCABULARY, truth={"dog"})["hallucinated"]          # ["couch"]

``vocabulary``: which words name which category (COCO's 80 built in); ``mentions``: finding them
in a text and marking an answer; ``chair``: CHAIR and recall of captions; ``pope``: yes/no
questions; ``answers``: normalising and exact match of short answers. Where the built-in scenes'
evaluation and the analysis CLI read answers differently (word boundaries, first word, recall
pooling, normalising), both rules are here, named, and each caller keeps its own.
"""

from .answers import exact_match, first_word, normalize_answer, normalize_words, same_answer, word_overlap, words
from .chair import CaptionScore, ChairScores, chair_rates, score_caption
from .mentions import (
    CORRECT,
    HALLUCINATED,
    MAX_TRUTH_CHARS,
    NOT_IN_REFERENCE,
    PROSE,
    TOKENS,
    Mention,
    WordRule,
    find_mentions,
    mark_answer,
    parse_truth,
)
from .pope import YES_NO, gold_label, pope_scores, yes_no, yes_no_accuracy
from .vocabulary import COCO_VOCABULARY, Vocabulary, build_vocabulary, plural

__all__ = [
    "COCO_VOCABULARY",
    "CORRECT",
    "HALLUCINATED",
    "MAX_TRUTH_CHARS",
    "NOT_IN_REFERENCE",
    "PROSE",
    "TOKENS",
    "YES_NO",
    "CaptionScore",
    "ChairScores",
    "Mention",
    "Vocabulary",
    "WordRule",
    "build_vocabulary",
    "chair_rates",
    "exact_match",
    "find_mentions",
    "first_word",
    "gold_label",
    "mark_answer",
    "normalize_answer",
    "normalize_words",
    "parse_truth",
    "plural",
    "pope_scores",
    "same_answer",
    "score_caption",
    "word_overlap",
    "words",
    "yes_no",
    "yes_no_accuracy",
]
