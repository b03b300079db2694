"""The left column: image, prompt and ground truth, the budget, the methods and their parameters, the buttons.

Its cheap events (which parameter boxes show, the budget's retention line and presets, the prompt
presets) run here, without the queue; the events that load, draw and answer are ``events``'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..handlers import MAX_PROMPT_CHARS, PROMPT_PRESETS, Handlers, ParamSlot

__all__ = ["Inputs", "build_inputs", "wire_inputs"]


@dataclass(frozen=True)
class Inputs:
    """The left column's components; ``params`` holds one box per ``Handlers.slots`` entry, in order."""

    image: gr.Image
    prompt: gr.Textbox
    prompt_preset: gr.Dropdown
    truth: gr.Textbox
    budget: gr.Slider
    budget_preset: gr.Radio
    retention: gr.Markdown
    methods: gr.CheckboxGroup
    colour_by: gr.Radio
    params: tuple[gr.Number | gr.Checkbox, ...]
    run: gr.Button
    stop: gr.Button

    @property
    def view_settings(self) -> list[Any]:
        """What the overlays depend on besides the image: methods, budget, colouring, parameters."""
        return [self.methods, self.budget, self.colour_by, *self.params]


def _param_box(slot: ParamSlot, shown: bool) -> gr.Number | gr.Checkbox:
    """A slot's widget: a checkbox for true/false, else a number box stepping and worded as the registry says."""
    if slot.kind == "bool":
        return gr.Checkbox(value=slot.default, label=slot.label, visible=shown)
    return gr.Number(
        value=slot.default, label=slot.label, visible=shown, step=slot.step or 1, info=slot.wants.capitalize() or None
    )


def _method_label(method: str, info: dict[str, Any]) -> str:
    """A method's checkbox label: its name, marked when it prunes inside the LLM or reads the question."""
    described = info["method_info"][method]
    if not described.get("note"):
        return method
    return f"{method} (in-LLM)" if described["stage"] == "in-llm" else f"{method} (per question)"


def _in_llm_line(info: dict[str, Any]) -> str | None:
    """The line under the method list naming the methods that choose from the question and how, or None."""
    kinds: dict[str, tuple[list[str], str]] = {}
    for m in info["methods"]:
        d = info["method_info"][m]
        if d.get("note"):
            kind = "In-LLM" if d["stage"] == "in-llm" else "Per question"
            kinds.setdefault(kind, ([], d["note"]))[0].append(m)
    if not kinds:
        return None
    return " ".join(f"{kind} ({', '.join(names)}): each {note}." for kind, (names, note) in kinds.items())


def build_inputs(h: Handlers, room: int | None, examples: list[list[Any]]) -> Inputs:
    """The left column, inside the caller's column; ``room`` is the prompt's limit in tokens, if known."""
    info = h.info
    image = gr.Image(
        label="Image",
        type="filepath",
        sources=["upload", "clipboard", "webcam"],
        height=300,
        format="png",
        elem_id="image",
    )
    prompt = gr.Textbox(
        label="Prompt",
        value=PROMPT_PRESETS[0],
        max_lines=4,
        max_length=MAX_PROMPT_CHARS,
        info=f"At most {room} tokens on this model (about {room * 3} characters)" if room else None,
        elem_id="prompt",
    )
    prompt_preset = gr.Dropdown(list(PROMPT_PRESETS), label="Prompt presets", value=None)
    truth = gr.Textbox(
        label="Ground truth objects (optional, comma-separated)",
        placeholder="e.g. dog, frisbee, person — built-in scenes fill this in themselves",
        max_length=1000,
        elem_id="truth",
    )
    default_budget = info["default_budget"]
    budget = gr.Slider(
        1, info["n_tokens"], value=default_budget, step=1, label="Budget K (kept tokens)", elem_id="budget"
    )
    budget_preset = gr.Radio([str(p) for p in info["presets"]], value=str(default_budget), label="Paper presets")
    retention = gr.Markdown(f"Retention: {default_budget / info['n_tokens']:.1%}")
    methods = gr.CheckboxGroup(
        [(_method_label(m, info), m) for m in info["methods"]],
        value=info["default_methods"],
        label="Methods",
        info=_in_llm_line(info),
        elem_id="methods",
    )
    colour_by = gr.Radio(["none", "order", "attention"], value="none", label="Colour kept patches by")
    with gr.Accordion("Method parameters", open=False):
        params = tuple(_param_box(slot, slot.method in info["default_methods"]) for slot in h.slots)
    with gr.Row():
        run = gr.Button("Compare answers", variant="primary", elem_id="run")
        stop = gr.Button("Stop", variant="stop", elem_id="stop")
    if examples:
        gr.Examples(examples=examples, inputs=[image, prompt], label="Examples (simple → complex)")
    return Inputs(
        image, prompt, prompt_preset, truth, budget, budget_preset, retention, methods, colour_by, params, run, stop
    )


def wire_inputs(inputs: Inputs, h: Handlers) -> None:
    """The column's own cheap events."""
    n_tokens = h.info["n_tokens"]

    def on_methods(chosen_methods):
        """Show only the parameters of the chosen methods (the others keep their values)."""
        chosen = chosen_methods or []
        return {box: gr.update(visible=slot.method in chosen) for slot, box in zip(h.slots, inputs.params)}

    def on_budget(b):
        """Retention line, and the preset radio follows the slider: it shows the budget selected when
        the budget is one of its choices (the loaded image's presets, which ``events`` sets), else none."""
        try:
            k = int(float(b))
        except (TypeError, ValueError):
            return gr.skip()
        return {inputs.retention: f"Retention: {k / n_tokens:.1%}", inputs.budget_preset: str(k)}

    if inputs.params:
        gr.on(
            triggers=[inputs.methods.change],
            fn=on_methods,
            inputs=[inputs.methods],
            outputs=list(inputs.params),
            api_visibility="private",
            queue=False,
            trigger_mode="always_last",
        )
    gr.on(
        triggers=[inputs.budget.change],
        fn=on_budget,
        inputs=[inputs.budget],
        outputs=[inputs.retention, inputs.budget_preset],
        api_visibility="private",
        queue=False,
        trigger_mode="always_last",
    )
    gr.on(
        triggers=[inputs.budget_preset.input],
        fn=lambda p: int(p),
        inputs=[inputs.budget_preset],
        outputs=[inputs.budget],
        api_visibility="private",
        queue=False,
        trigger_mode="once",
    )
    gr.on(
        triggers=[inputs.prompt_preset.input],
        fn=lambda p: p or gr.skip(),
        inputs=[inputs.prompt_preset],
        outputs=[inputs.prompt],
        api_visibility="private",
        queue=False,
        trigger_mode="once",
    )
