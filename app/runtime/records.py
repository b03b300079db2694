"""The runtime's records: an encoded image, one answer, the decoding options, and the errors it raises.

Frozen dataclasses at the boundary (style.md): ``Encoding`` is what ``Runner.encode`` returns and
every later call takes, with one ``GridPart`` per patch grid of the image; ``Generation`` is one
answer with its timings; ``GenerationOptions`` is the one validated set of decoding options every
generate call takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

import pruning

from .adapters import ImageGeometry, RopePositions, VisualLayout

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "MAX_NEW_TOKENS",
    "Encoding",
    "Generation",
    "GenerationOptions",
    "GridPart",
    "ModelNotAvailableError",
    "OutOfMemoryError",
    "as_options",
]

MAX_NEW_TOKENS = 4096
DEFAULT_MAX_NEW_TOKENS = 128


class ModelNotAvailableError(OSError):
    """The model is neither a local folder nor in the local cache, and cannot be downloaded now."""


class OutOfMemoryError(RuntimeError):
    """The device ran out of memory during one request; the runner itself stays usable."""


@dataclass(frozen=True, eq=False)
class GridPart:
    """One patch grid of an image (the only one for LLaVA-1.5; LLaVA-NeXT's base image or one crop).

    Attributes:
        name: a short label (``"image"``, ``"base"``, ``"crop 0,1"``).
        inputs: this grid's ``PruneInputs``: its own attention signal, its own grid, raster order.
        geometry: where this grid lies on the original image.
        offset: the encoding's index of this grid's first token (tokens are numbered grid by grid).
        image_erank: erank(F) over this grid's tokens.
    """

    name: str
    inputs: pruning.PruneInputs
    geometry: ImageGeometry
    offset: int
    image_erank: float

    @property
    def n_tokens(self) -> int:
        return self.inputs.n_tokens


@dataclass(frozen=True, eq=False)
class Encoding:
    """One image encoded by one model: everything needed to select and generate, computed once.

    Attributes:
        inputs: the ``PruneInputs`` (V, F, a, Kv, [CLS] feature, grid) on the model's device. With
            several grids: every grid's tokens, grid after grid, as one list (grid ``(1, N)``, no
            single [CLS] feature); ``Runner.select`` selects in each grid of ``parts``.
        geometry: where the (first) patch grid lies on the original image (for overlays).
        image_erank: erank(F), methods.md's image complexity (with several grids: the mean of the
            grids' own eranks, the quantity the erank-aware methods see in each grid).
        attention_entropy: entropy of the [CLS] attention over the patches (nats).
        prefix: (P, D) tokens the LLM always receives ahead of the patches (P = 0 for LLaVA-1.5).
        model: the runner's model name.
        key: the cache key (image content + model + settings).
        encode_ms: wall time of the encoding when it was computed (pixels to metrics).
        parts: one ``GridPart`` per patch grid (one for LLaVA-1.5, whose ``inputs`` are ``inputs``).
        layout: where tokens and newlines sit in the LLM's sequence; None for one grid in raster order.
        rope: each token's M-RoPE offsets (Qwen2.5-VL), which kept tokens keep; None for 1-D positions.
    """

    inputs: pruning.PruneInputs
    geometry: ImageGeometry
    image_erank: float
    attention_entropy: float
    prefix: torch.Tensor
    model: str
    key: str
    encode_ms: float
    parts: tuple[GridPart, ...] = ()
    layout: VisualLayout | None = None
    rope: RopePositions | None = None

    @property
    def n_tokens(self) -> int:
        """N, the number of patch tokens."""
        return self.inputs.n_tokens

    @property
    def grid(self) -> tuple[int, int]:
        return self.inputs.grid

    def part_of(self, index: int) -> GridPart:
        """The grid token ``index`` belongs to."""
        if not 0 <= index < self.n_tokens:
            raise ValueError(f"token index {index} is outside this encoding's N = {self.n_tokens} tokens")
        return next(part for part in reversed(self.parts) if part.offset <= index)

    def patch_box(self, index: int) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) of token ``index`` in original-image coordinates, in any grid."""
        part = self.part_of(index)
        return part.geometry.patch_box(index - part.offset)


@dataclass(frozen=True)
class Generation:
    """One answer and what it cost.

    Attributes:
        text: the decoded answer (special tokens skipped).
        token_ids: the new token ids, end-of-answer token included when one was produced.
        n_visual_tokens: how many visual tokens the LLM saw.
        timings: ``encode_ms`` (the encoding's cost when computed), ``select_ms`` (0 without a
            selection, None when the selection was not made by ``Runner.select``), ``prefill_ms``
            (generate call to first new token), ``decode_ms_per_token`` (None with one token),
            ``total_ms`` (encode + select + this call), ``peak_memory_mb`` (CUDA; None on CPU),
            ``n_new_tokens``, ``batch_size``.
        method: the selection's method, or ``"full"`` without a selection.
        finish_reason: ``"eos"``, ``"length"`` or ``"cancelled"``.
        n_layout_tokens: newline embeddings the LLM saw besides the visual tokens (LLaVA-NeXT's
            row ends; 0 for single-grid models). Never part of a budget.
        selection: what an in-LLM method (FastV, DART at layer K) kept, chosen inside the language
            model during this generation and so depending on the prompt; None for every other
            row (its selection is the one it was given). ``n_visual_tokens`` then counts what the
            layers from the pruning layer on saw; ``selection.info`` says the layer, every visual
            token the earlier layers saw (``n_tokens``) and each layer's cache length.
    """

    text: str
    token_ids: tuple[int, ...]
    n_visual_tokens: int
    timings: dict[str, Any]
    method: str = "full"
    finish_reason: str = "length"
    n_layout_tokens: int = 0
    selection: pruning.Selection | None = None


@dataclass(frozen=True)
class GenerationOptions:
    """Decoding options shared by ``generate`` and ``generate_many``, validated.

    Greedy unless ``do_sample``; ``temperature``, ``top_p`` and ``top_k`` need ``do_sample=True``;
    ``seed`` makes sampling reproducible without touching the global random state.
    """

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    do_sample: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens must be an int in [1, {MAX_NEW_TOKENS}], got {n!r}")
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"do_sample must be True or False, got {self.do_sample!r}")
        t, p, k = self.temperature, self.top_p, self.top_k
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 100):
            raise ValueError(f"temperature must be in (0, 100], got {t!r}")
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {p!r}")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
            raise ValueError(f"top_k must be a non-negative int, got {k!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if not self.do_sample and self.sampling():
            raise ValueError(f"temperature/top_p/top_k need do_sample=True (got {self.sampling()})")

    def sampling(self) -> dict[str, float | int]:
        """The sampling parameters that were set, as ``generate`` keyword arguments."""
        given = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
        return {key: value for key, value in given.items() if value is not None}


def as_options(options: Any) -> GenerationOptions:
    """``options``, or the defaults for None; anything else is a ``ValueError``."""
    if options is None:
        return GenerationOptions()
    if not isinstance(options, GenerationOptions):
        raise ValueError(f"options must be a GenerationOptions, got {type(options).__name__}")
    return options
