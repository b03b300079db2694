"""DART at layer 0: pivot tokens by feature norm, then the tokens least like each pivot."""

from __future__ import annotations

import torch

from ..geometry import row_norms
from ..registry import positive_int, register
from ..types import PruneInputs, Selection
from .attention import selection_from_order

__all__ = ["PIVOTS", "select_dart"]

PIVOTS = 4  # methods.md §11: the authors' default number of image pivot tokens


@register("dart", checks={"pivots": positive_int})
def select_dart(inputs: PruneInputs, budget: int, *, pivots: int = PIVOTS) -> Selection:
    """DART (layer-0 form): the largest-L1-norm tokens as pivots, each then taking its least similar tokens.

    Paper: "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters
    More" (DART, Wen et al., EMNLP 2025). Rule (methods.md §11), on the post-projector features F
    (what enters the LLM): P = min(``pivots``, K) pivots, the tokens of largest L1 norm ‖F_i‖₁
    (ties: lower index). The other K − P picks are shared out over the pivots in norm order,
    (K − P) // P each and one more for the first (K − P) mod P; each pivot in turn takes its count
    of the not yet picked tokens with the smallest cos(F_pivot, F_j) (ties: lower index).

    This is the pre-LLM form deployed runtimes use, not the paper's layer-K form: that one runs
    inside the LLM (pivots by the L1 norm of layer-K keys, text pivots too, similarity of layer-K
    hidden states) and is not this function. Deviations from the authors' code, deliberate: F's
    own L1 norm stands for the key norm and F's cosine for the hidden-state cosine (at layer 0 the
    RMS norm's per-token scale leaves cosines unchanged; its learned gain is a model weight the
    library does not hold); there are no text pivots; the per-pivot counts are split to keep
    exactly K, where the authors take ⌊budget / (image + text pivots)⌋ each; pivots are visited
    in norm order, where the authors iterate a Python set.

    ``order``: the pivots, then each pivot's picks (least similar first). ``info``: ``n_pivots``,
    ``pivots`` (the pivot indices), ``per_pivot`` (picks of each pivot).
    """
    f = inputs.feats.float()  # (N, D)
    n_piv = min(pivots, budget)
    l1 = torch.linalg.vector_norm(f, ord=1, dim=1)  # (N,)
    piv = torch.sort(l1, descending=True, stable=True).indices[:n_piv]  # (P,)
    unit = f / row_norms(f, "feats")[:, None]
    cos = unit.index_select(0, piv) @ unit.T  # (P, N)
    taken = torch.zeros(inputs.n_tokens, dtype=torch.bool, device=f.device)
    taken[piv] = True
    rest = budget - n_piv
    per_pivot = [rest // n_piv + (1 if i < rest % n_piv else 0) for i in range(n_piv)]
    picks = [piv]
    for i, count in enumerate(per_pivot):
        if count == 0:
            continue
        score = cos[i].masked_fill(taken, float("inf"))  # (N,)
        chosen = torch.sort(score, stable=True).indices[:count]  # least similar first
        taken[chosen] = True
        picks.append(chosen)
    order = torch.cat(picks)  # (K,)
    info = {"n_pivots": n_piv, "pivots": piv.tolist(), "per_pivot": per_pivot}
    return selection_from_order("dart", inputs, order, info)
