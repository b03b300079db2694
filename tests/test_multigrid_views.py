"""What the page draws for images the model reads as several patch grids, and Qwen2.5-VL's presets.

LLaVA-NeXT and LLaVA-OneVision read an image as a base grid plus crops (``Encoding.parts``): the
overlay, the replay frames and the attention heat map show every grid where it lies on the image.
Qwen2.5-VL's N follows the image, and so do its budget presets. Tiny random models of each stock
class (``app.runtime.synthetic.tiny_family``), nothing downloaded.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import pruning
from app.choices import image_presets
from app.compare import VIEW_SIZE, ComparePipeline
from app.gridview import BASE_PANEL, CROPS_PANEL, encoding_view
from app.handlers import Handlers
from app.replay import replay_frame
from app.runtime import Runner
from app.runtime.synthetic import tiny_family
from scoring import COCO_VOCABULARY
from visualizers import (
    PatchGrid,
    attention_heatmap,
    grid_attention_heatmap,
    grid_sheet,
    group_colour,
    overlay_grids,
    overlay_selection,
)

DIM = 0.25  # the overlays' default brightness of a dropped patch


def random_image(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype(np.uint8))


def pipeline_of(family: str) -> ComparePipeline:
    model, processor = tiny_family(family)
    runner = Runner.from_model(model, processor, name=f"tiny-{family}")
    return ComparePipeline(runner, vocabulary=COCO_VOCABULARY, max_new_tokens=3)


@pytest.fixture(scope="module")
def nxt() -> ComparePipeline:
    return pipeline_of("llava_next")


@pytest.fixture(scope="module")
def qwen() -> ComparePipeline:
    return pipeline_of("qwen2_5_vl")


def interior(box: tuple[int, int, int, int]) -> tuple[slice, slice]:
    """The pixels of a sheet box, less its one-pixel rim (where outlines and rounding sit)."""
    x0, y0, x1, y1 = box
    return slice(y0 + 1, y1 - 1), slice(x0 + 1, x1 - 1)


def drawn(image, encoding):
    """(view, grids, sheet, the sheet with nothing marked as a float array) of an encoded image."""
    view, grids = encoding_view(image, encoding, VIEW_SIZE)
    sheet = grid_sheet(view.size, grids)
    return view, grids, sheet, np.asarray(sheet.paste(view), dtype=np.float32)


def dimmed(plain: np.ndarray) -> np.ndarray:
    return (plain * DIM).astype(np.uint8)


# -- the overlay -------------------------------------------------------------------------------------


def test_next_grids_are_the_base_image_and_the_crops_where_they_lie(nxt):
    image = random_image(0, (300, 300))  # the tiny model's 2 x 2 crops
    enc = nxt.runner.encode(image)
    view, grids = encoding_view(image, enc, VIEW_SIZE)
    assert max(view.size) == VIEW_SIZE and view.size == (VIEW_SIZE, VIEW_SIZE)
    assert (
        [g.name for g in grids]
        == [p.name for p in enc.parts]
        == ["base", "crop 0,0", "crop 0,1", "crop 1,0", "crop 1,1"]
    )
    assert [g.panel for g in grids] == [BASE_PANEL] + [CROPS_PANEL] * 4
    assert [g.grid for g in grids] == [p.inputs.grid for p in enc.parts]
    scale = VIEW_SIZE / 300
    for part, g in zip(enc.parts, grids):  # every box is the encoding's own, scaled to the view
        for i in (0, part.n_tokens - 1):
            assert g.boxes[i] == pytest.approx(tuple(v * scale for v in enc.patch_box(part.offset + i)))
    sheet = grid_sheet(view.size, grids)
    assert [p.title for p in sheet.panels] == [BASE_PANEL, CROPS_PANEL]
    assert [p.grids for p in sheet.panels] == [(0,), (1, 2, 3, 4)]
    base, crops = sheet.panels
    assert base.canvas[2] <= crops.canvas[0]  # side by side for a square image
    # crop 0,1 lies in the top-right quarter of the crops panel's copy of the image
    x0, y0, x1, y1 = crops.image
    right = sheet.extent(2)
    assert right[0] >= (x0 + x1) / 2 - 1 and right[3] <= (y0 + y1) / 2 + 1


def test_overlay_keeps_one_crop_clear_and_dims_the_others(nxt):
    image = random_image(1, (300, 300))
    enc = nxt.runner.encode(image)
    view, grids, sheet, plain = drawn(image, enc)
    crop = enc.parts[2]  # "crop 0,1"
    keep = list(range(crop.offset, crop.offset + crop.n_tokens))
    out = np.asarray(overlay_grids(view, keep, grids, outline=None))
    assert out.shape == (sheet.size[1], sheet.size[0], 3)
    for i in keep:
        rows, cols = interior(sheet.boxes[i])
        assert np.array_equal(out[rows, cols], plain[rows, cols].astype(np.uint8))  # kept: the image itself
    for part in (enc.parts[0], enc.parts[1], enc.parts[4]):  # the base image and two other crops
        for i in range(part.offset, part.offset + part.n_tokens):
            rows, cols = interior(sheet.boxes[i])
            assert np.array_equal(out[rows, cols], dimmed(plain)[rows, cols])
    with_outline = np.asarray(overlay_grids(view, keep, grids))
    x0, y0, _, _ = sheet.boxes[keep[0]]
    assert tuple(with_outline[y0 + 2, x0]) == (255, 255, 255)  # kept patches outlined


@pytest.mark.parametrize("size", [(300, 300), (200, 30), (33, 100)])
def test_keep_all_leaves_every_covered_pixel_undimmed(nxt, size):
    image = random_image(2, size)
    enc = nxt.runner.encode(image)
    view, grids, sheet, plain = drawn(image, enc)
    out = np.asarray(overlay_grids(view, list(range(enc.n_tokens)), grids, outline=None)).astype(np.float32)
    covered = np.zeros(out.shape[:2], dtype=bool)
    for box in sheet.boxes:
        covered[box[1] : box[3], box[0] : box[2]] = True
    borders = np.zeros_like(covered)  # the crops' own outlines
    for j in sheet.panels[1].grids:
        x0, y0, x1, y1 = sheet.extent(j)
        borders[y0:y1, [x0, x1 - 1]] = borders[[y0, y1 - 1], x0:x1] = True
    assert np.array_equal(out[covered & ~borders], plain[covered & ~borders])
    canvas = np.zeros_like(covered)  # the panels' drawn areas; outside them only white and titles
    for panel in sheet.panels:
        x0, y0, x1, y1 = panel.canvas
        canvas[y0:y1, x0:x1] = True
    assert np.array_equal(out[~canvas], plain[~canvas])
    assert np.array_equal(out[canvas & ~covered], dimmed(plain)[canvas & ~covered])  # what no patch covers
    if size == (200, 30):  # the crops reach past the image into the processor's padding: grey, kept clear
        crops = sheet.panels[1]
        top = sheet.extent(1)[1]
        assert top < crops.image[1] and tuple(out[top + 1, crops.image[0] + 5].astype(int)) == (128, 128, 128)


def test_merged_groups_are_outlined_in_every_grid(nxt):
    image = random_image(3, (300, 300))
    key = nxt.load(image)["key"]
    sel = nxt.select(key, ["visionzip"], 20)["visionzip"]
    enc = nxt.runner.encode(image)
    view, grids, sheet, _ = drawn(image, enc)
    out = np.asarray(overlay_grids(view, sel.keep, grids, groups=sel.groups, outline=None))
    merged = [i for i, g in enumerate(sel.groups.tolist()) if g >= 0 and i not in sel.keep.tolist()]
    assert {enc.part_of(i).name for i in merged} == {p.name for p in enc.parts}  # merged in every grid
    for i in merged:
        x0, y0, _, y1 = sheet.boxes[i]
        assert tuple(out[(y0 + y1) // 2, x0]) == group_colour(int(sel.groups[i]))


def test_pipeline_draws_multigrid_sheets_and_single_grids_as_before(nxt, qwen):
    key = nxt.load(random_image(4, (300, 300)))["key"]
    sheet = grid_sheet(nxt.view_image(key).size, nxt.patch_grids(key))
    views = nxt.view(key, ["attention", "adaptive"], 9, colour_by="attention")
    assert all(v["overlay"].size == sheet.size for v in views.values())
    # Qwen2.5-VL has one grid: the square view and the one-grid overlay, exactly as before
    image = random_image(5, (300, 120))
    key = qwen.load(image)["key"]
    assert qwen.patch_grids(key) == ()
    enc = qwen.runner.encode(image)
    sel = qwen.select(key, ["attention"], 5)["attention"]
    got = qwen.view(key, ["attention"], 5, colour_by="order")["attention"]["overlay"]
    square = image.crop((0, 0, 300, 120)).resize((VIEW_SIZE, VIEW_SIZE), Image.BICUBIC)
    want = overlay_selection(
        square, sel.keep, enc.grid, order=sel.order, attention=enc.inputs.cls_attn, colour_by="order"
    )
    assert np.array_equal(np.asarray(got), np.asarray(want))


# -- the replay --------------------------------------------------------------------------------------


def test_replay_steps_through_the_picks_of_every_grid_in_order(nxt):
    image = random_image(6, (300, 300))
    key = nxt.load(image)["key"]
    enc = nxt.runner.encode(image)
    sel = nxt.select(key, ["attention"], 9)["attention"]
    order = sel.order.tolist()
    assert len({enc.part_of(i).name for i in order}) > 1  # the walk crosses grids
    _, _, sheet, plain = drawn(image, enc)
    frames = [nxt.step_through(key, "attention", 9, s) for s in range(1, len(order) + 1)]
    assert [f["n_steps"] for f in frames] == [9] * 9
    for s, frame in enumerate(frames, start=1):
        pick = order[s - 1]
        part = enc.part_of(pick)
        assert frame["picked"] == order[:s] and frame["pick"] == pick
        assert (frame["pick_grid"], frame["pick_row"], frame["pick_col"]) == (
            part.name,
            *divmod(pick - part.offset, part.inputs.grid[1]),
        )
        out = np.asarray(frame["image"])
        assert out.shape == (sheet.size[1], sheet.size[0], 3)
        rows, cols = interior(sheet.boxes[pick])
        assert not np.array_equal(out[rows, cols], dimmed(plain)[rows, cols])  # this pick shows
        for later in order[s:]:
            rows, cols = interior(sheet.boxes[later])
            assert np.array_equal(out[rows, cols], dimmed(plain)[rows, cols])  # later picks still dimmed
    h = Handlers(nxt)
    text = h.step(key, "attention", 9, 9, [slot.default for slot in h.slots])[1]
    last = enc.part_of(order[-1])
    assert f"token {order[-1]} ({last.name}, row" in text


def test_replay_crosses_out_what_each_pick_suppresses_across_grids(nxt):
    image = random_image(7, (300, 300))
    key = nxt.load(image)["key"]
    params = {"adaptive": {"tau_max": 0.9, "step": 1.0}}
    sel = nxt.select(key, ["adaptive"], 40, params)["adaptive"]
    enc = nxt.runner.encode(image)
    removed = sel.info["removed_at"].tolist()  # lifted: indices into the whole selection's order
    step = max(removed) + 1  # the last pick that suppresses something: in the last crop
    frame = nxt.step_through(key, "adaptive", 40, step, params)
    now = [j for j, s in enumerate(removed) if s == step - 1]
    assert now and frame["suppressed_now"] == now
    assert enc.part_of(now[0]).name == enc.part_of(sel.order[step - 1].item()).name == "crop 1,1"
    assert frame["suppressed_before"] == [j for j, s in enumerate(removed) if 0 <= s < step - 1]
    assert frame["tau"] == sel.info["taus"][step - 1]
    sheet = grid_sheet(nxt.view_image(key).size, nxt.patch_grids(key))
    out = np.asarray(frame["image"])
    for j in now:  # crossed out in red, where the token lies
        x0, y0, x1, y1 = sheet.boxes[j]
        cx, cy = (x0 + x1 - 1) // 2, (y0 + y1 - 1) // 2
        window = out[cy - 1 : cy + 2, cx - 1 : cx + 2].reshape(-1, 3)
        assert any(tuple(p) == (230, 30, 30) for p in window)


# -- the heat map ------------------------------------------------------------------------------------


def test_heatmap_has_one_map_per_grid_with_its_shape_and_its_own_attention(nxt):
    h = Handlers(nxt)
    image = random_image(8, (200, 30))  # crops unpadded: 2 x 4 patches each
    _, _, _, heat = h.load(image)
    enc = nxt.runner.encode(image)
    assert [t.name for t in heat.data] == [p.name for p in enc.parts]
    for trace, part in zip(heat.data, enc.parts):
        z = np.array(trace.z)
        assert z.shape == part.inputs.grid
        a = part.inputs.cls_attn.float()
        assert z.reshape(-1).tolist() == pytest.approx((a / a.mean()).tolist(), rel=1e-5)  # its own grid's attention
    assert [t.xaxis for t in heat.data] == ["x", "x2", "x2"]  # the base image's panel, then the crops'
    assert [a.text for a in heat.layout.annotations] == [BASE_PANEL, CROPS_PANEL]


def test_single_grid_heatmap_is_unchanged(qwen):
    h = Handlers(qwen)
    image = random_image(9, (300, 120))
    _, _, _, heat = h.load(image)
    assert len(heat.data) == 1 and np.array(heat.data[0].z).shape == qwen.runner.encode(image).grid


# -- bad input ---------------------------------------------------------------------------------------


def two_grids() -> list[PatchGrid]:
    base = PatchGrid("base", BASE_PANEL, (2, 2), ((0, 0, 5, 5), (5, 0, 10, 5), (0, 5, 5, 10), (5, 5, 10, 10)))
    crop = PatchGrid("crop 0,0", CROPS_PANEL, (1, 2), ((0, 0, 5, 10), (5, 0, 10, 10)))
    return [base, crop]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(keep=[6]), r"keep holds indices outside the image's N = 6 tokens: \[6\]"),
        (dict(keep=[-1]), "keep holds indices outside"),
        (dict(keep=[0], order=[0, 9]), r"order holds indices outside the image's N = 6 tokens: \[9\]"),
        (dict(keep=[0], groups=[0, 1, 2]), "groups has 3 entries for 6 tokens"),
        (dict(keep=[0], colour_by="attention", attention=[1.0] * 4), "attention has 4 values for 6 tokens"),
        (dict(keep=[0], dim=-0.5), "dim must lie in"),
    ],
)
def test_overlay_grids_refuses_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        overlay_grids(Image.new("RGB", (10, 10)), grids=two_grids(), **kwargs)


def test_grids_and_heatmaps_refuse_bad_shapes():
    with pytest.raises(ValueError, match=r"grid 'crop' has 3 boxes for its 2x2 patches"):
        PatchGrid("crop", CROPS_PANEL, (2, 2), ((0, 0, 1, 1),) * 3)
    with pytest.raises(ValueError, match="not \\(left, top, right, bottom\\)"):
        PatchGrid("crop", CROPS_PANEL, (1, 1), ((5, 0, 1, 1),))
    with pytest.raises(ValueError, match="non-empty sequence of PatchGrid"):
        overlay_grids(Image.new("RGB", (10, 10)), [0], [])
    with pytest.raises(ValueError, match="PIL image"):
        overlay_grids(np.zeros((10, 10, 3)), [0], two_grids())
    with pytest.raises(ValueError, match="attention has 5 values for 2 grids of 6 patches"):
        grid_attention_heatmap([0.1] * 5, two_grids())
    with pytest.raises(ValueError, match="attention has 5 values for 2 grids"):
        attention_heatmap([0.1] * 5, two_grids())  # the page's entry point, given an image's grids
    sel = pruning.Selection(method="attention", budget=1, keep=torch.tensor([0]), order=torch.tensor([0]), info={})
    with pytest.raises(ValueError, match="grid must be \\(rows, cols\\) or a non-empty sequence of PatchGrid"):
        replay_frame(Image.new("RGB", (10, 10)), ["base"], sel, 1)


# -- Qwen2.5-VL: presets are shares of each image's own N ---------------------------------------------


def shares_of(n: int) -> list[int]:
    """512/256 of 1225, AgilePruner's Qwen2.5-VL budgets, as shares of ``n`` (rounded, at least 1)."""
    return sorted({max(1, round(b * n / 1225)) for b in (512, 256)}, reverse=True)


def test_qwen_presets_are_shares_of_each_images_own_n(qwen):
    small, large = random_image(10, (70, 40)), random_image(11, (300, 300))
    got = {}
    for name, image in (("small", small), ("large", large)):
        summary = qwen.load(image)
        n = summary["n_tokens"]
        assert summary["presets"] == shares_of(n) == qwen.runner.adapter.budget_presets(n)
        assert qwen.presets(summary["key"]) == summary["presets"]
        got[name] = (n, summary["presets"])
    (n_small, small_presets), (n_large, large_presets) = got["small"], got["large"]
    assert n_small < n_large and small_presets != large_presets
    assert large_presets == [20, 10]  # 49 tokens: 512 * 49 / 1225 = 20.5, 256 * 49 / 1225 = 10.2
    meta = qwen.runner.metadata  # the model's nominal presets stay those of its largest image
    assert meta["budget_presets"] == shares_of(meta["n_tokens"])


def test_other_families_keep_their_fixed_presets(nxt):
    meta = nxt.runner.metadata
    for size in ((300, 300), (200, 30)):
        summary = nxt.load(random_image(12, size))
        assert summary["presets"] == meta["budget_presets"] == [18, 9]  # 640/320 of 2880, scaled
    assert image_presets({"budget_presets": [5, 4, 2, 1]}, 16) == [5, 4, 2, 1]
    assert image_presets({"budget_presets": [27, 13], "preset_shares": [[512, 256], 1225]}, 100) == [42, 21]


def test_qwen_api_default_budget_and_page_presets_follow_the_image(qwen, tmp_path: Path):
    image = random_image(13, (70, 40))
    payload = qwen.compare(image, "what is in the image", ["attention"])
    n = payload["image"]["n_tokens"]
    assert payload["budget"] == shares_of(n)[-1] and payload["methods"]["attention"]["n_visual_tokens"] == min(
        shares_of(n)[-1], n
    )
    from app.ui import build_demo

    demo = build_demo(qwen)
    (on_load,) = {fn.fn for fn in demo.fns.values() if fn.name == "on_load"}
    path = tmp_path / "small.png"
    image.save(path)
    upload = {"path": str(path), "url": None, "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}
    out = on_load(SimpleNamespace(session_hash="s"), upload, shares_of(n)[0])
    (radio,) = [c for c in out if getattr(c, "label", None) == "Paper presets"]
    update = out[radio]
    assert [value for _, value in update.choices] == [str(p) for p in shares_of(n)]
    assert update.value == str(shares_of(n)[0])


def test_onevision_budgets_reach_an_image_that_gives_more_than_the_nominal_n():
    """OneVision's unshrunk grid just under its threshold gives more tokens than the nominal N; the
    page's slider and every request then go up to that image's own N (keeping every token)."""
    ov = pipeline_of("llava_onevision")
    big = ov.load(random_image(21, (57, 113)))
    small = ov.load(random_image(22, (60, 60)))
    assert big["n_tokens"] > ov.n_tokens >= small["n_tokens"]
    assert ov.budget_limit(big["key"]) == big["n_tokens"] and ov.budget_limit(small["key"]) == ov.n_tokens
    every = ov.view(big["key"], ["attention"], big["n_tokens"])["attention"]
    assert every["n_visual_tokens"] == big["n_tokens"]
    with pytest.raises(ValueError, match=f"budget must be a whole number from 1 to {big['n_tokens']}"):
        ov.view(big["key"], ["attention"], big["n_tokens"] + 1)
    with pytest.raises(ValueError, match=f"from 1 to {ov.n_tokens}"):
        ov.view(small["key"], ["attention"], big["n_tokens"])
    out = ov.compare(random_image(21, (57, 113)), "what is this ?", ["attention"], big["n_tokens"])
    assert out["methods"]["attention"]["n_visual_tokens"] == big["n_tokens"]
