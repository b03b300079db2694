"""The comparison behind the app and its API: one image, several pruning methods, side by side.

``ComparePipeline`` wraps a ``Runner``. The UI calls it in two speeds: ``load`` and ``view``
(encode once, then select and draw: milliseconds, re-run on every slider move) and ``answer``
(generation, seconds). Heavy data stays here, per session, in an ``app.sessions.SessionStore``
keyed by the image's content digest; the UI keeps only that key. Every public method takes and
returns plain values; ``session`` names whose images they use (the page passes its session id,
library callers may leave the default).
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

import pruning

from .objects import Vocabulary, mark_answer, parse_truth
from .runtime import GenerationOptions
from .runtime.images import image_digest, load_image
from .sessions import DEFAULT_MAX_BYTES, DEFAULT_SESSION, AnswerCancelled, SessionStore, tensor_bytes

__all__ = ["DEFAULT_METHODS", "DEFAULT_SESSION", "AnswerCancelled", "ComparePipeline", "Example", "budget_presets"]

DEFAULT_METHODS = ("attention", "diversity", "adaptive")
PAPER_BUDGETS = (192, 128, 64, 32)  # methods.md: the paper's budgets for 576 tokens
SWEEP_MIN_BUDGET = 8
VIEW_SIZE = 336  # side of the overlay images, pixels


@dataclass(frozen=True)
class Example:
    """A gallery image with what is known about it.

    Attributes:
        name: short label for the gallery.
        image: the image.
        truth: ground-truth object categories (exact for built-in scenes), or None if unknown.
        note: one line shown under the gallery (complexity, licence).
        prompt: a suggested prompt.
    """

    name: str
    image: Image.Image
    truth: tuple[str, ...] | None = None
    note: str = ""
    prompt: str | None = None


@dataclass
class _Entry:
    encoding: Any
    view: Image.Image
    truth: tuple[str, ...] | None
    example: str | None
    sweeps: dict[tuple, dict] = field(default_factory=dict)


def budget_presets(n_tokens: int) -> list[int]:
    """The paper's budgets (192/128/64/32 of 576) scaled to a model with ``n_tokens`` tokens."""
    return sorted({max(1, round(b * n_tokens / 576)) for b in PAPER_BUDGETS}, reverse=True)


def _plain(value: Any) -> Any:
    """JSON-friendly copy of ``info`` values (tensors become lists, floats stay finite)."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class ComparePipeline:
    """Encode, select, draw and answer for the app; thread-safe, bounded memory."""

    def __init__(
        self,
        runner: Any,
        *,
        vocabulary: Vocabulary,
        examples: Sequence[Example] = (),
        max_new_tokens: int = 48,
        memory_bytes: int = DEFAULT_MAX_BYTES,
        store: SessionStore | None = None,
    ) -> None:
        self.runner = runner
        self.vocabulary = vocabulary
        self.examples = list(examples)
        self.max_new_tokens = max_new_tokens
        self.store = store if store is not None else SessionStore(memory_bytes)
        self._truth_by_digest = {image_digest(load_image(ex.image)): ex for ex in self.examples}

    # -- facts -----------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What the UI needs to lay itself out: token count, presets, methods and their defaults."""
        meta = self.runner.metadata
        grid = meta["grid"]
        n = int(grid[0] * grid[1])
        return {
            "model": meta.get("model"),
            "device": meta.get("device"),
            "n_tokens": n,
            "grid": list(grid),
            "presets": budget_presets(n),
            "methods": pruning.list_methods(),
            "default_methods": [m for m in DEFAULT_METHODS if m in pruning.list_methods()],
            "params": {m: self.method_defaults(m) for m in pruning.list_methods()},
            "calibration": meta.get("calibration"),
        }

    def method_defaults(self, method: str) -> dict[str, Any]:
        """A method's parameters with the model's calibration filled in (what ``view`` uses)."""
        params = pruning.method_params(method)
        calibration = self.runner.calibration.method_params()
        return {k: calibration.get(k, v) for k, v in params.items() if k != "generator"}

    # -- the fast path ---------------------------------------------------------------------------

    def load(self, image: Any, session: str = DEFAULT_SESSION) -> dict[str, Any]:
        """Encode ``image`` for ``session`` and describe its complexity. Returns plain values and ``key``.

        An image already held (for this or another session) is not encoded again. Raises
        ``ValueError`` for an unusable image and ``ServerFullError`` when there is no room for it.
        """
        key, entry = self._load(image, session)
        encoding = entry.encoding
        example = self._truth_by_digest.get(key)
        cal = self.runner.calibration
        return {
            "key": key,
            "n_tokens": encoding.n_tokens,
            "grid": list(encoding.grid),
            "image_erank": encoding.image_erank,
            "attention_entropy": encoding.attention_entropy,
            "normalized_entropy": encoding.attention_entropy / math.log(encoding.n_tokens)
            if encoding.n_tokens > 1
            else 0.0,
            "complexity": self.runner.calibration.bin(encoding.image_erank),
            "calibration": {
                "erank_avg": cal.erank_avg,
                "erank_p10": cal.erank_p10,
                "erank_p90": cal.erank_p90,
                "source": cal.source,
            },
            "encode_ms": encoding.encode_ms,
            "truth": list(example.truth) if example and example.truth is not None else None,
            "example": example.name if example else None,
        }

    def _load(self, image: Any, session: str) -> tuple[str, _Entry]:
        img = load_image(image)
        key = image_digest(img)
        entry = self.store.find(session, key)
        if entry is not None:
            return key, entry
        encoding = self.runner.encode(img, use_cache=False)
        example = self._truth_by_digest.get(key)
        box = encoding.geometry.crop_box
        view = img.crop(tuple(round(v) for v in box)).resize((VIEW_SIZE, VIEW_SIZE), Image.BICUBIC)
        entry = _Entry(
            encoding=encoding,
            view=view,
            truth=example.truth if example else None,
            example=example.name if example else None,
        )
        inputs = encoding.inputs
        nbytes = (
            tensor_bytes(inputs.feats_pre, inputs.feats, inputs.cls_attn, inputs.keys, inputs.cls_feat, encoding.prefix)
            + 3 * VIEW_SIZE * VIEW_SIZE
        )
        return key, self.store.put(session, key, entry, nbytes)

    def key_for(self, image: Any, session: str = DEFAULT_SESSION) -> str:
        """The key of ``image`` for ``session``, encoding it first when it is not held."""
        return self._load(image, session)[0]

    def example_name(self, key: str, session: str = DEFAULT_SESSION) -> str | None:
        """The gallery name of the loaded image, or None for an upload."""
        return self._entry(key, session).example

    def release(self, session: str) -> None:
        """Free what ``session`` holds and stop its work (the page's unload event)."""
        self.store.release(session)

    def _entry(self, key: str, session: str = DEFAULT_SESSION) -> _Entry:
        if not isinstance(key, str) or not key:
            raise ValueError("load an image first")
        entry = self.store.get(session, key)
        if entry is None:
            raise ValueError("this image is no longer in memory (the session was idle or closed): load it again")
        return entry

    def view_image(self, key: str, session: str = DEFAULT_SESSION) -> Image.Image:
        """The image as the model's patch grid covers it, VIEW_SIZE pixels square."""
        return self._entry(key, session).view

    def attention(self, key: str, session: str = DEFAULT_SESSION) -> list[float]:
        """The (N,) [CLS] attention of the loaded image."""
        return self._entry(key, session).encoding.inputs.cls_attn.float().cpu().tolist()

    def prompt_room(self) -> int:
        """How many prompt tokens fit beside all visual tokens and ``max_new_tokens`` new ones."""
        meta = self.runner.metadata
        n_visual = int(meta["grid"][0] * meta["grid"][1]) + int(meta.get("n_prefix_tokens") or 0)
        template = self.runner.adapter.prompt_ids("").shape[0] - 1  # the chat template's own tokens
        return int(self.runner.adapter.context_length) - n_visual - self.max_new_tokens - template

    def check_prompt(self, prompt: Any) -> str:
        """``prompt`` stripped, or a ``ValueError`` when it is empty or does not fit the model."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the prompt is empty: type a question about the image")
        prompt = prompt.strip()
        n = self.runner.adapter.prompt_ids(prompt).shape[0] - self.runner.adapter.prompt_ids("").shape[0]
        room = self.prompt_room()
        if n > room:
            raise ValueError(
                f"the prompt is {n} tokens; this model has room for {room} beside the image's visual tokens "
                f"and {self.max_new_tokens} answer tokens: shorten it"
            )
        return prompt

    def _params(self, method: str, params: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
        chosen = dict((params or {}).get(method, {}))
        allowed = pruning.method_params(method)
        unknown = set(chosen) - set(allowed)
        if unknown:
            raise ValueError(f"method {method!r} has no parameter(s) {sorted(unknown)}")
        return chosen

    def _check_request(self, key: str, methods: Sequence[str], budget: Any, session: str) -> _Entry:
        entry = self._entry(key, session)
        if isinstance(methods, str) or not isinstance(methods, Sequence):
            raise ValueError("methods must be a list of method names")
        for m in methods:
            pruning.get_method(m)  # unknown names raise ValueError listing the known ones
        n = entry.encoding.n_tokens
        if isinstance(budget, float) and budget.is_integer():
            budget = int(budget)
        if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= n:
            raise ValueError(f"budget must be an integer from 1 to {n} (this model's token count), got {budget!r}")
        return entry

    def select(
        self,
        key: str,
        methods: Sequence[str],
        budget: int,
        params: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        session: str = DEFAULT_SESSION,
    ) -> dict[str, pruning.Selection]:
        """Run each method on the loaded image (no generation)."""
        entry = self._check_request(key, methods, budget, session)
        return {m: self.runner.select(entry.encoding, m, int(budget), **self._params(m, params)) for m in methods}

    def view(
        self,
        key: str,
        methods: Sequence[str],
        budget: int,
        params: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        colour_by: str | None = None,
        session: str = DEFAULT_SESSION,
    ) -> dict[str, dict[str, Any]]:
        """Per method: overlay image and the selection's numbers. The fast step of the page."""
        from visualizers import overlay_selection

        entry = self._check_request(key, methods, budget, session)
        selections = self.select(key, methods, budget, params, session=session)
        inputs = entry.encoding.inputs
        out = {}
        for method, sel in selections.items():
            overlay = overlay_selection(
                entry.view,
                sel.keep.cpu(),
                inputs.grid,
                order=sel.order.cpu(),
                groups=None if sel.groups is None else sel.groups.cpu(),
                attention=inputs.cls_attn.float().cpu(),
                colour_by=colour_by,
            )
            out[method] = {"overlay": overlay, **self._numbers(entry, sel)}
        return out

    @torch.inference_mode()
    def _numbers(self, entry: _Entry, sel: pruning.Selection) -> dict[str, Any]:
        inputs = entry.encoding.inputs
        tokens = self.runner.visual_tokens(entry.encoding, sel)[entry.encoding.prefix.shape[0] :]
        kept_erank = pruning.effective_rank(tokens) if tokens.shape[0] > 1 else 1.0
        retained = pruning.retained_attention(inputs.cls_attn, sel.keep) if sel.keep.numel() else 0.0
        info = {k: v for k, v in sel.info.items() if k not in ("removed_at",)}
        return {
            "method": sel.method,
            "n_visual_tokens": sel.n_output_tokens,
            "retention": sel.n_output_tokens / inputs.n_tokens,
            "retained_attention": retained,
            "kept_erank": kept_erank,
            "select_ms": sel.info.get("select_ms"),
            "keep": sel.keep.cpu().tolist(),
            "order": sel.order.cpu().tolist(),
            "info": _plain(info),
        }

    def sweep(
        self,
        key: str,
        methods: Sequence[str],
        params: Mapping[str, Mapping[str, Any]] | None = None,
        points: int = 9,
        *,
        session: str = DEFAULT_SESSION,
    ) -> dict[str, dict[str, list[float]]]:
        """Kept erank and retained attention from 8 tokens to all of them (selection only), cached."""
        entry = self._entry(key, session)
        n = entry.encoding.n_tokens
        budgets = (
            sorted(
                {
                    min(n, max(1, round(SWEEP_MIN_BUDGET * (n / SWEEP_MIN_BUDGET) ** (i / (points - 1)))))
                    for i in range(points)
                }
            )
            if n > SWEEP_MIN_BUDGET
            else list(range(1, n + 1))
        )
        out = {}
        for method in methods:
            chosen = self._params(method, params)
            cache_key = (method, tuple(sorted(chosen.items())), tuple(budgets))
            if cache_key not in entry.sweeps:
                rows = {"budget": [], "kept_erank": [], "retained_attention": []}
                for b in budgets:
                    nums = self._numbers(entry, self.runner.select(entry.encoding, method, b, **chosen))
                    rows["budget"].append(b)
                    rows["kept_erank"].append(nums["kept_erank"])
                    rows["retained_attention"].append(nums["retained_attention"])
                entry.sweeps[cache_key] = rows
            out[method] = entry.sweeps[cache_key]
        return out

    def step_through(
        self,
        key: str,
        method: str,
        budget: int,
        step: int,
        params: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        session: str = DEFAULT_SESSION,
    ) -> dict[str, Any]:
        """The greedy walk of ``method`` up to pick ``step`` (1-based): what is picked and suppressed.

        For ``adaptive`` the suppressed tokens are those removed by the first ``step`` picks; for the
        others (diversity, attention, ...) only the picks are shown.
        """
        from visualizers import overlay_selection

        entry = self._check_request(key, [method], budget, session)
        sel = self.select(key, [method], budget, params, session=session)[method]
        order = sel.order.cpu().tolist()
        if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= len(order):
            raise ValueError(f"step must be an integer from 1 to {len(order)}, got {step!r}")
        picked = order[:step]
        removed_at = sel.info.get("removed_at")
        suppressed_now, suppressed_before = [], []
        if removed_at is not None:
            for j, s in enumerate(removed_at.tolist()):
                if 0 <= s < step - 1:
                    suppressed_before.append(j)
                elif s == step - 1:
                    suppressed_now.append(j)
        taus = sel.info.get("taus")
        grid = entry.encoding.inputs.grid
        image = overlay_selection(entry.view, sorted(picked), grid, order=picked, colour_by="order")
        image = _mark(image, grid, suppressed_now, (230, 30, 30))
        return {
            "image": image,
            "pick": picked[-1],
            "picked": picked,
            "suppressed_now": suppressed_now,
            "suppressed_before": suppressed_before,
            "tau": taus[step - 1] if taus else None,
            "n_steps": len(order),
        }

    # -- the slow path ---------------------------------------------------------------------------

    def answer(
        self,
        key: str,
        prompt: str,
        methods: Sequence[str],
        budget: int,
        params: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        truth_text: str | None = None,
        measure_prefill: bool = True,
        session: str = DEFAULT_SESSION,
        cancel: threading.Event | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Answers of the full model and of each method, with mentions marked and speed measured.

        All answers come from one batched ``generate_many`` call. Prefill time is then measured per
        row with a one-token generation of that row alone, so the speed-up compares like with like.
        Ground truth typed in ``truth_text`` replaces a built-in scene's own; text that names no
        object (blank, or only commas) leaves it. Setting ``cancel`` stops the work at the next
        token and raises ``AnswerCancelled``.
        """
        entry = self._check_request(key, methods, budget, session)
        prompt = self.check_prompt(prompt)
        truth = entry.truth
        if truth_text is not None:
            typed = parse_truth(truth_text, self.vocabulary)
            if typed:
                truth = tuple(sorted(typed))
        selections = self.select(key, methods, budget, params, session=session)
        rows = [None, *selections.values()]
        names = ["full", *selections]

        def stopped() -> bool:
            return cancel is not None and cancel.is_set()

        start = time.perf_counter()
        gens = self.runner.generate_many(
            entry.encoding, prompt, rows, GenerationOptions(max_new_tokens=self.max_new_tokens), cancel=cancel
        )
        batch_ms = (time.perf_counter() - start) * 1e3
        prefill = {}
        if measure_prefill:
            for name, sel in zip(names, rows):
                if stopped():
                    break
                one = self.runner.generate(entry.encoding, prompt, sel, GenerationOptions(max_new_tokens=1))
                prefill[name] = one.timings.get("prefill_ms")
        if stopped():
            raise AnswerCancelled("stopped before the answers were complete")
        reference = gens[0].text
        out = {}
        for name, gen in zip(names, gens):
            marks = mark_answer(
                gen.text, self.vocabulary, truth=truth, reference=None if truth is not None else reference
            )
            if name == "full" and truth is None:
                marks = mark_answer(gen.text, self.vocabulary)
            p = prefill.get(name)
            speedup = prefill["full"] / p if p and prefill.get("full") else None
            out[name] = {
                "text": gen.text,
                "n_visual_tokens": gen.n_visual_tokens,
                "n_new_tokens": len(gen.token_ids),
                "prefill_ms": p,
                "speedup": speedup,
                "batch_ms": batch_ms,
                **marks,
            }
        return out

    def compare(
        self,
        image: Any,
        prompt: str,
        methods: Sequence[str] = DEFAULT_METHODS,
        budget: int = 64,
        params: Mapping[str, Mapping[str, Any]] | None = None,
        truth_text: str | None = None,
        *,
        cancel: threading.Event | None = None,
    ) -> dict[str, Any]:
        """Everything about one comparison as JSON-ready values (the ``compare`` API endpoint).

        The image is held for this call only (a private session released at the end).
        """
        session = f"call-{uuid.uuid4().hex}"
        try:
            summary = self.load(image, session)
            key = summary.pop("key")
            views = self.view(key, methods, budget, params, session=session)
            answers = self.answer(
                key, prompt, methods, budget, params, truth_text=truth_text, session=session, cancel=cancel
            )
        finally:
            self.release(session)
        results = {}
        for method, v in views.items():
            results[method] = {k: val for k, val in v.items() if k != "overlay"} | {"answer": answers[method]}
        return {
            "model": self.runner.name,
            "image": summary,
            "prompt": prompt,
            "budget": budget,
            "full": answers["full"],
            "methods": _plain(results),
        }


def _mark(image: Image.Image, grid: tuple[int, int], patches: Sequence[int], colour) -> Image.Image:
    """Cross out ``patches`` on ``image`` (the tokens suppressed at the current step)."""
    from PIL import ImageDraw

    from visualizers import patch_boxes

    out = image.copy()
    draw = ImageDraw.Draw(out)
    boxes = patch_boxes(out.size, grid)
    for i in patches:
        x0, y0, x1, y1 = boxes[i]
        draw.line((x0, y0, x1 - 1, y1 - 1), fill=colour, width=2)
        draw.line((x0, y1 - 1, x1 - 1, y0), fill=colour, width=2)
    return out
