"""Pure data -> picture functions: patch overlays and plotly figures. No model, no torch state.

Every function takes plain values (PIL images, tensors or lists, dicts of numbers) and returns an
artefact; colours are fixed per method and per group so the same input always draws the same way.
"""

from .overlay import (
    GridSheet,
    PatchGrid,
    SheetPanel,
    grid_sheet,
    overlay_grids,
    overlay_selection,
    overlay_sheet,
    patch_boxes,
)
from .palette import group_colour, method_colour
from .plots import (
    attention_heatmap,
    budget_sweep_figure,
    complexity_figure,
    grid_attention_heatmap,
    method_bars,
    tau_schedule_figure,
)

__all__ = [
    "GridSheet",
    "PatchGrid",
    "SheetPanel",
    "attention_heatmap",
    "budget_sweep_figure",
    "complexity_figure",
    "grid_attention_heatmap",
    "grid_sheet",
    "group_colour",
    "method_bars",
    "method_colour",
    "overlay_grids",
    "overlay_selection",
    "overlay_sheet",
    "patch_boxes",
    "tau_schedule_figure",
]
