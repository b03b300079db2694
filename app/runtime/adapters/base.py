"""What the runtime needs from a model family: the records an adapter returns, its typed protocol, the registry.

``Adapter`` is the protocol every family's adapter implements (``llava.py`` for LLaVA); the runtime
holds adapters only through it. Families register themselves by ``config.model_type`` with
``register_adapter``; ``adapter_for(model, processor)`` picks one or refuses the model with a
message that lists what is supported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from PIL import Image

from ...preflight import SUPPORTED_ARCHITECTURES

__all__ = [
    "Adapter",
    "ImageGeometry",
    "ImageReadout",
    "ImageTextProcessor",
    "RopePositions",
    "VisualFeatures",
    "VisualLayout",
    "adapter_for",
    "check_architecture",
    "check_config",
    "load_model_and_processor",
    "load_pretrained",
    "register_adapter",
    "registered_adapters",
    "scaled_budgets",
    "supported_models",
]


@dataclass(frozen=True)
class ImageGeometry:
    """Where the model's patch grid lies on the image the user gave (for overlays).

    Attributes:
        original_size: (width, height) of the image as given, in pixels.
        crop_box: (left, top, right, bottom) of the region the grid covers, in original-image pixel
            coordinates (may extend past the image when the processor pads to a square).
        input_size: (height, width) of the pixel tensor the vision tower receives.
        patch_size: side of one patch in input pixels.
        grid: (rows, cols) of patches; patch ``i`` sits at row ``i // cols``, column ``i % cols``.
    """

    original_size: tuple[int, int]
    crop_box: tuple[float, float, float, float]
    input_size: tuple[int, int]
    patch_size: int
    grid: tuple[int, int]

    def patch_box(self, index: int) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) of patch ``index`` in original-image coordinates."""
        rows, cols = self.grid
        if not 0 <= index < rows * cols:
            raise ValueError(f"patch index {index} is outside the {rows} x {cols} grid")
        left, top, right, bottom = self.crop_box
        w, h = (right - left) / cols, (bottom - top) / rows
        r, c = divmod(index, cols)
        return (left + c * w, top + r * h, left + (c + 1) * w, top + (r + 1) * h)


@dataclass(frozen=True)
class VisualFeatures:
    """One image's vision-tower read-out, before it becomes ``PruneInputs``.

    Attributes:
        feats_pre: V, (N, C) feature-layer hidden states of the patches, [CLS] dropped.
        feats: F, (N, D) V through the multimodal projector.
        cls_attn: a, (N,) head-averaged [CLS] attention to the patches in the feature layer.
        keys: Kv, (N, hd) head-averaged keys of the patches in the feature layer.
        cls_feat: (C,) feature-layer hidden state of [CLS].
        prefix: (P, D) tokens the LLM always receives ahead of the patches (P = 1 when the model
            feeds its projected [CLS], i.e. the "full" select strategy; P = 0 otherwise).
    """

    feats_pre: torch.Tensor
    feats: torch.Tensor
    cls_attn: torch.Tensor
    keys: torch.Tensor
    cls_feat: torch.Tensor
    prefix: torch.Tensor


@dataclass(frozen=True)
class VisualLayout:
    """Where an image's patch tokens and newline tokens sit in the sequence the LLM receives.

    For images the LLM receives as several patch grids (LLaVA-NeXT's base image and crops), the
    stock order is not grid after grid, and newline embeddings end every row of the stitched crops.
    Token ``i`` is the encoding's ``i``-th token: grids in order, each in its own raster order.

    Attributes:
        sequence: (L,) int64, the stock visual sequence: a token index, or -1 where a newline goes.
        lines: (N,) int64, the line (stitched row) each token belongs to, -1 for none (the base
            image). Newline slot ``j`` (the ``j``-th -1 of ``sequence``) ends line ``j``.
        newline: (D,) the newline embedding, exactly as the stock model feeds it.
    """

    sequence: torch.Tensor
    lines: torch.Tensor
    newline: torch.Tensor


@dataclass(frozen=True)
class RopePositions:
    """Multimodal rotary positions (Qwen2.5-VL's M-RoPE) of an image's tokens, relative to the image's start.

    A token at offset (t, h, w) of an image whose first token sits at text position ``s`` has the
    3-D position (s + t, s + h, s + w); the text after the image starts at ``s + span``. Kept tokens
    keep their own offsets: pruning removes positions, it never renumbers them.

    Attributes:
        offsets: (3, N) int64 temporal, height and width offset of each token (in token order).
        span: how many text positions the whole image takes (max(rows, cols) of its merged grid).
    """

    offsets: torch.Tensor
    span: int


@dataclass(frozen=True)
class ImageReadout:
    """One image as an adapter reads it: one ``VisualFeatures`` per patch grid and where each lies.

    Attributes:
        grids: the read-out of each patch grid, in the order tokens are numbered.
        geometries: where each grid lies on the image (for overlays), one per grid.
        names: a short label per grid (``"image"`` for a single grid; ``"base"``, ``"crop 0,1"``).
        layout: how the grids' tokens reach the LLM; None for a single grid fed in raster order.
        rope: the tokens' M-RoPE positions, for models that place image tokens in 3-D (else None).
    """

    grids: tuple[VisualFeatures, ...]
    geometries: tuple[ImageGeometry, ...]
    names: tuple[str, ...]
    layout: VisualLayout | None = None
    rope: RopePositions | None = None

    def __post_init__(self) -> None:
        if not self.grids or not len(self.grids) == len(self.geometries) == len(self.names):
            raise ValueError(
                f"a read-out needs one geometry and one name per grid, got {len(self.grids)} grids, "
                f"{len(self.geometries)} geometries, {len(self.names)} names"
            )
        if len(self.grids) > 1 and self.layout is None:
            raise ValueError("a read-out of several grids needs a layout")


@dataclass(frozen=True)
class ImageTextProcessor:
    """A processor's image and text halves, where the family's processor class cannot be built.

    LLaVA-OneVision's and Qwen2.5-VL's processor classes need torchvision for their video half; the
    runtime only uses the image processor, the tokenizer and the chat template, so this stands in.
    """

    image_processor: Any
    tokenizer: Any
    chat_template: str | None = None

    def apply_chat_template(self, conversation: list[dict], **kwargs: Any) -> Any:
        """The tokenizer's rendering of ``conversation`` with this chat template."""
        return self.tokenizer.apply_chat_template(conversation, chat_template=self.chat_template, **kwargs)

    def save_pretrained(self, folder: Any) -> None:
        """Save both halves where ``from_pretrained`` of each finds them."""
        self.image_processor.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)


def scaled_budgets(budgets: tuple[int, ...], of_tokens: int, n_tokens: int) -> list[int]:
    """Budget presets: ``budgets`` (a paper's, measured on ``of_tokens`` tokens) scaled to ``n_tokens``."""
    return sorted({max(1, round(b * n_tokens / of_tokens)) for b in budgets}, reverse=True)


class Adapter(Protocol):
    """One loaded model of a supported family, as the runtime uses it.

    Attributes:
        family: the registered ``config.model_type``.
        name: the model's display name (hub id or folder name).
        model / processor / tokenizer: the transformers objects.
        grid: (rows, cols) of the patch grid; ``context_length``: the LLM's positions;
        image_token_id: the prompt's image placeholder; ``n_prefix_tokens``: visual tokens the LLM
        always receives besides the patches.
        attention_signal: what stands for methods.md's [CLS] attention ``a`` on this family.
    """

    family: ClassVar[str]
    name: str
    model: Any
    processor: Any
    tokenizer: Any
    grid: tuple[int, int]
    context_length: int
    image_token_id: int
    attention_signal: ClassVar[str]

    @staticmethod
    def check_config(config: Any, name: str) -> None:
        """Refuse a config of this family the adapter cannot run, naming the setting."""

    @staticmethod
    def load(folder: Any, dtype: torch.dtype) -> tuple[Any, Any]:
        """(model, processor) from a local folder, on the CPU in ``dtype``."""

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def n_prefix_tokens(self) -> int: ...

    @property
    def n_tokens(self) -> int:
        """N of a typical image: the patch tokens budgets and presets refer to (576 for LLaVA-1.5)."""

    @property
    def max_image_tokens(self) -> int:
        """The most embeddings one image can put into the LLM's sequence (patches, newlines, prefix)."""

    def budget_presets(self) -> list[int]:
        """The paper's budgets for this family, scaled to ``n_tokens``."""

    def is_llava15(self) -> bool:
        """Whether methods.md's LLaVA-1.5 calibration belongs to this checkpoint."""

    def describe(self) -> dict[str, Any]:
        """Plain-value facts for runner metadata (``feature_layer``, ``select_strategy``, ``grid``, ...)."""

    def eos_token_ids(self) -> list[int]: ...

    def pad_token_id(self) -> int: ...

    def read_image(self, image: Image.Image) -> ImageReadout:
        """Pixels through the tower: the pruning read-out of every patch grid of ``image``."""

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feature-layer tokens (e.g. merged ones) through the multimodal projector."""

    def prompt_ids(self, prompt: str) -> torch.Tensor:
        """(T,) ids of the rendered prompt with exactly one image placeholder."""

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """(T,) ids -> (T, D) input embeddings of the language model."""


_ADAPTERS: dict[str, tuple[type, str]] = {}


def register_adapter(model_type: str, description: str) -> Callable[[type], type]:
    """Class decorator: register an adapter for models whose ``config.model_type`` is ``model_type``."""

    def decorator(cls: type) -> type:
        if model_type not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"model_type {model_type!r} is missing from app.preflight.SUPPORTED_ARCHITECTURES "
                f"({sorted(SUPPORTED_ARCHITECTURES)}); list it there with its architecture"
            )
        if model_type in _ADAPTERS:
            raise ValueError(f"an adapter for model_type {model_type!r} is already registered")
        _ADAPTERS[model_type] = (cls, description)
        return cls

    return decorator


def registered_adapters() -> dict[str, type]:
    """``config.model_type`` -> adapter class, for every registered family."""
    return {model_type: cls for model_type, (cls, _) in _ADAPTERS.items()}


def supported_models() -> list[str]:
    """One line per supported model family (for error messages and the app's about box)."""
    return [f"{model_type}: {description}" for model_type, (_, description) in _ADAPTERS.items()]


def _unsupported(what: str) -> ValueError:
    lines = "\n  - ".join(supported_models())
    return ValueError(f"{what} is not supported by PruneLens. Supported models:\n  - {lines}")


def check_config(config: Any, name: str) -> None:
    """Refuse a config no adapter handles, before any weights are loaded."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _ADAPTERS:
        raise _unsupported(f"model {name!r} (model_type {model_type!r})")
    _ADAPTERS[model_type][0].check_config(config, name)


def load_pretrained(config: Any, folder: Any, dtype: torch.dtype) -> tuple[Any, Any]:
    """Load the (model, processor) of a checked config from a local folder, on the CPU in ``dtype``."""
    return _ADAPTERS[config.model_type][0].load(folder, dtype)


def adapter_for(model: Any, processor: Any, name: str | None = None) -> Adapter:
    """The adapter instance for ``model`` (an in-memory transformers model) and its ``processor``."""
    config = getattr(model, "config", None)
    name = name or getattr(config, "name_or_path", None) or type(model).__name__
    model_type = getattr(config, "model_type", None)
    if model_type not in _ADAPTERS:
        raise _unsupported(f"model {name!r} ({type(model).__name__}, model_type {model_type!r})")
    return _ADAPTERS[model_type][0](model, processor, name=name)


def load_model_and_processor(model_class: Any, folder: Any, dtype: torch.dtype) -> tuple[Any, Any]:
    """``model_class`` and its processor from a local folder, on the CPU in ``dtype``.

    The stock processors of OneVision and Qwen2.5-VL build a video processor that needs
    torchvision; without it, the processor is assembled from its image and text halves
    (``ImageTextProcessor``), which is all the runtime uses.
    """
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    model = model_class.from_pretrained(folder, dtype=dtype, trust_remote_code=False, local_files_only=True)
    try:
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
    except (ImportError, ValueError, AttributeError, TypeError):  # its video processor needs torchvision
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
        images = AutoImageProcessor.from_pretrained(
            folder, trust_remote_code=False, local_files_only=True, backend="pil"
        )
        processor = ImageTextProcessor(images, tokenizer, tokenizer.chat_template)
    return model, processor


def check_architecture(config: Any, name: str, architecture: str) -> None:
    """Refuse a config whose ``architectures`` do not include ``architecture`` (none listed passes)."""
    architectures = getattr(config, "architectures", None) or [architecture]
    if architecture not in architectures:
        raise ValueError(f"model {name!r} has architectures {architectures}; only {architecture} is supported")
