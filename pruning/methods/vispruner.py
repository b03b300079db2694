"""VisPruner: important tokens by attention plus diverse tokens by iterative duplicate removal."""

from __future__ import annotations

import torch

from ..geometry import cosine_matrix
from ..registry import register, unit_interval
from ..types import PruneInputs, Selection
from .attention import attention_order, selection_from_order

__all__ = ["IMPORTANT_RATIO", "MAX_DROP_PER_ROUND", "select_vispruner"]

IMPORTANT_RATIO = 0.5  # methods.md §4: r, share of the budget given to the top-attention tokens
MAX_DROP_PER_ROUND = 8  # methods.md §4: at most this many duplicates are dropped per round


def _rank_redundant(scores: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Positions of ``tokens``, most redundant first: descending ``scores``, and among equal scores
    the higher token index first, so that ties keep the lower index."""
    by_index = torch.sort(tokens, descending=True, stable=True).indices
    by_score = torch.sort(scores.index_select(0, by_index), descending=True, stable=True).indices
    return by_index.index_select(0, by_score)


@register("vispruner", checks={"r": unit_interval})
def select_vispruner(inputs: PruneInputs, budget: int, *, r: float = IMPORTANT_RATIO) -> Selection:
    """VisPruner: ⌊K·r⌋ top-attention tokens, the rest from a duplicate-removal pass.

    Paper: "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning in
    VLMs" (VisPruner, ICCV 2025). Rule (methods.md §4): K_imp = int(K·r) tokens of largest ``a``;
    the other tokens, in descending-``a`` order, form the residual. Using cosine similarity of the
    pre-projector features V, while the residual is longer than K_div = K − K_imp: split it into
    even (A) and odd (B) positions, score each A token by its largest similarity to any B token,
    drop the s = min(8, len − K_div) highest-scoring A tokens, and continue with the surviving A
    tokens by descending score followed by B. Equal scores rank the higher token index first, so
    ties keep the lower index (when s exceeds len(A), all of A is dropped).

    ``info``: ``n_important``, ``n_diverse``, ``rounds``.
    """
    k_imp = int(budget * r)
    k_div = budget - k_imp
    sorted_idx = attention_order(inputs.cls_attn)  # (N,)
    important = sorted_idx[:k_imp]
    residual = sorted_idx[k_imp:]
    cos, _ = cosine_matrix(inputs.feats_pre, "feats_pre")  # (N, N)
    rounds = 0
    while residual.shape[0] > k_div:
        drop = min(MAX_DROP_PER_ROUND, residual.shape[0] - k_div)
        a, b = residual[0::2], residual[1::2]
        if b.shape[0]:
            scores = cos.index_select(0, a).index_select(1, b).amax(dim=1)  # (|A|,)
        else:
            scores = torch.zeros(a.shape[0], device=cos.device)
        ranked = _rank_redundant(scores, a)
        residual = torch.cat([a.index_select(0, ranked[drop:]), b])
        rounds += 1
    order = torch.cat([important, residual])  # (K,)
    info = {"n_important": k_imp, "n_diverse": k_div, "rounds": rounds}
    return selection_from_order("vispruner", inputs, order, info)
