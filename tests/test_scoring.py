"""The scoring package on odd text: Unicode case variants, hyphens, empty answers."""

from scoring import COCO_VOCABULARY, find_mentions
from scoring.mentions import mark_answer


def test_unicode_case_variants_are_mentions_not_crashes():
    # "ſ" (long s) and "K" (the Kelvin sign) match case-insensitively; their lower case is not a form
    found = find_mentions("a ſtop sign beside a \u212aite", COCO_VOCABULARY)
    assert [(m.surface, m.category) for m in found] == [("ſtop sign", "stop sign"), ("\u212aite", "kite")]
    marks = mark_answer("a ſtop sign", COCO_VOCABULARY, truth={"stop sign"})
    assert marks["mentioned"] == ["stop sign"] and marks["hallucinated"] == []
    assert "".join(text for text, _ in marks["segments"]) == "a ſtop sign"


def test_prose_boundaries_and_empty_text():
    assert find_mentions("", COCO_VOCABULARY) == []
    assert find_mentions("a dog-like shape", COCO_VOCABULARY) == []  # no mention inside a hyphenated word
    assert [m.category for m in find_mentions("Two Dogs and a person.", COCO_VOCABULARY)] == ["dog", "person"]
