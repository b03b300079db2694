"""VisionZip: dominant tokens by attention plus contextual tokens merged by key similarity."""

from __future__ import annotations

import torch

from ..registry import optional_positive_int, register
from ..types import PruneInputs, Selection
from .attention import attention_order

__all__ = ["DOMINANT_SHARE", "select_visionzip"]

DOMINANT_SHARE = 54 / 64  # methods.md §5: d = 54, c = 10 at K = 64, scaled proportionally


@register("visionzip", needs=("keys", "cls_feat"), checks={"dominant": optional_positive_int}, merges=True)
def select_visionzip(inputs: PruneInputs, budget: int, *, dominant: int | None = None) -> Selection:
    """VisionZip: [CLS] + (d − 1) top-attention patches, then c merged contextual tokens.

    Paper: "VisionZip: Longer is Better but Not Necessary in Vision Language Models" (CVPR 2025).
    Rule (methods.md §5): K = d + c, d = round(K · 54/64) unless ``dominant`` is given. Dominant:
    [CLS] and the d − 1 patches of largest ``a`` (ties: lower index). Among the remaining patches in
    index order every ``step``-th is a target (step = max(1, remaining // c), the first c); every
    other remaining patch joins the target whose key (``keys``) is most cosine-similar (ties: lower
    target index); a contextual token is V[target] + mean of V over its members.

    Output ``tokens`` (K, C), pre-projector: [CLS], dominant patches in raster order, then the c
    contextual tokens. ``keep`` holds the dominant patches; ``groups`` maps each patch to its output
    slot (slot 0 is [CLS], which is no patch). ``info``: ``n_dominant`` (d, [CLS] included),
    ``n_contextual`` (c).
    """
    n = inputs.n_tokens
    d = dominant if dominant is not None else max(1, round(budget * DOMINANT_SHARE))
    if d > budget:
        raise ValueError(f"dominant = {d} exceeds the budget {budget}")
    c = budget - d
    device = inputs.device
    order = attention_order(inputs.cls_attn)[: d - 1]  # (d - 1,)
    keep = torch.sort(order).values
    groups = torch.full((n,), -1, dtype=torch.long, device=device)
    groups[keep] = torch.arange(1, d, device=device)

    v = inputs.feats_pre.float()  # (N, C)
    parts = [inputs.cls_feat.float()[None], v.index_select(0, keep)]
    if c > 0:
        is_dominant = torch.zeros(n, dtype=torch.bool, device=device)
        is_dominant[keep] = True
        remaining = (~is_dominant).nonzero().flatten()  # (R,) in index order
        step = max(1, remaining.shape[0] // c)
        target_pos = torch.arange(0, remaining.shape[0], step, device=device)[:c]
        is_target = torch.zeros(remaining.shape[0], dtype=torch.bool, device=device)
        is_target[target_pos] = True
        targets, members = remaining[is_target], remaining[~is_target]  # (c,), (R - c,)
        keys = inputs.keys.float()
        norms = keys.norm(dim=1)  # (N,)
        if bool((norms[remaining] == 0).any()):
            rows = remaining[norms[remaining] == 0][:5].tolist()
            raise ValueError(f"keys has zero-norm row(s) {rows}: cosine similarity is undefined for them")
        unit = keys / norms[:, None]  # (N, h)
        cos = unit.index_select(0, members) @ unit.index_select(0, targets).T  # (R - c, c)
        assign = cos.argmax(dim=1)  # (R - c,) target slot of each member
        sums = torch.zeros(c, v.shape[1], device=device).index_add_(0, assign, v.index_select(0, members))
        counts = torch.bincount(assign, minlength=c).clamp_min(1).to(v.dtype)[:, None]  # (c, 1)
        parts.append(v.index_select(0, targets) + sums / counts)
        groups[targets] = torch.arange(d, budget, device=device)
        groups[members] = d + assign
    tokens = torch.cat(parts)  # (K, C)
    info = {"n_tokens": n, "n_dominant": d, "n_contextual": c}
    return Selection(
        method="visionzip",
        budget=budget,
        keep=keep,
        order=order,
        tokens=tokens,
        groups=groups,
        tokens_space="pre_projector",
        info=info,
    )
