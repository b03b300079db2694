"""Kept and dropped patches drawn over the image the model saw."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .palette import group_colour

__all__ = ["overlay_selection", "patch_boxes"]

COLOUR_MODES = (None, "order", "attention")


def patch_boxes(size: tuple[int, int], grid: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Pixel box (x0, y0, x1, y1) of every patch, raster order, for an image of ``size`` (w, h)."""
    w, h = size
    rows, cols = grid
    xs = [round(c * w / cols) for c in range(cols + 1)]
    ys = [round(r * h / rows) for r in range(rows + 1)]
    return [(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(rows) for c in range(cols)]


def _as_list(values, name: str) -> list:
    if values is None:
        return []
    if hasattr(values, "tolist"):
        values = values.tolist()
    if not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a sequence of ints, got {type(values).__name__}")
    return list(values)


def _ramp(t: float) -> tuple[int, int, int]:
    """Yellow (t = 0) to deep purple (t = 1)."""
    stops = [(253, 231, 37), (53, 183, 121), (49, 104, 142), (68, 1, 84)]
    t = min(max(t, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(t), len(stops) - 2)
    f = t - i
    return tuple(round(a + (b - a) * f) for a, b in zip(stops[i], stops[i + 1]))


def overlay_selection(
    image: Image.Image,
    keep,
    grid: tuple[int, int],
    *,
    order=None,
    groups=None,
    attention=None,
    colour_by: str | None = None,
    dim: float = 0.25,
    outline: tuple[int, int, int] | None = (255, 255, 255),
) -> Image.Image:
    """The image with kept patches clear and dropped patches dimmed.

    Args:
        image: the image as the model saw it (after resize and crop), any mode.
        keep: kept patch indices (raster), a list or 1-D tensor.
        grid: (rows, cols) of the patch grid.
        order: the same indices in pick order, needed for ``colour_by="order"``.
        groups: optional (N,) patch -> output slot (-1 dropped) of a merging method: patches merged
            into a token are outlined in their group's colour and left undimmed.
        attention: optional (N,) attention, needed for ``colour_by="attention"``.
        colour_by: None, "order" (early picks yellow, late purple) or "attention" (high = yellow).
        dim: brightness kept by dropped patches, in [0, 1].
        outline: colour of the thin border around kept patches, or None.
    Returns:
        A new RGB image of the same size.
    """
    if not isinstance(image, Image.Image):
        raise ValueError(f"image must be a PIL image, got {type(image).__name__}")
    if colour_by not in COLOUR_MODES:
        raise ValueError(f"colour_by must be one of {COLOUR_MODES}, got {colour_by!r}")
    if not 0.0 <= dim <= 1.0:
        raise ValueError(f"dim must lie in [0, 1], got {dim}")
    rows, cols = grid
    n = rows * cols
    keep = _as_list(keep, "keep")
    bad = [i for i in keep if not isinstance(i, int) or not 0 <= i < n]
    if bad:
        raise ValueError(f"keep holds indices outside the {rows}x{cols} grid: {bad[:5]}")
    groups = _as_list(groups, "groups")
    if groups and len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for a grid of {n} patches")

    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    boxes = patch_boxes(image.size, grid)
    merged = {i for i, g in enumerate(groups) if g >= 0} if groups else set()
    visible = set(keep) | merged
    factor = np.full((base.shape[0], base.shape[1], 1), dim, dtype=np.float32)
    for i in visible:
        x0, y0, x1, y1 = boxes[i]
        factor[y0:y1, x0:x1] = 1.0
    out = Image.fromarray((base * factor).clip(0, 255).astype(np.uint8))

    tint = {}
    if colour_by == "order":
        order = _as_list(order, "order") or keep
        tint = {idx: _ramp(rank / max(1, len(order) - 1)) for rank, idx in enumerate(order)}
    elif colour_by == "attention":
        values = _as_list(attention, "attention")
        if len(values) != n:
            raise ValueError(f"attention has {len(values)} values for a grid of {n} patches")
        lo, hi = min(values), max(values)
        span = (hi - lo) or 1.0
        tint = {i: _ramp(1.0 - (values[i] - lo) / span) for i in keep}
    if tint:
        layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        for i, rgb in tint.items():
            draw.rectangle(boxes[i], fill=(*rgb, 110))
        out = Image.alpha_composite(out.convert("RGBA"), layer).convert("RGB")

    draw = ImageDraw.Draw(out)
    if outline is not None:
        for i in keep:
            x0, y0, x1, y1 = boxes[i]
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=outline, width=1)
    for i in sorted(merged - set(keep)):
        x0, y0, x1, y1 = boxes[i]
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=group_colour(groups[i]), width=2)
    return out


def overlay_sheet(tiles: list[tuple[str, Any]], max_side: int = 1024) -> Image.Image:
    """One slide-ready picture: the overlays side by side, each under its name.

    Args:
        tiles: (name, image) pairs; an image is a PIL image or an (H, W, 3|4) uint8 array of at most
            ``max_side`` pixels a side. Every tile is drawn at the first one's size.
    Raises:
        ValueError: no tiles, or a tile that is not such an image (named, its size or type quoted).
    """
    images = []
    for name, img in tiles:
        label = name if len(name) <= 40 else name[:39] + "…"
        if isinstance(img, np.ndarray):
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (3, 4):
                raise ValueError(f"overlay {label!r} must be an (H, W, 3) uint8 array, got {img.dtype} {img.shape}")
            img = Image.fromarray(img)
        if not isinstance(img, Image.Image):
            raise ValueError(f"overlay {label!r} must be an image, got {type(img).__name__}")
        if max(img.size) > max_side or min(img.size) < 1:
            raise ValueError(f"overlay {label!r} is {img.size[0]} x {img.size[1]} pixels; the limit is {max_side}")
        images.append((label, img))
    if not images:
        raise ValueError("nothing to export yet: run a comparison first")
    w, h = images[0][1].size
    sheet = Image.new("RGB", (w * len(images), h + 28), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, img) in enumerate(images):
        sheet.paste(img.convert("RGB").resize((w, h)), (i * w, 28))
        draw.text((i * w + 6, 8), label, fill="black")
    return sheet
