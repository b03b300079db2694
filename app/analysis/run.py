"""Running an analysis: every image once through the encoder, every method and budget, batched answers.

Results go to ``OUTPUT/results.jsonl`` (and ``.csv``) one image at a time, each image's rows in a
single flushed write, so an interrupted run loses at most the image in flight and a rerun resumes
after the last complete one. Under ``accelerate launch`` (or any launcher that sets ``RANK`` and
``WORLD_SIZE``) every process takes every WORLD_SIZE-th image and writes its own shard; the last
process to finish merges the shards in image order.

Every question of an image is one ``generate_many`` call over every variant. A pre-LLM method
selects once per image, so its rows of one image share one kept set. Two kinds of method select
from each question instead (``per_question``): the in-LLM ones (FastV, DART at layer K:
``stage == "in-llm"``), inside the language model from the prompt, and the pre-LLM ones that read
the question's CLIP text embedding (CDPruner: ``runtime.checks.reads_question``), before it. Both
go to ``generate_many`` as a plan (``Runner.plan``), so each of their rows holds the kept set of
its question (its ``kept_erank``, ``retained_attention`` and ``select_ms``: ``Generation.selection``),
and their ``kept_per`` column says ``"question"`` where the others say ``"image"``. A method the
model refuses (an in-LLM method on an M-RoPE model, a layer past its decoder, an input it does not
give, CDPruner on a runner loaded without a text tower) stops the run at its first image, before
any answer is generated, with a ``ValueError`` naming the method and the model.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import pruning
from scenes.tasks import SCENE_VOCABULARY, attribute_errors
from scoring import COCO_VOCABULARY, find_mentions, normalize_words, same_answer, word_overlap

from ..runtime import GenerationOptions
from ..runtime.images import load_image
from ..selection_numbers import selection_numbers
from .config import AnalysisConfig, per_question
from .results import CSV_COLUMNS, read_rows, shard_paths
from .scoring import score_answer
from .sources import Item, Problem, coco_items, pope_items, scene_items

__all__ = ["items_for", "run_analysis"]


def items_for(config: AnalysisConfig, problems: list[Problem]) -> Iterator[Item]:
    src = config.source
    if src["kind"] == "scenes":
        return scene_items(
            per_complexity=src["per_complexity"], seed=src["seed"], tasks=config.tasks, levels=tuple(src["levels"])
        )
    if src["kind"] == "coco":
        return coco_items(
            images=src["images"],
            annotations=src["annotations"],
            n_images=src["n_images"],
            seed=src["seed"],
            problems=problems,
        )
    return pope_items(questions=src["questions"], images=src["images"], problems=problems)


def _complete_items(rows: list[dict[str, Any]]) -> set[str]:
    counts: dict[str, int] = {}
    expected: dict[str, int] = {}
    for r in rows:
        counts[r["item_id"]] = counts.get(r["item_id"], 0) + 1
        expected[r["item_id"]] = r["rows_in_item"]
    return {i for i, n in counts.items() if n == expected[i]}


KEPT_NUMBERS = ("n_visual_tokens", "kept_erank", "retained_attention", "select_ms")
"""What a row says of the tokens its method kept (``app.selection_numbers``, as the page shows them)."""


def _kept_numbers(runner: Any, encoding: Any, sel: pruning.Selection) -> dict[str, Any]:
    numbers = selection_numbers(runner, encoding, sel)
    return {name: numbers[name] for name in KEPT_NUMBERS}


def _variants(encoding: Any, runner: Any, config: AnalysisConfig) -> list[tuple[dict[str, Any], Any]]:
    """(row numbers, request) per variant, the full model first; a request is what ``generate_many``
    takes: a ``pruning.Selection``, a plan (``Runner.plan``: ``InLLMPlan`` or ``QuestionPlan``), or
    None for every token.

    A method that selects once per image does so here; one that selects per question
    (``per_question``) only checks its request here and selects in each question's generation, so
    its numbers are filled in per answer (``_analyse``). A method this model refuses (CDPruner
    without a text tower among them) is a ``ValueError`` naming the variant, before any answer.
    """
    n = encoding.n_tokens
    full = {"n_visual_tokens": n, "kept_erank": encoding.image_erank, "retained_attention": 1.0, "select_ms": 0.0}
    variants: list[tuple[dict[str, Any], Any]] = [
        ({"label": "full", "method": "full", "budget": n, "kept_per": "image", **full}, None)
    ]
    for spec in config.methods:
        asks = per_question(spec.method)
        for budget in config.budgets:
            numbers = {"label": spec.label, "method": spec.method, "budget": budget}
            try:
                if asks:
                    request = runner.plan(encoding, spec.method, min(budget, n), **spec.params)
                else:
                    request = runner.select(encoding, spec.method, min(budget, n), **spec.params)
            except ValueError as err:
                raise ValueError(f"{spec.label} at K={budget}: {err}") from None
            if asks:
                numbers["kept_per"] = "question"
            else:
                numbers |= {"kept_per": "image", **_kept_numbers(runner, encoding, request)}
            variants.append((numbers, request))
    return variants


@torch.inference_mode()
def _analyse(item: Item, image: Any, runner: Any, config: AnalysisConfig, vocab: Any) -> list[dict[str, Any]]:
    encoding = runner.encode(image, use_cache=False)
    base = {
        "item_id": item.item_id,
        "complexity": item.complexity,
        "complexity_bin": runner.calibration.bin(encoding.image_erank),
        "image_erank": encoding.image_erank,
        "attention_entropy": encoding.attention_entropy,
        "truth": list(item.truth) if item.truth is not None else None,
    }
    variants = _variants(encoding, runner, config)
    rows = []
    for query in item.queries:
        start = time.perf_counter()
        gens = runner.generate_many(
            encoding,
            query.prompt,
            [request for _, request in variants],  # in-LLM plans run one row each; the rest, CDPruner's too, batched
            GenerationOptions(max_new_tokens=config.max_new_tokens),
        )
        batch_ms = (time.perf_counter() - start) * 1e3
        full_text = gens[0].text  # variants[0] is the full model
        for (numbers, _), gen in zip(variants, gens):
            if numbers["kept_per"] == "question":  # what the method kept for this prompt
                numbers = {**numbers, **_kept_numbers(runner, encoding, gen.selection)}
            scores = score_answer(query.task, gen.text, query.gold, item.truth, vocab)
            if query.task == "caption":
                scores |= _caption_extras(gen.text, full_text, item, vocab)
            rows.append(
                {
                    **base,
                    **numbers,
                    "task": query.task,
                    "kind": query.kind,
                    "prompt": query.prompt,
                    "answer": gen.text,
                    "gold": query.gold,
                    **scores,
                    "agrees": same_answer(gen.text, full_text, normalize=normalize_words),
                    "overlap": word_overlap(gen.text, full_text),
                    "batch_ms": batch_ms,
                }
            )
    for r in rows:
        r["rows_in_item"] = len(rows)
    return rows


def _caption_extras(text: str, full_text: str, item: Item, vocab: Any) -> dict[str, Any]:
    """A caption's length next to the full model's, and with a scene's exact objects its wrong
    colours and counts (``scenes.tasks.attribute_errors``) among its mentions of present objects."""
    extras: dict[str, Any] = {"full_length": len(full_text.split())}
    if item.objects is not None:
        present = {shape for shape, _ in item.objects}
        extras["attribute_errors"] = list(attribute_errors(text, item.objects).values())
        extras["present_mentions"] = sum(m.category in present for m in find_mentions(text, vocab))
    return extras


def run_analysis(
    config: AnalysisConfig,
    *,
    runner: Any = None,
    rank: int | None = None,
    world: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) ``config``; returns {"rows", "skipped", "problems", "merged", "seconds"}."""
    from ..runtime import load_runner
    from .report import write_reports

    rank = int(os.environ.get("RANK", 0)) if rank is None else rank  # set by accelerate launch / torchrun
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside a world of {world} processes")
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    saved = output / "config.json"
    # A run saved before the dtype or text_tower key existed ran with its default.
    before = {"dtype": "auto", "text_tower": None}
    if saved.exists() and {**before, **json.loads(saved.read_text())} != json.loads(config.to_json()):
        raise ValueError(f"{output} holds a run with a different config: choose another output folder")
    if rank == 0 and not saved.exists():
        saved.write_text(config.to_json())
    (output / f"done.rank{rank}-of-{world}").unlink(missing_ok=True)
    problems: list[Problem] = []
    items = list(items_for(config, problems))
    mine = items[rank::world]
    jsonl, csv_path = shard_paths(output, rank, world)
    done_rows = read_rows(jsonl)
    complete = _complete_items(done_rows)
    kept = [r for r in done_rows if r["item_id"] in complete]
    # Rewrite both files from the complete items: drops a torn last line or a half-written image.
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in kept))
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept)

    if runner is None:
        runner = load_runner(config.model, device=config.device, dtype=config.dtype, text_tower=config.text_tower)
    vocab = COCO_VOCABULARY if config.source["kind"] != "scenes" else SCENE_VOCABULARY
    start = time.perf_counter()
    todo = [item for item in mine if item.item_id not in complete]
    bar = tqdm(
        todo, desc=f"analysis (rank {rank}/{world})" if world > 1 else "analysis", disable=not progress, unit="image"
    )
    new_rows = 0
    with jsonl.open("a") as jf, csv_path.open("a", newline="") as cf:
        writer = csv.DictWriter(cf, CSV_COLUMNS, extrasaction="ignore")
        for item in bar:
            try:
                image = load_image(item.load())
            except ValueError as err:
                problems.append(Problem(item.item_id, f"image skipped: {err}"))
                continue
            rows = _analyse(item, image, runner, config, vocab)
            jf.write("".join(json.dumps(r) + "\n" for r in rows))
            jf.flush()
            writer.writerows(rows)
            cf.flush()
            new_rows += len(rows)
    with (output / f"problems.rank{rank}.jsonl").open("w") as f:
        for p in problems:
            f.write(json.dumps({"where": p.where, "message": p.message}) + "\n")
    (output / f"done.rank{rank}-of-{world}").write_text(str(len(mine)))
    merged = _merge_if_last(output, world, [i.item_id for i in items])
    summary = None
    if merged:
        summary = write_reports(output, config)
    return {
        "rows": new_rows,
        "skipped": len(problems),
        "problems": problems,
        "merged": merged,
        "seconds": time.perf_counter() - start,
        "summary": summary,
    }


def _merge_if_last(output: Path, world: int, order: list[str]) -> bool:
    """Merge the shards into results.jsonl/.csv once every rank is done.

    Merging is deterministic and each file is replaced atomically, so two processes finishing
    together both merge harmlessly.
    """
    if world == 1:
        return True
    if not all((output / f"done.rank{r}-of-{world}").exists() for r in range(world)):
        return False
    rows = [r for rank in range(world) for r in read_rows(shard_paths(output, rank, world)[0])]
    position = {item_id: i for i, item_id in enumerate(order)}
    rows.sort(key=lambda r: position.get(r["item_id"], len(order)))  # stable: keeps each item's row order
    pid = os.getpid()
    tmp_json, tmp_csv = output / f".results.jsonl.{pid}", output / f".results.csv.{pid}"
    tmp_json.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with tmp_csv.open("w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp_json, output / "results.jsonl")
    os.replace(tmp_csv, output / "results.csv")
    return True
