"""What a comparison may be asked: the gallery's examples, the default methods and budget, budget
presets and sweeps, the methods as the registry describes them, and the checks of a request's
methods, budget, prompt and ground truth.

The app names no pruning method outside ``DEFAULT_METHODS`` and ``DEFAULT_REPLAY``: what a method
takes and what the page may do with it (replay its walk, draw its τ schedule) comes from its
registry entry (``describe_method``). The methods that choose from the question are offered beside
the others: the in-LLM ones (FastV, DART at layer K; the page says ``IN_LLM_NOTE`` of them and,
before an answer, ``IN_LLM_PENDING``) and CDPruner, which selects before the LLM by the question's
CLIP text embedding (``QUESTION_NOTE``, ``QUESTION_PENDING``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

import pruning
from scoring import Vocabulary, parse_truth

from .messages import brief
from .runtime.checks import reads_question

__all__ = [
    "DEFAULT_METHODS",
    "DEFAULT_REPLAY",
    "IN_LLM_NOTE",
    "IN_LLM_PENDING",
    "QUESTION_NOTE",
    "QUESTION_PENDING",
    "Example",
    "budget_presets",
    "check_budget",
    "check_methods",
    "default_budget",
    "describe_method",
    "image_presets",
    "pending_line",
    "sweep_budgets",
    "typed_truth",
]

DEFAULT_METHODS = ("attention", "diversity", "adaptive")  # what the page and the API compare unless told
DEFAULT_REPLAY = "adaptive"  # the greedy walk the page's step-through starts on
PAPER_BUDGETS = (192, 128, 64, 32)  # methods.md: the paper's budgets for 576 tokens
SWEEP_MIN_BUDGET = 8  # a budget sweep starts here
IN_LLM_NOTE = "prunes inside the LLM at layer K; its kept tokens depend on the question"
IN_LLM_PENDING = "chosen inside the LLM from the question: ask to see which tokens it kept"
QUESTION_NOTE = "selects before the LLM by the question's CLIP text embedding; its kept tokens depend on the question"
QUESTION_PENDING = "chosen from the question before the LLM: ask to see which tokens it kept"


@dataclass(frozen=True)
class Example:
    """A gallery image with what is known about it.

    Attributes:
        name: short label for the gallery.
        image: the image.
        truth: ground-truth object categories (exact for built-in scenes), or None if unknown.
        note: one line shown under the gallery (complexity, licence).
        prompt: a suggested prompt.
        objects: the exact ``(category, colour)`` of every object (built-in scenes), so that a wrong
            colour or count in an answer can be marked too.
    """

    name: str
    image: Image.Image
    truth: tuple[str, ...] | None = None
    note: str = ""
    prompt: str | None = None
    objects: tuple[tuple[str, str], ...] | None = None


def budget_presets(n_tokens: int, budgets: Sequence[int] = PAPER_BUDGETS, of_tokens: int = 576) -> list[int]:
    """A paper's ``budgets``, measured on ``of_tokens`` tokens, scaled to ``n_tokens`` tokens
    (default: LLaVA-1.5's 192/128/64/32 of 576), largest first, each at least 1.

    The app shows the presets the runner reports (each family's own: ``Adapter.budget_presets``,
    per image where they follow it: ``image_presets``); this is their rule, for callers without a
    runner."""
    return sorted({max(1, round(b * n_tokens / of_tokens)) for b in budgets}, reverse=True)


def image_presets(metadata: Mapping[str, Any], n_tokens: int) -> list[int]:
    """The budget presets for an image of ``n_tokens`` tokens on the model ``metadata`` describes.

    A family whose presets are shares of each image's N (Qwen2.5-VL: its N follows the image)
    reports ``metadata["preset_shares"]`` = (the paper's budgets, the N they were measured on), and
    gets those shares of ``n_tokens``; every other family its fixed ``metadata["budget_presets"]``.
    """
    shares = metadata.get("preset_shares")
    if shares is None:
        return list(metadata["budget_presets"])
    budgets, of_tokens = shares
    return budget_presets(n_tokens, budgets, of_tokens)


def default_budget(n_tokens: int, presets: Sequence[int] | None = None) -> int:
    """The budget the page and the API start from: the third preset (the paper's 64 of 576), or the
    smallest of fewer. ``presets`` are the model's own (``Runner.metadata["budget_presets"]``, or
    an image's ``image_presets``); without them, ``budget_presets(n_tokens)``."""
    presets = list(presets) if presets else budget_presets(n_tokens)
    return presets[2] if len(presets) > 2 else presets[-1]


def sweep_budgets(n_tokens: int, points: int) -> list[int]:
    """About ``points`` budgets spaced geometrically from 8 tokens to all of them (every one below 8)."""
    if n_tokens <= SWEEP_MIN_BUDGET:
        return list(range(1, n_tokens + 1))
    ratio = n_tokens / SWEEP_MIN_BUDGET
    return sorted({min(n_tokens, max(1, round(SWEEP_MIN_BUDGET * ratio ** (i / (points - 1))))) for i in range(points)})


def pending_line(pending: str, layer: int | None = None) -> str:
    """What a per-question method's column says before an answer: ``pending`` as an italic sentence,
    with the decoder layer it prunes at when that is one (in-LLM methods)."""
    where = f" (layer {layer})" if layer else ""
    return f"*{pending[0].upper()}{pending[1:]}*{where}."


def describe_method(method: str) -> dict[str, Any]:
    """A registry entry as plain values: its summary, its ``stage``, the inputs it needs, its
    capabilities (``replayable``, ``merges``, ``tau_schedule``) and each parameter's ``ranges``.

    A method that chooses from the question also gets ``note`` (``IN_LLM_NOTE``, or
    ``QUESTION_NOTE`` for one that reads the question's text embedding before the LLM) and
    ``pending`` (what its column says before an answer); both are None for the others. It is
    never ``replayable`` here: the page's step-through replays selections made before any question.
    """
    spec = pruning.get_method(method)
    in_llm = spec.stage == "in-llm"
    reads = reads_question(method)
    return {
        "summary": spec.summary,
        "stage": spec.stage,
        "note": IN_LLM_NOTE if in_llm else QUESTION_NOTE if reads else None,
        "pending": IN_LLM_PENDING if in_llm else QUESTION_PENDING if reads else None,
        "needs": list(spec.needs),
        "replayable": spec.replayable and not (in_llm or reads),
        "merges": spec.merges,
        "tau_schedule": spec.tau_schedule,
        "ranges": {name: dataclasses.asdict(r) for name, r in spec.ranges.items()},
    }


def check_methods(methods: Any) -> list[str]:
    """``methods`` as a list, or a ``ValueError``: a comparison needs a non-empty list of registered
    names (pre-LLM or in-LLM), each once (the registry words an unknown name, listing the known ones)."""
    if isinstance(methods, str) or not isinstance(methods, Sequence):
        raise ValueError(f"methods must be a list of method names, got {brief(methods)}")
    if not methods:
        raise ValueError("pick at least one pruning method")
    for m in methods:
        pruning.get_method(m)
    if len(set(methods)) != len(methods):
        raise ValueError(f"each method may be chosen once, got {brief(list(methods), 80)}")
    return list(methods)


def check_budget(budget: Any, n_tokens: int) -> int:
    """``budget``, or a ``ValueError`` unless it is a whole number from 1 to the model's N.

    The registry keeps every token for a budget above N; a comparison refuses it instead, saying
    the range, since asking for more tokens than the model has is a mistake.
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= n_tokens:
        raise ValueError(
            f"budget must be a whole number from 1 to {n_tokens}, got {brief(budget)} "
            f"(this model has {n_tokens} visual tokens)"
        )
    return budget


def typed_truth(truth_text: str | None, vocabulary: Vocabulary) -> tuple[str, ...] | None:
    """The ground truth a user typed, as sorted categories; None when the text names no object
    (None, blank or only commas). Unknown names are the vocabulary's ``ValueError``."""
    typed = parse_truth(truth_text, vocabulary) if truth_text is not None else None
    return tuple(sorted(typed)) if typed else None
