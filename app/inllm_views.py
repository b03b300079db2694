"""The in-LLM methods in a comparison (FastV, DART at layer K): planned per request, drawn from their answer.

An in-LLM method selects inside the language model while it reads the question, so nothing is
selected before an answer: its view row has no overlay and no numbers, only ``pending`` (what the
page says instead, ``choices.IN_LLM_PENDING``) or ``refused`` (why this model or these parameters
rule it out, in one line: ``plan_methods``). Answering runs its ``InLLMPlan`` in the same
``generate_many`` call as the other rows; the ``pruning.Selection`` it made there
(``Generation.selection``) is held for the session with the request it answered (``hold``) and
drawn like any pre-LLM selection while the image and the checked request (budget, parameters with
their defaults filled in) are that answer's (``held``). Any other view finds it stale and shows
``pending`` again; the page's answer bookkeeping (``app.sessions.ANSWER_RECORDS``) forgets it
together with the answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pruning

from .choices import IN_LLM_PENDING
from .sessions import SessionStore

if TYPE_CHECKING:
    from .runtime import Encoding, Runner
    from .runtime.inllm import InLLMPlan

__all__ = ["RECORD", "Answered", "held", "hold", "is_in_llm", "pending_view", "plan_methods"]

RECORD = "in-llm"  # the session record holding what each in-LLM method kept (one of ANSWER_RECORDS)


@dataclass(frozen=True)
class Answered:
    """What one in-LLM method kept while answering, and the request it answered.

    Attributes:
        key: the image's key.
        plan: the checked request (``Runner.plan``: method, budget, every parameter, layer K).
        prompt: the question its selection depended on.
        selection: the tokens it kept, in the encoding's numbering (``Generation.selection``).
    """

    key: str
    plan: InLLMPlan
    prompt: str
    selection: pruning.Selection


def is_in_llm(method: str) -> bool:
    """Whether the registered ``method`` selects inside the language model."""
    return pruning.get_method(method).stage == "in-llm"


def plan_methods(
    runner: Runner,
    encoding: Encoding,
    methods: Sequence[str],
    budget: int,
    params: Mapping[str, Mapping[str, Any]] | None,
) -> tuple[dict[str, InLLMPlan], dict[str, str]]:
    """(plans, refusals): ``Runner.plan`` of each in-LLM method, or its refusal in one line.

    A refusal (a model whose positions or decoder the in-LLM loop does not drive, a layer the
    model does not have, a parameter the registry refuses) rules out that method only, so the
    others still draw and answer.
    """
    plans, refused = {}, {}
    for method in methods:
        try:
            plans[method] = runner.plan(encoding, method, budget, **dict((params or {}).get(method, {})))
        except ValueError as err:
            refused[method] = " ".join(str(err).split())
    return plans, refused


def pending_view(method: str, layer: int | None, refusal: str | None) -> dict[str, Any]:
    """The view row of an in-LLM method with nothing to draw: why (``pending`` or ``refused``), no numbers."""
    return {
        "method": method,
        "overlay": None,
        "layer": layer,
        "pending": None if refusal else IN_LLM_PENDING,
        "refused": refusal,
        **dict.fromkeys(("n_visual_tokens", "retention", "retained_attention", "kept_erank", "select_ms")),
        "keep": None,
        "order": None,
        "info": {},
    }


def hold(store: SessionStore, session: str, answered: Mapping[str, Answered]) -> None:
    """Keep what the in-LLM methods of ``session``'s latest answer kept (replacing the previous answer's)."""
    store.set_record(session, RECORD, dict(answered))


def held(store: SessionStore, session: str, key: str, plan: InLLMPlan) -> Answered | None:
    """What ``plan``'s method kept in ``session``'s latest answer, if that answer was for this image
    and this very request (budget and parameters, defaults filled in); None when there is none or
    it is stale."""
    answered = (store.record(session, RECORD) or {}).get(plan.method)
    return answered if answered is not None and (answered.key, answered.plan) == (key, plan) else None
