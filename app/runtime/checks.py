"""Whether a method runs on a loaded model, and the requests whose tokens wait for the question.

``check_method`` refuses, naming the method, the model and why, a method that needs an input the
model does not give (a [CLS] feature on a SigLIP tower, CDPruner's joint-space embeddings without a
text tower), a merging method on M-RoPE positions, and an in-LLM method on a decoder the in-LLM loop
does not drive. Two kinds of method choose from the question, so nothing can be selected for them
before a prompt: the in-LLM ones (FastV, DART at layer K; ``inllm.InLLMPlan``) and the pre-LLM ones
that read ``text_embeds`` (CDPruner; a ``QuestionPlan``, selected with the prompt when it answers).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

import pruning

from .inllm import check_decoder
from .records import Encoding, GridPart

if TYPE_CHECKING:
    from .texttower import TextTower

__all__ = [
    "QuestionPlan",
    "check_method",
    "per_question",
    "question_parts",
    "question_plan",
    "reads_question",
    "with_patch_embeds",
]

NEEDED_INPUTS = {
    "keys": "the feature layer's keys (inputs.keys)",
    "cls_feat": "a [CLS] token's feature (inputs.cls_feat)",
}
TEXT_INPUTS = ("patch_embeds", "text_embeds")  # what a text tower gives (``texttower``)
NO_TEXT_TOWER = (
    "method {method!r} needs the question's embedding in the vision tower's joint image-text space, and "
    "{model!r} was loaded without a text tower: load the CLIP checkpoint its tower came from with it "
    "(--text-tower, an analysis config's text_tower, or load_runner(..., text_tower=...); "
    "for LLaVA-1.5 and LLaVA-NeXT: openai/clip-vit-large-patch14-336)"
)


def reads_question(method: str) -> bool:
    """Whether the registered pre-LLM ``method`` selects from the question's text embedding (CDPruner)."""
    spec = pruning.get_method(method)
    return spec.stage != "in-llm" and "text_embeds" in spec.needs


def per_question(method: str) -> bool:
    """Whether the registered ``method`` chooses from each question, so nothing is selected for it
    before a prompt: inside the language model (FastV, DART at layer K), or before it from the
    question's text embedding (CDPruner, ``reads_question``)."""
    return pruning.get_method(method).stage == "in-llm" or reads_question(method)


@dataclass(frozen=True)
class QuestionPlan:
    """A checked request for a pre-LLM method that reads the question (CDPruner).

    ``generate`` selects with its own prompt (``Runner.select(..., prompt=...)``), answers from the
    kept tokens and returns them as ``Generation.selection``, as it does for an in-LLM plan.

    Attributes:
        method: the registry name.
        budget: visual tokens kept, clipped to N.
        params: every keyword parameter of the method, defaults filled in.
        requested_budget: the budget as asked.
        model: the runner's model name; n_tokens: N of the encoding it was made for.
        layer: 0, the first decoder layer that sees only the kept tokens: every layer does.
    """

    method: str
    budget: int
    params: dict[str, Any]
    requested_budget: int
    model: str
    n_tokens: int
    layer: int = 0


def question_plan(spec: pruning.MethodSpec, name: str, encoding: Encoding, budget: Any, params: dict) -> QuestionPlan:
    """Check a question-reading request: the budget and parameters by the registry."""
    requested, params = spec.check_request(budget, params)
    return QuestionPlan(spec.name, min(requested, encoding.n_tokens), params, requested, name, encoding.n_tokens)


def check_method(runner: Any, method: str, encoding: Encoding) -> None:
    """Refuse ``method`` on ``runner``'s model (``Runner.check_method``), naming both and why."""
    spec = pruning.get_method(method)
    name, family = runner.name, runner.adapter.family
    if spec.stage == "in-llm":
        if encoding.rope is not None:
            raise ValueError(
                f"method {method!r} cannot run on {name!r} ({family}): it prunes inside the "
                "language model, whose loop drives 1-D positions, and this model places tokens with M-RoPE"
            )
        check_decoder(runner.adapter.model, name, family, method)
        return
    if spec.merges and encoding.rope is not None:
        raise ValueError(
            f"method {method!r} cannot run on {name!r} ({family}): it merges tokens, and a "
            "merged token has no single M-RoPE position to keep"
        )
    for needed in spec.needs:
        if needed in TEXT_INPUTS:
            if runner.text_tower is None:
                raise ValueError(NO_TEXT_TOWER.format(method=method, model=name))
            continue
        if any(getattr(part.inputs, needed, None) is None for part in encoding.parts):
            raise ValueError(
                f"method {method!r} cannot run on {name!r} ({family}): it needs "
                f"{NEEDED_INPUTS.get(needed, 'inputs.' + needed)}, which this model does not give; "
                f"its attention signal is {runner.adapter.attention_signal}"
            )


def question_parts(tower: TextTower, encoding: Encoding, prompt: Any) -> tuple[GridPart, ...]:
    """``encoding``'s grids with the question's text embeddings T (``TextTower.text_embeds``) in each."""
    if prompt is None:
        raise ValueError("this method selects from the question: pass the prompt (Runner.select(..., prompt=...))")
    text = tower.text_embeds(prompt)
    return tuple(
        dataclasses.replace(part, inputs=dataclasses.replace(part.inputs, text_embeds=text.to(part.inputs.device)))
        for part in encoding.parts
    )


def with_patch_embeds(
    tower: TextTower, inputs: pruning.PruneInputs, parts: tuple[GridPart, ...]
) -> tuple[pruning.PruneInputs, tuple[GridPart, ...]]:
    """The encoding's inputs and grids with the joint-space patch embeddings E in each (``TextTower.patch_embeds``)."""
    parts = tuple(
        dataclasses.replace(
            part,
            inputs=dataclasses.replace(
                part.inputs, patch_embeds=tower.patch_embeds(part.inputs.feats_pre).to(part.inputs.device)
            ),
        )
        for part in parts
    )
    if len(parts) == 1:
        return parts[0].inputs, parts
    return dataclasses.replace(inputs, patch_embeds=torch.cat([p.inputs.patch_embeds for p in parts])), parts
