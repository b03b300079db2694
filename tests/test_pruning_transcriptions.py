"""The four later methods (downsample, prumerge+, dart, cdpruner): hand-built cases, and agreement with
the plain transcriptions of the authors' selection rules in ``benchmarks/plain.py`` on identical
random tensors: odd grids, several seeds and budgets, and inputs full of exact ties."""

import pytest
import torch

import pruning
from benchmarks.plain import plain_cdpruner, plain_dart, plain_downsample, plain_prumerge_plus
from benchmarks.selection import with_query
from benchmarks.synthetic import synthetic_inputs
from pruning.methods.cdpruner import _dpp_device, _dpp_host, cdpruner_kernel, question_relevance
from pruning.methods.downsample import pooling_cells
from pruning.methods.prumerge import iqr_outliers

GRIDS = [(24, 24), (7, 9), (5, 13), (1, 11), (9, 2)]
SEEDS = [0, 1, 2]


def random_inputs(grid, seed):
    """Clustered synthetic inputs (``benchmarks/synthetic.py``) with a synthetic question."""
    base = synthetic_inputs(grid, 48, 96, seed=seed, n_regions=min(10, grid[0] * grid[1]), key_dim=12)
    return with_query(base, seed=seed, dim=16)


def exact_vectors(n, generator, dim=8):
    """(n, dim) unit vectors with four entries of ±1/2: every cosine between them is a multiple of
    1/4, computed exactly in float32 whatever the order of the sums, so equal cosines are exact ties."""
    out = torch.zeros(n, dim)
    for i in range(n):
        cols = torch.randperm(dim, generator=generator)[:4]
        out[i, cols] = 0.5 * (2 * torch.randint(0, 2, (4,), generator=generator).float() - 1)
    return out


def tied_inputs(grid, seed):
    """Inputs full of exact ties: features, keys and embeddings from ``exact_vectors`` (many equal
    cosines and L1 norms), attention with four values, and a third of the tokens copying another
    token's every field."""
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    src = torch.randint(0, n, (n // 3,), generator=g)
    dst = torch.randperm(n, generator=g)[: n // 3]
    copy = lambda t: t.clone().index_copy_(0, dst, t[src])
    scale = torch.randint(1, 3, (n, 1), generator=g).float()  # L1 norms 2 or 4: ties among the pivots
    return pruning.PruneInputs(
        feats_pre=copy(torch.randint(-3, 4, (n, 6), generator=g).float()),
        feats=copy(exact_vectors(n, g) * scale),
        cls_attn=copy(torch.randint(1, 5, (n,), generator=g).float() / 100),
        grid=grid,
        keys=copy(exact_vectors(n, g)),
        patch_embeds=copy(exact_vectors(n, g)),
        text_embeds=exact_vectors(2, g),
    )


def budgets_for(n):
    return sorted({1, 2, 3, 5, n // 4 or 1, n // 2 or 1, n - 1} - {0})


# -- agreement with the transcriptions -----------------------------------------------------------


@pytest.mark.parametrize("make", [random_inputs, tied_inputs])
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_downsample_matches_transcription(make, grid, seed):
    inputs = make(grid, seed)
    for k in budgets_for(inputs.n_tokens):
        sel = pruning.select("downsample", inputs, k)
        keep, tokens = plain_downsample(inputs.feats, *grid, k)
        assert sel.keep.tolist() == keep, (grid, k)
        assert torch.allclose(sel.tokens, tokens, atol=1e-5, rtol=1e-5), (grid, k)


@pytest.mark.parametrize("make", [random_inputs, tied_inputs])
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("adaptive", [True, False])
def test_prumerge_plus_matches_transcription(make, grid, seed, adaptive):
    inputs = make(grid, seed)
    for k in budgets_for(inputs.n_tokens) if not adaptive else [1]:
        sel = pruning.select("prumerge+", inputs, k, adaptive=adaptive)
        keep, tokens = plain_prumerge_plus(inputs.feats_pre, inputs.cls_attn, inputs.keys, k, adaptive)
        assert sel.keep.tolist() == keep, (grid, k)
        assert torch.allclose(sel.tokens, tokens, atol=1e-5, rtol=1e-5), (grid, k)
        if not adaptive:
            assert sel.n_output_tokens == k


@pytest.mark.parametrize("make", [random_inputs, tied_inputs])
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("pivots", [1, 4, 7])
def test_dart_matches_transcription(make, grid, seed, pivots):
    inputs = make(grid, seed)
    for k in budgets_for(inputs.n_tokens):
        sel = pruning.select("dart", inputs, k, pivots=pivots)
        assert sel.order.tolist() == plain_dart(inputs.feats, k, pivots), (grid, k)


@pytest.mark.parametrize("make", [random_inputs, tied_inputs])
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("theta", [None, 0.5, 0.9])
def test_cdpruner_matches_transcription(make, grid, seed, theta):
    inputs = make(grid, seed)
    for k in budgets_for(inputs.n_tokens):
        sel = pruning.select("cdpruner", inputs, k, theta=theta)
        ref = plain_cdpruner(inputs.feats, inputs.patch_embeds, inputs.text_embeds, k, theta)
        assert sel.order.tolist() == ref, (grid, k)


def test_transcriptions_agree_at_llava_size():
    inputs = with_query(synthetic_inputs((24, 24), 256, 1024, seed=5), seed=5)
    for k in (32, 64, 144):
        assert pruning.select("dart", inputs, k).order.tolist() == plain_dart(inputs.feats, k)
        assert pruning.select("cdpruner", inputs, k).order.tolist() == plain_cdpruner(
            inputs.feats, inputs.patch_embeds, inputs.text_embeds, k
        )
        sel = pruning.select("prumerge+", inputs, k, adaptive=False)
        keep, tokens = plain_prumerge_plus(inputs.feats_pre, inputs.cls_attn, inputs.keys, k, False)
        assert sel.keep.tolist() == keep and torch.allclose(sel.tokens, tokens, atol=1e-4, rtol=1e-5)


# -- downsample ---------------------------------------------------------------------------------


@pytest.mark.parametrize("grid, k, kernel", [((24, 24), 64, (3, 3)), ((24, 24), 16, (6, 6)), ((24, 24), 144, (2, 2))])
def test_downsample_tiling_is_avg_pool(grid, k, kernel):
    inputs = random_inputs(grid, 0)
    sel = pruning.select("downsample", inputs, k)
    rows, cols = grid
    image = inputs.feats.T.reshape(1, -1, rows, cols)  # (1, D, rows, cols)
    pooled = torch.nn.functional.avg_pool2d(image, kernel).flatten(2)[0].T  # (K, D) raster order
    assert torch.allclose(sel.tokens, pooled, atol=1e-5)
    assert sel.info["tiled"] is True and sel.keep.numel() == 0
    assert sel.tokens_space == "post_projector"


def test_downsample_picks_the_tiling_closest_to_the_grid_aspect():
    # 24 x 24, K = 32: the tilings are 4 x 8 and 8 x 4 (equally far from square): fewer bands wins.
    cells = pooling_cells((24, 24), 32)
    assert cells[0] == (0, 6, 0, 3) and len(cells) == 32
    # 6 x 12, K = 8: 2 x 4 (aspect 1:2, the grid's) beats 1 x 8 and 4 x 2.
    assert pooling_cells((6, 12), 8)[:4] == ((0, 3, 0, 3), (0, 3, 3, 6), (0, 3, 6, 9), (0, 3, 9, 12))


def test_downsample_without_a_tiling_uses_bands():
    # 5 x 5, K = 7: no tiling (7 is prime, 7 > 5). Bands: round(sqrt(7)) = 3, rows [0,1), [1,3), [3,5);
    # cells per band 3, 2, 2; band 0 columns [0,1), [1,3), [3,5); bands 1-2 columns [0,2), [2,5).
    assert pooling_cells((5, 5), 7) == (
        (0, 1, 0, 1),
        (0, 1, 1, 3),
        (0, 1, 3, 5),
        (1, 3, 0, 2),
        (1, 3, 2, 5),
        (3, 5, 0, 2),
        (3, 5, 2, 5),
    )
    feats = torch.arange(25, dtype=torch.float32)[:, None] * torch.ones(1, 3) + 1
    inputs = pruning.PruneInputs(feats, feats, torch.ones(25), (5, 5))
    sel = pruning.select("downsample", inputs, 7)
    assert sel.keep.tolist() == [0]  # the only cell of one patch
    assert sel.groups.view(5, 5)[:, 0].tolist() == [0, 3, 3, 5, 5]
    assert sel.tokens[0].tolist() == [1.0, 1.0, 1.0]
    assert sel.tokens[4, 0].item() == pytest.approx(1 + (7 + 8 + 9 + 12 + 13 + 14) / 6)
    assert sel.info["tiled"] is False


@pytest.mark.parametrize("grid", GRIDS)
def test_downsample_cells_partition_the_grid(grid):
    n = grid[0] * grid[1]
    for k in range(1, n + 1):
        cells = pooling_cells(grid, k)
        assert len(cells) == k
        assert sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in cells) == n
        assert all(r1 > r0 and c1 > c0 for r0, r1, c0, c1 in cells)


# -- prumerge+ ----------------------------------------------------------------------------------


def test_prumerge_plus_adaptive_count_and_merging():
    # N = 12 on a 3 x 4 grid. Attention: two clear outliers (t5, t9) over a flat base.
    n = 12
    attn = torch.full((n,), 0.01)
    attn[5], attn[9] = 0.5, 0.3
    attn[3] = 0.012
    # Sorted: nine 0.01, 0.012, 0.3, 0.5. Q1 (position 2.75) = 0.01, Q3 (position 8.25) = 0.0105;
    # bound = 0.0105 + 1.5 · 0.0005 = 0.01125, so t3 is an outlier too.
    count, bound = iqr_outliers(attn)
    assert (count, bound) == (3, pytest.approx(0.01125))
    # ratio 3/12: int(12 * 0.25) = 3 attention picks t5, t9, t3; int(1 / 0.25) = 4, stride int(4/3) = 1:
    # every patch of 0..10 not yet kept, so everything but t11 is kept; t11 feeds the residual token.
    g = torch.Generator().manual_seed(0)
    v = torch.randn(n, 4, generator=g)
    keys = torch.randn(n, 3, generator=g)
    inputs = pruning.PruneInputs(v, v, attn, (3, 4), keys=keys)
    sel = pruning.select("prumerge+", inputs, 2)
    assert sel.order.tolist()[:3] == [5, 9, 3]
    assert sel.keep.tolist() == list(range(11))
    assert sel.budget == sel.n_output_tokens == 12 and sel.info["requested_budget"] == 2
    assert torch.allclose(sel.tokens[-1], attn[11] * v[11])
    # every kept token absorbs its min(32, N - 1) = 11 neighbours: all the others
    for slot, i in enumerate(sel.keep.tolist()):
        others = [j for j in range(n) if j != i]
        expected = v[i] + (attn[others, None] * v[others]).sum(dim=0)
        assert torch.allclose(sel.tokens[slot], expected, atol=1e-6)
    # t11 was absorbed by every kept token; its group is the one whose key is most like its own
    unit = keys / keys.norm(dim=1, keepdim=True)
    assert sel.groups.tolist() == [*range(11), int((unit[:11] @ unit[11]).argmax())]


def test_prumerge_plus_fixed_budget():
    inputs = random_inputs((7, 9), 3)
    for k in (1, 2, 9, 30):
        sel = pruning.select("prumerge+", inputs, k, adaptive=False)
        assert sel.n_output_tokens == sel.budget == k
        assert sel.info["n_attention"] == k // 2 and sel.info["n_spatial"] == (k - 1) // 2
        top = torch.sort(inputs.cls_attn, descending=True, stable=True).indices[: k // 2]
        assert sel.order[: k // 2].tolist() == top.tolist()
    one = pruning.select("prumerge+", inputs, 1, adaptive=False)  # only the residual token
    assert one.keep.numel() == 0 and torch.all(one.groups == 0)
    expected = (inputs.cls_attn.float()[:, None] * inputs.feats_pre.float()).sum(dim=0)
    assert torch.allclose(one.tokens[0], expected, atol=1e-5)


def test_prumerge_plus_neighbours_follow_key_similarity():
    # Keys in two tight groups of 20: each kept token's 32 neighbours start with its 19 group-mates.
    n = 40
    g = torch.Generator().manual_seed(1)
    keys = torch.cat([torch.tensor([[1.0, 0.0]]).expand(20, 2), torch.tensor([[0.0, 1.0]]).expand(20, 2)])
    keys = keys + 0.01 * torch.randn(n, 2, generator=g)
    v = torch.randn(n, 6, generator=g)
    inputs = pruning.PruneInputs(v, v, torch.rand(n, generator=g), (5, 8), keys=keys)
    sel = pruning.select("prumerge+", inputs, 9, adaptive=False)
    for slot, i in enumerate(sel.keep.tolist()):
        own = set(range(20)) - {i} if i < 20 else set(range(20, 40)) - {i}
        assert set(sel.info["neighbours"][slot, :19].tolist()) == own
        assert sel.groups[i].item() == slot


# -- dart ---------------------------------------------------------------------------------------


def test_dart_pivots_by_l1_norm_then_least_similar():
    # Six tokens; L1 norms 3, 1, 1, 2, 1.5, 1 -> pivots (2 of them) t0 then t3.
    feats = torch.tensor(
        [[3.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0], [0.0, 1.5, 0.0], [0.7, 0.3, 0.0]]
    )
    inputs = pruning.PruneInputs(feats, feats, torch.ones(6), (2, 3))
    # K = 5: three picks shared 2, 1. t0 takes its two least similar free tokens: t2 and t4 (cos 0;
    # t3 is a pivot). t3 then takes one of t1 and t5, both at cos 0: the tie goes to t1.
    sel = pruning.select("dart", inputs, 5, pivots=2)
    assert sel.order.tolist() == [0, 3, 2, 4, 1]
    assert sel.info["per_pivot"] == [2, 1]
    assert pruning.select("dart", inputs, 2, pivots=4).order.tolist() == [0, 3]  # K below the pivots


# -- cdpruner -----------------------------------------------------------------------------------


def test_cdpruner_relevance_sign_and_scaling():
    # Patch embeddings at angles to the one text embedding: s_i = −cos, so the patch pointing away
    # from the text is the most relevant (r = 1 + ε / span) and the aligned one the least (ε / span).
    text = torch.tensor([[1.0, 0.0]])
    patch = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])
    feats = torch.eye(4)
    inputs = pruning.PruneInputs(feats, feats, torch.ones(4), (2, 2), patch_embeds=patch, text_embeds=text)
    sel = pruning.select("cdpruner", inputs, 2)
    r = sel.info["relevance"]
    s = torch.tensor([-1.0, 0.0, 1.0, -(2**-0.5)])
    assert torch.allclose(r, (s - s.min() + 1e-6) / 2)
    # orthonormal F: the kernel is diagonal, so the DPP takes tokens by relevance
    assert sel.order.tolist() == [2, 1]
    assert sel.info["n_dpp_picks"] == 2
    hot = pruning.select("cdpruner", inputs, 2, theta=0.5)  # α = 0.5: r -> exp(0.5 r)
    assert torch.allclose(hot.info["relevance"], torch.exp(0.5 * r))


def test_cdpruner_trades_relevance_against_duplication():
    # t0 and t1 are near-duplicates and the most relevant; t2 is less relevant but different.
    feats = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.05, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    patch = torch.tensor([[-1.0, 0.0], [-1.0, 0.01], [-0.5, 0.5], [1.0, 0.0]])
    inputs = pruning.PruneInputs(feats, feats, torch.ones(4), (1, 4), patch_embeds=patch, text_embeds=torch.eye(2)[:1])
    assert pruning.select("cdpruner", inputs, 2).order.tolist() == [0, 2]


def test_cdpruner_exhausted_kernel_fills_in_index_order():
    # Nine tokens on three orthonormal directions, equally relevant (r = 1): the kernel is 0/1 and
    # exact. The DPP takes t0 (e1), t2 (e2), t3 (e3); every other gain is then exactly 0, so the
    # rest are the lowest unpicked indices.
    feats = torch.eye(3)[[0, 0, 1, 2, 1, 0, 2, 2, 1]]
    inputs = pruning.PruneInputs(
        feats, feats, torch.ones(9), (3, 3), patch_embeds=torch.ones(9, 2), text_embeds=torch.ones(1, 2)
    )
    sel = pruning.select("cdpruner", inputs, 6)
    assert sel.order.tolist() == [0, 2, 3, 1, 4, 5]
    assert sel.info["n_dpp_picks"] == 3
    assert torch.equal(sel.info["relevance"], torch.ones(9))
    ref = plain_cdpruner(feats, inputs.patch_embeds, inputs.text_embeds, 6)
    assert ref == sel.order.tolist()


def test_cdpruner_overflowing_theta_is_refused():
    inputs = random_inputs((4, 4), 0)
    with pytest.raises(ValueError, match="kernel overflows float32"):
        pruning.select("cdpruner", inputs, 4, theta=0.99)


def test_apply_selection_of_the_merging_methods():
    inputs = random_inputs((7, 9), 0)
    pooled = pruning.select("downsample", inputs, 10)
    assert torch.equal(pruning.apply_selection(inputs, pooled), pooled.tokens)  # already post-projector
    merged = pruning.select("prumerge+", inputs, 10, adaptive=False)
    with pytest.raises(ValueError, match="pre-projector tokens"):
        pruning.apply_selection(inputs, merged)
    proj = torch.nn.Linear(inputs.feats_pre.shape[1], inputs.feats.shape[1])
    assert pruning.apply_selection(inputs, merged, project=proj).shape == (10, inputs.feats.shape[1])


def test_defaults_are_the_authors():
    assert pruning.method_params("prumerge+") == {"adaptive": True}
    assert pruning.method_params("dart") == {"pivots": 4}
    assert pruning.method_params("cdpruner") == {"theta": None}
    assert pruning.method_params("downsample") == {}
    assert pruning.get_method("cdpruner").needs == ("patch_embeds", "text_embeds")
    assert pruning.get_method("cdpruner").replayable and not pruning.get_method("dart").replayable


@pytest.mark.parametrize("n, rank, budget", [(40, 40, 12), (64, 5, 9), (16, 3, 16), (300, 300, 64)])
def test_cdpruner_host_and_device_walks_pick_alike(n, rank, budget):
    """The CPU walk (Python-int picks) and the CUDA one (no host sync), both run here on one kernel:
    the same picks and DPP count, exhausted kernels (rank < budget) included."""
    g = torch.Generator().manual_seed(n + rank)
    feats = torch.randn(n, rank, generator=g) @ torch.randn(rank, 48, generator=g)
    relevance = question_relevance(torch.randn(n, 8, generator=g), torch.randn(2, 8, generator=g), None)
    kernel = cdpruner_kernel(feats, relevance)
    host, host_picks = _dpp_host(kernel, budget)
    device, device_picks = _dpp_device(kernel, budget)
    assert host.tolist() == device.tolist() and int(host_picks) == int(device_picks)
    assert sorted(set(host.tolist())) == sorted(host.tolist())
