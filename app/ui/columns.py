"""Side by side: the full model's column and one column per method, each with its overlay, numbers
and answer, and the summary line under them.

``Columns`` also says what its events write: ``cleared`` (every answer emptied, with a reason) and
``answers`` (the answer fields filled), as ``{component: value}`` dicts. An in-LLM method's column
(FastV, DART at layer K) has a ``pending`` line: until an answer says which tokens it kept, that
line stands in for its overlay and numbers, so its overlay and stats are answer fields too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..choices import pending_line

__all__ = ["Column", "Columns", "build_columns"]

HIGHLIGHT_COLOURS = {"correct": "#2ca02c", "hallucinated": "#d62728", "not in full answer": "#ff7f0e"}


@dataclass(frozen=True)
class Column:
    """One column: the full model's (``column`` and ``stats`` None) or a method's (shown when chosen).

    ``pending`` is what an in-LLM method's stats say before an answer (None for the others).
    """

    name: str
    overlay: gr.Image
    speed: gr.Markdown
    answer: gr.HighlightedText
    missed: gr.Markdown
    column: gr.Column | None = None
    stats: gr.Markdown | None = None
    pending: str | None = None


@dataclass(frozen=True)
class Columns:
    full: Column
    methods: tuple[Column, ...]
    summary: gr.Markdown

    @property
    def answer_outputs(self) -> list[Any]:
        """Every component an answer writes."""
        return [
            self.full.answer,
            self.full.speed,
            self.full.missed,
            self.summary,
            *(c for col in self.methods for c in (col.answer, col.speed, col.missed)),
            *(c for col in self.methods if col.pending for c in (col.overlay, col.stats)),
        ]

    @property
    def view_outputs(self) -> list[Any]:
        """Every component a view writes: each method's column (shown or not), overlay and numbers."""
        return [c for col in self.methods for c in (col.column, col.overlay, col.stats)]

    @property
    def view_and_answer_outputs(self) -> list[Any]:
        """``view_outputs`` then the answer fields, each component once (a view also clears answers)."""
        seen = {id(c) for c in self.view_outputs}
        return [*self.view_outputs, *(c for c in self.answer_outputs if id(c) not in seen)]

    def cleared(self, summary: str) -> dict[Any, Any]:
        """Every answer field emptied, with ``summary`` saying why (in-LLM columns: their ``pending`` line)."""
        out = {self.summary: summary}
        for col in (self.full, *self.methods):
            out |= {col.answer: None, col.speed: "", col.missed: ""}
            if col.pending:
                out |= {col.overlay: None, col.stats: col.pending}
        return out

    def partial(self, so_far: Mapping[str, str]) -> dict[Any, Any]:
        """Answers still being written (``"full"`` or a method name -> text so far), unmarked."""
        out = {self.summary: "*Answering…*"}
        for col in (self.full, *self.methods):
            if col.name in so_far:
                out[col.answer] = [(so_far[col.name], None)]
        return out

    def answers(self, full: Mapping[str, Any], cards: Mapping[str, Mapping[str, Any]], summary: str) -> dict[Any, Any]:
        """The full model's answer card, each chosen method's (by name; the others emptied) and the summary."""
        out = {self.full.answer: full["segments"], self.full.speed: full["speed"], self.full.missed: full["missed"]}
        out[self.summary] = summary
        for col in self.methods:
            card = cards.get(col.name)
            out[col.answer] = card["segments"] if card else None
            out[col.speed] = card["speed"] if card else ""
            out[col.missed] = card["missed"] if card else ""
            if col.pending:  # what it kept for this answer, or why it has nothing
                out[col.overlay] = card.get("overlay") if card else None
                out[col.stats] = card["stats"] if card and "stats" in card else col.pending
        return out


def _full_column() -> Column:
    with gr.Column(min_width=220, elem_id="col-full"):
        gr.Markdown("### full model")
        overlay = gr.Image(label="all tokens", interactive=False, height=260, elem_id="overlay-full")
        speed = gr.Markdown()
        answer = gr.HighlightedText(label="answer", color_map=HIGHLIGHT_COLOURS, elem_id="answer-full")
        missed = gr.Markdown()
    return Column("full", overlay, speed, answer, missed)


def _method_column(method: str, shown: bool, described: dict[str, Any]) -> Column:
    """A method's column; one that chooses from the question (its registry entry has a ``note``, which
    the method list shows) says so in its overlay's label, so the overlay stays level with the others."""
    pending = pending_line(described["pending"]) if described.get("pending") else None
    kind = " · in-LLM, per question" if described["stage"] == "in-llm" else " · per question"
    with gr.Column(min_width=220, visible=shown, elem_id=f"col-{method}") as column:
        gr.Markdown(f"### {method}")
        label = f"{method} overlay" + (kind if described.get("note") else "")
        overlay = gr.Image(label=label, interactive=False, height=260, elem_id=f"overlay-{method}")
        stats = gr.Markdown(pending or "", elem_id=f"stats-{method}")
        speed = gr.Markdown(elem_id=f"speed-{method}")
        answer = gr.HighlightedText(label="answer", color_map=HIGHLIGHT_COLOURS, elem_id=f"answer-{method}")
        missed = gr.Markdown()
    return Column(method, overlay, speed, answer, missed, column=column, stats=stats, pending=pending)


def build_columns(info: dict[str, Any]) -> Columns:
    """A column for the full model and one per registered method (the default methods' shown)."""
    gr.Markdown("## Side by side")
    with gr.Row(equal_height=False):
        full = _full_column()
        described = info["method_info"]
        methods = tuple(_method_column(m, m in info["default_methods"], described[m]) for m in info["methods"])
    summary = gr.Markdown(elem_id="answer-summary")
    return Columns(full, methods, summary)
