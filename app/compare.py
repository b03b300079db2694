"""The comparison behind the app and its API: one image, several pruning methods, side by side.

``ComparePipeline`` wraps a ``Runner``. The UI calls it in two speeds: ``load`` and ``view``
(encode once, then select and draw: milliseconds, re-run on every slider move) and ``answer``
(generation, seconds). Heavy data stays here in a bounded cache keyed by the image's encoding key;
the UI keeps only that key. Every public method takes and returns plain values.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

import pruning

from .images import image_digest, load_image
from .objects import Vocabulary, mark_answer, parse_truth

__all__ = ["DEFAULT_METHODS", "ComparePipeline", "Example", "budget_presets"]

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
        cache_size: int = 16,
    ) -> None:
        self.runner = runner
        self.vocabulary = vocabulary
        self.examples = list(examples)
        self.max_new_tokens = max_new_tokens
        self.cache_size = cache_size
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
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

    def load(self, image: Any) -> dict[str, Any]:
        """Encode ``image`` (cached) and describe its complexity. Returns plain values and ``key``."""
        img = load_image(image)
        encoding = self.runner.encode(img)
        digest = image_digest(img)
        example = self._truth_by_digest.get(digest)
        box = encoding.geometry.crop_box
        view = img.crop(tuple(round(v) for v in box)).resize((VIEW_SIZE, VIEW_SIZE), Image.BICUBIC)
        with self._lock:
            self._entries[encoding.key] = _Entry(
                encoding=encoding,
                view=view,
                truth=example.truth if example else None,
                example=example.name if example else None,
            )
            self._entries.move_to_end(encoding.key)
            while len(self._entries) > self.cache_size:
                self._entries.popitem(last=False)
        cal = self.runner.calibration
        return {
            "key": encoding.key,
            "n_tokens": encoding.n_tokens,
            "grid": list(encoding.grid),
            "image_erank": encoding.image_erank,
            "attention_entropy": encoding.attention_entropy,
            "normalized_entropy": encoding.attention_entropy / math.log(encoding.n_tokens)
            if encoding.n_tokens > 1
            else 0.0,
            "complexity": self._complexity_label(encoding.image_erank),
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

    def _complexity_label(self, erank: float) -> str:
        cal = self.runner.calibration
        if erank <= cal.erank_p10:
            return "simple"
        if erank >= cal.erank_p90:
            return "complex"
        return "intermediate"

    def _entry(self, key: str) -> _Entry:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                raise ValueError("this image is no longer in memory: load it again")
            self._entries.move_to_end(key)
            return entry

    def view_image(self, key: str) -> Image.Image:
        """The image as the model's patch grid covers it, VIEW_SIZE pixels square."""
        return self._entry(key).view

    def attention(self, key: str) -> list[float]:
        """The (N,) [CLS] attention of the loaded image."""
        return self._entry(key).encoding.inputs.cls_attn.float().cpu().tolist()

    def _params(self, method: str, params: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
        chosen = dict((params or {}).get(method, {}))
        allowed = pruning.method_params(method)
        unknown = set(chosen) - set(allowed)
        if unknown:
            raise ValueError(f"method {method!r} has no parameter(s) {sorted(unknown)}")
        return chosen

    def _check_request(self, key: str, methods: Sequence[str], budget: Any) -> _Entry:
        entry = self._entry(key)
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
    ) -> dict[str, pruning.Selection]:
        """Run each method on the loaded image (no generation)."""
        entry = self._check_request(key, methods, budget)
        return {m: self.runner.select(entry.encoding, m, int(budget), **self._params(m, params)) for m in methods}

    def view(
        self,
        key: str,
        methods: Sequence[str],
        budget: int,
        params: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        colour_by: str | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Per method: overlay image and the selection's numbers. The fast step of the page."""
        from visualizers import overlay_selection

        entry = self._check_request(key, methods, budget)
        selections = self.select(key, methods, budget, params)
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
    ) -> dict[str, dict[str, list[float]]]:
        """Kept erank and retained attention from 8 tokens to all of them (selection only), cached."""
        entry = self._entry(key)
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
    ) -> dict[str, Any]:
        """The greedy walk of ``method`` up to pick ``step`` (1-based): what is picked and suppressed.

        For ``adaptive`` the suppressed tokens are those removed by the first ``step`` picks; for the
        others (diversity, attention, ...) only the picks are shown.
        """
        from visualizers import overlay_selection

        entry = self._check_request(key, [method], budget)
        sel = self.select(key, [method], budget, params)[method]
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
    ) -> dict[str, dict[str, Any]]:
        """Answers of the full model and of each method, with mentions marked and speed measured.

        All answers come from one batched ``generate_many`` call. Prefill time is then measured per
        row with a one-token generation of that row alone, so the speed-up compares like with like.
        """
        entry = self._check_request(key, methods, budget)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the prompt is empty: type a question about the image")
        truth = entry.truth
        if truth_text is not None and truth_text.strip():
            truth = tuple(sorted(parse_truth(truth_text, self.vocabulary)))
        selections = self.select(key, methods, budget, params)
        rows = [None, *selections.values()]
        names = ["full", *selections]
        start = time.perf_counter()
        gens = self.runner.generate_many(entry.encoding, prompt, rows, max_new_tokens=self.max_new_tokens)
        batch_ms = (time.perf_counter() - start) * 1e3
        prefill = {}
        if measure_prefill:
            for name, sel in zip(names, rows):
                one = self.runner.generate(entry.encoding, prompt, sel, max_new_tokens=1)
                prefill[name] = one.timings.get("prefill_ms")
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
    ) -> dict[str, Any]:
        """Everything about one comparison as JSON-ready values (the ``compare`` API endpoint)."""
        summary = self.load(image)
        key = summary.pop("key")
        views = self.view(key, methods, budget, params)
        answers = self.answer(key, prompt, methods, budget, params, truth_text=truth_text)
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
