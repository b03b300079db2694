"""Turning a selection into the visual tokens the language model receives."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .types import PruneInputs, Selection

__all__ = ["apply_selection"]


def apply_selection(
    inputs: PruneInputs,
    selection: Selection,
    project: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The (K, D) token embeddings for the LLM, in the order it receives them.

    Selection methods give F[keep] (raster order). Merging methods carry their own ``tokens``; when
    they are pre-projector features, ``project`` (the model's multimodal projector, (K, C) -> (K, D))
    must be given.
    """
    if selection.tokens is None:
        return inputs.feats.index_select(0, selection.keep.to(inputs.device))
    if selection.tokens_space == "pre_projector":
        if project is None:
            raise ValueError(
                f"{selection.method!r} returns pre-projector tokens: pass the model's projector as project="
            )
        return project(selection.tokens.to(inputs.feats_pre.dtype))
    return selection.tokens
