"""Images the LLM receives as several patch grids: one budget split over the grids, one selection each.

LLaVA-NeXT (and OneVision) feed a base image and the crops of a high-resolution view, each crop
through the tower on its own with its own [CLS] (or its own received attention). PruneLens selects
in every grid with that grid's own signal, never one grid's picks copied to the others:

* ``split_budget``: the budget K (kept visual tokens, newlines not counted) is split over the grids
  in proportion to their token counts, largest remainder first, ties to the earlier grid;
* ``select_grids``: ``pruning.select`` in each grid with its share, combined into one
  ``pruning.Selection`` over the encoding's token numbering (grids in order, raster inside each);
  merged tokens stay in the space their method gives them (pre- or post-projector), and a
  pre-projector merge is refused on a grid the model resampled after its projector (LLaVA-OneVision's
  shrunk grid), whose V no longer project to its tokens;
* ``visual_sequence``: the embeddings the LLM receives, in the stock order (``VisualLayout``),
  with a newline after every stitched row that keeps at least one token (docs/models.md).

Single-grid encodings (LLaVA-1.5) never come here: the runner keeps its one-grid path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

import pruning

from .adapters import ImageReadout, VisualLayout
from .adapters.llava_onevision import RESAMPLED_GRID
from .records import GridPart

__all__ = ["grid_parts", "select_grids", "split_budget", "visual_sequence"]

LIFTED_INFO = ("taus", "removed_at")  # per-grid walk records turned into whole-selection ones


def grid_parts(readout: ImageReadout) -> tuple[pruning.PruneInputs, tuple[GridPart, ...]]:
    """Every grid's tokens as one ``PruneInputs``, and one ``GridPart`` per grid viewing into it.

    The whole-image inputs have grid ``(1, N)`` and no single [CLS] feature; each part's inputs are
    views of them (no copy) with the grid's own shape and [CLS] feature.
    """
    grids = readout.grids
    cat = lambda name: torch.cat([getattr(g, name) for g in grids], dim=0)  # (N, ·)
    feats_pre, feats, cls_attn = cat("feats_pre"), cat("feats"), cat("cls_attn")
    keys = None if any(g.keys is None for g in grids) else cat("keys")
    whole = pruning.PruneInputs(
        feats_pre=feats_pre, feats=feats, cls_attn=cls_attn, grid=(1, feats.shape[0]), keys=keys
    )
    parts, offset = [], 0
    for grid, geometry, name in zip(grids, readout.geometries, readout.names):
        span = slice(offset, offset + grid.feats.shape[0])
        inputs = pruning.PruneInputs(
            feats_pre=feats_pre[span],
            feats=feats[span],
            cls_attn=cls_attn[span],
            grid=geometry.grid,
            keys=None if keys is None else keys[span],
            cls_feat=grid.cls_feat,
        )
        parts.append(GridPart(name, inputs, geometry, offset, pruning.effective_rank(inputs.feats)))
        offset = span.stop
    return whole, tuple(parts)


def split_budget(budget: int, sizes: Sequence[int]) -> list[int]:
    """Each grid's share of ``budget`` kept tokens, in proportion to its ``sizes`` (token counts).

    Shares are ⌊K·nᵢ/N⌋, then one more token to the grids with the largest remainders (ties to the
    earlier grid) until they add up to K; K is first clipped to N. A share never exceeds its grid.
    """
    n = sum(sizes)
    budget = min(budget, n)
    exact = [budget * size for size in sizes]  # K·nᵢ, divided by N below (integers: no rounding error)
    shares = [e // n for e in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(exact[i] % n), i))
    for i in by_remainder[: budget - sum(shares)]:
        shares[i] += 1
    return shares


def _check_budget(budget: Any) -> int:
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise ValueError(f"budget must be an int, got {budget!r} ({type(budget).__name__})")
    if budget < 1:
        raise ValueError(f"budget must be at least 1, got {budget}")
    return budget


def select_grids(parts: Sequence[GridPart], method: str, budget: int, **params: Any) -> pruning.Selection:
    """``method`` in every grid with its share of ``budget``, as one selection over all N tokens.

    ``keep`` and ``order`` are in the encoding's numbering (``order``: grid after grid, each grid in
    its own pick order). Merging methods give their tokens grid after grid, in the space their
    method gives them (``tokens_space``: visionzip and prumerge+ pre-projector V, downsample
    post-projector F); a grid kept whole beside merged ones is passed through as its own tokens in
    that space. ``budget`` is the visual tokens the LLM receives (prumerge+'s adaptive count may
    differ from the request). ``info["grids"]`` holds each grid's name, share and its own
    selection's info; ``taus`` and ``removed_at`` are lifted to the whole selection (pick indices
    into ``order``) when every selected grid reports them.

    Raises:
        ValueError: a pre-projector merge on a grid the model resampled after its projector
            (``RESAMPLED_GRID``, LLaVA-OneVision's shrunk grid: its V are resampled crop values, and
            projecting them does not give the model's tokens).
    """
    spec = pruning.get_method(method)
    budget = _check_budget(budget)
    shares = split_budget(budget, [p.n_tokens for p in parts])
    picked = [
        pruning.select(method, part.inputs, share, **params) if share else None for part, share in zip(parts, shares)
    ]
    space = _tokens_space(parts, picked, spec.name)
    keep, order, tokens, groups, grid_info = [], [], [], [], []
    n_out = 0  # merged output slots so far
    for part, share, sel in zip(parts, shares, picked):
        grid_info.append({"name": part.name, "n_tokens": part.n_tokens, "budget": share})
        dropped = torch.full((part.n_tokens,), -1, dtype=torch.long, device=part.inputs.device)
        if sel is None:
            groups.append(dropped)
            continue
        grid_info[-1]["info"] = {k: v for k, v in sel.info.items() if k not in LIFTED_INFO}
        keep.append(sel.keep + part.offset)
        order.append(sel.order + part.offset)
        if space is None:
            continue
        if sel.tokens is None:  # a grid kept whole beside merged ones: its own tokens, unmerged
            own = part.inputs.feats_pre if space == "pre_projector" else part.inputs.feats  # (n, C) or (n, D)
            part_tokens = own.index_select(0, sel.keep)
            part_groups = dropped.clone()
            part_groups[sel.keep] = torch.arange(sel.keep.numel(), device=dropped.device)
        else:
            part_tokens, part_groups = sel.tokens, sel.groups
        tokens.append(part_tokens.float())
        groups.append(torch.where(part_groups >= 0, part_groups + n_out, part_groups))
        n_out += part_tokens.shape[0]
    n = sum(p.n_tokens for p in parts)
    info: dict[str, Any] = {
        "n_tokens": n,
        "requested_budget": budget,
        "budget_clipped": budget > n,
        "budget_split": shares,
        "grids": grid_info,
        **_lifted(parts, picked, n),
    }
    return pruning.Selection(
        method=spec.name,
        budget=sum(sel.budget for sel in picked if sel is not None),
        keep=torch.cat(keep),
        order=torch.cat(order),
        tokens=torch.cat(tokens) if space else None,
        groups=torch.cat(groups) if space else None,
        tokens_space=space,
        info=info,
    )


def _tokens_space(parts: Sequence[GridPart], picked: list, method: str) -> str | None:
    """The space of the grids' merged tokens (None: no grid merged), refusing a pre-projector merge
    where the model resampled the grid after its projector."""
    spaces = {sel.tokens_space for sel in picked if sel is not None and sel.tokens is not None}
    if not spaces:
        return None
    if len(spaces) > 1:
        raise ValueError(f"method {method!r} gave merged tokens in several spaces ({sorted(spaces)}) across grids")
    space = spaces.pop()
    for part, sel in zip(parts, picked):
        if space == "pre_projector" and sel is not None and part.name == RESAMPLED_GRID:
            raise ValueError(
                f"method {method!r} cannot run on this image's {part.name!r} grid: it merges pre-projector "
                "features (V), and the model (LLaVA-OneVision beyond its anyres_max crops) shrank that grid "
                "bilinearly after its projector, so no V projects to its tokens; downsample (which averages "
                "the model's own tokens) and every selection method run there, and on an image the model "
                "does not shrink it runs per crop (docs/models.md)"
            )
    return space


def _lifted(parts: Sequence[GridPart], picked: list, n: int) -> dict[str, Any]:
    """``taus`` and ``removed_at`` of the whole selection, when every selected grid has them."""
    chosen = [(part, sel) for part, sel in zip(parts, picked) if sel is not None]
    out: dict[str, Any] = {}
    if all("taus" in sel.info for _, sel in chosen):
        out["taus"] = [tau for _, sel in chosen for tau in sel.info["taus"]]
    if all("removed_at" in sel.info for _, sel in chosen):
        removed = torch.full((n,), -1, dtype=torch.long)
        picks = 0  # picks of the earlier grids: where this grid's picks start in ``order``
        for part, sel in chosen:
            own = torch.as_tensor(sel.info["removed_at"]).cpu()
            removed[part.offset : part.offset + part.n_tokens] = torch.where(own >= 0, own + picks, own)
            picks += sel.order.numel()
        out["removed_at"] = removed
    return out


def visual_sequence(
    layout: VisualLayout,
    feats: torch.Tensor,
    keep: torch.Tensor | None,
    *,
    newlines: bool = True,
) -> tuple[torch.Tensor, int]:
    """The embeddings the LLM receives for the kept tokens, in the stock order, and how many newlines.

    Args:
        layout: the encoding's layout.
        feats: (N, D) every token's LLM embedding, in the encoding's numbering.
        keep: (K,) kept token indices, or None for all of them (the stock sequence exactly).
        newlines: put the newlines in (else only the K tokens, still in the stock order).
    Returns:
        (K + R, D) kept tokens with a newline after every line that keeps one or more tokens, and R.
    """
    sequence = layout.sequence.to(feats.device)  # (L,)
    kept = torch.ones(feats.shape[0], dtype=torch.bool, device=feats.device)  # (N,)
    if keep is not None:
        kept = torch.zeros_like(kept)
        kept[keep.to(feats.device)] = True
    is_token = sequence >= 0
    n_lines = int((~is_token).sum())
    lines = layout.lines.to(feats.device)
    line_kept = torch.zeros(n_lines, dtype=torch.bool, device=feats.device)
    line_kept[lines[kept & (lines >= 0)]] = newlines
    newline_rank = torch.cumsum(~is_token, dim=0) - 1  # (L,) at a newline slot: which line it ends
    slot_kept = torch.where(is_token, kept[sequence.clamp(min=0)], line_kept[newline_rank.clamp(min=0)])
    slots = sequence[slot_kept]  # (K + R,) token index or -1
    newline = layout.newline.to(feats.device, feats.dtype)
    out = torch.where((slots >= 0)[:, None], feats[slots.clamp(min=0)], newline[None])  # (K + R, D)
    return out, int((slots < 0).sum())
