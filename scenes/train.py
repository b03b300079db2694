"""Train the embedded tiny LLaVA from a fixed seed: ``python -m scenes.train``.

Two stages, LLaVA-style:

1. **Vision pretraining.** The CLIP tower learns from scenes with exact labels. From the [CLS]
   token of the feature layer (``hidden_states[-2]``, the layer the LLM reads and whose [CLS]
   attention the pruning methods use) it predicts which (shape, colour) pairs and shapes are present
   and which word is written, so [CLS] must gather the objects; from every patch token of that layer
   it predicts the patch's colour (or background) and, on object and word patches, the shape or
   word, and whether it is its object's anchor patch (its first in raster order;
   ``TrainConfig.anchor_weight``), so that one token per instance says "one more". The last layer's
   pooled [CLS] gets the same presence loss so it is trained too. The heads are thrown away
   afterwards.
2. **Instruction tuning, as LLaVA does it.** The tower is frozen; the projector and the Llama
   decoder learn the canonical tasks (caption, existence, colour, counting, word) with the loss on
   answer tokens only, using shared-prefix packing (``scenes.data.pack_sequences``). The target is
   always the full image's answer. As regularisation, ``TrainConfig.token_dropout`` of the images
   keep only a random subset of their visual tokens with the *same* full-image answers (never
   answers rewritten to the kept patches), so the decoder meets inputs of any length and, where
   evidence is missing, answers from what it has learnt co-occurs, as an LVLM's language prior
   does. A grounding loss makes head 0 of every decoder layer after the first look at the object
   a question or caption phrase is about (``TrainConfig.ground_weight``), and head ``COUNT_HEAD``
   share its attention equally between ``<s>`` and the anchor patch of every instance a count
   question names (all of it on ``<s>`` for an absent shape), so the count is in what that head
   reads. A reading loss makes heads ``READ_HEADS`` of the first decoder layer carry a question's
   shape word and colour word into its last prompt token (``TrainConfig.read_weight``), where the
   answer and the grounding queries start. These losses shape only training; the exported model is
   a plain LLaVA.

Every scene is drawn on the fly from the step number, so the run is a pure function of the seed and
``--resume`` continues from the last checkpoint in ``--run-dir`` exactly. The result is saved with
``save_pretrained`` (weights in safetensors) beside the processor in ``--out``.

Examples::

    python -m scenes.train --threads 2           # the shipped weights (see the model card for the time)
    python -m scenes.train --resume              # continue an interrupted run
    python -m scenes.train --smoke --out /tmp/m  # a tiny model, a few steps per stage
    python -m scenes.train --steps 300 --out /tmp/m --run-dir /tmp/r  # a short pilot of the recipe
    python -m scenes.train --vision-from assets/models/prunelens-tiny-llava --run-dir runs/s2  # stage 2 only
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import nn
from tqdm import tqdm

from scenes.data import (
    PackedBatch,
    VisionBatch,
    pack_sequences,
    patch_anchors,
    patch_labels,
    patch_owners,
    pixel_tensor,
    random_keep,
    training_scene,
    vision_batch,
)
from scenes.generate import Scene
from scenes.model import ModelConfig, build_model, grid_size
from scenes.tasks import Sample, make_samples, wrong_colour_question
from scenes.tokenizer import build_processor, build_tokenizer
from scenes.vocabulary import COLORS, SHAPES, WORDS

__all__ = [
    "COUNT_HEAD",
    "READ_HEADS",
    "AttentionInputs",
    "TrainConfig",
    "VisionHeads",
    "anchor_loss",
    "feature_states",
    "grounding_loss",
    "head_attention",
    "main",
    "reading_loss",
    "sincos_positions",
    "text_loss",
    "text_row",
    "train",
    "wrong_colour_questions",
]

DEFAULT_NAME = "prunelens-tiny-llava"
STAGE1_SEED_BASE = 0
STAGE2_SEED_BASE = 50_000_000
COUNT_HEAD = 1
"""The decoder attention head whose attention the count share queries supervise (head 0 serves the
other grounding queries: sharing it made wrong-colour questions get "Yes", the model card)."""
READ_HEADS = (2, 3)
"""The first decoder layer's heads that the reading queries supervise (``reading_loss``): the first
reads a question's shape word, the second its colour word, into the question's last token."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run (the model card gives what each part of the recipe measured).

    Attributes:
        model: architecture sizes.
        seed: initialisation seed (data seeds come from the step number).
        vision_steps, vision_batch, vision_lr: stage 1 schedule.
        text_steps, text_batch, text_lr: stage 2 schedule.
        max_samples: task segments packed per image in stage 2 (caption always included). Packing
            is cheap next to the 576 image tokens, so the default packs every sample of a scene.
            Every sample weighs the same in the loss, a caption's tokens sharing one sample's weight.
        token_dropout: stage-2 share of images that keep only a random subset of their visual tokens
            (``scenes.data.random_keep``) while their answers stay the full image's.
        ground_weight: weight of the stage-2 grounding loss (``grounding_loss``).
        read_weight: weight of the stage-2 reading loss (``reading_loss``).
        anchor_weight: weight of the stage-1 per-patch target "is this object patch its object's
            anchor patch" (``scenes.data.patch_anchors``), which the count shares read.
        wrong_colour_questions: wrong-colour existence questions ("Is there a purple star?" when
            the star is green; answer "No") per stage-2 scene, against two coloured positives.
        warmup: fraction of each stage's steps with linear warm-up (then cosine decay).
        checkpoint_every: steps between checkpoints.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    seed: int = 0
    vision_steps: int = 1500
    vision_batch: int = 16
    vision_lr: float = 1.5e-3
    text_steps: int = 3000
    text_batch: int = 8
    text_lr: float = 1e-3
    max_samples: int = 16
    token_dropout: float = 0.3
    ground_weight: float = 0.5
    read_weight: float = 0.5
    anchor_weight: float = 1.0
    wrong_colour_questions: int = 2
    warmup: float = 0.05
    checkpoint_every: int = 100


SMOKE = TrainConfig(
    model=ModelConfig(
        vision_hidden=32,
        vision_layers=2,
        vision_heads=2,
        text_hidden=64,
        text_layers=1,
        text_intermediate=128,
    ),
    vision_steps=8,
    vision_batch=4,
    vision_lr=3e-3,
    text_steps=8,
    text_batch=2,
    text_lr=3e-3,
    max_samples=4,
    checkpoint_every=4,
)


class VisionHeads(nn.Module):
    """Stage-1 probes: presence/word from [CLS], shape/colour/word class per patch, and whether an
    object patch is its object's anchor patch (weighted by ``anchor_weight``)."""

    def __init__(self, width: int, anchor_weight: float = 1.0) -> None:
        super().__init__()
        self.anchor_weight = anchor_weight
        n_presence = len(SHAPES) * len(COLORS) + len(SHAPES)
        self.presence = nn.Linear(width, n_presence)
        self.pooled_presence = nn.Linear(width, n_presence)
        self.word = nn.Linear(width, 1 + len(WORDS))
        self.patch = nn.Linear(width, (1 + len(SHAPES)) + (1 + len(COLORS)) + (1 + len(WORDS)))
        self.anchor = nn.Linear(width, 1)

    def loss(self, feature: torch.Tensor, pooled: torch.Tensor, batch: VisionBatch) -> dict[str, torch.Tensor]:
        """Losses from feature-layer states (B, 1 + N, C) and the pooled last-layer [CLS] (B, C)."""
        cls, patches = feature[:, 0], feature[:, 1:]  # (B, C), (B, N, C)
        n_shape, n_color = 1 + len(SHAPES), 1 + len(COLORS)
        logits = self.patch(patches)  # (B, N, n_shape + n_color + n_word)
        shape_logits = logits[..., :n_shape]
        color_logits = logits[..., n_shape : n_shape + n_color]
        word_logits = logits[..., n_shape + n_color :]
        losses = {
            "presence": nnf.binary_cross_entropy_with_logits(self.presence(cls), batch.presence) * 10,
            "pooled": nnf.binary_cross_entropy_with_logits(self.pooled_presence(pooled), batch.presence) * 10,
            "word": nnf.cross_entropy(self.word(cls), batch.word),
            # colour (background included) on every patch; shape and word only where there is one,
            # so the few object patches are not drowned by the background majority
            "patch_color": nnf.cross_entropy(color_logits.flatten(0, 1), batch.patch_color.flatten()),
            "patch_shape": _masked_ce(shape_logits, batch.patch_shape, batch.patch_shape > 0),
            "patch_word": _masked_ce(word_logits, batch.patch_word, batch.patch_word > 0),
        }
        losses["patch_anchor"] = self.anchor_weight * anchor_loss(self.anchor(patches)[..., 0], batch)
        return losses


def anchor_loss(logits: torch.Tensor, batch: VisionBatch) -> torch.Tensor:
    """Balanced binary cross-entropy of (B, N) anchor logits over object patches: the anchors and
    the other patches of the objects weigh half each, as anchors are about one patch in ten."""
    objects = batch.patch_shape > 0  # (B, N)
    target = batch.patch_anchor.float()
    losses = nnf.binary_cross_entropy_with_logits(logits, target, reduction="none")  # (B, N)
    anchor, rest = objects & batch.patch_anchor, objects & ~batch.patch_anchor
    return 0.5 * (losses[anchor].mean() if anchor.any() else 0.0) + 0.5 * (losses[rest].mean() if rest.any() else 0.0)


def _masked_ce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (B, N, K) logits against (B, N) targets over the (B, N) ``mask`` only."""
    losses = nnf.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")  # (B * N,)
    weights = mask.flatten().float()
    return (losses * weights).sum() / weights.sum().clamp(min=1.0)


def sincos_positions(grid: tuple[int, int], dim: int, scale: float = 0.5) -> torch.Tensor:
    """2-D sine-cosine position table (1 + N, dim) for [CLS] (zeros) + the raster-ordered grid.

    Half the channels encode the row, half the column, each as sin/cos pairs over geometric
    frequencies (as in MAE). Used to *initialise* the tower's learned position embeddings, which
    lets attention find neighbouring patches early instead of after a long plateau.
    """
    if dim % 4:
        raise ValueError(f"sincos positions need a width divisible by 4, got {dim}")
    rows, cols = grid
    freqs = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (dim/4,)
    y, x = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    parts = []
    for coord in (y.flatten(), x.flatten()):
        angles = coord[:, None].double() * freqs[None]  # (N, dim/4)
        parts += [angles.sin(), angles.cos()]
    table = torch.cat(parts, dim=1) * scale  # (N, dim)
    return torch.cat([torch.zeros(1, dim, dtype=table.dtype), table]).float()


def _lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up then cosine decay to 5 % of the peak."""
    warm = max(1, int(total * warmup))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def text_loss(
    model: nn.Module,
    features: torch.Tensor,
    batch: PackedBatch,
    *,
    ground_weight: float = 0.0,
    read_weight: float = 0.0,
    parts: dict[str, float] | None = None,
) -> torch.Tensor:
    """Answer-token cross-entropy of a packed batch, the mean over samples of each sample's token
    mean (``PackedBatch.weights``), so a one-word answer counts as much as a whole caption; plus
    ``ground_weight`` times the grounding loss (``grounding_loss``) when the batch has grounding
    queries; count share queries supervise head ``COUNT_HEAD``, the others head 0; plus
    ``read_weight`` times the reading loss of the first layer's ``READ_HEADS`` (``reading_loss``).

    ``features`` are the kept feature-layer patch states of all rows concatenated, (T, C) with T the
    number of image tokens in ``batch`` (row by row, raster order within a row). ``parts``, when
    given, receives the terms' values as ``text``, ``ground`` and ``read``.
    """
    image_features = model.model.multi_modal_projector(features)  # (T, D)
    embeds = model.get_input_embeddings()(batch.input_ids)  # (B, L, D)
    image_mask = batch.input_ids == model.config.image_token_id  # (B, L)
    embeds = embeds.masked_scatter(image_mask[..., None], image_features.to(embeds.dtype))
    layers = model.model.language_model.layers
    supervised = [layer.self_attn for layer in (layers[1:] or layers)]
    grounded = ground_weight > 0 and len(batch.ground_index) > 0
    read = read_weight > 0 and len(batch.read_index) > 0
    tapped = (supervised if grounded else []) + ([layers[0].self_attn] if read else [])
    with AttentionInputs(tapped) as taps:
        hidden = model.model.language_model(
            inputs_embeds=embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids
        ).last_hidden_state  # (B, L, D)
    keep = batch.labels != -100  # (B, L)
    logits = model.lm_head(hidden[keep])  # (T, V)
    weights = batch.weights[keep]  # (T,), summing to the number of samples
    loss = (nnf.cross_entropy(logits, batch.labels[keep], reduction="none") * weights).sum() / weights.sum()
    if parts is not None:
        parts["text"] = loss.item()
    if grounded:
        probs = [head_attention(m, *taps.of(m), batch) for m in supervised]
        count_probs = None
        if bool((batch.ground_share.sum(-1) > 0).any()):
            count_probs = [head_attention(m, *taps.of(m), batch, head=COUNT_HEAD) for m in supervised]
        ground = grounding_loss(probs, batch, count_probs)
        loss = loss + ground_weight * ground
        if parts is not None:
            parts["ground"] = ground.item()
    if read:
        reading = reading_loss(layers[0].self_attn, *taps.of(layers[0].self_attn), batch)
        loss = loss + read_weight * reading
        if parts is not None:
            parts["read"] = reading.item()
    return loss


def reading_loss(
    attn: nn.Module, hidden: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], batch: PackedBatch
) -> torch.Tensor:
    """Mean over the batch's reading queries of −log(the attention mass that the query's
    ``READ_HEADS`` head of the first decoder layer puts on its word).

    A question's last prompt token is where the answer and the grounding queries start, and in the
    first layer it can only read the words themselves. Without this target that layer's few heads
    settle on fixed positions of the common prompts and read no colour word at all, so "Is there a
    red star?" and "Is there a blue star?" give the same answer (the model card).
    """
    losses = []
    for part, head in enumerate(READ_HEADS):
        chosen = batch.read_index[:, 2] == part
        if bool(chosen.any()):
            p = head_attention(attn, hidden, cos_sin, batch, head=head, queries=batch.read_index[chosen, :2])
            losses.append(-torch.log((p * batch.read_mask[chosen]).sum(-1) + 1e-6))
    return torch.cat(losses).mean()


class AttentionInputs:
    """Context manager recording the (hidden states, (cos, sin)) each given attention module receives:
    ``inputs`` in call order, ``of(module)`` by module (each module is hooked once)."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = list(dict.fromkeys(modules))
        self.inputs: list[tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = []
        self._by_module: dict[int, tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = {}
        self._handles: list = []

    def __enter__(self) -> AttentionInputs:
        for module in self.modules:
            self._handles.append(module.register_forward_pre_hook(self._record, with_kwargs=True))
        return self

    def _record(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        self.inputs.append((hidden, kwargs["position_embeddings"]))
        self._by_module[id(module)] = self.inputs[-1]

    def of(self, module: nn.Module) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """What ``module`` received in the forward pass (its last call)."""
        return self._by_module[id(module)]

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()


def head_attention(
    attn: nn.Module,
    hidden: torch.Tensor,
    cos_sin: tuple[torch.Tensor, torch.Tensor],
    batch: PackedBatch,
    head: int = 0,
    queries: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention probabilities (G, L) of one Llama attention head at the batch's grounding queries
    (or at the (G, 2) (row, position) ``queries``), recomputed from the module's input ``hidden``
    (B, L, D) and rotary ``cos_sin`` (each (B, L, d)).

    Equal to that head's rows of eager attention (tested), at the cost of G query rows instead of
    B·H·L: the decoder itself runs with its fast attention and keeps no probabilities.
    """
    d = attn.head_dim
    index = batch.ground_index if queries is None else queries
    rows, pos = index[:, 0], index[:, 1]
    kv_head = head // attn.num_key_value_groups
    q = nnf.linear(hidden[rows, pos], attn.q_proj.weight[head * d : (head + 1) * d], _rows(attn.q_proj.bias, head, d))
    k = nnf.linear(hidden, attn.k_proj.weight[kv_head * d : (kv_head + 1) * d], _rows(attn.k_proj.bias, kv_head, d))
    cos, sin = cos_sin
    q = q * cos[rows, pos] + _rotate_half(q) * sin[rows, pos]  # (G, d)
    k = k * cos + _rotate_half(k) * sin  # (B, L, d)
    scores = torch.einsum("gd,gld->gl", q, k[rows]) * attn.scaling  # (G, L)
    allowed = batch.attention_mask[rows, 0, pos]  # (G, L)
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1)


def _rows(bias: torch.Tensor | None, head: int, d: int) -> torch.Tensor | None:
    return None if bias is None else bias[head * d : (head + 1) * d]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def grounding_loss(
    probs: Sequence[torch.Tensor],
    batch: PackedBatch,
    count_probs: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Mean over grounding queries and supervised layers of each query's grounding loss; ``probs``
    holds each layer's supervised head's (G, L) probabilities, and ``count_probs`` (when given,
    one per layer too) those of the head the count queries supervise instead.

    A plain query's loss is −log(the attention mass the head puts on its target patches): it does
    not vanish when a head is confidently wrong, since its gradient on the target logits is the
    head's distribution renormalised over the target. A count query (``PackedBatch.ground_share``)
    is asked for a given distribution instead, and its loss is KL(share ‖ head), zero when the head
    gives ``<s>`` and each instance of the shape the same share.

    Head 0 of every decoder layer after the first is supervised (of the first, when it is the
    only one), since the query token must have read the question's words before it can look for
    their object.
    """
    share = batch.ground_share  # (G, L)
    counted = share.sum(-1) > 0  # (G,)
    entropy = torch.where(share > 0, share * torch.log(share.clamp(min=1e-12)), 0.0).sum(-1)  # (G,)
    losses = []
    if count_probs is not None and len(count_probs) != len(probs):
        raise ValueError(f"count_probs has {len(count_probs)} layers, probs {len(probs)}")
    for i, p in enumerate(probs):
        mass = -torch.log((p * batch.ground_mask).sum(-1) + 1e-6)  # (G,)
        c = p if count_probs is None else count_probs[i]
        kl = entropy - (share * torch.log(c + 1e-6)).sum(-1)  # (G,)
        losses.append(torch.where(counted, kl, mass).mean())
    return torch.stack(losses).mean()


def wrong_colour_questions(scene: Scene, rng: np.random.Generator, n: int) -> list[Sample]:
    """Up to ``n`` more ``scenes.tasks.wrong_colour_question`` draws for ``scene``; none for a scene
    without objects, and none for a draw whose shape has every colour."""
    questions = [wrong_colour_question(scene, rng) for _ in range(max(n, 0) if scene.objects else 0)]
    return [q for q in questions if q is not None]


def text_row(scene: Scene, cfg: TrainConfig) -> tuple[list[Sample], np.ndarray, tuple[np.ndarray, ...]]:
    """One stage-2 row of ``scene``: its samples, the kept patch indices (K,) and the kept patches'
    grounding targets (``scenes.data.pack_sequences``).

    With probability ``cfg.token_dropout`` only a random subset of the patches is kept
    (``scenes.data.random_keep``); the samples are the full image's either way (the caption first,
    then up to ``cfg.max_samples - 1`` others in random order, then the extra wrong-colour
    questions), as LLaVA's targets never describe a pruned input. Rows that keep every patch ground
    their count questions on the instances' anchor patches. A pure function of ``scene.seed``.
    """
    rows, cols = grid_size()
    rng = np.random.default_rng([scene.seed, 0x7A5C])
    keep = np.arange(rows * cols)
    if rng.random() < cfg.token_dropout:
        keep = random_keep(rng, (rows, cols))
    samples = make_samples(scene, rng)
    caption, rest = samples[0], samples[1:]
    order = rng.permutation(len(rest))[: cfg.max_samples - 1]
    extra = wrong_colour_questions(scene, rng, cfg.wrong_colour_questions - 1)
    labels = patch_labels(scene)
    if len(keep) == rows * cols:
        labels = (*labels, np.where(patch_anchors(scene), patch_owners(scene), 0))
    return [caption] + [rest[i] for i in order] + extra, keep, tuple(part[keep] for part in labels)


def feature_states(model: nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(feature-layer states (B, 1 + N, C), pooled last-layer [CLS] (B, C)) of the vision tower."""
    out = model.model.vision_tower(pixels, output_hidden_states=True)
    return out.hidden_states[model.config.vision_feature_layer], out.pooler_output


def _save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _exported_tower(path: Path) -> dict[str, torch.Tensor]:
    """The vision tower's state dict of an exported model folder (``save_pretrained`` output)."""
    from transformers import LlavaForConditionalGeneration

    if not (Path(path) / "config.json").is_file():
        raise ValueError(f"--vision-from {path}: not an exported model folder (no config.json)")
    return LlavaForConditionalGeneration.from_pretrained(path).model.vision_tower.state_dict()


def train(
    cfg: TrainConfig,
    out: Path,
    run_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    vision_from: Path | None = None,
) -> dict:
    """Run (or resume) both stages and export to ``out``.

    ``stop_after`` ends this invocation (after a checkpoint) once that many steps have run, so a
    run can be done in chunks with ``resume=True``. ``vision_from`` (an exported model folder of
    the same architecture) skips stage 1 and takes that model's vision tower instead: stage 1 is a
    pure function of the seed and ``TrainConfig``'s stage-1 fields, so a tower from a run with the
    same ones is bit for bit what stage 1 would make, and a stage-2 change need not redo it.
    Returns ``{"history", "wall_time_s", "done"}``.
    """
    if cfg.anchor_weight <= 0:
        raise ValueError(f"anchor_weight must be > 0 (the count shares read the anchors), got {cfg.anchor_weight}")
    if cfg.wrong_colour_questions < 1:
        raise ValueError(f"wrong_colour_questions must be >= 1, got {cfg.wrong_colour_questions}")
    if not 0 <= cfg.token_dropout <= 1:
        raise ValueError(f"token_dropout must be in [0, 1], got {cfg.token_dropout}")
    if cfg.model.text_heads <= max(COUNT_HEAD, *READ_HEADS):
        raise ValueError(
            f"the decoder needs more than {max(COUNT_HEAD, *READ_HEADS)} attention heads, got {cfg.model.text_heads}"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    model = build_model(cfg.model, tokenizer, seed=cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        heads = VisionHeads(cfg.model.vision_hidden, cfg.anchor_weight)
    state = {"stage": 1, "step": 0, "history": [], "elapsed": 0.0}
    opt_state = None
    if resume and ckpt_path.exists():
        saved = torch.load(ckpt_path, weights_only=False)
        if saved["config"] != asdict(cfg):
            raise ValueError(f"checkpoint {ckpt_path} was made with another config: {saved['config']}")
        model.load_state_dict(saved["model"])
        heads.load_state_dict(saved["heads"])
        state = saved["state"]
        opt_state = saved["optimizer"]
    if vision_from is not None and state["stage"] == 1 and state["step"] == 0:
        model.model.vision_tower.load_state_dict(_exported_tower(vision_from))
        state["stage"] = 2
    rows, cols = grid_size()
    if state["stage"] == 1 and state["step"] == 0:
        with torch.no_grad():
            model.model.vision_tower.embeddings.position_embedding.weight.copy_(
                sincos_positions((rows, cols), cfg.model.vision_hidden)
            )
    started = time.time() - state["elapsed"]
    budget = [stop_after if stop_after is not None else -1]

    def out_of_budget() -> bool:
        budget[0] -= 1
        return budget[0] == 0

    def checkpoint(optimizer: torch.optim.Optimizer | None) -> None:
        state["elapsed"] = time.time() - started
        _save(
            ckpt_path,
            {
                "config": asdict(cfg),
                "model": model.state_dict(),
                "heads": heads.state_dict(),
                "optimizer": None if optimizer is None else optimizer.state_dict(),
                "state": state,
            },
        )

    if state["stage"] == 1:
        model.train()
        params = list(model.model.vision_tower.parameters()) + list(heads.parameters())
        optimizer = torch.optim.AdamW(params, lr=cfg.vision_lr, weight_decay=0.05)
        if opt_state is not None:
            optimizer.load_state_dict(opt_state)
        opt_state = None
        bar = tqdm(range(state["step"], cfg.vision_steps), desc="stage 1 vision", disable=not progress)
        for step in bar:
            seeds = range(STAGE1_SEED_BASE + step * cfg.vision_batch, STAGE1_SEED_BASE + (step + 1) * cfg.vision_batch)
            batch = vision_batch([training_scene(s) for s in seeds])
            for group in optimizer.param_groups:
                group["lr"] = cfg.vision_lr * _lr_factor(step, cfg.vision_steps, cfg.warmup)
            feature, pooled = feature_states(model, batch.pixels)
            losses = heads.loss(feature, pooled, batch)
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            record = {"stage": 1, "step": step, "loss": loss.item()} | {k: v.item() for k, v in losses.items()}
            state["history"].append(record)
            state["step"] = step + 1
            bar.set_postfix(loss=f"{record['loss']:.3f}")
            if out_of_budget():
                checkpoint(optimizer)
                return {"history": state["history"], "wall_time_s": time.time() - started, "done": False}
            if (step + 1) % cfg.checkpoint_every == 0:
                checkpoint(optimizer)
        state["stage"], state["step"] = 2, 0
        checkpoint(None)

    model.model.vision_tower.requires_grad_(False)
    model.model.vision_tower.eval()
    trainable = [p for n, p in model.named_parameters() if not n.startswith("model.vision_tower.")]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.text_lr, weight_decay=0.01)
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)
    model.model.language_model.train()
    bar = tqdm(range(state["step"], cfg.text_steps), desc="stage 2 text", disable=not progress)
    for step in bar:
        seeds = range(STAGE2_SEED_BASE + step * cfg.text_batch, STAGE2_SEED_BASE + (step + 1) * cfg.text_batch)
        scenes = [training_scene(s) for s in seeds]
        with torch.no_grad():
            feature, _ = feature_states(model, pixel_tensor(scenes))  # (B, 1 + N, C)
        sample_lists, kept, targets = [], [], []
        for b, scene in enumerate(scenes):
            samples, keep, patch_targets = text_row(scene, cfg)
            sample_lists.append(samples)
            kept.append(feature[b, 1:][torch.from_numpy(keep)])  # (K_b, C)
            targets.append(patch_targets)
        batch = pack_sequences(tokenizer, sample_lists, [len(k) for k in kept], targets)
        for group in optimizer.param_groups:
            group["lr"] = cfg.text_lr * _lr_factor(step, cfg.text_steps, cfg.warmup)
        parts: dict[str, float] = {}
        loss = text_loss(
            model,
            torch.cat(kept),
            batch,
            ground_weight=cfg.ground_weight,
            read_weight=cfg.read_weight,
            parts=parts,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        record = {"stage": 2, "step": step, "loss": loss.item()} | parts
        state["history"].append(record)
        state["step"] = step + 1
        bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k in ("loss", "ground", "read")})
        if out_of_budget():
            checkpoint(optimizer)
            return {"history": state["history"], "wall_time_s": time.time() - started, "done": False}
        if (step + 1) % cfg.checkpoint_every == 0:
            checkpoint(optimizer)
    state["stage"] = 3
    checkpoint(optimizer)

    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    summary = {
        "config": asdict(cfg),
        "wall_time_s": time.time() - started,
        "threads": torch.get_num_threads(),
        "vision_from": None if vision_from is None else str(vision_from),
        "final_losses": state["history"][-20:],
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (run_dir / "history.json").write_text(json.dumps(state["history"]))
    return {"history": state["history"], "wall_time_s": summary["wall_time_s"], "done": True}


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("assets/models") / DEFAULT_NAME)
    parser.add_argument("--run-dir", type=Path, default=Path("runs") / DEFAULT_NAME)
    parser.add_argument("--resume", action="store_true", help="continue from --run-dir/checkpoint.pt")
    parser.add_argument("--smoke", action="store_true", help="tiny model, a few steps per stage")
    parser.add_argument("--steps", type=int, default=None, help="steps of each stage (a short run)")
    parser.add_argument("--vision-steps", type=int, default=None)
    parser.add_argument("--text-steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--stop-after", type=int, default=None, help="end after this many steps (resumable)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--vision-from", type=Path, default=None, help="skip stage 1: take this exported model's vision tower"
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = SMOKE if args.smoke else TrainConfig()
    if args.steps is not None:
        cfg = replace(cfg, vision_steps=args.steps, text_steps=args.steps)
    if args.vision_steps is not None:
        cfg = replace(cfg, vision_steps=args.vision_steps)
    if args.text_steps is not None:
        cfg = replace(cfg, text_steps=args.text_steps)
    return train(
        cfg,
        args.out,
        args.run_dir,
        resume=args.resume,
        progress=not args.no_progress,
        stop_after=args.stop_after,
        vision_from=args.vision_from,
    )


if __name__ == "__main__":
    main()
