"""The method-parameter boxes: one ``ParamSlot`` per numeric parameter, and what a box's value means.

A box holds what a widget gives: a number, numeric text, a bool from a checkbox, "true"/"1" typed
in. ``slot_value`` turns it into the slot's kind (a bool, an int for whole numbers in an int box,
else a float), refusing only what has no such reading; whether a value is allowed is the
registry's to say, when the method runs. No gradio, torch or ``pruning`` here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .messages import brief

__all__ = ["ParamSlot", "as_number", "slot_kind", "slot_value", "whole"]

_BOOL_WORDS = {"true": True, "false": False, "1": True, "0": False}


@dataclass(frozen=True)
class ParamSlot:
    """One parameter box: its method, parameter, default, kind ("number", "int", "bool") and ``wants``."""

    method: str
    name: str
    default: Any
    kind: str = "number"
    lo: float | None = None
    hi: float | None = None
    step: float | None = None
    wants: str = ""

    @property
    def label(self) -> str:
        return f"{self.method} · {self.name}"


def as_number(value: Any) -> int | float | None:
    """A number box's value as an int or float (text is parsed); None when it is no number (a bool is none)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def whole(number: int | float) -> int | float:
    """64.0 -> 64; any other number as it is."""
    return int(number) if isinstance(number, float) and number.is_integer() else number


def slot_kind(default: Any, ranges: Mapping[str, Any] | None) -> dict[str, Any]:
    """A slot's kind and range from its registry ``ranges`` (the kind from the default's type when absent)."""
    r = dict(ranges or {})
    kind = r.get("kind")
    if kind not in ("number", "int", "bool"):
        kind = "bool" if isinstance(default, bool) else "int" if isinstance(default, int) else "number"
    return {"kind": kind, **{k: r[k] for k in ("lo", "hi", "step", "wants") if r.get(k) is not None}}


def slot_value(slot: ParamSlot, value: Any) -> Any:
    """``value`` as ``slot``'s kind, or a ``ValueError`` naming the box when it is empty or has no such reading."""
    if value is None or value == "":
        raise ValueError(f"{slot.label} is empty: give it a value (default {slot.default})")
    if slot.kind == "bool":
        if isinstance(value, str):
            value = _BOOL_WORDS.get(value.strip().lower(), value)
        if not isinstance(value, bool) and not (isinstance(value, int) and value in (0, 1)):
            raise ValueError(f"{slot.label} must be true or false, got {brief(value)}")
        return bool(value)
    number = as_number(value)
    if number is None:
        raise ValueError(f"{slot.label} must be a number, got {brief(value)}")
    if slot.kind == "int":
        return whole(number)
    return float(number)
