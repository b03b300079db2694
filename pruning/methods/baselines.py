"""Reference baselines: a seeded random subset and an evenly spaced spatial grid."""

from __future__ import annotations

import functools
import math

import torch

from ..registry import register
from ..types import PruneInputs, Selection
from .attention import selection_from_order

__all__ = ["select_random", "select_uniform", "uniform_grid"]


@register("random")
def select_random(
    inputs: PruneInputs, budget: int, *, seed: int = 0, generator: torch.Generator | None = None
) -> Selection:
    """K tokens drawn uniformly without replacement.

    The draw comes from ``generator`` when given (a CPU ``torch.Generator``), else from a fresh
    generator seeded with ``seed``: the same seed gives the same tokens on every device.
    """
    info = {"seed": seed if generator is None else None}
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    elif not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator, got {generator!r}")
    order = torch.randperm(inputs.n_tokens, generator=generator)[:budget].to(inputs.device)
    return selection_from_order("random", inputs, order, info)


@functools.lru_cache(maxsize=64)
def uniform_grid(grid: tuple[int, int], budget: int) -> tuple[int, ...]:
    """Exactly ``budget`` raster indices spread evenly over a (rows, cols) grid.

    The picks form k_r rows of points (k_r ≈ sqrt(K·rows/cols)); row bands and the points within
    each row sit at the centres of equal intervals. Needs budget <= rows·cols.
    """
    rows, cols = grid
    k_rows = max(math.ceil(budget / cols), min(rows, max(1, round(math.sqrt(budget * rows / cols)))))
    picks = []
    for band in range(k_rows):
        y = int((band + 0.5) * rows / k_rows)
        in_row = budget // k_rows + (1 if band < budget % k_rows else 0)
        picks.extend(y * cols + int((j + 0.5) * cols / in_row) for j in range(in_row))
    return tuple(picks)


@register("uniform")
def select_uniform(inputs: PruneInputs, budget: int) -> Selection:
    """An evenly spaced spatial grid of K patches, ignoring the image content."""
    order = torch.tensor(uniform_grid(inputs.grid, budget), dtype=torch.long, device=inputs.device)
    return Selection(
        method="uniform",
        budget=budget,
        keep=order,
        order=order.clone(),
        info={"n_tokens": inputs.n_tokens, "grid": inputs.grid},
    )
