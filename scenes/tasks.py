"""Canonical prompts, exact answers and scorers for the scene tasks.

The prompts below are used verbatim by the model's training data, the app and the benchmark.
Captions follow one canonical, easily parsed format: object groups of identical (colour, shape)
in vocabulary order (shape order of ``SHAPES``, then colour order of ``COLORS``), e.g.
``"A red circle, a blue square and two green triangles."``; a word scene is captioned
``"The word clock."``. ``parse_objects`` reads mentions back from any text, and the scorers
compute CHAIR_i, CHAIR_s and recall at the level of shapes (object categories, as COCO's are for
CHAIR) plus yes/no and exact-match accuracy.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scenes.generate import Scene
from scenes.vocabulary import COLORS, CONFUSABLE, COUNT_WORDS, SHAPE_FREQUENCY, SHAPES

__all__ = [
    "CAPTION_PROMPT",
    "NEGATIVE_TYPES",
    "WORD_PROMPT",
    "ChairScores",
    "Mention",
    "Sample",
    "caption",
    "chair",
    "color_prompt",
    "count_prompt",
    "exact_match",
    "existence_prompt",
    "make_samples",
    "normalize_answer",
    "parse_objects",
    "wrong_colour_question",
    "yes_no_accuracy",
]

CAPTION_PROMPT = "Describe the image."
WORD_PROMPT = "What word is written in the image?"
NEGATIVE_TYPES: tuple[str, ...] = ("random", "popular", "adversarial")
"""POPE negative types. ``attribute`` (a present shape in a colour it does not have) is a further,
training-and-diagnostic-only type."""

_POPULARITY = tuple(s for _, s in sorted(zip(SHAPE_FREQUENCY, SHAPES, strict=True), key=lambda t: -t[0]))
_PLURAL = {s + "s": s for s in SHAPES}
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
class Mention:
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


def parse_objects(text: str) -> list[Mention]:
    """Object mentions in free text: every shape word (singular or plural) with the colour word and
    number word right before it, when present. Unknown words are ignored.

    >>> parse_objects("A red circle and two green triangles.")  # doctest: +NORMALIZE_WHITESPACE
    [Mention(color='red', shape='circle', count=1), Mention(color='green', shape='triangle', count=2)]
    """
    words = re.findall(r"[a-z0-9]+", text.lower())
    mentions = []
    for i, word in enumerate(words):
        shape = word if word in SHAPES else _PLURAL.get(word)
        if shape is None:
            continue
        j = i - 1
        color = words[j] if j >= 0 and words[j] in COLORS else None
        if color is not None:
            j -= 1
        count = _NUMBER_WORDS.get(words[j], 1) if j >= 0 else 1
        mentions.append(Mention(color, shape, count))
    return mentions


@dataclass(frozen=True)
class ChairScores:
    """CHAIR over a set of captions, at the level of shapes (categories).

    Attributes:
        chair_i: hallucinated shape mentions / all shape mentions (distinct shapes per caption).
        chair_s: fraction of captions with at least one hallucinated shape.
        recall: ground-truth shapes mentioned / all ground-truth shapes (distinct per scene).
        n_captions: how many captions were scored.
    """

    chair_i: float
    chair_s: float
    recall: float
    n_captions: int


def chair(captions: Sequence[str], truths: Sequence[Sequence[str]]) -> ChairScores:
    """Score ``captions`` against the ground-truth shape lists ``truths`` (one per caption)."""
    if len(captions) != len(truths):
        raise ValueError(f"{len(captions)} captions but {len(truths)} ground truths")
    mentioned_total = hallucinated_total = bad_captions = gt_total = gt_hit = 0
    for text, truth in zip(captions, truths, strict=True):
        said = {m.shape for m in parse_objects(text)}
        gt = set(truth)
        wrong = said - gt
        mentioned_total += len(said)
        hallucinated_total += len(wrong)
        bad_captions += bool(wrong)
        gt_total += len(gt)
        gt_hit += len(said & gt)
    return ChairScores(
        chair_i=hallucinated_total / mentioned_total if mentioned_total else 0.0,
        chair_s=bad_captions / len(captions) if captions else 0.0,
        recall=gt_hit / gt_total if gt_total else 1.0,
        n_captions=len(captions),
    )


def normalize_answer(text: str) -> str:
    """Lower-case, strip spaces and a trailing full stop: ``" Yes."`` → ``"yes"``."""
    return text.strip().rstrip(".").strip().lower()


def exact_match(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Fraction of predictions equal to their answer after ``normalize_answer``."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions but {len(answers)} answers")
    if not answers:
        return 0.0
    hits = sum(normalize_answer(p) == normalize_answer(a) for p, a in zip(predictions, answers, strict=True))
    return hits / len(answers)


def yes_no_accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Accuracy of yes/no answers, reading only the first word of each prediction (POPE's rule)."""
    firsts = [(re.findall(r"[a-z]+", p.lower()) or [""])[0] for p in predictions]
    return exact_match(firsts, answers)


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
        lures = [o for o in scene.objects if CONFUSABLE[o.shape] in absent]
        pool = lures or list(scene.objects)
        obj = pool[int(rng.integers(len(pool)))]
        shape = CONFUSABLE[obj.shape] if lures else absent[int(rng.integers(len(absent)))]
        samples.append(Sample("exists", existence_prompt(shape, obj.color), "No", "adversarial"))
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
