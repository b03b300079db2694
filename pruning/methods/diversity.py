"""Diversity-based selection (DivPrune): a max–min diverse subset of the projected features."""

from __future__ import annotations

import torch

from ..geometry import cosine_matrix
from ..registry import register
from ..types import PruneInputs, Selection
from .attention import selection_from_order

__all__ = ["cosine_distance", "maxmin_greedy", "select_diversity"]


def cosine_distance(feats: torch.Tensor, name: str = "feats") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dist = 1 − cos(F_i, F_j) (N, N), the cosines (N, N) and the row norms (N,), float32."""
    cos, norms = cosine_matrix(feats, name)
    return 1.0 - cos, cos, norms


def maxmin_greedy(dist: torch.Tensor, budget: int, start: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy max–min diversity over a distance matrix.

    Args:
        dist: (N, N) symmetric distances.
        budget: K, the total number of picks (including ``start``).
        start: optional (M,) indices already picked, M <= K. When empty, the first pick is the
            token whose nearest other token is farthest: the largest second-smallest value of its
            column (the smallest is its own zero distance).
    Returns:
        (K,) indices in pick order; each later pick maximises the minimum distance to the picked
        set, ties toward the lower index. No host synchronisation inside the loop.
    """
    n = dist.shape[0]
    picks = []
    if start is None or start.numel() == 0:
        if n > 1:
            second = torch.topk(dist, 2, dim=0, largest=False).values[1]  # (N,)
            first = torch.argmax(second).view(1)
        else:
            first = torch.zeros(1, dtype=torch.long, device=dist.device)
        picks.append(first)
        min_dist = dist.index_select(0, first).squeeze(0).clone()  # (N,)
        min_dist.index_fill_(0, first, float("-inf"))
    else:
        picks.append(start)
        min_dist = dist.index_select(0, start).amin(dim=0)  # (N,)
        min_dist.index_fill_(0, start, float("-inf"))
    for _ in range(budget - picks[0].shape[0]):
        nxt = torch.argmax(min_dist).view(1)
        picks.append(nxt)
        torch.minimum(min_dist, dist.index_select(0, nxt).squeeze(0), out=min_dist)
        min_dist.index_fill_(0, nxt, float("-inf"))
    return torch.cat(picks)


@register("diversity", replayable=True)
def select_diversity(inputs: PruneInputs, budget: int) -> Selection:
    """DivPrune: max–min diverse subset under cosine distance of the projected features F.

    Paper: "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models" (CVPR 2025).
    Rule (methods.md §2): Dist = 1 − cos(F_i, F_j); first pick maximises the distance to its
    nearest other token; each next pick maximises its minimum distance to the picked set. Ties go
    to the lower token index. A token is never picked twice, even when its distance to the picked
    set is as small as a picked token's own (duplicated features).
    """
    dist, _, _ = cosine_distance(inputs.feats)  # (N, N)
    order = maxmin_greedy(dist, budget)
    return selection_from_order("diversity", inputs, order)
