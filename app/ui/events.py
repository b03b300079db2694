"""The events that span panels: a new image loads, then draws, then sweeps; every setting change draws
again; Compare answers and Stop stops; closing the tab frees the session.

Each event function returns ``{component: value}``; a component it leaves out keeps its value.
Answers stream: the answer event is a generator that shows every answer as it is written (a
worker thread generates; the event yields what it has at most every ``STREAM_INTERVAL_S``), then
the marked answers; when the page goes away mid-answer the generation is stopped.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import gradio as gr

from ..handlers import AnswerCancelled, Handlers
from ..messages import markdown_text, message
from ..sessions import ServerFullError
from .columns import Columns
from .guard import gpu, guard, image_value, session_of
from .inputs import Inputs
from .plots import ImageFacts, MethodPlots

__all__ = ["wire_answer", "wire_unload", "wire_view"]

STALE = "*Answers cleared: the image, budget, methods or parameters changed. Press **Compare answers** for new ones.*"
STOPPED = "*Stopped: Stop was pressed, the settings changed or a newer request came.*"
EDITED = "*Answers cleared: the prompt or ground truth changed. Press **Compare answers** for new ones.*"
STREAM_INTERVAL_S = 0.1  # the page gets the answers so far at most this often


def wire_view(
    h: Handlers, key: gr.State, inputs: Inputs, facts: ImageFacts, columns: Columns, plots: MethodPlots
) -> None:
    """Load -> view -> sweep on a new image; view on every setting change; sweep on a new method list."""
    pipeline = h.pipeline

    def on_load(request: gr.Request, img, k_budget=None):
        """Encode the new image; one that cannot be used clears the page and says why. The preset
        radio offers the image's own presets (on Qwen2.5-VL they are shares of the image's N), and
        the budget slider reaches the image's own N where that is more than the model's (OneVision)."""
        empty = {facts.complexity_plot: None, facts.heatmap: None, columns.full.overlay: None}
        if img is None:  # the image was cleared
            return {key: "", facts.complexity: "Load an image to see its complexity.", **empty}
        try:
            k, md, fig, heat_fig = h.load(image_value(img), session_of(request))
        except (ValueError, ServerFullError) as err:
            gr.Warning(message(err))
            return {key: "", facts.complexity: f"**This image cannot be used:** {markdown_text(str(err))}", **empty}
        presets = pipeline.presets(k, session_of(request))
        chosen = next((str(p) for p in presets if p == k_budget), None)  # the slider's value, raw
        return {
            key: k,
            facts.complexity: md,
            facts.complexity_plot: fig,
            facts.heatmap: heat_fig,
            columns.full.overlay: pipeline.view_image(k, session_of(request)),
            inputs.budget_preset: gr.Radio(choices=[str(p) for p in presets], value=chosen),
            inputs.budget: gr.Slider(maximum=pipeline.budget_limit(k, session_of(request))),
        }

    def on_view(request: gr.Request, k, chosen_methods, k_budget, colour, *pvals):
        if not k:  # no image (cleared, or it could not be read): nothing to draw or answer
            h.no_image(session_of(request))
            drawn = {c: v for col in columns.methods for c, v in ((col.overlay, None), (col.stats, ""))}
            return {plots.bars: None, facts.taus: None, **drawn, **columns.cleared("")}
        cards, bar_fig, tau_fig, rec = h.view(k, chosen_methods, k_budget, list(pvals), colour, session_of(request))
        by_method = {c["method"]: c for c in cards}
        out: dict[Any, Any] = {plots.bars: bar_fig, facts.taus: tau_fig}
        for col in columns.methods:
            card = by_method.get(col.name)
            out[col.column] = gr.Column(visible=card is not None)
            out[col.overlay] = card["overlay"] if card else None
            out[col.stats] = card["stats"] if card else ""
        return columns.cleared(STALE) | out if rec["answers_stale"] else out  # an in-LLM column: the view's line

    def on_sweep(request: gr.Request, k, chosen_methods, *pvals):
        return h.sweep(k, chosen_methods, list(pvals), session_of(request)) if k else None

    view_inputs = [key, *inputs.view_settings]
    view_outputs = [plots.bars, facts.taus, *columns.view_and_answer_outputs]
    sweep_inputs = [key, inputs.methods, *inputs.params]
    loaded = gr.on(
        triggers=[inputs.image.change],
        fn=guard(on_load),
        inputs=[inputs.image, inputs.budget],
        outputs=[
            key,
            facts.complexity,
            facts.complexity_plot,
            facts.heatmap,
            columns.full.overlay,
            inputs.budget_preset,
            inputs.budget,
        ],
        api_visibility="private",
        preprocess=False,  # the image reaches the app undecoded (app.widgets); the app checks it
        trigger_mode="always_last",
    )
    loaded.then(guard(on_view), view_inputs, view_outputs, api_visibility="private").then(
        guard(on_sweep), sweep_inputs, [plots.sweep], api_visibility="private"
    )
    gr.on(
        triggers=[control.change for control in inputs.view_settings],
        fn=guard(on_view),
        inputs=view_inputs,
        outputs=view_outputs,
        api_visibility="private",
        trigger_mode="always_last",
    )
    gr.on(
        triggers=[inputs.methods.change],
        fn=guard(on_sweep),
        inputs=sweep_inputs,
        outputs=[plots.sweep],
        api_visibility="private",
        trigger_mode="always_last",
    )


def wire_answer(h: Handlers, key: gr.State, inputs: Inputs, columns: Columns) -> None:
    """Compare: the answers are cleared at once, then computed (one at a time on the model); Stop cancels."""

    def on_answer(
        request: gr.Request, img, k, text, chosen_methods, k_budget, truth_text, *pvals
    ) -> Iterator[dict[Any, Any]]:
        session = session_of(request)
        image = image_value(img)
        so_far: dict[str, str] = {}
        lock, changed, result, started = threading.Lock(), threading.Event(), {}, []

        def progress(name: str, answer: str) -> None:
            with lock:
                so_far[name] = answer
            changed.set()

        def work() -> None:
            try:
                result["value"] = h.answer(
                    k, text, chosen_methods, k_budget, list(pvals), truth_text, image=image, session=session,
                    progress=progress, on_start=started.append,
                )  # fmt: skip
            except BaseException as err:  # re-raised in the event's own thread below
                result["error"] = err
            finally:
                changed.set()

        worker = threading.Thread(target=work, name="prunelens-answer", daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                changed.wait(1.0)
                changed.clear()
                with lock:
                    snapshot = dict(so_far)
                if snapshot and worker.is_alive():
                    yield columns.partial(snapshot)
                worker.join(STREAM_INTERVAL_S)
        finally:
            if worker.is_alive() and started:  # the page went away (Stop, a closed tab): stop this generation
                started[0].set()
        if "error" in result:
            if isinstance(result["error"], AnswerCancelled):
                yield columns.cleared(STOPPED)
                return
            raise result["error"]
        full, cards, summary, rec = result["value"]
        if not rec["current"]:
            yield columns.cleared(
                f"*The settings changed while answering (these answers were for {rec['budget']} tokens); "
                "they were discarded. Press **Compare answers** again.*"
            )
            return
        yield columns.answers(full, dict(zip(h.methods(chosen_methods), cards)), summary)

    def on_stop(request: gr.Request):
        h.stop(session_of(request))

    def on_question(request: gr.Request, k, chosen_methods, k_budget, colour, *pvals):
        """A new prompt or ground truth: answers for the old one are stopped and cleared. The columns
        of methods that choose from the question show what the view says of them now: why they wait
        for an answer, or why this model cannot run them."""
        session = session_of(request)
        if not h.forget_answers(session):
            return {columns.summary: gr.skip()}  # nothing held: leave the page as it is
        out = columns.cleared(EDITED)
        try:
            drawn = h.view(k, chosen_methods, k_budget, list(pvals), colour, session)[0] if k else []
        except ValueError:  # a setting the view refuses says so on its own event; the answers stay cleared
            drawn = []
        cards = {c["method"]: c for c in drawn}
        for col in columns.methods:
            if col.pending and col.name in cards:
                out |= {col.overlay: cards[col.name]["overlay"], col.stats: cards[col.name]["stats"]}
        return out

    answering = gr.on(
        triggers=[inputs.run.click],
        fn=lambda: columns.cleared("*Answering…*"),
        inputs=None,
        outputs=columns.answer_outputs,
        api_visibility="private",
        queue=False,
    ).then(
        guard(gpu(on_answer)),
        [inputs.image, key, inputs.prompt, inputs.methods, inputs.budget, inputs.truth, *inputs.params],
        columns.answer_outputs,
        api_visibility="private",
        concurrency_id="model",
        concurrency_limit=1,
        preprocess=False,  # raw values: the image undecoded, the rest converted by the handlers
    )
    gr.on(
        triggers=[inputs.prompt.input, inputs.truth.input],
        fn=guard(on_question),
        inputs=[key, *inputs.view_settings],
        outputs=columns.answer_outputs,
        api_visibility="private",
        queue=False,
        trigger_mode="always_last",
    )
    gr.on(
        triggers=[inputs.stop.click],
        fn=guard(on_stop),
        inputs=None,
        outputs=None,
        api_visibility="private",
        queue=False,
        cancels=[answering],
    )


def wire_unload(demo: gr.Blocks, h: Handlers) -> None:
    """Closing the tab frees what its session held and stops its work."""

    def on_unload(request: gr.Request):
        h.pipeline.release(session_of(request))

    demo.unload(on_unload)
