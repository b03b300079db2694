"""``build_demo``: the page's layout, panel by panel, and the wiring of each panel's events."""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..handlers import PROMPT_PRESETS, Handlers
from .api import build_api
from .columns import build_columns
from .events import wire_answer, wire_unload, wire_view
from .export import build_export, wire_export
from .inputs import build_inputs, wire_inputs
from .plots import build_image_facts, build_method_plots
from .step import build_step_through, wire_step_through

__all__ = ["build_demo"]

CACHE_CLEANUP = (60, 900)  # every minute gradio deletes its cached files (overlays, uploads) over 15 min old
INTRO = """# PruneLens
Compare what visual-token pruning keeps, what the model then says, and how much faster it says it.
Pick an image and a question, choose a budget (how many of the model's visual tokens the language
model receives) and the methods to compare. Kept patches stay clear, dropped ones are dimmed.
Object mentions in the answers are marked **green** (in the image) or **red** (hallucinated)."""


def build_demo(pipeline: Any, *, examples: list[list[Any]] | None = None) -> gr.Blocks:
    """The page for ``pipeline`` (a ``ComparePipeline`` or anything with its methods).

    Everything it shows of the model and its methods (token count, presets, default budget and
    methods, parameters and their ranges, which walks replay) comes from ``pipeline.info()``.
    """
    h = Handlers(pipeline)
    info = h.info
    if examples is None:
        examples = [[ex.image, ex.prompt or PROMPT_PRESETS[0]] for ex in getattr(pipeline, "examples", [])]
    room = pipeline.prompt_room() if hasattr(pipeline, "prompt_room") else None

    with gr.Blocks(title="PruneLens", delete_cache=CACHE_CLEANUP) as demo:
        key = gr.State("")  # the loaded image's key: all the page keeps of it
        gr.Markdown(INTRO)
        gr.Markdown(
            f"Model **{info['model']}** on **{info['device']}** · {info['n_tokens']} visual tokens "
            f"({info['grid'][0]}×{info['grid'][1]})"
            + (f" · text tower **{info['text_tower']}** (CDPruner)" if info.get("text_tower") else ""),
            elem_id="model-line",
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                inputs = build_inputs(h, room, examples)
            with gr.Column(scale=2):
                facts = build_image_facts(info)
        columns = build_columns(info)
        plots = build_method_plots()
        step = build_step_through(info)
        export = build_export()

        wire_inputs(inputs, h)
        wire_view(h, key, inputs, facts, columns, plots)
        wire_answer(h, key, inputs, columns)
        wire_step_through(step, h, key, inputs)
        wire_export(export, h)
        wire_unload(demo, h)
        build_api(h)
    return demo
