"""FastV: from decoder layer K on, keep the visual tokens the last prompt token attends to most in layer K − 1."""

from __future__ import annotations

from ..registry import positive_int, register
from ..types import LayerInputs, Selection
from .attention import attention_order, selection_from_order

__all__ = ["FASTV_LAYER", "select_fastv"]

FASTV_LAYER = 2  # methods.md §13: the paper's K ("after layer 2")


@register("fastv", stage="in-llm", needs=("last_attn",), checks={"layer": positive_int}, replayable=True)
def select_fastv(inputs: LayerInputs, budget: int, *, layer: int = FASTV_LAYER) -> Selection:
    """FastV: keep the K visual tokens the last prompt token attends to most in decoder layer ``layer`` − 1.

    Paper: "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration for
    Large Vision-Language Models" (FastV, Chen et al., ECCV 2024). Rule (methods.md §13): top-K of
    ``inputs.last_attn`` (N,), the last prompt token's head-averaged attention to each visual token
    in layer K − 1 (K = ``layer``); ties go to the lower token index. Layers before ``layer`` see
    every token; from ``layer`` on the language model sees only these K visual tokens, at their
    original positions (app.runtime does that part).

    ``order``: the picks by descending attention (a smaller budget's picks are a prefix).
    ``info``: ``layer``.
    """
    order = attention_order(inputs.last_attn)[:budget]  # (K,)
    return selection_from_order("fastv", inputs, order, {"layer": layer})
