"""Canonical prompts, exact answers and scorers for the scene tasks.

The prompts below are used verbatim by the model's training data, the app and the benchmark.
Captions follow one canonical, easily parsed format: object groups of identical (colour, shape)
in vocabulary order (shape order of ``SHAPES``, then colour order of ``COLORS``), e.g.
``"A red circle, a blue square and two green triangles."``; a word scene is captioned
``"The word clock."``. ``parse_objects`` reads mentions back from any text, and ``chair`` scores
captions at the level of shapes (object categories, as COCO's are for CHAIR). Both read the
tokenizer's words (``scoring.TOKENS``) through ``SCENE_VOCABULARY``; yes/no and exact-match
accuracy are ``scoring.yes_no_accuracy`` and ``scoring.exact_match``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scenes.generate import Scene
from scenes.vocabulary import COLORS, COUNT_WORDS, SHAPE_FREQUENCY, SHAPES, THEMES
from scoring import TOKENS, ChairScores, build_vocabulary, find_mentions, score_caption, words

__all__ = [
    "CAPTION_PROMPT",
    "NEGATIVE_TYPES",
    "SCENE_VOCABULARY",
    "WORD_PROMPT",
    "Sample",
    "ShapeMention",
    "attribute_errors",
    "caption",
    "chair",
    "color_prompt",
    "count_prompt",
    "existence_prompt",
    "make_samples",
    "parse_objects",
    "wrong_colour_question",
]

CAPTION_PROMPT = "Describe the image."
WORD_PROMPT = "What word is written in the image?"
NEGATIVE_TYPES: tuple[str, ...] = ("random", "popular", "adversarial")
"""POPE negative types: an absent shape drawn uniformly, the most frequent absent shape
(``SHAPE_FREQUENCY``), and the absent shape that co-occurs most with the scene's (the highest-weight
absent shape of its theme, ``vocabulary.THEMES``, as POPE's adversarial negatives are the objects
that co-occur most with those present). As in POPE, whose three settings are separate question
sets, one absent shape can be asked as more than one type: the themes' top shapes are also the most
frequent overall, so popular and adversarial negatives coincide on 64 of 450 object scenes
(``scenes.evaluate`` seeds, 150 per level: 33 simple, 22 medium, 9 complex). ``attribute`` (a
present shape in a colour it does not have) is a further, training-and-diagnostic-only type."""

SCENE_VOCABULARY = build_vocabulary("scenes", {shape: () for shape in SHAPES})
"""The shapes as object categories, singular and plural (``scoring.plural``: ``shape + "s"`` for each
of ``SHAPES``, as the counting prompt writes them)."""

_POPULARITY = tuple(s for _, s in sorted(zip(SHAPE_FREQUENCY, SHAPES, strict=True), key=lambda t: -t[0]))
_NUMBER_WORDS = {w: i for i, w in enumerate(COUNT_WORDS)} | {"a": 1, "an": 1}


def existence_prompt(shape: str, color: str | None = None) -> str:
    """``"Is there a {shape} in the image?"`` or ``"Is there a {color} {shape} in the image?"``."""
    if color is None:
        return f"Is there a {shape} in the image?"
    return f"Is there a {color} {shape} in the image?"


def color_prompt(shape: str) -> str:
    """``"What color is the {shape}?"``."""
    return f"What color is the {shape}?"


def count_prompt(shape: str) -> str:
    """``"How many {shape}s are there?"``."""
    return f"How many {shape}s are there?"


@dataclass(frozen=True)
class Sample:
    """One task instance: the prompt, its exact answer and its kind.

    Attributes:
        task: ``caption``, ``exists``, ``color``, ``count`` or ``word``.
        prompt: the canonical prompt text.
        answer: the exact expected answer.
        kind: for ``exists``: ``positive`` or a negative type; otherwise ``None``.
    """

    task: str
    prompt: str
    answer: str
    kind: str | None = None


@dataclass(frozen=True)
class ShapeMention:
    """One object group named in a caption: ``count`` objects of ``shape``, ``color`` or ``None``."""

    color: str | None
    shape: str
    count: int


def caption(scene: Scene) -> str:
    """The canonical caption of ``scene`` (see the module docstring)."""
    if scene.text is not None and not scene.objects:
        return f"The word {scene.text}."
    groups = Counter((o.shape, o.color) for o in scene.objects)
    color_order = list(COLORS)
    keys = sorted(groups, key=lambda k: (SHAPES.index(k[0]), color_order.index(k[1])))
    parts = []
    for shape, color in keys:
        n = groups[(shape, color)]
        article = "an" if color[0] in "aeiou" else "a"
        parts.append(f"{article} {color} {shape}" if n == 1 else f"{COUNT_WORDS[n]} {color} {shape}s")
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text[0].upper() + text[1:] + "."


def parse_objects(text: str) -> list[ShapeMention]:
    """Object mentions in free text: every shape word (singular or plural) with the colour word and
    number word right before it, when present. Unknown words are ignored.

    >>> parse_objects("A red circle and two green triangles.")  # doctest: +NORMALIZE_WHITESPACE
    [ShapeMention(color='red', shape='circle', count=1), ShapeMention(color='green', shape='triangle', count=2)]
    """
    lowered = text.lower()  # TOKENS' offsets index the lower-cased text
    out = []
    for mention in find_mentions(text, SCENE_VOCABULARY, rule=TOKENS):
        before = words(lowered[: mention.start])
        color = before.pop() if before and before[-1] in COLORS else None
        count = _NUMBER_WORDS.get(before[-1], 1) if before else 1
        out.append(ShapeMention(color, mention.category, count))
    return out


def attribute_errors(text: str, objects: Sequence[tuple[str, str]]) -> dict[int, str]:
    """Mentions in ``text`` whose colour or count the scene's exact ``(shape, colour)`` objects contradict.

    A mention is a shape word with, right before it, an optional colour word and an optional number
    word (``parse_objects``' grammar, found on ``scoring.PROSE`` words as the app marks answers):
    "a green circle" claims one green circle, "two diamonds" two diamonds of any colour. Mentions of
    the same colour and shape add up, so "a red heart and a red heart" claims two red hearts, as
    "two red hearts" does. Returns ``{start offset: why}`` for the mentions of a shape in the scene
    whose colour no such object has, and where a (colour, shape)'s claimed total is not the
    scene's: beyond the scene's count, the mentions that claim the excess (from the last); short
    of it, the last mention. Absent shapes are CHAIR's business, not this.
    """
    lowered = text.lower()
    claims: dict[tuple[str | None, str], list[tuple[int, int | None]]] = {}
    errors = {}
    for mention in find_mentions(text, SCENE_VOCABULARY):
        same_shape = [colour for shape, colour in objects if shape == mention.category]
        if not same_shape:
            continue
        before = words(lowered[: mention.start])
        colour = before.pop() if before and before[-1] in COLORS else None
        count = _NUMBER_WORDS.get(before[-1]) if before else None
        if colour is not None and colour not in same_shape:
            errors[mention.start] = f"no {colour} {mention.category} in the image"
        else:
            claims.setdefault((colour, mention.category), []).append((mention.start, count))
    for (colour, shape), mentions in claims.items():
        if all(count is None for _, count in mentions) and len(mentions) == 1:
            continue  # "the red circle": no number claimed
        actual = sum(s == shape and (colour is None or c == colour) for s, c in objects)
        claimed = sum(1 if count is None else count for _, count in mentions)
        why = f"the image has {actual}, not {claimed}"
        if claimed < actual:  # too few: the last mention is where the count falls short
            errors[mentions[-1][0]] = why
        excess = claimed - actual  # too many: the mentions beyond the image's count, from the last
        for start, count in reversed(mentions):
            if excess <= 0:
                break
            errors[start] = why
            excess -= 1 if count is None else count
    return dict(sorted(errors.items()))


def chair(captions: Sequence[str], truths: Sequence[Sequence[str]]) -> ChairScores:
    """CHAIR of ``captions`` against the ground-truth shape lists ``truths`` (one per caption), recall
    pooled over the captions."""
    if len(captions) != len(truths):
        raise ValueError(f"{len(captions)} captions but {len(truths)} ground truths")
    return ChairScores.from_captions(
        [
            score_caption(text, truth, SCENE_VOCABULARY, rule=TOKENS)
            for text, truth in zip(captions, truths, strict=True)
        ]
    )


def wrong_colour_question(scene: Scene, rng: np.random.Generator) -> Sample | None:
    """A wrong-colour existence question (answer "No", kind ``attribute``) about a scene with
    objects: a shape present, drawn uniformly over the objects, in a colour none of its objects
    has, drawn uniformly; None for a shape drawn in every colour."""
    if not scene.objects:
        raise ValueError("a wrong-colour question needs a scene with objects")
    shape = scene.objects[int(rng.integers(len(scene.objects)))].shape
    wrong = [c for c in COLORS if all(o.color != c for o in scene.objects if o.shape == shape)]
    if not wrong:
        return None
    return Sample("exists", existence_prompt(shape, wrong[int(rng.integers(len(wrong)))]), "No", "attribute")


def make_samples(scene: Scene, rng: np.random.Generator) -> list[Sample]:
    """Every kind of task instance for ``scene``: the caption, existence (four positives and one
    negative of each applicable type), colour, counting and word reading. Random choices use ``rng``
    only."""
    samples = [Sample("caption", CAPTION_PROMPT, caption(scene))]
    present = [o.shape for o in scene.objects]
    present_set = set(present)
    absent = [s for s in SHAPES if s not in present_set]
    colors_of = {s: {o.color for o in scene.objects if o.shape == s} for s in present_set}

    for _ in range(2 if scene.objects else 0):  # as many positives as POPE-style negatives
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
        samples.append(Sample("exists", existence_prompt(obj.shape), "Yes", "positive"))
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
        samples.append(Sample("exists", existence_prompt(obj.shape, obj.color), "Yes", "positive"))
    if absent:
        pick = absent[int(rng.integers(len(absent)))]
        samples.append(Sample("exists", existence_prompt(pick), "No", "random"))
        popular = next(s for s in _POPULARITY if s in absent)
        samples.append(Sample("exists", existence_prompt(popular), "No", "popular"))
    if absent and scene.objects:
        shapes, weights, _ = THEMES[scene.theme]
        mates = sorted((s for s in shapes if s in absent), key=lambda s: -weights[shapes.index(s)])
        shape = mates[0] if mates else absent[int(rng.integers(len(absent)))]
        samples.append(Sample("exists", existence_prompt(shape), "No", "adversarial"))
    if scene.objects and (question := wrong_colour_question(scene, rng)) is not None:
        samples.append(question)

    single = sorted(s for s in present_set if len(colors_of[s]) == 1)
    if single:
        shape = single[int(rng.integers(len(single)))]
        samples.append(Sample("color", color_prompt(shape), next(iter(colors_of[shape]))))
    if scene.objects:
        shape = present[int(rng.integers(len(present)))]
        samples.append(Sample("count", count_prompt(shape), str(scene.count(shape))))
    if absent and rng.random() < 0.25:
        samples.append(Sample("count", count_prompt(absent[int(rng.integers(len(absent)))]), "0"))
    if scene.text is not None:
        samples.append(Sample("word", WORD_PROMPT, scene.text))
    return samples
