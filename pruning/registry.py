"""The method registry: every pruning method is registered by name with its parameters.

``list_methods()`` is what the app's method list and the test parametrisation read; ``select()``
is the one entry point that validates the request before any method runs. Validation lives here,
once, so each method function holds only its rule.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .types import PruneInputs, Selection

__all__ = [
    "MethodSpec",
    "get_method",
    "list_methods",
    "method_params",
    "register",
    "select",
    "select_batch",
]

Check = Callable[[str, Any], None]


def positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def unit_interval(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def finite_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def erank_value(name: str, value: Any) -> None:
    """An erank bound: a finite number of at least 1 (erank is never below 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 1:
        raise ValueError(f"{name} must be a finite number of at least 1 (an effective rank), got {value!r}")


def optional_positive_int(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be None or a positive int, got {value!r}")


def boolean(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its name, the validated callable, defaults and required inputs."""

    name: str
    fn: Callable[..., Selection]
    defaults: dict[str, Any]
    needs: tuple[str, ...]
    summary: str


_REGISTRY: dict[str, MethodSpec] = {}


def _check_budget(budget: Any) -> int:
    if isinstance(budget, bool) or not isinstance(budget, int):
        if isinstance(budget, torch.Tensor) and budget.numel() == 1 and not budget.is_floating_point():
            budget = int(budget)
        else:
            raise ValueError(f"budget must be an int, got {budget!r} ({type(budget).__name__})")
    if budget < 1:
        raise ValueError(f"budget must be at least 1, got {budget}")
    return budget


def keep_all(name: str, inputs: PruneInputs, budget: int) -> Selection:
    """The selection that keeps every token (a budget at or above N)."""
    n = inputs.n_tokens
    every = torch.arange(n, device=inputs.device)
    info = {"n_tokens": n, "requested_budget": budget, "budget_clipped": budget > n, "kept_all": True}
    return Selection(method=name, budget=n, keep=every, order=every.clone(), info=info)


def register(name: str, *, needs: Sequence[str] = (), checks: dict[str, Check] | None = None):
    """Register ``fn(inputs, budget, *, **params) -> Selection`` under ``name``.

    The registered callable validates the inputs it ``needs`` (e.g. ``keys``), the budget, and every
    keyword parameter with ``checks`` before calling ``fn``. A budget at or above N returns the
    keep-everything selection without running the method (``info["budget_clipped"]`` says if the
    request exceeded N).
    """
    checks = dict(checks or {})

    def decorator(fn: Callable[..., Selection]) -> Callable[..., Selection]:
        sig = inspect.signature(fn)
        defaults = {p.name: p.default for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        unknown_checks = set(checks) - set(defaults)
        if unknown_checks:
            raise TypeError(f"checks for unknown parameters {sorted(unknown_checks)} of method {name!r}")

        @functools.wraps(fn)
        def validated(inputs: PruneInputs, budget: int, **params: Any) -> Selection:
            if not isinstance(inputs, PruneInputs):
                raise ValueError(f"inputs must be a PruneInputs, got {type(inputs).__name__}")
            budget = _check_budget(budget)
            unknown = set(params) - set(defaults)
            if unknown:
                raise ValueError(
                    f"method {name!r} has no parameter(s) {sorted(unknown)}; it takes {sorted(defaults) or 'none'}"
                )
            for key, check in checks.items():
                check(key, params.get(key, defaults[key]))
            for field_name in needs:
                if getattr(inputs, field_name) is None:
                    raise ValueError(f"method {name!r} needs inputs.{field_name}, which is None")
            if budget >= inputs.n_tokens:
                return keep_all(name, inputs, budget)
            return fn(inputs, budget, **params)

        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is already registered")
        _REGISTRY[name] = MethodSpec(name=name, fn=validated, defaults=defaults, needs=tuple(needs), summary=summary)
        return validated

    return decorator


def list_methods() -> list[str]:
    """Names of every registered method, in registration order."""
    return list(_REGISTRY)


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``; unknown names are a ``ValueError`` listing the known ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown pruning method {name!r}; known methods: {', '.join(_REGISTRY)}") from None


def method_params(name: str) -> dict[str, Any]:
    """The keyword parameters of method ``name`` with their defaults (for UIs and configs)."""
    return dict(get_method(name).defaults)


def select(method: str, inputs: PruneInputs, budget: int, **params: Any) -> Selection:
    """Run the registered method ``method`` on one image's ``inputs`` with a budget of K tokens."""
    return get_method(method).fn(inputs, budget, **params)


def select_batch(method: str, inputs: Sequence[PruneInputs], budget: int, **params: Any) -> list[Selection]:
    """Select for B images at once.

    Args:
        inputs: B single-image ``PruneInputs``; ``PruneInputs.unbatch(...)`` splits (B, N, ·)
            tensors into them without copying.
    Returns:
        B selections, each identical to ``select(method, inputs[b], budget, **params)``. The methods
        are greedy walks over one image, so the batch runs image by image; the method and its
        parameters are validated once, before the first image.
    """
    spec = get_method(method)
    if isinstance(inputs, PruneInputs) or not isinstance(inputs, Sequence):
        raise ValueError("select_batch needs a sequence of PruneInputs; use PruneInputs.unbatch for (B, N, D) tensors")
    return [spec.fn(item, budget, **params) for item in inputs]
