"""Bad input meets a ValueError that names the offending value; nothing is silently clipped."""

import re

import pytest
import torch

import pruning


def make(n=16, **override):
    g = torch.Generator().manual_seed(0)
    fields = dict(
        feats_pre=torch.randn(n, 8, generator=g),
        feats=torch.randn(n, 12, generator=g),
        cls_attn=torch.rand(n, generator=g),
        grid=(4, n // 4),
        keys=torch.randn(n, 4, generator=g),
        cls_feat=torch.randn(8, generator=g),
        patch_embeds=torch.randn(n, 5, generator=g),
        text_embeds=torch.randn(2, 5, generator=g),
    )
    fields.update(override)
    return pruning.PruneInputs(**fields)


@pytest.mark.parametrize("field", ["feats_pre", "feats", "cls_attn", "keys", "cls_feat", "patch_embeds", "text_embeds"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_named(field, bad):
    tensor = getattr(make(), field).clone()
    tensor.view(-1)[3] = bad
    with pytest.raises(ValueError, match=f"{field} contains NaN or Inf"):
        make(**{field: tensor})


@pytest.mark.parametrize(
    "field, shape", [("feats_pre", (15, 8)), ("cls_attn", (17,)), ("keys", (12, 4)), ("patch_embeds", (15, 5))]
)
def test_mismatched_token_counts(field, shape):
    with pytest.raises(ValueError, match=f"{field} has {shape[0]} tokens but feats has 16"):
        make(**{field: torch.rand(*shape)})


def test_shapes_dtypes_grid_and_devices():
    with pytest.raises(ValueError, match="feats must have 2 dimension"):
        make(feats=torch.rand(16))
    with pytest.raises(ValueError, match="floating-point"):
        make(cls_attn=torch.ones(16, dtype=torch.long))
    with pytest.raises(ValueError, match=r"grid \(4, 5\) holds 20 patches but there are N = 16"):
        make(grid=(4, 5))
    with pytest.raises(ValueError, match="pair of positive ints"):
        make(grid=(4.0, 4))
    with pytest.raises(ValueError, match="cls_feat has 3 channels"):
        make(cls_feat=torch.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        make(cls_attn=-torch.rand(16))
    with pytest.raises(ValueError, match="must be a torch.Tensor"):
        make(feats=[[1.0]])
    with pytest.raises(ValueError, match="no tokens"):
        pruning.PruneInputs(torch.zeros(0, 2), torch.zeros(0, 2), torch.zeros(0), (1, 1))


def test_question_embeddings_must_share_a_space():
    with pytest.raises(ValueError, match="text_embeds has 3 channels but patch_embeds has 5"):
        make(text_embeds=torch.ones(2, 3))
    with pytest.raises(ValueError, match="text_embeds must have 2 dimension"):
        make(text_embeds=torch.ones(5))
    with pytest.raises(ValueError, match=r"text_embeds has no rows \(M = 0\)"):
        make(text_embeds=torch.ones(0, 5))
    with pytest.raises(ValueError, match="patch_embeds must be a floating-point"):
        make(patch_embeds=torch.ones(16, 5, dtype=torch.long))
    assert make(patch_embeds=None, text_embeds=torch.ones(1, 3)).text_embeds.shape == (1, 3)


@pytest.mark.parametrize("budget", [0, -3, 2.5, "8", True, None])
def test_bad_budget(budget):
    with pytest.raises(ValueError, match="budget"):
        pruning.select("attention", make(), budget)


def test_unknown_method_lists_known_ones():
    with pytest.raises(ValueError, match="unknown pruning method 'divprune'.*attention, diversity"):
        pruning.select("divprune", make(), 4)


def test_unknown_parameter_lists_valid_ones():
    with pytest.raises(ValueError, match=r"no parameter\(s\) \['tau'\].*'erank_avg', 'step', 'tau_max'"):
        pruning.select("adaptive", make(), 4, tau=0.1)


@pytest.mark.parametrize(
    "method, params, message",
    [
        ("adaptive", {"tau_max": 0}, "tau_max must be a positive"),
        ("adaptive", {"erank_avg": float("nan")}, "erank_avg must be a positive"),
        ("adaptive", {"step": -0.01}, "step must be a positive"),
        ("vispruner", {"r": 1.5}, r"r must be a number in \[0, 1\]"),
        ("hybrid", {"ratio": -0.1}, "ratio must be a number"),
        ("hybrid-erank", {"erank_lo": 100.0, "erank_hi": 50.0}, "erank_hi must exceed erank_lo"),
        ("hybrid-erank", {"erank_lo": -1.0}, "erank_lo must be a finite number of at least 1"),
        ("hybrid-erank", {"erank_hi": float("nan")}, "erank_hi must be a finite number of at least 1"),
        ("hybrid-erank", {"inverse": "yes"}, "inverse must be True or False"),
        ("visionzip", {"dominant": 0}, "dominant must be None or a positive int"),
        ("visionzip", {"dominant": 9}, "dominant = 9 exceeds the budget 8"),
        ("random", {"seed": 1.5}, "seed must be an int"),
        ("random", {"generator": "gen"}, "generator must be a CPU torch.Generator"),
        ("prumerge+", {"adaptive": "yes"}, "adaptive must be True or False"),
        ("dart", {"pivots": 0}, "pivots must be a positive int"),
        ("dart", {"pivots": 2.0}, "pivots must be a positive int"),
        ("cdpruner", {"theta": 1.0}, r"theta must be None or a number in \[0, 1\)"),
        ("cdpruner", {"theta": -0.5}, r"theta must be None or a number in \[0, 1\)"),
        ("cdpruner", {"theta": "0.5"}, r"theta must be None or a number in \[0, 1\)"),
    ],
)
def test_bad_parameters(method, params, message):
    with pytest.raises(ValueError, match=message):
        pruning.select(method, make(), 8, **params)


def test_parameters_are_checked_even_when_keeping_everything():
    with pytest.raises(ValueError, match="tau_max"):
        pruning.select("adaptive", make(), 100, tau_max=-1)


@pytest.mark.parametrize(
    "method, field",
    [
        ("visionzip", "keys"),
        ("visionzip", "cls_feat"),
        ("prumerge+", "keys"),
        ("cdpruner", "patch_embeds"),
        ("cdpruner", "text_embeds"),
    ],
)
def test_missing_input_a_method_needs(method, field):
    with pytest.raises(ValueError, match=re.escape(f"method '{method}' needs inputs.{field}, which is None")):
        pruning.select(method, make(**{field: None}), 8)


@pytest.mark.parametrize(
    "method, field",
    [
        ("diversity", "feats"),
        ("adaptive", "feats"),
        ("hybrid", "feats"),
        ("hybrid-erank", "feats"),
        ("vispruner", "feats_pre"),
        ("visionzip", "keys"),
        ("prumerge+", "keys"),
        ("dart", "feats"),
        ("cdpruner", "feats"),
        ("cdpruner", "patch_embeds"),
        ("cdpruner", "text_embeds"),
    ],
)
def test_zero_norm_rows_are_named(method, field):
    tensor = getattr(make(), field).clone()
    row = 1 if field == "text_embeds" else 5
    tensor[row] = 0
    inputs = make(**{field: tensor})
    with pytest.raises(ValueError, match=rf"{field} has zero-norm row\(s\) \[{row}\]"):
        pruning.select(method, inputs, 8, **({"dominant": 2} if method == "visionzip" else {}))


def test_zero_norm_rows_do_not_matter_to_attention():
    feats = make().feats.clone()
    feats[5] = 0
    assert pruning.select("attention", make(feats=feats), 4).keep.numel() == 4


def test_select_batch_needs_a_sequence():
    with pytest.raises(ValueError, match="sequence of PruneInputs"):
        pruning.select_batch("attention", make(), 4)
    with pytest.raises(ValueError, match="unbatch needs feats of shape"):
        pruning.PruneInputs.unbatch(torch.ones(4, 2), torch.ones(4, 2), torch.ones(4), (2, 2))


def test_apply_selection_gathers_and_projects():
    inputs = make()
    sel = pruning.select("attention", inputs, 5)
    assert torch.equal(pruning.apply_selection(inputs, sel), inputs.feats[sel.keep])
    zipped = pruning.select("visionzip", inputs, 6, dominant=3)
    with pytest.raises(ValueError, match="pre-projector tokens"):
        pruning.apply_selection(inputs, zipped)
    proj = torch.nn.Linear(8, 12)
    out = pruning.apply_selection(inputs, zipped, project=proj)
    assert out.shape == (6, 12)


def test_method_params_expose_defaults():
    assert pruning.method_params("adaptive") == {"step": 0.01, "tau_max": 0.25, "erank_avg": 90.0}
    assert pruning.method_params("hybrid-erank")["erank_lo"] == 60.0
    assert pruning.method_params("attention") == {}
