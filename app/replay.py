"""One frame of a greedy walk's replay: what the first s picks took and suppressed, drawn on the image.

A pure function of a selection (``order`` and ``info``) and the image the model saw, for the page's
step-through; it works for any method, and shows suppression only for those that report it. An
image the model reads as several patch grids (LLaVA-NeXT, LLaVA-OneVision) is drawn as
``visualizers.overlay_grids`` draws it, and the walk steps through the picks of every grid in the
selection's own order (grid after grid, each in its pick order). A selection an in-LLM method made
while answering is refused: its order ranks tokens inside the LLM, not a walk before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw

import pruning
from visualizers import PatchGrid, grid_sheet, overlay_grids, overlay_selection, patch_boxes

from .messages import brief

__all__ = ["replay_frame"]

SUPPRESSED_COLOUR = (230, 30, 30)  # the cross over tokens the current pick suppresses


def replay_frame(
    view: Image.Image, grid: tuple[int, int] | Sequence[PatchGrid], sel: pruning.Selection, step: int
) -> dict[str, Any]:
    """The walk of ``sel`` after ``step`` picks (1-based).

    The picks are ``sel.order[:step]``. A method that reports each pick's τ (``info["taus"]``) and
    the pick that suppressed each token (``info["removed_at"]``, −1 for none) also gets the tokens
    suppressed by this pick (crossed out) and by earlier ones, and this pick's τ.

    Args:
        view: the image the grid covers (one grid), or the whole image (several).
        grid: (rows, cols) of the one patch grid, or one ``PatchGrid`` per grid of an image made of
            several (token indices then run grid after grid).
        sel: the selection, in the same numbering.
        step: how many picks to show.
    Raises:
        ValueError: for a step outside 1..len(order), a bad grid, or an in-LLM method's selection.
    Returns:
        ``image``, ``pick`` (the last pick's token index) and where it lies (``pick_grid``: its
        grid's name, None for one grid; ``pick_row``, ``pick_col`` inside that grid; ``place``, the
        three in words), ``picked``, ``suppressed_now``, ``suppressed_before``, ``tau`` and ``n_steps``.
    """
    if sel.method in pruning.list_methods("in-llm"):
        raise ValueError(f"{sel.method} prunes inside the LLM, from the question: it has no pre-LLM walk to replay")
    grids = None if _is_shape(grid) else list(grid)
    if grids is not None and not (grids and all(isinstance(g, PatchGrid) for g in grids)):
        raise ValueError(f"grid must be (rows, cols) or a non-empty sequence of PatchGrid, got {brief(grid)}")
    order = sel.order.cpu().tolist()
    if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= len(order):
        raise ValueError(f"step must be an integer from 1 to {len(order)}, got {brief(step)}")
    picked = order[:step]
    removed_at = sel.info.get("removed_at")
    suppressed_now, suppressed_before = [], []
    if removed_at is not None:
        for j, s in enumerate(removed_at.tolist()):
            if 0 <= s < step - 1:
                suppressed_before.append(j)
            elif s == step - 1:
                suppressed_now.append(j)
    taus = sel.info.get("taus")
    if grids is None:
        image = overlay_selection(view, sorted(picked), grid, order=picked, colour_by="order")
        boxes = patch_boxes(image.size, grid)
        name, (row, col) = None, divmod(picked[-1], grid[1])
    else:
        image = overlay_grids(view, sorted(picked), grids, order=picked, colour_by="order")
        boxes = grid_sheet(view.size, grids).boxes
        name, (row, col) = _place(grids, picked[-1])
    return {
        "image": _cross_out(image, boxes, suppressed_now, SUPPRESSED_COLOUR),
        "pick": picked[-1],
        "pick_grid": name,
        "pick_row": row,
        "pick_col": col,
        "place": f"{name}, row {row}, col {col}" if name else f"row {row}, col {col}",
        "picked": picked,
        "suppressed_now": suppressed_now,
        "suppressed_before": suppressed_before,
        "tau": taus[step - 1] if taus else None,
        "n_steps": len(order),
    }


def _is_shape(grid: Any) -> bool:
    return isinstance(grid, tuple) and len(grid) == 2 and all(isinstance(v, int) for v in grid)


def _place(grids: Sequence[PatchGrid], index: int) -> tuple[str, tuple[int, int]]:
    """The grid token ``index`` lies in, and its (row, col) there."""
    local = index
    for g in grids:
        if local < g.n_tokens:
            return g.name, divmod(local, g.grid[1])
        local -= g.n_tokens
    raise ValueError(f"token {index} lies outside the image's {len(grids)} grids")


def _cross_out(
    image: Image.Image, boxes: Sequence[tuple[int, int, int, int]], patches: Sequence[int], colour
) -> Image.Image:
    """``image`` with the ``boxes`` of ``patches`` crossed out."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    for i in patches:
        x0, y0, x1, y1 = boxes[i]
        draw.line((x0, y0, x1 - 1, y1 - 1), fill=colour, width=2)
        draw.line((x0, y1 - 1, x1 - 1, y0), fill=colour, width=2)
    return out
