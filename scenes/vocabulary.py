"""The closed world of the procedural scenes: shapes, colours, sizes, words and complexity levels.

Everything the scenes can contain, the tasks can ask and the tiny model can say is named here, so
the tokenizer (``scenes.tokenizer``), the renderer (``scenes.generate``) and the scorers
(``scenes.tasks``) agree by construction. Shapes play the role of object categories (as COCO's 80
do for CHAIR); colours are attributes.
"""

from __future__ import annotations

IMAGE_SIZE = 336
"""Side of every scene image in pixels (LLaVA-1.5's CLIP ViT-L/14-336 input)."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "diamond", "moon", "arrow")
"""Object categories. Plurals are ``shape + "s"`` (the canonical counting prompt says ``{shape}s``)."""

SHAPE_FREQUENCY: tuple[float, ...] = (0.19, 0.17, 0.15, 0.13, 0.11, 0.10, 0.08, 0.07)
"""Sampling weight of each shape in ``SHAPES``: a skewed prior so POPE's *popular* negatives mean
something (the popular negative is the most frequent shape absent from the image)."""

CONFUSABLE: dict[str, str] = {
    "circle": "moon",
    "moon": "circle",
    "square": "diamond",
    "diamond": "square",
    "triangle": "arrow",
    "arrow": "triangle",
    "star": "heart",
    "heart": "star",
}
"""For each shape, the shape it most resembles; used to pick POPE *adversarial* negatives."""

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "orange": (249, 140, 22),
    "yellow": (240, 220, 40),
    "green": (40, 180, 70),
    "blue": (40, 90, 235),
    "purple": (150, 60, 210),
    "white": (245, 245, 245),
}
"""Attribute colours (RGB). Backgrounds and clutter are always grey, darker than 130."""

SIZES: dict[str, tuple[int, int]] = {
    "small": (15, 19),
    "medium": (26, 33),
    "large": (50, 64),
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
"""Complexity levels, from concentrated to distributed visual evidence. ``text`` is the simple
OCR-like variant (one large word or number on a plain background)."""

MAX_OBJECTS = 12
