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


def test_wrong_colours_and_counts_are_marked_hallucinated():
    from scenes.tasks import SCENE_VOCABULARY, attribute_errors

    objects = [("diamond", "green"), ("diamond", "green"), ("circle", "green"), ("triangle", "purple")]
    text = "A green circle, a green diamond, a red triangle and a star."
    wrong = attribute_errors(text, objects)
    assert {text[k : k + 8]: why for k, why in wrong.items()} == {
        "diamond,": "the image has 2, not 1",
        "triangle": "no red triangle in the image",
    }
    marks = mark_answer(text, SCENE_VOCABULARY, truth={"diamond", "circle", "triangle"}, wrong_attributes=wrong)
    labels = {t: label for t, label in marks["segments"] if label}
    assert labels == {
        "circle": "correct",
        "diamond": "hallucinated",
        "triangle": "hallucinated",
        "star": "hallucinated",
    }
    assert marks["hallucinated"] == ["star"]  # absent categories, as CHAIR counts them
    assert marks["wrong_attributes"] == ["diamond: the image has 2, not 1", "triangle: no red triangle in the image"]
    assert attribute_errors("Two green diamonds and a purple triangle.", objects) == {}
    # repeated mentions of one colour and shape add up: listing instances is counting them
    assert attribute_errors("A green diamond and a green diamond.", objects) == {}
    three = "A green diamond, a green diamond and a green diamond."
    assert attribute_errors(three, objects) == {three.rindex("diamond"): "the image has 2, not 3"}  # one too many
    # without a truth there is nothing to be wrong against
    assert mark_answer(text, SCENE_VOCABULARY, wrong_attributes=wrong)["wrong_attributes"] == []
