"""The ``/compare`` API endpoint: one comparison as JSON, through hidden components, one at a time on the model."""

from __future__ import annotations

import gradio as gr

from ..handlers import Handlers
from .guard import gpu, guard, image_value

__all__ = ["build_api"]


def build_api(h: Handlers) -> None:
    """The endpoint's hidden components and event; its defaults are the page's (``pipeline.info()``)."""
    info, pipeline = h.info, h.pipeline
    default_methods = ",".join(info["default_methods"])

    def compare(image, prompt, methods=default_methods, budget=info["default_budget"], truth=""):
        """Compare pruning methods on one image: per-method selection numbers and answers (JSON).

        ``methods`` is a list of names or one comma-separated string; ``truth`` optional
        comma-separated object names.
        """
        return pipeline.compare(
            image_value(image), h.prompt(prompt), h.methods(methods), h.budget(budget), truth_text=h.truth(truth)
        )

    api_in = [
        gr.Image(type="filepath", visible=False, label="image"),
        gr.Textbox(visible=False, label="prompt"),
        gr.JSON(
            value=list(info["default_methods"]),
            visible=False,
            label="methods (a list of names, or one comma-separated string)",
        ),
        gr.Number(value=info["default_budget"], visible=False, label="budget"),
        gr.Textbox(value="", visible=False, label="ground truth objects (comma-separated, optional)"),
    ]
    api_out = gr.JSON(visible=False, label="comparison")
    button = gr.Button(visible=False)
    gr.on(
        triggers=[button.click],
        fn=guard(gpu(compare)),
        inputs=api_in,
        outputs=api_out,
        api_name="compare",
        concurrency_id="model",
        concurrency_limit=1,
        preprocess=False,
    )
