"""Visualisers are pure functions: checked on hand-made images and numbers, no model."""

import numpy as np
import pytest
import torch
from PIL import Image

import pruning
from benchmarks.synthetic import synthetic_inputs
from visualizers import (
    attention_heatmap,
    budget_sweep_figure,
    complexity_figure,
    group_colour,
    method_bars,
    method_colour,
    overlay_selection,
    patch_boxes,
    tau_schedule_figure,
)


def grey(size=(40, 20), value=200):
    return Image.new("RGB", size, (value, value, value))


def test_patch_boxes_tile_the_image():
    boxes = patch_boxes((40, 20), (2, 4))
    assert len(boxes) == 8
    assert boxes[0] == (0, 0, 10, 10) and boxes[7] == (30, 10, 40, 20)
    area = sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes)
    assert area == 40 * 20


def test_kept_patches_clear_dropped_dimmed():
    out = np.asarray(overlay_selection(grey(), [1, 6], (2, 4), outline=None))
    assert out.shape == (20, 40, 3)
    assert (out[2:8, 12:18] == 200).all()  # patch 1 kept
    assert (out[12:18, 22:28] == 200).all()  # patch 6 kept
    assert (out[2:8, 2:8] == 50).all()  # patch 0 dropped, dim 0.25


def test_overlay_changes_with_selection_and_is_deterministic():
    a = np.asarray(overlay_selection(grey(), [0, 1], (2, 4)))
    b = np.asarray(overlay_selection(grey(), [0, 2], (2, 4)))
    assert not np.array_equal(a, b)
    assert np.array_equal(a, np.asarray(overlay_selection(grey(), torch.tensor([0, 1]), (2, 4))))


def test_colour_by_order_and_attention():
    img = grey()
    by_order = np.asarray(overlay_selection(img, [0, 5], (2, 4), order=[5, 0], colour_by="order", outline=None))
    assert not np.array_equal(by_order[5, 5], by_order[15, 15])  # first and last pick tinted differently
    att = [0.9, 0.1, 0, 0, 0, 0.5, 0, 0]
    by_att = np.asarray(overlay_selection(img, [0, 5], (2, 4), attention=att, colour_by="attention"))
    assert by_att.shape == (20, 40, 3)


def test_merged_groups_are_outlined_and_visible():
    inputs = synthetic_inputs((4, 4), 8, 16, seed=0, key_dim=4, n_regions=4)
    sel = pruning.select("visionzip", inputs, 6, dominant=3)
    img = grey((64, 64), 120)
    out = np.asarray(overlay_selection(img, sel.keep, (4, 4), groups=sel.groups, outline=None))
    merged = [i for i, g in enumerate(sel.groups.tolist()) if g >= 0 and i not in sel.keep.tolist()]
    assert merged, "visionzip should merge some patches"
    i = merged[0]
    x0, y0, _, _ = patch_boxes((64, 64), (4, 4))[i]
    assert tuple(out[y0, x0 + 5]) == group_colour(sel.groups[i].item())  # outline in group colour
    assert (out[y0 + 5, x0 + 5] == 120).all()  # interior undimmed


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(keep=[8]), "outside the 2x4 grid"),
        (dict(keep=[0], colour_by="rainbow"), "colour_by"),
        (dict(keep=[0], dim=2.0), "dim"),
        (dict(keep=[0], groups=[0, 1]), "groups has 2 entries"),
        (dict(keep=[0], colour_by="attention", attention=[1.0]), "attention has 1 values"),
    ],
)
def test_overlay_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        overlay_selection(grey(), grid=(2, 4), **kwargs)
    with pytest.raises(ValueError, match="PIL image"):
        overlay_selection(np.zeros((4, 4, 3)), [0], (2, 2))


def test_figures_carry_the_data():
    grid = (3, 4)
    att = torch.arange(12, dtype=torch.float32)
    heat = attention_heatmap(att, grid)
    z = np.array(heat.data[0].z)
    assert z.shape == (3, 4) and z[2, 3] == pytest.approx(11 / 66)
    with pytest.raises(ValueError, match="12 values for a 3x3 grid"):
        attention_heatmap(att, (3, 3))

    sweeps = {
        "attention": {"budget": [8, 16], "kept_erank": [3.0, 5.0], "retained_attention": [0.5, 0.7]},
        "diversity": {"budget": [8, 16], "kept_erank": [6.0, 9.0], "retained_attention": [0.2, 0.4]},
    }
    fig = budget_sweep_figure(sweeps, n_tokens=576)
    assert len(fig.data) == 4
    assert list(fig.data[2].y) == [6.0, 9.0] and fig.data[2].line.color == method_colour("diversity")

    bars = method_bars({"attention": {"kept_erank": 4.0}, "adaptive": {"kept_erank": 7.0}}, ["kept_erank"])
    assert list(bars.data[0].x) == ["attention", "adaptive"] and list(bars.data[0].y) == [4.0, 7.0]

    taus = tau_schedule_figure([0.01, 0.02, 0.25], tau_max=0.25, image_erank=90.0)
    assert list(taus.data[0].y) == [0.01, 0.02, 0.25]

    scale = complexity_figure(image_erank=100.0, entropy=4.8, erank_lo=60.0, erank_mean=90.0, erank_hi=120.0)
    assert scale.data[0].x[0] == 100.0


def test_method_colours_are_stable():
    assert method_colour("attention") == method_colour("attention")
    assert method_colour("my-new-rule") == method_colour("my-new-rule")
    assert method_colour("attention") != method_colour("diversity")
    assert group_colour(3) != group_colour(4)
