"""The ``Runner``: one loaded model that encodes images, selects their tokens and generates from them.

Encode once (``encode``, cached by image content and model settings), select many times
(``select``, the model's calibration filled in), generate from only the kept tokens
(``generate`` / ``generate_many``, one ``GenerationOptions``). ``generate_many`` batches the rows
whose lengths are close and runs the others apart (``generation.group_rows``), so that padding a
short row to a long one does not cost more than it saves (``benchmarks.app_speed`` measures it);
every greedy answer equals the one its row gets alone. In-LLM methods (FastV, DART at layer K)
choose their tokens inside the language model from the prompt: ``plan`` checks such a request,
``generate`` runs it (``inllm``) and returns what it kept as ``Generation.selection``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

import pruning

from .adapters import Adapter, adapter_for
from .calibration import Calibration, find_calibration
from .checks import QuestionPlan, check_method, question_parts, question_plan, reads_question, with_patch_embeds
from .generation import (
    MAX_PADDING_SHARE,
    Row,
    RowTokens,
    cancelled_generation,
    group_rows,
    oom_guard,
    prepare_row,
    run_rows,
    sync,
)
from .grids import grid_parts, select_grids, visual_sequence
from .images import image_digest, load_image
from .inllm import InLLMPlan, PlanRow, plan_request, plan_row, run_plan
from .records import Encoding, Generation, GenerationOptions, GridPart, as_options
from .texttower import TextTower

__all__ = ["DEFAULT_CACHE_SIZE", "Runner"]

DEFAULT_CACHE_SIZE = 32  # encodings kept per runner
logger = logging.getLogger(__name__)


class Runner:
    """One loaded model, ready to encode images and generate from any selection of their tokens.

    Thread-safe for concurrent requests: the only shared mutable state is the encoding cache,
    guarded by a lock. Build with ``load_runner`` (a hub id or folder) or ``Runner.from_model``.

    ``padding_share`` decides which rows of ``generate_many`` share one generate call
    (``generation.group_rows``): on CPU a row joins a batch only while padding stays under a quarter
    of it (a 576-token full row and 64-token pruned rows run apart: decode steps cost in proportion
    to the padded length there); on CUDA every row shares one call (a decode step costs about the
    same for one row or many). Set it to 0.0 to batch only equal lengths, 1.0 to batch everything.
    """

    def __init__(
        self,
        adapter: Adapter,
        *,
        calibration: Calibration,
        model_dir: str | os.PathLike | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        text_tower: TextTower | None = None,
    ) -> None:
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size must be a non-negative int, got {cache_size!r}")
        self.adapter = adapter
        self.calibration = calibration
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.cache_size = cache_size
        self.text_tower = text_tower  # CLIP's text half (CDPruner), or None
        self._cache: OrderedDict[str, Encoding] = OrderedDict()
        self._lock = threading.Lock()
        self.padding_share = MAX_PADDING_SHARE if adapter.device.type == "cpu" else 1.0

    @classmethod
    def from_model(
        cls,
        model: Any,
        processor: Any,
        *,
        name: str | None = None,
        model_dir: str | os.PathLike | None = None,
        calibration: Calibration | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        hub_id: str | None = None,
        text_tower: TextTower | None = None,
    ) -> Runner:
        """A runner for a model already in memory (put it on its device and in eval mode first).

        The calibration is ``calibration`` if given, else ``model_dir/prunelens_calibration.json``
        when present, else the user's stored calibration of ``hub_id``, else the paper's values
        flagged as in ``paper_calibration``. ``text_tower`` (``texttower.load_text_tower``) lets
        CDPruner run: it adds the joint-space patch embeddings to every encoding.
        """
        adapter = adapter_for(model, processor, name=name)
        model.eval()
        if calibration is None:
            calibration = find_calibration(model_dir, adapter, hub_id)
        if calibration.source == "default-llava-1.5":
            logger.warning("uncalibrated model: %s", calibration.note)
        return cls(adapter, calibration=calibration, model_dir=model_dir, cache_size=cache_size, text_tower=text_tower)

    # -- facts ---------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.adapter.name

    @property
    def device(self) -> torch.device:
        return self.adapter.device

    @property
    def dtype(self) -> torch.dtype:
        return self.adapter.dtype

    @property
    def metadata(self) -> dict[str, Any]:
        """Plain values describing the model, its settings and its calibration (for the UI)."""
        cal = self.calibration
        return {
            "model": self.name,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            **self.adapter.describe(),
            "n_prefix_tokens": self.adapter.n_prefix_tokens,
            "calibration": dataclasses.asdict(cal),
            "calibration_source": cal.source,
            "model_dir": str(self.model_dir) if self.model_dir is not None else None,
            "cache_size": self.cache_size,
            "text_tower": None if self.text_tower is None else self.text_tower.name,
        }

    def _settings_key(self) -> str:
        info = self.adapter.describe()
        text = "" if self.text_tower is None else f"|text:{self.text_tower.name}"
        return f"{self.name}|{self.device}|{self.dtype}|{info['feature_layer']}|{info['select_strategy']}{text}"

    # -- encode ----------------------------------------------------------------------------------

    def encode(self, image: Any, *, use_cache: bool = True) -> Encoding:
        """Encode one image (PIL image, path, bytes or uint8 array); cached by content + model + settings.

        ``use_cache=False`` neither reads nor fills the cache (for one-off passes such as calibration).

        Returns:
            An ``Encoding`` whose ``inputs`` hold V (N, C), F (N, D), a (N,), Kv (N, hd), the [CLS]
            feature (C,) and the grid; the [CLS] row and keys are recomputed from the feature
            layer's own weights (the tower runs with its default attention). Images read as several
            grids (LLaVA-NeXT) have one ``GridPart`` each in ``parts`` and a ``layout``.
        """
        img = load_image(image)
        key = f"{image_digest(img)}|{self._settings_key()}"
        with self._lock:
            hit = self._cache.get(key) if use_cache else None
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        with oom_guard(self.device, "encoding an image"), torch.inference_mode():
            sync(self.device)
            start = time.perf_counter()
            readout = self.adapter.read_image(img)
            geometry = readout.geometries[0]
            if readout.layout is None:
                raw = readout.grids[0]
                inputs = pruning.PruneInputs(
                    feats_pre=raw.feats_pre,
                    feats=raw.feats,
                    cls_attn=raw.cls_attn,
                    grid=geometry.grid,
                    keys=raw.keys,
                    cls_feat=raw.cls_feat,
                )
                image_erank = pruning.effective_rank(inputs.feats)
                parts = (GridPart(readout.names[0], inputs, geometry, 0, image_erank),)
                prefix = raw.prefix
            else:
                inputs, parts = grid_parts(readout)
                image_erank = sum(part.image_erank for part in parts) / len(parts)
                prefix = torch.cat([grid.prefix for grid in readout.grids], dim=0)
            if self.text_tower is not None:
                inputs, parts = with_patch_embeds(self.text_tower, inputs, parts)
            entropy = pruning.attention_entropy(inputs.cls_attn)
            sync(self.device)
            encode_ms = (time.perf_counter() - start) * 1e3
        encoding = Encoding(
            inputs=inputs,
            geometry=geometry,
            image_erank=image_erank,
            attention_entropy=entropy,
            prefix=prefix,
            model=self.name,
            key=key,
            encode_ms=encode_ms,
            parts=parts,
            layout=readout.layout,
            rope=readout.rope,
        )
        with self._lock:
            if use_cache and self.cache_size:
                self._cache[key] = encoding
                self._cache.move_to_end(key)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return encoding

    def clear_cache(self) -> None:
        """Forget every cached encoding."""
        with self._lock:
            self._cache.clear()

    # -- select ----------------------------------------------------------------------------------

    def select(
        self, encoding: Encoding, method: str, budget: int, *, prompt: str | None = None, **params: Any
    ) -> pruning.Selection:
        """``pruning.select`` on this encoding, with the model's calibration filled in and timed.

        Calibration parameters (``erank_avg``, ``erank_lo``, ``erank_hi``) are passed to the methods
        that take them unless given in ``params``. The returned selection's ``info`` also holds
        ``select_ms`` and ``calibration_source``. With several grids the method runs in each grid
        with its share of the budget (``grids.select_grids``). A method that needs an input this
        model leaves empty (a [CLS] feature on a tower without [CLS]) is refused, naming both. An
        in-LLM method has nothing to select before the prompt runs: it is refused, pointing to ``plan``.
        A method that reads the question (CDPruner) takes ``prompt``; its ``info`` also holds
        ``text_ms``, the text tower's time (0 for a question it has encoded before; not in ``select_ms``).
        """
        self._check_encoding(encoding)
        if pruning.get_method(method).stage == "in-llm":
            raise ValueError(
                f"method {method!r} selects inside the language model, from the prompt, so nothing is selected "
                f"before generation: pass Runner.plan(encoding, {method!r}, budget) to generate, which returns "
                "the kept tokens as Generation.selection"
            )
        self.check_method(method, encoding)
        taken = pruning.method_params(method)
        calibrated = {k: v for k, v in self.calibration.method_params().items() if k in taken and k not in params}
        parts, text = encoding.parts, {}
        if reads_question(method):
            start = time.perf_counter()
            parts = question_parts(self.text_tower, encoding, prompt)
            sync(self.device)
            text = {"text_ms": (time.perf_counter() - start) * 1e3}
        sync(self.device)
        start = time.perf_counter()
        if encoding.layout is None:
            selection = pruning.select(method, parts[0].inputs, budget, **calibrated, **params)
        else:
            selection = select_grids(parts, method, budget, **calibrated, **params)
        sync(self.device)
        select_ms = (time.perf_counter() - start) * 1e3
        info = {**selection.info, "select_ms": select_ms, **text}
        if calibrated:
            info["calibration_source"] = self.calibration.source
        return dataclasses.replace(selection, info=info)

    def plan(self, encoding: Encoding, method: str, budget: int, **params: Any) -> InLLMPlan | QuestionPlan:
        """A checked request for a ``method`` that chooses from the question, on this encoding: an
        in-LLM one (FastV, DART at layer K) or one that reads the question's text embedding (CDPruner).

        The budget (visual tokens kept from decoder layer ``layer`` on; 0 for CDPruner) and the
        parameters are checked by the registry, an in-LLM layer against this model's decoder layers;
        ``generate`` and ``generate_many`` run it and return the tokens it kept as ``Generation.selection``.
        """
        self._check_encoding(encoding)
        spec = pruning.get_method(method)
        if spec.stage != "in-llm" and not reads_question(method):
            raise ValueError(f"method {method!r} selects before the language model: use Runner.select")
        self.check_method(method, encoding)
        if reads_question(method):
            return question_plan(spec, self.name, encoding, budget, params)
        n_layers = self.adapter.model.get_decoder().config.num_hidden_layers
        return plan_request(spec, n_layers, self.name, encoding, budget, params)

    def check_method(self, method: str, encoding: Encoding) -> None:
        """Refuse a method that ``needs`` an input this model leaves empty (in any grid), or an in-LLM
        method on a model whose decoder or positions the in-LLM loop does not drive, naming both
        (``checks.check_method``)."""
        check_method(self, method, encoding)

    # -- generate --------------------------------------------------------------------------------

    def visual_tokens(self, encoding: Encoding, selection: pruning.Selection | None = None) -> torch.Tensor:
        """The (P + K, D) visual embeddings the LLM receives: prefix, then kept/merged tokens in order.

        With several grids the order is the stock one (``Encoding.layout``); newlines are left out.
        """
        return self._visual(encoding, selection, newlines=False)[0]

    def image_sequence(
        self, encoding: Encoding, selection: pruning.Selection | None = None
    ) -> tuple[torch.Tensor, int]:
        """What the LLM receives in place of the image placeholder, newlines included, and how many
        newlines (0 for single-grid models, where this is ``visual_tokens``)."""
        return self._visual(encoding, selection, newlines=True)

    def _visual(
        self, encoding: Encoding, selection: pruning.Selection | None, *, newlines: bool
    ) -> tuple[torch.Tensor, int]:
        """The visual embeddings (with the layout's newlines when ``newlines``) and how many newlines."""
        self._check_encoding(encoding)
        inputs = encoding.inputs
        layout = encoding.layout
        n_layout = 0
        if selection is None:
            tokens = inputs.feats
            if layout is not None:
                with torch.inference_mode():
                    tokens, n_layout = visual_sequence(layout, inputs.feats, None, newlines=newlines)
        else:
            if not isinstance(selection, pruning.Selection):
                raise ValueError(f"selection must be a pruning.Selection or None, got {type(selection).__name__}")
            keep = selection.keep
            n = inputs.n_tokens
            if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= n):
                raise ValueError(
                    f"selection {selection.method!r} keeps patch indices in "
                    f"[{int(keep.min())}, {int(keep.max())}] but this encoding has N = {n} patches: "
                    "was it made for another image or model?"
                )
            if selection.tokens is None and keep.numel() == 0:
                raise ValueError(f"selection {selection.method!r} keeps no tokens")
            with torch.inference_mode():
                if layout is not None and selection.tokens is None:
                    tokens, n_layout = visual_sequence(layout, inputs.feats, keep, newlines=newlines)
                else:
                    tokens = pruning.apply_selection(inputs, selection, project=self.adapter.project)
            width = inputs.feats.shape[1]
            if tokens.dim() != 2 or tokens.shape[1] != width:
                raise ValueError(
                    f"selection {selection.method!r} gives tokens of shape {tuple(tokens.shape)}; "
                    f"the LLM takes (K, {width})"
                )
        return torch.cat([encoding.prefix, tokens.to(encoding.prefix.dtype)], dim=0), n_layout

    def generate(
        self,
        encoding: Encoding,
        prompt: str,
        selection: pruning.Selection | InLLMPlan | QuestionPlan | None = None,
        options: GenerationOptions | None = None,
        *,
        cancel: threading.Event | None = None,
    ) -> Generation:
        """Answer ``prompt`` about the encoded image from only ``selection``'s visual tokens.

        ``selection=None`` feeds all N tokens (the unpruned model); an ``InLLMPlan`` (``plan``)
        prunes inside the language model and a ``QuestionPlan`` selects with ``prompt`` first; the
        answer's ``selection`` then says what either kept.
        ``options`` (default: greedy, ``DEFAULT_MAX_NEW_TOKENS``) sets the decoding. Setting
        ``cancel`` stops decoding after the current token (``finish_reason == "cancelled"``).
        """
        return self.generate_many(encoding, prompt, [selection], options, cancel=cancel)[0]

    def generate_many(
        self,
        encoding: Encoding,
        prompt: str,
        selections: Sequence[pruning.Selection | InLLMPlan | QuestionPlan | None],
        options: GenerationOptions | None = None,
        *,
        cancel: threading.Event | None = None,
        progress: Callable[[int, str], None] | None = None,
    ) -> list[Generation]:
        """Answers for several selections of one image, rows of close length batched (left padding).

        With greedy decoding each answer equals the one ``generate`` gives for that selection
        alone. Timings are those of the call a row ran in (``timings["batch_size"]``); in-LLM
        plans run one row at a time (their layers' caches differ in length). Setting ``cancel``
        stops decoding after the current token. ``progress(i, text)`` is called after every new
        token of row ``i`` with its answer so far (from the generating thread), for showing
        answers as they are written.
        """
        if isinstance(selections, pruning.Selection) or not isinstance(selections, Sequence) or not selections:
            raise ValueError("selections must be a non-empty list of pruning.Selection (or None for all tokens)")
        options = as_options(options)
        if cancel is not None and not isinstance(cancel, threading.Event):
            raise ValueError(f"cancel must be a threading.Event or None, got {type(cancel).__name__}")
        asked = {i: sel for i, sel in enumerate(selections) if isinstance(sel, QuestionPlan)}
        made = {i: self.select(encoding, p.method, p.budget, prompt=prompt, **p.params) for i, p in asked.items()}
        selections = [made.get(i, sel) for i, sel in enumerate(selections)]
        rows = [self._prepare_row(encoding, prompt, selection, options) for selection in selections]
        batched = [i for i, row in enumerate(rows) if isinstance(row, Row)]
        lengths = [rows[i].embeds.shape[0] for i in batched]
        groups = [[batched[j] for j in g] for g in group_rows(lengths, self.padding_share)]
        groups = sorted(groups + [[i] for i, row in enumerate(rows) if isinstance(row, PlanRow)], key=lambda g: g[0])
        out: list[Generation | None] = [None] * len(rows)
        eos = set(self.adapter.eos_token_ids())
        decode = self.adapter.tokenizer.decode
        for group in groups:
            if cancel is not None and cancel.is_set():  # the rest never starts
                for i in group:
                    row = rows[i].row if isinstance(rows[i], PlanRow) else rows[i]
                    out[i] = cancelled_generation(encoding, row, len(group))
                continue
            streamer = None
            if progress is not None:
                streamer = RowTokens(group, eos, lambda i, ids: progress(i, decode(ids, skip_special_tokens=True)))
            if isinstance(rows[group[0]], PlanRow):
                gens = [run_plan(self.adapter, encoding, rows[group[0]], options, streamer=streamer, cancel=cancel)]
            else:
                gens = run_rows(
                    self.adapter, encoding, [rows[i] for i in group], options, streamer=streamer, cancel=cancel
                )
            for i, gen in zip(group, gens):
                out[i] = dataclasses.replace(gen, selection=made[i]) if i in made else gen
        return out

    # -- generation internals --------------------------------------------------------------------

    def _check_encoding(self, encoding: Any) -> None:
        if not isinstance(encoding, Encoding):
            raise ValueError(f"expected an Encoding from Runner.encode, got {type(encoding).__name__}")
        if encoding.model != self.name or encoding.inputs.device != self.device:
            raise ValueError(
                f"the encoding was made by {encoding.model!r} on {encoding.inputs.device}; this runner is "
                f"{self.name!r} on {self.device}"
            )

    def prompt_room(self, max_new_tokens: int) -> int:
        """How many prompt tokens fit beside the most visual tokens an image gives and ``max_new_tokens``."""
        n_visual = self.adapter.max_image_tokens
        template = self.adapter.prompt_ids("").shape[0] - 1  # the chat template's own tokens
        return int(self.adapter.context_length) - n_visual - int(max_new_tokens) - template

    def check_prompt(self, prompt: Any, max_new_tokens: int) -> str:
        """``prompt`` stripped, or a ``ValueError`` when it is empty or does not fit ``prompt_room``.

        Checked up front so that a long prompt is refused with the room it has, not deep inside a
        generation; ``generate`` checks the exact positions of each row again.
        """
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the prompt is empty: type a question about the image")
        prompt = prompt.strip()
        n = self.adapter.prompt_ids(prompt).shape[0] - self.adapter.prompt_ids("").shape[0]
        room = self.prompt_room(max_new_tokens)
        if n > room:
            raise ValueError(
                f"the prompt is {n} tokens; this model has room for {room} beside the image's visual tokens "
                f"and {max_new_tokens} answer tokens: shorten it"
            )
        return prompt

    def _prepare_row(
        self,
        encoding: Encoding,
        prompt: str,
        selection: pruning.Selection | InLLMPlan | None,
        options: GenerationOptions,
    ) -> Row | PlanRow:
        """Validate one request and splice its visual tokens (and newlines) into the prompt's embeddings
        (every one of them for an in-LLM plan, whose layers from K on then see only the kept ones)."""
        if isinstance(selection, InLLMPlan):
            visual, n_layout = self.image_sequence(encoding, None)
            row = prepare_row(self.adapter, self.name, visual, prompt, None, options, n_layout=n_layout)
            return plan_row(row, selection, encoding, visual.shape[0])
        visual, n_layout = self.image_sequence(encoding, selection)
        rope = encoding.rope
        return prepare_row(
            self.adapter,
            self.name,
            visual,
            prompt,
            selection,
            options,
            n_layout=n_layout,
            rope_offsets=None if rope is None else self._rope_offsets(encoding, selection),
            rope_span=0 if rope is None else rope.span,
        )

    def _rope_offsets(self, encoding: Encoding, selection: pruning.Selection | None) -> torch.Tensor:
        """(3, K) the M-RoPE offsets of the tokens a row keeps: their own, never renumbered."""
        offsets = encoding.rope.offsets
        if selection is None:
            return offsets
        if selection.tokens is not None:
            raise ValueError(f"selection {selection.method!r} merges tokens, which have no M-RoPE position")
        return offsets.index_select(1, selection.keep.to(offsets.device))
