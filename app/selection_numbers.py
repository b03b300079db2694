"""The numbers shown beside a selection's overlay, as plain values a page or a JSON file can hold.

``selection_numbers`` measures one ``pruning.Selection`` of an encoded image, whichever stage made it
(a pre-LLM method before the LLM, or an in-LLM method while answering: ``Generation.selection``):
how many tokens the LLM receives, the [CLS] attention they retain and the effective rank of their
features. ``plain`` makes a selection's ``info`` JSON-friendly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

import pruning

if TYPE_CHECKING:
    from .runtime import Encoding, Runner

__all__ = ["plain", "selection_numbers"]


def plain(value: Any) -> Any:
    """JSON-friendly copy of ``info`` values (tensors become lists, floats stay finite)."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


@torch.inference_mode()
def selection_numbers(runner: Runner, encoding: Encoding, sel: pruning.Selection) -> dict[str, Any]:
    """Token count and share, retained [CLS] attention, kept erank, select time, keep and order, info."""
    inputs = encoding.inputs
    tokens = runner.visual_tokens(encoding, sel)[encoding.prefix.shape[0] :]  # (K, D) without the prefix
    kept_erank = pruning.effective_rank(tokens) if tokens.shape[0] > 1 else 1.0
    retained = pruning.retained_attention(inputs.cls_attn, sel.keep) if sel.keep.numel() else 0.0
    info = {k: v for k, v in sel.info.items() if k not in ("removed_at",)}
    return {
        "method": sel.method,
        "n_visual_tokens": sel.n_output_tokens,
        "retention": sel.n_output_tokens / inputs.n_tokens,
        "retained_attention": retained,
        "kept_erank": kept_erank,
        "select_ms": sel.info.get("select_ms"),
        "keep": sel.keep.cpu().tolist(),
        "order": sel.order.cpu().tolist(),
        "info": plain(info),
    }
