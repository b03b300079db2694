"""LLaVA-NeXT, LLaVA-OneVision and Qwen2.5-VL through ``app.runtime``, against stock transformers.

Tiny random models of each stock class are built in memory (``app.runtime.synthetic.tiny_family``,
``from_config``; nothing is downloaded) and run greedily in float32 on CPU, where the runtime and
the stock paths must agree token for token. Images are chosen so that the crops are unpadded
(rows or columns dropped, different windows in different crops) and, for OneVision, so that the
model shrinks the stitched grid (a large image, or a small ``anyres_max`` k). Which crop and
patches each grid's tokens come from is read from the stock packing itself (``crop_windows``), so
a signal, V or window taken from the wrong crop fails.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlamaConfig
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches
from transformers.vision_utils import get_vision_window_index

import pruning
from app import calibrate
from app.preflight import SUPPORTED_ARCHITECTURES, PreflightError, check_model
from app.runtime import GenerationOptions, Runner, load_runner
from app.runtime.grids import split_budget, visual_sequence
from app.runtime.synthetic import build_onevision_model, onevision_processor, onevision_tokenizer, tiny_family

PROMPT = "what is in this image ?"
MAX_NEW = 8
FAMILIES = ("llava_next", "llava_onevision")
# (width, height): no unpadding; rows dropped; columns dropped; for OneVision a 3 x 3 grid it shrinks
SIZES = ((70, 40), (200, 30), (33, 100), (300, 300))
METHODS = (("attention", 7), ("diversity", 6), ("adaptive", 9), ("vispruner", 8), ("uniform", 5))


def random_image(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype(np.uint8))


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request):
    model, processor = tiny_family(request.param)
    return request.param, model, processor


@pytest.fixture(scope="module")
def runner(tiny) -> Runner:
    family, model, processor = tiny
    return Runner.from_model(model, processor, name=f"tiny-{family}")


def options(n: int = MAX_NEW) -> GenerationOptions:
    return GenerationOptions(max_new_tokens=n)


def stock_inputs(model, processor, runner, image) -> dict:
    """The stock model inputs of one prompt and image: the processor's own for LLaVA-NeXT; for
    OneVision (whose processor class needs torchvision) the image processor's pixels and one
    placeholder per token of the stock ``get_image_features``."""
    text = runner.adapter.render_prompt(PROMPT)
    if runner.adapter.family == "llava_next":
        return dict(processor(images=image, text=text, return_tensors="pt"))
    pixels = processor.image_processor(images=image, return_tensors="pt")
    with torch.inference_mode():
        packed = model.get_image_features(pixel_values=pixels["pixel_values"], image_sizes=pixels["image_sizes"])
    ids = processor.tokenizer(
        text.replace("<image>", "<image>" * packed.pooler_output[0].shape[0]), return_tensors="pt"
    )
    return {
        "input_ids": ids["input_ids"],
        "attention_mask": ids["attention_mask"],
        "pixel_values": pixels["pixel_values"],
        "image_sizes": pixels["image_sizes"],
    }


def stock_generate(model, processor, runner, image) -> list[int]:
    inputs = stock_inputs(model, processor, runner, image)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def stock_packed(model, processor, image) -> tuple[torch.Tensor, torch.Tensor]:
    """The stock packed sequence (L, D) and, through the model's own packing, what each slot holds:
    (L,) raw index ``crop * n + patch`` or -1 for a newline (None when the model shrinks the grid)."""
    pixels = processor.image_processor(images=image, return_tensors="pt")
    with torch.inference_mode():
        out = model.get_image_features(
            pixel_values=pixels["pixel_values"], image_sizes=pixels["image_sizes"], output_hidden_states=True
        )
    n_crops, n = out.hidden_states[-1].shape[:2]
    n -= 1 if model.config.vision_feature_select_strategy == "default" else 0
    index = torch.arange(n_crops * n, dtype=torch.float32).view(n_crops, n, 1)
    kwargs = {"image_newline": torch.tensor([-1.0])}
    if model.config.model_type == "llava_next":
        slots, _ = model.model.pack_image_features([index], pixels["image_sizes"], "default", **kwargs)
    else:
        slots, _ = model.model.pack_image_features(
            [index], pixels["image_sizes"], vision_aspect_ratio=model.config.vision_aspect_ratio, **kwargs
        )
    slots = slots[0][:, 0]
    exact = bool(torch.equal(slots, slots.round())) and slots.shape[0] == out.pooler_output[0].shape[0]
    return out.pooler_output[0], slots.round().long() if exact else None


def crop_windows(enc, slots: torch.Tensor, side: int) -> list[tuple[int, torch.Tensor]]:
    """Per grid, the crop its tokens were packed from and their patch indices in that crop, read
    from the stock slots (``stock_packed``) at the places the encoding's layout puts them; checked
    to be one crop each, a raster rectangle of the grid's shape, crops in increasing order."""
    n = side * side
    sequence = enc.layout.sequence
    raw = torch.full((enc.n_tokens,), -1, dtype=torch.long)
    raw[sequence[sequence >= 0]] = slots[sequence >= 0]  # (N,) crop * n + patch of each token
    windows = []
    for part in enc.parts:
        own = raw[part.offset : part.offset + part.n_tokens]
        crops = (own // n).unique()
        assert crops.numel() == 1, f"{part.name} mixes crops {crops.tolist()}"
        local = own % n
        rows, cols = part.inputs.grid
        top, left = divmod(int(local[0]), side)
        rectangle = (torch.arange(rows)[:, None] + top) * side + torch.arange(cols)[None] + left  # (rows, cols)
        assert torch.equal(local, rectangle.reshape(-1)), part.name
        windows.append((int(crops[0]), local))
    assert [crop for crop, _ in windows] == sorted({crop for crop, _ in windows})
    return windows


def stock_generate_on(model, processor, runner, visual: torch.Tensor) -> list[int]:
    """The stock model's greedy answer with ``visual`` (L, D) fed in place of the image's features."""
    text = runner.adapter.render_prompt(PROMPT).replace("<image>", "<image>" * visual.shape[0])
    ids = processor.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=[visual])},
            max_new_tokens=MAX_NEW,
            do_sample=False,
        )
    return out[0, ids.shape[1] :].tolist()


@pytest.mark.parametrize("size", SIZES)
def test_unpruned_and_keep_all_match_stock_generate(tiny, runner, size):
    _, model, processor = tiny
    image = random_image(1, size)
    expected = stock_generate(model, processor, runner, image)
    enc = runner.encode(image)
    full = runner.generate(enc, PROMPT, None, options())
    keep_all = runner.select(enc, "attention", enc.n_tokens)
    kept = runner.generate(enc, PROMPT, keep_all, options())
    assert list(full.token_ids) == expected
    assert list(kept.token_ids) == expected
    packed, _ = stock_packed(model, processor, image)
    assert full.n_visual_tokens == kept.n_visual_tokens == enc.n_tokens
    assert full.n_visual_tokens + full.n_layout_tokens == packed.shape[0]  # every token and newline


@pytest.mark.parametrize("size", SIZES)
def test_grids_hold_the_stock_tokens(tiny, runner, size):
    _, model, processor = tiny
    image = random_image(2, size)
    enc = runner.encode(image)
    packed, _ = stock_packed(model, processor, image)
    sequence = enc.layout.sequence
    assert torch.equal(packed[sequence >= 0], enc.inputs.feats[sequence[sequence >= 0]])  # exact values
    assert torch.equal(packed[sequence < 0], enc.layout.newline.expand(int((sequence < 0).sum()), -1))
    assert sorted(sequence[sequence >= 0].tolist()) == list(range(enc.n_tokens))  # each token once
    assert enc.parts[0].name == "base" and enc.parts[0].inputs.grid == runner.adapter.grid
    assert sum(part.n_tokens for part in enc.parts) == enc.n_tokens
    for part in enc.parts:
        assert part.inputs.n_tokens == part.inputs.grid[0] * part.inputs.grid[1]
        assert torch.equal(part.inputs.feats, enc.inputs.feats[part.offset : part.offset + part.n_tokens])
    assert enc.image_erank == pytest.approx(np.mean([p.image_erank for p in enc.parts]))


@pytest.mark.parametrize("size", SIZES[:3])
@pytest.mark.parametrize(("method", "budget"), METHODS)
def test_pruned_runs_see_exactly_k_tokens_in_the_stock_order(tiny, runner, size, method, budget):
    """Kept tokens keep the stock order; a newline follows every stitched row that keeps a token."""
    _, model, processor = tiny
    image = random_image(3, size)
    enc = runner.encode(image)
    sel = runner.select(enc, method, budget)
    assert sel.n_output_tokens == budget and sel.info["budget_split"] == split_budget(
        budget, [p.n_tokens for p in enc.parts]
    )
    packed, slots = stock_packed(model, processor, image)
    # expected: walk the stock sequence, keeping the kept tokens and a newline after each stitched row
    # that kept one (the base image, raw indices below n, is on no row)
    n = runner.adapter.grid[0] * runner.adapter.grid[1]
    kept = set(sel.keep.tolist())
    expected, row_kept = [], False
    for position, token in enumerate(enc.layout.sequence.tolist()):
        if token >= 0 and token in kept:
            expected.append(packed[position])
            row_kept = row_kept or int(slots[position]) >= n
        elif token < 0 and row_kept:
            expected.append(packed[position])
            row_kept = False
    visual = torch.stack(expected)  # (K + R, D)
    got = runner.generate(enc, PROMPT, sel, options())
    assert got.n_visual_tokens == budget
    assert got.n_visual_tokens + got.n_layout_tokens == visual.shape[0]
    assert list(got.token_ids) == stock_generate_on(model, processor, runner, visual)


def test_each_grid_selects_with_its_own_signal(tiny, runner):
    """Per grid: the method on that grid's own inputs with its share, not one grid's picks copied."""
    enc = runner.encode(random_image(4, (70, 40)))
    assert len(enc.parts) == 3
    sel = runner.select(enc, "attention", 9)
    for part, share in zip(enc.parts, sel.info["budget_split"], strict=True):
        own = pruning.select("attention", part.inputs, share)
        mine = sel.keep[(sel.keep >= part.offset) & (sel.keep < part.offset + part.n_tokens)] - part.offset
        assert torch.equal(mine, own.keep)
    crops = [part.inputs.cls_attn for part in enc.parts[1:]]
    assert not torch.equal(crops[0], crops[1])
    local = [set((sel.keep[(sel.keep >= p.offset) & (sel.keep < p.offset + p.n_tokens)] - p.offset).tolist())
             for p in enc.parts[1:]]  # fmt: skip
    assert local[0] != local[1]  # the two crops pick different patches


def eager_attention(family: str, processor, image, layer: int) -> torch.Tensor:
    """(P, H, T, T) eager attention weights of tower layer ``layer`` on the image's crops (base first),
    from a twin of the tiny model (same seed) whose tower runs in eager mode."""
    eager, _ = tiny_family(family)
    eager.model.vision_tower.config._attn_implementation = "eager"
    pixels = processor.image_processor(images=image, return_tensors="pt")["pixel_values"][0]  # (P, 3, S, S)
    with torch.inference_mode():
        return eager.model.vision_tower(pixels, output_attentions=True).attentions[layer]


# (width, height): 2 x 2 crops losing a padding row at the top and the bottom (the top crops keep
# their rows 1-3, the bottom ones rows 0-2; OneVision does not shrink it); 2 x 1 crops losing
# columns on both sides
NEXT_WINDOWS = ((105, 70), (33, 100))


@pytest.mark.parametrize("size", NEXT_WINDOWS)
def test_next_each_crop_signal_is_its_own_cls_row_on_its_own_window(size):
    """Each grid's a is the eager [CLS] row of its own crop at exactly the patches the model kept of
    that crop; no other crop's row on that window matches (the official code copies the first's)."""
    model, processor = tiny_family("llava_next")
    runner = Runner.from_model(model, processor, name="tiny-next")
    image = random_image(5, size)
    enc = runner.encode(image)
    _, slots = stock_packed(model, processor, image)
    side = runner.adapter.grid[0]
    windows = crop_windows(enc, slots, side)
    attn = eager_attention("llava_next", processor, image, runner.adapter.feature_index - 1)
    rows = attn[:, :, 0, 1:].mean(dim=1)  # (P, n): each crop's own [CLS] row, heads averaged
    assert [crop for crop, _ in windows] == list(range(rows.shape[0]))  # every crop keeps patches here
    assert all(local.numel() < side * side for _, local in windows[1:])  # the unpadding cut every crop
    for part, (crop, local) in zip(enc.parts, windows, strict=True):
        torch.testing.assert_close(part.inputs.cls_attn, rows[crop, local], rtol=1e-5, atol=1e-6)
        for other in set(range(rows.shape[0])) - {crop}:
            assert not torch.allclose(rows[other, local], part.inputs.cls_attn, rtol=1e-3, atol=1e-5), part.name
        assert float(part.inputs.cls_attn.sum()) < 1.0  # the [CLS] column was dropped, no renormalisation
    if size == NEXT_WINDOWS[0]:
        assert len({tuple(local.tolist()) for _, local in windows[1:]}) == 2  # top and bottom windows differ


@pytest.mark.parametrize("size", ((70, 40), (200, 30), NEXT_WINDOWS[0]))
def test_onevision_signal_is_the_attention_its_crops_patches_receive(size):
    """Each grid's a is the eager attention its own crop's patches receive (over heads and that crop's
    queries), at exactly the patches the model kept of that crop."""
    model, processor = tiny_family("llava_onevision")
    runner = Runner.from_model(model, processor, name="tiny-ov")
    image = random_image(6, size)
    enc = runner.encode(image)
    _, slots = stock_packed(model, processor, image)
    windows = crop_windows(enc, slots, runner.adapter.grid[0])
    attn = eager_attention("llava_onevision", processor, image, runner.adapter.feature_index - 1)
    received = attn.mean(dim=(1, 2))  # (P, T): over heads and queries
    for part, (crop, local) in zip(enc.parts, windows, strict=True):
        torch.testing.assert_close(part.inputs.cls_attn, received[crop, local], rtol=1e-5, atol=1e-6)
        for other in set(range(received.shape[0])) - {crop}:
            assert not torch.allclose(received[other, local], part.inputs.cls_attn, rtol=1e-3, atol=1e-5)
        assert part.inputs.cls_feat is None
    assert float(enc.parts[0].inputs.cls_attn.sum()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("size", (*SIZES[:3], NEXT_WINDOWS[0]))
def test_each_grid_is_its_crops_v_and_the_projector_maps_it_to_the_stock_f(tiny, runner, size):
    """A grid's V is its own crop's feature-layer patches; the stock projector maps it to the grid's
    F; the grids' projected V in layout order, newlines in, are the stock ``get_image_features``."""
    _, model, processor = tiny
    image = random_image(17, size)
    enc = runner.encode(image)
    pixels = processor.image_processor(images=image, return_tensors="pt")
    with torch.inference_mode():
        out = model.get_image_features(
            pixel_values=pixels["pixel_values"], image_sizes=pixels["image_sizes"], output_hidden_states=True
        )
    _, slots = stock_packed(model, processor, image)
    hidden = out.hidden_states[model.config.vision_feature_layer]  # (P, T, C), what the projector reads
    first = 1 if model.config.vision_feature_select_strategy == "default" else 0  # [CLS] leads each crop
    projected = []
    for part, (crop, local) in zip(enc.parts, crop_windows(enc, slots, runner.adapter.grid[0]), strict=True):
        assert torch.equal(part.inputs.feats_pre, hidden[crop, first + local]), part.name
        with torch.inference_mode():
            projected.append(model.model.multi_modal_projector(part.inputs.feats_pre))  # (n_i, D)
        torch.testing.assert_close(projected[-1], part.inputs.feats, rtol=1e-5, atol=1e-6)
    sequence, n_newlines = visual_sequence(enc.layout, torch.cat(projected), None)
    packed = out.pooler_output[0]
    torch.testing.assert_close(sequence, packed, rtol=1e-5, atol=1e-6)
    assert n_newlines == int((slots < 0).sum())
    assert torch.equal(runner.image_sequence(enc)[0], packed)  # the runtime feeds the stock values themselves


@pytest.mark.parametrize("size", SIZES[1:3])
def test_onevision_unpadding_gives_the_stock_count_layout_and_answer(size):
    model, processor = tiny_family("llava_onevision")
    runner = Runner.from_model(model, processor, name="tiny-ov")
    image = random_image(18, size)
    packed, slots = stock_packed(model, processor, image)
    n = runner.adapter.grid[0] * runner.adapter.grid[1]
    n_crops = processor.image_processor(images=image, return_tensors="pt")["pixel_values"].shape[1]
    is_token = slots >= 0
    assert int(is_token.sum()) < n_crops * n  # the model dropped padding rows or columns
    enc = runner.encode(image)
    assert enc.n_tokens == int(is_token.sum())
    assert torch.equal(enc.layout.sequence >= 0, is_token)  # tokens and newlines at the stock places
    assert torch.equal(packed[is_token], enc.inputs.feats[enc.layout.sequence[is_token]])
    windows = crop_windows(enc, slots, runner.adapter.grid[0])
    assert all(local.numel() < n for _, local in windows[1:])
    newlines_before = torch.cumsum((~is_token).long(), dim=0) - (~is_token).long()  # (L,)
    lines = torch.where(slots[is_token] >= n, newlines_before[is_token], -1)  # stock row of each token slot
    assert torch.equal(enc.layout.lines[enc.layout.sequence[is_token]], lines)
    expected = stock_generate(model, processor, runner, image)
    keep_all = runner.select(enc, "diversity", enc.n_tokens)
    assert list(runner.generate(enc, PROMPT, keep_all, options()).token_ids) == expected


# anyres_max_k exceeded: 3 x 3 crops over the tiny model's 4 crops' worth; 2 crops over 1 crop's worth
SHRUNK = (("anyres_max_4", (300, 300)), ("anyres_max_1", (70, 40)))


@pytest.fixture(scope="module", params=SHRUNK, ids=[aspect for aspect, _ in SHRUNK])
def shrunk(request):
    aspect, size = request.param
    tokenizer = onevision_tokenizer()
    model, processor = build_onevision_model(tokenizer, aspect_ratio=aspect), onevision_processor(tokenizer)
    return model, processor, Runner.from_model(model, processor, name=f"tiny-ov-{aspect}"), random_image(7, size)


def test_onevision_shrunk_grid_gives_the_stock_answer_and_exactly_k_tokens(shrunk):
    model, processor, runner, image = shrunk
    packed, _ = stock_packed(model, processor, image)
    pixels = processor.image_processor(images=image, return_tensors="pt")
    n = runner.adapter.grid[0] * runner.adapter.grid[1]
    with torch.inference_mode():
        unshrunk, _ = model.model.pack_image_features(
            [torch.zeros(pixels["pixel_values"].shape[1], n, 1)],
            pixels["image_sizes"],
            image_newline=torch.zeros(1),
            vision_aspect_ratio="anyres_max_1000000",
        )
    assert packed.shape[0] < unshrunk[0].shape[0]  # the model shrank the stitched grid
    enc = runner.encode(image)
    assert [p.name for p in enc.parts] == ["base", "high-res"]
    is_newline = (packed == model.model.image_newline).all(dim=1)  # (L,)
    rows, cols = enc.parts[1].inputs.grid
    assert int(is_newline.sum()) == rows and enc.n_tokens == n + rows * cols == int((~is_newline).sum())
    assert torch.equal(enc.layout.sequence < 0, is_newline)
    assert torch.equal(enc.inputs.feats, packed[~is_newline])  # base, then the shrunk rows: stock values
    box, (width, height) = enc.parts[1].geometry.crop_box, image.size
    assert box[0] <= 1e-6 and box[1] <= 1e-6 and box[2] >= width - 1e-6 and box[3] >= height - 1e-6
    expected = stock_generate(model, processor, runner, image)
    assert list(runner.generate(enc, PROMPT, None, options()).token_ids) == expected
    keep_all = runner.select(enc, "attention", enc.n_tokens)
    assert list(runner.generate(enc, PROMPT, keep_all, options()).token_ids) == expected
    for method, budget in (("attention", 7), ("adaptive", 9), ("diversity", 5)):
        sel = runner.select(enc, method, budget)
        # expected: the kept tokens (numbered in stock order, base first) and a newline after every
        # shrunk row that kept one
        kept, visual, token, row_kept = set(sel.keep.tolist()), [], 0, False
        for slot in range(packed.shape[0]):
            if is_newline[slot]:
                if row_kept:
                    visual.append(packed[slot])
                row_kept = False
                continue
            if token in kept:
                visual.append(packed[slot])
                row_kept = row_kept or token >= n
            token += 1
        got = runner.generate(enc, PROMPT, sel, options())
        assert got.n_visual_tokens == budget and got.n_visual_tokens + got.n_layout_tokens == len(visual)
        assert list(got.token_ids) == stock_generate_on(model, processor, runner, torch.stack(visual)), method


def test_onevision_shrunk_grid_averages_its_stock_tokens_and_refuses_merging_v(shrunk):
    """The model shrinks after its projector, so the shrunk grid's V do not project to its F: V
    merges (prumerge+) are refused there; downsample averages the stock tokens."""
    model, _, runner, image = shrunk
    enc = runner.encode(image)
    base, high = enc.parts
    with torch.inference_mode():
        torch.testing.assert_close(model.model.multi_modal_projector(base.inputs.feats_pre), base.inputs.feats)
        reprojected = model.model.multi_modal_projector(high.inputs.feats_pre)
    assert not torch.allclose(reprojected, high.inputs.feats, rtol=1e-3, atol=1e-4)
    for params in ({}, {"adaptive": False}):
        with pytest.raises(ValueError, match=r"'prumerge\+' cannot run on this image's 'high-res' grid.*OneVision"):
            runner.select(enc, "prumerge+", 9, **params)
    sel = runner.select(enc, "downsample", 9)
    assert sel.tokens_space == "post_projector" and sel.n_output_tokens == sel.budget == 9
    for slot in range(9):
        torch.testing.assert_close(sel.tokens[slot], enc.inputs.feats[sel.groups == slot].float().mean(dim=0))
    got = runner.generate(enc, PROMPT, sel, options(3))
    assert (got.n_visual_tokens, got.n_layout_tokens) == (9, 0)


@pytest.mark.parametrize("size", SIZES[:3])
def test_merging_methods_merge_within_each_grid(tiny, runner, size):
    """downsample averages each grid's stock tokens (post-projector: never projected again), prumerge+
    merges each crop's V; a grid kept whole beside merged ones passes its own tokens."""
    enc = runner.encode(random_image(19, size))
    for budget in (9, enc.n_tokens - 1):  # N - 1: some grids kept whole, one pooled
        sel = runner.select(enc, "downsample", budget)
        assert sel.tokens_space == "post_projector" and sel.n_output_tokens == sel.budget == budget
        for slot in range(budget):
            torch.testing.assert_close(sel.tokens[slot], enc.inputs.feats[sel.groups == slot].float().mean(dim=0))
        got = runner.generate(enc, PROMPT, sel, options(3))
        assert (got.n_visual_tokens, got.n_layout_tokens) == (budget, 0)
    sel = runner.select(enc, "prumerge+", 9)
    assert sel.tokens_space == "pre_projector" and sel.n_output_tokens == sel.budget  # its adaptive count
    slots = [set(sel.groups[p.offset : p.offset + p.n_tokens].tolist()) - {-1} for p in enc.parts]
    assert all(max(a) < min(b) for a, b in itertools.pairwise(slots))  # every grid merges into its own slots
    assert runner.generate(enc, PROMPT, sel, options(3)).n_visual_tokens == sel.budget


@pytest.mark.parametrize(("family", "longest"), (("llava_next", (300, 300)), ("llava_onevision", (57, 113))))
def test_max_image_tokens_bounds_every_image_and_the_longest_prompt_fits(family, longest):
    """No image gives more than ``max_image_tokens`` (the stock packing over a sweep of sizes, and
    OneVision's unshrunk grid just under the threshold reaches it); the longest prompt the runner
    accepts still generates on the longest image."""
    model, processor = tiny_family(family)
    runner = Runner.from_model(model, processor, name=f"tiny-{family}")
    adapter = runner.adapter
    n = adapter.grid[0] * adapter.grid[1]
    pinpoints, crop = model.config.image_grid_pinpoints, model.config.vision_config.image_size

    def stock_length(width: int, height: int) -> int:
        crops = torch.zeros(image_size_to_num_patches((height, width), pinpoints, crop), n, 1)
        sizes, newline = torch.tensor([[height, width]]), torch.zeros(1)
        if family == "llava_next":
            packed, _ = model.model.pack_image_features([crops], sizes, "default", image_newline=newline)
        else:
            aspect = {"vision_aspect_ratio": model.config.vision_aspect_ratio}
            packed, _ = model.model.pack_image_features([crops], sizes, image_newline=newline, **aspect)
        return packed[0].shape[0]

    assert max(stock_length(w, h) for w in range(8, 400, 11) for h in range(8, 400, 11)) <= adapter.max_image_tokens
    assert stock_length(*longest) == adapter.max_image_tokens  # the bound is reached
    enc = runner.encode(random_image(20, longest))
    prompt = " ".join(["cat"] * runner.prompt_room(MAX_NEW))
    assert runner.check_prompt(prompt, MAX_NEW) == prompt
    with pytest.raises(ValueError, match="room for"):
        runner.check_prompt(f"{prompt} cat", MAX_NEW)
    got = runner.generate(enc, prompt, None, options())
    assert got.n_visual_tokens + got.n_layout_tokens == adapter.max_image_tokens


def test_generate_many_equals_single_calls(runner):
    enc = runner.encode(random_image(8, (200, 30)))
    selections = [None, runner.select(enc, "attention", 4), runner.select(enc, "adaptive", 10)]
    if runner.adapter.family == "llava_next":
        selections.append(runner.select(enc, "visionzip", 8))
    share = runner.padding_share
    try:
        for runner.padding_share in (1.0, share):
            batched = runner.generate_many(enc, PROMPT, selections, options())
            for selection, many in zip(selections, batched, strict=True):
                single = runner.generate(enc, PROMPT, selection, options())
                assert many.token_ids == single.token_ids
                assert (many.n_visual_tokens, many.n_layout_tokens) == (single.n_visual_tokens, single.n_layout_tokens)
    finally:
        runner.padding_share = share


def test_visionzip_merges_per_crop_on_next_and_is_refused_on_onevision(tiny, runner):
    family = tiny[0]
    enc = runner.encode(random_image(9, (70, 40)))
    if family == "llava_onevision":
        with pytest.raises(ValueError, match=r"'visionzip' cannot run on 'tiny-llava_onevision'.*\[CLS\]"):
            runner.select(enc, "visionzip", 9)
        return
    sel = runner.select(enc, "visionzip", 9)
    assert sel.tokens is not None and sel.n_output_tokens == 9
    assert sel.groups.shape == (enc.n_tokens,) and int(sel.groups.max()) == 8
    gen = runner.generate(enc, PROMPT, sel, options(3))
    assert gen.n_visual_tokens == 9 and gen.n_layout_tokens == 0  # merged tokens have no rows


def test_budget_split_rule():
    assert split_budget(10, [16, 16, 16]) == [4, 3, 3]  # equal remainders: the earlier grid first
    assert split_budget(640, [576] * 5) == [128] * 5
    assert split_budget(9, [16, 8, 8]) == [5, 2, 2]
    assert split_budget(1, [16, 16]) == [1, 0]
    assert split_budget(100, [16, 4]) == [16, 4]  # clipped to N
    for budget in range(1, 49):
        shares = split_budget(budget, [16, 12, 20])
        assert sum(shares) == budget and all(0 <= s <= n for s, n in zip(shares, [16, 12, 20], strict=True))


def test_overlay_geometry_places_every_grid_on_the_image(runner):
    enc = runner.encode(random_image(10, (70, 40)))  # two side-by-side crops, no unpadding
    base, left, right = enc.parts
    assert base.geometry.crop_box == pytest.approx((0.0, 0.0, 70.0, 40.0))
    assert left.geometry.crop_box[2] == pytest.approx(right.geometry.crop_box[0])  # the crops meet
    assert left.geometry.crop_box[0] < 0 < 70 < right.geometry.crop_box[2]  # the canvas padding shows
    last = enc.patch_box(right.offset + right.n_tokens - 1)  # the right crop's bottom-right patch
    assert last[2:] == pytest.approx(right.geometry.crop_box[2:])
    assert enc.part_of(left.offset) is left
    with pytest.raises(ValueError, match="outside"):
        enc.patch_box(enc.n_tokens)


def test_presets_and_token_counts_follow_the_model():
    runners = {family: Runner.from_model(*tiny_family(family), name=family) for family in ("llava", *FAMILIES)}
    llava, nxt, ov = (runners[f].metadata for f in ("llava", "llava_next", "llava_onevision"))
    assert (llava["n_tokens"], llava["budget_presets"]) == (16, [5, 4, 2, 1])  # 192/128/64/32 of 576
    assert (nxt["n_tokens"], nxt["budget_presets"]) == (80, [18, 9])  # 640/320 of 2880 (5 crops of 16)
    assert (ov["n_tokens"], ov["budget_presets"]) == (80, [27, 18, 9, 4])  # base + 4 crops' worth
    assert nxt["attention_signal"].startswith("[CLS] attention of each crop")
    assert ov["attention_signal"].startswith("attention received")


def test_unsupported_architectures_are_refused_at_load_naming_the_supported_ones(tmp_path):
    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"(?s)model_type 'llama'.*not supported.*llava_next.*llava_onevision"):
        load_runner(str(tmp_path))
    with pytest.raises(PreflightError, match=r"'llama' model.*LlavaNextForConditionalGeneration"):
        check_model(str(tmp_path))
    assert set(SUPPORTED_ARCHITECTURES) == {"llava", "llava_next", "llava_onevision", "qwen2_5_vl"}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_saved_folder_loads_generates_and_calibrates(family, tmp_path):
    model, processor = tiny_family(family)
    folder = tmp_path / f"tiny-{family}"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    assert check_model(str(folder)) == f"tiny-{family}"
    runner = load_runner(str(folder), device="cpu")
    reference = Runner.from_model(model, processor, name="reference")
    image = random_image(11, (200, 30))
    got = runner.generate(runner.encode(image), PROMPT, None, options(4))
    assert got.token_ids == reference.generate(reference.encode(image), PROMPT, None, options(4)).token_ids
    images = [random_image(seed, (70, 40)) for seed in range(3)]
    paths = []
    for seed, img in enumerate(images):
        paths.append(tmp_path / f"{seed}.png")
        img.save(paths[-1])
    calibration, report = calibrate.calibrate(runner, paths, progress=False)
    assert calibration.n_images == 3 and len(report["grid_eranks"]) == 3 * 3  # base + 2 crops each
    assert calibration.erank_avg == pytest.approx(float(np.mean(report["grid_eranks"])))


# -- Qwen2.5-VL: one merged grid sized by the image, M-RoPE positions kept ----------------------------

QWEN_SIZES = ((170, 100), (300, 120), (60, 60))


@pytest.fixture(scope="module")
def qwen():
    model, processor = tiny_family("qwen2_5_vl")
    return model, processor, Runner.from_model(model, processor, name="tiny-qwen")


def qwen_stock(model, processor, runner, image) -> dict:
    """Stock inputs: pixels, one placeholder per merged token, the image token types."""
    pixels = processor.image_processor(images=image, return_tensors="pt")
    with torch.inference_mode():
        n = model.get_image_features(**pixels).pooler_output[0].shape[0]
    text = runner.adapter.render_prompt(PROMPT).replace("<image>", "<image>" * n)
    ids = processor.tokenizer(text, return_tensors="pt")["input_ids"]
    types = (ids == model.config.image_token_id).int()
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": types, **pixels}


@pytest.mark.parametrize("size", QWEN_SIZES)
def test_qwen_unpruned_and_keep_all_match_stock_generate(qwen, size):
    model, processor, runner = qwen
    image = random_image(12, size)
    inputs = qwen_stock(model, processor, runner, image)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
    expected = out[0, inputs["input_ids"].shape[1] :].tolist()
    enc = runner.encode(image)
    rows, cols = (int(v) // 2 for v in inputs["image_grid_thw"][0, 1:])
    assert enc.grid == (rows, cols) and enc.n_tokens == rows * cols  # N and the grid follow the image
    assert list(runner.generate(enc, PROMPT, None, options()).token_ids) == expected
    keep_all = runner.select(enc, "attention", enc.n_tokens)
    assert list(runner.generate(enc, PROMPT, keep_all, options()).token_ids) == expected
    with torch.inference_mode():
        assert torch.equal(runner.adapter.project(enc.inputs.feats_pre), enc.inputs.feats)  # V -> F is the merger


@pytest.mark.parametrize(
    ("method", "budget"), (("attention", 5), ("diversity", 7), ("adaptive", 9), ("uniform", 6), ("attention", 999))
)
def test_qwen_kept_tokens_keep_their_stock_positions(qwen, method, budget):
    model, processor, runner = qwen
    image = random_image(13, (300, 120))
    inputs = qwen_stock(model, processor, runner, image)
    with torch.inference_mode():
        stock, _ = model.model.get_rope_index(
            inputs["input_ids"], inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"]
        )
    stock = stock[:, 0]  # (3, L) positions of the full prompt
    enc = runner.encode(image)
    sel = runner.select(enc, method, budget)
    row = runner._prepare_row(enc, PROMPT, sel, options())
    at = int((inputs["input_ids"][0] == model.config.image_token_id).nonzero()[0, 0])
    kept = torch.cat([torch.arange(at), at + sel.keep, torch.arange(at + enc.n_tokens, stock.shape[1])])
    assert torch.equal(row.positions, stock[:, kept])  # kept tokens and the text after keep theirs
    # the pruned run is the stock model fed those K tokens at those positions
    ids = inputs["input_ids"][:, kept]
    positions = torch.cat([torch.arange(ids.shape[1])[None], stock[:, kept]])[:, None]  # (4, 1, L')
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            position_ids=positions,
            mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=[enc.inputs.feats[sel.keep]])},
            max_new_tokens=MAX_NEW,
            do_sample=False,
        )
    got = runner.generate(enc, PROMPT, sel, options())
    assert got.n_visual_tokens == min(budget, enc.n_tokens) and got.n_layout_tokens == 0  # 999: every token
    assert list(got.token_ids) == out[0, ids.shape[1] :].tolist()


def test_qwen_signal_is_received_attention_of_the_last_full_block(qwen):
    """Against the stock eager attention weights of that block, pooled per merge group in raster order."""
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as stock_qwen

    model, processor, runner = qwen
    image = random_image(14, (170, 100))
    enc = runner.encode(image)
    block = model.model.visual.blocks[runner.adapter.score_block]
    assert runner.adapter.score_block == model.config.vision_config.fullatt_block_indexes[-1]
    seen = {}
    hook = block.register_forward_pre_hook(
        lambda m, a, k: seen.update(x=a[0], rotary=k["position_embeddings"]), with_kwargs=True
    )
    try:
        with torch.inference_mode():
            model.get_image_features(**processor.image_processor(images=image, return_tensors="pt"))
    finally:
        hook.remove()
    attn, t = block.attn, seen["x"].shape[0]
    with torch.inference_mode():
        q, k, v = attn.qkv(block.norm1(seen["x"])).reshape(t, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = stock_qwen.apply_rotary_pos_emb_vision(q, k, *seen["rotary"])
        _, weights = stock_qwen.eager_attention_forward(
            attn, q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], None, scaling=attn.scaling
        )
    received = weights[0].mean(dim=(0, 1)).view(-1, 4).sum(dim=1)  # (N,) window order
    grid = processor.image_processor(images=image, return_tensors="pt")["image_grid_thw"]
    window_index, _ = get_vision_window_index(grid, 2, model.config.vision_config.window_size, 14)
    raster = torch.empty_like(received)
    raster[window_index] = received
    torch.testing.assert_close(enc.inputs.cls_attn, raster, rtol=1e-5, atol=1e-6)
    assert float(enc.inputs.cls_attn.sum()) == pytest.approx(1.0, abs=1e-5)


def test_qwen_generate_many_equals_single_calls_and_refuses_merging(qwen):
    _, _, runner = qwen
    enc = runner.encode(random_image(15, (170, 100)))
    selections = [None, runner.select(enc, "attention", 4), runner.select(enc, "adaptive", 9)]
    share = runner.padding_share
    try:
        for runner.padding_share in (1.0, share):
            for selection, many in zip(
                selections, runner.generate_many(enc, PROMPT, selections, options()), strict=True
            ):
                assert many.token_ids == runner.generate(enc, PROMPT, selection, options()).token_ids
    finally:
        runner.padding_share = share
    with pytest.raises(ValueError, match=r"'visionzip' cannot run on 'tiny-qwen' \(qwen2_5_vl\)"):
        runner.select(enc, "visionzip", 6)
    meta = runner.metadata
    assert (meta["n_tokens"], meta["budget_presets"]) == (64, [27, 13])  # 512/256 of 1225 as shares of N
    assert meta["attention_signal"].startswith("attention received in the last full-attention")


def test_qwen_saved_folder_loads_like_the_in_memory_model(qwen, tmp_path):
    model, processor, runner = qwen
    folder = tmp_path / "tiny-qwen"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    assert check_model(str(folder)) == "tiny-qwen"
    loaded = load_runner(str(folder), device="cpu")
    image = random_image(16, (170, 100))
    sel = runner.select(runner.encode(image), "attention", 5)
    got = loaded.generate(loaded.encode(image), PROMPT, loaded.select(loaded.encode(image), "attention", 5), options(4))
    assert got.token_ids == runner.generate(runner.encode(image), PROMPT, sel, options(4)).token_ids
