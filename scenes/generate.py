"""Procedural scenes with exact ground truth: ``generate_scene(seed, complexity) -> Scene``.

A scene is a 336×336 RGB image of coloured shapes (or one word) on a varied background, plus the
exact truth about it: every object's shape, colour, size class, centre and bounding box, the word
if any, the scene's theme and background kind, and a per-pixel map saying which object each pixel
belongs to. Generation is a pure function of ``(seed, complexity)``: all randomness comes from one
``numpy.random.Generator`` seeded with ``seed``; the global RNGs are never touched.

Complexity levels (``vocabulary.COMPLEXITIES``) reproduce the paper's simple/complex contrast:

* ``text``: one word or number of moderate size (38–194 px wide, about 55 px high), the rest background;
* ``simple``: one or two objects of moderate size (radius 32–44 px), evidence concentrated;
* ``medium``: three to five medium objects;
* ``complex``: six to twelve small objects spread over the image (evidence distributed).

Every level has a varied, natural-looking background (``BACKGROUNDS``: gradients, fractal noise,
wood grain, a horizon, out-of-focus blobs, each in random muted tones with fine grain), so no two
background patches are alike, as in a photograph: a method that spreads its budget over distinct
patches can spend it on background there, as real images let it. Objects co-occur by theme
(``vocabulary.THEMES``).

Objects are upright icons (tilted by at most 15 degrees), filled with their colour and a
screen-aligned texture in a darker shade of it that is specific to the shape
(``shape_pattern``): every patch of an object thus shows its category locally.

Overlap limit (checked by the tests): object bounding boxes never intersect, and any two are at
least ``MIN_GAP`` pixels apart. Backgrounds are muted (channel spread at most
``BACKGROUND_MAX_SPREAD``) and darker than ``BACKGROUND_MAX_VALUE``, so they never carry an
attribute colour.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from scenes.vocabulary import (
    COLORS,
    COMPLEXITIES,
    IMAGE_SIZE,
    SHAPES,
    SIZES,
    THEME_COLOR_PROB,
    THEME_SHAPE_PROB,
    THEMES,
    WORDS,
)

__all__ = [
    "BACKGROUNDS",
    "BACKGROUND_MAX_SPREAD",
    "BACKGROUND_MAX_VALUE",
    "MIN_GAP",
    "PATTERN_SHADE",
    "TEXT_ID",
    "Scene",
    "SceneObject",
    "generate_scene",
    "pattern_color",
    "shape_pattern",
    "shape_polygon",
]

PATTERN_PERIOD = 7
"""Period in pixels of the shape textures (divides the 14 px patch)."""

PATTERN_SHADE = 0.55
"""Brightness factor of an object's surface pattern relative to its colour."""

MIN_GAP = 6
"""Minimum distance in pixels between the bounding boxes of any two objects (no overlap at all)."""

TEXT_ID = 254
"""Value of word pixels in ``Scene.label_map`` (objects are 1..n, background 0)."""

_OBJECT_COUNTS = {"simple": (1, 2), "medium": (3, 5), "complex": (6, 12)}
_OBJECT_SIZE = {"simple": "large", "medium": "medium", "complex": "small"}
_REPEAT_SHAPE_PROB = 0.35  # chance an object copies an earlier object's shape (makes counts > 1 common)
_MAX_TILT = 0.26  # radians (about 15 degrees): shapes are upright icons with a small random tilt
_MAX_PLACEMENT_TRIES = 400
_WORD_SCALE = 2.0  # every word fits: 38 ("7") to 194 ("mouse") px wide, 55 px high with its baseline
_WORD_THICKNESS = 5
_WORD_SNAP = 14  # word positions are multiples of the patch size
_WORD_MARGIN = 8

BACKGROUNDS: tuple[str, ...] = ("gradient", "noise", "wood", "horizon", "blobs")
"""Background kinds, drawn uniformly for every scene."""

BACKGROUND_MAX_SPREAD = 40
"""Largest channel spread (max − min of R, G, B) of a background pixel: backgrounds are muted."""

BACKGROUND_MAX_VALUE = 125
"""Every background channel value is at most this: below white's pattern shade (135), the one
attribute colour whose channel spread is not above ``BACKGROUND_MAX_SPREAD``."""


@dataclass(frozen=True)
class SceneObject:
    """One drawn object.

    Attributes:
        shape: category name from ``SHAPES``.
        color: attribute name from ``COLORS``.
        size: size class from ``SIZES``.
        center: (x, y) pixel centre.
        bbox: (x0, y0, x1, y1) tight pixel bounding box of the drawn shape, end-exclusive.
        radius: radius in pixels of the circle the shape is inscribed in.
    """

    shape: str
    color: str
    size: str
    center: tuple[int, int]
    bbox: tuple[int, int, int, int]
    radius: int


@dataclass(frozen=True, eq=False)
class Scene:
    """A generated image and its exact ground truth.

    Attributes:
        seed: the seed it was generated from.
        complexity: one of ``COMPLEXITIES``.
        image: 336×336 RGB ``PIL.Image``.
        objects: the drawn objects, in drawing order.
        text: the word drawn in the image, or ``None``.
        text_color: colour name of the word, or ``None``.
        text_bbox: (x0, y0, x1, y1) of the word's pixels, or ``None``.
        background: the background kind, one of ``BACKGROUNDS``.
        theme: the theme the objects were drawn from (``vocabulary.THEMES``), ``None`` for a word.
        label_map: (336, 336) uint8: 0 background, i + 1 for ``objects[i]``, ``TEXT_ID`` for text.
    """

    seed: int
    complexity: str
    image: Image.Image
    objects: tuple[SceneObject, ...]
    text: str | None
    text_color: str | None
    text_bbox: tuple[int, int, int, int] | None
    background: str
    theme: str | None
    label_map: np.ndarray = field(repr=False)

    @property
    def shapes(self) -> frozenset[str]:
        """The set of shape names present."""
        return frozenset(o.shape for o in self.objects)

    def count(self, shape: str) -> int:
        """How many objects of ``shape`` the scene holds."""
        return sum(o.shape == shape for o in self.objects)


def shape_polygon(shape: str, center: tuple[float, float], radius: float, angle: float) -> np.ndarray:
    """Outline of ``shape`` inscribed in a circle of ``radius`` around ``center``, rotated by ``angle``.

    Returns:
        (K, 2) int32 array of (x, y) vertices, ready for ``cv2.fillPoly``.
    """
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        unit = np.stack([np.cos(t), np.sin(t)], axis=1)
    elif shape == "square":
        t = np.pi / 4 + np.arange(4) * np.pi / 2
        unit = np.stack([np.cos(t), np.sin(t)], axis=1)
    elif shape == "triangle":
        t = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        unit = np.stack([np.cos(t), np.sin(t)], axis=1)
    elif shape == "moon":
        # crescent: the unit disc minus a disc of radius 0.85 centred at (0.5, 0), opening right
        tip = np.arctan2(np.sqrt(1 - 0.5275**2), 0.5275)  # where the two circles cross
        inner_tip = np.arctan2(np.sqrt(1 - 0.5275**2), 0.0275)
        outer = np.linspace(tip, 2 * np.pi - tip, 40)
        inner = np.linspace(2 * np.pi - inner_tip, inner_tip, 32)
        unit = np.concatenate(
            [
                np.stack([np.cos(outer), np.sin(outer)], axis=1),
                np.stack([0.5 + 0.85 * np.cos(inner), 0.85 * np.sin(inner)], axis=1),
            ]
        )
    elif shape == "diamond":
        unit = np.array([[0.0, -1.0], [0.62, 0.0], [0.0, 1.0], [-0.62, 0.0]])
    elif shape == "star":
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        unit = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    elif shape == "heart":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        unit = np.stack([x, y + 2.5], axis=1)
        unit = unit / np.linalg.norm(unit, axis=1).max()
    elif shape == "arrow":
        unit = np.array([[-1.0, -0.3], [0.15, -0.3], [0.15, -0.7], [1.0, 0.0], [0.15, 0.7], [0.15, 0.3], [-1.0, 0.3]])
    elif shape == "hexagon":
        t = np.arange(6) * np.pi / 3
        unit = np.stack([np.cos(t), np.sin(t)], axis=1)
    elif shape == "kite":
        unit = np.array([[0.0, -1.0], [0.62, -0.3], [0.0, 1.0], [-0.62, -0.3]])
    elif shape == "drop":
        # teardrop pointing up: x = sin t · sin(t / 2), y = −cos t, centred on its bounding circle
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        unit = np.stack([np.sin(t) * np.sin(t / 2), -np.cos(t)], axis=1)
    elif shape == "bolt":
        unit = np.array(
            [[-0.1, -1.0], [0.55, -1.0], [0.15, -0.2], [0.55, -0.2], [-0.3, 1.0], [-0.05, 0.15], [-0.45, 0.15]]
        )
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = unit @ rot.T * radius + np.asarray(center, dtype=np.float64)  # (K, 2)
    return np.round(pts).astype(np.int32)


def pattern_color(color: str) -> tuple[int, int, int]:
    """The darker shade of ``color`` used for its object's surface pattern."""
    return tuple(round(v * PATTERN_SHADE) for v in COLORS[color])


def shape_pattern(shape: str, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Which pixels of an object carry its shape's surface pattern (bool, same shape as ``xs``).

    ``xs``, ``ys`` are absolute pixel coordinates. Every shape has its own screen-aligned texture of
    period ``PATTERN_PERIOD`` (words stay plain); the period divides the 14 px patch, so every patch
    of an object sees its texture in the same phase. Each patch of an object thus shows its category
    locally, the way patch features of a well-pretrained CLIP carry object identity, and a small
    tower trained on a CPU budget can learn it as quickly as colour.
    """
    p = PATTERN_PERIOD
    patterns = {
        "circle": lambda: ((xs + ys) % p < 2) | ((xs - ys) % p < 2),  # diagonal grid
        "square": lambda: ys % p < 2,  # horizontal stripes
        "triangle": lambda: xs % p < 2,  # vertical stripes
        "star": lambda: (xs % p < 3) & (ys % p < 3),  # dots
        "heart": lambda: (xs + ys) % p < 2,  # diagonal stripes
        "diamond": lambda: (xs // p + ys // p) % 2 == 0,  # checkerboard
        "moon": lambda: (xs - ys) % p < 2,  # anti-diagonal stripes
        "arrow": lambda: (xs % p < 2) | (ys % p < 2),  # grid
        "hexagon": lambda: (xs % p < 2) & (ys % p < 4),  # vertical dashes
        "kite": lambda: (2 * xs + ys) % p < 2,  # shallow diagonal stripes
        "drop": lambda: (xs + 2 * ys) % p < 2,  # steep diagonal stripes
        "bolt": lambda: (ys % p < 2) & (xs % p < 4),  # horizontal dashes
    }
    if shape not in patterns:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return patterns[shape]()


_GRID = tuple(np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) / IMAGE_SIZE)  # (y, x), each (H, W)


def _tone(rng: np.random.Generator) -> np.ndarray:
    """A random muted colour (3,) float: any hue, saturation at most 0.3, value 30–110."""
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0.03, 0.3), rng.uniform(30, 110)
    return np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """(H, W) float32 noise, smooth over about IMAGE_SIZE / cells pixels, roughly unit variance."""
    coarse = rng.normal(0.0, 1.0, size=(cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(coarse, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_CUBIC)


def _fractal(rng: np.random.Generator) -> np.ndarray:
    """(H, W) float32 fractal noise in [0, 1]: octaves of ``_smooth_noise``, each half as strong."""
    field = sum(0.5**i * _smooth_noise(rng, 3 * 2**i) for i in range(5))
    return (field - field.min()) / max(float(field.max() - field.min()), 1e-6)


def _background(rng: np.random.Generator, kind: str) -> np.ndarray:
    """A (H, W, 3) uint8 background of ``kind`` (one of ``BACKGROUNDS``) in random muted tones.

    Every kind blends two or more tones along a scalar field (a ramp, fractal noise, wood rings, a
    wavy horizon between sky and ground, soft blobs) and adds fine grain, so neighbouring patches
    differ as they do in a photograph.
    """
    yy, xx = _GRID
    a, b = _tone(rng), _tone(rng)
    if kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        t = np.cos(angle) * xx + np.sin(angle) * yy
        t = (t - t.min()) / (t.max() - t.min()) + 0.15 * _smooth_noise(rng, 4)
    elif kind == "noise":
        t = _fractal(rng)
    elif kind == "wood":
        cx, cy = rng.uniform(-1.5, 2.5, size=2)
        rings = np.hypot((xx - cx) * rng.uniform(0.3, 1.0), yy - cy) * rng.uniform(20, 45)
        t = 0.5 + 0.5 * np.sin(rings + 2.5 * _smooth_noise(rng, 5))
    elif kind == "horizon":
        level = rng.uniform(0.25, 0.75) + 0.06 * _smooth_noise(rng, 3)[0]  # (W,) wavy horizon
        ground = yy > level[None, :]
        sky = np.clip(yy / np.maximum(level[None, :], 1e-3), 0, 1)
        t = np.where(ground, 0.0, sky)[..., None]
        c = _tone(rng)
        img = (1 - t) * b + t * a
        img = np.where(ground[..., None], c[None, None] * (0.7 + 0.6 * _fractal(rng)[..., None]), img)
        return _finish(rng, img)
    elif kind == "blobs":  # drawn at a quarter of the resolution, then scaled up (they are soft)
        side = IMAGE_SIZE // 4
        t = np.zeros((side, side), dtype=np.float32)
        for _ in range(int(rng.integers(4, 9))):
            mask = np.zeros_like(t)
            centre = (int(rng.integers(0, side)), int(rng.integers(0, side)))
            axes = (int(rng.integers(5, 23)), int(rng.integers(5, 23)))
            cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
            t = np.maximum(t, cv2.GaussianBlur(mask, (0, 0), float(rng.uniform(2, 5))) * rng.uniform(0.5, 1))
        t = cv2.resize(t, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_LINEAR)
    else:
        raise ValueError(f"unknown background {kind!r}; expected one of {BACKGROUNDS}")
    t = np.clip(t, 0, 1)[..., None]
    return _finish(rng, (1 - t) * a + t * b)


def _finish(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Add fine grain (the same on every channel) and clip into the muted, dark background range."""
    grain = rng.normal(0.0, 4.0, size=(IMAGE_SIZE, IMAGE_SIZE, 1)).astype(np.float32)
    return np.clip(img + grain, 0, BACKGROUND_MAX_VALUE).astype(np.uint8)


def _place_objects(
    rng: np.random.Generator, complexity: str, theme: str
) -> list[tuple[str, str, str, int, float, np.ndarray]]:
    """Sample non-overlapping (shape, colour, size, radius, angle, polygon) tuples for a level."""
    lo, hi = _OBJECT_COUNTS[complexity]
    n = int(rng.integers(lo, hi + 1))
    size = _OBJECT_SIZE[complexity]
    color_names = list(COLORS)
    theme_shapes, theme_weights, theme_colors = THEMES[theme]
    placed: list[tuple[str, str, str, int, float, np.ndarray]] = []
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(n):
        if placed and rng.random() < _REPEAT_SHAPE_PROB:
            shape = placed[int(rng.integers(len(placed)))][0]
        elif rng.random() < THEME_SHAPE_PROB:
            shape = theme_shapes[int(rng.choice(len(theme_shapes), p=theme_weights))]
        else:
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
        if rng.random() < THEME_COLOR_PROB:
            color = theme_colors[int(rng.integers(len(theme_colors)))]
        else:
            color = color_names[int(rng.integers(len(color_names)))]
        r_lo, r_hi = SIZES[size]
        for _try in range(_MAX_PLACEMENT_TRIES):
            radius = int(rng.integers(r_lo, r_hi + 1))
            angle = float(rng.uniform(-_MAX_TILT, _MAX_TILT))
            margin = radius + 3
            cx, cy = (float(v) for v in rng.uniform(margin, IMAGE_SIZE - margin, size=2))
            poly = shape_polygon(shape, (cx, cy), radius, angle)
            box = (
                int(poly[:, 0].min()),
                int(poly[:, 1].min()),
                int(poly[:, 0].max()) + 1,
                int(poly[:, 1].max()) + 1,
            )
            if all(_gap(box, other) >= MIN_GAP + 2 for other in boxes):
                break
        else:
            continue  # no room: drop this object rather than overlap (never happens at these sizes)
        boxes.append(box)
        placed.append((shape, color, size, radius, angle, poly))
    return placed


def _gap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    """Chebyshev gap in pixels between two end-exclusive boxes (negative when they intersect)."""
    dx = max(b[0] - a[2], a[0] - b[2])
    dy = max(b[1] - a[3], a[1] - b[3])
    return max(dx, dy)


def _draw_word(
    rng: np.random.Generator, image: np.ndarray, label_map: np.ndarray
) -> tuple[str, str, tuple[int, int, int, int]]:
    """Draw one word in place; returns (word, colour name, pixel bbox).

    The word is set in one of two Hershey fonts at one fixed size, at a position snapped to the
    14 px patch grid: each word has only a few looks, patch for patch, so a small tower learns to
    read it within the CPU budget.
    """
    word = WORDS[int(rng.integers(len(WORDS)))]
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    font = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX)[int(rng.integers(2))]
    thickness, scale = _WORD_THICKNESS, _WORD_SCALE
    (w, h), base = cv2.getTextSize(word, font, scale, thickness)
    cells_x = (IMAGE_SIZE - w - 2 * _WORD_MARGIN) // _WORD_SNAP
    cells_y = (IMAGE_SIZE - h - base - 2 * _WORD_MARGIN) // _WORD_SNAP
    x = _WORD_MARGIN + _WORD_SNAP * int(rng.integers(0, max(cells_x, 0) + 1))
    y = _WORD_MARGIN + h + _WORD_SNAP * int(rng.integers(0, max(cells_y, 0) + 1))
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    cv2.putText(mask, word, (x, y), font, scale, 255, thickness, cv2.LINE_8)
    image[mask > 0] = COLORS[color]
    label_map[mask > 0] = TEXT_ID
    ys, xs = np.nonzero(mask)
    return word, color, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def generate_scene(seed: int, complexity: str | None = None) -> Scene:
    """Render the scene of ``seed`` at ``complexity`` (drawn from the seed when ``None``).

    The same ``(seed, complexity)`` always yields the same pixels and ground truth.
    """
    if complexity is not None and complexity not in COMPLEXITIES:
        raise ValueError(f"unknown complexity {complexity!r}; expected one of {COMPLEXITIES} or None")
    rng = np.random.default_rng([int(seed), 0x5CE7E])
    level = COMPLEXITIES[int(rng.integers(len(COMPLEXITIES)))]
    if complexity is not None:
        level = complexity
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    image = _background(rng, background)
    label_map = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)

    if level == "text":
        word, text_color, text_bbox = _draw_word(rng, image, label_map)
        return Scene(
            seed=int(seed),
            complexity=level,
            image=Image.fromarray(image),
            objects=(),
            text=word,
            text_color=text_color,
            text_bbox=text_bbox,
            background=background,
            theme=None,
            label_map=label_map,
        )

    theme = list(THEMES)[int(rng.integers(len(THEMES)))]
    objects = []
    for index, (shape, color, size, radius, _angle, poly) in enumerate(_place_objects(rng, level, theme)):
        cv2.fillPoly(label_map, [poly], index + 1, lineType=cv2.LINE_8)
        ys, xs = np.nonzero(label_map == index + 1)
        marked = shape_pattern(shape, xs, ys)
        image[ys, xs] = COLORS[color]
        image[ys[marked], xs[marked]] = pattern_color(color)
        bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        center = ((bbox[0] + bbox[2]) // 2, (bbox[1] + bbox[3]) // 2)
        objects.append(SceneObject(shape, color, size, center, bbox, radius))
    return Scene(
        seed=int(seed),
        complexity=level,
        image=Image.fromarray(image),
        objects=tuple(objects),
        text=None,
        text_color=None,
        text_bbox=None,
        background=background,
        theme=theme,
        label_map=label_map,
    )
