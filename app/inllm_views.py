"""The methods that choose from the question in a comparison: planned per request, drawn from their answer.

Two kinds of method pick their tokens from the question (``per_question``): the in-LLM ones
(FastV, DART at layer K), which select inside the language model while it reads the question, and
CDPruner, which selects before it by the question's CLIP text embedding. Nothing is selected for
them before an answer: the view row has no overlay and no numbers, only ``pending`` (what the page
says instead, ``choices.IN_LLM_PENDING`` or ``choices.QUESTION_PENDING``) or ``refused`` (why this
model or these parameters rule it out, in one line: ``plan_methods``; CDPruner without a text
tower, for one). Answering runs its plan (``Runner.plan``: an ``InLLMPlan`` or a ``QuestionPlan``)
in the same ``generate_many`` call as the other rows; the ``pruning.Selection`` it made there
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

from .choices import IN_LLM_PENDING, QUESTION_PENDING
from .runtime.checks import per_question
from .sessions import SessionStore

if TYPE_CHECKING:
    from .runtime import Encoding, Runner
    from .runtime.checks import QuestionPlan
    from .runtime.inllm import InLLMPlan

__all__ = ["RECORD", "Answered", "held", "hold", "pending_view", "per_question", "plan_methods"]

RECORD = "in-llm"  # the session record holding what each per-question method kept (one of ANSWER_RECORDS)


@dataclass(frozen=True)
class Answered:
    """What one per-question method kept while answering, and the request it answered.

    Attributes:
        key: the image's key.
        plan: the checked request (``Runner.plan``: method, budget, every parameter, layer K; 0 for CDPruner).
        prompt: the question its selection depended on.
        selection: the tokens it kept, in the encoding's numbering (``Generation.selection``).
    """

    key: str
    plan: InLLMPlan | QuestionPlan
    prompt: str
    selection: pruning.Selection


def plan_methods(
    runner: Runner,
    encoding: Encoding,
    methods: Sequence[str],
    budget: int,
    params: Mapping[str, Mapping[str, Any]] | None,
) -> tuple[dict[str, InLLMPlan], dict[str, str]]:
    """(plans, refusals): ``Runner.plan`` of each per-question method, or its refusal in one line.

    A refusal (a model whose positions or decoder the in-LLM loop does not drive, a layer the
    model does not have, CDPruner without a text tower, a parameter the registry refuses) rules
    out that method only, so the others still draw and answer.
    """
    plans, refused = {}, {}
    for method in methods:
        try:
            plans[method] = runner.plan(encoding, method, budget, **dict((params or {}).get(method, {})))
        except ValueError as err:
            refused[method] = " ".join(str(err).split())
    return plans, refused


def pending_view(method: str, layer: int | None, refusal: str | None) -> dict[str, Any]:
    """The view row of a per-question method with nothing to draw: why (``pending`` or ``refused``), no numbers."""
    pending = IN_LLM_PENDING if pruning.get_method(method).stage == "in-llm" else QUESTION_PENDING
    return {
        "method": method,
        "overlay": None,
        "layer": layer,
        "pending": None if refusal else pending,
        "refused": refusal,
        **dict.fromkeys(("n_visual_tokens", "retention", "retained_attention", "kept_erank", "select_ms")),
        "keep": None,
        "order": None,
        "info": {},
    }


def hold(store: SessionStore, session: str, answered: Mapping[str, Answered]) -> None:
    """Keep what the per-question methods of ``session``'s latest answer kept (replacing the previous answer's)."""
    store.set_record(session, RECORD, dict(answered))


def held(store: SessionStore, session: str, key: str, plan: InLLMPlan) -> Answered | None:
    """What ``plan``'s method kept in ``session``'s latest answer, if that answer was for this image
    and this very request (budget and parameters, defaults filled in); None when there is none or
    it is stale."""
    answered = (store.record(session, RECORD) or {}).get(plan.method)
    return answered if answered is not None and (answered.key, answered.plan) == (key, plan) else None
