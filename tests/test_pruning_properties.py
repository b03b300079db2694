"""Properties every registered method must have, parametrised over ``pruning.list_methods()``."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pruning
from benchmarks.selection import with_query
from benchmarks.synthetic import synthetic_inputs

METHODS = pruning.list_methods()
CONTENT_BLIND = {"random", "uniform", "downsample"}


def small_inputs(seed=0, grid=(8, 8), dim_pre=48, dim=96):
    return with_query(synthetic_inputs(grid, dim_pre, dim, seed=seed, n_regions=10, key_dim=16), seed=seed, dim=16)


def expected_outputs(sel, budget, n):
    """How many tokens the LLM should receive: the budget (clipped to N), or, for a method whose
    count comes from the image (``info["adaptive"]``, PruMerge+), its own count below N."""
    if sel.info.get("adaptive") and budget < n:
        return sel.n_output_tokens
    return min(budget, n)


def test_registry_lists_the_specified_methods():
    # methods.md's methods, in its order, lead the registry; a new method may follow them
    assert METHODS[:9] == [
        "attention",
        "diversity",
        "adaptive",
        "vispruner",
        "visionzip",
        "hybrid",
        "hybrid-erank",
        "random",
        "uniform",
    ]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("budget", [1, 5, 16, 33, 63])
def test_selection_shape_and_order(method, budget):
    inputs = small_inputs()
    sel = pruning.select(method, inputs, budget)
    n = inputs.n_tokens
    assert sel.method == method
    assert sel.n_output_tokens == expected_outputs(sel, budget, n) == sel.budget
    keep = sel.keep
    assert keep.dtype == torch.int64
    assert keep.unique().numel() == keep.numel()
    assert all(0 <= i < n for i in keep.tolist())
    assert torch.equal(keep, torch.sort(keep).values), "keep must be raster-sorted"
    assert torch.equal(torch.sort(sel.order).values, keep), "order must hold the same indices as keep"
    if sel.tokens is None:
        assert keep.numel() == budget


@pytest.mark.parametrize("method", METHODS)
def test_parameter_ranges_accept_the_defaults(method):
    spec = pruning.get_method(method)
    assert set(spec.ranges) == set(spec.defaults)
    for name, r in spec.ranges.items():
        default = spec.defaults[name]
        assert r.kind in ("number", "int", "bool", "other")
        if r.kind == "bool":
            assert default in r.choices and isinstance(default, bool)
        if r.kind in ("number", "int") and default is not None:
            assert isinstance(default, (int, float)) and not isinstance(default, bool)
            assert (r.lo is None or r.lo <= default) and (r.hi is None or default <= r.hi), (name, r)
            assert r.step is not None and r.step > 0
        if r.kind != "other":
            spec.fn(small_inputs(), 8, **{name: default})  # the registry's check accepts it


@pytest.mark.parametrize("method", METHODS)
def test_capabilities_say_what_the_selection_holds(method):
    spec = pruning.get_method(method)
    inputs = small_inputs(seed=4)
    full = pruning.select(method, inputs, 24)
    assert (full.tokens is not None) == spec.merges == (full.groups is not None)
    if spec.replayable:  # the walk for a smaller budget is the first picks of a larger one
        for k in (1, 5, 13):
            assert pruning.select(method, inputs, k).order.tolist() == full.order[:k].tolist()
    if spec.tau_schedule is not None:
        cap = spec.defaults[spec.tau_schedule]
        assert len(full.info["taus"]) == 24 and max(full.info["taus"]) <= cap + 1e-6
        assert full.info["removed_at"].shape == (inputs.n_tokens,)


def test_capability_arguments_are_checked_at_registration():
    from pruning.registry import positive, register

    with pytest.raises(TypeError, match="tau_schedule 'cap' .* is not one of its parameters"):
        register("bad-schedule", tau_schedule="cap")(lambda inputs, budget, *, tau=0.1: None)
    with pytest.raises(TypeError, match="a default fails its own check"):
        register("bad-default", checks={"alpha": positive})(lambda inputs, budget, *, alpha=-1.0: None)
    assert "bad-schedule" not in pruning.list_methods() and "bad-default" not in pruning.list_methods()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("budget", [64, 65, 1000])
def test_budget_at_or_above_n_keeps_everything(method, budget):
    inputs = small_inputs()
    sel = pruning.select(method, inputs, budget)
    assert torch.equal(sel.keep, torch.arange(64))
    assert sel.tokens is None
    assert sel.info["kept_all"] is True
    assert sel.info["budget_clipped"] is (budget > 64)
    assert sel.info["requested_budget"] == budget


@pytest.mark.parametrize("method", METHODS)
def test_deterministic(method):
    first = pruning.select(method, small_inputs(seed=3), 20)
    second = pruning.select(method, small_inputs(seed=3), 20)
    assert torch.equal(first.order, second.order)
    if first.tokens is not None:
        assert torch.equal(first.tokens, second.tokens)


@pytest.mark.parametrize("method", [m for m in METHODS if m not in CONTENT_BLIND | {"vispruner", "prumerge+"}])
def test_duplicate_tokens_keep_the_lower_index(method):
    # Tokens 10 and 50 are exact duplicates (features, keys, attention, embeddings): a tie that must
    # go to 10. vispruner is excluded: its even/odd split decides which duplicate survives by
    # position; so is prumerge+, whose spatial samples are positions.
    base = small_inputs(seed=5)
    copy = lambda t: t.clone().index_copy_(0, torch.tensor([50]), t[10:11])
    inputs = pruning.PruneInputs(
        feats_pre=copy(base.feats_pre),
        feats=copy(base.feats),
        cls_attn=copy(base.cls_attn),
        grid=base.grid,
        keys=copy(base.keys),
        cls_feat=base.cls_feat,
        patch_embeds=copy(base.patch_embeds),
        text_embeds=base.text_embeds,
    )
    for budget in (4, 12, 30, 50):
        keep = set(pruning.select(method, inputs, budget).keep.tolist())
        if len({10, 50} & keep) == 1:
            assert 10 in keep, f"{method} kept the higher-index duplicate at budget {budget}"


@pytest.mark.parametrize("method", ["attention", "diversity", "adaptive", "hybrid", "hybrid-erank", "dart", "cdpruner"])
def test_complete_ties_pick_lowest_indices(method):
    # Equal attention everywhere, orthonormal features and a question equally relevant to every
    # patch: every comparison in these rules ties.
    n = 16
    eye = torch.eye(n)
    inputs = pruning.PruneInputs(
        feats_pre=eye,
        feats=eye,
        cls_attn=torch.full((n,), 1 / n),
        grid=(4, 4),
        patch_embeds=eye,
        text_embeds=torch.ones(1, n),
    )
    assert pruning.select(method, inputs, 5).order.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("method", METHODS)
def test_one_token_image(method):
    one = torch.ones(1, 4)
    inputs = pruning.PruneInputs(
        one, one, torch.ones(1), (1, 1), keys=one, cls_feat=torch.ones(4), patch_embeds=one, text_embeds=one
    )
    sel = pruning.select(method, inputs, 1)
    assert sel.keep.tolist() == [0]


@pytest.mark.parametrize("method", METHODS)
def test_select_batch_equals_single_calls(method):
    singles = [small_inputs(seed=s) for s in range(3)]
    stacked = pruning.PruneInputs.unbatch(
        torch.stack([s.feats_pre for s in singles]),
        torch.stack([s.feats for s in singles]),
        torch.stack([s.cls_attn for s in singles]),
        singles[0].grid,
        keys=torch.stack([s.keys for s in singles]),
        cls_feat=torch.stack([s.cls_feat for s in singles]),
        patch_embeds=torch.stack([s.patch_embeds for s in singles]),
        text_embeds=torch.stack([s.text_embeds for s in singles]),
    )
    batch = pruning.select_batch(method, stacked, 12)
    for one, sel in zip(singles, batch):
        ref = pruning.select(method, one, 12)
        assert torch.equal(ref.order, sel.order)
        if ref.tokens is not None:
            assert torch.equal(ref.tokens, sel.tokens)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_any_float_dtype(method, dtype):
    inputs = small_inputs(seed=1)
    low = pruning.PruneInputs(
        inputs.feats_pre.to(dtype),
        inputs.feats.to(dtype),
        inputs.cls_attn.to(dtype),
        inputs.grid,
        keys=inputs.keys.to(dtype),
        cls_feat=inputs.cls_feat.to(dtype),
        patch_embeds=inputs.patch_embeds.to(dtype),
        text_embeds=inputs.text_embeds.to(dtype),
    )
    sel = pruning.select(method, low, 16)
    assert sel.n_output_tokens == expected_outputs(sel, 16, low.n_tokens)
    assert sel.keep.unique().numel() == sel.keep.numel()


@settings(max_examples=40, deadline=None)
@given(
    method=st.sampled_from(METHODS),
    rows=st.integers(1, 7),
    cols=st.integers(1, 7),
    data=st.data(),
)
def test_any_grid_and_budget(method, rows, cols, data):
    n = rows * cols
    budget = data.draw(st.integers(1, n + 2))
    seed = data.draw(st.integers(0, 10_000))
    g = torch.Generator().manual_seed(seed)
    inputs = pruning.PruneInputs(
        feats_pre=torch.randn(n, 6, generator=g),
        feats=torch.randn(n, 10, generator=g),
        cls_attn=torch.rand(n, generator=g),
        grid=(rows, cols),
        keys=torch.randn(n, 3, generator=g),
        cls_feat=torch.randn(6, generator=g),
        patch_embeds=torch.randn(n, 5, generator=g),
        text_embeds=torch.randn(2, 5, generator=g),
    )
    sel = pruning.select(method, inputs, budget)
    assert sel.n_output_tokens == expected_outputs(sel, budget, n)
    assert sel.keep.unique().numel() == sel.keep.numel()
    assert torch.equal(sel.keep, torch.sort(sel.keep).values)
    if sel.groups is not None:
        assert sel.groups.shape == (n,)
        assert int(sel.groups.max()) < sel.n_output_tokens


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_matches_cpu(method):
    inputs = with_query(synthetic_inputs(seed=2), seed=2)
    cpu = pruning.select(method, inputs, 64)
    gpu = pruning.select(method, inputs.to("cuda"), 64)
    assert gpu.keep.device.type == "cuda"
    assert cpu.order.tolist() == gpu.order.cpu().tolist()
