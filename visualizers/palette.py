"""Deterministic colours: one per method name, one per merge group."""

from __future__ import annotations

import colorsys
import zlib

# Fixed colours for the methods of methods.md (colour-blind-safe Okabe-Ito order).
METHOD_COLOURS = {
    "full": "#000000",
    "attention": "#0072B2",
    "diversity": "#D55E00",
    "adaptive": "#009E73",
    "vispruner": "#CC79A7",
    "visionzip": "#E69F00",
    "hybrid": "#56B4E9",
    "hybrid-erank": "#8C564B",
    "random": "#7F7F7F",
    "uniform": "#BCBD22",
}


def method_colour(name: str) -> str:
    """Hex colour of a method; unknown names get a stable colour from a hash of the name."""
    if name in METHOD_COLOURS:
        return METHOD_COLOURS[name]
    hue = (zlib.crc32(name.encode()) % 360) / 360
    r, g, b = colorsys.hls_to_rgb(hue, 0.45, 0.65)
    return f"#{int(r * 255):02X}{int(g * 255):02X}{int(b * 255):02X}"


def group_colour(slot: int) -> tuple[int, int, int]:
    """RGB colour of merge group ``slot``: golden-angle hues, so neighbouring slots differ."""
    hue = (slot * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)
