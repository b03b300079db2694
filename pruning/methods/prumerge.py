"""LLaVA-PruMerge+: attention outliers plus spatial samples, each absorbing its key-nearest neighbours."""

from __future__ import annotations

import torch

from ..geometry import row_norms
from ..registry import register
from ..types import PruneInputs, Selection
from .attention import attention_order

__all__ = ["IQR_FACTOR", "NEIGHBOURS", "SPATIAL_DIVISOR", "iqr_outliers", "prumerge_plus_keep", "select_prumerge_plus"]

IQR_FACTOR = 1.5  # methods.md §10: outliers lie above Q3 + 1.5 · IQR of the attention
SPATIAL_DIVISOR = 3  # methods.md §10: adaptive spatial stride = int(int(1 / ratio) / 3)
NEIGHBOURS = 32  # methods.md §10: each kept token absorbs its 32 key-nearest tokens


def iqr_outliers(cls_attn: torch.Tensor) -> tuple[int, float]:
    """How many tokens have attention above Q3 + 1.5 · (Q3 − Q1), and that bound.

    Quartiles by linear interpolation (numpy's ``percentile`` default), in float64. (N,) -> int, float.
    """
    a = cls_attn.double()
    q1, q3 = torch.quantile(a, torch.tensor([0.25, 0.75], dtype=torch.float64, device=a.device)).tolist()
    bound = q3 + IQR_FACTOR * (q3 - q1)
    return int((a > bound).sum()), bound


def prumerge_plus_keep(inputs: PruneInputs, budget: int, adaptive: bool) -> tuple[torch.Tensor, dict]:
    """The kept patches in pick order (attention picks, then spatial picks) and the counts behind them.

    Adaptive: m = the IQR outliers (at least 1), ratio = m / N; the int(N · ratio) top-attention
    patches, then every s-th patch of 0 … N − 2 not already kept, s = max(1, int(int(1 / ratio) / 3)).
    Fixed: K − 1 patches (the residual token is the K-th output): the ⌈(K − 1)/2⌉ top-attention
    patches, then ⌊(K − 1)/2⌋ patches evenly strided through the others in index order, pick j at
    position ⌊(2j + 1)·R / (2·count)⌋ of those R others (half a stride in, as the authors' fixed
    branch starts).
    """
    n = inputs.n_tokens
    device = inputs.device
    by_attention = attention_order(inputs.cls_attn)  # (N,)
    if adaptive:
        n_outliers, bound = iqr_outliers(inputs.cls_attn)
        ratio = max(n_outliers, 1) / n
        n_att = int(n * ratio)  # the authors' float product: one less than m for some N
        stride = max(1, int(int(1 / ratio) / SPATIAL_DIVISOR))
        att = by_attention[:n_att]
        taken = torch.zeros(n, dtype=torch.bool, device=device)
        taken[att] = True
        grid_pts = torch.arange(0, n - 1, stride, device=device)
        spatial = grid_pts[~taken[grid_pts]]
        counts = {"n_outliers": n_outliers, "iqr_bound": bound, "spatial_stride": stride}
    else:
        n_keep = budget - 1
        n_att = (n_keep + 1) // 2
        n_sp = n_keep - n_att
        att = by_attention[:n_att]
        taken = torch.zeros(n, dtype=torch.bool, device=device)
        taken[att] = True
        others = (~taken).nonzero().flatten()  # (R,) index order
        spatial = others[:0]
        if n_sp:
            pos = (2 * torch.arange(n_sp, device=device) + 1) * others.shape[0] // (2 * n_sp)  # (c,)
            spatial = others[pos]
        counts = {}
    order = torch.cat([att, spatial])
    return order, {"adaptive": adaptive, "n_attention": att.shape[0], "n_spatial": spatial.shape[0], **counts}


@register("prumerge+", needs=("keys",), merges=True)
def select_prumerge_plus(inputs: PruneInputs, budget: int, *, adaptive: bool = True) -> Selection:
    """LLaVA-PruMerge+: IQR-outlier and spatial tokens, each merged with its key-nearest neighbours.

    Paper: "LLaVA-PruMerge: Adaptive Token Reduction for Efficient Large Multimodal Models"
    (Shang et al. 2024), the PruMerge+ variant. Rule (methods.md §10): keep the patches of
    ``prumerge_plus_keep``; each kept patch i becomes V_i + Σ_j a_j · V_j over its 32 nearest other
    patches by cosine of the keys ``Kv`` (kept ones included; the weights are raw attention, not
    renormalised); one residual token Σ_j a_j · V_j over the patches not kept is appended.

    ``adaptive=True`` (the authors' inference setting) ignores the budget below N: the count comes
    from the image, 1 + the kept patches, and ``budget`` reports it. ``adaptive=False`` keeps
    exactly K outputs (K − 1 merged patches + the residual token), so it can sit in a budget sweep.

    Ties go to the lower token index (attention order, neighbour order). Deviations from the
    authors' code, deliberate: ``a`` and ``Kv`` are methods.md's (head-averaged, feature layer) where
    the authors use one full-width head of the tower's last layer; no outliers (uniform attention,
    where the authors divide by zero) counts as one; the spatial stride is at least 1; the
    spatial range 0 … N − 2 is the authors' ``range(0, 575)`` for any N; outputs are in raster
    order (methods.md), the residual token last, where the authors emit attention order.

    Output ``tokens`` (K, C), pre-projector. ``keep`` holds the kept patches (their own feature is
    in their token); ``groups`` maps a kept patch to its slot and every other patch to the slot of
    the kept token that absorbed it with the highest key cosine (ties: lower slot), or to the
    residual slot when none did. Merging is soft, so ``info["neighbours"]`` (kept, min(32, N − 1))
    lists every kept token's absorbed patches exactly. ``info`` also has ``adaptive``,
    ``n_attention``, ``n_spatial``, ``requested_budget``, and for adaptive runs ``n_outliers``,
    ``iqr_bound``, ``spatial_stride``.
    """
    n = inputs.n_tokens
    device = inputs.device
    order, counts = prumerge_plus_keep(inputs, budget, adaptive)
    keep = torch.sort(order).values  # (k,)
    k = keep.shape[0]
    n_nb = min(NEIGHBOURS, n - 1)
    keys = inputs.keys.float()
    unit = keys / row_norms(keys, "keys")[:, None]  # (N, h)
    cos = unit.index_select(0, keep) @ unit.T  # (k, N)
    cos[torch.arange(k, device=device), keep] = float("-inf")  # a token is not its own neighbour
    nb = torch.sort(cos, dim=1, descending=True, stable=True).indices[:, :n_nb]  # (k, n_nb)

    v = inputs.feats_pre.float()  # (N, C)
    a = inputs.cls_attn.float()  # (N,)
    weights = torch.zeros(k, n, device=device).scatter_(1, nb, a[nb])  # (k, N)
    merged = v.index_select(0, keep) + weights @ v  # (k, C)
    is_kept = torch.zeros(n, dtype=torch.bool, device=device)
    is_kept[keep] = True
    residual = (a[~is_kept][:, None] * v[~is_kept]).sum(dim=0)  # (C,)
    tokens = torch.cat([merged, residual[None]])  # (k + 1, C)

    groups = torch.full((n,), k, dtype=torch.long, device=device)  # the residual slot by default
    if k:
        absorbed = torch.full((k, n), float("-inf"), device=device).scatter_(1, nb, cos.gather(1, nb))
        best, slot = absorbed.max(dim=0)  # (N,): strongest absorber of each patch (first max: lower slot)
        groups = torch.where(torch.isfinite(best), slot, groups)
    groups[keep] = torch.arange(k, device=device)
    info = {"n_tokens": n, "requested_budget": budget, **counts, "neighbours": nb.cpu()}
    return Selection(
        method="prumerge+",
        budget=k + 1,
        keep=keep,
        order=order,
        tokens=tokens,
        groups=groups,
        tokens_space="pre_projector",
        info=info,
    )
