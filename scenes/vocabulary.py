"""The closed world of the procedural scenes: shapes, colours, sizes, words and complexity levels.

Everything the scenes can contain, the tasks can ask and the tiny model can say is named here, so
the tokenizer (``scenes.tokenizer``), the renderer (``scenes.generate``) and the scorers
(``scenes.tasks``) agree by construction. Shapes play the role of object categories (as COCO's 80
do for CHAIR), colours are attributes, and themes make objects co-occur.
"""

from __future__ import annotations

IMAGE_SIZE = 336
"""Side of every scene image in pixels (LLaVA-1.5's CLIP ViT-L/14-336 input)."""

SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "heart", "diamond", "moon", "arrow", "hexagon", "kite", "drop", "bolt",
)  # fmt: skip
"""Object categories. Plurals are ``shape + "s"`` (the canonical counting prompt says ``{shape}s``)."""

THEMES: dict[str, tuple[tuple[str, ...], tuple[float, ...], tuple[str, ...]]] = {
    "sky": (("moon", "star", "kite", "drop"), (0.4, 0.3, 0.2, 0.1), ("yellow", "white", "blue")),
    "cards": (("heart", "diamond", "circle", "square"), (0.4, 0.3, 0.2, 0.1), ("red", "purple", "white")),
    "signs": (("arrow", "triangle", "hexagon", "bolt"), (0.4, 0.3, 0.2, 0.1), ("orange", "green", "red")),
}
"""Co-occurrence structure, as COCO's kitchens and streets have: every object scene has one theme
(uniformly drawn), ``name -> (shapes, their weights, favoured colours)``. Each object's shape comes
from its theme's shapes (by weight) with probability ``THEME_SHAPE_PROB`` and from all ``SHAPES``
(uniformly) otherwise; its colour from the theme's colours with probability ``THEME_COLOR_PROB``
and from all ``COLORS`` otherwise (uniformly in both cases). A moon thus makes a star likely, the
prior a decoder can hallucinate from when a pruned input hides part of the scene."""

THEME_SHAPE_PROB = 0.8
THEME_COLOR_PROB = 0.5


def _shape_frequency() -> tuple[float, ...]:
    """Marginal probability of each shape in ``SHAPES`` for a new (non-repeated) object."""
    freq = dict.fromkeys(SHAPES, (1 - THEME_SHAPE_PROB) / len(SHAPES))
    for shapes, weights, _ in THEMES.values():
        for shape, weight in zip(shapes, weights, strict=True):
            freq[shape] += THEME_SHAPE_PROB * weight / len(THEMES)
    return tuple(freq[s] for s in SHAPES)


COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "orange": (249, 140, 22),
    "yellow": (240, 220, 40),
    "green": (40, 180, 70),
    "blue": (40, 90, 235),
    "purple": (150, 60, 210),
    "white": (245, 245, 245),
}
"""Attribute colours (RGB). Backgrounds are muted (channel spread at most 40) and darker than 130,
so they never carry an attribute colour."""

SHAPE_FREQUENCY: tuple[float, ...] = _shape_frequency()
"""Marginal sampling probability of each shape in ``SHAPES`` (``THEMES``): a skewed prior, so POPE's
*popular* negatives mean something (the popular negative is the most frequent shape absent)."""

SIZES: dict[str, tuple[int, int]] = {
    "small": (15, 19),
    "medium": (22, 30),
    "large": (32, 44),
}
"""Object radius range in pixels (the shape fits a circle of that radius) per size class."""

WORDS: tuple[str, ...] = (
    "cat", "dog", "sun", "car", "tree", "bird", "fish", "book", "milk", "door",
    "lamp", "ship", "frog", "rain", "snow", "wind", "bread", "apple", "music", "river",
    "stone", "cloud", "horse", "light", "train", "plant", "clock", "paper", "mouse", "grape",
    "7", "12", "25", "48", "90", "104", "256", "300", "512", "2026",
)  # fmt: skip
"""Words and numbers drawn in OCR-like scenes, disjoint from shape and colour names."""

COUNT_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
)  # fmt: skip
"""Number words used in captions (index = count)."""

COMPLEXITIES: tuple[str, ...] = ("text", "simple", "medium", "complex")
"""Complexity levels, from concentrated to distributed visual evidence, all on varied backgrounds.
``text`` is the simple OCR-like variant: one word or number of moderate size (``scenes.generate``)."""

MAX_OBJECTS = 12
