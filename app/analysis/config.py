"""The analysis config: what to run, read from a JSON or TOML file and checked before any work.

model = "assets/models/prunelens-tiny-llava"
output = "runs/scenes-300"
budgets = [128, 64, 32]
tasks = ["caption", "exists"]
methods = ["attention", "diversity", "adaptive",
           {label = "hybrid R=0.25", method = "hybrid", params = {ratio = 0.25}},
           {label = "FastV l=2", method = "fastv", params = {layer = 2}}]
[source]
kind = "scenes"          # optional: levels = ["simple", "complex"]
# or kind = "coco" (images, annotations, n_images, seed) / kind = "pope" (questions, images)
per_complexity = 75
seed = 100000

A method is any registered one (``pruning.list_methods("all")``) with its parameters, checked by
the registry here. Two kinds select from each question rather than once per image: the in-LLM
methods (``fastv``, ``dart-llm``), inside the language model from decoder layer ``layer`` on, and
``cdpruner``, before it, from the question's embedding in CLIP's joint image-text space. The run
checks them against the model at its first image, before any answer: an in-LLM layer against its
decoder, a model the in-LLM loop cannot drive, ``cdpruner`` without a text tower.

Optional top-level keys: ``max_new_tokens`` (default 48), ``device`` (auto, cpu or cuda; default
auto), ``dtype`` (auto, float32, bfloat16 or float16; default auto: bfloat16 on CUDA, float16
where bf16 is unsupported, float32 on CPU) and ``text_tower`` (the CLIP checkpoint, a folder or a
hub id, the model's vision tower came from: ``openai/clip-vit-large-patch14-336`` for LLaVA-1.5 and
LLaVA-NeXT; ``cdpruner`` needs it), the last three passed to ``runtime.load_runner``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomllib
import torch

import pruning

from ..preflight import DTYPES
from ..runtime.checks import per_question

__all__ = ["SOURCE_KINDS", "TASKS", "AnalysisConfig", "MethodSpec", "load_config", "per_question"]

TASKS = ("caption", "exists", "color", "count", "word", "pope")
SOURCE_KINDS = {
    "scenes": {"per_complexity": int, "seed": int, "levels": list},
    "coco": {"images": str, "annotations": str, "n_images": int, "seed": int},
    "pope": {"questions": str, "images": str},
}
SOURCE_DEFAULTS = {
    "scenes": {"seed": 100_000, "levels": ["text", "simple", "medium", "complex"]},
    "coco": {"n_images": 500, "seed": 0},
    "pope": {},
}


@dataclass(frozen=True)
class MethodSpec:
    """One method variant: a registered method with fixed parameters, under a label."""

    label: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AnalysisConfig:
    """Everything one analysis run needs; see the module docstring for the file format."""

    model: str
    output: str
    source: dict[str, Any]
    methods: tuple[MethodSpec, ...]
    budgets: tuple[int, ...]
    tasks: tuple[str, ...]
    max_new_tokens: int = 48
    device: str = "auto"
    dtype: str = "auto"
    text_tower: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def _method(entry: Any, where: str) -> MethodSpec:
    if isinstance(entry, str):
        spec = MethodSpec(entry, entry)
    elif isinstance(entry, dict) and "method" in entry:
        unknown = set(entry) - {"label", "method", "params"}
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}")
        params = entry.get("params", {})
        if not isinstance(params, dict):
            raise ValueError(f"{where}: params must be a table of name = value")
        spec = MethodSpec(str(entry.get("label", entry["method"])), entry["method"], dict(params))
    else:
        raise ValueError(f"{where}: a method is a name or a table with method (and label, params)")
    registered = pruning.get_method(spec.method)  # unknown names raise, listing the known ones
    # Selects from each question (inside the LLM, or from its text embedding): nothing to probe it on
    # here, so the registry checks the request; the model checks the rest (a layer, a text tower) at run time.
    if per_question(spec.method):
        try:
            registered.check_request(2, spec.params)
        except ValueError as err:
            raise ValueError(f"{where} ({spec.label}): {err}") from None
        return spec
    probe = pruning.PruneInputs(
        feats_pre=torch.eye(4),
        feats=torch.eye(4),
        cls_attn=torch.full((4,), 0.25),
        grid=(2, 2),
        keys=torch.eye(4),
        cls_feat=torch.ones(4),
    )
    try:
        pruning.select(spec.method, probe, 2, **spec.params)
    except ValueError as err:
        raise ValueError(f"{where} ({spec.label}): {err}") from None
    return spec


def load_config(path: str | Path, **overrides: Any) -> AnalysisConfig:
    """Read and validate a config file; ``overrides`` (e.g. ``output=...``) replace its keys."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"config {path}: cannot read ({err.strerror})") from None
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"config {path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'} ({err})") from None
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return parse_config(raw, str(path))


def parse_config(raw: dict[str, Any], where: str = "config") -> AnalysisConfig:
    """Validate a config mapping, naming the first offending key."""
    known = {"model", "output", "source", "methods", "budgets", "tasks", "max_new_tokens", "device", "dtype",
             "text_tower"}  # fmt: skip
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    for key in ("model", "output", "source", "methods", "budgets"):
        if key not in raw:
            raise ValueError(f"{where}: missing {key!r}")
    source = dict(raw["source"]) if isinstance(raw["source"], dict) else None
    if source is None or source.get("kind") not in SOURCE_KINDS:
        raise ValueError(f"{where}: source.kind must be one of {sorted(SOURCE_KINDS)}")
    kind = source["kind"]
    fields = SOURCE_KINDS[kind]
    source = {"kind": kind, **SOURCE_DEFAULTS[kind], **{k: v for k, v in source.items() if k != "kind"}}
    for name, typ in fields.items():
        if name not in source:
            raise ValueError(f"{where}: source {kind!r} needs {name!r}")
        if not isinstance(source[name], typ) or isinstance(source[name], bool):
            raise ValueError(f"{where}: source.{name} must be a {typ.__name__}, got {source[name]!r}")
    extra = set(source) - set(fields) - {"kind"}
    if extra:
        raise ValueError(f"{where}: source {kind!r} has unknown key(s) {sorted(extra)}")
    for name in ("images", "annotations", "questions"):
        if name in source and not Path(source[name]).exists():
            raise ValueError(f"{where}: source.{name} {source[name]!r} does not exist")
    if kind == "scenes":
        from scenes import COMPLEXITIES

        if source["per_complexity"] < 1:
            raise ValueError(f"{where}: source.per_complexity must be at least 1")
        bad = [lv for lv in source["levels"] if lv not in COMPLEXITIES]
        if bad or not source["levels"]:
            raise ValueError(f"{where}: source.levels must be a non-empty list from {COMPLEXITIES}, got {bad}")
    methods = raw["methods"]
    if not isinstance(methods, list) or not methods:
        raise ValueError(f"{where}: methods must be a non-empty list")
    specs = tuple(_method(m, f"{where}: methods[{i}]") for i, m in enumerate(methods))
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels) or "full" in labels:
        raise ValueError(f"{where}: method labels must be unique and not 'full', got {labels}")
    budgets = raw["budgets"]
    if (
        not isinstance(budgets, list)
        or not budgets
        or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in budgets)
    ):
        raise ValueError(f"{where}: budgets must be a non-empty list of positive ints, got {budgets!r}")
    default_tasks = ["caption"] if kind == "coco" else ["pope"] if kind == "pope" else ["caption", "exists"]
    tasks = raw.get("tasks", default_tasks)
    if not isinstance(tasks, list) or not tasks or any(t not in TASKS for t in tasks):
        raise ValueError(f"{where}: tasks must be a non-empty list from {TASKS}, got {tasks!r}")
    max_new = raw.get("max_new_tokens", 48)
    if isinstance(max_new, bool) or not isinstance(max_new, int) or not 1 <= max_new <= 1024:
        raise ValueError(f"{where}: max_new_tokens must be an int from 1 to 1024, got {max_new!r}")
    device = raw.get("device", "auto")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"{where}: device must be auto, cpu or cuda, got {device!r}")
    dtype = raw.get("dtype", "auto")
    if dtype not in DTYPES:
        raise ValueError(f"{where}: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    text_tower = raw.get("text_tower")
    if text_tower is not None and (not isinstance(text_tower, str) or not text_tower.strip()):
        raise ValueError(
            f"{where}: text_tower must be a CLIP checkpoint folder or hub id (a string), got {text_tower!r}"
        )
    return AnalysisConfig(
        model=str(raw["model"]),
        output=str(raw["output"]),
        source=source,
        methods=specs,
        budgets=tuple(sorted(set(budgets), reverse=True)),
        tasks=tuple(tasks),
        max_new_tokens=max_new,
        device=device,
        dtype=dtype,
        text_tower=text_tower,
    )
