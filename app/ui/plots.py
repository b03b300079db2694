"""The figures: what the loaded image is like (complexity, [CLS] attention, the τ schedule) and how the
methods compare on it (bars, budget sweep)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

__all__ = ["ImageFacts", "MethodPlots", "build_image_facts", "build_method_plots"]


@dataclass(frozen=True)
class ImageFacts:
    """The right-hand column: the image's complexity in words and as a plot, its attention heat map,
    and the τ schedule of a method that reports one."""

    complexity: gr.Markdown
    complexity_plot: gr.Plot
    heatmap: gr.Plot
    taus: gr.Plot


@dataclass(frozen=True)
class MethodPlots:
    """The methods on this image: kept erank and retained attention, and their budget sweep."""

    bars: gr.Plot
    sweep: gr.Plot


def _tau_label(info: dict[str, Any]) -> str:
    """ "Adaptive τ schedule": named after the methods whose registry entry has a ``tau_schedule``."""
    names = ", ".join(m for m in info["methods"] if info["method_info"][m]["tau_schedule"])
    label = f"{names} τ schedule" if names else "τ schedule"
    return label[0].upper() + label[1:]


def build_image_facts(info: dict[str, Any]) -> ImageFacts:
    complexity = gr.Markdown("Load an image to see its complexity.", elem_id="complexity")
    complexity_plot = gr.Plot(label="Where this image sits", elem_id="complexity-plot")
    with gr.Row():
        heatmap = gr.Plot(label="[CLS] attention", elem_id="heatmap")
        taus = gr.Plot(label=_tau_label(info), elem_id="taus")
    return ImageFacts(complexity, complexity_plot, heatmap, taus)


def build_method_plots() -> MethodPlots:
    with gr.Row():
        bars = gr.Plot(label="Methods on this image", elem_id="bars")
        sweep = gr.Plot(label="Budget sweep", elem_id="sweep")
    return MethodPlots(bars, sweep)
