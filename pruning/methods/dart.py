"""DART: pivot tokens by norm, then the tokens least like each pivot; at layer 0 (before the LLM) and at layer K."""

from __future__ import annotations

import torch

from ..geometry import row_norms
from ..registry import non_negative_int, positive_int, register
from ..types import LayerInputs, PruneInputs, Selection
from .attention import selection_from_order

__all__ = ["DART_LAYER", "PIVOTS", "TEXT_PIVOTS", "select_dart", "select_dart_llm"]

PIVOTS = 4  # methods.md §11, §14: the authors' default number of image pivot tokens
TEXT_PIVOTS = 4  # methods.md §14: the authors' default number of text pivot tokens (layer-K form)
DART_LAYER = 2  # methods.md §14: the authors' default pruning layer K


def _by_l1(x: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` rows of largest L1 norm, largest first, ties toward the lower index. (n, d) -> (count,)."""
    l1 = torch.linalg.vector_norm(x.float(), ord=1, dim=1)  # (n,)
    return torch.sort(l1, descending=True, stable=True).indices[:count]


def _pivot_walk(
    unit: torch.Tensor, pivot_units: torch.Tensor, piv: torch.Tensor, budget: int
) -> tuple[torch.Tensor, list[int]]:
    """Every pivot in turn takes its share of the other picks: the not yet picked tokens least like it.

    Args:
        unit: (N, D) unit-norm rows of the candidate tokens.
        pivot_units: (P', D) unit-norm rows of every pivot, in visiting order (image pivots first).
        piv: (P,) the image pivots' indices, already picked.
        budget: K; the K − P other picks are shared out over the P' pivots, (K − P) // P' each and
            one more for the first (K − P) mod P'.
    Returns:
        The pick order (K,) (the image pivots, then each pivot's picks, least similar first) and
        each pivot's count.
    """
    cos = pivot_units @ unit.T  # (P', N)
    taken = torch.zeros(unit.shape[0], dtype=torch.bool, device=unit.device)
    taken[piv] = True
    rest, n_all = budget - piv.shape[0], pivot_units.shape[0]
    per_pivot = [rest // n_all + (1 if i < rest % n_all else 0) for i in range(n_all)]
    picks = [piv]
    for i, count in enumerate(per_pivot):
        if count == 0:
            continue
        score = cos[i].masked_fill(taken, float("inf"))  # (N,)
        chosen = torch.sort(score, stable=True).indices[:count]  # least similar first
        taken[chosen] = True
        picks.append(chosen)
    return torch.cat(picks), per_pivot


@register("dart", checks={"pivots": positive_int})
def select_dart(inputs: PruneInputs, budget: int, *, pivots: int = PIVOTS) -> Selection:
    """DART (layer-0 form): the largest-L1-norm tokens as pivots, each then taking its least similar tokens.

    Paper: "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters
    More" (DART, Wen et al., EMNLP 2025). Rule (methods.md §11), on the post-projector features F
    (what enters the LLM): P = min(``pivots``, K) pivots, the tokens of largest L1 norm ‖F_i‖₁
    (ties: lower index). The other K − P picks are shared out over the pivots in norm order,
    (K − P) // P each and one more for the first (K − P) mod P; each pivot in turn takes its count
    of the not yet picked tokens with the smallest cos(F_pivot, F_j) (ties: lower index).

    This is the pre-LLM form deployed runtimes use; the paper's layer-K form (pivots by the L1 norm
    of layer-K keys, text pivots too, similarity of layer-K hidden states) runs inside the LLM:
    ``dart-llm`` (``select_dart_llm``). Deviations from the authors' code, deliberate: F's
    own L1 norm stands for the key norm and F's cosine for the hidden-state cosine (at layer 0 the
    RMS norm's per-token scale leaves cosines unchanged; its learned gain is a model weight the
    library does not hold); there are no text pivots; the per-pivot counts are split to keep
    exactly K, where the authors take ⌊budget / (image + text pivots)⌋ each; pivots are visited
    in norm order, where the authors iterate a Python set.

    ``order``: the pivots, then each pivot's picks (least similar first). ``info``: ``n_pivots``,
    ``pivots`` (the pivot indices), ``per_pivot`` (picks of each pivot).
    """
    f = inputs.feats.float()  # (N, D)
    piv = _by_l1(f, min(pivots, budget))  # (P,)
    unit = f / row_norms(f, "feats")[:, None]
    order, per_pivot = _pivot_walk(unit, unit.index_select(0, piv), piv, budget)  # (K,)
    info = {"n_pivots": piv.shape[0], "pivots": piv.tolist(), "per_pivot": per_pivot}
    return selection_from_order("dart", inputs, order, info)


@register(
    "dart-llm",
    stage="in-llm",
    needs=("keys", "hidden", "text_keys", "text_hidden"),
    checks={"layer": positive_int, "pivots": positive_int, "text_pivots": non_negative_int},
)
def select_dart_llm(
    inputs: LayerInputs, budget: int, *, layer: int = DART_LAYER, pivots: int = PIVOTS, text_pivots: int = TEXT_PIVOTS
) -> Selection:
    """DART (the paper's layer-K form): pivots by key norm in the LLM, each taking its least similar visual tokens.

    Paper: "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters
    More" (DART, Wen et al., EMNLP 2025). Rule (methods.md §14), on the language model's state
    leaving decoder layer K − 1 (``LayerInputs``; K = ``layer``, the authors' default 2): image
    pivots, the P = min(``pivots``, K) visual tokens whose keys have the largest L1 norm; text
    pivots, the P_t = min(``text_pivots``, T) prompt tokens after the image with the largest key L1
    norm (ties: lower index). The other K − P picks are shared out over the P + P_t pivots (image
    pivots in norm order, then text pivots in norm order), (K − P) // (P + P_t) each and one more
    for the first (K − P) mod (P + P_t); each pivot in turn takes its count of the not yet picked
    visual tokens with the smallest cosine between its hidden state and theirs (ties: lower index).
    Text pivots are never kept: the budget counts visual tokens only.

    Deliberate deviations from the authors' code: per-pivot counts sum to exactly K (the authors
    take ⌊budget / (P + P_t)⌋ each, keeping P more than that); pivots are visited in norm order
    (the authors iterate a Python set); key norms are over the key heads (the authors' keys repeat
    each key head for its query heads, which scales every norm alike).

    ``order``: the image pivots, then each pivot's picks. ``info``: ``layer``, ``n_pivots``,
    ``pivots``, ``text_pivots`` (indices among the T text tokens), ``per_pivot``.
    """
    piv = _by_l1(inputs.keys, min(pivots, budget))  # (P,)
    text_piv = _by_l1(inputs.text_keys, min(text_pivots, inputs.text_keys.shape[0]))  # (P_t,)
    h, th = inputs.hidden.float(), inputs.text_hidden.float()  # (N, D), (T, D)
    unit = h / row_norms(h, "hidden")[:, None]
    text_unit = th.index_select(0, text_piv)
    text_unit = text_unit / row_norms(text_unit, "text_hidden")[:, None]
    pivot_units = torch.cat([unit.index_select(0, piv), text_unit])  # (P + P_t, D)
    order, per_pivot = _pivot_walk(unit, pivot_units, piv, budget)  # (K,)
    info = {
        "layer": layer,
        "n_pivots": piv.shape[0],
        "pivots": piv.tolist(),
        "text_pivots": text_piv.tolist(),
        "per_pivot": per_pivot,
    }
    return selection_from_order("dart-llm", inputs, order, info)
