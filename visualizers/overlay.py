"""Kept and dropped patches drawn over the image the model saw.

One patch grid over the image (LLaVA-1.5, Qwen2.5-VL): ``overlay_selection``. An image the model
reads as several grids (LLaVA-NeXT's base image and crops, LLaVA-OneVision): ``overlay_grids``,
which lays the grids out in panels (``grid_sheet``) and draws every grid's patches where they lie.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .palette import group_colour

__all__ = ["GridSheet", "PatchGrid", "SheetPanel", "grid_sheet", "overlay_grids", "overlay_selection", "patch_boxes"]

COLOUR_MODES = (None, "order", "attention")
TITLE_HEIGHT = 20  # pixels above each panel of a grid sheet, for its title
TITLE_FONT_SIZE = 13  # pixels, Pillow's own font
PANEL_GAP = 8  # pixels between two panels
PADDING_FILL = (128, 128, 128)  # a panel's area outside the image: the processor's padding
GRID_BORDER = (0, 0, 0)  # the outline of each grid in a panel holding several

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class PatchGrid:
    """One patch grid of an image the model reads as several, as drawing needs it.

    Attributes:
        name: the grid's label (``"base"``, ``"crop 0,1"``).
        panel: the title of the panel it is drawn in; grids with the same panel are drawn together
            on one copy of the image (the crops of a high-resolution view tile it).
        grid: (rows, cols); patch ``i`` sits at row ``i // cols``, column ``i % cols``.
        boxes: every patch's (left, top, right, bottom), raster order, in the pixels of the image it
            is drawn on; boxes may reach past the image (a crop's padding).
    """

    name: str
    panel: str
    grid: tuple[int, int]
    boxes: tuple[tuple[float, float, float, float], ...]

    def __post_init__(self) -> None:
        rows, cols = self.grid
        if rows < 1 or cols < 1:
            raise ValueError(f"grid {self.name!r} must have at least one row and column, got {self.grid}")
        if len(self.boxes) != rows * cols:
            raise ValueError(f"grid {self.name!r} has {len(self.boxes)} boxes for its {rows}x{cols} patches")
        bad = [b for b in self.boxes if len(b) != 4 or not (b[0] < b[2] and b[1] < b[3])]
        if bad:
            raise ValueError(f"grid {self.name!r} has boxes that are not (left, top, right, bottom): {bad[:3]}")

    @property
    def n_tokens(self) -> int:
        return len(self.boxes)


@dataclass(frozen=True)
class SheetPanel:
    """One panel of a grid sheet: its title, the area it draws (``canvas``: the image and the padding
    its grids reach into), where the image lies inside it, and the indices of its grids."""

    title: str
    canvas: Box
    image: Box
    grids: tuple[int, ...]


@dataclass(frozen=True)
class GridSheet:
    """Where a multi-grid drawing puts everything, in the sheet's pixels.

    Attributes:
        size: (width, height) of the sheet.
        panels: the panels, in the order their grids first appear.
        boxes: every token's pixel box, in the image's numbering (grid after grid, raster inside each).
        spans: each grid's token indices.
    """

    size: tuple[int, int]
    panels: tuple[SheetPanel, ...]
    boxes: tuple[Box, ...]
    spans: tuple[range, ...]

    @property
    def n_tokens(self) -> int:
        return len(self.boxes)

    def extent(self, grid: int) -> Box:
        """The pixel box grid ``grid`` covers."""
        return _bounds([self.boxes[i] for i in self.spans[grid]])

    def paste(self, image: Image.Image) -> Image.Image:
        """The sheet with nothing marked: each panel's titled copy of ``image`` on its padding."""
        out = Image.new("RGB", self.size, "white")
        draw = ImageDraw.Draw(out)
        rgb = image.convert("RGB")
        for panel in self.panels:
            draw.rectangle(_inclusive(panel.canvas), fill=PADDING_FILL)
            x0, y0, x1, y1 = panel.image
            out.paste(rgb.resize((x1 - x0, y1 - y0), Image.BICUBIC), (x0, y0))
            at = (panel.canvas[0] + 2, panel.canvas[1] - TITLE_HEIGHT + 2)
            draw.text(at, panel.title, fill="black", font=ImageFont.load_default(size=TITLE_FONT_SIZE))
        return out


def _bounds(boxes: Sequence[Sequence[float]]) -> tuple:
    """The smallest (left, top, right, bottom) holding every box."""
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def _inclusive(box: Box) -> Box:
    """PIL's rectangle of the pixels in [x0, x1) x [y0, y1)."""
    x0, y0, x1, y1 = box
    return (x0, y0, x1 - 1, y1 - 1)


def grid_sheet(image_size: tuple[int, int], grids: Sequence[PatchGrid], side: int | None = None) -> GridSheet:
    """Lay out the panels of an image made of several patch grids.

    Every panel shows the whole image at one common scale, on the padding its grids reach into, so
    a patch of one panel and the same place in another line up by eye; the largest panel is
    ``side`` pixels on its long side (default: the image's long side). Panels sit side by side, or
    one above the other when they are wider than tall, so the sheet stays near square.

    Args:
        image_size: (width, height) of the image the grids' boxes are in.
        grids: the grids in the image's token order.
        side: the long side of the largest panel, in pixels.
    """
    w, h = image_size
    if w < 1 or h < 1:
        raise ValueError(f"image size must be positive, got {image_size}")
    grids = list(grids)
    if not grids or not all(isinstance(g, PatchGrid) for g in grids):
        raise ValueError(f"grids must be a non-empty sequence of PatchGrid, got {type(grids).__name__}")
    side = max(w, h) if side is None else side
    if isinstance(side, bool) or not isinstance(side, int) or side < 1:
        raise ValueError(f"side must be a positive number of pixels, got {side!r}")
    titles = list(dict.fromkeys(g.panel for g in grids))
    members = [tuple(j for j, g in enumerate(grids) if g.panel == t) for t in titles]
    # each panel draws the image and the padding its grids reach into, in image pixels
    unions = [
        _bounds([(0.0, 0.0, float(w), float(h)), *(b for j in member for b in grids[j].boxes)]) for member in members
    ]
    widths, heights = [u[2] - u[0] for u in unions], [u[3] - u[1] for u in unions]
    scale = side / max(max(widths), max(heights))
    stacked = max(widths) > max(heights)
    panels, mappers, at = [], [], 0
    for title, member, union in zip(titles, members, unions):
        ox, oy = (0, at + TITLE_HEIGHT) if stacked else (at, TITLE_HEIGHT)
        x_of = lambda x, ox=ox, u=union: round(ox + (x - u[0]) * scale)
        y_of = lambda y, oy=oy, u=union: round(oy + (y - u[1]) * scale)
        mappers.append((x_of, y_of))
        canvas = (ox, oy, max(ox + 1, x_of(union[2])), max(oy + 1, y_of(union[3])))
        image = (x_of(0.0), y_of(0.0), max(x_of(0.0) + 1, x_of(w)), max(y_of(0.0) + 1, y_of(h)))
        panels.append(SheetPanel(title, canvas, image, member))
        at = (canvas[3] if stacked else canvas[2]) + PANEL_GAP
    boxes, spans, start = [], [], 0
    panel_of = {j: p for p, member in enumerate(members) for j in member}
    for j, g in enumerate(grids):
        x_of, y_of = mappers[panel_of[j]]
        for x0, y0, x1, y1 in g.boxes:
            px0, py0 = x_of(x0), y_of(y0)
            boxes.append((px0, py0, max(px0 + 1, x_of(x1)), max(py0 + 1, y_of(y1))))
        spans.append(range(start, start + g.n_tokens))
        start += g.n_tokens
    width = max(p.canvas[2] for p in panels)
    height = max(p.canvas[3] for p in panels)
    return GridSheet((width, height), tuple(panels), tuple(boxes), tuple(spans))


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
    _check_style(image, colour_by, dim)
    rows, cols = grid
    n = rows * cols
    inside, of = f"the {rows}x{cols} grid", f"a grid of {n} patches"
    marks = _checked_marks(keep, order, groups, attention, colour_by, n, inside, of)
    rgb = image.convert("RGB")
    whole = (0, 0, rgb.size[0], rgb.size[1])
    return _mark(rgb, patch_boxes(image.size, grid), marks, colour_by, dim, outline, dimmed=[whole], spans=[range(n)])


def overlay_grids(
    image: Image.Image,
    keep,
    grids: Sequence[PatchGrid],
    *,
    order=None,
    groups=None,
    attention=None,
    colour_by: str | None = None,
    dim: float = 0.25,
    outline: tuple[int, int, int] | None = (255, 255, 255),
    side: int | None = None,
) -> Image.Image:
    """Every grid's kept patches on the image, for an image the model reads as several patch grids.

    The grids are drawn in panels (``grid_sheet``), each panel a titled copy of the image at one
    common scale: on LLaVA-NeXT and LLaVA-OneVision the base image's grid covers the whole image and
    gets its own panel ("base image"), and the crops of the high-resolution view, which tile the
    image, share the other ("high-res crops"), each crop's patches where they lie on the image and
    each crop outlined in black. In every panel a dropped patch is dimmed, a kept one clear and
    outlined, a merged group's members outlined in its colour; the padding the crops reach into is
    grey. ``colour_by="order"`` ramps over the whole pick order (grid after grid), ``"attention"``
    over each grid's own range, since each grid has its own signal.

    Args:
        image: the image the grids' boxes are in, any mode (the whole image, not one crop).
        keep: kept token indices in the image's numbering (grid after grid, raster inside each).
        grids: one ``PatchGrid`` per grid, in that order.
        order, groups, attention, colour_by, dim, outline: as ``overlay_selection``, over all
            N tokens of the image.
        side: the long side of the largest panel (default: the image's long side).
    Returns:
        A new RGB image of ``grid_sheet(image.size, grids, side).size``.
    """
    _check_style(image, colour_by, dim)
    sheet = grid_sheet(image.size, grids, side)
    n = sheet.n_tokens
    marks = _checked_marks(keep, order, groups, attention, colour_by, n, f"the image's N = {n} tokens", f"{n} tokens")
    borders = [sheet.extent(j) for panel in sheet.panels if len(panel.grids) > 1 for j in panel.grids]
    dimmed = [panel.canvas for panel in sheet.panels]
    return _mark(sheet.paste(image), sheet.boxes, marks, colour_by, dim, outline, dimmed, sheet.spans, borders)


@dataclass(frozen=True)
class _Marks:
    keep: list[int]
    order: list[int]
    groups: list[int]
    attention: list[float]


def _check_style(image: Any, colour_by: str | None, dim: float) -> None:
    if not isinstance(image, Image.Image):
        raise ValueError(f"image must be a PIL image, got {type(image).__name__}")
    if colour_by not in COLOUR_MODES:
        raise ValueError(f"colour_by must be one of {COLOUR_MODES}, got {colour_by!r}")
    if not 0.0 <= dim <= 1.0:
        raise ValueError(f"dim must lie in [0, 1], got {dim}")


def _checked_marks(keep, order, groups, attention, colour_by, n: int, inside: str, of: str) -> _Marks:
    """The selection's lists, each checked against ``n`` tokens (``inside`` and ``of`` word them)."""
    keep = _as_list(keep, "keep")
    bad = [i for i in keep if not isinstance(i, int) or not 0 <= i < n]
    if bad:
        raise ValueError(f"keep holds indices outside {inside}: {bad[:5]}")
    order = _as_list(order, "order")
    bad = [i for i in order if not isinstance(i, int) or not 0 <= i < n]
    if bad:
        raise ValueError(f"order holds indices outside {inside}: {bad[:5]}")
    groups = _as_list(groups, "groups")
    if groups and len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {of}")
    values = _as_list(attention, "attention") if colour_by == "attention" else []
    if colour_by == "attention" and len(values) != n:
        raise ValueError(f"attention has {len(values)} values for {of}")
    return _Marks(keep, order, groups, values)


def _mark(
    base: Image.Image,
    boxes: Sequence[Box],
    marks: _Marks,
    colour_by: str | None,
    dim: float,
    outline: tuple[int, int, int] | None,
    dimmed: Sequence[Box],
    spans: Sequence[range],
    borders: Sequence[Box] = (),
) -> Image.Image:
    """``base`` (RGB) with the pixels of ``dimmed`` dimmed except the kept and merged patches' ``boxes``,
    then the tints (``attention`` scaled within each of ``spans``), the ``borders`` and the outlines."""
    keep, groups = marks.keep, marks.groups
    pixels = np.asarray(base, dtype=np.float32)
    merged = {i for i, g in enumerate(groups) if g >= 0} if groups else set()
    factor = np.ones((pixels.shape[0], pixels.shape[1], 1), dtype=np.float32)
    for x0, y0, x1, y1 in dimmed:
        factor[y0:y1, x0:x1] = dim
    for i in set(keep) | merged:
        x0, y0, x1, y1 = boxes[i]
        factor[y0:y1, x0:x1] = 1.0
    out = Image.fromarray((pixels * factor).clip(0, 255).astype(np.uint8))

    tint = {}
    if colour_by == "order":
        order = marks.order or keep
        tint = {idx: _ramp(rank / max(1, len(order) - 1)) for rank, idx in enumerate(order)}
    elif colour_by == "attention":
        values, kept = marks.attention, set(keep)
        for span in spans:
            lo, hi = min(values[span.start : span.stop]), max(values[span.start : span.stop])
            width = (hi - lo) or 1.0
            tint |= {i: _ramp(1.0 - (values[i] - lo) / width) for i in span if i in kept}
        tint = {i: tint[i] for i in keep}
    if tint:
        layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        for i, rgb in tint.items():
            draw.rectangle(boxes[i], fill=(*rgb, 110))
        out = Image.alpha_composite(out.convert("RGBA"), layer).convert("RGB")

    draw = ImageDraw.Draw(out)
    for box in borders:
        draw.rectangle(_inclusive(box), outline=GRID_BORDER, width=1)
    if outline is not None:
        for i in keep:
            draw.rectangle(_inclusive(boxes[i]), outline=outline, width=1)
    for i in sorted(merged - set(keep)):
        draw.rectangle(_inclusive(boxes[i]), outline=group_colour(groups[i]), width=2)
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
