"""Where the analysed images and questions come from: built-in scenes, a COCO folder, a POPE file.

Each source yields ``Item``s: an image loader, its ground-truth categories (when known), a
complexity label (when known) and the queries to ask. Problems with individual entries (a missing
image, a malformed line) are reported as ``Problem``s naming the file and line, and those entries
are skipped; a source that cannot be read at all raises ``ValueError`` before any work starts.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CAPTION_PROMPT_COCO", "Item", "Problem", "Query", "coco_items", "pope_items", "scene_items"]

CAPTION_PROMPT_COCO = "Please describe this image in detail."  # methods.md: the paper's CHAIR prompt


@dataclass(frozen=True)
class Query:
    """One question about an item: its task, prompt and gold answer (None for captions)."""

    task: str
    prompt: str
    gold: str | None = None
    kind: str | None = None


@dataclass(frozen=True)
class Item:
    """One image to analyse."""

    item_id: str
    load: Callable[[], Any] = field(repr=False)
    queries: tuple[Query, ...]
    truth: tuple[str, ...] | None = None
    complexity: str | None = None
    objects: tuple[tuple[str, str], ...] | None = None
    """Built-in scenes: every object's exact (category, colour), so wrong colours and counts score."""


@dataclass(frozen=True)
class Problem:
    """An entry that was skipped, and why."""

    where: str
    message: str


def scene_items(
    *, per_complexity: int, seed: int, tasks: tuple[str, ...], levels: tuple[str, ...] | None = None
) -> Iterator[Item]:
    """``per_complexity`` built-in scenes of each complexity level, seeds from ``seed`` upward.

    Seeds depend on the level's place in ``scenes.COMPLEXITIES``, so choosing fewer levels does
    not change the scenes of the others.
    """
    from scenes import COMPLEXITIES, generate_scene
    from scenes.tasks import make_samples

    for level_index, level in enumerate(COMPLEXITIES):
        if levels is not None and level not in levels:
            continue
        for i in range(per_complexity):
            scene_seed = seed + level_index * per_complexity + i
            scene = generate_scene(scene_seed, level)
            samples = make_samples(scene, np.random.default_rng(scene_seed))
            queries = tuple(
                Query(s.task, s.prompt, None if s.task == "caption" else s.answer, s.kind)
                for s in samples
                if s.task in tasks
            )
            if not queries:
                continue
            yield Item(
                item_id=f"scene-{level}-{scene_seed}",
                load=lambda scene=scene: scene.image,
                queries=queries,
                truth=tuple(sorted(scene.shapes)),
                complexity=level,
                objects=tuple((o.shape, o.color) for o in scene.objects),
            )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as err:
        raise ValueError(f"{path}: cannot read ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: line {err.lineno}: not valid JSON ({err.msg})") from None


def coco_items(*, images: str, annotations: str, n_images: int, seed: int, problems: list[Problem]) -> Iterator[Item]:
    """CHAIR's protocol: ``n_images`` images drawn with ``seed`` from a COCO folder, captioned."""
    from scoring import COCO_VOCABULARY

    ann_path, folder = Path(annotations), Path(images)
    data = _read_json(ann_path)
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
        raise ValueError(f"{ann_path}: not a COCO instances file (needs images, annotations and categories)")
    names = {}
    for i, cat in enumerate(data["categories"]):
        try:
            names[cat["id"]] = COCO_VOCABULARY.canonical(cat["name"]) or cat["name"]
        except (KeyError, TypeError):
            problems.append(Problem(f"{ann_path}: categories[{i}]", "category without id or name"))
    objects: dict[Any, set[str]] = defaultdict(set)
    for i, ann in enumerate(data["annotations"]):
        try:
            objects[ann["image_id"]].add(names[ann["category_id"]])
        except (KeyError, TypeError):
            problems.append(Problem(f"{ann_path}: annotations[{i}]", "annotation without a known image or category"))
    entries = []
    for i, img in enumerate(data["images"]):
        try:
            entries.append((img["id"], img["file_name"]))
        except (KeyError, TypeError):
            problems.append(Problem(f"{ann_path}: images[{i}]", "image entry without id or file_name"))
    entries.sort(key=lambda e: str(e[0]))
    chosen = random.Random(seed).sample(entries, min(n_images, len(entries)))
    for image_id, file_name in chosen:
        path = folder / file_name
        yield Item(
            item_id=f"coco-{image_id}",
            load=lambda path=path: path,
            queries=(Query("caption", CAPTION_PROMPT_COCO),),
            truth=tuple(sorted(objects.get(image_id, set()))),
        )


def pope_items(*, questions: str, images: str, problems: list[Problem]) -> Iterator[Item]:
    """POPE-format questions (one JSON object a line: image, text, label), grouped by image."""
    path, folder = Path(questions), Path(images)
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise ValueError(f"{path}: cannot read ({err.strerror})") from None
    grouped: dict[str, list[Query]] = defaultdict(list)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            image, text, label = entry["image"], entry["text"], str(entry["label"]).strip().lower()
            if label not in ("yes", "no"):
                raise ValueError(f"label must be yes or no, got {entry['label']!r}")
            if not isinstance(text, str) or not text.strip():
                raise ValueError("empty question text")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            problems.append(Problem(f"{path}:{number}", f"skipped: {err}"))
            continue
        grouped[image].append(Query("pope", text, label, entry.get("category")))
    for image, queries in grouped.items():
        yield Item(item_id=f"pope-{image}", load=lambda p=folder / image: p, queries=tuple(queries))
