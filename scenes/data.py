"""Training tensors from scenes: pixels, per-patch labels, presence targets and packed task sequences.

Scenes are drawn on the fly from a deterministic seed stream (drawing one costs about 7 ms, training
on it about 75 ms), so the model never sees the same scene twice and a resumed run sees exactly the data
it would have seen. Training seeds are below ``EVAL_SEED_BASE``; evaluation seeds start there.

Task sequences use *shared-prefix packing*: one image prefix ``<s> USER : <image>×576`` followed by
several (prompt, answer) segments. Each segment attends only to the prefix and to itself and its
position ids restart right after the prefix, so every segment is trained exactly as the single-turn
chat the model is evaluated on, while the 576 image tokens are paid for once per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from scenes.generate import TEXT_ID, Scene, generate_scene
from scenes.tasks import Sample, parse_objects
from scenes.tokenizer import IMAGE_TOKEN, PATCH_SIZE
from scenes.vocabulary import COLORS, COMPLEXITIES, SHAPES, WORDS

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "EVAL_SEED_BASE",
    "PATCH_COVERAGE",
    "PackedBatch",
    "VisionBatch",
    "pack_sequences",
    "patch_anchors",
    "patch_labels",
    "patch_owners",
    "pixel_tensor",
    "random_keep",
    "training_scene",
    "vision_batch",
]

EVAL_SEED_BASE = 1_000_000_000
"""Held-out scenes use seeds ``EVAL_SEED_BASE + i``; training seeds are all below it."""

TRAIN_COMPLEXITY_WEIGHTS = (0.2, 0.2, 0.3, 0.3)
"""Training mix over ``COMPLEXITIES`` (text, simple, medium, complex): more of the harder scenes."""

PATCH_COVERAGE = 0.15
"""A patch is labelled with an object (or the word) when it covers at least this fraction of it."""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_COLOR_INDEX = {c: i for i, c in enumerate(COLORS)}
_SHAPE_INDEX = {s: i for i, s in enumerate(SHAPES)}
_WORD_INDEX = {w: i for i, w in enumerate(WORDS)}


def training_scene(seed: int) -> Scene:
    """The training scene of ``seed``: its complexity drawn with ``TRAIN_COMPLEXITY_WEIGHTS``."""
    if not 0 <= seed < EVAL_SEED_BASE:
        raise ValueError(f"training seed {seed} outside [0, {EVAL_SEED_BASE})")
    rng = np.random.default_rng([seed, 0xC0])
    level = COMPLEXITIES[int(rng.choice(len(COMPLEXITIES), p=TRAIN_COMPLEXITY_WEIGHTS))]
    return generate_scene(seed, level)


def pixel_tensor(scenes: Sequence[Scene]) -> torch.Tensor:
    """CLIP-normalised pixels, (B, 3, 336, 336) float32 (what ``CLIPImageProcessor`` produces)."""
    arr = np.stack([np.asarray(s.image, dtype=np.float32) for s in scenes]) / 255.0  # (B, H, W, 3)
    x = torch.from_numpy(arr).permute(0, 3, 1, 2)  # (B, 3, H, W)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def patch_owners(scene: Scene) -> np.ndarray:
    """Which object owns each patch, (N,) int64 in raster order with N = 576.

    0 for background, i + 1 for ``scene.objects[i]``, ``TEXT_ID`` for the word: the largest owner
    of the patch's pixels, if it covers at least ``PATCH_COVERAGE`` of the patch.
    """
    lab = scene.label_map
    side = lab.shape[0] // PATCH_SIZE
    blocks = lab.reshape(side, PATCH_SIZE, side, PATCH_SIZE).transpose(0, 2, 1, 3).reshape(side * side, -1)
    owners = np.zeros(side * side, dtype=np.int64)
    min_pixels = PATCH_COVERAGE * PATCH_SIZE * PATCH_SIZE
    for i, block in enumerate(blocks):
        ids, counts = np.unique(block[block > 0], return_counts=True)
        if len(ids) and counts.max() >= min_pixels:
            owners[i] = int(ids[counts.argmax()])
    return owners


def patch_labels(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-patch targets in raster order, each (N,) int64 with N = 576.

    Returns:
        shape: 0 background, 1 + index in ``SHAPES``.
        color: 0 background, 1 + index in ``COLORS`` (objects and the word).
        word: 0 none, 1 + index in ``WORDS`` for patches of the word.
    """
    owners = patch_owners(scene)
    shape = np.zeros_like(owners)
    color = np.zeros_like(owners)
    word = np.zeros_like(owners)
    for i, owner in enumerate(owners):
        if owner == TEXT_ID:
            color[i] = 1 + _COLOR_INDEX[scene.text_color]
            word[i] = 1 + _WORD_INDEX[scene.text]
        elif owner > 0:
            obj = scene.objects[owner - 1]
            shape[i] = 1 + _SHAPE_INDEX[obj.shape]
            color[i] = 1 + _COLOR_INDEX[obj.color]
    return shape, color, word


def patch_anchors(scene: Scene) -> np.ndarray:
    """One patch per object: (N,) bool in raster order, True at each object's *anchor patch*.

    An object's anchor is the first of the patches it owns (``patch_owners``) in raster order: its
    top row's leftmost patch. Telling it from its neighbours needs only the patches near it: none
    above it or to its left is the object's, so a small tower learns to mark it (the model card
    gives how often it does, and how a centre-patch rule fared). Every object owning a patch has
    exactly one anchor.
    """
    owners = patch_owners(scene)
    flags = np.zeros(len(owners), dtype=bool)
    for index in range(1, len(scene.objects) + 1):
        mine = np.flatnonzero(owners == index)
        if len(mine):
            flags[mine[0]] = True
    return flags


def random_keep(rng: np.random.Generator, grid: tuple[int, int], min_keep: int = 16) -> np.ndarray:
    """A random raster-sorted subset of the patch grid, for token-dropping augmentation.

    The size is log-uniform in [min_keep, N]; half the time the subset is uniform over the grid
    (like spread-out, diversity-style selections), otherwise the patches nearest to one to four
    random centres (like clustered, attention-style selections). Returns (K,) int64 indices.
    """
    rows, cols = grid
    n = rows * cols
    k = int(np.exp(rng.uniform(np.log(min_keep), np.log(n))))
    if rng.random() < 0.5:
        return np.sort(rng.choice(n, size=k, replace=False))
    centres = rng.uniform(0, [rows, cols], size=(int(rng.integers(1, 5)), 2))  # (m, 2)
    yx = np.stack(np.divmod(np.arange(n), cols), axis=1)  # (N, 2)
    dist = np.linalg.norm(yx[:, None, :] - centres[None], axis=2).min(axis=1)  # (N,)
    return np.sort(np.argsort(dist, kind="stable")[:k])


@dataclass(frozen=True)
class VisionBatch:
    """Stage-1 batch.

    Attributes:
        pixels: (B, 3, 336, 336) normalised pixels.
        presence: (B, S*K + S) multi-hot: (shape, colour) pairs then shapes.
        word: (B,) 0 no word, 1 + word index.
        patch_shape, patch_color, patch_word: (B, N) per-patch class targets.
        patch_anchor: (B, N) bool, each object's anchor patch (``patch_anchors``).
    """

    pixels: torch.Tensor
    presence: torch.Tensor
    word: torch.Tensor
    patch_shape: torch.Tensor
    patch_color: torch.Tensor
    patch_word: torch.Tensor
    patch_anchor: torch.Tensor


def vision_batch(scenes: Sequence[Scene]) -> VisionBatch:
    """Stack the stage-1 targets of ``scenes``."""
    n_pairs = len(SHAPES) * len(COLORS)
    presence = torch.zeros(len(scenes), n_pairs + len(SHAPES))
    word = torch.zeros(len(scenes), dtype=torch.long)
    labels = [patch_labels(s) for s in scenes]
    for b, scene in enumerate(scenes):
        for obj in scene.objects:
            s, c = _SHAPE_INDEX[obj.shape], _COLOR_INDEX[obj.color]
            presence[b, s * len(COLORS) + c] = 1.0
            presence[b, n_pairs + s] = 1.0
        if scene.text is not None:
            word[b] = 1 + _WORD_INDEX[scene.text]
    return VisionBatch(
        pixels=pixel_tensor(scenes),
        presence=presence,
        word=word,
        patch_shape=torch.from_numpy(np.stack([lab[0] for lab in labels])),
        patch_color=torch.from_numpy(np.stack([lab[1] for lab in labels])),
        patch_word=torch.from_numpy(np.stack([lab[2] for lab in labels])),
        patch_anchor=torch.from_numpy(np.stack([patch_anchors(s) for s in scenes])),
    )


@dataclass(frozen=True)
class PackedBatch:
    """Stage-2 batch of shared-prefix packed sequences.

    Attributes:
        input_ids: (B, L) token ids, ``<image>`` ×576 in the prefix, ``<pad>`` at the end.
        position_ids: (B, L) positions; each segment restarts right after the prefix.
        attention_mask: (B, 1, L, L) bool, True where a query may attend to a key.
        labels: (B, L) next-token targets (already shifted: label at t is the token at t + 1),
            -100 except where the next token is part of an answer (answer words and ``</s>``).
        weights: (B, L) float, each sample's labelled tokens sharing weight 1 (0 elsewhere), so a
            one-word answer counts as much as a whole caption in a per-sample loss.
        ground_index: (G, 2) long, (row, position) of each grounded query token: the token that
            predicts an answer about a named object, word or caption group (see ``pack_sequences``).
        ground_mask: (G, L) bool, the image-token positions of that row showing what it is about
            (for a count query, the support of ``ground_share``: unit patches and ``<s>``).
        ground_share: (G, L) float, for count queries the distribution the head should match over
            its mask (``scenes.train.grounding_loss``): ``<s>`` and every instance of the shape
            1 / (n + 1) each, an instance's share spread evenly over its patches; all zero for the
            other queries, whose head need only put its attention somewhere in the mask.
        read_index: (R, 3) long, (row, position, part) of each *reading query*: the last prompt
            token of a question naming one shape, once for the shape word (part 0) and once more
            for the colour word of a coloured question (part 1); see ``pack_sequences``.
        read_mask: (R, L) bool, the position of that word in the row.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    ground_index: torch.Tensor
    ground_mask: torch.Tensor
    ground_share: torch.Tensor
    read_index: torch.Tensor
    read_mask: torch.Tensor


def pack_sequences(
    tokenizer: PreTrainedTokenizerFast,
    sample_lists: Sequence[Sequence[Sample]],
    image_tokens: int | Sequence[int],
    patch_targets: Sequence[tuple[np.ndarray, ...]] | None = None,
) -> PackedBatch:
    """Pack one image prefix + its samples per row, following the chat template token for token.

    A row is ``<s> USER : <image>×image_tokens`` then, per sample, ``{prompt} ASSISTANT :`` and
    ``{answer} </s>``; the loss covers only the answer and ``</s>``. ``image_tokens`` is one count
    for every row or one per row (rows whose visual tokens were dropped).

    ``patch_targets`` gives each row's ``patch_labels`` (shape, colour, word) restricted to its kept
    patches, each (K_b,). With it, the batch lists *grounding queries*: the last prompt token of a
    question naming a shape (the patches of that shape, of that colour too when the answer is
    "Yes"), of the word question (the word's patches), and, for each group of a caption ("two red
    stars"), the three tokens that choose its count, its colour and its shape (the token before
    it: ``,``, ``and`` or the prompt's closing ``:``; then ``two``; then ``red``), each pointing at
    the group's patches. Questions whose object is absent have none.

    A row's targets may carry a fourth array of *count units* over its kept patches: the owning
    object's number (as in ``patch_owners``) on the patches a count should look at, 0 elsewhere
    (training uses its values on ``patch_anchors``: one patch per instance). Then a count question
    becomes a *share* query: the head must give ``<s>`` and each of the n instances of the shape
    an equal share of its attention (``ground_share``), an instance's share split evenly over its
    unit patches, so what it reads mixes ``<s>`` and the shape in the ratio 1 : n and n can be read
    from the mixture; for a shape the row does not show (n = 0), all of it on ``<s>``. A plain mass
    target over the shape's patches cannot carry n: attention averages whatever it lands on, and
    the average of one star's patches looks like that of two stars'.

    Every row also lists *reading queries* (``read_index``, ``read_mask``), which need no patch
    targets: from the last prompt token of a question naming one shape (existence, colour, count),
    the position of the shape word and, in a coloured existence question, of the colour word. The
    query token must carry both words before its grounding query can pick the named object's
    patches (``scenes.train.reading_loss``).
    """
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    head = tokenizer("<s>USER: ", add_special_tokens=False)["input_ids"]
    counts = [image_tokens] * len(sample_lists) if isinstance(image_tokens, int) else list(image_tokens)
    if len(counts) != len(sample_lists):
        raise ValueError(f"{len(counts)} image token counts for {len(sample_lists)} rows")
    if patch_targets is not None and (
        [len(t[0]) for t in patch_targets] != counts or any(len(t) not in (3, 4) for t in patch_targets)
    ):
        raise ValueError(
            "patch_targets must hold one (K_b,) label triple (or triple + count units) per row, K_b its image tokens"
        )
    rows = []
    # (row, query position, kept-patch mask, kept-patch share or None)
    grounds: list[tuple[int, int, np.ndarray, np.ndarray | None]] = []
    reads: list[tuple[int, int, int, int]] = []  # (row, query position, part, word position)
    for b, (samples, count) in enumerate(zip(sample_lists, counts, strict=True)):
        prefix = head + [image_id] * count
        ids, pos, seg, lab = list(prefix), list(range(len(prefix))), [0] * len(prefix), [-100] * len(prefix)
        wts = [0.0] * len(prefix)
        for k, sample in enumerate(samples, start=1):
            q = tokenizer(f"\n{sample.prompt} ASSISTANT:", add_special_tokens=False)["input_ids"]
            a = tokenizer(f" {sample.answer}</s>", add_special_tokens=False)["input_ids"]
            offset = len(ids)
            for part, at in _reading(tokenizer, sample, q):
                reads.append((b, offset + len(q) - 1, part, offset + at))
            if patch_targets is not None:
                for at, mask, share in _grounding(tokenizer, sample, q, a, patch_targets[b]):
                    grounds.append((b, offset + at, mask, share))
            start = len(prefix)
            ids += q + a
            pos += list(range(start, start + len(q) + len(a)))
            seg += [k] * (len(q) + len(a))
            # the token before each answer token predicts it: last prompt token and answer[:-1]
            lab += [-100] * (len(q) - 1) + a + [-100]
            wts += [0.0] * (len(q) - 1) + [1.0 / len(a)] * len(a) + [0.0]
        rows.append((ids, pos, seg, lab, wts))
    length = max(len(r[0]) for r in rows)
    batch = len(rows)
    input_ids = torch.full((batch, length), tokenizer.pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((batch, length), dtype=torch.long)
    segment = torch.full((batch, length), -1, dtype=torch.long)
    labels = torch.full((batch, length), -100, dtype=torch.long)
    weights = torch.zeros((batch, length))
    for b, (ids, pos, seg, lab, wts) in enumerate(rows):
        n = len(ids)
        input_ids[b, :n] = torch.tensor(ids)
        position_ids[b, :n] = torch.tensor(pos)
        position_ids[b, n:] = torch.arange(n, length)
        segment[b, :n] = torch.tensor(seg)
        labels[b, :n] = torch.tensor(lab)
        weights[b, :n] = torch.tensor(wts)
    q_seg = segment[:, :, None]  # (B, L, 1)
    k_seg = segment[:, None, :]  # (B, 1, L)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    same = (q_seg == k_seg) & (q_seg >= 0)
    to_prefix = (k_seg == 0) & (q_seg >= 0)
    allowed = (same | to_prefix) & causal
    idx = torch.arange(length)
    allowed[:, idx, idx] = True  # padding rows attend to themselves only (no empty softmax rows)
    ground_index = torch.tensor([(b, at) for b, at, _, _ in grounds], dtype=torch.long).reshape(-1, 2)
    ground_mask = torch.zeros((len(grounds), length), dtype=torch.bool)
    ground_share = torch.zeros((len(grounds), length), dtype=torch.float32)
    for g, (_, _, mask, share) in enumerate(grounds):
        ground_mask[g, len(head) : len(head) + len(mask)] = torch.from_numpy(mask)
        if share is not None:
            ground_mask[g, 0] = True  # <s>: the reference the instances are counted against
            ground_share[g, len(head) : len(head) + len(share)] = torch.from_numpy(share)
            ground_share[g, 0] = 1.0 - float(share.sum())
    read_index = torch.tensor([r[:3] for r in reads], dtype=torch.long).reshape(-1, 3)
    read_mask = torch.zeros((len(reads), length), dtype=torch.bool)
    for r, (*_, at) in enumerate(reads):
        read_mask[r, at] = True
    return PackedBatch(
        input_ids,
        position_ids,
        allowed[:, None],
        labels,
        weights,
        ground_index,
        ground_mask,
        ground_share,
        read_index,
        read_mask,
    )


def _reading(tokenizer: PreTrainedTokenizerFast, sample: Sample, prompt_ids: list[int]) -> list[tuple[int, int]]:
    """(part, position within ``prompt_ids``) of the words a question's last prompt token must read:
    the shape word (part 0, singular or plural) and a coloured question's colour word (part 1), for
    a question naming exactly one shape; none for captions and the word question."""
    if sample.task not in ("exists", "color", "count"):
        return []
    mentions = parse_objects(sample.prompt)
    if len(mentions) != 1:
        return []
    named = mentions[0]
    tokens = tokenizer.convert_ids_to_tokens(prompt_ids)
    shape_at = [i for i, t in enumerate(tokens) if t in (named.shape, named.shape + "s")]
    out = [(0, shape_at[-1])] if shape_at else []
    if named.color is not None:
        out += [(1, i) for i, t in enumerate(tokens) if t == named.color][-1:]
    return out


def _grounding(
    tokenizer: PreTrainedTokenizerFast,
    sample: Sample,
    prompt_ids: list[int],
    answer_ids: list[int],
    targets: tuple[np.ndarray, ...],
) -> list[tuple[int, np.ndarray, np.ndarray | None]]:
    """Grounding queries of one packed sample: (position within ``prompt_ids + answer_ids``, (K,)
    bool mask over the row's kept patches, (K,) float share of each patch for a count query or
    None). See ``pack_sequences``."""
    shape_of, color_of, word_of = targets[:3]
    if sample.task == "word":
        mask = word_of > 0
        return [(len(prompt_ids) - 1, mask, None)] if mask.any() else []
    if sample.task == "caption":
        out = []
        tokens = tokenizer.convert_ids_to_tokens(answer_ids)
        for i, (tok, nxt) in enumerate(pairwise(tokens)):
            shape = nxt if nxt in _SHAPE_INDEX else nxt[:-1] if nxt[:-1] in _SHAPE_INDEX else None
            if tok in _COLOR_INDEX and shape is not None:
                mask = (shape_of == 1 + _SHAPE_INDEX[shape]) & (color_of == 1 + _COLOR_INDEX[tok])
                if mask.any():
                    # the tokens choosing this group's count, its colour and its shape
                    out.extend((len(prompt_ids) + i - back, mask, None) for back in (2, 1, 0))
        return out
    mentions = parse_objects(sample.prompt)
    if len(mentions) != 1:
        return []
    named = mentions[0]
    mask = shape_of == 1 + _SHAPE_INDEX[named.shape]
    if sample.task == "count" and len(targets) == 4 and (mask & (targets[3] > 0)).any():
        share = _instance_share(targets[3], mask & (targets[3] > 0))
        return [(len(prompt_ids) - 1, share > 0, share)]
    if sample.task == "count" and len(targets) == 4 and not mask.any():
        return [(len(prompt_ids) - 1, np.zeros(len(mask), dtype=bool), np.zeros(len(mask), dtype=np.float32))]
    if named.color is not None and sample.answer == "Yes":
        mask &= color_of == 1 + _COLOR_INDEX[named.color]
    return [(len(prompt_ids) - 1, mask, None)] if mask.any() else []


def _instance_share(units: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(K,) share of attention per kept patch for a count query: each of the n instances with unit
    patches in ``mask`` gets 1 / (n + 1), split evenly over them (``<s>`` takes the rest)."""
    ids, sizes = np.unique(units[mask], return_counts=True)
    share = np.zeros(len(units), dtype=np.float32)
    for owner, size in zip(ids, sizes, strict=True):
        share[mask & (units == owner)] = 1.0 / ((len(ids) + 1) * size)
    return share
