"""What the page draws an encoded image on: its view image and, for an image the model reads as
several patch grids, one ``visualizers.PatchGrid`` per grid.

One grid (LLaVA-1.5, Qwen2.5-VL): the view is the region the grid covers
(``Encoding.geometry.crop_box``) resized to a ``side`` square, and overlays lay the grid over it.
Several grids (LLaVA-NeXT's base image and crops, LLaVA-OneVision): the view is the whole image,
its long side ``side`` pixels, and every patch is placed by the encoding's own geometry
(``Encoding.patch_box``) scaled to the view. The first grid, the base image, gets its own panel;
the others, the crops of the high-resolution view, share one (``visualizers.overlay_grids``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from PIL import Image

import pruning
from visualizers import PatchGrid, overlay_grids, overlay_selection

if TYPE_CHECKING:
    from .runtime import Encoding

__all__ = ["BASE_PANEL", "CROPS_PANEL", "draw_overlays", "encoding_view"]

BASE_PANEL = "base image"  # the panel of the first grid, which covers the whole image
CROPS_PANEL = "high-res crops"  # the panel the other grids share


def encoding_view(image: Image.Image, encoding: Encoding, side: int) -> tuple[Image.Image, tuple[PatchGrid, ...]]:
    """The view ``image`` is drawn on for ``encoding``, and its grids (none for a single-grid image).

    Args:
        image: the image as the user gave it (what ``encoding`` was made from).
        encoding: its encoding.
        side: the view's side (one grid) or long side (several), in pixels.
    """
    if len(encoding.parts) <= 1:
        box = tuple(round(v) for v in encoding.geometry.crop_box)
        return image.crop(box).resize((side, side), Image.BICUBIC), ()
    width, height = image.size
    scale = side / max(width, height)
    view = image.convert("RGB").resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BICUBIC)
    sx, sy = view.size[0] / width, view.size[1] / height  # original-image pixels -> view pixels
    grids = []
    for j, part in enumerate(encoding.parts):
        boxes = []
        for i in range(part.n_tokens):
            left, top, right, bottom = encoding.patch_box(part.offset + i)
            boxes.append((left * sx, top * sy, right * sx, bottom * sy))
        grids.append(PatchGrid(part.name, BASE_PANEL if j == 0 else CROPS_PANEL, part.inputs.grid, tuple(boxes)))
    return view, tuple(grids)


def draw_overlays(
    view: Image.Image,
    grid: tuple[int, int] | Sequence[PatchGrid],
    selections: Mapping[str, pruning.Selection],
    attention: torch.Tensor,
    colour_by: str | None,
) -> dict[str, Image.Image]:
    """Each selection's overlay on ``view``: kept patches clear, dropped ones dimmed, merged groups outlined.

    Args:
        view: the view ``encoding_view`` made.
        grid: (rows, cols) of the one patch grid, or the image's ``PatchGrid``s when it has several.
        selections: method -> its selection of the image's tokens.
        attention: (N,) the image's attention signal (for ``colour_by="attention"``).
        colour_by: None, "order" or "attention".
    """
    attention = attention.float().cpu()
    several = not (isinstance(grid, tuple) and len(grid) == 2 and all(isinstance(v, int) for v in grid))
    out = {}
    for method, sel in selections.items():
        groups = None if sel.groups is None else sel.groups.cpu()
        marks = dict(order=sel.order.cpu(), groups=groups, attention=attention, colour_by=colour_by)
        if several:
            out[method] = overlay_grids(view, sel.keep.cpu(), grid, **marks)
        else:
            out[method] = overlay_selection(view, sel.keep.cpu(), grid, **marks)
    return out
