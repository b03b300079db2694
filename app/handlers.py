"""What the page's events do, as plain functions of plain values: testable without a browser.

``Handlers`` adapts UI values (a possibly missing image, a float from a slider, a flat list of
parameter boxes) to ``ComparePipeline`` calls and formats the results (markdown, highlighted
segments, plotly figures). It raises ``ValueError`` with a readable message on bad input; the UI
layer turns that into an on-page error. It never touches gradio.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

import pruning
from visualizers import (
    attention_heatmap,
    budget_sweep_figure,
    complexity_figure,
    method_bars,
    tau_schedule_figure,
)

__all__ = ["MAX_PROMPT_CHARS", "PROMPT_PRESETS", "Handlers", "ParamSlot"]

MAX_PROMPT_CHARS = 2000
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
                value = bool(value)
            elif isinstance(slot.default, int):
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError(f"{slot.label} must be a whole number, got {value}")
                value = int(value)
            else:
                value = float(value)
                if not math.isfinite(value):
                    raise ValueError(f"{slot.label} must be a finite number, got {value}")
            if value != slot.default:
                out.setdefault(slot.method, {})[slot.name] = value
        return out

    def budget(self, value: Any) -> int:
        n = self.info["n_tokens"]
        try:
            budget = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"budget must be a number from 1 to {n}, got {value!r}") from None
        if not budget.is_integer() or not 1 <= budget <= n:
            raise ValueError(f"budget must be a whole number from 1 to {n}, got {value!r}")
        return int(budget)

    @staticmethod
    def methods(values: Any) -> list[str]:
        if not values:
            raise ValueError("pick at least one pruning method")
        known = pruning.list_methods()
        unknown = [m for m in values if m not in known]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; known: {', '.join(known)}")
        return list(values)

    @staticmethod
    def prompt(text: Any) -> str:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("the prompt is empty: type a question about the image")
        if len(text) > MAX_PROMPT_CHARS:
            raise ValueError(f"the prompt has {len(text)} characters; the limit is {MAX_PROMPT_CHARS}")
        return text.strip()

    # -- fast path -----------------------------------------------------------------------------------

    def load(self, image: Any) -> tuple[str, str, Any, Any]:
        """Encode the image: returns (key, complexity markdown, complexity figure, heat-map figure)."""
        if image is None:
            raise ValueError("no image: upload one, paste one, take one with the webcam or pick an example")
        summary = self.pipeline.load(image)
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
        heat = attention_heatmap(self.pipeline.attention(summary["key"]), tuple(summary["grid"]))
        return summary["key"], md, fig, heat

    def view(self, key: str, methods: Any, budget: Any, param_values: Sequence[Any], colour_by: str | None):
        """Overlays and numbers per method (the fast step).

        Returns (per-method cards, bar chart, τ-schedule figure or None, record): the record is a
        small JSON-ready summary the page keeps for export.
        """
        if not key:
            raise ValueError("load an image first")
        methods = self.methods(methods)
        budget = self.budget(budget)
        params = self.params(param_values)
        mode = None if colour_by in (None, "", "none") else colour_by
        views = self.pipeline.view(key, methods, budget, params, colour_by=mode)
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
            "budget": budget,
            "methods": methods,
            "params": params,
            "selection": {c["method"]: c["numbers"] for c in cards},
        }
        return cards, bars, tau_fig, record

    def sweep(self, key: str, methods: Any, param_values: Sequence[Any]):
        if not key:
            raise ValueError("load an image first")
        data = self.pipeline.sweep(key, self.methods(methods), self.params(param_values))
        return budget_sweep_figure(data, n_tokens=self.info["n_tokens"])

    def step(self, key: str, method: str, budget: Any, step: Any, param_values: Sequence[Any]):
        """One frame of the step-through: (image, markdown)."""
        if not key:
            raise ValueError("load an image first")
        budget = self.budget(budget)
        step = int(min(max(1, round(float(step or 1))), budget))
        frame = self.pipeline.step_through(key, method, budget, step, self.params(param_values))
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

    def answer(self, key: str, prompt: Any, methods: Any, budget: Any, param_values: Sequence[Any], truth: Any):
        """Answers of the full model and each method.

        Returns (full card, per-method cards, summary markdown, record of the answers for export).
        """
        if not key:
            raise ValueError("load an image first")
        prompt = self.prompt(prompt)
        methods = self.methods(methods)
        budget = self.budget(budget)
        truth_text = truth if isinstance(truth, str) and truth.strip() else None
        out = self.pipeline.answer(key, prompt, methods, budget, self.params(param_values), truth_text=truth_text)
        cards = {name: self._answer_card(row) for name, row in out.items()}
        first = next(iter(out.values()))
        summary = (
            f"Answered {len(out)} rows in one batch: {first['batch_ms']:.0f} ms. Basis for marks: {first['basis']}."
        )
        record = {
            "prompt": prompt,
            "budget": budget,
            "answers": {name: {k: v for k, v in row.items() if k != "segments"} for name, row in out.items()},
        }
        return cards["full"], [cards[m] for m in methods], summary, record

    @staticmethod
    def _answer_card(row: Mapping[str, Any]) -> dict[str, Any]:
        speed = f"prefill {_format_ms(row['prefill_ms'])}" + (
            f" · **{row['speedup']:.2f}×** vs full" if row.get("speedup") else ""
        )
        missed = f"missed: {', '.join(row['missed'])}" if row["missed"] else ""
        return {"segments": row["segments"], "speed": speed, "missed": missed, "text": row["text"]}

    # -- export ----------------------------------------------------------------------------------------

    def export_json(self, record: Mapping[str, Any] | None) -> str:
        """Write the page's comparison record to a JSON file; returns its path."""
        if not record:
            raise ValueError("nothing to export yet: run a comparison first")
        data = {"model": self.info["model"], **record}
        with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="prunelens-", delete=False) as f:
            json.dump(data, f, indent=2, default=str)
            return f.name

    @staticmethod
    def export_png(images: Sequence[tuple[str, Image.Image]]) -> str:
        """One slide-ready PNG: the overlays side by side with their method names; returns its path."""
        from PIL import ImageDraw

        images = [(name, img) for name, img in images if img is not None]
        if not images:
            raise ValueError("nothing to export yet: run a comparison first")
        w, h = images[0][1].size
        sheet = Image.new("RGB", (w * len(images), h + 28), "white")
        draw = ImageDraw.Draw(sheet)
        for i, (name, img) in enumerate(images):
            sheet.paste(img.convert("RGB").resize((w, h)), (i * w, 28))
            draw.text((i * w + 6, 8), name, fill="black")
        buf = io.BytesIO()
        sheet.save(buf, format="PNG")
        with tempfile.NamedTemporaryFile("wb", suffix=".png", prefix="prunelens-", delete=False) as f:
            f.write(buf.getvalue())
            return f.name
