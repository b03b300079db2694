"""Fixed-ratio and erank-adjusted mixes of attention and diversity selection (AgilePruner study)."""

from __future__ import annotations

import math

import torch

from ..calibration import ERANK_HI_LLAVA15_7B, ERANK_LO_LLAVA15_7B
from ..geometry import image_erank
from ..registry import boolean, erank_value, register, unit_interval
from ..types import PruneInputs, Selection
from .attention import attention_order, selection_from_order
from .diversity import cosine_distance, maxmin_greedy

__all__ = [
    "RATIO",
    "R_HI",
    "R_LO",
    "hybrid_erank_ratio",
    "select_hybrid",
    "select_hybrid_erank",
]

RATIO = 0.5  # methods.md §6: share R of the budget taken by attention
R_HI = 0.75  # methods.md §7: attention share on the simplest images
R_LO = 0.25  # methods.md §7: attention share on the most complex images


def _mix(name: str, inputs: PruneInputs, budget: int, ratio: float, dist: torch.Tensor, info: dict) -> Selection:
    k_att = math.floor(ratio * budget)
    start = attention_order(inputs.cls_attn)[:k_att]  # (K_att,)
    order = maxmin_greedy(dist, budget, start)  # (K,)
    return selection_from_order(name, inputs, order, {"ratio": ratio, "n_attention": k_att, **info})


@register("hybrid", checks={"ratio": unit_interval})
def select_hybrid(inputs: PruneInputs, budget: int, *, ratio: float = RATIO) -> Selection:
    """Fixed mix: ⌊R·K⌋ top-attention tokens, then max–min diversity picks from that set.

    Rule (methods.md §6): the K_att = ⌊R·K⌋ tokens of largest ``a`` (ties: lower index) seed the
    picked set of the diversity greedy (§2), which adds tokens until K are picked. With K_att = 0
    this is exactly ``diversity``. ``info``: ``ratio``, ``n_attention``.
    """
    dist, _, _ = cosine_distance(inputs.feats)  # (N, N)
    return _mix("hybrid", inputs, budget, ratio, dist, {})


def hybrid_erank_ratio(
    image_erank: float, *, r_hi: float, r_lo: float, erank_lo: float, erank_hi: float, inverse: bool = False
) -> float:
    """R = clip(R_hi − (R_hi − R_lo)·(e − e_lo)/(e_hi − e_lo)) between R_lo and R_hi.

    ``inverse`` swaps R_hi and R_lo: complex images then get the larger attention share.
    """
    if inverse:
        r_hi, r_lo = r_lo, r_hi
    t = (image_erank - erank_lo) / (erank_hi - erank_lo)
    return min(max(r_hi - (r_hi - r_lo) * t, min(r_hi, r_lo)), max(r_hi, r_lo))


@register(
    "hybrid-erank",
    checks={
        "r_hi": unit_interval,
        "r_lo": unit_interval,
        "erank_lo": erank_value,
        "erank_hi": erank_value,
        "inverse": boolean,
    },
)
def select_hybrid_erank(
    inputs: PruneInputs,
    budget: int,
    *,
    r_hi: float = R_HI,
    r_lo: float = R_LO,
    erank_lo: float = ERANK_LO_LLAVA15_7B,
    erank_hi: float = ERANK_HI_LLAVA15_7B,
    inverse: bool = False,
) -> Selection:
    """Image-aware mix: like ``hybrid`` with R set by the image's erank.

    Paper: AgilePruner (ICLR 2026), the erank-adjusted hybrid. Rule (methods.md §7):
    R = clip(R_hi − (R_hi − R_lo)·(e − e_lo)/(e_hi − e_lo), R_lo, R_hi), e = erank(F); e_lo/e_hi
    are the model's calibrated 10th/90th percentile image erank. Simple images get more attention
    tokens. ``inverse=True`` swaps R_hi and R_lo (the paper shows this hurts).
    ``info``: ``image_erank``, ``ratio``, ``n_attention``.
    """
    if erank_hi <= erank_lo:
        raise ValueError(f"erank_hi must exceed erank_lo, got erank_lo={erank_lo}, erank_hi={erank_hi}")
    dist, cos, norms = cosine_distance(inputs.feats)  # (N, N)
    e = float(image_erank(inputs.feats, cos, norms))
    ratio = hybrid_erank_ratio(e, r_hi=r_hi, r_lo=r_lo, erank_lo=erank_lo, erank_hi=erank_hi, inverse=inverse)
    return _mix("hybrid-erank", inputs, budget, ratio, dist, {"image_erank": e, "inverse": inverse})
