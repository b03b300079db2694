"""The method registry: every pruning method is registered by name with its parameters and capabilities.

``list_methods()`` is what the app's method list and the test parametrisation read; ``select()``
is the one entry point that validates the request before any method runs. Validation lives here,
once, so each method function holds only its rule: the inputs a method ``needs``, the budget, and
every keyword parameter (by its ``checks`` entry, else by the type of its default).

A method's entry (``get_method(name)``, a ``MethodSpec``) also says what a user interface may do
with it, so the app names no method itself: the range of each parameter (``ranges``, from its
check), whether its pick order is a greedy walk that can be replayed pick by pick
(``replayable``), whether it merges tokens (``merges``) and which parameter caps the τ schedule it
reports (``tau_schedule``).

Methods come in two stages. ``"pre-llm"`` methods select from one image's ``PruneInputs`` before
the language model runs; ``list_methods()`` lists them, and everything that hands methods a
``PruneInputs`` (property tests, benchmarks) reads that list. ``"in-llm"``
methods (FastV, DART at layer K) select inside the language model, at decoder layer ``layer`` (a
parameter each of them has), from that layer's state (``LayerInputs``), so what they keep depends
on the prompt; ``list_methods("in-llm")`` lists them and ``list_methods("all")`` lists both (the
app and the analysis CLI offer both, running in-LLM ones through ``app.runtime``'s ``Runner.plan``).
"""

from __future__ import annotations

import functools
import inspect
import math
import reprlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .types import LayerInputs, PruneInputs, Selection

__all__ = [
    "STAGES",
    "Check",
    "MethodSpec",
    "ParamRange",
    "get_method",
    "list_methods",
    "method_params",
    "register",
    "select",
    "select_batch",
]

STAGES = ("pre-llm", "in-llm")  # where a method selects: from PruneInputs, or inside the LLM from LayerInputs
LAYER_PARAM = "layer"  # the parameter of every in-LLM method: the decoder layer from which it prunes


def _quote(value: Any) -> str:
    """``repr(value)``, cut short: how refusals quote what a caller passed."""
    short = reprlib.Repr()
    short.maxstring = short.maxother = short.maxlong = 40
    return short.repr(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Check:
    """A parameter check: which values pass, those values in words, and the range a widget may offer.

    ``check(name, value)`` raises ``ValueError("{name} must be {wants}, got {value}")`` for a value
    that does not pass. ``kind`` is the widget ("number", "int" or "bool"); ``lo``/``hi`` bound the
    values it offers (None: open); ``step`` is its increment (None: a tenth of the default's order
    of magnitude). A plain function ``check(name, value)`` may stand in for one (no range then).
    """

    accepts: Callable[[Any], bool]
    wants: str
    kind: str = "number"
    lo: float | None = None
    hi: float | None = None
    step: float | None = None

    def __call__(self, name: str, value: Any) -> None:
        if not self.accepts(value):
            raise ValueError(f"{name} must be {self.wants}, got {_quote(value)}")


positive = Check(lambda v: _is_number(v) and math.isfinite(v) and v > 0, "a positive finite number", lo=0.0)
unit_interval = Check(lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]", lo=0.0, hi=1.0, step=0.05)
finite_number = Check(lambda v: _is_number(v) and math.isfinite(v), "a finite number")
# An erank bound: erank is never below 1.
erank_value = Check(
    lambda v: _is_number(v) and math.isfinite(v) and v >= 1,
    "a finite number of at least 1 (an effective rank)",
    lo=1.0,
    step=1.0,
)
optional_positive_int = Check(lambda v: v is None or (_is_int(v) and v >= 1), "None or a positive int", "int", lo=1)
positive_int = Check(lambda v: _is_int(v) and v >= 1, "a positive int", "int", lo=1)
non_negative_int = Check(lambda v: _is_int(v) and v >= 0, "a non-negative int", "int", lo=0)
# A share strictly below 1 (CDPruner's θ: α = θ / (2(1 − θ)) is unbounded at 1), or None for none.
optional_below_one = Check(
    lambda v: v is None or (_is_number(v) and 0 <= v < 1), "None or a number in [0, 1)", lo=0.0, hi=0.95, step=0.05
)
integer = Check(_is_int, "an int", "int")
boolean = Check(lambda v: isinstance(v, bool), "True or False", "bool")

_BY_DEFAULT_TYPE = {bool: boolean, int: integer, float: finite_number}  # checks of parameters without one


@dataclass(frozen=True)
class ParamRange:
    """What one keyword parameter takes, for a widget.

    Attributes:
        kind: "number", "int", "bool", or "other" (no widget, e.g. a ``torch.Generator``).
        wants: the values its check accepts, in words ("a number in [0, 1]"); "" when unchecked.
        lo, hi: bounds of the values a number widget offers (None: open).
        step: a number widget's increment.
        choices: the values a "bool" widget offers.
    """

    kind: str
    wants: str = ""
    lo: float | None = None
    hi: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] | None = None


def _param_range(default: Any, check: Callable[[str, Any], None] | None) -> ParamRange:
    if not isinstance(check, Check):
        return ParamRange("other")
    if check.kind == "bool":
        return ParamRange("bool", check.wants, choices=(False, True))
    step = check.step
    if step is None:
        if check.kind == "int":
            step = 1
        elif _is_number(default) and default != 0 and math.isfinite(default):
            step = 10.0 ** (math.floor(math.log10(abs(default))) - 1)
    return ParamRange(check.kind, check.wants, lo=check.lo, hi=check.hi, step=step)


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: the validated callable, its parameters and what an interface may do with it.

    Attributes:
        name: the registry name.
        fn: ``fn(inputs, budget, **params) -> Selection``, validating before the rule runs.
        defaults: every keyword parameter with its default.
        needs: the optional ``PruneInputs`` fields it reads (e.g. ``keys``).
        summary: the first line of its docstring.
        ranges: per keyword parameter, what a widget may offer (``ParamRange``).
        replayable: ``order`` is a greedy walk, one pick after another: ``order[:s]`` is the walk
            after s picks, so a step-through can replay it.
        merges: it returns merged ``tokens`` and ``groups``, not only kept patches.
        tau_schedule: the parameter that caps the threshold τ of each pick, which the method reports
            in ``info["taus"]`` (and the tokens each pick suppressed in ``info["removed_at"]``);
            None when it has no such schedule.
        stage: ``"pre-llm"`` (``fn`` takes a ``PruneInputs``) or ``"in-llm"`` (``fn`` takes a
            ``LayerInputs``, the language model's state at decoder layer ``defaults["layer"]``;
            ``needs`` then names its fields).
        checks: per keyword parameter, the check the registry applies (parameters without one are
            the method's to check).
    """

    name: str
    fn: Callable[..., Selection]
    defaults: dict[str, Any]
    needs: tuple[str, ...]
    summary: str
    ranges: dict[str, ParamRange]
    replayable: bool = False
    merges: bool = False
    tau_schedule: str | None = None
    stage: str = "pre-llm"
    checks: dict[str, Callable[[str, Any], None]] = field(default_factory=dict)

    def check_request(self, budget: Any, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The budget and every parameter (defaults filled in), validated as ``select`` does before the rule.

        For callers that run the method later, e.g. an in-LLM method inside a generation: a bad
        budget, an unknown parameter or a value its check refuses is a ``ValueError`` now.
        """
        budget = _check_budget(budget)
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise ValueError(
                f"method {self.name!r} has no parameter(s) {_quote(sorted(unknown))}; "
                f"it takes {sorted(self.defaults) or 'none'}"
            )
        for key, check in self.checks.items():
            check(key, params.get(key, self.defaults[key]))
        return budget, {**self.defaults, **params}


_REGISTRY: dict[str, MethodSpec] = {}


def _check_budget(budget: Any) -> int:
    if isinstance(budget, bool) or not isinstance(budget, int):
        if isinstance(budget, torch.Tensor) and budget.numel() == 1 and not budget.is_floating_point():
            budget = int(budget)
        else:
            raise ValueError(f"budget must be an int, got {_quote(budget)} ({type(budget).__name__})")
    if budget < 1:
        raise ValueError(f"budget must be at least 1, got {budget}")
    return budget


def keep_all(name: str, inputs: PruneInputs | LayerInputs, budget: int) -> Selection:
    """The selection that keeps every token (a budget at or above N)."""
    n = inputs.n_tokens
    every = torch.arange(n, device=inputs.device)
    info = {"n_tokens": n, "requested_budget": budget, "budget_clipped": budget > n, "kept_all": True}
    return Selection(method=name, budget=n, keep=every, order=every.clone(), info=info)


def register(
    name: str,
    *,
    needs: Sequence[str] = (),
    checks: dict[str, Callable[[str, Any], None]] | None = None,
    replayable: bool = False,
    merges: bool = False,
    tau_schedule: str | None = None,
    stage: str = "pre-llm",
):
    """Register ``fn(inputs, budget, *, **params) -> Selection`` under ``name``.

    The registered callable validates the inputs it ``needs`` (e.g. ``keys``), the budget, and every
    keyword parameter before calling ``fn``: with its ``checks`` entry, else by the type of its
    default (bool, int or float; a parameter defaulting to None without a check is the method's to
    check). A budget at or above N returns the keep-everything selection without running the method
    (``info["budget_clipped"]`` says if the request exceeded N). ``replayable``, ``merges`` and
    ``tau_schedule`` are the capabilities ``MethodSpec`` describes. Every default must pass its
    check, so a widget's starting value is always valid. ``stage="in-llm"`` registers a method that
    takes a ``LayerInputs`` (and refuses a ``PruneInputs`` in words); it must have a ``layer``
    parameter, the decoder layer from which it prunes.
    """
    given = dict(checks or {})
    if stage not in STAGES:
        raise TypeError(f"stage of method {name!r} must be one of {STAGES}, got {stage!r}")

    def decorator(fn: Callable[..., Selection]) -> Callable[..., Selection]:
        sig = inspect.signature(fn)
        defaults = {p.name: p.default for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        unknown_checks = set(given) - set(defaults)
        if unknown_checks:
            raise TypeError(f"checks for unknown parameters {sorted(unknown_checks)} of method {name!r}")
        if stage == "in-llm" and LAYER_PARAM not in defaults:
            raise TypeError(
                f"in-LLM method {name!r} needs a {LAYER_PARAM!r} parameter (the decoder layer it prunes at)"
            )
        if tau_schedule is not None and tau_schedule not in defaults:
            raise TypeError(f"tau_schedule {tau_schedule!r} of method {name!r} is not one of its parameters")
        checks = {
            key: given.get(key, _BY_DEFAULT_TYPE.get(type(default)))
            for key, default in defaults.items()
            if key in given or type(default) in _BY_DEFAULT_TYPE
        }
        for key, check in checks.items():
            try:
                check(key, defaults[key])
            except ValueError as err:
                raise TypeError(f"method {name!r}: a default fails its own check ({err})") from None

        @functools.wraps(fn)
        def validated(inputs: PruneInputs | LayerInputs, budget: int, **params: Any) -> Selection:
            if stage == "in-llm" and not isinstance(inputs, LayerInputs):
                layer = params.get(LAYER_PARAM, defaults[LAYER_PARAM])
                raise ValueError(
                    f"method {name!r} selects inside the language model, from decoder layer {_quote(layer)} on, "
                    f"with that layer's state: it takes a pruning.LayerInputs, not a {type(inputs).__name__}; "
                    "app.runtime runs it on a model (Runner.plan, then Runner.generate)"
                )
            if stage == "pre-llm" and not isinstance(inputs, PruneInputs):
                raise ValueError(f"inputs must be a PruneInputs, got {type(inputs).__name__}")
            budget, _ = spec.check_request(budget, params)
            for field_name in needs:
                if getattr(inputs, field_name) is None:
                    raise ValueError(f"method {name!r} needs inputs.{field_name}, which is None")
            if budget >= inputs.n_tokens:
                return keep_all(name, inputs, budget)
            return fn(inputs, budget, **params)

        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is already registered")
        spec = MethodSpec(
            name=name,
            fn=validated,
            defaults=defaults,
            needs=tuple(needs),
            summary=summary,
            ranges={key: _param_range(default, checks.get(key)) for key, default in defaults.items()},
            replayable=replayable,
            merges=merges,
            tau_schedule=tau_schedule,
            stage=stage,
            checks=checks,
        )
        _REGISTRY[name] = spec
        return validated

    return decorator


def list_methods(stage: str = "pre-llm") -> list[str]:
    """Names of the registered methods of ``stage``, in registration order.

    ``"pre-llm"`` (the default): the methods that select from a ``PruneInputs`` before the language
    model, what every caller holding a ``PruneInputs`` may run. ``"in-llm"``: the methods that
    select inside the language model (``LayerInputs``; app.runtime runs them during generation).
    ``"all"``: both, in registration order.
    """
    if stage not in (*STAGES, "all"):
        raise ValueError(f"stage must be one of {', '.join(map(repr, (*STAGES, 'all')))}, got {_quote(stage)}")
    return [name for name, spec in _REGISTRY.items() if stage in ("all", spec.stage)]


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``; unknown names are a ``ValueError`` listing the known ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown pruning method {_quote(name)}; known methods: {', '.join(_REGISTRY)}") from None


def method_params(name: str) -> dict[str, Any]:
    """The keyword parameters of method ``name`` with their defaults (for UIs and configs)."""
    return dict(get_method(name).defaults)


def select(method: str, inputs: PruneInputs | LayerInputs, budget: int, **params: Any) -> Selection:
    """Run the registered method ``method`` on one image's ``inputs`` with a budget of K tokens.

    ``inputs`` is a ``PruneInputs`` for the pre-LLM methods and a ``LayerInputs`` (the language
    model's state at the pruning layer) for the in-LLM ones; the other kind is refused in words.
    """
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
