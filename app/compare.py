"""The comparison behind the app and its API: one image, several pruning methods, side by side.

``ComparePipeline`` wraps a ``Runner``. The UI calls it in two speeds: ``load`` and ``view``
(encode once, then select and draw: milliseconds, re-run on every slider move) and ``answer``
(generation, seconds). The methods that choose from the question (FastV and DART at layer K
inside the LLM, CDPruner before it) select while answering: their columns draw what they kept in
the session's latest answer, or say why there is nothing yet (``app.inllm_views``). Heavy data
stays here, per session, in an ``app.sessions.SessionStore`` keyed by the image's content digest;
the UI keeps only that key. Public methods take and return
plain values; ``session`` names whose images they use (library callers may leave the default).
"""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

import pruning
from scoring import Vocabulary

from .answering import answer_row, generate_rows
from .choices import (
    DEFAULT_METHODS,
    DEFAULT_REPLAY,
    Example,
    budget_presets,
    check_budget,
    check_methods,
    default_budget,
    describe_method,
    image_presets,
    sweep_budgets,
    typed_truth,
)
from .gridview import draw_overlays, encoding_view
from .inllm_views import Answered, held, hold, pending_view, per_question, plan_methods
from .replay import replay_frame
from .runtime.images import image_digest, load_image
from .selection_numbers import plain, selection_numbers
from .sessions import DEFAULT_MAX_BYTES, DEFAULT_SESSION, AnswerCancelled, SessionStore, tensor_bytes

if TYPE_CHECKING:
    from .runtime import Runner

__all__ = [
    "DEFAULT_METHODS",
    "DEFAULT_REPLAY",
    "DEFAULT_SESSION",
    "AnswerCancelled",
    "ComparePipeline",
    "Example",
    "budget_presets",
    "default_budget",
]

VIEW_SIZE = 336  # side of the overlay images, pixels


@dataclass
class _Entry:
    key: str
    encoding: Any
    view: Image.Image
    truth: tuple[str, ...] | None
    example: str | None
    objects: tuple[tuple[str, str], ...] | None = None
    sweeps: dict[tuple, dict] = field(default_factory=dict)
    grids: tuple = ()  # one visualizers.PatchGrid per grid of a multi-grid image, in view pixels (app.gridview)


class ComparePipeline:
    """Encode, select, draw and answer for the app; thread-safe, bounded memory. Each public call
    checks its request once, before any work (``app.choices``); the registry checks parameters."""

    def __init__(
        self,
        runner: Runner,
        *,
        vocabulary: Vocabulary,
        examples: Sequence[Example] = (),
        max_new_tokens: int = 48,
        memory_bytes: int = DEFAULT_MAX_BYTES,
        store: SessionStore | None = None,
        upload_note: str | None = None,
        attribute_errors: Callable[[str, Sequence[tuple[str, str]]], Mapping[int, str]] | None = None,
    ) -> None:
        self.runner = runner
        self.attribute_errors = attribute_errors  # (answer, a scene's objects) -> wrong colours/counts
        self.upload_note = upload_note  # said of every image that is not a gallery example
        self.vocabulary = vocabulary
        self.examples = list(examples)
        self.max_new_tokens = max_new_tokens
        self.store = store if store is not None else SessionStore(memory_bytes)
        self._model_lock = threading.Lock()  # one generation at a time, even while a stopped one ends
        self._truth_by_digest = {image_digest(load_image(ex.image)): ex for ex in self.examples}

    # -- facts -----------------------------------------------------------------------------------

    @property
    def n_tokens(self) -> int:
        """N, the model's visual tokens per (typical) image: what budgets are checked against."""
        return int(self.runner.metadata["n_tokens"])

    def info(self) -> dict[str, Any]:
        """What the UI needs to lay itself out, as plain values: token count, budget presets and
        default, every method (pre-LLM and in-LLM) with its calibrated defaults (``params``) and
        registry entry (``method_info``, see ``choices.describe_method``), the default methods and
        replay."""
        meta = self.runner.metadata
        n = self.n_tokens
        methods = pruning.list_methods("all")
        method_info = {m: describe_method(m) for m in methods}
        replayable = [m for m in methods if method_info[m]["replayable"]]
        return {
            "model": meta.get("model"),
            "device": meta.get("device"),
            "text_tower": meta.get("text_tower"),  # CLIP's text half for CDPruner, or None
            "n_tokens": n,
            "grid": list(meta["grid"]),
            "presets": list(meta["budget_presets"]),  # the model's own: its family's paper budgets, scaled
            "default_budget": default_budget(n, meta["budget_presets"]),
            "methods": methods,
            "default_methods": [m for m in DEFAULT_METHODS if m in methods],
            "default_replay": DEFAULT_REPLAY if DEFAULT_REPLAY in replayable else next(iter(replayable), None),
            "params": {m: self.method_defaults(m) for m in methods},
            "method_info": method_info,
            "calibration": meta.get("calibration"),
        }

    def method_defaults(self, method: str) -> dict[str, Any]:
        """A method's plain parameters with the model's calibration filled in (what ``view`` uses).

        Parameters no widget can hold (a ``torch.Generator``) are left out.
        """
        spec = pruning.get_method(method)
        calibration = self.runner.calibration.method_params()
        return {k: calibration.get(k, v) for k, v in spec.defaults.items() if spec.ranges[k].kind != "other"}

    # -- what a request may ask ------------------------------------------------------------------

    def _request(self, key: str, methods: Any, budget: Any, session: str) -> tuple[_Entry, list[str], int]:
        """The held image, the methods and the budget of one request, checked."""
        entry = self._entry(key, session)
        return entry, check_methods(methods), check_budget(budget, self.budget_limit(key, session))

    def budget_limit(self, key: str, session: str = DEFAULT_SESSION) -> int:
        """The largest budget for the loaded image: N, or the image's own N where it is more (LLaVA-OneVision)."""
        return max(self.n_tokens, self._entry(key, session).encoding.n_tokens)

    def prompt_room(self) -> int:
        """How many prompt tokens fit beside all visual tokens and ``max_new_tokens`` new ones."""
        return self.runner.prompt_room(self.max_new_tokens)

    def check_prompt(self, prompt: Any) -> str:
        """``prompt`` stripped, or a ``ValueError`` when it is empty or does not fit (the runtime's check)."""
        return self.runner.check_prompt(prompt, self.max_new_tokens)

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
            "presets": self.presets(key, session),  # this image's (Qwen2.5-VL: shares of its N)
            "grid": list(encoding.grid),
            "image_erank": encoding.image_erank,
            "attention_entropy": encoding.attention_entropy,
            "normalized_entropy": encoding.attention_entropy / math.log(max(encoding.n_tokens, 2)),
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
            "note": None if example else self.upload_note,
        }

    def _load(self, image: Any, session: str) -> tuple[str, _Entry]:
        img = load_image(image)
        key = image_digest(img)
        entry = self.store.find(session, key)
        if entry is not None:
            return key, entry
        encoding = self.runner.encode(img, use_cache=False)
        example = self._truth_by_digest.get(key)
        view, grids = encoding_view(img, encoding, VIEW_SIZE)
        entry = _Entry(
            key=key,
            encoding=encoding,
            view=view,
            grids=grids,
            truth=example.truth if example else None,
            example=example.name if example else None,
            objects=example.objects if example else None,
        )
        i = encoding.inputs
        nbytes = tensor_bytes(i.feats_pre, i.feats, i.cls_attn, i.keys, i.cls_feat, encoding.prefix) + 3 * VIEW_SIZE**2
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
        """The image the overlays are drawn on, VIEW_SIZE pixels a side (``app.gridview.encoding_view``)."""
        return self._entry(key, session).view

    def presets(self, key: str, session: str = DEFAULT_SESSION) -> list[int]:
        """The loaded image's budget presets (``choices.image_presets``: on Qwen2.5-VL, shares of its N)."""
        return image_presets(self.runner.metadata, self._entry(key, session).encoding.n_tokens)

    def patch_grids(self, key: str, session: str = DEFAULT_SESSION) -> tuple:
        """One ``visualizers.PatchGrid`` per grid of the loaded image, in view pixels; () for one grid."""
        return self._entry(key, session).grids

    def attention(self, key: str, session: str = DEFAULT_SESSION) -> list[float]:
        """The (N,) [CLS] attention of the loaded image."""
        return self._entry(key, session).encoding.inputs.cls_attn.float().cpu().tolist()

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
        entry, methods, budget = self._request(key, methods, budget, session)
        return self._select(entry, methods, budget, params)

    def _select(
        self, entry: _Entry, methods: Sequence[str], budget: int, params: Mapping[str, Mapping[str, Any]] | None
    ) -> dict[str, pruning.Selection]:
        return {m: self.runner.select(entry.encoding, m, budget, **dict((params or {}).get(m, {}))) for m in methods}

    def _requests(
        self, entry: _Entry, methods: Sequence[str], budget: int, params: Mapping[str, Mapping[str, Any]] | None
    ) -> tuple[dict[str, pruning.Selection], dict[str, Any], dict[str, str]]:
        """The pre-LLM methods' selections, the in-LLM ones' plans, and the in-LLM refusals in one line each."""
        in_llm = [m for m in methods if per_question(m)]
        selections = self._select(entry, [m for m in methods if m not in in_llm], budget, params)
        return selections, *plan_methods(self.runner, entry.encoding, in_llm, budget, params)

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
        """Per method: overlay image and the selection's numbers. The fast step of the page.

        An in-LLM method's row is drawn from what it kept in ``session``'s latest answer when that
        answer was for this image, budget and parameters (then it also has ``layer`` and
        ``prompt``); otherwise it has no overlay and no numbers, and says why in ``pending``, or in
        ``refused`` when this model or these parameters rule it out (``app.inllm_views``).
        """
        entry, methods, budget = self._request(key, methods, budget, session)
        return self._view(entry, methods, budget, params, colour_by, session)

    def _view(
        self,
        entry: _Entry,
        methods: Sequence[str],
        budget: int,
        params: Mapping[str, Mapping[str, Any]] | None,
        colour_by: str | None,
        session: str,
    ) -> dict[str, dict[str, Any]]:
        inputs = entry.encoding.inputs
        selections, plans, refused = self._requests(entry, methods, budget, params)
        answered = {m: held(self.store, session, entry.key, plan) for m, plan in plans.items()}
        answered = {m: a for m, a in answered.items() if a is not None}
        selections |= {m: a.selection for m, a in answered.items()}
        drawn = draw_overlays(entry.view, entry.grids or inputs.grid, selections, inputs.cls_attn, colour_by)
        out = {}
        for m in methods:
            if m not in selections:
                out[m] = pending_view(m, plans[m].layer if m in plans else None, refused.get(m))
                continue
            out[m] = {"overlay": drawn[m], **self._numbers(entry, selections[m])}
            if m in answered:
                out[m] |= {"layer": answered[m].plan.layer, "prompt": answered[m].prompt}
        return out

    def _numbers(self, entry: _Entry, sel: pruning.Selection) -> dict[str, Any]:
        return selection_numbers(self.runner, entry.encoding, sel)

    def sweep(
        self,
        key: str,
        methods: Sequence[str],
        params: Mapping[str, Mapping[str, Any]] | None = None,
        points: int = 9,
        *,
        session: str = DEFAULT_SESSION,
    ) -> dict[str, dict[str, list[float]]]:
        """Kept erank and retained attention from 8 tokens to all of them (selection only), cached.

        Methods that choose from the question (in-LLM ones, CDPruner) are left out: there is no
        selection to sweep before an answer.
        """
        entry = self._entry(key, session)
        methods = [m for m in check_methods(methods) if not per_question(m)]
        budgets = sweep_budgets(entry.encoding.n_tokens, points)
        out = {}
        for method in methods:
            chosen = dict((params or {}).get(method, {}))
            cache_key = (method, tuple(sorted(chosen.items())), tuple(budgets))
            if cache_key not in entry.sweeps:
                nums = [self._numbers(entry, self.runner.select(entry.encoding, method, b, **chosen)) for b in budgets]
                rows = {name: [n[name] for n in nums] for name in ("kept_erank", "retained_attention")}
                entry.sweeps[cache_key] = {"budget": list(budgets), **rows}
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

        See ``app.replay.replay_frame``: the picks are ``order[:step]`` (a walk for the registry's
        ``replayable`` methods); methods with a ``tau_schedule`` also show what each pick suppressed.
        An in-LLM method is refused: it selects inside the LLM, so it has no walk before it.
        """
        entry, _, budget = self._request(key, [method], budget, session)
        if per_question(method):
            where = "prunes inside the LLM" if pruning.get_method(method).stage == "in-llm" else "selects"
            raise ValueError(f"{method} {where}, from the question: it has no pre-LLM walk to replay")
        sel = self._select(entry, [method], budget, params)[method]
        return replay_frame(entry.view, entry.grids or entry.encoding.inputs.grid, sel, step)

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
        progress: Callable[[str, str], None] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Answers of the full model and of each method, with mentions marked and speed measured.

        All answers come from one ``generate_many`` call. Prefill time is then measured per row
        with a one-token generation of that row alone, so the speed-up compares like with like.
        Ground truth typed in ``truth_text`` replaces a built-in scene's own; text that names no
        object (blank, or only commas) leaves it. Setting ``cancel`` stops the work at the next
        token and raises ``AnswerCancelled``. ``progress(name, text)`` ("full" or a method) gets
        every answer as it grows, from the generating thread.

        An in-LLM method runs its ``Runner.plan`` in the same call; its row also has ``layer`` and
        ``selection`` (the numbers ``view`` gives of the tokens it kept), and ``session``'s view
        draws that selection from then on (``app.inllm_views``). One this model or these
        parameters rule out gets only ``refused``, in one line, and the others still answer.
        """
        entry, methods, budget = self._request(key, methods, budget, session)
        prompt = self.check_prompt(prompt)
        typed = typed_truth(truth_text, self.vocabulary)
        return self._answer(entry, prompt, methods, budget, params, typed, measure_prefill, cancel, progress, session)

    def _answer(
        self,
        entry: _Entry,
        prompt: str,
        methods: Sequence[str],
        budget: int,
        params: Mapping[str, Mapping[str, Any]] | None,
        typed_truth: tuple[str, ...] | None,
        measure_prefill: bool,
        cancel: threading.Event | None,
        progress: Callable[[str, str], None] | None,
        session: str,
    ) -> dict[str, dict[str, Any]]:
        truth = typed_truth if typed_truth is not None else entry.truth
        selections, plans, refused = self._requests(entry, methods, budget, params)
        requests = selections | plans  # every method but the refused ones
        rows = {"full": None, **{m: requests[m] for m in methods if m in requests}}
        names = list(rows)
        with self._model_lock:
            gens, batch_ms, prefill = generate_rows(
                self.runner, entry.encoding, prompt, rows, self.max_new_tokens,
                measure_prefill=measure_prefill, cancel=cancel, progress=progress,
            )  # fmt: skip
        if cancel is not None and cancel.is_set():
            raise AnswerCancelled("stopped before the answers were complete")
        own = typed_truth is None and entry.objects and self.attribute_errors is not None
        out = {}
        for name, gen in zip(names, gens):
            wrong = self.attribute_errors(gen.text, entry.objects) if own else None
            marks = {"vocabulary": self.vocabulary, "truth": truth, "wrong_attributes": wrong}
            out[name] = answer_row(name, gen, gens[0].text, prefill, batch_ms, **marks)
        answered = {}
        for m, plan in plans.items():
            sel = gens[names.index(m)].selection
            out[m] |= {"layer": plan.layer, "selection": self._numbers(entry, sel)}
            answered[m] = Answered(entry.key, plan, prompt, sel)
        hold(self.store, session, answered)
        return {name: out.get(name) or {"refused": refused[name]} for name in ["full", *methods]}

    def compare(
        self,
        image: Any,
        prompt: str,
        methods: Sequence[str] = DEFAULT_METHODS,
        budget: int | None = None,
        params: Mapping[str, Mapping[str, Any]] | None = None,
        truth_text: str | None = None,
        *,
        cancel: threading.Event | None = None,
    ) -> dict[str, Any]:
        """Everything about one comparison as JSON-ready values (the ``compare`` API endpoint).

        ``budget`` None is ``default_budget`` of the image's presets (64 of 576 tokens for LLaVA-1.5).
        The request is checked before the image is encoded; the image is held for this call only (a
        private session released at the end).
        """
        methods = check_methods(methods)
        most = max(self.n_tokens, self.runner.adapter.max_image_tokens)  # any image's N; checked again once loaded
        budget = None if budget is None else check_budget(budget, most)
        prompt = self.check_prompt(prompt)
        typed = typed_truth(truth_text, self.vocabulary)
        session = f"call-{uuid.uuid4().hex}"
        try:
            summary = self.load(image, session)
            key = summary.pop("key")
            entry = self._entry(key, session)
            budget = default_budget(summary["n_tokens"], summary["presets"]) if budget is None else budget
            budget = check_budget(budget, self.budget_limit(key, session))
            answers = self._answer(entry, prompt, methods, budget, params, typed, True, cancel, None, session)
            views = self._view(entry, methods, budget, params, None, session)  # in-LLM: what the answers kept
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
            "methods": plain(results),
        }
