"""The PruneLens page: layout and wiring only. Handlers live in ``app.handlers``.

``build_demo(pipeline)`` returns a ``gr.Blocks``. Events follow one rule: the image loads (encode),
then every change of budget, methods, parameters or colouring re-runs only selection and drawing;
the Compare button adds generation as a second, slower step. The page keeps only small values in
session state (the image key and a summary for export); the heavy encoding lives in the pipeline's
bounded cache.
"""

from __future__ import annotations

import functools
import html
import logging
import re
from collections.abc import Callable
from typing import Any

import gradio as gr

from .handlers import MAX_PROMPT_CHARS, PROMPT_PRESETS, AnswerCancelled, Handlers
from .sessions import DEFAULT_SESSION, ServerFullError
from .widgets import RefusedUpload, upload_value

__all__ = ["build_demo", "gpu"]

log = logging.getLogger("prunelens")

HIGHLIGHT_COLOURS = {"correct": "#2ca02c", "hallucinated": "#d62728", "not in full answer": "#ff7f0e"}
INTRO = """# PruneLens
Compare what visual-token pruning keeps, what the model then says, and how much faster it says it.
Pick an image and a question, choose a budget (how many of the model's visual tokens the language
model receives) and the methods to compare. Kept patches stay clear, dropped ones are dimmed.
Object mentions in the answers are marked **green** (in the image) or **red** (hallucinated)."""


def gpu(fn: Callable) -> Callable:
    """``spaces.GPU`` (ZeroGPU on HuggingFace Spaces) when that package is installed, else ``fn``."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn)


MAX_MESSAGE_CHARS = 300  # error pop-ups are cut to this length
CACHE_CLEANUP = (60, 900)  # every minute gradio deletes its cached files (overlays, uploads) over 15 min old


def message(err: BaseException) -> str:
    """An exception as a pop-up line: one line, at most MAX_MESSAGE_CHARS, HTML-escaped.

    Gradio renders ``gr.Error`` text as HTML; escaping makes anything a user typed show as text.
    """
    text = html.escape(" ".join((str(err) or type(err).__name__).split()), quote=False)
    if len(text) > MAX_MESSAGE_CHARS:
        text = re.sub(r"&[a-z]*$", "", text[: MAX_MESSAGE_CHARS - 1]) + "…"  # never half an entity
    return text


def markdown_text(text: str) -> str:
    """``text`` for a Markdown component: cut like ``message`` and with Markdown syntax escaped."""
    return re.sub(r"([\\`*_{}\[\]()#+!|<>~-])", r"\\\1", message(ValueError(text)))


def _guard(fn: Callable) -> Callable:
    """Bad input becomes an on-page error message; anything else is logged, never shown raw."""

    @functools.wraps(fn)  # keeps the signature: gradio reads it to pass ``gr.Request``
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error as err:
            raise gr.Error(message(err.message if hasattr(err, "message") else err), print_exception=False) from None
        except (ValueError, MemoryError, RuntimeError) as err:
            raise gr.Error(message(err), print_exception=False) from None
        except Exception as err:
            log.exception("unexpected error in %s", getattr(fn, "__name__", "handler"))
            raise gr.Error(f"Something went wrong ({type(err).__name__}); the server is still running.") from None

    return wrapped


def _session(request: gr.Request | None) -> str:
    """The page session an event belongs to (gradio's session hash)."""
    session = getattr(request, "session_hash", None)
    return session if isinstance(session, str) and session else DEFAULT_SESSION


def _image(payload: Any) -> Any:
    """An image event's raw payload (``preprocess=False``) as a handler input, or a ``ValueError``."""
    value = upload_value(payload)
    if isinstance(value, RefusedUpload):
        raise ValueError(str(value))
    return value


def build_demo(pipeline: Any, *, examples: list[list[Any]] | None = None) -> gr.Blocks:
    """The page for ``pipeline`` (a ``ComparePipeline`` or anything with its methods)."""
    h = Handlers(pipeline)
    info = h.info
    methods = info["methods"]
    presets = info["presets"]
    default_budget = presets[2] if len(presets) > 2 else presets[-1]
    examples = (
        examples
        if examples is not None
        else [[ex.image, ex.prompt or PROMPT_PRESETS[0]] for ex in getattr(pipeline, "examples", [])]
    )

    with gr.Blocks(title="PruneLens", delete_cache=CACHE_CLEANUP) as demo:
        key = gr.State("")
        gr.Markdown(INTRO)
        gr.Markdown(
            f"Model **{info['model']}** on **{info['device']}** · {info['n_tokens']} visual tokens "
            f"({info['grid'][0]}×{info['grid'][1]})",
            elem_id="model-line",
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                image = gr.Image(
                    label="Image",
                    type="filepath",
                    sources=["upload", "clipboard", "webcam"],
                    height=300,
                    format="png",
                    elem_id="image",
                )
                room = pipeline.prompt_room() if hasattr(pipeline, "prompt_room") else None
                prompt = gr.Textbox(
                    label="Prompt",
                    value=PROMPT_PRESETS[0],
                    max_lines=4,
                    max_length=MAX_PROMPT_CHARS,
                    info=f"At most {room} tokens on this model (about {room * 3} characters)" if room else None,
                    elem_id="prompt",
                )
                preset = gr.Dropdown(list(PROMPT_PRESETS), label="Prompt presets", value=None)
                truth = gr.Textbox(
                    label="Ground truth objects (optional, comma-separated)",
                    placeholder="e.g. dog, frisbee, person — built-in scenes fill this in themselves",
                    max_length=1000,
                    elem_id="truth",
                )
                budget = gr.Slider(
                    1,
                    info["n_tokens"],
                    value=default_budget,
                    step=1,
                    label="Budget K (kept tokens)",
                    elem_id="budget",
                )
                budget_preset = gr.Radio([str(p) for p in presets], value=str(default_budget), label="Paper presets")
                retention = gr.Markdown(f"Retention: {default_budget / info['n_tokens']:.1%}")
                chosen = gr.CheckboxGroup(methods, value=info["default_methods"], label="Methods", elem_id="methods")
                colour_by = gr.Radio(["none", "order", "attention"], value="none", label="Colour kept patches by")
                with gr.Accordion("Method parameters", open=False):
                    param_boxes = []
                    for slot in h.slots:
                        shown = slot.method in info["default_methods"]
                        if isinstance(slot.default, bool):
                            param_boxes.append(gr.Checkbox(value=slot.default, label=slot.label, visible=shown))
                        else:
                            param_boxes.append(gr.Number(value=slot.default, label=slot.label, visible=shown))
                with gr.Row():
                    run = gr.Button("Compare answers", variant="primary", elem_id="run")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                if examples:
                    gr.Examples(examples=examples, inputs=[image, prompt], label="Examples (simple → complex)")
            with gr.Column(scale=2):
                complexity_md = gr.Markdown("Load an image to see its complexity.", elem_id="complexity")
                complexity_plot = gr.Plot(label="Where this image sits", elem_id="complexity-plot")
                with gr.Row():
                    heat = gr.Plot(label="[CLS] attention", elem_id="heatmap")
                    taus = gr.Plot(label="Adaptive τ schedule", elem_id="taus")

        gr.Markdown("## Side by side")
        with gr.Row(equal_height=False):
            with gr.Column(min_width=220, elem_id="col-full"):
                gr.Markdown("### full model")
                full_image = gr.Image(label="all tokens", interactive=False, height=260, elem_id="overlay-full")
                full_speed = gr.Markdown()
                full_answer = gr.HighlightedText(label="answer", color_map=HIGHLIGHT_COLOURS, elem_id="answer-full")
                full_missed = gr.Markdown()
            cols = []
            for method in methods:
                with gr.Column(
                    min_width=220, visible=method in info["default_methods"], elem_id=f"col-{method}"
                ) as col:
                    gr.Markdown(f"### {method}")
                    overlay = gr.Image(
                        label=f"{method} overlay", interactive=False, height=260, elem_id=f"overlay-{method}"
                    )
                    stats = gr.Markdown(elem_id=f"stats-{method}")
                    speed = gr.Markdown(elem_id=f"speed-{method}")
                    answer = gr.HighlightedText(label="answer", color_map=HIGHLIGHT_COLOURS, elem_id=f"answer-{method}")
                    missed = gr.Markdown()
                cols.append(
                    dict(
                        method=method, col=col, overlay=overlay, stats=stats, speed=speed, answer=answer, missed=missed
                    )
                )
        answer_summary = gr.Markdown(elem_id="answer-summary")
        with gr.Row():
            bars = gr.Plot(label="Methods on this image", elem_id="bars")
            sweep = gr.Plot(label="Budget sweep", elem_id="sweep")
        with gr.Accordion("Step through a greedy walk", open=False):
            with gr.Row():
                step_method = gr.Radio(
                    [m for m in ("adaptive", "diversity", "attention") if m in methods],
                    value="adaptive",
                    label="Method",
                )
                step = gr.Slider(1, info["n_tokens"], value=1, step=1, label="Pick")
            with gr.Row():
                step_image = gr.Image(label="picks so far (crossed: suppressed at this pick)", height=320)
                step_md = gr.Markdown()
        with gr.Accordion("Export", open=False):
            with gr.Row():
                export_json = gr.Button("Comparison as JSON", elem_id="export-json")
                export_png = gr.Button("Overlays as PNG", elem_id="export-png")
            export_file = gr.File(label="Download", elem_id="export-file")

        # -- wiring ---------------------------------------------------------------------------------
        params_in = param_boxes
        view_outputs = [bars, taus]
        for c in cols:
            view_outputs += [c["col"], c["overlay"], c["stats"]]
        answer_outputs = [full_answer, full_speed, full_missed, answer_summary]
        for c in cols:
            answer_outputs += [c["answer"], c["speed"], c["missed"]]

        def cleared_answers(summary: str) -> list[Any]:
            """Every answer field emptied, with ``summary`` saying why."""
            return [None, "", "", summary] + [None, "", ""] * len(cols)

        def on_view(request: gr.Request, k, chosen_methods, k_budget, colour, *pvals):
            if not k:  # no image (cleared, or it could not be read): nothing to draw or answer
                return [None, None] + [gr.skip(), None, ""] * len(cols) + cleared_answers("")
            session = _session(request)
            cards, bar_fig, tau_fig, rec = h.view(k, chosen_methods, k_budget, list(pvals), colour, session)
            by_method = {c["method"]: c for c in cards}
            out = [bar_fig, tau_fig]
            for c in cols:
                card = by_method.get(c["method"])
                out += [
                    gr.Column(visible=card is not None),
                    card["overlay"] if card else None,
                    card["stats"] if card else "",
                ]
            if rec["answers_stale"]:
                out += cleared_answers(
                    "*Answers cleared: the image, budget, methods or parameters changed. "
                    "Press **Compare answers** for new ones.*"
                )
            else:
                out += [gr.skip()] * len(answer_outputs)
            return out

        def on_load(request: gr.Request, img):
            """Encode the new image; one that cannot be used clears the page and says why."""
            if img is None:  # the image was cleared
                return "", "Load an image to see its complexity.", None, None, None
            try:
                k, md, fig, heat_fig = h.load(_image(img), _session(request))
            except (ValueError, ServerFullError) as err:
                gr.Warning(message(err))
                return "", f"**This image cannot be used:** {markdown_text(str(err))}", None, None, None
            return k, md, fig, heat_fig, pipeline.view_image(k, _session(request))

        def on_sweep(request: gr.Request, k, chosen_methods, *pvals):
            return h.sweep(k, chosen_methods, list(pvals), _session(request)) if k else None

        def on_answer(request: gr.Request, img, k, text, chosen_methods, k_budget, truth_text, *pvals):
            session = _session(request)
            try:
                full, cards, summary, rec = h.answer(
                    k, text, chosen_methods, k_budget, list(pvals), truth_text, image=_image(img), session=session
                )
            except AnswerCancelled:
                return cleared_answers("*Stopped: Stop was pressed, the settings changed or a newer request came.*")
            if not rec["current"]:
                return cleared_answers(
                    f"*The settings changed while answering (these answers were for {rec['budget']} tokens); "
                    "they were discarded. Press **Compare answers** again.*"
                )
            by_method = dict(zip(h.methods(chosen_methods), cards))
            out = [full["segments"], full["speed"], full["missed"], summary]
            for c in cols:
                card = by_method.get(c["method"])
                out += [
                    card["segments"] if card else None,
                    card["speed"] if card else "",
                    card["missed"] if card else "",
                ]
            return out

        def on_methods(chosen_methods):
            """Show only the parameters of the chosen methods (the others keep their values)."""
            return [gr.update(visible=slot.method in (chosen_methods or [])) for slot in h.slots]

        def on_step(request: gr.Request, k, m, k_budget, s, *pvals):
            if not k:
                return None, "Load an image first."
            return h.step(k, m, k_budget, s, list(pvals), _session(request))

        def on_stop(request: gr.Request):
            h.stop(_session(request))

        def on_unload(request: gr.Request):
            pipeline.release(_session(request))

        view_inputs = [key, chosen, budget, colour_by, *params_in]
        chosen.change(on_methods, [chosen], param_boxes, api_visibility="private", queue=False)
        load_event = image.change(
            _guard(on_load),
            [image],
            [key, complexity_md, complexity_plot, heat, full_image],
            api_visibility="private",
            preprocess=False,  # the image reaches the app undecoded (app.widgets); the app checks it
        )
        load_event.then(_guard(on_view), view_inputs, view_outputs + answer_outputs, api_visibility="private").then(
            _guard(on_sweep), [key, chosen, *params_in], [sweep], api_visibility="private"
        )
        for control in (chosen, budget, colour_by, *params_in):
            control.change(
                _guard(on_view),
                view_inputs,
                view_outputs + answer_outputs,
                api_visibility="private",
                trigger_mode="always_last",
            )
        chosen.change(
            _guard(on_sweep),
            [key, chosen, *params_in],
            [sweep],
            api_visibility="private",
            trigger_mode="always_last",
        )

        def on_budget(b):
            """Retention line, and the preset radio follows the slider (cleared off the presets)."""
            try:
                k = int(float(b))
            except (TypeError, ValueError):
                return gr.skip(), gr.skip()
            return f"Retention: {k / info['n_tokens']:.1%}", str(k) if k in presets else None

        budget.change(on_budget, [budget], [retention, budget_preset], api_visibility="private", queue=False)
        budget_preset.input(lambda p: int(p), [budget_preset], [budget], api_visibility="private", queue=False)
        preset.input(lambda p: p or gr.skip(), [preset], [prompt], api_visibility="private", queue=False)
        answering = run.click(
            lambda: cleared_answers("*Answering…*"), None, answer_outputs, api_visibility="private", queue=False
        ).then(
            _guard(gpu(on_answer)),
            [image, key, prompt, chosen, budget, truth, *params_in],
            answer_outputs,
            api_visibility="private",
            concurrency_id="model",
            concurrency_limit=1,
            preprocess=False,  # raw values: the image undecoded, the rest checked by the handlers
        )
        stop.click(_guard(on_stop), None, None, api_visibility="private", queue=False, cancels=[answering])
        for control in (step, step_method):
            control.change(
                _guard(on_step),
                [key, step_method, budget, step, *params_in],
                [step_image, step_md],
                api_visibility="private",
                trigger_mode="always_last",
            )

        def on_export_json(request: gr.Request):
            return h.export_json(None, _session(request))

        def on_export_png(request: gr.Request):
            return h.export_overlays(_session(request))

        export_json.click(_guard(on_export_json), None, [export_file], api_visibility="private")
        export_png.click(_guard(on_export_png), None, [export_file], api_visibility="private")
        demo.unload(on_unload)

        def compare(image, prompt, methods="attention,diversity,adaptive", budget=64, truth=""):
            """Compare pruning methods on one image: per-method selection numbers and answers (JSON).

            ``methods`` is a list of names or one comma-separated string; ``truth`` optional
            comma-separated object names.
            """
            return pipeline.compare(
                _image(image), h.prompt(prompt), h.methods(methods), h.budget(budget), truth_text=h.truth(truth)
            )

        api_in = [
            gr.Image(type="filepath", visible=False, label="image"),
            gr.Textbox(visible=False, label="prompt"),
            gr.JSON(
                value=list(info["default_methods"]),
                visible=False,
                label="methods (a list of names, or one comma-separated string)",
            ),
            gr.Number(value=default_budget, visible=False, label="budget"),
            gr.Textbox(value="", visible=False, label="ground truth objects (comma-separated, optional)"),
        ]
        api_out = gr.JSON(visible=False, label="comparison")
        api_button = gr.Button(visible=False)
        api_button.click(
            _guard(gpu(compare)),
            api_in,
            api_out,
            api_name="compare",
            concurrency_id="model",
            concurrency_limit=1,
            preprocess=False,
        )
    return demo
