"""What the page's events do, as plain functions of plain values: testable without a browser.

``Handlers`` turns widget values into the plain values ``ComparePipeline`` takes (64.0 -> 64, a
comma-separated string -> a list of names, the parameter boxes -> a dict per method), refusing only
what has none (an empty box, a bool or text in a number box, another word in a true/false box:
``app.slots``), and formats the results (markdown, highlighted segments, plotly figures). An in-LLM
method's column says why it has nothing to draw until an answer tells what it kept, and a method
this model rules out says so in its own column. Whether a plain value is allowed is said once, by
its owner: the registry for methods and parameters, the pipeline for the budget's range, the
runtime for the prompt. Refusals are ``ValueError`` messages quoting user input only through
``brief``; every call names its page ``session``. No gradio, torch or ``pruning`` here.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from visualizers import (
    attention_heatmap,
    budget_sweep_figure,
    complexity_figure,
    method_bars,
    overlay_sheet,
    tau_schedule_figure,
)

from .choices import pending_line
from .messages import brief, markdown_text
from .runtime.images import ImageFileMissing
from .sessions import DEFAULT_SESSION, AnswerCancelled
from .slots import ParamSlot, as_number, slot_kind, slot_value, whole

if TYPE_CHECKING:
    from .compare import ComparePipeline

__all__ = ["MAX_PROMPT_CHARS", "PROMPT_PRESETS", "AnswerCancelled", "Handlers", "ParamSlot", "brief"]

MAX_PROMPT_CHARS = 2000  # the prompt box's limit, checked before tokenising; the model's room is the pipeline's
MAX_EXPORT_SIDE = 1024  # overlay images are at most this many pixels a side when tiled for PNG export
PROMPT_PRESETS = (
    "Describe this image in detail.",
    "Describe the image.",
    "Is there a circle in the image?",
    "How many squares are there?",
    "What word is written in the image?",
)
CALIBRATION_WORDS = {  # what the page says of a model's calibration, by ``Calibration.source`` ("file": nothing)
    "paper-llava-1.5-7b": "Calibration: the paper's LLaVA-1.5-7B calibration.",
    "default-llava-1.5": (
        "Uncalibrated: LLaVA-1.5-7B's erank statistics stand in, so the complexity bins may not fit this "
        "model; run `python -m app.calibrate MODEL IMAGE_FOLDER` to calibrate it."
    ),
}


def _format_ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} ms"


def _settings(key: str, methods: Any, budget: Any, params: Mapping[str, Mapping[str, Any]]) -> str:
    """What an answer depends on, as one comparable value: the image, the methods, the budget and the
    parameters. It is made before the pipeline checks the request, so it takes any value."""
    return json.dumps([key, methods, budget, params], sort_keys=True, default=repr)


class Handlers:
    """Event handlers over a ``ComparePipeline`` (or anything with its methods)."""

    def __init__(self, pipeline: ComparePipeline) -> None:
        self.pipeline = pipeline
        self.info = pipeline.info()
        ranges = {m: d.get("ranges", {}) for m, d in self.info.get("method_info", {}).items()}
        self.slots = [
            ParamSlot(method, name, default, **slot_kind(default, ranges.get(method, {}).get(name)))
            for method in self.info["methods"]
            for name, default in self.info["params"][method].items()
            if isinstance(default, (bool, int, float))
        ]

    def params(self, values: Sequence[Any]) -> dict[str, dict[str, Any]]:
        """Method parameters from the flat list of parameter boxes (in ``self.slots`` order).

        Each box's value becomes its slot's kind: a bool from true/false, 1/0 or a checkbox; a
        float, or an int for whole numbers in an int box, from a number or numeric text. Values
        equal to the default are left out. Whether a value is allowed (τ_max > 0, r in [0, 1]) is
        the registry's to say, when the method runs.
        """
        if len(values) != len(self.slots):
            raise ValueError(f"expected {len(self.slots)} parameter values, got {len(values)}")
        out: dict[str, dict[str, Any]] = {}
        for slot, value in zip(self.slots, values):
            value = slot_value(slot, value)
            if value != slot.default:
                out.setdefault(slot.method, {})[slot.name] = value
        return out

    def budget(self, value: Any) -> int | float:
        """The budget box's value as a plain number (64.0 and "64" become 64); a bool or text that is
        no number is refused here, and the pipeline checks the number against 1..N."""
        number = as_number(value)
        if number is None:
            n = self.info["n_tokens"]
            wants = "a whole number" if isinstance(value, bool) else "a number"
            raise ValueError(f"budget must be {wants} from 1 to {n}, got {brief(value)}")
        return whole(number)

    @staticmethod
    def methods(values: Any) -> Any:
        """Method names from a list, or from one comma-separated or JSON-list string; anything else
        goes on as it is (the pipeline says what a comparison's methods must be)."""
        if isinstance(values, str):
            text = values.strip()
            if text.startswith("["):
                try:
                    values = json.loads(text)
                except json.JSONDecodeError:
                    raise ValueError(f"methods: {brief(values)} is not a JSON list of names") from None
            else:
                values = [m.strip() for m in text.split(",") if m.strip()]
        return list(values) if isinstance(values, (list, tuple)) else values

    @staticmethod
    def prompt(text: Any) -> Any:
        """The prompt box's text, trimmed; over the box's own limit it is refused before anything
        tokenises it. Whether it is empty or fits the model is the pipeline's check."""
        if not isinstance(text, str):
            return text
        if len(text) > MAX_PROMPT_CHARS:
            raise ValueError(f"the prompt has {len(text)} characters; the limit is {MAX_PROMPT_CHARS}")
        return text.strip()

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
        if summary.get("note"):
            md += f"\n\n**Note:** {summary['note']}"
        if cal["source"] != "file":
            words = CALIBRATION_WORDS.get(cal["source"], f"Calibration: {cal['source']}.")
            md += f"\n\n*{words}*"
        fig = complexity_figure(
            image_erank=summary["image_erank"],
            entropy=summary["attention_entropy"],
            erank_lo=cal["erank_p10"],
            erank_mean=cal["erank_avg"],
            erank_hi=cal["erank_p90"],
        )
        grid = self.pipeline.patch_grids(summary["key"], session) or tuple(summary["grid"])  # several: one map each
        heat = attention_heatmap(self.pipeline.attention(summary["key"], session), grid)
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
        store = self.pipeline.store
        try:
            if not key:
                raise ValueError("load an image first")
            methods = self.methods(methods)
            budget = self.budget(budget)
            params = self.params(param_values)
            mode = self._colour_mode(colour_by)
            # first, so that stale answers are forgotten, with what the in-LLM methods kept in them, before drawing
            stale = store.mark_viewed(session, _settings(key, methods, budget, params))
            views = self.pipeline.view(key, methods, budget, params, colour_by=mode, session=session)
        except Exception:
            store.mark_viewed(session, ("refused",))  # the controls match no answer now
            raise
        cards = [self._view_card(method, views[method]) for method in methods]
        bars = method_bars({c["method"]: c["numbers"] for c in cards}, ["kept_erank", "retained_attention"])
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
        return cards, bars, self._tau_figure(views, params), record

    @staticmethod
    def _colour_mode(colour_by: Any) -> str | None:
        if colour_by not in (None, "", "none", "order", "attention"):
            raise ValueError(f"colour by must be none, order or attention, got {brief(colour_by)}")
        return None if colour_by in (None, "", "none") else colour_by

    @staticmethod
    def _view_card(method: str, v: Mapping[str, Any]) -> dict[str, Any]:
        """One method's overlay, stats line and numbers. An in-LLM method (its view has a ``layer``)
        with no answer to draw says why instead (``pending``, or ``refused`` for this model or request)."""
        numbers = {k: v[k] for k in ("n_visual_tokens", "retained_attention", "kept_erank", "select_ms")}
        if "layer" in v:
            numbers |= {"layer": v["layer"], **{k: v[k] for k in ("pending", "refused") if v.get(k)}}
        if v.get("refused"):
            stats = f"**Cannot run here:** {markdown_text(v['refused'])}"
        elif v.get("pending"):
            stats = pending_line(v["pending"], v["layer"])
        else:
            stats = (
                f"**{v['n_visual_tokens']}** tokens ({v['retention']:.0%}) · retained attention "
                f"**{v['retained_attention']:.2f}** · kept erank **{v['kept_erank']:.1f}** · "
                f"select {_format_ms(v['select_ms'])}"
            )
            if "layer" in v:
                where = f"at LLM layer **{v['layer']}**" if v["layer"] else "before the LLM"
                stats += f" · kept {where} for this question"
        return {"method": method, "overlay": v["overlay"], "stats": stats, "numbers": numbers}

    def _tau_figure(self, views: Mapping[str, Mapping[str, Any]], params: Mapping[str, Mapping[str, Any]]):
        """The τ schedule of the first shown method that reports one (its registry ``tau_schedule``
        names the parameter capping it), or None."""
        for method, v in views.items():
            cap = self.info["method_info"][method]["tau_schedule"]
            taus = v["info"].get("taus")
            if cap is not None and taus is not None:
                tau_max = params.get(method, {}).get(cap, self.info["params"][method][cap])
                return tau_schedule_figure(
                    taus, tau_max=tau_max, label=method, image_erank=v["info"].get("image_erank")
                )
        return None

    def sweep(self, key: str, methods: Any, param_values: Sequence[Any], session: str = DEFAULT_SESSION):
        if not key:
            raise ValueError("load an image first")
        methods = self.methods(methods)
        data = self.pipeline.sweep(key, methods, self.params(param_values), session=session)
        fig = budget_sweep_figure(data, n_tokens=self.info["n_tokens"])
        skipped = [m for m in methods if m not in data]  # in-LLM: nothing is selected before the question
        if skipped:
            note = f"not swept: {', '.join(skipped)} (in-LLM: what it keeps depends on the question)"
            fig.update_layout(title=f"{fig.layout.title.text}<br><sup>{note}</sup>")
        return fig

    def step(
        self,
        key: str,
        method: str,
        budget: Any,
        step: Any,
        param_values: Sequence[Any],
        session: str = DEFAULT_SESSION,
    ):
        """One frame of the step-through: (image, markdown). The pick slider's value is held to the budget.

        An in-LLM method has no pre-LLM walk: (None, a one-line note saying so).
        """
        if not key:
            raise ValueError("load an image first")
        if self.info["method_info"].get(method, {}).get("pending"):  # chooses from the question
            return None, f"*{method} is not replayed: it {self.info['method_info'][method]['note']}.*"
        budget = self.budget(budget)
        try:
            step = float(step or 1)
        except (TypeError, ValueError):
            raise ValueError(f"the pick must be a number, got {brief(step)}") from None
        step = int(min(max(1, round(step)), budget)) if math.isfinite(step) else 1
        frame = self.pipeline.step_through(key, method, budget, step, self.params(param_values), session=session)
        md = f"Pick **{step}** of {frame['n_steps']}: token {frame['pick']} ({frame['place']})."
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
        colour_by: Any = None,
        image: Any = None,
        session: str = DEFAULT_SESSION,
        progress: Callable[[str, str], None] | None = None,
        on_start: Callable[[threading.Event], None] | None = None,
    ):
        """Answers of the full model and each method, for the image the page shows.

        ``image`` (the page's image value) wins over ``key``: a Compare click can arrive while a new
        image is still being encoded. The work stops early, raising ``AnswerCancelled``, on a newer
        answer, a settings change, Stop or a closed tab; ``on_start(event)`` gets that cancellation
        event first, ``progress(name, text)`` every answer as it grows. Returns (full card, method
        cards, summary, record); ``record["current"]`` is False when the settings moved meanwhile.
        An in-LLM method's card also has the ``overlay`` and ``stats`` of what it kept, coloured by
        ``colour_by`` (None: as the session's last view; that view showed nothing for it); a
        method this model or request rules out has only a one-line refusal, and the others answer.
        """
        store = self.pipeline.store
        cancel = store.start_answer(session, None)  # from now on Stop or a closed tab reaches it
        if on_start is not None:
            on_start(cancel)
        settings = None
        current = False
        try:
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
            shown = store.record(session, "view") or {}
            mode = self._colour_mode(colour_by if colour_by is not None else shown.get("colour_by"))
            settings = _settings(key, methods, budget, params)
            store.set_running_for(session, cancel, settings)
            if cancel.is_set():
                raise AnswerCancelled("stopped before generating")
            out = self.pipeline.answer(
                key,
                prompt,
                methods,
                budget,
                params,
                truth_text=truth_text,
                session=session,
                cancel=cancel,
                progress=progress,
            )
        finally:
            current = store.finish_answer(session, settings, cancel)
        cards = {name: self._answer_card(row, versus_full=name != "full") for name, row in out.items()}
        in_llm = [m for m in methods if self.info["method_info"][m].get("pending")]  # chosen from the question
        if current and in_llm:  # what they kept is known now: drawn as the view draws it
            views = self.pipeline.view(key, in_llm, budget, params, colour_by=mode, session=session)
            drawn = {m: self._view_card(m, views[m]) for m in in_llm}
            for m, card in drawn.items():
                cards[m] |= {"overlay": card["overlay"], "stats": card["stats"]}
            shown = store.record(session, "view")
            if shown and (shown["image"], shown["budget"]) == (key, budget):  # the page's view shows them now
                kept = {m: card["numbers"] for m, card in drawn.items()}
                store.set_record(session, "view", {**shown, "selection": {**shown["selection"], **kept}})
        first, label = out["full"], self._image_label(key, session)
        refused = [m for m in methods if "refused" in out[m]]
        summary = (
            f"Answers for **{label}** at **{budget}** tokens: {len(out) - len(refused)} answers generated together "
            f"in {first['batch_ms']:.0f} ms. Basis for marks: {first['basis']}."
        )
        if refused:
            summary += f" Not run here: {', '.join(refused)} (its column says why)."
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

    def no_image(self, session: str = DEFAULT_SESSION) -> None:
        """The page shows no image (cleared, or refused): no answer belongs to it any more."""
        self.pipeline.store.mark_viewed(session, ("no image",))

    def forget_answers(self, session: str = DEFAULT_SESSION) -> bool:
        """The prompt or ground truth changed: stop the running answer and forget the shown ones."""
        return self.pipeline.store.forget_answers(session)

    def stop(self, session: str) -> bool:
        """Stop the session's running answer (the Stop button); returns whether one was running."""
        return self.pipeline.store.cancel(session)

    @staticmethod
    def _answer_card(row: Mapping[str, Any], versus_full: bool) -> dict[str, Any]:
        """What an answer column shows: the marked answer, its speed and agreement line, what it missed."""
        if "refused" in row:
            refusal = f"**Cannot run here:** {markdown_text(row['refused'])}"
            return {"segments": None, "speed": refusal, "missed": "", "text": ""}
        speedup = f" · **{row['speedup']:.2f}×** vs full" if row.get("speedup") else ""
        wrong, missed = row.get("wrong_attributes") or [], row["missed"]
        notes = [f"missed: {', '.join(missed)}"] * bool(missed) + [f"wrong: {'; '.join(wrong)}"] * bool(wrong)
        overlap = f"{row['overlap_with_full']:.0%} word overlap with full"
        same = "same answer as full" if row["same_as_full"] else overlap
        speed = f"prefill {_format_ms(row['prefill_ms'])}{speedup}" + (f" · {same}" if versus_full else "")
        speed += f" · pruned inside the LLM at layer {row['layer']}" if row.get("layer") else ""
        return {"segments": row["segments"], "speed": speed, "missed": "; ".join(notes), "text": row["text"]}

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
        sheet = overlay_sheet([(str(name), img) for name, img in images if img is not None], MAX_EXPORT_SIDE)
        path = self.pipeline.store.export_dir(session) / "prunelens-overlays.png"
        sheet.save(path, format="PNG")
        return str(path)
