"""The records every pruning method speaks: what it selects from, and what it selected.

Field names follow ``docs/methods.md``: ``feats_pre`` is V, ``feats`` is F, ``cls_attn`` is a,
``keys`` is Kv, ``patch_embeds`` is E and ``text_embeds`` is T. The methods that select before the
language model read a ``PruneInputs``; those that select inside it (FastV, DART at layer K) read a
``LayerInputs``, the language model's state at the layer where they prune. Every record is frozen;
methods never mutate them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["LayerInputs", "PruneInputs", "Selection"]


def _check_tensor(name: str, value: Any, ndim: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(value.shape)}")
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    finite = torch.isfinite(value)
    if not bool(finite.all()):
        bad = (~finite).nonzero()[0].tolist()
        raise ValueError(f"{name} contains NaN or Inf (first at index {tuple(bad)}: {value[tuple(bad)].item()})")
    return value


@dataclass(frozen=True)
class PruneInputs:
    """One image's visual encoding, as the pruning methods see it.

    Attributes:
        feats_pre: V, (N, C) vision-tower hidden states of the feature layer, [CLS] dropped.
        feats: F, (N, D) V after the multimodal projector (what the LLM receives).
        cls_attn: a, (N,) [CLS] attention to each patch in the feature layer, head-averaged.
        grid: (rows, cols) of the patch grid, rows * cols == N, tokens in raster order.
        keys: Kv, optional (N, h) head-averaged keys of the feature layer (VisionZip).
        cls_feat: optional (C,) hidden state of [CLS] in the feature layer (VisionZip).
        patch_embeds: E, optional (N, P) patches in the vision tower's joint image–text space: V
            through the tower's post-layernorm and visual projection (CDPruner).
        text_embeds: T, optional (M, P) the question's text embedding(s) in that same space, one row
            per text segment the text tower encodes (CDPruner).

    Construction validates shapes, agreement of N across tensors, devices and finiteness, and
    raises ``ValueError`` naming the offending field. Zero-norm rows are only an error for the
    methods that need cosine similarity, so they are checked there.
    """

    feats_pre: torch.Tensor
    feats: torch.Tensor
    cls_attn: torch.Tensor
    grid: tuple[int, int]
    keys: torch.Tensor | None = None
    cls_feat: torch.Tensor | None = None
    patch_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None

    def __post_init__(self) -> None:
        _check_tensor("feats_pre", self.feats_pre, 2)
        _check_tensor("feats", self.feats, 2)
        _check_tensor("cls_attn", self.cls_attn, 1)
        n = self.feats.shape[0]
        if n < 1:
            raise ValueError("feats has no tokens (N = 0)")
        for name in ("feats_pre", "cls_attn"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"{name} has {getattr(self, name).shape[0]} tokens but feats has {n}: N must match")
        if bool((self.cls_attn < 0).any()):
            raise ValueError(f"cls_attn must be non-negative, got minimum {self.cls_attn.min().item()}")
        if self.keys is not None:
            _check_tensor("keys", self.keys, 2)
            if self.keys.shape[0] != n:
                raise ValueError(f"keys has {self.keys.shape[0]} tokens but feats has {n}: N must match")
        if self.cls_feat is not None:
            _check_tensor("cls_feat", self.cls_feat, 1)
            if self.cls_feat.shape[0] != self.feats_pre.shape[1]:
                raise ValueError(
                    f"cls_feat has {self.cls_feat.shape[0]} channels but feats_pre has "
                    f"{self.feats_pre.shape[1]}: they must match"
                )
        if self.patch_embeds is not None:
            _check_tensor("patch_embeds", self.patch_embeds, 2)
            if self.patch_embeds.shape[0] != n:
                raise ValueError(
                    f"patch_embeds has {self.patch_embeds.shape[0]} tokens but feats has {n}: N must match"
                )
        if self.text_embeds is not None:
            _check_tensor("text_embeds", self.text_embeds, 2)
            if self.text_embeds.shape[0] < 1:
                raise ValueError("text_embeds has no rows (M = 0): give at least one text embedding")
            if self.patch_embeds is not None and self.text_embeds.shape[1] != self.patch_embeds.shape[1]:
                raise ValueError(
                    f"text_embeds has {self.text_embeds.shape[1]} channels but patch_embeds has "
                    f"{self.patch_embeds.shape[1]}: they must share one embedding space"
                )
        grid = tuple(self.grid) if isinstance(self.grid, (tuple, list)) else self.grid
        if (
            not isinstance(grid, tuple)
            or len(grid) != 2
            or not all(isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in grid)
        ):
            raise ValueError(f"grid must be a pair of positive ints (rows, cols), got {self.grid!r}")
        if grid[0] * grid[1] != n:
            raise ValueError(f"grid {grid} holds {grid[0] * grid[1]} patches but there are N = {n} tokens")
        object.__setattr__(self, "grid", grid)
        device = self.feats.device
        for name in ("feats_pre", "cls_attn", "keys", "cls_feat", "patch_embeds", "text_embeds"):
            t = getattr(self, name)
            if t is not None and t.device != device:
                raise ValueError(f"{name} is on {t.device} but feats is on {device}: put all inputs on one device")

    @property
    def n_tokens(self) -> int:
        """N, the number of patch tokens."""
        return self.feats.shape[0]

    @property
    def device(self) -> torch.device:
        return self.feats.device

    @staticmethod
    def unbatch(
        feats_pre: torch.Tensor,
        feats: torch.Tensor,
        cls_attn: torch.Tensor,
        grid: tuple[int, int],
        keys: torch.Tensor | None = None,
        cls_feat: torch.Tensor | None = None,
        patch_embeds: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
    ) -> list[PruneInputs]:
        """Split batched tensors (B, N, C), (B, N, D), (B, N)[, (B, N, h), (B, C), (B, N, P), (B, M, P)]
        into B inputs."""
        if not isinstance(feats, torch.Tensor) or feats.dim() != 3:
            raise ValueError(f"unbatch needs feats of shape (B, N, D), got {getattr(feats, 'shape', None)}")
        b = feats.shape[0]
        for name, t, ndim in (
            ("feats_pre", feats_pre, 3),
            ("cls_attn", cls_attn, 2),
            ("keys", keys, 3),
            ("cls_feat", cls_feat, 2),
            ("patch_embeds", patch_embeds, 3),
            ("text_embeds", text_embeds, 3),
        ):
            if t is not None and (not isinstance(t, torch.Tensor) or t.dim() != ndim or t.shape[0] != b):
                raise ValueError(
                    f"{name} must have {ndim} dimensions with batch size {b}, got {getattr(t, 'shape', None)}"
                )
        return [
            PruneInputs(
                feats_pre=feats_pre[i],
                feats=feats[i],
                cls_attn=cls_attn[i],
                grid=grid,
                keys=None if keys is None else keys[i],
                cls_feat=None if cls_feat is None else cls_feat[i],
                patch_embeds=None if patch_embeds is None else patch_embeds[i],
                text_embeds=None if text_embeds is None else text_embeds[i],
            )
            for i in range(b)
        ]

    def to(self, device: torch.device | str) -> PruneInputs:
        """A copy with every tensor on ``device``."""
        move = lambda t: None if t is None else t.to(device)
        return PruneInputs(
            feats_pre=move(self.feats_pre),
            feats=move(self.feats),
            cls_attn=move(self.cls_attn),
            grid=self.grid,
            keys=move(self.keys),
            cls_feat=move(self.cls_feat),
            patch_embeds=move(self.patch_embeds),
            text_embeds=move(self.text_embeds),
        )


@dataclass(frozen=True)
class LayerInputs:
    """One prompt's language-model state where an in-LLM method prunes (methods.md §13, §14).

    The runtime fills in what the method ``needs`` from decoder layer K − 1 of a prefill over the
    whole prompt, every visual token included; rows are the N visual tokens in the encoding's
    order (raster order inside each grid), text rows the prompt tokens after the image.

    Attributes:
        last_attn: optional (N,) attention of the last prompt token to each visual token in layer
            K − 1, softmax probabilities over the whole prompt averaged over heads, not
            renormalised (FastV).
        keys: optional (N, h) the visual tokens' keys in layer K − 1 as attention uses them (after
            the rotary embedding), every key head side by side (DART).
        hidden: optional (N, D) the visual tokens' hidden states leaving layer K − 1 (entering layer
            K) through the model's final norm (DART).
        text_keys: optional (T, h) the same keys of the T prompt tokens after the image (DART).
        text_hidden: optional (T, D) the same hidden states of those tokens (DART).

    Construction validates shapes, agreement of N (and T) across tensors, widths, devices and
    finiteness, and raises ``ValueError`` naming the offending field.
    """

    last_attn: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    text_keys: torch.Tensor | None = None
    text_hidden: torch.Tensor | None = None

    def __post_init__(self) -> None:
        given = {name: getattr(self, name) for name in ("last_attn", "keys", "hidden", "text_keys", "text_hidden")}
        for name, t in given.items():
            if t is not None:
                _check_tensor(name, t, 1 if name == "last_attn" else 2)
        visual = {name: given[name] for name in ("last_attn", "keys", "hidden") if given[name] is not None}
        if not visual:
            raise ValueError("LayerInputs needs at least one of last_attn, keys or hidden (the visual tokens' state)")
        first, ref = next(iter(visual.items()))
        n = ref.shape[0]
        if n < 1:
            raise ValueError(f"{first} has no tokens (N = 0)")
        for name, t in visual.items():
            if t.shape[0] != n:
                raise ValueError(f"{name} has {t.shape[0]} tokens but {first} has {n}: N must match")
        if self.last_attn is not None and bool((self.last_attn < 0).any()):
            raise ValueError(f"last_attn must be non-negative, got minimum {self.last_attn.min().item()}")
        tk, th = self.text_keys, self.text_hidden
        if tk is not None and th is not None and tk.shape[0] != th.shape[0]:
            raise ValueError(f"text_keys has {tk.shape[0]} tokens but text_hidden has {th.shape[0]}: T must match")
        for text, own in (("text_keys", "keys"), ("text_hidden", "hidden")):
            t, o = given[text], given[own]
            if t is not None and o is not None and t.shape[1] != o.shape[1]:
                raise ValueError(f"{text} has {t.shape[1]} channels but {own} has {o.shape[1]}: they must match")
        device = ref.device
        for name, t in given.items():
            if t is not None and t.device != device:
                raise ValueError(f"{name} is on {t.device} but {first} is on {device}: put all inputs on one device")

    @property
    def n_tokens(self) -> int:
        """N, the number of visual tokens."""
        return next(t for t in (self.last_attn, self.keys, self.hidden) if t is not None).shape[0]

    @property
    def device(self) -> torch.device:
        return next(t for t in (self.last_attn, self.keys, self.hidden) if t is not None).device


@dataclass(frozen=True)
class Selection:
    """What a method kept.

    Attributes:
        method: registry name of the method that made it.
        budget: the number of visual tokens the LLM receives (after clipping to N).
        keep: (K',) int64, raster-sorted indices of the patches whose own features are kept.
        order: (K',) int64, the same indices in the order the method picked them.
        tokens: optional (K, C) output tokens for merging methods, in the order the LLM receives
            them; they live in ``tokens_space`` (``"pre_projector"``: project them before the LLM).
        groups: optional (N,) int64 patch -> output slot of ``tokens`` (-1 = dropped).
        info: diagnostics (plain Python values or CPU tensors), e.g. ``image_erank``, ``taus``.

    For selection methods K' == budget and ``tokens`` is None. For merging methods (visionzip)
    ``tokens`` holds all ``budget`` outputs and ``keep`` only the patches passed through unmerged.
    """

    method: str
    budget: int
    keep: torch.Tensor
    order: torch.Tensor
    tokens: torch.Tensor | None = None
    groups: torch.Tensor | None = None
    tokens_space: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_output_tokens(self) -> int:
        """How many visual tokens the LLM receives with this selection."""
        return self.tokens.shape[0] if self.tokens is not None else self.keep.shape[0]
