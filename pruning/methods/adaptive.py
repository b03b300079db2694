"""Adaptive selection (AgilePruner): attention order with an erank-scaled similarity threshold."""

from __future__ import annotations

import torch
import torch.nn.functional as nnf

from ..calibration import ERANK_AVG_LLAVA15_7B
from ..geometry import image_erank
from ..registry import positive, register
from ..types import PruneInputs, Selection
from .attention import attention_order, selection_from_order
from .diversity import cosine_distance

__all__ = ["STEP", "TAU_MAX", "adaptive_taus", "select_adaptive"]

STEP = 0.01  # methods.md §3: τ grows by this per attention rank
TAU_MAX = 0.25  # methods.md §3: cap on the suppression radius


def adaptive_taus(ranks: torch.Tensor, image_erank: float, *, step: float, tau_max: float, erank_avg: float):
    """τ_i = min(order_i · (e / erank_avg) · step, τ_max) for 1-based attention ranks ``ranks``.

    Evaluated in float64 in the same order as the scalar formula, then rounded to float32 (the
    dtype of the distances it is compared with), so every τ equals the per-token Python value.
    """
    scale = image_erank / erank_avg
    return (ranks.double() * scale * step).clamp(max=tau_max).float()


def _pack_rows(mask: torch.Tensor) -> list[list[int]]:
    """(N, M) bool -> per row, its bits as little-endian 64-bit words (one host copy in all)."""
    n_words = (mask.shape[1] + 63) // 64
    bits = nnf.pad(mask.to(torch.uint8), (0, n_words * 64 - mask.shape[1])).view(mask.shape[0], -1, 8)
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=mask.device)
    packed = (bits * weights).sum(dim=-1, dtype=torch.uint8)  # (N, 8 * n_words) bytes
    return packed.view(torch.int64).tolist()  # (N, n_words) signed words


def _row_bits(words: list[int]) -> int:
    """One packed row as a Python int whose bit j is token j."""
    return sum((w & 0xFFFFFFFFFFFFFFFF) << (64 * k) for k, w in enumerate(words))


@register(
    "adaptive",
    checks={"step": positive, "tau_max": positive, "erank_avg": positive},
    replayable=True,
    tau_schedule="tau_max",
)
def select_adaptive(
    inputs: PruneInputs,
    budget: int,
    *,
    step: float = STEP,
    tau_max: float = TAU_MAX,
    erank_avg: float = ERANK_AVG_LLAVA15_7B,
) -> Selection:
    """AgilePruner: walk tokens in attention order, each pick suppressing its near-duplicates.

    Paper: AgilePruner (ICLR 2026). Rule (methods.md §3): e = erank(F); tokens sorted by ``a``
    descending (ties: lower index first), ``order_i`` the 1-based rank. Each reached, still-alive
    token i is picked and removes every alive j with 1 − cos(F_i, F_j) < τ_i,
    τ_i = min(order_i · e / erank_avg · step, τ_max). A walk that ends short is filled with the
    highest-attention unpicked tokens. ``erank_avg`` is the model's calibrated mean image erank
    (90 is LLaVA-1.5-7B's).

    Every τ is known once e is, so the whole suppression matrix is one comparison; the walk then
    reads one packed bitset row per pick on the host.

    ``info``: ``image_erank``, ``taus`` (τ of each pick, pick order), ``n_walk_picks`` (picks
    made by the walk before any fill-up), ``removed_at`` (N,) pick step that suppressed each token
    (−1: never suppressed; picked tokens are not counted as suppressed).
    """
    n = inputs.n_tokens
    dist, cos, norms = cosine_distance(inputs.feats)  # (N, N), (N, N)
    e = float(image_erank(inputs.feats, cos, norms))
    sorted_idx = attention_order(inputs.cls_attn)  # (N,)
    ranks = torch.empty(n, dtype=torch.long, device=dist.device)
    ranks[sorted_idx] = torch.arange(1, n + 1, device=dist.device)
    taus = adaptive_taus(ranks, e, step=step, tau_max=tau_max, erank_avg=erank_avg)  # (N,)
    suppress = dist < taus[:, None]  # (N, N): row i = tokens that picking i removes
    rows = _pack_rows(suppress)

    alive = (1 << n) - 1
    picks: list[int] = []
    applied = 0  # picks whose suppression was applied (the last one is not, once K are picked)
    for i in sorted_idx.tolist():
        if not (alive >> i) & 1:
            continue
        picks.append(i)
        if len(picks) == budget:
            break
        alive &= ~_row_bits(rows[i])
        applied += 1
    n_walk = len(picks)
    if n_walk < budget:
        picked = set(picks)
        picks.extend(j for j in sorted_idx.tolist() if j not in picked)
        picks = picks[:budget]

    order = torch.tensor(picks, dtype=torch.long, device=dist.device)  # (K,)
    hit = suppress.index_select(0, order[:applied])  # (applied, N)
    hit[:, order[:n_walk]] = False
    if applied:
        removed_at = torch.where(hit.any(dim=0), hit.to(torch.uint8).argmax(dim=0), -1)
    else:
        removed_at = torch.full((n,), -1, dtype=torch.long, device=dist.device)
    info = {
        "image_erank": e,
        "erank_avg": erank_avg,
        "taus": taus.index_select(0, order).tolist(),
        "n_walk_picks": n_walk,
        "removed_at": removed_at.cpu(),
    }
    return selection_from_order("adaptive", inputs, order, info)
