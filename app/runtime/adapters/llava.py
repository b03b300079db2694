"""LLaVA family adapter: ``LlavaForConditionalGeneration`` with a CLIP vision tower (transformers 5.24).

Read top to bottom: what is supported, the constants read from the model's own config and
processor, then the three things the runtime asks of a model here (pixels + geometry, the pruning
read-out of the vision tower, the projector for merged tokens); prompt ids and embeddings are
``prompts.ChatModel``'s, which every family shares.

Model facts come from the checkpoint, never from constants here: the feature layer
(``config.vision_feature_layer``, -2 for LLaVA-1.5), the select strategy (``"default"`` drops
[CLS], ``"full"`` feeds it to the LLM), the grid (``image_size // patch_size``, 24 x 24 for
LLaVA-1.5), the image-token id and the chat template.

transformers-version quirks (all of them live in this file):
* 5.x keeps the tower and projector at ``model.model.vision_tower`` and
  ``model.model.multi_modal_projector``; CLIP encoder layers sit at ``vision_tower.encoder.layers``,
  each with ``layer_norm1`` and ``self_attn.{q_proj, k_proj, num_heads, head_dim, scale}``.
* ``get_image_features`` accepts ``output_hidden_states`` as a list of hidden-state indices and
  captures only those (others are ``None``); its ``pooler_output`` is a list of per-image (N, D)
  projected features.
* CLIP's hidden states are not tied to ``post_layernorm`` (``hidden_states[i]`` is the raw output of
  encoder layer ``i - 1``; ``hidden_states[0]`` is the embedding after ``pre_layrnorm``).
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from .base import ImageGeometry, ImageReadout, VisualFeatures, check_architecture, register_adapter, scaled_budgets
from .prompts import ChatModel

__all__ = ["LlavaAdapter", "cls_attention_and_keys", "is_llava15_config"]

ARCHITECTURE = "LlavaForConditionalGeneration"
VISION_MODEL_TYPES = ("clip_vision_model",)
SELECT_STRATEGIES = ("default", "full")
PAPER_BUDGETS = (192, 128, 64, 32)  # methods.md: the paper's budgets for LLaVA-1.5's 576 tokens
PAPER_TOKENS = 576
# LLaVA-1.5's shape, whose paper calibration methods.md gives: a Llama/Vicuna decoder of 7B
# (4096 wide, 32 layers) or 13B (5120, 40), CLIP ViT-L/14 at 336 px (1024 wide, 24 layers), features
# from layer -2 with [CLS] dropped, a two-layer GELU projector.
LLAVA15_TEXT_SHAPES = ((4096, 32), (5120, 40))
LLAVA15_VISION_SHAPE = {"hidden_size": 1024, "num_hidden_layers": 24, "image_size": 336, "patch_size": 14}


def is_llava15_config(config: Any) -> bool:
    """Whether a LLaVA config has LLaVA-1.5's architecture (read from the config, never the name)."""
    text, vision = getattr(config, "text_config", None), getattr(config, "vision_config", None)
    if text is None or vision is None:
        return False
    return (
        getattr(text, "model_type", None) == "llama"
        and (getattr(text, "hidden_size", None), getattr(text, "num_hidden_layers", None)) in LLAVA15_TEXT_SHAPES
        and getattr(vision, "model_type", None) == "clip_vision_model"
        and all(getattr(vision, key, None) == value for key, value in LLAVA15_VISION_SHAPE.items())
        and getattr(config, "vision_feature_layer", None) == -2
        and getattr(config, "vision_feature_select_strategy", None) == "default"
        and getattr(config, "projector_hidden_act", None) == "gelu"
    )


def cls_attention_and_keys(layer: torch.nn.Module, hidden_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The [CLS] attention row and head-averaged keys of one CLIP encoder layer, from its own weights.

    methods.md, Inputs: apply the layer's pre-attention norm to the hidden state entering it,
    project the [CLS] query and all keys, softmax(q·kᵀ·scale) per head, average over heads, drop
    the [CLS] column without renormalising. Equals the eager attention row to float precision.

    Args:
        layer: a CLIP encoder layer (``layer_norm1``, ``self_attn`` with q/k projections).
        hidden_in: (T, C) hidden state entering ``layer``, [CLS] first (T = 1 + N).
    Returns:
        a: (N,) float32 head-averaged [CLS] attention to the N patches.
        keys: (N, hd) head-averaged keys of the patches, in the layer's dtype.
    """
    attn = layer.self_attn
    t = hidden_in.shape[0]
    normed = layer.layer_norm1(hidden_in)  # (T, C)
    q = attn.q_proj(normed[:1]).view(1, attn.num_heads, attn.head_dim).transpose(0, 1)  # (H, 1, hd)
    k = attn.k_proj(normed).view(t, attn.num_heads, attn.head_dim).transpose(0, 1)  # (H, T, hd)
    scores = (q.float() @ k.float().transpose(1, 2)) * attn.scale  # (H, 1, T)
    probs = scores.softmax(dim=-1)[:, 0, :]  # (H, T)
    return probs.mean(dim=0)[1:], k.mean(dim=0)[1:]  # (N,), (N, hd)


@register_adapter(
    "llava",
    "LlavaForConditionalGeneration with a CLIP vision tower and a single feature layer "
    "(LLaVA-1.5 7B/13B, BakLLaVA, llava-gemma, the PruneLens embedded model)",
)
class LlavaAdapter(ChatModel):
    """Everything the runtime needs from one loaded LLaVA model and its ``LlavaProcessor``.

    "[CLS] attention" is what methods.md says: the [CLS] query's attention to the patches in the
    feature layer, recomputed from that layer's q/k. Every method runs (keys and [CLS] are read).

    Attributes (read from the checkpoint):
        name: the model id or folder it was loaded from.
        feature_index: index into the tower's hidden states of the feature layer's output (>= 1).
        select_strategy: ``"default"`` (drop [CLS]) or ``"full"`` ([CLS] goes to the LLM too).
        grid: (rows, cols) of the patch grid.
        patch_size: patch side in input pixels.
        image_token_id / image_token: the placeholder the chat template emits once per image.
        context_length: the language model's maximum number of positions.
    """

    family = "llava"
    architecture = ARCHITECTURE
    model_class: Any = LlavaForConditionalGeneration
    vision_model_types = VISION_MODEL_TYPES
    select_strategies = SELECT_STRATEGIES
    attention_signal = "[CLS] attention: the [CLS] query's attention to the patches in the feature layer"
    paper_budgets = (PAPER_BUDGETS, PAPER_TOKENS)

    @classmethod
    def check_config(cls, config: Any, name: str) -> None:
        """Refuse LLaVA configs this adapter cannot run, naming the offending setting."""
        check_architecture(config, name, cls.architecture)
        vision_type = getattr(config.vision_config, "model_type", None)
        if vision_type not in cls.vision_model_types:
            raise ValueError(
                f"model {name!r} has a {vision_type!r} vision tower; supported towers: "
                f"{', '.join(cls.vision_model_types)}"
            )
        layer = config.vision_feature_layer
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ValueError(
                f"model {name!r} concatenates several vision feature layers ({layer!r}); "
                "only a single feature layer is supported"
            )
        if config.vision_feature_select_strategy not in cls.select_strategies:
            raise ValueError(
                f"model {name!r} uses vision_feature_select_strategy "
                f"{config.vision_feature_select_strategy!r}; supported: {', '.join(cls.select_strategies)}"
            )

    @classmethod
    def load(cls, folder: Any, dtype: torch.dtype) -> tuple[Any, Any]:
        """Model and processor from a local checkpoint folder (no network, no remote code)."""
        model = cls.model_class.from_pretrained(folder, dtype=dtype, trust_remote_code=False, local_files_only=True)
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
        return model, processor

    def __init__(self, model: Any, processor: Any, *, name: str) -> None:
        if not isinstance(model, self.model_class):
            raise ValueError(
                f"model {name!r} is a {type(model).__name__}; the {self.family} adapter needs {self.architecture}"
            )
        config = model.config
        self.check_config(config, name)
        self.bind(model, processor, name)
        vision = config.vision_config
        n_hidden = vision.num_hidden_layers + 1  # hidden states: embeddings + one per encoder layer
        if not -n_hidden <= config.vision_feature_layer < n_hidden:
            raise ValueError(
                f"vision_feature_layer {config.vision_feature_layer} is out of range for a tower with "
                f"{vision.num_hidden_layers} layers"
            )
        self.feature_index = config.vision_feature_layer % n_hidden
        if self.feature_index == 0:
            raise ValueError(
                f"model {name!r} takes its features from the patch embeddings (vision_feature_layer "
                f"{config.vision_feature_layer}), which have no attention to prune with"
            )
        self.select_strategy = config.vision_feature_select_strategy
        self.patch_size = int(vision.patch_size)
        side = int(vision.image_size) // self.patch_size
        self.grid = (side, side)

    # -- model facts -------------------------------------------------------------------------

    @property
    def vision_tower(self) -> torch.nn.Module:
        return self.model.model.vision_tower

    @property
    def projector(self) -> torch.nn.Module:
        return self.model.model.multi_modal_projector

    @property
    def n_prefix_tokens(self) -> int:
        """Visual tokens the LLM always receives besides the patches ([CLS] under "full")."""
        return 1 if self.select_strategy == "full" else 0

    @property
    def n_tokens(self) -> int:
        """N, the patches of the one grid."""
        return self.grid[0] * self.grid[1]

    @property
    def max_image_tokens(self) -> int:
        """The patches plus the prefix: every image gives the LLM the same number of tokens."""
        return self.n_tokens + self.n_prefix_tokens

    def budget_presets(self) -> list[int]:
        """The paper's LLaVA-1.5 budgets (192/128/64/32 of 576) scaled to N."""
        budgets, of_tokens = self.paper_budgets
        return scaled_budgets(budgets, of_tokens, self.n_tokens)

    def is_llava15(self) -> bool:
        """True when the checkpoint has LLaVA-1.5's architecture (methods.md's calibration applies)."""
        return is_llava15_config(self.model.config)

    def describe(self) -> dict[str, Any]:
        """Plain-value summary for runner metadata."""
        return {
            "family": self.family,
            "feature_layer": self.model.config.vision_feature_layer,
            "select_strategy": self.select_strategy,
            "grid": self.grid,
            "patch_size": self.patch_size,
            "n_patches": self.grid[0] * self.grid[1],
            "n_tokens": self.n_tokens,
            "budget_presets": self.budget_presets(),
            "attention_signal": self.attention_signal,
            "image_token_id": self.image_token_id,
            "context_length": self.context_length,
        }

    # -- image -> pixels ---------------------------------------------------------------------

    def preprocess(self, image: Image.Image) -> tuple[torch.Tensor, ImageGeometry]:
        """Pixels for the tower and the grid's place on the image.

        Args:
            image: an RGB PIL image of any size.
        Returns:
            pixel_values: (1, 3, H, W) on the model's device and dtype.
            geometry: where the patch grid lies on ``image``.
        """
        pixel_values = self.processor.image_processor(images=image, return_tensors="pt")["pixel_values"]
        pixel_values = pixel_values.to(self.device, self.dtype)  # (1, 3, H, W)
        height, width = pixel_values.shape[-2:]
        rows, cols = height // self.patch_size, width // self.patch_size
        if (rows, cols) != self.grid:
            raise ValueError(
                f"the image processor produced {height} x {width} pixels ({rows} x {cols} patches) but "
                f"the tower expects a {self.grid[0]} x {self.grid[1]} grid"
            )
        geometry = ImageGeometry(
            original_size=image.size,
            crop_box=self._crop_box(image.size),
            input_size=(int(height), int(width)),
            patch_size=self.patch_size,
            grid=self.grid,
        )
        return pixel_values, geometry

    def _crop_box(self, size: tuple[int, int]) -> tuple[float, float, float, float]:
        """The region of the original image the processor's pad/resize/centre-crop keeps."""
        ip = self.processor.image_processor
        width, height = float(size[0]), float(size[1])
        left, top = 0.0, 0.0
        if getattr(ip, "do_pad", False):  # LlavaImageProcessor pads to a square first
            side = max(width, height)
            left, top = -(side - width) / 2, -(side - height) / 2
            width = height = side
        box = (left, top, left + width, top + height)
        target = getattr(ip, "size", None) or {}
        shortest = target.get("shortest_edge") if hasattr(target, "get") else None
        crop = getattr(ip, "crop_size", None) or {}
        if not (getattr(ip, "do_resize", False) and shortest and getattr(ip, "do_center_crop", False)):
            return box  # resized to a fixed size (stretched) or kept as is: the grid covers everything
        scale = shortest / min(width, height)
        crop_w, crop_h = crop.get("width") / scale, crop.get("height") / scale
        cx, cy = left + width / 2, top + height / 2
        return (cx - crop_w / 2, cy - crop_h / 2, cx + crop_w / 2, cy + crop_h / 2)

    # -- pixels -> pruning inputs --------------------------------------------------------------

    def read_image(self, image: Image.Image) -> ImageReadout:
        """The one grid of ``image``: ``preprocess`` then ``encode``."""
        pixel_values, geometry = self.preprocess(image)
        return ImageReadout(grids=(self.encode(pixel_values),), geometries=(geometry,), names=("image",))

    def encode(self, pixel_values: torch.Tensor) -> VisualFeatures:
        """The pruning read-out of one image with the tower's default (SDPA/flash) attention.

        One ``get_image_features`` call captures only two hidden states: the one entering the
        feature layer (for the [CLS] row and keys) and the feature layer's output (V). F comes from
        the model's own projection of V, exactly as the stock forward computes it.

        Args:
            pixel_values: (1, 3, H, W) from ``preprocess``.
        """
        i = self.feature_index
        out = self.model.get_image_features(
            pixel_values=pixel_values,
            vision_feature_layer=self.model.config.vision_feature_layer,
            vision_feature_select_strategy=self.select_strategy,
            output_hidden_states=[i - 1, i],
            return_dict=True,
        )
        hidden_in = out.hidden_states[i - 1][0]  # (1 + N, C)
        hidden_feat = out.hidden_states[i][0]  # (1 + N, C)
        projected = out.pooler_output[0]  # (P + N, D)
        n_prefix = self.n_prefix_tokens
        layer = self.vision_tower.encoder.layers[i - 1]
        cls_attn, keys = cls_attention_and_keys(layer, hidden_in)
        return VisualFeatures(
            feats_pre=hidden_feat[1:],
            feats=projected[n_prefix:],
            cls_attn=cls_attn,
            keys=keys,
            cls_feat=hidden_feat[0],
            prefix=projected[:n_prefix],
        )

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pre-projector tokens (K, C) -> LLM embeddings (K, D) through the model's projector."""
        return self.projector(tokens.to(self.device, self.dtype))
