"""Model runtime: run a LLaVA-family model with any ``pruning`` selection through stock transformers.

    from app.runtime import load_runner
    runner = load_runner("llava-hf/llava-1.5-7b-hf")      # or a local folder
    enc = runner.encode(image)                            # once per image (bounded LRU cache)
    sel = runner.select(enc, "adaptive", 64)              # cheap; the model's calibration is filled in
    gen = runner.generate(enc, "What is shown?", sel)     # gen.text, gen.token_ids, gen.timings

Encode once, select many times, generate from only the kept tokens: the kept (or merged) visual
tokens are spliced, in raster order, into ``inputs_embeds`` in place of the prompt's one image
placeholder, and the model's public ``generate`` does the rest. Nothing in transformers is patched.
Model-specific knowledge lives in ``app.adapters``; this module is model-agnostic.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import os
import socket
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer
from transformers.generation.streamers import BaseStreamer

import pruning

from .adapters import ImageGeometry, adapter_for, check_config, load_pretrained, supported_models
from .images import image_digest, load_image

__all__ = [
    "CALIBRATION_FILE",
    "Calibration",
    "Encoding",
    "Generation",
    "GenerationOptions",
    "GenerationStream",
    "ModelNotAvailableError",
    "OutOfMemoryError",
    "Runner",
    "load_image",
    "load_runner",
    "read_calibration",
]

CALIBRATION_FILE = "prunelens_calibration.json"  # written by `python -m app.calibrate`, beside the weights
MAX_NEW_TOKENS = 4096
DEFAULT_MAX_NEW_TOKENS = 128
DEFAULT_CACHE_SIZE = 32  # encodings kept per runner
CPU_OOM_MESSAGE = "can't allocate memory"  # what torch's CPU allocator says when an allocation fails
HUB_PROBE_TIMEOUT_S = 3.0  # how long to wait for the hub before declaring the machine offline
_TRUTHY = {"1", "on", "yes", "true"}

logger = logging.getLogger(__name__)


class ModelNotAvailableError(OSError):
    """The model is neither a local folder nor in the local cache, and cannot be downloaded now."""


class OutOfMemoryError(RuntimeError):
    """The device ran out of memory during one request; the runner itself stays usable."""


# -- records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """A model's pruning calibration: statistics of its image erank over typical images.

    Attributes:
        erank_avg: mean image erank (adaptive's ``erank_avg``).
        erank_p10: 10th percentile (hybrid-erank's ``erank_lo``).
        erank_p90: 90th percentile (hybrid-erank's ``erank_hi``).
        source: ``"file"`` (calibrated for this model), ``"paper-llava-1.5-7b"`` (a LLaVA-1.5 checkpoint
            without a file: methods.md's values) or ``"default-llava-1.5"`` (another model without a
            file: LLaVA-1.5-7B's values stand in and may not fit; see ``note``).
        n_images: how many images the statistics came from (None for paper values).
        path: the calibration file, when there is one.
        note: one human-readable sentence about where the numbers come from.
    """

    erank_avg: float
    erank_p10: float
    erank_p90: float
    source: str
    n_images: int | None = None
    path: str | None = None
    note: str = ""

    def method_params(self) -> dict[str, float]:
        """The calibration under the parameter names the pruning methods use."""
        return {"erank_avg": self.erank_avg, "erank_lo": self.erank_p10, "erank_hi": self.erank_p90}

    def bin(self, image_erank: float) -> str:
        """The image's complexity bin on this model's scale: ``"simple"`` at or below the 10th
        percentile, ``"complex"`` at or above the 90th, ``"intermediate"`` between (the paper's
        simple/complex split)."""
        if image_erank <= self.erank_p10:
            return "simple"
        if image_erank >= self.erank_p90:
            return "complex"
        return "intermediate"


@dataclass(frozen=True, eq=False)
class Encoding:
    """One image encoded by one model: everything needed to select and generate, computed once.

    Attributes:
        inputs: the ``PruneInputs`` (V, F, a, Kv, [CLS] feature, grid) on the model's device.
        geometry: where the patch grid lies on the original image (for overlays).
        image_erank: erank(F), methods.md's image complexity.
        attention_entropy: entropy of the [CLS] attention over the patches (nats).
        prefix: (P, D) tokens the LLM always receives ahead of the patches (P = 0 for LLaVA-1.5).
        model: the runner's model name.
        key: the cache key (image content + model + settings).
        encode_ms: wall time of the encoding when it was computed (pixels to metrics).
    """

    inputs: pruning.PruneInputs
    geometry: ImageGeometry
    image_erank: float
    attention_entropy: float
    prefix: torch.Tensor
    model: str
    key: str
    encode_ms: float

    @property
    def n_tokens(self) -> int:
        """N, the number of patch tokens."""
        return self.inputs.n_tokens

    @property
    def grid(self) -> tuple[int, int]:
        return self.inputs.grid


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
    """

    text: str
    token_ids: tuple[int, ...]
    n_visual_tokens: int
    timings: dict[str, Any]
    method: str = "full"
    finish_reason: str = "length"


@dataclass(frozen=True)
class GenerationOptions:
    """Decoding options shared by ``generate``, ``generate_many`` and ``generate_stream``, validated.

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


@dataclass(frozen=True)
class _Row:
    """One request of a (possibly batched) generate call."""

    embeds: torch.Tensor  # (L, D) prompt embeddings with the visual tokens spliced in
    n_visual: int
    select_ms: float | None
    method: str


def _options(options: Any) -> GenerationOptions:
    if options is None:
        return GenerationOptions()
    if not isinstance(options, GenerationOptions):
        raise ValueError(f"options must be a GenerationOptions, got {type(options).__name__}")
    return options


# -- calibration ------------------------------------------------------------------------------


def paper_calibration(name: str, is_llava15: bool) -> Calibration:
    """methods.md's LLaVA-1.5-7B values, flagged by whether they really belong to ``name``."""
    paper = pruning.LLAVA15_7B
    values = {"erank_avg": paper["erank_avg"], "erank_p10": paper["erank_lo"], "erank_p90": paper["erank_hi"]}
    if is_llava15:
        note = "LLaVA-1.5 checkpoint without a calibration file: methods.md's LLaVA-1.5-7B values"
        return Calibration(**values, source="paper-llava-1.5-7b", note=note)
    note = (
        f"{name!r} has no {CALIBRATION_FILE}: LLaVA-1.5-7B's values stand in and may not fit this model; "
        "run `python -m app.calibrate MODEL IMAGE_FOLDER` (MODEL: its hub id or folder) to calibrate it"
    )
    return Calibration(**values, source="default-llava-1.5", note=note)


def read_calibration(path: str | os.PathLike) -> Calibration:
    """Read a calibration JSON written by ``app.calibrate``; a malformed file is a ``ValueError``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        values = {key: float(data[key]) for key in ("erank_avg", "erank_p10", "erank_p90")}
        n_images = int(data["n_images"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"calibration file {str(path)!r} is unreadable or incomplete ({err!r})") from None
    if not all(math.isfinite(v) and v >= 1 for v in values.values()) or not (values["erank_p10"] < values["erank_p90"]):
        raise ValueError(f"calibration file {str(path)!r} holds inconsistent values {values}")
    note = f"calibrated on {n_images} images ({path})"
    return Calibration(**values, source="file", n_images=n_images, path=str(path), note=note)


# -- timing helpers ---------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _TokenClock(BaseStreamer):
    """A streamer that records when new tokens arrive (and forwards them to ``inner``, if any).

    ``generate`` first puts the prompt (empty with ``inputs_embeds``), then each new step's tokens,
    already copied to the host, so the clock reads synchronised times on CUDA too.
    """

    def __init__(self, inner: BaseStreamer | None = None) -> None:
        self.inner = inner
        self.start = self.stop = 0.0  # set by the caller around ``generate``
        self.first: float | None = None
        self.last: float | None = None
        self.steps = 0
        self.ended = False
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if self._prompt_seen:
            now = time.perf_counter()
            self.first = now if self.first is None else self.first
            self.last = now
            self.steps += 1
        self._prompt_seen = True
        if self.inner is not None:
            self.inner.put(value)

    def end(self) -> None:
        if not self.ended and self.inner is not None:
            self.inner.end()
        self.ended = True

    def decode_ms_per_token(self) -> float | None:
        """Mean time per new token after the first (None with fewer than two)."""
        if self.steps < 2:
            return None
        return (self.last - self.first) * 1e3 / (self.steps - 1)


class _Cancel(StoppingCriteria):
    """Stops generation once ``event`` is set (a streaming consumer went away)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


# -- the runner -------------------------------------------------------------------------------


class Runner:
    """One loaded model, ready to encode images and generate from any selection of their tokens.

    Thread-safe for concurrent requests: the only shared mutable state is the encoding cache,
    guarded by a lock. Build with ``load_runner`` (a hub id or folder) or ``Runner.from_model``.
    """

    def __init__(
        self,
        adapter: Any,
        *,
        calibration: Calibration,
        model_dir: str | os.PathLike | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size must be a non-negative int, got {cache_size!r}")
        self.adapter = adapter
        self.calibration = calibration
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Encoding] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_model(
        cls,
        model: Any,
        processor: Any,
        *,
        name: str | None = None,
        model_dir: str | os.PathLike | None = None,
        calibration: Calibration | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> Runner:
        """A runner for a model already in memory (put it on its device and in eval mode first).

        The calibration is ``calibration`` if given, else ``model_dir/prunelens_calibration.json``
        when present, else the paper's values flagged as in ``paper_calibration``.
        """
        adapter = adapter_for(model, processor, name=name)
        model.eval()
        if calibration is None:
            calibration = _find_calibration(model_dir, adapter)
        if calibration.source == "default-llava-1.5":
            logger.warning("uncalibrated model: %s", calibration.note)
        return cls(adapter, calibration=calibration, model_dir=model_dir, cache_size=cache_size)

    # -- facts ---------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.adapter.name

    @property
    def device(self) -> torch.device:
        return self.adapter.device

    @property
    def dtype(self) -> torch.dtype:
        return self.adapter.dtype

    @property
    def metadata(self) -> dict[str, Any]:
        """Plain values describing the model, its settings and its calibration (for the UI)."""
        cal = self.calibration
        return {
            "model": self.name,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            **self.adapter.describe(),
            "n_prefix_tokens": self.adapter.n_prefix_tokens,
            "calibration": dataclasses.asdict(cal),
            "calibration_source": cal.source,
            "model_dir": str(self.model_dir) if self.model_dir is not None else None,
            "cache_size": self.cache_size,
        }

    def _settings_key(self) -> str:
        info = self.adapter.describe()
        return f"{self.name}|{self.device}|{self.dtype}|{info['feature_layer']}|{info['select_strategy']}"

    # -- encode ----------------------------------------------------------------------------------

    def encode(self, image: Any, *, use_cache: bool = True) -> Encoding:
        """Encode one image (PIL image, path, bytes or uint8 array); cached by content + model + settings.

        ``use_cache=False`` neither reads nor fills the cache (for one-off passes such as calibration).

        Returns:
            An ``Encoding`` whose ``inputs`` hold V (N, C), F (N, D), a (N,), Kv (N, hd), the [CLS]
            feature (C,) and the grid; the [CLS] row and keys are recomputed from the feature
            layer's own weights (the tower runs with its default attention).
        """
        img = load_image(image)
        key = f"{image_digest(img)}|{self._settings_key()}"
        with self._lock:
            hit = self._cache.get(key) if use_cache else None
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        with self._oom_guard("encoding an image"), torch.inference_mode():
            _sync(self.device)
            start = time.perf_counter()
            pixel_values, geometry = self.adapter.preprocess(img)
            raw = self.adapter.encode(pixel_values)
            inputs = pruning.PruneInputs(
                feats_pre=raw.feats_pre,
                feats=raw.feats,
                cls_attn=raw.cls_attn,
                grid=geometry.grid,
                keys=raw.keys,
                cls_feat=raw.cls_feat,
            )
            image_erank = pruning.effective_rank(inputs.feats)
            entropy = pruning.attention_entropy(inputs.cls_attn)
            _sync(self.device)
            encode_ms = (time.perf_counter() - start) * 1e3
        encoding = Encoding(
            inputs=inputs,
            geometry=geometry,
            image_erank=image_erank,
            attention_entropy=entropy,
            prefix=raw.prefix,
            model=self.name,
            key=key,
            encode_ms=encode_ms,
        )
        with self._lock:
            if use_cache and self.cache_size:
                self._cache[key] = encoding
                self._cache.move_to_end(key)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return encoding

    def clear_cache(self) -> None:
        """Forget every cached encoding."""
        with self._lock:
            self._cache.clear()

    # -- select ----------------------------------------------------------------------------------

    def select(self, encoding: Encoding, method: str, budget: int, **params: Any) -> pruning.Selection:
        """``pruning.select`` on this encoding, with the model's calibration filled in and timed.

        Calibration parameters (``erank_avg``, ``erank_lo``, ``erank_hi``) are passed to the methods
        that take them unless given in ``params``. The returned selection's ``info`` also holds
        ``select_ms`` and ``calibration_source``.
        """
        self._check_encoding(encoding)
        taken = pruning.method_params(method)
        calibrated = {k: v for k, v in self.calibration.method_params().items() if k in taken and k not in params}
        _sync(self.device)
        start = time.perf_counter()
        selection = pruning.select(method, encoding.inputs, budget, **calibrated, **params)
        _sync(self.device)
        select_ms = (time.perf_counter() - start) * 1e3
        info = {**selection.info, "select_ms": select_ms}
        if calibrated:
            info["calibration_source"] = self.calibration.source
        return dataclasses.replace(selection, info=info)

    # -- generate --------------------------------------------------------------------------------

    def visual_tokens(self, encoding: Encoding, selection: pruning.Selection | None = None) -> torch.Tensor:
        """The (P + K, D) visual embeddings the LLM receives: prefix, then kept/merged tokens in order."""
        self._check_encoding(encoding)
        inputs = encoding.inputs
        if selection is None:
            tokens = inputs.feats
        else:
            if not isinstance(selection, pruning.Selection):
                raise ValueError(f"selection must be a pruning.Selection or None, got {type(selection).__name__}")
            keep = selection.keep
            n = inputs.n_tokens
            if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= n):
                raise ValueError(
                    f"selection {selection.method!r} keeps patch indices in "
                    f"[{int(keep.min())}, {int(keep.max())}] but this encoding has N = {n} patches: "
                    "was it made for another image or model?"
                )
            if selection.tokens is None and keep.numel() == 0:
                raise ValueError(f"selection {selection.method!r} keeps no tokens")
            with torch.inference_mode():
                tokens = pruning.apply_selection(inputs, selection, project=self.adapter.project)
            width = inputs.feats.shape[1]
            if tokens.dim() != 2 or tokens.shape[1] != width:
                raise ValueError(
                    f"selection {selection.method!r} gives tokens of shape {tuple(tokens.shape)}; "
                    f"the LLM takes (K, {width})"
                )
        return torch.cat([encoding.prefix, tokens.to(encoding.prefix.dtype)], dim=0)

    def generate(
        self,
        encoding: Encoding,
        prompt: str,
        selection: pruning.Selection | None = None,
        options: GenerationOptions | None = None,
        *,
        cancel: threading.Event | None = None,
    ) -> Generation:
        """Answer ``prompt`` about the encoded image from only ``selection``'s visual tokens.

        ``selection=None`` feeds all N tokens (the unpruned model). ``options`` (default: greedy,
        ``DEFAULT_MAX_NEW_TOKENS``) sets the decoding. Setting ``cancel`` stops decoding after the
        current token (``finish_reason == "cancelled"``).
        """
        return self.generate_many(encoding, prompt, [selection], options, cancel=cancel)[0]

    def generate_many(
        self,
        encoding: Encoding,
        prompt: str,
        selections: Sequence[pruning.Selection | None],
        options: GenerationOptions | None = None,
        *,
        cancel: threading.Event | None = None,
    ) -> list[Generation]:
        """One batched ``generate`` call for several selections of one image (left padding).

        With greedy decoding each answer equals the one ``generate`` gives for that selection
        alone. Timings are those of the whole batch (``timings["batch_size"]``). Setting ``cancel``
        stops decoding after the current token.
        """
        if isinstance(selections, pruning.Selection) or not isinstance(selections, Sequence) or not selections:
            raise ValueError("selections must be a non-empty list of pruning.Selection (or None for all tokens)")
        options = _options(options)
        if cancel is not None and not isinstance(cancel, threading.Event):
            raise ValueError(f"cancel must be a threading.Event or None, got {type(cancel).__name__}")
        rows = [self._prepare_row(encoding, prompt, selection, options) for selection in selections]
        return self._run(encoding, rows, options, cancel=cancel)

    def generate_stream(
        self,
        encoding: Encoding,
        prompt: str,
        selection: pruning.Selection | None = None,
        options: GenerationOptions | None = None,
    ) -> GenerationStream:
        """Like ``generate``, but returns a ``GenerationStream``: iterate it for text pieces as they
        are produced; its ``generation`` holds the full ``Generation`` afterwards.

        Input errors are raised here, before anything runs; errors during generation are raised
        by the iteration.
        """
        options = _options(options)
        rows = [self._prepare_row(encoding, prompt, selection, options)]
        streamer = TextIteratorStreamer(self.adapter.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancel = threading.Event()

        def work() -> Generation:
            return self._run(encoding, rows, options, streamer=streamer, cancel=cancel)[0]

        return GenerationStream(work, streamer, cancel)

    # -- generation internals --------------------------------------------------------------------

    def _check_encoding(self, encoding: Any) -> None:
        if not isinstance(encoding, Encoding):
            raise ValueError(f"expected an Encoding from Runner.encode, got {type(encoding).__name__}")
        if encoding.model != self.name or encoding.inputs.device != self.device:
            raise ValueError(
                f"the encoding was made by {encoding.model!r} on {encoding.inputs.device}; this runner is "
                f"{self.name!r} on {self.device}"
            )

    def _prepare_row(
        self,
        encoding: Encoding,
        prompt: str,
        selection: pruning.Selection | None,
        options: GenerationOptions,
    ) -> _Row:
        """Validate one request and splice its visual tokens into the prompt's embeddings."""
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise ValueError("the prompt is empty: ask a question about the image")
        visual = self.visual_tokens(encoding, selection)  # (P + K, D)
        ids = self.adapter.prompt_ids(prompt)  # (T,), one image placeholder
        n_positions = ids.shape[0] - 1 + visual.shape[0]
        context = self.adapter.context_length
        if n_positions > context:
            raise ValueError(
                f"the prompt is too long: {ids.shape[0] - 1} text tokens + {visual.shape[0]} visual tokens = "
                f"{n_positions} positions, but {self.name!r} has a context of {context}"
            )
        if n_positions + options.max_new_tokens > context:
            raise ValueError(
                f"max_new_tokens = {options.max_new_tokens} is too large: the prompt takes {n_positions} of "
                f"the {context} positions, leaving at most {context - n_positions} new tokens"
            )
        at = int((ids == self.adapter.image_token_id).nonzero()[0, 0])
        with torch.inference_mode():
            text = self.adapter.embed(ids)  # (T, D)
            embeds = torch.cat([text[:at], visual.to(text.dtype), text[at + 1 :]], dim=0)  # (L, D)
        return _Row(
            embeds=embeds,
            n_visual=visual.shape[0],
            select_ms=0.0 if selection is None else selection.info.get("select_ms"),
            method="full" if selection is None else selection.method,
        )

    def _run(
        self,
        encoding: Encoding,
        rows: list[_Row],
        options: GenerationOptions,
        *,
        streamer: BaseStreamer | None = None,
        cancel: threading.Event | None = None,
    ) -> list[Generation]:
        """One ``generate`` call over the left-padded rows; one ``Generation`` per row."""
        device = self.device
        batch, length = len(rows), max(row.embeds.shape[0] for row in rows)
        pad_id = self.adapter.pad_token_id()
        clock = _TokenClock(streamer)
        stopping = StoppingCriteriaList([_Cancel(cancel)]) if cancel is not None else None
        with (
            self._oom_guard(f"generating ({batch} row(s) of up to {length} positions)"),
            torch.inference_mode(),
        ):
            pad = self.adapter.embed(torch.tensor([pad_id], device=device))  # (1, D)
            embeds = pad.expand(batch, length, -1).clone()  # (B, L, D)
            mask = torch.zeros(batch, length, dtype=torch.long, device=device)  # (B, L)
            for b, row in enumerate(rows):
                n = row.embeds.shape[0]
                embeds[b, length - n :] = row.embeds
                mask[b, length - n :] = 1
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            clock.start = time.perf_counter()
            try:
                with _seeded(options.seed, device):
                    sequences = self.adapter.model.generate(
                        inputs_embeds=embeds,
                        attention_mask=mask,
                        max_new_tokens=options.max_new_tokens,
                        do_sample=options.do_sample,
                        num_beams=1,
                        pad_token_id=pad_id,
                        streamer=clock,
                        stopping_criteria=stopping,
                        **options.sampling(),
                    )  # (B, n_new): with inputs_embeds only the new tokens come back
            finally:
                clock.end()
            _sync(device)
            clock.stop = time.perf_counter()
            peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        cancelled = cancel is not None and cancel.is_set()
        return [
            self._generation(encoding, row, sequences[b].tolist(), clock, peak_mb, batch, cancelled)
            for b, row in enumerate(rows)
        ]

    def _generation(
        self,
        encoding: Encoding,
        row: _Row,
        ids: list[int],
        clock: _TokenClock,
        peak_mb: float | None,
        batch: int,
        cancelled: bool,
    ) -> Generation:
        """Trim one row's tokens at its first end-of-answer token and attach the timings."""
        eos = set(self.adapter.eos_token_ids())
        finish = "cancelled" if cancelled else "length"
        for i, token in enumerate(ids):
            if token in eos:
                ids, finish = ids[: i + 1], "eos"
                break
        elapsed_ms = (clock.stop - clock.start) * 1e3
        timings = {
            "encode_ms": encoding.encode_ms,
            "select_ms": row.select_ms,
            "prefill_ms": (clock.first - clock.start) * 1e3 if clock.first is not None else elapsed_ms,
            "decode_ms_per_token": clock.decode_ms_per_token(),
            "total_ms": encoding.encode_ms + (row.select_ms or 0.0) + elapsed_ms,
            "peak_memory_mb": peak_mb,
            "n_new_tokens": len(ids),
            "batch_size": batch,
        }
        return Generation(
            text=self.adapter.tokenizer.decode(ids, skip_special_tokens=True),
            token_ids=tuple(ids),
            n_visual_tokens=row.n_visual,
            timings=timings,
            method=row.method,
            finish_reason=finish,
        )

    @contextmanager
    def _oom_guard(self, what: str) -> Iterator[None]:
        """Turn a device out-of-memory into ``OutOfMemoryError`` after freeing what the request held."""
        failed = None
        try:
            yield
        except torch.OutOfMemoryError as err:
            failed = str(err).splitlines()[0][:300] if str(err) else "out of memory"
        except RuntimeError as err:
            if CPU_OOM_MESSAGE not in str(err):
                raise
            failed = str(err).splitlines()[0][:300]
        if failed is None:
            return
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        raise OutOfMemoryError(
            f"{self.device} ran out of memory while {what} ({failed}). The runner is still usable: try fewer "
            "visual tokens, fewer selections at once, a smaller max_new_tokens, or a smaller dtype."
        )


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch's generators for one sampled generation, restoring their state afterwards."""
    if seed is None:
        yield
        return
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class GenerationStream:
    """Text pieces of one generation as they are produced, then the whole ``Generation``.

        stream = runner.generate_stream(enc, "What is shown?", sel)
        for piece in stream:
            print(piece, end="")
        stream.generation.timings

    Generation runs in a background thread; ``close()`` (or leaving a ``with`` block) stops it early.
    """

    def __init__(self, work: Callable[[], Generation], streamer: TextIteratorStreamer, cancel: threading.Event):
        self._streamer = streamer
        self._cancel = cancel
        self._result: Generation | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._target, args=(work,), daemon=True)
        self._thread.start()

    def _target(self, work: Callable[[], Generation]) -> None:
        try:
            self._result = work()
        except BaseException as err:  # re-raised in the consumer's thread by __iter__
            self._error = err
            self._streamer.end()

    def __iter__(self) -> Iterator[str]:
        for piece in self._streamer:
            if piece:
                yield piece
        self._thread.join()
        if self._error is not None:
            raise self._error

    @property
    def generation(self) -> Generation:
        """The finished ``Generation`` (waits for the background thread)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def close(self) -> None:
        """Stop generating as soon as possible (the result keeps what was produced)."""
        self._cancel.set()
        self._thread.join()

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- loading ------------------------------------------------------------------------------------


def _find_calibration(model_dir: str | os.PathLike | None, adapter: Any) -> Calibration:
    if model_dir is not None:
        path = Path(model_dir) / CALIBRATION_FILE
        if path.is_file():
            return read_calibration(path)
    return paper_calibration(adapter.name, adapter.is_llava15())


def _resolve_device_dtype(device: str | torch.device, dtype: str | torch.dtype) -> tuple[torch.device, torch.dtype]:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r} ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was requested but CUDA is not available on this machine")
    if dtype == "auto":
        if device.type != "cuda":
            return device, torch.float32
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if isinstance(dtype, str):
        if dtype not in names:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(names)}, got {dtype!r}")
        dtype = names[dtype]
    if dtype not in names.values():
        raise ValueError(f"dtype must be 'auto' or one of {sorted(names)}, got {dtype!r}")
    return device, dtype


def _offline() -> bool:
    from huggingface_hub import constants

    env = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return bool(constants.HF_HUB_OFFLINE) or any(v.strip().lower() in _TRUTHY for v in env)


def _hub_reachable(endpoint: str) -> bool:
    """Whether a TCP connection to the hub opens within ``HUB_PROBE_TIMEOUT_S`` (DNS included)."""
    url = urllib.parse.urlparse(endpoint)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return False
    reachable = threading.Event()

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
            reachable.set()
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_PROBE_TIMEOUT_S)
    return reachable.is_set()


def _unavailable(model: str, cache: str, reason: str) -> ModelNotAvailableError:
    return ModelNotAvailableError(
        f"model {model!r} is not in the local Hugging Face cache ({cache}) and {reason}. "
        f"To make it available, either run `huggingface-cli download {model}` (or `hf download {model}`) "
        f"on a connected machine and copy its cache folder to {cache} (or point HF_HUB_CACHE at a copy), "
        "or pass the path of a local folder holding the model's files "
        "(config.json, *.safetensors, tokenizer and processor files)."
    )


def _locate(model: str, cache_dir: str | os.PathLike | None) -> Path:
    """The local folder of ``model``: the folder itself, the cached snapshot, or a fresh download."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelNotAvailableError(f"model path {model!r} is not a folder (expected a hub id or a model folder)")
    try:
        validate_repo_id(model)
    except HFValidationError as err:
        raise ValueError(f"{model!r} is neither a model folder nor a valid hub id ({err})") from None
    cache = str(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE
    try:
        return Path(snapshot_download(model, cache_dir=cache, local_files_only=True))
    except Exception:
        pass
    if _offline():
        raise _unavailable(model, cache, "offline mode is on (HF_HUB_OFFLINE)")
    endpoint = os.environ.get("HF_ENDPOINT", constants.ENDPOINT)
    if not _hub_reachable(endpoint):
        raise _unavailable(model, cache, f"the hub ({endpoint}) cannot be reached from this machine")
    try:
        return Path(
            snapshot_download(
                model,
                cache_dir=cache,
                etag_timeout=HUB_PROBE_TIMEOUT_S,
                ignore_patterns=["*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack", "*.onnx", "*.gguf"],
            )
        )
    except Exception as err:
        raise _unavailable(model, cache, f"downloading it failed ({type(err).__name__}: {err})") from None


def load_runner(
    model: str,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    *,
    cache_dir: str | os.PathLike | None = None,
    calibration: str | os.PathLike | Calibration | None = None,
    cache_size: int = DEFAULT_CACHE_SIZE,
) -> Runner:
    """Load a supported model from a hub id or a local folder and wrap it in a ``Runner``.

    Args:
        model: a Hugging Face id (``llava-hf/llava-1.5-7b-hf``) or a local folder.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        dtype: ``"auto"`` (bfloat16 on CUDA, float16 where bf16 is unsupported, float32 on CPU),
            ``"float32"``, ``"bfloat16"``, ``"float16"`` or a torch dtype.
        cache_dir: the hub cache to look in (default: huggingface_hub's).
        calibration: a ``Calibration`` or the path of a calibration JSON; by default
            ``prunelens_calibration.json`` beside the weights, else the paper's values (flagged).
        cache_size: how many encodings the runner keeps.
    Returns:
        a runner named after the model as people know it: a local folder by its folder name
        (``prunelens-tiny-llava``, never the server's path), a hub id as given.
    Raises:
        ModelNotAvailableError: not a folder and not cached, and offline or the download failed;
            fails fast (no retries) and says how to make the model available.
        ValueError: an unsupported model (the message lists what is supported) or bad arguments.
    """
    from .preflight import model_name

    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"model must be a hub id or a folder path, got {model!r}")
    device, dtype = _resolve_device_dtype(device, dtype)
    if calibration is not None and not isinstance(calibration, (Calibration, str, os.PathLike)):
        raise ValueError(f"calibration must be a Calibration or a JSON path, got {type(calibration).__name__}")
    folder = _locate(model, cache_dir)
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        supported = "; ".join(supported_models())
        raise ValueError(
            f"{model!r} ({folder}) holds no model config transformers can read without remote code "
            f"({type(err).__name__}: {err}). Supported models: {supported}"
        ) from None
    check_config(config, model)
    net, processor = load_pretrained(config, folder, dtype)
    net.to(device).eval()
    if calibration is not None and not isinstance(calibration, Calibration):
        calibration = read_calibration(calibration)
    return Runner.from_model(
        net, processor, name=model_name(model), model_dir=folder, calibration=calibration, cache_size=cache_size
    )
