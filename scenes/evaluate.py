"""The committed evaluation of the tiny LLaVA on held-out scenes: ``python -m scenes.evaluate``.

Scenes use seeds ``EVAL_SEED_BASE + i`` (never used in training), complexity cycling through
``COMPLEXITIES`` so the set is balanced. Each scene gets the canonical task samples of
``scenes.tasks.make_samples``; the model answers greedily, and the report gives existence accuracy
(overall and per POPE negative type), caption recall / CHAIR_i / CHAIR_s, colour accuracy, counting
accuracy on scenes with at most 6 objects and word exact match, overall and per complexity.

The model is driven directly through transformers: the vision tower's feature-layer patch states
are computed once per scene, an optional ``select`` function picks which of the 576 tokens the LLM
receives (kept in raster order, contiguous positions, as methods.md prescribes), and a greedy loop
decodes each prompt from a shared KV cache of the image prefix. With ``select=None`` all 576 tokens
are kept. Pruned variants can later plug a ``select`` built on ``pruning/`` here.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoProcessor, LlavaForConditionalGeneration, PreTrainedTokenizerFast

from scenes.data import EVAL_SEED_BASE, pixel_tensor
from scenes.generate import Scene, generate_scene
from scenes.tasks import NEGATIVE_TYPES, Sample, chair, exact_match, make_samples, yes_no_accuracy
from scenes.vocab import IMAGE_TOKEN
from scenes.vocabulary import COMPLEXITIES

__all__ = [
    "Answer",
    "SceneEncoding",
    "encode_scene",
    "eval_samples",
    "eval_scenes",
    "evaluate",
    "greedy_answers",
    "main",
    "report",
    "summarize",
]

COUNT_LIMIT = 6
"""Counting accuracy is reported on scenes with at most this many objects (issue 4)."""

Selector = Callable[[Scene, "SceneEncoding"], torch.Tensor]
"""``select(scene, encoding) -> kept indices`` (K,) into the N patch tokens."""


@dataclass(frozen=True)
class SceneEncoding:
    """The vision side of one scene.

    Attributes:
        feats_pre: V, (N, C) feature-layer patch states ([CLS] dropped).
        cls_feat: (C,) feature-layer [CLS] state.
    """

    feats_pre: torch.Tensor
    cls_feat: torch.Tensor


@dataclass(frozen=True)
class Answer:
    """One model answer to one sample of one scene."""

    seed: int
    complexity: str
    n_objects: int
    task: str
    kind: str | None
    prompt: str
    answer: str
    prediction: str


def eval_scenes(n: int, start: int = 0) -> list[Scene]:
    """Held-out scenes ``start .. start + n - 1``: seed ``EVAL_SEED_BASE + i``, complexity cycling."""
    return [generate_scene(EVAL_SEED_BASE + i, COMPLEXITIES[i % len(COMPLEXITIES)]) for i in range(start, start + n)]


def eval_samples(scene: Scene) -> list[Sample]:
    """The fixed evaluation samples of a held-out scene."""
    return make_samples(scene, np.random.default_rng([scene.seed, 0xE7A1]))


@torch.no_grad()
def encode_scene(model: LlavaForConditionalGeneration, scene: Scene) -> SceneEncoding:
    """Run the vision tower once; returns the feature-layer states."""
    out = model.model.vision_tower(pixel_tensor([scene]), output_hidden_states=True)
    states = out.hidden_states[model.config.vision_feature_layer][0]  # (1 + N, C)
    return SceneEncoding(feats_pre=states[1:], cls_feat=states[0])


@torch.no_grad()
def greedy_answers(
    model: LlavaForConditionalGeneration,
    tokenizer: PreTrainedTokenizerFast,
    feats_pre: torch.Tensor,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 48,
) -> list[str]:
    """Greedy answers to each prompt about one image given its (K, C) kept feature-layer states.

    The prefix ``<s> USER : <image>×K`` is run once; each prompt continues from a copy of its KV
    cache with the chat template's ``\\n{prompt} ASSISTANT:``, then decodes until ``</s>``.
    """
    lm = model.model.language_model
    embed = model.get_input_embeddings()
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    head_ids = tokenizer("<s>USER: ", add_special_tokens=False)["input_ids"]
    image_embeds = model.model.multi_modal_projector(feats_pre[None])  # (1, K, D)
    prefix = torch.cat([embed(torch.tensor([head_ids])), image_embeds], dim=1)  # (1, P, D)
    assert image_id not in head_ids
    base = lm(inputs_embeds=prefix, use_cache=True)
    answers = []
    for prompt in prompts:
        cache = copy.deepcopy(base.cache)
        ids = tokenizer(f"\n{prompt} ASSISTANT:", add_special_tokens=False)["input_ids"]
        pos = prefix.shape[1]
        out_ids: list[int] = []
        for _ in range(max_new_tokens):
            step = torch.tensor([ids])
            hidden = lm(
                inputs_embeds=embed(step),
                cache=cache,
                use_cache=True,
                position_ids=torch.arange(pos, pos + len(ids))[None],
            ).last_hidden_state  # (1, T, D)
            pos += len(ids)
            nxt = int(model.lm_head(hidden[0, -1]).argmax())
            if nxt == tokenizer.eos_token_id:
                break
            out_ids.append(nxt)
            ids = [nxt]
        answers.append(tokenizer.decode(out_ids, skip_special_tokens=True))
    return answers


def evaluate(
    model: LlavaForConditionalGeneration,
    tokenizer: PreTrainedTokenizerFast,
    scenes: Sequence[Scene],
    *,
    select: Selector | None = None,
    progress: bool = False,
) -> list[Answer]:
    """Answer every evaluation sample of every scene, keeping the tokens ``select`` picks (all if None)."""
    answers = []
    for scene in tqdm(scenes, desc="evaluate", disable=not progress):
        enc = encode_scene(model, scene)
        feats = enc.feats_pre
        if select is not None:
            kept = torch.sort(select(scene, enc)).values  # raster order
            feats = feats[kept]
        samples = eval_samples(scene)
        preds = greedy_answers(model, tokenizer, feats, [s.prompt for s in samples])
        for sample, pred in zip(samples, preds, strict=True):
            answers.append(
                Answer(
                    scene.seed,
                    scene.complexity,
                    len(scene.objects),
                    sample.task,
                    sample.kind,
                    sample.prompt,
                    sample.answer,
                    pred,
                )
            )
    return answers


def summarize(answers: Sequence[Answer], scenes: Sequence[Scene]) -> dict[str, float]:
    """The issue's metrics from a list of answers (NaN where a subset is empty)."""
    by_task: dict[str, list[Answer]] = defaultdict(list)
    for a in answers:
        by_task[a.task].append(a)

    def acc(items: list[Answer], fn: Callable = exact_match) -> float:
        return fn([a.prediction for a in items], [a.answer for a in items]) if items else float("nan")

    exists = by_task["exists"]
    pope = [a for a in exists if a.kind in ("positive", *NEGATIVE_TYPES)]
    metrics = {"existence_acc": acc(pope, yes_no_accuracy)}
    for kind in ("positive", *NEGATIVE_TYPES, "attribute"):
        metrics[f"existence_{kind}_acc"] = acc([a for a in exists if a.kind == kind], yes_no_accuracy)
    truth = {s.seed: [o.shape for o in s.objects] for s in scenes}
    caps = by_task["caption"]
    scores = chair([a.prediction for a in caps], [truth[a.seed] for a in caps])
    metrics |= {"caption_recall": scores.recall, "chair_i": scores.chair_i, "chair_s": scores.chair_s}
    metrics["caption_exact"] = acc(caps)
    metrics["color_acc"] = acc(by_task["color"])
    metrics["count_acc_le6"] = acc([a for a in by_task["count"] if a.n_objects <= COUNT_LIMIT])
    metrics["count_acc_all"] = acc(by_task["count"])
    metrics["word_exact"] = acc(by_task["word"])
    return metrics


def report(answers: Sequence[Answer], scenes: Sequence[Scene]) -> dict[str, dict[str, float]]:
    """``summarize`` overall and per complexity level."""
    out = {"all": summarize(answers, scenes)}
    for level in COMPLEXITIES:
        sub = [a for a in answers if a.complexity == level]
        if sub:
            out[level] = summarize(sub, [s for s in scenes if s.complexity == level])
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry point: evaluate a saved model on held-out scenes at full tokens."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("assets/models/prunelens-tiny-llava"))
    parser.add_argument("--n", type=int, default=500, help="held-out scenes (balanced over complexity)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write metrics and answers here")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    processor = AutoProcessor.from_pretrained(args.model)
    model = LlavaForConditionalGeneration.from_pretrained(args.model).eval()
    scenes = eval_scenes(args.n)
    started = time.time()
    answers = evaluate(model, processor.tokenizer, scenes, progress=True)
    result = report(answers, scenes)
    levels = list(result)
    names = list(result["all"])
    print(f"{'metric':<26}" + "".join(f"{lv:>10}" for lv in levels))
    for name in names:
        print(f"{name:<26}" + "".join(f"{result[lv].get(name, float('nan')):>10.3f}" for lv in levels))
    print(f"{len(scenes)} scenes, {len(answers)} answers, {time.time() - started:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps({"metrics": result, "answers": [asdict(a) for a in answers]}, indent=1))
    return result


if __name__ == "__main__":
    main()
