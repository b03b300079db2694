"""LLaVA-OneVision family adapter: ``LlavaOnevisionForConditionalGeneration`` (SigLIP tower, anyres; transformers 5.24).

OneVision packs an image like LLaVA-NeXT (base image, then the stitched, unpadded crops with a
newline per row; ``llava_next.py`` reads that layout from the model's own packing), with two
differences this file holds:

* **No [CLS].** SigLIP has none, so "[CLS] attention" is replaced by the attention each patch
  *receives* in the feature layer: softmax(q·kᵀ·scale) per head from that layer's own q/k
  projections of the hidden state entering it, averaged over heads and over all of the crop's
  queries (a distribution over the crop's patches, summing to 1). Methods that need a [CLS]
  feature (``needs`` ``cls_feat``: visionzip) are refused on this family, naming method and model.
* **anyres_max.** When the stitched grid holds more than about ``max`` crops' worth of patches
  (``config.vision_aspect_ratio``, "anyres_max_9"), the model shrinks it bilinearly, so its tokens no
  longer belong to one crop. Such images are read as two grids: the base image and the whole
  resampled high-resolution grid (``RESAMPLED_GRID``), whose F are the stock tokens and whose V,
  signal and keys are the crops' own, resampled by the model's same packing step (docs/models.md).
  The model shrinks after its projector, so the projector applied to that grid's V is not its F:
  methods that merge V (prumerge+) are refused there by ``grids.select_grids``; downsample, which
  averages F, and every selection method run there.

transformers-version quirks: the tower is a ``SiglipVisionModel`` whose encoder layers sit at
``vision_tower.encoder.layers`` (``layer_norm1``, ``self_attn.{q_proj, k_proj, num_heads, head_dim,
scale}``) and whose hidden states are the raw layer outputs; ``model.model.pack_image_features``
takes ``(features, image_sizes, image_newline, vision_aspect_ratio)`` (the wrapper on the outer
class passes an argument the inner one does not take, so it is not used); the processor class needs
torchvision for its video half, so ``load`` falls back to the image processor and tokenizer alone.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from PIL import Image
from transformers import LlavaOnevisionForConditionalGeneration

from .base import ImageGeometry, ImageReadout, VisualFeatures, VisualLayout, load_model_and_processor, register_adapter
from .llava_next import LlavaNextAdapter, crop_layout

__all__ = ["RESAMPLED_GRID", "LlavaOnevisionAdapter", "received_attention_and_keys"]

ARCHITECTURE = "LlavaOnevisionForConditionalGeneration"
NO_RESAMPLING = "anyres_max_1000000000"  # an aspect-ratio setting under which the model never shrinks the grid
RESAMPLED_GRID = "high-res"  # the shrunk grid's name; grids.select_grids refuses pre-projector merges on it
SHRINK_ABOVE = 1.1  # the model shrinks when sqrt(stitched patches / (max crops' patches)) exceeds this
PAPER_BUDGETS = (192, 128, 64, 32)  # not measured by the paper: LLaVA-1.5's shares of its 576 tokens
PAPER_TOKENS = 576


def received_attention_and_keys(layer: torch.nn.Module, hidden_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention each token receives in one encoder layer, and the head-averaged keys, from its own weights.

    Apply the layer's pre-attention norm to the hidden state entering it, project every query and
    key, softmax(q·kᵀ·scale) per head, then average over heads and over the T queries. Equals the
    eager attention weights averaged the same way, to float precision.

    Args:
        layer: a SigLIP (or CLIP) encoder layer (``layer_norm1``, ``self_attn`` with q/k projections).
        hidden_in: (T, C) hidden state entering ``layer`` (every patch; no [CLS]).
    Returns:
        a: (T,) float32, attention received per token; sums to 1.
        keys: (T, hd) head-averaged keys, in the layer's dtype.
    """
    attn = layer.self_attn
    t = hidden_in.shape[0]
    normed = layer.layer_norm1(hidden_in)  # (T, C)
    q = attn.q_proj(normed).view(t, attn.num_heads, attn.head_dim).transpose(0, 1)  # (H, T, hd)
    k = attn.k_proj(normed).view(t, attn.num_heads, attn.head_dim).transpose(0, 1)  # (H, T, hd)
    probs = ((q.float() @ k.float().transpose(1, 2)) * attn.scale).softmax(dim=-1)  # (H, T, T)
    return probs.mean(dim=(0, 1)), k.mean(dim=0)  # (T,), (T, hd)


@register_adapter(
    "llava_onevision",
    "LlavaOnevisionForConditionalGeneration (anyres_max) with a SigLIP vision tower and a single feature "
    "layer (LLaVA-OneVision 0.5B, 7B, 72B)",
)
class LlavaOnevisionAdapter(LlavaNextAdapter):
    """One loaded LLaVA-OneVision model and its processor; one grid per crop, or base + resampled grid.

    "[CLS] attention" is the attention each patch receives in the feature layer, averaged over
    heads and over the crop's queries (SigLIP has no [CLS]). There is no [CLS] feature, so
    visionzip (``needs`` ``cls_feat``) is refused here. Budgets split over the grids by token counts, as for LLaVA-NeXT.
    """

    family = "llava_onevision"
    architecture = ARCHITECTURE
    model_class: Any = LlavaOnevisionForConditionalGeneration
    vision_model_types = ("siglip_vision_model",)
    select_strategies = ("full",)  # SigLIP has no [CLS]: "default" would drop a real patch
    attention_signal = (
        "attention received: each patch's attention from all of its crop's queries in the feature layer, "
        "averaged over heads and queries (SigLIP has no [CLS])"
    )
    paper_budgets = (PAPER_BUDGETS, PAPER_TOKENS)

    @classmethod
    def load(cls, folder: Any, dtype: torch.dtype) -> tuple[Any, Any]:
        """Model and processor from a local folder; without torchvision, the processor's image and text halves."""
        return load_model_and_processor(cls.model_class, folder, dtype)

    def __init__(self, model: Any, processor: Any, *, name: str) -> None:
        super().__init__(model, processor, name=name)
        self.aspect_ratio = str(model.config.vision_aspect_ratio)
        self.max_crops = int(self.aspect_ratio.removeprefix("anyres_max_"))

    # -- model facts -------------------------------------------------------------------------

    @property
    def n_prefix_tokens(self) -> int:
        return 0

    @property
    def n_tokens(self) -> int:
        """Nominal N: base image plus ``max`` crops' worth of patches (7290 = 10 x 729 for OneVision-7B).

        An image the model leaves just under its shrinking threshold gives more (``max_image_tokens``).
        """
        most = max(h * w for h, w in self.pinpoints) // (self.crop_size * self.crop_size)
        return (1 + min(most, self.max_crops)) * self.grid[0] * self.grid[1]

    @property
    def max_image_tokens(self) -> int:
        """The most tokens any image gives the LLM: base image, stitched grid, one newline per row.

        The longest sequence is not the largest pinpoint shrunk to ``max`` crops' worth but a grid the
        unpadding leaves just under the shrinking threshold, unshrunk: up to 1.1² x ``max`` crops'
        worth. So every pinpoint is taken with every unpadding the model can apply (it drops padding
        rows, or columns, in pairs, so those kept have the pinpoint's parity), each shrunk as the
        model shrinks it. An upper bound: 8829 for OneVision-7B (9 crops of 27 x 27, pinpoints up to
        6 x 6 crops), where its largest pinpoint shrunk gives 7371.
        """
        side = self.grid[0]
        most = 0
        for h, w in self.pinpoints:
            rows, cols = h // self.crop_size * side, w // self.crop_size * side
            unpadded = [(r, cols) for r in range(rows, 0, -2)] + [(rows, c) for c in range(cols, 0, -2)]
            for r, c in map(self._shrunk_shape, unpadded):
                most = max(most, r * (c + 1))
        return side * side + most

    def _shrunk_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """(rows, cols) of an unpadded stitched grid after the model's shrinking (``pack_image_features``)."""
        rows, cols = shape
        ratio = math.sqrt(rows * cols / (self.max_crops * self.grid[0] * self.grid[1]))
        if ratio > SHRINK_ABOVE:
            return int(rows // ratio), int(cols // ratio)
        return rows, cols

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "vision_aspect_ratio": self.aspect_ratio}

    # -- image -> grids ------------------------------------------------------------------------

    def read_image(self, image: Image.Image) -> ImageReadout:
        """One grid per crop, or the base image and the resampled grid when the model shrinks it."""
        image_sizes, hidden_in, hidden_feat, packed = self._tower(image)
        n = self.grid[0] * self.grid[1]
        index = torch.arange(hidden_feat.shape[0] * n, dtype=torch.float32).view(-1, n, 1)
        whole = self._pack(index, image_sizes, torch.tensor([-1.0]), aspect_ratio=NO_RESAMPLING)
        if whole.shape[0] == packed.shape[0]:  # not shrunk: every token is one crop's patch
            return self._crop_readout(image.size, image_sizes, hidden_in, hidden_feat, packed)
        return self._resampled_readout(image.size, image_sizes, hidden_in, hidden_feat, packed, whole[:, 0])

    def _resampled_readout(
        self,
        size: tuple[int, int],
        image_sizes: torch.Tensor,
        hidden_in: torch.Tensor,
        hidden_feat: torch.Tensor,
        packed: torch.Tensor,
        unshrunk: torch.Tensor,
    ) -> ImageReadout:
        """The base image as it is, and the shrunk grid with every crop value resampled as the model does.

        The crops' V, received attention and keys go through the model's own packing (unpadding and
        bilinear shrinking) side by side, behind a marker channel that tells tokens from newlines.
        """
        layer = self.vision_tower.encoder.layers[self.feature_index - 1]
        signals = [self._signal(layer, hidden_in[crop]) for crop in range(hidden_feat.shape[0])]
        attention = torch.stack([a for a, _ in signals])  # (P, n)
        keys = torch.stack([k for _, k in signals])  # (P, n, hd)
        c = hidden_feat.shape[-1]
        marker = torch.ones_like(attention)[..., None]  # (P, n, 1): 1 on tokens, 0 on newlines
        values = torch.cat([marker, hidden_feat.float(), attention[..., None], keys.float()], dim=-1)
        resampled = self._pack(values, image_sizes, torch.zeros(values.shape[-1]))  # (L, 2 + C + hd)
        if resampled.shape[0] != packed.shape[0]:
            raise ValueError(f"the resampled layout has {resampled.shape[0]} slots; the model packed {packed.shape[0]}")
        n = self.grid[0] * self.grid[1]
        is_token = resampled[:, 0] > 0.5  # (L,)
        is_newline = (~is_token).long()
        sequence = torch.full_like(is_newline, -1)
        sequence[is_token] = torch.arange(int(is_token.sum()), device=sequence.device)
        lines = (torch.cumsum(is_newline, dim=0) - is_newline)[is_token]  # (N,)
        lines[:n] = -1  # the base image is on no line
        first_newline = int(is_newline.nonzero()[0, 0])
        layout = VisualLayout(sequence=sequence, lines=lines, newline=packed[first_newline].clone())
        high, high_feats = resampled[n:][is_token[n:]], packed[n:][is_token[n:]]  # (N - n, ·)
        base = VisualFeatures(hidden_feat[0], packed[:n], attention[0], keys[0], None, packed[:0])
        shrunk = VisualFeatures(
            feats_pre=high[:, 1 : 1 + c].to(hidden_feat.dtype),
            feats=high_feats,
            cls_attn=high[:, 1 + c],
            keys=high[:, 2 + c :].to(keys.dtype),
            cls_feat=None,
            prefix=packed[:0],
        )
        rows = int(is_newline.sum())
        geometries = (
            self._geometry(size, 0, (0, self.grid[0], 0, self.grid[1])),
            self._shrunk_geometry(size, unshrunk, hidden_feat.shape[0], (rows, high.shape[0] // rows)),
        )
        names = ("base", RESAMPLED_GRID)
        return ImageReadout(grids=(base, shrunk), geometries=geometries, names=names, layout=layout)

    def _shrunk_geometry(
        self, size: tuple[int, int], unshrunk: torch.Tensor, n_crops: int, grid: tuple[int, int]
    ) -> ImageGeometry:
        """The shrunk grid covers what the unshrunk stitched crops covered (from their own layout)."""
        rects, _ = crop_layout(unshrunk.round().long(), n_crops, self.grid[0])
        boxes = [self._canvas_box(size, crop, rect) for crop, rect in enumerate(rects) if crop and rect[0] != rect[1]]
        canvas = (
            min(b[0] for b in boxes),
            min(b[1] for b in boxes),
            max(b[2] for b in boxes),
            max(b[3] for b in boxes),
        )
        return ImageGeometry(
            original_size=size,
            crop_box=self._canvas_to_image(size, canvas),
            input_size=(self.crop_size, self.crop_size),
            patch_size=self.patch_size,
            grid=grid,
        )

    # -- what differs from LLaVA-NeXT ----------------------------------------------------------

    @staticmethod
    def _patch_states(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every token is a patch; there is no [CLS]."""
        return hidden, None

    @staticmethod
    def _signal(layer: torch.nn.Module, hidden_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention each of the crop's patches receives, and their keys."""
        return received_attention_and_keys(layer, hidden_in)

    def _pack(
        self,
        features: torch.Tensor,
        image_sizes: torch.Tensor,
        newline: torch.Tensor,
        *,
        aspect_ratio: str | None = None,
    ) -> torch.Tensor:
        packed, _ = self.model.model.pack_image_features(
            [features],
            image_sizes.cpu(),
            image_newline=newline,
            vision_aspect_ratio=aspect_ratio or self.aspect_ratio,
        )
        return packed[0]
