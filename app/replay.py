"""One frame of a greedy walk's replay: what the first s picks took and suppressed, drawn on the image.

A pure function of a selection (``order`` and ``info``) and the image the model saw, for the page's
step-through; it works for any method, and shows suppression only for those that report it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw

import pruning
from visualizers import overlay_selection, patch_boxes

from .messages import brief

__all__ = ["replay_frame"]

SUPPRESSED_COLOUR = (230, 30, 30)  # the cross over tokens the current pick suppresses


def replay_frame(view: Image.Image, grid: tuple[int, int], sel: pruning.Selection, step: int) -> dict[str, Any]:
    """The walk of ``sel`` after ``step`` picks (1-based).

    The picks are ``sel.order[:step]``. A method that reports each pick's τ (``info["taus"]``) and
    the pick that suppressed each token (``info["removed_at"]``, −1 for none) also gets the tokens
    suppressed by this pick (crossed out) and by earlier ones, and this pick's τ.
    """
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
    image = overlay_selection(view, sorted(picked), grid, order=picked, colour_by="order")
    return {
        "image": _cross_out(image, grid, suppressed_now, SUPPRESSED_COLOUR),
        "pick": picked[-1],
        "picked": picked,
        "suppressed_now": suppressed_now,
        "suppressed_before": suppressed_before,
        "tau": taus[step - 1] if taus else None,
        "n_steps": len(order),
    }


def _cross_out(image: Image.Image, grid: tuple[int, int], patches: Sequence[int], colour) -> Image.Image:
    """``image`` with ``patches`` crossed out."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    boxes = patch_boxes(out.size, grid)
    for i in patches:
        x0, y0, x1, y1 = boxes[i]
        draw.line((x0, y0, x1 - 1, y1 - 1), fill=colour, width=2)
        draw.line((x0, y1 - 1, x1 - 1, y0), fill=colour, width=2)
    return out
