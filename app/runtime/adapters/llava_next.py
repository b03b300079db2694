"""LLaVA-NeXT family adapter: ``LlavaNextForConditionalGeneration`` (anyres, CLIP tower; transformers 5.24).

LLaVA-NeXT is LLaVA with "anyres" images: the processor picks the best grid of crops from the
checkpoint's ``image_grid_pinpoints``, and the tower sees a base image (the whole image squashed to
one crop) plus every crop, each with its own [CLS]. The model then stitches the crops' patches into
one high-resolution grid, removes the rows (or columns) that only hold padding, and appends the
learned ``image_newline`` embedding to every stitched row: base tokens, then the stitched rows.

This adapter reads that out as one grid per crop (the base image, then each crop's surviving
rectangle) with each crop's **own** [CLS] attention row and keys, recomputed from the feature layer's
own q/k, exactly as for LLaVA-1.5. Where every token and newline sits in the LLM's sequence is read
from the model itself: its own ``pack_image_features`` is run on token indices instead of features,
so the layout is the stock one by construction (``VisualLayout``). The budget split over the grids
and the newline rule are ``app.runtime.grids``'s (docs/models.md).

"[CLS] attention" is each crop's own [CLS] query's attention to that crop's patches (the base
image's for the base grid); every method runs, each crop with its own keys and [CLS] feature.

transformers-version quirks (all of them here or in ``llava.py``): the tower, projector and
``image_newline`` sit at ``model.model``; ``get_image_features`` takes ``image_sizes`` as (height,
width) and returns the packed sequence (newlines included) as ``pooler_output[0]``;
``pack_image_features(features, image_sizes, strategy, image_newline)`` is the packing step; the
processor's crops follow ``transformers.image_processing_utils.select_best_resolution``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from PIL import Image
from transformers import LlavaNextForConditionalGeneration
from transformers.image_processing_utils import select_best_resolution

from .base import ImageGeometry, ImageReadout, VisualFeatures, VisualLayout, register_adapter
from .llava import LlavaAdapter, cls_attention_and_keys

__all__ = ["LlavaNextAdapter", "crop_layout"]

ARCHITECTURE = "LlavaNextForConditionalGeneration"
PAPER_BUDGETS = (640, 320)  # AgilePruner's LLaVA-NeXT-7B budgets, of its 2880 tokens (5 x 576)
PAPER_TOKENS = 2880


def crop_layout(slots: torch.Tensor, n_crops: int, side: int) -> tuple[list[tuple[int, int, int, int]], torch.Tensor]:
    """Each crop's surviving rectangle and the global numbering, from the packed sequence of indices.

    Args:
        slots: (L,) the stock packed sequence with every feature replaced by its raw index
            ``crop * side² + patch`` (crop 0 is the base image) and every newline by -1.
        n_crops: crops through the tower, base included.
        side: patches per crop side.
    Returns:
        rects: per crop, (top, bottom, left, right) of its surviving patches (empty: top == bottom).
        numbering: (n_crops * side²,) each raw index's token number (grids in crop order, raster
            inside each), -1 for a patch the model dropped.
    """
    n = side * side
    present = torch.zeros(n_crops * n, dtype=torch.bool)
    present[slots[slots >= 0]] = True
    rects, numbering, count = [], torch.full((n_crops * n,), -1, dtype=torch.long), 0
    for crop in range(n_crops):
        mask = present[crop * n : (crop + 1) * n].view(side, side)  # (side, side)
        rows, cols = mask.any(dim=1).nonzero()[:, 0], mask.any(dim=0).nonzero()[:, 0]
        if rows.numel() == 0:
            rects.append((0, 0, 0, 0))
            continue
        top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        if int(mask.sum()) != (bottom - top) * (right - left) or not bool(mask[top:bottom, left:right].all()):
            raise ValueError(f"crop {crop}'s surviving patches are not a rectangle; the layout cannot be read")
        local = torch.arange(side * side).view(side, side)[top:bottom, left:right].reshape(-1)
        numbering[crop * n + local] = torch.arange(count, count + local.numel())
        count += local.numel()
        rects.append((top, bottom, left, right))
    return rects, numbering


@register_adapter(
    "llava_next",
    "LlavaNextForConditionalGeneration (anyres) with a CLIP vision tower and a single feature layer "
    "(LLaVA-NeXT / LLaVA-1.6 7B, 13B, 34B)",
)
class LlavaNextAdapter(LlavaAdapter):
    """One loaded LLaVA-NeXT model and its ``LlavaNextProcessor``; one grid per crop.

    "[CLS] attention" is each crop's own [CLS] attention to its patches in the feature layer (the
    base image has its own); every method runs per grid, with the budget split by token counts.
    Attributes as ``LlavaAdapter``'s; ``grid`` is one crop's patch grid, ``crop_size`` its pixels.
    """

    family = "llava_next"
    architecture = ARCHITECTURE
    model_class: Any = LlavaNextForConditionalGeneration
    select_strategies = ("default",)  # "full" would put [CLS] inside the stitched rows, which anyres cannot
    attention_signal = "[CLS] attention of each crop's own [CLS] query to that crop's patches (feature layer)"
    paper_budgets = (PAPER_BUDGETS, PAPER_TOKENS)

    @classmethod
    def check_config(cls, config: Any, name: str) -> None:
        """Refuse LLaVA-NeXT configs this adapter cannot run, naming the offending setting."""
        super().check_config(config, name)
        pinpoints = getattr(config, "image_grid_pinpoints", None)
        if not pinpoints or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pinpoints):
            raise ValueError(f"model {name!r} has no usable image_grid_pinpoints ({pinpoints!r})")

    def __init__(self, model: Any, processor: Any, *, name: str) -> None:
        super().__init__(model, processor, name=name)
        vision = model.config.vision_config
        self.crop_size = int(vision.image_size)
        self.pinpoints = [tuple(int(v) for v in p) for p in model.config.image_grid_pinpoints]
        processor_pins = getattr(processor.image_processor, "image_grid_pinpoints", None)
        if processor_pins is not None and [tuple(p) for p in processor_pins] != self.pinpoints:
            raise ValueError(
                f"the processor's image_grid_pinpoints {processor_pins} are not the model's {self.pinpoints}"
            )

    # -- model facts -------------------------------------------------------------------------

    @property
    def n_tokens(self) -> int:
        """Base image plus the most crops a pinpoint gives, before unpadding: 2880 (5 x 576) for LLaVA-NeXT-7B."""
        most = max(h * w for h, w in self.pinpoints) // (self.crop_size * self.crop_size)
        return (1 + most) * self.grid[0] * self.grid[1]

    @property
    def max_image_tokens(self) -> int:
        """Base image, then the largest pinpoint's stitched grid with one newline per row."""
        side = self.grid[0]
        stitched = [(h // self.crop_size * side, w // self.crop_size * side) for h, w in self.pinpoints]
        return side * side + max(rows * (cols + 1) for rows, cols in stitched)

    def is_llava15(self) -> bool:
        """Never: methods.md's LLaVA-1.5 calibration does not belong to a LLaVA-NeXT checkpoint."""
        return False

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "crop_size": self.crop_size, "image_grid_pinpoints": self.pinpoints}

    # -- image -> grids ------------------------------------------------------------------------

    @property
    def n_prefix_tokens(self) -> int:
        """None: anyres feeds no [CLS] to the LLM."""
        return 0

    def read_image(self, image: Image.Image) -> ImageReadout:
        """The base image and every crop as grids, with their own attention signal, and the stock layout."""
        image_sizes, hidden_in, hidden_feat, packed = self._tower(image)
        return self._crop_readout(image.size, image_sizes, hidden_in, hidden_feat, packed)

    def _tower(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One stock ``get_image_features`` call that also captures the feature layer's input and output.

        Returns:
            image_sizes: (1, 2) the image's (height, width) as the processor reports it.
            hidden_in, hidden_feat: (P, T, C) hidden states entering and leaving the feature layer,
                one row per crop (the base image first).
            packed: (L, D) the stock visual sequence: base tokens, then stitched rows and newlines.
        """
        processed = self.processor.image_processor(images=image, return_tensors="pt")
        pixel_values = processed["pixel_values"].to(self.device, self.dtype)  # (1, P, 3, S, S)
        image_sizes = processed["image_sizes"]  # (1, 2)
        i = self.feature_index
        out = self.model.get_image_features(
            pixel_values=pixel_values,
            image_sizes=image_sizes.to(self.device),
            vision_feature_layer=self.model.config.vision_feature_layer,
            vision_feature_select_strategy=self.select_strategy,
            output_hidden_states=[i - 1, i],
            return_dict=True,
        )
        return image_sizes, out.hidden_states[i - 1], out.hidden_states[i], out.pooler_output[0]

    def _crop_readout(
        self,
        size: tuple[int, int],
        image_sizes: torch.Tensor,
        hidden_in: torch.Tensor,
        hidden_feat: torch.Tensor,
        packed: torch.Tensor,
    ) -> ImageReadout:
        """One grid per crop that kept patches: its surviving rectangle with its own signal and keys."""
        n_crops, side = hidden_feat.shape[0], self.grid[0]
        slots = self._index_sequence(n_crops, image_sizes)  # (L,)
        if slots.shape[0] != packed.shape[0]:
            raise ValueError(f"the layout has {slots.shape[0]} slots but the model packed {packed.shape[0]} tokens")
        rects, numbering = crop_layout(slots, n_crops, side)
        layout = self._layout(slots, numbering, packed)
        feats_all = packed.index_select(0, self._positions(layout.sequence))  # (N, D), the stock values
        layer = self.vision_tower.encoder.layers[self.feature_index - 1]
        grids, geometries, names, start = [], [], [], 0
        for crop, (top, bottom, left, right) in enumerate(rects):
            if top == bottom:
                continue
            local = torch.arange(side * side, device=self.device).view(side, side)[top:bottom, left:right].reshape(-1)
            patches, cls_feat = self._patch_states(hidden_feat[crop])  # (n, C), (C,) or None
            attention, keys = self._signal(layer, hidden_in[crop])  # (n,), (n, hd)
            count = local.numel()
            grids.append(
                VisualFeatures(
                    feats_pre=patches.index_select(0, local),
                    feats=feats_all[start : start + count],
                    cls_attn=attention.index_select(0, local),
                    keys=keys.index_select(0, local),
                    cls_feat=cls_feat,
                    prefix=packed[:0],
                )
            )
            geometries.append(self._geometry(size, crop, (top, bottom, left, right)))
            names.append("base" if crop == 0 else self._crop_name(size, crop))
            start += count
        return ImageReadout(grids=tuple(grids), geometries=tuple(geometries), names=tuple(names), layout=layout)

    # -- what differs between the anyres families ------------------------------------------------

    @staticmethod
    def _patch_states(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(T, C) one crop's feature-layer states -> its patches and its [CLS] (first)."""
        return hidden[1:], hidden[0]

    @staticmethod
    def _signal(layer: torch.nn.Module, hidden_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One crop's attention signal over its patches and their keys: its own [CLS] row."""
        return cls_attention_and_keys(layer, hidden_in)

    def _pack(self, features: torch.Tensor, image_sizes: torch.Tensor, newline: torch.Tensor) -> torch.Tensor:
        """The model's own packing of (P, n, c) per-crop values: (L, c), newlines included."""
        packed, _ = self.model.model.pack_image_features(
            [features], image_sizes.cpu(), self.select_strategy, image_newline=newline
        )
        return packed[0]

    def _index_sequence(self, n_crops: int, image_sizes: torch.Tensor) -> torch.Tensor:
        """The stock packing of raw indices: (L,) ``crop * n + patch``, -1 for each newline."""
        n = self.grid[0] * self.grid[1]
        index = torch.arange(n_crops * n, dtype=torch.float32).view(n_crops, n, 1)  # exact up to 2^24
        return self._pack(index, image_sizes, torch.tensor([-1.0]))[:, 0].round().long()

    def _layout(self, slots: torch.Tensor, numbering: torch.Tensor, packed: torch.Tensor) -> VisualLayout:
        """Token numbers and newlines in the stock order, each token's line, the stock newline."""
        n = self.grid[0] * self.grid[1]
        is_token = slots >= 0
        is_newline = (~is_token).long()
        sequence = torch.where(is_token, numbering[slots.clamp(min=0)], slots)  # (L,)
        lines = torch.full((int(is_token.sum()),), -1, dtype=torch.long)  # (N,)
        newlines_before = torch.cumsum(is_newline, dim=0) - is_newline  # (L,): the line a token slot is on
        in_crop = is_token & (slots >= n)  # raw indices below n are the base image's: on no line
        lines[sequence[in_crop]] = newlines_before[in_crop]
        first_newline = int(is_newline.nonzero()[0, 0])
        return VisualLayout(
            sequence=sequence.to(self.device), lines=lines.to(self.device), newline=packed[first_newline].clone()
        )

    @staticmethod
    def _positions(sequence: torch.Tensor) -> torch.Tensor:
        """(N,) where each token sits in the packed sequence."""
        is_token = sequence >= 0
        positions = torch.empty(int(is_token.sum()), dtype=torch.long, device=sequence.device)
        positions[sequence[is_token]] = is_token.nonzero()[:, 0]
        return positions

    # -- geometry ------------------------------------------------------------------------------

    def _canvas(self, size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """The processor's crop canvas: best (height, width), resized (height, width), paste (x, y)."""
        width, height = size
        best_h, best_w = select_best_resolution((height, width), [list(p) for p in self.pinpoints])
        scale_w, scale_h = best_w / width, best_h / height
        if scale_w < scale_h:
            new_w, new_h = best_w, min(math.ceil(height * scale_w), best_h)
        else:
            new_h, new_w = best_h, min(math.ceil(width * scale_h), best_w)
        return (best_h, best_w), (new_h, new_w), ((best_w - new_w) // 2, (best_h - new_h) // 2)

    def _crop_name(self, size: tuple[int, int], crop: int) -> str:
        (_, best_w), _, _ = self._canvas(size)
        row, col = divmod(crop - 1, best_w // self.crop_size)
        return f"crop {row},{col}"

    def _geometry(self, size: tuple[int, int], crop: int, rect: tuple[int, int, int, int]) -> ImageGeometry:
        """Where one grid lies on the image: the base squashes the whole image, a crop covers its part
        of the padded canvas, mapped back through the processor's resize."""
        top, bottom, left, right = rect
        s, p = self.crop_size, self.patch_size
        if crop == 0:
            box = self._base_box(size)
        else:
            x0, y0, x1, y1 = self._canvas_box(size, crop, rect)
            box = self._canvas_to_image(size, (x0, y0, x1, y1))
        return ImageGeometry(
            original_size=size, crop_box=box, input_size=(s, s), patch_size=p, grid=(bottom - top, right - left)
        )

    def _canvas_box(self, size: tuple[int, int], crop: int, rect: tuple[int, int, int, int]) -> tuple[int, ...]:
        """(left, top, right, bottom) canvas pixels of a crop's patch rectangle (crop >= 1)."""
        top, bottom, left, right = rect
        s, p = self.crop_size, self.patch_size
        (_, best_w), _, _ = self._canvas(size)
        row, col = divmod(crop - 1, best_w // s)
        return (col * s + left * p, row * s + top * p, col * s + right * p, row * s + bottom * p)

    def _canvas_to_image(self, size: tuple[int, int], box: tuple[float, ...]) -> tuple[float, float, float, float]:
        """A canvas box in original-image pixels (undoing the processor's paste and resize)."""
        _, (new_h, new_w), (paste_x, paste_y) = self._canvas(size)
        sx, sy = size[0] / new_w, size[1] / new_h
        x0, y0, x1, y1 = box
        return ((x0 - paste_x) * sx, (y0 - paste_y) * sy, (x1 - paste_x) * sx, (y1 - paste_y) * sy)

    def _base_box(self, size: tuple[int, int]) -> tuple[float, float, float, float]:
        """The base image: the whole image resized to the processor's square, then centre-cropped."""
        ip = self.processor.image_processor
        target = getattr(ip, "size", None) or {}
        side = target.get("shortest_edge") or target.get("height") or self.crop_size
        crop = getattr(ip, "crop_size", None) or {}
        crop_h = crop.get("height", side) if getattr(ip, "do_center_crop", False) else side
        crop_w = crop.get("width", side) if getattr(ip, "do_center_crop", False) else side
        width, height = float(size[0]), float(size[1])
        dx, dy = (side - crop_w) / 2 * width / side, (side - crop_h) / 2 * height / side
        return (dx, dy, width - dx, height - dy)
