"""Attention-based selection (FasterVLM): keep the tokens the vision [CLS] token attends to most."""

from __future__ import annotations

import torch

from ..registry import register
from ..types import PruneInputs, Selection

__all__ = ["attention_order", "select_attention", "selection_from_order"]


def attention_order(cls_attn: torch.Tensor) -> torch.Tensor:
    """All N token indices by descending attention, ties toward the lower index. (N,) -> (N,)."""
    return torch.sort(cls_attn, descending=True, stable=True).indices


def selection_from_order(
    method: str, inputs: PruneInputs, order: torch.Tensor, info: dict | None = None, **extra
) -> Selection:
    """A ``Selection`` from the picks in pick order; ``keep`` is their raster (sorted) order."""
    info = {"n_tokens": inputs.n_tokens, **(info or {})}
    return Selection(
        method=method,
        budget=order.shape[0] if extra.get("tokens") is None else extra["tokens"].shape[0],
        keep=torch.sort(order).values,
        order=order,
        info=info,
        **extra,
    )


@register("attention", replayable=True)
def select_attention(inputs: PruneInputs, budget: int) -> Selection:
    """FasterVLM: keep the K tokens with the largest [CLS] attention ``a``.

    Paper: "[CLS] Attention is All You Need for Training-Free Visual Token Pruning" (FasterVLM).
    Rule (methods.md §1): top-K of ``a`` (N,); ties go to the lower token index.
    """
    order = attention_order(inputs.cls_attn)[:budget]  # (K,)
    return selection_from_order("attention", inputs, order)
