"""Export: the comparison the page shows as JSON, its overlays as one PNG (redrawn on the server)."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ..handlers import Handlers
from .guard import guard, session_of

__all__ = ["Export", "build_export", "wire_export"]


@dataclass(frozen=True)
class Export:
    json: gr.Button
    png: gr.Button
    file: gr.File


def build_export() -> Export:
    with gr.Accordion("Export", open=False):
        with gr.Row():
            as_json = gr.Button("Comparison as JSON", elem_id="export-json")
            as_png = gr.Button("Overlays as PNG", elem_id="export-png")
        file = gr.File(label="Download", elem_id="export-file")
    return Export(as_json, as_png, file)


def wire_export(export: Export, h: Handlers) -> None:
    def on_export_json(request: gr.Request):
        return h.export_json(None, session_of(request))

    def on_export_png(request: gr.Request):
        return h.export_overlays(session_of(request))

    for button, fn in ((export.json, on_export_json), (export.png, on_export_png)):
        gr.on(triggers=[button.click], fn=guard(fn), inputs=None, outputs=[export.file], api_visibility="private")
