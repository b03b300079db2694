"""One batched ``generate`` call over prepared rows: splicing, padding, timing, cancelling, streaming.

A *row* is one request's prompt embeddings with its visual tokens spliced in place of the image
placeholder. ``run_rows`` left-pads rows to one length and makes one ``model.generate`` call,
timing the first and every later token with a streamer; ``group_rows`` decides which rows share a
call (padding a 64-token row to a 576-token one costs more than it saves). Everything here works
through the adapter's public surface (``embed``, ``prompt_ids``, ``model.generate``). The rows of
in-LLM methods (FastV, DART at layer K) run in ``inllm`` instead, with this module's clock, seeding
and ``row_generation``.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

import pruning

from .records import Encoding, Generation, GenerationOptions, OutOfMemoryError

__all__ = [
    "MAX_PADDING_SHARE",
    "Row",
    "RowTokens",
    "TokenClock",
    "group_rows",
    "oom_guard",
    "prepare_row",
    "row_generation",
    "run_rows",
    "seeded",
    "sync",
]

CPU_OOM_MESSAGE = "can't allocate memory"  # what torch's CPU allocator says when an allocation fails
MAX_PADDING_SHARE = 0.25  # a row joins a batch only if padding stays under this share of the batch


@dataclass(frozen=True)
class Row:
    """One request of a (possibly batched) generate call."""

    embeds: torch.Tensor  # (L, D) prompt embeddings with the visual tokens spliced in
    n_visual: int
    select_ms: float | None
    method: str
    n_layout: int = 0  # newline embeddings spliced in besides the visual tokens
    positions: torch.Tensor | None = None  # (3, L) M-RoPE positions of every row token (Qwen2.5-VL)
    image_at: int = 0  # where the spliced visual tokens start in ``embeds``


def sync(device: torch.device) -> None:
    """Wait for the device (CUDA) so that wall-clock times are the work's own."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TokenClock(BaseStreamer):
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


class RowTokens(BaseStreamer):
    """A streamer for a batch: after each decode step, ``progress(row, ids)`` for every row.

    ``rows`` maps the batch's rows to the caller's indices (a group of ``generate_many``); ids
    stop growing at a row's first end-of-answer token (the rest is padding).
    """

    def __init__(self, rows: Sequence[int], eos: set[int], progress: Callable[[int, list[int]], None]) -> None:
        self.rows = list(rows)
        self.eos = eos
        self.progress = progress
        self.ids: list[list[int]] = [[] for _ in self.rows]
        self.done = [False] * len(self.rows)
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate puts the (empty) prompt first
            self._prompt_seen = True
            return
        for b, token in enumerate(value.reshape(-1).tolist()):
            if self.done[b]:
                continue
            self.ids[b].append(token)
            self.done[b] = token in self.eos
            self.progress(self.rows[b], self.ids[b])

    def end(self) -> None:
        pass


class _Cancel(StoppingCriteria):
    """Stops generation once ``event`` is set (a streaming consumer went away)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def prepare_row(
    adapter: Any,
    name: str,
    visual: torch.Tensor,
    prompt: str,
    selection: pruning.Selection | None,
    options: GenerationOptions,
    *,
    n_layout: int = 0,
    rope_offsets: torch.Tensor | None = None,
    rope_span: int = 0,
) -> Row:
    """Validate one request and splice its (P + K [+ R], D) ``visual`` tokens into the prompt's embeddings.

    ``n_layout`` of them (R) are newline embeddings, which the row reports apart from its visual tokens.
    With ``rope_offsets`` ((3, K) M-RoPE offsets of the visual tokens) the row also gets its 3-D
    positions: text before the image 0, 1, ...; each visual token the image's start plus its own
    offset; text after the image from the start plus ``rope_span`` on, as if nothing were pruned.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("the prompt is empty: ask a question about the image")
    ids = adapter.prompt_ids(prompt)  # (T,), one image placeholder
    n_positions = ids.shape[0] - 1 + visual.shape[0]
    context = adapter.context_length
    if n_positions > context:
        raise ValueError(
            f"the prompt is too long: {ids.shape[0] - 1} text tokens + {visual.shape[0]} visual tokens = "
            f"{n_positions} positions, but {name!r} has a context of {context}"
        )
    if n_positions + options.max_new_tokens > context:
        raise ValueError(
            f"max_new_tokens = {options.max_new_tokens} is too large: the prompt takes {n_positions} of "
            f"the {context} positions, leaving at most {context - n_positions} new tokens"
        )
    at = int((ids == adapter.image_token_id).nonzero()[0, 0])
    with torch.inference_mode():
        text = adapter.embed(ids)  # (T, D)
        embeds = torch.cat([text[:at], visual.to(text.dtype), text[at + 1 :]], dim=0)  # (L, D)
    positions = None
    if rope_offsets is not None:
        before = torch.arange(at).expand(3, -1)
        after = at + rope_span + torch.arange(ids.shape[0] - at - 1).expand(3, -1)
        positions = torch.cat([before, at + rope_offsets.cpu(), after], dim=1)  # (3, L)
    return Row(
        embeds=embeds,
        n_visual=visual.shape[0] - n_layout,
        select_ms=0.0 if selection is None else selection.info.get("select_ms"),
        method="full" if selection is None else selection.method,
        n_layout=n_layout,
        positions=positions,
        image_at=at,
    )


def group_rows(lengths: Sequence[int], max_padding_share: float = MAX_PADDING_SHARE) -> list[list[int]]:
    """Which rows share one generate call: indices grouped so that padding stays small.

    Rows are taken longest first; a row joins the current group while the group's padding (pad
    positions over all positions) stays at or below ``max_padding_share``, else it starts a new
    group (so equal lengths share a call unless the group they would join is already too padded).
    The full model's 576-token row and 64-token pruned rows do not share one. Groups come back in
    the order of their first row, each in input order. A sampled (``seed``) generation is seeded
    per call, so its answers depend on the grouping; greedy ones do not.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups:
            group = groups[-1]
            longest = lengths[group[0]]
            total = longest * (len(group) + 1)
            used = sum(lengths[j] for j in group) + lengths[i]
            if (total - used) / total <= max_padding_share:
                group.append(i)
                continue
        groups.append([i])
    return sorted((sorted(g) for g in groups), key=lambda g: g[0])


def run_rows(
    adapter: Any,
    encoding: Encoding,
    rows: list[Row],
    options: GenerationOptions,
    *,
    streamer: BaseStreamer | None = None,
    cancel: threading.Event | None = None,
) -> list[Generation]:
    """One ``generate`` call over the left-padded rows; one ``Generation`` per row."""
    device = adapter.device
    batch, length = len(rows), max(row.embeds.shape[0] for row in rows)
    pad_id = adapter.pad_token_id()
    clock = TokenClock(streamer)
    stopping = StoppingCriteriaList([_Cancel(cancel)]) if cancel is not None else None
    with (
        oom_guard(device, f"generating ({batch} row(s) of up to {length} positions)"),
        torch.inference_mode(),
    ):
        pad = adapter.embed(torch.tensor([pad_id], device=device))  # (1, D)
        embeds = pad.expand(batch, length, -1).clone()  # (B, L, D)
        mask = torch.zeros(batch, length, dtype=torch.long, device=device)  # (B, L)
        for b, row in enumerate(rows):
            n = row.embeds.shape[0]
            embeds[b, length - n :] = row.embeds
            mask[b, length - n :] = 1
        extra = {}
        if rows[0].positions is not None:  # M-RoPE: text positions (for the mask), then the three axes
            positions = torch.zeros(4, batch, length, dtype=torch.long, device=device)  # (4, B, L)
            for b, row in enumerate(rows):
                n = row.embeds.shape[0]
                positions[0, b, length - n :] = torch.arange(n, device=device)
                positions[1:, b, length - n :] = row.positions.to(device)
            extra["position_ids"] = positions  # generate continues every axis from the last position
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        clock.start = time.perf_counter()
        try:
            with seeded(options.seed, device):
                sequences = adapter.model.generate(
                    inputs_embeds=embeds,
                    attention_mask=mask,
                    max_new_tokens=options.max_new_tokens,
                    do_sample=options.do_sample,
                    num_beams=1,
                    pad_token_id=pad_id,
                    streamer=clock,
                    stopping_criteria=stopping,
                    **extra,
                    **options.sampling(),
                )  # (B, n_new): with inputs_embeds only the new tokens come back
        finally:
            clock.end()
        sync(device)
        clock.stop = time.perf_counter()
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    cancelled = cancel is not None and cancel.is_set()
    return [
        row_generation(adapter, encoding, row, sequences[b].tolist(), clock, peak_mb, batch, cancelled)
        for b, row in enumerate(rows)
    ]


def row_generation(
    adapter: Any,
    encoding: Encoding,
    row: Row,
    ids: list[int],
    clock: TokenClock,
    peak_mb: float | None,
    batch: int,
    cancelled: bool,
) -> Generation:
    """Trim one row's tokens at its first end-of-answer token and attach the timings."""
    eos = set(adapter.eos_token_ids())
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
        text=adapter.tokenizer.decode(ids, skip_special_tokens=True),
        token_ids=tuple(ids),
        n_visual_tokens=row.n_visual,
        timings=timings,
        method=row.method,
        finish_reason=finish,
        n_layout_tokens=row.n_layout,
    )


def cancelled_generation(encoding: Encoding, row: Row, batch: int) -> Generation:
    """The empty answer of a row whose generate call never started because of a cancel."""
    timings = {
        "encode_ms": encoding.encode_ms,
        "select_ms": row.select_ms,
        "prefill_ms": None,
        "decode_ms_per_token": None,
        "total_ms": encoding.encode_ms + (row.select_ms or 0.0),
        "peak_memory_mb": None,
        "n_new_tokens": 0,
        "batch_size": batch,
    }
    return Generation(
        "", (), row.n_visual, timings, method=row.method, finish_reason="cancelled", n_layout_tokens=row.n_layout
    )


@contextmanager
def oom_guard(device: torch.device, what: str) -> Iterator[None]:
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
    if device.type == "cuda":
        torch.cuda.empty_cache()
    raise OutOfMemoryError(
        f"{device} ran out of memory while {what} ({failed}). The runner is still usable: try fewer "
        "visual tokens, fewer selections at once, a smaller max_new_tokens, or a smaller dtype."
    )


@contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
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
