"""Qwen2.5-VL family adapter: ``Qwen2_5_VLForConditionalGeneration`` (transformers 5.24).

Qwen2.5-VL has dynamic resolution: the processor resizes an image to a multiple of 28 px within
its pixel limits, cuts it into 14 px patches, and the vision tower (no [CLS]; window attention
with a few full-attention blocks) merges every 2 x 2 patches into one LLM token. So N and the grid
follow the image, and the LLM places image tokens with 3-D M-RoPE positions (time, row, column).

"[CLS] attention" here is the attention each merged token **receives** in a full-attention vision
block (the last one, ``fullatt_block_indexes[-1]``): softmax(q·kᵀ·scale) per head, from that
block's own q/k projections of the hidden state entering it with its own rotary embedding,
averaged over heads and all queries, summed over the 2 x 2 patches of each merge group, and brought
from the tower's window order back to raster order. (The tower's ``output_attentions`` gives
attention outputs, not weights, so the row is recomputed; a forward pre-hook, removed in
``finally``, captures the block's input and rotary embedding.) V is the last block's output of each
merge group's four patches, side by side (the merger's input), F the stock merged tokens, Kv the
block's keys averaged over heads and the group. There is no [CLS] feature: visionzip is refused,
and merging methods too, since a merged token has no single position. Kept tokens keep their
original M-RoPE positions (``RopePositions``); the text after the image keeps its positions too.

transformers-version quirks (all here): the tower is ``model.model.visual`` with ``blocks[i]``
(``norm1``, ``attn.qkv``, ``attn.num_heads``, ``attn.scaling``), ``merger`` (``ln_q`` then an MLP
over each group of 2 x 2 patches), window order from ``transformers.vision_utils.
get_vision_window_index``; blocks take ``position_embeddings=(cos, sin)`` as a keyword; the
processor class needs torchvision for its video half, so ``load`` may fall back to its image and
text halves.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.vision_utils import get_vision_window_index

from .base import (
    ImageGeometry,
    ImageReadout,
    RopePositions,
    VisualFeatures,
    check_architecture,
    load_model_and_processor,
    register_adapter,
    scaled_budgets,
)
from .prompts import ChatModel

__all__ = ["Qwen25VLAdapter", "received_attention_rotary"]

ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"
PAPER_BUDGETS = (512, 256)  # AgilePruner's Qwen2.5-VL-7B budgets, of its 1225 tokens (a 980 px square)
PAPER_TOKENS = 1225
QUERY_CHUNK_ELEMENTS = 2**24  # attention probabilities held at once while summing what each key receives


def received_attention_rotary(
    block: torch.nn.Module, hidden_in: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention each patch receives in one full-attention Qwen2.5-VL block, and its head-averaged keys.

    The block's pre-attention norm, its qkv projection, its rotary embedding on q and k, then
    softmax(q·kᵀ·scaling) per head, averaged over heads and over every query (in chunks of queries,
    so the T x T matrix is never held whole). One image: the block attends over all its patches.

    Args:
        block: a ``Qwen2_5_VLVisionBlock``.
        hidden_in: (T, C) hidden state entering it, in the tower's (window) order.
        cos, sin: (T, hd) its rotary embedding, in the same order.
    Returns:
        a: (T,) float32, attention received per patch; sums to 1.
        keys: (T, hd) head-averaged keys after the rotary embedding, float32.
    """
    attn = block.attn
    t = hidden_in.shape[0]
    qkv = attn.qkv(block.norm1(hidden_in)).reshape(t, 3, attn.num_heads, -1).float()  # (T, 3, H, hd)
    rotate = lambda x: torch.cat([-x[..., x.shape[-1] // 2 :], x[..., : x.shape[-1] // 2]], dim=-1)
    cos, sin = cos[:, None, :].float(), sin[:, None, :].float()  # (T, 1, hd)
    q = (qkv[:, 0] * cos + rotate(qkv[:, 0]) * sin).transpose(0, 1)  # (H, T, hd)
    k = (qkv[:, 1] * cos + rotate(qkv[:, 1]) * sin).transpose(0, 1)  # (H, T, hd)
    received = torch.zeros(t, dtype=torch.float32, device=hidden_in.device)
    chunk = max(1, QUERY_CHUNK_ELEMENTS // (attn.num_heads * t))
    for start in range(0, t, chunk):
        probs = ((q[:, start : start + chunk] @ k.transpose(1, 2)) * attn.scaling).softmax(dim=-1)  # (H, c, T)
        received += probs.sum(dim=(0, 1))
    return received / (attn.num_heads * t), k.mean(dim=0)


_HOOKED = threading.Lock()  # the hooks sit on shared modules: one hooked forward at a time


@contextmanager
def _captured_inputs(block: torch.nn.Module, merger: torch.nn.Module) -> Iterator[dict[str, Any]]:
    """Record what enters ``block`` (hidden state, rotary embedding) and ``merger`` during one forward.

    Held under a process-wide lock, so two requests encoding at once (the app serves several
    sessions) never see each other's tensors.
    """
    seen: dict[str, Any] = {}

    def at_block(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        seen["hidden"] = args[0] if args else kwargs["hidden_states"]
        seen["rotary"] = kwargs["position_embeddings"]

    with _HOOKED:
        handles = [
            block.register_forward_pre_hook(at_block, with_kwargs=True),
            merger.register_forward_pre_hook(lambda module, args: seen.__setitem__("merger_in", args[0])),
        ]
        try:
            yield seen
        finally:
            for handle in handles:
                handle.remove()


@register_adapter(
    "qwen2_5_vl",
    "Qwen2_5_VLForConditionalGeneration with dynamic resolution and M-RoPE (Qwen2.5-VL 3B, 7B, 32B, 72B)",
)
class Qwen25VLAdapter(ChatModel):
    """One loaded Qwen2.5-VL model and its processor: one merged-token grid per image, sized by the image.

    "[CLS] attention" is the attention each merged token receives in the last full-attention vision
    block (no [CLS]); visionzip (``needs`` ``cls_feat``) and merging methods are refused.

    Attributes (read from the checkpoint): ``score_block`` (index of the block the signal comes
    from), ``merge`` (2: patches per merged token side), ``patch_size`` (14), ``grid`` (the merged
    grid of the largest square image the processor allows: a nominal grid, since N follows the image).
    """

    family = "qwen2_5_vl"
    architecture = ARCHITECTURE
    model_class: Any = Qwen2_5_VLForConditionalGeneration
    attention_signal = (
        "attention received in the last full-attention vision block, averaged over heads and queries, "
        "summed over each 2 x 2 merge group (Qwen2.5-VL has no [CLS])"
    )
    paper_budgets = (PAPER_BUDGETS, PAPER_TOKENS)

    @classmethod
    def check_config(cls, config: Any, name: str) -> None:
        """Refuse Qwen2.5-VL configs this adapter cannot run, naming the offending setting."""
        check_architecture(config, name, cls.architecture)
        vision = config.vision_config
        if not list(getattr(vision, "fullatt_block_indexes", None) or []):
            raise ValueError(f"model {name!r} has no full-attention vision block to read the attention signal from")

    @classmethod
    def load(cls, folder: Any, dtype: torch.dtype) -> tuple[Any, Any]:
        """Model and processor from a local folder; without torchvision, the processor's image and text halves."""
        return load_model_and_processor(cls.model_class, folder, dtype)

    def __init__(self, model: Any, processor: Any, *, name: str) -> None:
        if not isinstance(model, self.model_class):
            raise ValueError(
                f"model {name!r} is a {type(model).__name__}; the {self.family} adapter needs {self.architecture}"
            )
        self.check_config(model.config, name)
        self.bind(model, processor, name)
        vision = model.config.vision_config
        self.score_block = int(list(vision.fullatt_block_indexes)[-1])
        self.merge = int(vision.spatial_merge_size)
        self.patch_size = int(vision.patch_size)
        size = getattr(processor.image_processor, "size", None) or {}
        longest = size.get("longest_edge") if hasattr(size, "get") else None
        unit = self.patch_size * self.merge
        self.max_tokens = int(longest or getattr(processor.image_processor, "max_pixels", PAPER_TOKENS * unit * unit))
        self.max_tokens //= unit * unit
        side = math.isqrt(self.max_tokens)
        self.grid = (side, side)

    # -- model facts -------------------------------------------------------------------------

    @property
    def visual(self) -> torch.nn.Module:
        return self.model.model.visual

    @property
    def n_prefix_tokens(self) -> int:
        return 0

    @property
    def n_tokens(self) -> int:
        """The most merged tokens the processor gives an image (its pixel limit over 28 x 28)."""
        return self.max_tokens

    @property
    def max_image_tokens(self) -> int:
        return self.max_tokens

    def budget_presets(self, n_tokens: int | None = None) -> list[int]:
        """The paper's Qwen2.5-VL budgets (512/256 of 1225) as shares of an image's N.

        N follows the image, so the presets do: ``n_tokens`` is the encoded image's N; without it,
        the most the processor gives (``self.n_tokens``, the nominal presets of ``describe``). The
        app computes each image's from ``describe()["preset_shares"]`` (``app.choices.image_presets``).
        """
        budgets, of_tokens = self.paper_budgets
        return scaled_budgets(budgets, of_tokens, self.n_tokens if n_tokens is None else n_tokens)

    def is_llava15(self) -> bool:
        return False

    def describe(self) -> dict[str, Any]:
        """Plain-value summary for runner metadata."""
        return {
            "family": self.family,
            "feature_layer": self.score_block,
            "select_strategy": "merged 2 x 2",
            "grid": self.grid,
            "patch_size": self.patch_size * self.merge,
            "n_patches": self.n_tokens,
            "n_tokens": self.n_tokens,
            "budget_presets": self.budget_presets(),
            "preset_shares": [list(self.paper_budgets[0]), self.paper_budgets[1]],  # each image's: these of its N
            "attention_signal": self.attention_signal,
            "image_token_id": self.image_token_id,
            "context_length": self.context_length,
        }

    # -- image -> one merged grid --------------------------------------------------------------

    def read_image(self, image: Image.Image) -> ImageReadout:
        """The merged-token grid of ``image`` with its received attention and its M-RoPE offsets."""
        processed = self.processor.image_processor(images=image, return_tensors="pt")
        pixel_values = processed["pixel_values"].to(self.device, self.dtype)  # (T, 3 * 2 * 14 * 14)
        grid_thw = processed["image_grid_thw"].to(self.device)  # (1, 3): frames, patch rows, patch cols
        _, rows, cols = (int(v) for v in grid_thw[0].tolist())
        rows, cols = rows // self.merge, cols // self.merge  # the merged grid
        group = self.merge * self.merge
        with _captured_inputs(self.visual.blocks[self.score_block], self.visual.merger) as seen:
            out = self.model.get_image_features(pixel_values=pixel_values, image_grid_thw=grid_thw, return_dict=True)
        feats = out.pooler_output[0]  # (N, D), raster order
        cos, sin = seen["rotary"]
        received, keys = received_attention_rotary(self.visual.blocks[self.score_block], seen["hidden"], cos, sin)
        window_index, _ = get_vision_window_index(
            grid_thw.cpu(), self.merge, self.model.config.vision_config.window_size, self.patch_size
        )
        to_raster = torch.argsort(window_index).to(self.device)  # merged token i sits at window slot to_raster[i]
        n = feats.shape[0]
        merger_in = seen["merger_in"]  # (T, C) the last block's output, window order
        features = VisualFeatures(
            feats_pre=merger_in.reshape(n, -1)[to_raster],  # (N, 4C): each group's patches side by side
            feats=feats,
            cls_attn=received.view(n, group).sum(dim=1)[to_raster],  # (N,)
            keys=keys.view(n, group, -1).mean(dim=1)[to_raster].to(self.dtype),  # (N, hd)
            cls_feat=None,
            prefix=feats[:0],
        )
        height, width = rows * self.merge * self.patch_size, cols * self.merge * self.patch_size
        geometry = ImageGeometry(
            original_size=image.size,
            crop_box=(0.0, 0.0, float(image.size[0]), float(image.size[1])),  # resized, never cropped or padded
            input_size=(height, width),
            patch_size=self.merge * self.patch_size,
            grid=(rows, cols),
        )
        r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        offsets = torch.stack([torch.zeros(n, dtype=torch.long), r.reshape(-1), c.reshape(-1)])  # (3, N)
        return ImageReadout(
            grids=(features,),
            geometries=(geometry,),
            names=("image",),
            rope=RopePositions(offsets=offsets.to(self.device), span=max(rows, cols)),
        )

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """(K, 4C) merge groups -> (K, D) LLM tokens through the model's own merger."""
        c = self.model.config.vision_config.hidden_size
        return self.visual.merger(tokens.to(self.device, self.dtype).reshape(-1, c))
