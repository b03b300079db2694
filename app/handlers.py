"""What the page's events do, as plain functions of plain values: testable without a browser.

``Handlers`` adapts UI values (a possibly missing image, a float from a slider, a flat list of
parameter boxes) to ``ComparePipeline`` calls and formats the results (markdown, highlighted
segments, plotly figures). It raises ``ValueError`` with a readable message on bad input; the UI
layer turns that into an on-page error. Messages quote user input only through ``brief``, cut
short. Every call names the page ``session`` it serves; its images, settings and export files are
that session's own. It never touches gradio.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from visualizers import (
    attention_heatmap,
    budget_sweep_figure,
    complexity_figure,
    method_bars,
    tau_schedule_figure,
)

from .runtime.images import ImageFileMissing
from .sessions import DEFAULT_SESSION, AnswerCancelled

__all__ = ["MAX_PROMPT_CHARS", "PROMPT_PRESETS", "AnswerCancelled", "Handlers", "ParamSlot", "brief"]

MAX_PROMPT_CHARS = 2000  # checked before tokenising; the model's own room (in tokens) is checked next
MAX_EXPORT_SIDE = 1024  # overlay images are at most this many pixels a side when tiled for PNG export
_BOOL_WORDS = {"true": True, "false": False, "1": True, "0": False}
PROMPT_PRESETS = (
    "Describe this image in detail.",
    "Describe the image.",
    "Is there a circle in the image?",
    "How many squares are there?",
    "What word is written in the image?",
)


@dataclass(frozen=True)
class ParamSlot:
    """One parameter box of the page: which method and parameter it sets, and its default."""

    method: str
    name: str
    default: Any

    @property
    def label(self) -> str:
        return f"{self.method} · {self.name}"


def _format_ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} ms"


def brief(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters: how messages quote what a user sent."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _settings(key: str, methods: Sequence[str], budget: int, params: Mapping[str, Mapping[str, Any]]) -> Hashable:
    """What an answer depends on, hashable: the image, the methods, the budget and the parameters."""
    frozen = tuple(sorted((m, tuple(sorted(p.items()))) for m, p in params.items()))
    return (key, tuple(methods), budget, frozen)


class Handlers:
    """Event handlers over a ``ComparePipeline`` (or anything with its methods)."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.info = pipeline.info()
        self.slots = [
            ParamSlot(method, name, default)
            for method in self.info["methods"]
            for name, default in self.info["params"][method].items()
            if isinstance(default, (bool, int, float))
        ]

    # -- input parsing -----------------------------------------------------------------------------

    def params(self, values: Sequence[Any]) -> dict[str, dict[str, Any]]:
        """Method parameters from the flat list of parameter boxes (in ``self.slots`` order)."""
        if len(values) != len(self.slots):
            raise ValueError(f"expected {len(self.slots)} parameter values, got {len(values)}")
        out: dict[str, dict[str, Any]] = {}
        for slot, value in zip(self.slots, values):
            if value is None or value == "":
                raise ValueError(f"{slot.label} is empty: give it a value (default {slot.default})")
            if isinstance(slot.default, bool):
                if isinstance(value, str):
                    value = _BOOL_WORDS.get(value.strip().lower(), value)
                if not isinstance(value, bool) and not (isinstance(value, int) and value in (0, 1)):
                    raise ValueError(f"{slot.label} must be true or false, got {brief(value)}")
                value = bool(value)
            else:
                if isinstance(value, bool):
                    raise ValueError(f"{slot.label} must be a number, got {value}")
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    raise ValueError(f"{slot.label} must be a number, got {brief(value)}") from None
                if not math.isfinite(number):
                    raise ValueError(f"{slot.label} must be a finite number, got {brief(value)}")
                if isinstance(slot.default, int):
                    if not number.is_integer():
                        raise ValueError(f"{slot.label} must be a whole number, got {brief(value)}")
                    value = int(number)
                else:
                    value = number
            if value != slot.default:
                out.setdefault(slot.method, {})[slot.name] = value
        return out

    def budget(self, value: Any) -> int:
        n = self.info["n_tokens"]
        if isinstance(value, bool):
            raise ValueError(f"budget must be a whole number from 1 to {n}, got {value}")
        try:
            budget = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"budget must be a number from 1 to {n}, got {brief(value)}") from None
        if not math.isfinite(budget) or not budget.is_integer() or not 1 <= budget <= n:
            raise ValueError(f"budget must be a whole number from 1 to {n}, got {brief(value)}")
        return int(budget)

    def methods(self, values: Any) -> list[str]:
        """Method names from a list, or from one comma-separated or JSON-list string."""
        if isinstance(values, str):
            text = values.strip()
            if text.startswith("["):
                try:
                    values = json.loads(text)
                except json.JSONDecodeError:
                    raise ValueError(f"methods: {brief(values)} is not a JSON list of names") from None
            else:
                values = [m.strip() for m in text.split(",") if m.strip()]
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise ValueError(f"methods must be a list of method names, got {brief(values)}")
        if not values:
            raise ValueError("pick at least one pruning method")
        known = self.info["methods"]
        unknown = [m for m in values if not isinstance(m, str) or m not in known]
        if unknown:
            shown = ", ".join(brief(m, 30) for m in unknown[:5])
            raise ValueError(f"unknown method(s) {shown}; known: {', '.join(known)}")
        if len(set(values)) != len(values):
            raise ValueError(f"each method may be chosen once, got {brief(list(values), 80)}")
        return list(values)

    def prompt(self, text: Any) -> str:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("the prompt is empty: type a question about the image")
        if len(text) > MAX_PROMPT_CHARS:
            raise ValueError(f"the prompt has {len(text)} characters; the limit is {MAX_PROMPT_CHARS}")
        check = getattr(self.pipeline, "check_prompt", None)
        return check(text) if check is not None else text.strip()

    @staticmethod
    def truth(text: Any) -> str | None:
        if text is None or (isinstance(text, str) and not text.strip()):
            return None
        if not isinstance(text, str):
            raise ValueError(f"ground truth must be comma-separated object names, got {brief(text)}")
        return text

    # -- fast path -----------------------------------------------------------------------------------

    def load(self, image: Any, session: str = DEFAULT_SESSION) -> tuple[str, str, Any, Any]:
        """Encode the image: returns (key, complexity markdown, complexity figure, heat-map figure)."""
        if image is None:
            raise ValueError("no image: upload one, paste one, take one with the webcam or pick an example")
        summary = self.pipeline.load(image, session)
        cal = summary["calibration"]
        md = (
            f"**Image complexity: {summary['complexity']}** — erank {summary['image_erank']:.1f} "
            f"(model mean {cal['erank_avg']:.1f}, 10th–90th pct {cal['erank_p10']:.1f}–{cal['erank_p90']:.1f}), "
            f"[CLS] attention entropy {summary['attention_entropy']:.2f} nats "
            f"({summary['normalized_entropy']:.2f} of the maximum). Encoded in {summary['encode_ms']:.0f} ms."
        )
        if summary["truth"] is not None:
            md += f"\n\nGround truth (built-in scene): {', '.join(summary['truth']) or 'no objects'}."
        if cal["source"] != "file":
            md += f"\n\n*Calibration: {cal['source']}.*"
        fig = complexity_figure(
            image_erank=summary["image_erank"],
            entropy=summary["attention_entropy"],
            erank_lo=cal["erank_p10"],
            erank_mean=cal["erank_avg"],
            erank_hi=cal["erank_p90"],
        )
        heat = attention_heatmap(self.pipeline.attention(summary["key"], session), tuple(summary["grid"]))
        return summary["key"], md, fig, heat

    def view(
        self,
        key: str,
        methods: Any,
        budget: Any,
        param_values: Sequence[Any],
        colour_by: str | None,
        session: str = DEFAULT_SESSION,
    ):
        """Overlays and numbers per method (the fast step).

        Returns (per-method cards, bar chart, τ-schedule figure or None, record): the record is a
        small JSON-ready summary the page keeps for export; ``record["answers_stale"]`` says
        whether answers on the page were computed for other settings (the page clears them).
        """
        if not key:
            raise ValueError("load an image first")
        methods = self.methods(methods)
        budget = self.budget(budget)
        params = self.params(param_values)
        if colour_by not in (None, "", "none", "order", "attention"):
            raise ValueError(f"colour by must be none, order or attention, got {brief(colour_by)}")
        mode = None if colour_by in (None, "", "none") else colour_by
        views = self.pipeline.view(key, methods, budget, params, colour_by=mode, session=session)
        stale = self.pipeline.store.mark_viewed(session, _settings(key, methods, budget, params))
        cards = []
        for method in methods:
            v = views[method]
            cards.append(
                {
                    "method": method,
                    "overlay": v["overlay"],
                    "stats": (
                        f"**{v['n_visual_tokens']}** tokens ({v['retention']:.0%}) · retained attention "
                        f"**{v['retained_attention']:.2f}** · kept erank **{v['kept_erank']:.1f}** · "
                        f"select {_format_ms(v['select_ms'])}"
                    ),
                    "numbers": {k: v[k] for k in ("n_visual_tokens", "retained_attention", "kept_erank", "select_ms")},
                }
            )
        bars = method_bars({c["method"]: c["numbers"] for c in cards}, ["kept_erank", "retained_attention"])
        tau_fig = None
        if "adaptive" in views:
            info = views["adaptive"]["info"]
            tau_max = params.get("adaptive", {}).get("tau_max", self.info["params"]["adaptive"]["tau_max"])
            tau_fig = tau_schedule_figure(info["taus"], tau_max=tau_max, image_erank=info.get("image_erank"))
        record = {
            "image": key,
            "budget": budget,
            "methods": methods,
            "params": params,
            "colour_by": mode,
            "selection": {c["method"]: c["numbers"] for c in cards},
            "answers_stale": stale,
        }
        self.pipeline.store.set_record(session, "view", record)
        return cards, bars, tau_fig, record

    def sweep(self, key: str, methods: Any, param_values: Sequence[Any], session: str = DEFAULT_SESSION):
        if not key:
            raise ValueError("load an image first")
        data = self.pipeline.sweep(key, self.methods(methods), self.params(param_values), session=session)
        return budget_sweep_figure(data, n_tokens=self.info["n_tokens"])

    def step(
        self,
        key: str,
        method: str,
        budget: Any,
        step: Any,
        param_values: Sequence[Any],
        session: str = DEFAULT_SESSION,
    ):
        """One frame of the step-through: (image, markdown)."""
        if not key:
            raise ValueError("load an image first")
        budget = self.budget(budget)
        if method not in self.info["methods"]:
            raise ValueError(f"unknown method {brief(method)}; known: {', '.join(self.info['methods'])}")
        try:
            step = float(step or 1)
        except (TypeError, ValueError):
            raise ValueError(f"the pick must be a number, got {brief(step)}") from None
        step = int(min(max(1, round(step)), budget)) if math.isfinite(step) else 1
        frame = self.pipeline.step_through(key, method, budget, step, self.params(param_values), session=session)
        cols = self.info["grid"][1]
        row, col = divmod(frame["pick"], cols)
        md = f"Pick **{step}** of {frame['n_steps']}: token {frame['pick']} (row {row}, col {col})."
        if frame["tau"] is not None:
            md += (
                f" τ = {frame['tau']:.3f}: it suppresses {len(frame['suppressed_now'])} token(s) now (crossed), "
                f"{len(frame['suppressed_before'])} were suppressed by earlier picks."
            )
        return frame["image"], md

    # -- slow path -----------------------------------------------------------------------------------

    def answer(
        self,
        key: str,
        prompt: Any,
        methods: Any,
        budget: Any,
        param_values: Sequence[Any],
        truth: Any,
        *,
        image: Any = None,
        session: str = DEFAULT_SESSION,
    ):
        """Answers of the full model and each method, for the image the page shows.

        ``image`` is the page's image value when the event carries it: the answer is then computed
        for that image whatever ``key`` says (a Compare click can arrive while a new image is still
        being encoded), encoding it again if needed. The work stops early, raising
        ``AnswerCancelled``, when the session starts another answer, changes the settings, presses
        Stop or closes. Returns (full card, per-method cards, summary markdown, record of the
        answers for export), or raises ``AnswerCancelled``; ``record["current"]`` is False when
        the page's settings changed while answering (the page then discards the answers).
        """
        if image is not None:
            try:
                key = self.pipeline.key_for(image, session)
            except ImageFileMissing:
                if not key:  # the server cleaned up the upload; the encoding it made is still held
                    raise
        if not key:
            raise ValueError("load an image first")
        prompt = self.prompt(prompt)
        methods = self.methods(methods)
        budget = self.budget(budget)
        params = self.params(param_values)
        truth_text = self.truth(truth)
        settings = _settings(key, methods, budget, params)
        store = self.pipeline.store
        cancel = store.start_answer(session, settings)
        current = False
        try:
            out = self.pipeline.answer(
                key, prompt, methods, budget, params, truth_text=truth_text, session=session, cancel=cancel
            )
        finally:
            current = store.finish_answer(session, settings, cancel)
        cards = {name: self._answer_card(row) for name, row in out.items()}
        first = next(iter(out.values()))
        label = self._image_label(key, session)
        summary = (
            f"Answers for **{label}** at **{budget}** tokens: {len(out)} rows in one batch, "
            f"{first['batch_ms']:.0f} ms. Basis for marks: {first['basis']}."
        )
        record = {
            "image": key,
            "prompt": prompt,
            "budget": budget,
            "current": current,
            "answers": {name: {k: v for k, v in row.items() if k != "segments"} for name, row in out.items()},
        }
        if current:
            store.set_record(session, "answers", record)
        return cards["full"], [cards[m] for m in methods], summary, record

    def _image_label(self, key: str, session: str) -> str:
        example = self.pipeline.example_name(key, session)
        return example if example else f"image {key[:8]}"

    def stop(self, session: str) -> bool:
        """Stop the session's running answer (the Stop button); returns whether one was running."""
        return self.pipeline.store.cancel(session)

    @staticmethod
    def _answer_card(row: Mapping[str, Any]) -> dict[str, Any]:
        speed = f"prefill {_format_ms(row['prefill_ms'])}" + (
            f" · **{row['speedup']:.2f}×** vs full" if row.get("speedup") else ""
        )
        missed = f"missed: {', '.join(row['missed'])}" if row["missed"] else ""
        return {"segments": row["segments"], "speed": speed, "missed": missed, "text": row["text"]}

    # -- export ----------------------------------------------------------------------------------------

    def session_record(self, session: str = DEFAULT_SESSION) -> dict[str, Any]:
        """What the session's page shows: its last view and, when they belong to it, its answers."""
        store = self.pipeline.store
        view, answers = store.record(session, "view"), store.record(session, "answers")
        out = dict(view or {})
        out.pop("answers_stale", None)
        if answers and view and answers["image"] == view["image"] and answers["budget"] == view["budget"]:
            out.update({k: v for k, v in answers.items() if k not in ("image", "budget", "current")})
        return out

    def export_json(self, record: Mapping[str, Any] | None = None, session: str = DEFAULT_SESSION) -> str:
        """Write a comparison record (default: the session's, ``session_record``) to a JSON file.

        Returns its path. The file lives in the session's own export folder, which keeps only its
        latest export and is deleted with the session.
        """
        if record is None:
            record = self.session_record(session)
        if not record or not isinstance(record, Mapping):
            raise ValueError("nothing to export yet: run a comparison first")
        data = {"model": self.info["model"], **record}
        path = self.pipeline.store.export_dir(session) / "prunelens-comparison.json"
        path.write_text(json.dumps(data, indent=2, default=str))
        return str(path)

    def export_overlays(self, session: str = DEFAULT_SESSION) -> str:
        """The page's overlays as one PNG, redrawn on the server from the session's last view.

        Nothing the browser holds is decoded: the overlays are drawn again from the session's own
        encoding with the methods, budget, parameters and colouring of the last view.
        """
        record = self.pipeline.store.record(session, "view")
        if not record or not record.get("methods"):
            raise ValueError("nothing to export yet: load an image first")
        views = self.pipeline.view(
            record["image"],
            record["methods"],
            record["budget"],
            record.get("params") or {},
            colour_by=record.get("colour_by"),
            session=session,
        )
        return self.export_png([(m, views[m]["overlay"]) for m in record["methods"]], session)

    def export_png(self, images: Sequence[tuple[str, Any]], session: str = DEFAULT_SESSION) -> str:
        """One slide-ready PNG: the overlays side by side with their method names; returns its path.

        Overlays may be PIL images or (H, W, 3) uint8 arrays of at most ``MAX_EXPORT_SIDE`` pixels a
        side; the file goes to the session's export folder like ``export_json``'s.
        """
        from PIL import ImageDraw

        tiles = []
        for name, img in images:
            if img is None:
                continue
            if isinstance(img, np.ndarray):
                if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (3, 4):
                    raise ValueError(
                        f"overlay {brief(name)} must be an (H, W, 3) uint8 array, got {img.dtype} {img.shape}"
                    )
                img = Image.fromarray(img)
            if not isinstance(img, Image.Image):
                raise ValueError(f"overlay {brief(name)} must be an image, got {type(img).__name__}")
            if max(img.size) > MAX_EXPORT_SIDE or min(img.size) < 1:
                raise ValueError(
                    f"overlay {brief(name)} is {img.size[0]} x {img.size[1]} pixels; the limit is {MAX_EXPORT_SIDE}"
                )
            tiles.append((str(name)[:40], img))
        if not tiles:
            raise ValueError("nothing to export yet: run a comparison first")
        w, h = tiles[0][1].size
        sheet = Image.new("RGB", (w * len(tiles), h + 28), "white")
        draw = ImageDraw.Draw(sheet)
        for i, (name, img) in enumerate(tiles):
            sheet.paste(img.convert("RGB").resize((w, h)), (i * w, 28))
            draw.text((i * w + 6, 8), name, fill="black")
        path = self.pipeline.store.export_dir(session) / "prunelens-overlays.png"
        sheet.save(path, format="PNG")
        return str(path)
