"""Downsampling: the patch grid average-pooled to K tokens, the baseline a practitioner tries first."""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import torch

from ..registry import register
from ..types import PruneInputs, Selection

__all__ = ["pooling_cells", "select_downsample"]


def _aspect_error(bands: int, per_band: int, grid: tuple[int, int]) -> Fraction:
    """How far a pooled grid of ``bands`` × ``per_band`` cells is from the patch grid's aspect: the
    ratio (≥ 1) between bands / per_band and rows / cols, exact."""
    rows, cols = grid
    x, y = bands * cols, per_band * rows
    return Fraction(max(x, y), min(x, y))


@functools.lru_cache(maxsize=64)
def pooling_cells(grid: tuple[int, int], budget: int) -> tuple[tuple[int, int, int, int], ...]:
    """The K pooling cells of a (rows, cols) grid, as (row_start, row_end, col_start, col_end), in raster order.

    Tiling: when K = p·q with p dividing rows and q dividing cols, the cells are the p × q tiles of
    (rows/p) × (cols/q) patches, which is exactly ``avg_pool2d`` with that kernel and stride. Among
    such factorisations the one whose aspect p/q is closest to rows/cols wins (ties: fewer bands).
    Otherwise the rows are cut into p bands, p = round(sqrt(K·rows/cols)) (Python rounding), clipped
    to [ceil(K/cols), min(rows, K)]; band b spans rows ⌊b·rows/p⌋ to ⌊(b+1)·rows/p⌋ and holds
    m_b = K // p cells, one more for the first K mod p bands; cell j of a band spans columns
    ⌊j·cols/m_b⌋ to ⌊(j+1)·cols/m_b⌋. Either way the K cells partition the grid: every patch lies in
    exactly one cell. Needs 1 <= budget <= rows·cols.
    """
    rows, cols = grid
    tilings = [(p, budget // p) for p in range(1, rows + 1) if budget % p == 0 and rows % p == 0]
    tilings = [(p, q) for p, q in tilings if cols % q == 0]
    if tilings:
        p, q = min(tilings, key=lambda pq: (_aspect_error(pq[0], pq[1], grid), pq[0]))
        return tuple(
            (b * rows // p, (b + 1) * rows // p, j * cols // q, (j + 1) * cols // q) for b in range(p) for j in range(q)
        )
    bands = max(math.ceil(budget / cols), min(rows, budget, max(1, round(math.sqrt(budget * rows / cols)))))
    cells = []
    for b in range(bands):
        in_band = budget // bands + (1 if b < budget % bands else 0)
        r0, r1 = b * rows // bands, (b + 1) * rows // bands
        cells.extend((r0, r1, j * cols // in_band, (j + 1) * cols // in_band) for j in range(in_band))
    return tuple(cells)


@functools.lru_cache(maxsize=64)
def _cell_of_patch(grid: tuple[int, int], budget: int) -> tuple[int, ...]:
    """(N,) the cell (output slot) of every patch, raster order."""
    rows, cols = grid
    slot = [0] * (rows * cols)
    for s, (r0, r1, c0, c1) in enumerate(pooling_cells(grid, budget)):
        for r in range(r0, r1):
            slot[r * cols + c0 : r * cols + c1] = [s] * (c1 - c0)
    return tuple(slot)


@register("downsample", merges=True)
def select_downsample(inputs: PruneInputs, budget: int) -> Selection:
    """Average pooling: the patch grid cut into K cells, each cell's tokens averaged into one.

    Baseline (no paper of its own): the spatial pooling practitioners try first, as LLaVA-style
    models do when they pool the vision grid. Rule (methods.md §9): the K cells of
    ``pooling_cells`` (an exact ``avg_pool2d`` tiling when K allows one, else K near-equal cells in
    bands following the grid's aspect); output token s = mean of F over cell s. Content-blind: no
    ties arise.

    Deliberate deviation from pooling pixels or V: the library never calls the projector, so the
    pooled tokens are means of the *post-projector* features F (``tokens_space="post_projector"``),
    not the projection of pooled V (the two differ because the projector is not linear).

    Output ``tokens`` (K, D) float32, cells in raster order. ``groups`` maps each patch to its cell;
    ``keep`` (and ``order``) hold the patches alone in their cell, which pass through unchanged.
    ``info``: ``cells`` (the (row_start, row_end, col_start, col_end) of each cell), ``tiled``
    (whether the cells are an exact ``avg_pool2d`` tiling).
    """
    device = inputs.device
    cells = pooling_cells(inputs.grid, budget)
    groups = torch.tensor(_cell_of_patch(inputs.grid, budget), dtype=torch.long, device=device)  # (N,)
    f = inputs.feats.float()  # (N, D)
    sums = torch.zeros(budget, f.shape[1], device=device).index_add_(0, groups, f)  # (K, D)
    counts = torch.bincount(groups, minlength=budget)  # (K,)
    tokens = sums / counts[:, None].to(f.dtype)
    keep = (counts.index_select(0, groups) == 1).nonzero().flatten()  # patches alone in their cell
    tiled = len({(r1 - r0, c1 - c0) for r0, r1, c0, c1 in cells}) == 1  # equal cells partitioning the grid
    info = {"n_tokens": inputs.n_tokens, "cells": list(cells), "tiled": tiled}
    return Selection(
        method="downsample",
        budget=budget,
        keep=keep,
        order=keep.clone(),
        tokens=tokens,
        groups=groups,
        tokens_space="post_projector",
        info=info,
    )
