"""The step-through: replay a greedy walk pick by pick, for the methods the registry marks ``replayable``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..handlers import Handlers
from .guard import guard, session_of
from .inputs import Inputs

__all__ = ["StepThrough", "build_step_through", "wire_step_through"]


@dataclass(frozen=True)
class StepThrough:
    method: gr.Radio
    pick: gr.Slider
    image: gr.Image
    text: gr.Markdown


def build_step_through(info: dict[str, Any]) -> StepThrough:
    replayable = [m for m in info["methods"] if info["method_info"][m]["replayable"]]
    with gr.Accordion("Step through a greedy walk", open=False):
        with gr.Row():
            method = gr.Radio(replayable, value=info["default_replay"], label="Method")
            pick = gr.Slider(1, info["n_tokens"], value=1, step=1, label="Pick")
        with gr.Row():
            image = gr.Image(label="picks so far (crossed: suppressed at this pick)", height=320)
            text = gr.Markdown()
    return StepThrough(method, pick, image, text)


def wire_step_through(step: StepThrough, h: Handlers, key: gr.State, inputs: Inputs) -> None:
    def on_step(request: gr.Request, k, m, k_budget, s, *pvals):
        if not k:
            return {step.image: None, step.text: "Load an image first."}
        image, text = h.step(k, m, k_budget, s, list(pvals), session_of(request))
        return {step.image: image, step.text: text}

    gr.on(
        triggers=[step.pick.change, step.method.change],
        fn=guard(on_step),
        inputs=[key, step.method, inputs.budget, step.pick, *inputs.params],
        outputs=[step.image, step.text],
        api_visibility="private",
        trigger_mode="always_last",
    )
