"""The committed evaluation of the tiny LLaVA on held-out scenes: ``python -m scenes.evaluate``.

Scenes use seeds ``EVAL_SEED_BASE + i`` (never used in training), complexity cycling through
``COMPLEXITIES`` so the set is balanced. Each scene gets the canonical task samples of
``scenes.tasks.make_samples``; the model answers greedily, and the report gives existence accuracy
(overall and per POPE negative type), caption recall / CHAIR_i / CHAIR_s, the captions' wrong
colours and counts (``caption_attr_i`` per mention of a present shape, ``caption_attr_s`` per
caption), colour accuracy, counting accuracy on scenes with at most 6 objects and word exact match,
overall and per complexity.

The model runs through the app's runtime (``app.runtime``), as any user's model does: each scene
is encoded once (``Runner.encode``), an optional ``select`` picks the visual tokens the LLM
receives (a ``pruning.Selection``, kept in raster order, e.g. ``runner.select(encoding, "adaptive",
64)``), and each prompt is answered by ``Runner.generate_many`` with the processor's own chat
template. With ``select=None`` all 576 tokens are kept. This module is a command at the top of
``scenes``: it may use ``app.runtime``, while the scene library (generate, tasks, tokenizer, data,
train) never imports ``app``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import pruning
from app.runtime import Encoding, GenerationOptions, Runner, load_runner
from scenes.data import EVAL_SEED_BASE
from scenes.generate import Scene, generate_scene
from scenes.tasks import NEGATIVE_TYPES, SCENE_VOCABULARY, Sample, attribute_errors, chair, make_samples
from scenes.vocabulary import COMPLEXITIES
from scoring import exact_match, find_mentions, yes_no_accuracy

__all__ = [
    "COUNT_LIMIT",
    "MAX_NEW_TOKENS",
    "Answer",
    "eval_samples",
    "eval_scenes",
    "evaluate",
    "greedy_answers",
    "main",
    "report",
    "summarize",
]

COUNT_LIMIT = 6
"""Counting accuracy is reported on scenes with at most this many objects (the model card's target)."""
MAX_NEW_TOKENS = 48
"""Most new tokens decoded per answer."""

Selector = Callable[[Scene, Encoding], pruning.Selection]
"""``select(scene, encoding) -> selection`` of the encoding's N patch tokens."""


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


def greedy_answers(
    runner: Runner,
    encoding: Encoding,
    prompts: Sequence[str],
    selection: pruning.Selection | None = None,
    *,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> list[str]:
    """Greedy answers to each prompt about one encoded image, from ``selection``'s visual tokens
    (all N if None), decoded until the end-of-answer token or ``max_new_tokens``.

    One ``generate_many`` call per prompt: the runtime batches the selections of one prompt, and
    here each prompt has one.
    """
    options = GenerationOptions(max_new_tokens=max_new_tokens)
    return [runner.generate_many(encoding, prompt, [selection], options)[0].text for prompt in prompts]


def evaluate(
    runner: Runner,
    scenes: Sequence[Scene],
    *,
    select: Selector | None = None,
    progress: bool = False,
) -> list[Answer]:
    """Answer every evaluation sample of every scene, from the tokens ``select`` picks (all if None)."""
    answers = []
    for scene in tqdm(scenes, desc="evaluate", disable=not progress):
        encoding = runner.encode(scene.image, use_cache=False)  # each scene once: caching would only evict
        selection = select(scene, encoding) if select is not None else None
        samples = eval_samples(scene)
        preds = greedy_answers(runner, encoding, [s.prompt for s in samples], selection)
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
    """The model card's metrics from a list of answers (NaN where a subset is empty)."""
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
    objects = {s.seed: [(o.shape, o.color) for o in s.objects] for s in scenes}
    wrong = [len(attribute_errors(a.prediction, objects[a.seed])) for a in caps]
    present = sum(sum(m.category in truth[a.seed] for m in find_mentions(a.prediction, SCENE_VOCABULARY)) for a in caps)
    metrics["caption_attr_i"] = sum(wrong) / present if present else float("nan")
    metrics["caption_attr_s"] = sum(w > 0 for w in wrong) / len(caps) if present else float("nan")
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
    runner = load_runner(str(args.model), device="cpu", dtype="float32")
    scenes = eval_scenes(args.n)
    started = time.time()
    answers = evaluate(runner, scenes, progress=True)
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
