"""Hand-built cases with answers worked out from methods.md, one or more per method.

The five-token geometry used throughout (3-D features e1, e1 + 0.1·e2, e2, e3, e2 + 1.2·e3) has
cosine distances, to four places:
        t0      t1      t2      t3      t4
  t0    0       0.0050  1       1       1
  t1    0.0050  0       0.9005  1       0.9363
  t2    1       0.9005  0       1       0.3598
  t3    1       1       1       0       0.2318
  t4    1       0.9363  0.3598  0.2318  0
"""

import math

import pytest
import torch

import pruning
from benchmarks.plain import dpp_tie_horizon, plain_select, plain_visionzip
from benchmarks.selection import with_query
from benchmarks.synthetic import synthetic_inputs

FIVE = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 1.2]])
ATTN = torch.tensor([0.30, 0.25, 0.05, 0.20, 0.20])  # attention order: 0, 1, 3, 4 (tie -> 3 first), 2


def five(attn=ATTN, feats_pre=FIVE):
    return pruning.PruneInputs(feats_pre=feats_pre, feats=FIVE, cls_attn=attn, grid=(1, 5))


def test_distance_table_in_docstring():
    dist = 1 - torch.nn.functional.cosine_similarity(FIVE[:, None], FIVE[None], dim=-1)
    assert dist[0, 1] == pytest.approx(0.0050, abs=1e-4)
    assert dist[2, 4] == pytest.approx(0.3598, abs=1e-4)
    assert dist[3, 4] == pytest.approx(0.2318, abs=1e-4)
    assert dist[1, 4] == pytest.approx(0.9363, abs=1e-4)


def test_attention_top_k_with_tie():
    sel = pruning.select("attention", five(), 3)
    assert sel.order.tolist() == [0, 1, 3]  # 3 and 4 tie at 0.20: the lower index wins
    assert sel.keep.tolist() == [0, 1, 3]


def test_diversity_max_min_walk():
    # Second-smallest distance per column: 0.005, 0.005, 0.3598, 0.2318, 0.2318 -> first pick t2.
    # Then min distance to {2}: t0 1, t1 0.9005, t3 1, t4 0.3598 -> t0 (tie with t3, lower index).
    # Then to {2, 0}: t1 0.005, t3 1, t4 0.3598 -> t3; then t1 0.005, t4 0.2318 -> t4; then t1.
    assert pruning.select("diversity", five(), 4).order.tolist() == [2, 0, 3, 4]
    assert pruning.select("diversity", five(), 3).keep.tolist() == [0, 2, 3]


def test_adaptive_suppresses_near_duplicates():
    # A huge step saturates every tau at tau_max = 0.3. Walk in attention order 0, 1, 3, 4, 2:
    # pick 0 (removes t1, 0.005 < 0.3), skip 1, pick 3 (removes t4, 0.2318 < 0.3), skip 4, pick 2.
    sel = pruning.select("adaptive", five(), 3, step=100.0, tau_max=0.3)
    assert sel.order.tolist() == [0, 3, 2]
    assert sel.info["taus"] == pytest.approx([0.3, 0.3, 0.3])
    assert sel.info["n_walk_picks"] == 3
    assert sel.info["removed_at"].tolist() == [-1, 0, -1, -1, 1]
    # Attention alone would have kept the near-duplicate t1 instead of t2.
    assert pruning.select("attention", five(), 3).keep.tolist() == [0, 1, 3]


def test_adaptive_fills_up_in_attention_order():
    # tau_max = 1.5 exceeds every distance: the first pick removes everything, the rest is fill-up.
    sel = pruning.select("adaptive", five(), 4, step=100.0, tau_max=1.5)
    assert sel.order.tolist() == [0, 1, 3, 4]
    assert sel.info["n_walk_picks"] == 1


def test_adaptive_tau_schedule_follows_attention_rank_and_erank():
    inputs = five()
    e = pruning.effective_rank(FIVE)
    sel = pruning.select("adaptive", inputs, 3, step=0.01, tau_max=0.25, erank_avg=0.05)
    assert sel.info["image_erank"] == pytest.approx(e, rel=1e-5)
    ranks = {0: 1, 1: 2, 3: 3, 4: 4, 2: 5}
    expected = [min(ranks[i] * e / 0.05 * 0.01, 0.25) for i in sel.order.tolist()]
    assert sel.info["taus"] == pytest.approx(expected, rel=1e-6)
    # With erank_avg = 0.05 the taus are e/5 = 0.36.. capped at 0.25 from rank 1: same walk as above.
    assert sel.order.tolist() == [0, 3, 2]


def test_adaptive_small_tau_is_attention():
    sel = pruning.select("adaptive", five(), 3, step=1e-6)
    assert sel.order.tolist() == [0, 1, 3]


def test_vispruner_duplicate_removal():
    # N = 8, K = 4, r = 0.5: important = top-2 attention = t0, t1; residual t2..t7 (attention order).
    # Round 1: s = min(8, 6 - 2) = 4 > |A| = 3, so all of A = t2, t4, t6 goes; residual = t3, t5, t7.
    # Round 2: s = 1, A = t3, t7, B = t5; t3 is nearly t5, so t3 goes: residual = t7, t5.
    g = torch.Generator().manual_seed(0)
    v = torch.randn(8, 32, generator=g)
    v[3] = v[5] + 0.01 * torch.randn(32, generator=g)
    attn = torch.linspace(0.2, 0.05, 8)
    inputs = pruning.PruneInputs(feats_pre=v, feats=v, cls_attn=attn, grid=(2, 4))
    sel = pruning.select("vispruner", inputs, 4)
    assert sel.order.tolist() == [0, 1, 7, 5]
    assert sel.info["rounds"] == 2


def test_vispruner_ratio_one_is_attention():
    inputs = synthetic_inputs((8, 8), 16, 32, seed=4, key_dim=8)
    assert pruning.select("vispruner", inputs, 10, r=1.0).order.tolist() == (
        pruning.select("attention", inputs, 10).order.tolist()
    )


def test_visionzip_dominant_and_contextual_tokens():
    # N = 6, K = 4, dominant = 2: [CLS] + top-1 patch (t4). Remaining t0, t1, t2, t3, t5 in index
    # order; c = 2, step = 5 // 2 = 2: targets t0, t2. Keys send t1 and t5 to t0, t3 to t2.
    v = torch.arange(6 * 2, dtype=torch.float32).view(6, 2) + 1
    keys = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.2, 0.9], [1.0, 1.0], [1.0, -0.2]])
    cls = torch.tensor([-1.0, -2.0])
    attn = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.5, 0.1])
    inputs = pruning.PruneInputs(v, v, attn, (2, 3), keys=keys, cls_feat=cls)
    sel = pruning.select("visionzip", inputs, 4, dominant=2)
    expected = torch.stack([cls, v[4], v[0] + (v[1] + v[5]) / 2, v[2] + v[3]])
    assert torch.allclose(sel.tokens, expected)
    assert sel.keep.tolist() == [4]
    assert sel.groups.tolist() == [2, 2, 3, 3, 1, 2]
    assert sel.tokens_space == "pre_projector"
    dominant, tokens = plain_visionzip(v, attn, keys, cls, 4, d=2)
    assert dominant == [4] and torch.allclose(tokens, sel.tokens)


def test_visionzip_default_split_scales_with_budget():
    inputs = synthetic_inputs(seed=1)
    for budget, d in ((64, 54), (128, 108), (32, 27), (192, 162)):
        sel = pruning.select("visionzip", inputs, budget)
        assert (sel.info["n_dominant"], sel.info["n_contextual"]) == (d, budget - d)
        assert sel.tokens.shape == (budget, inputs.feats_pre.shape[1])
        assert sel.keep.numel() == d - 1
        assert torch.equal(sel.tokens[0], inputs.cls_feat)


def test_hybrid_seeds_diversity_with_attention():
    # R = 0.5, K = 4: t0, t1 by attention; then t3 (min distance 1) and t2 (0.9005 beats t4's 0.2318).
    sel = pruning.select("hybrid", five(), 4, ratio=0.5)
    assert sel.order.tolist() == [0, 1, 3, 2]
    assert sel.info["n_attention"] == 2
    assert pruning.select("hybrid", five(), 4, ratio=0.0).order.tolist() == (
        pruning.select("diversity", five(), 4).order.tolist()
    )


def test_hybrid_erank_ratio_follows_image_complexity():
    e = pruning.effective_rank(FIVE)
    # Complex (e above e_hi): R = R_lo = 0.25 -> one attention token t0, then t2, t3, t4.
    complex_ = pruning.select("hybrid-erank", five(), 4, erank_lo=1.0, erank_hi=e - 1)
    assert complex_.info["ratio"] == 0.25 and complex_.order.tolist() == [0, 2, 3, 4]
    # Simple (e below e_lo): R = R_hi = 0.75 -> t0, t1, t3 by attention, then t2.
    simple = pruning.select("hybrid-erank", five(), 4, erank_lo=e + 10, erank_hi=e + 20)
    assert simple.info["ratio"] == 0.75 and simple.order.tolist() == [0, 1, 3, 2]
    # Inverse swaps the ends.
    inverse = pruning.select("hybrid-erank", five(), 4, erank_lo=1.0, erank_hi=e - 1, inverse=True)
    assert inverse.info["ratio"] == 0.75
    # Midway: R = 0.5.
    mid = pruning.select("hybrid-erank", five(), 4, erank_lo=e - 1, erank_hi=e + 1)
    assert mid.info["ratio"] == pytest.approx(0.5, abs=1e-5)


def test_random_is_seeded():
    inputs = synthetic_inputs((8, 8), 16, 32, seed=0, key_dim=8)
    a = pruning.select("random", inputs, 10, seed=7)
    assert torch.equal(a.order, pruning.select("random", inputs, 10, seed=7).order)
    assert not torch.equal(a.order, pruning.select("random", inputs, 10, seed=8).order)
    assert a.order.tolist() == torch.randperm(64, generator=torch.Generator().manual_seed(7))[:10].tolist()
    gen = torch.Generator().manual_seed(7)
    assert torch.equal(pruning.select("random", inputs, 10, generator=gen).order, a.order)


def test_uniform_grid():
    inputs = synthetic_inputs(seed=0)
    keep = pruning.select("uniform", inputs, 64).keep.tolist()
    lines = [1, 4, 7, 10, 13, 16, 19, 22]  # centres of 8 equal bands of 24
    assert keep == [y * 24 + x for y in lines for x in lines]
    assert pruning.select("uniform", inputs, 1).keep.tolist() == [12 * 24 + 12]
    keep5 = pruning.select("uniform", inputs, 5).keep.tolist()
    assert len(set(keep5)) == 5


@pytest.mark.parametrize("method", pruning.list_methods())
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_plain_reference(method, seed):
    """Exactly the tokens of the plain per-token implementation, on identical tensors."""
    inputs = with_query(synthetic_inputs((24, 24), 256, 1024, seed=seed), seed=seed)
    for budget in (16, 64, 192):
        sel = pruning.select(method, inputs, budget)
        ref = plain_select(method, inputs, budget)
        got = sel.keep.tolist() if pruning.get_method(method).merges else sel.order.tolist()
        if method == "cdpruner":  # picks past a float near-tie depend on the CPU's summation order
            horizon = dpp_tie_horizon(inputs.feats, inputs.patch_embeds, inputs.text_embeds, budget)
            assert horizon >= min(budget, 64), f"a near-tie at pick {horizon}: the case tests too little"
            got, ref = got[:horizon], ref[:horizon]
        assert got == ref, f"{method} at K={budget} differs from the plain reference"
    if method == "visionzip":
        _, tokens = plain_visionzip(inputs.feats_pre, inputs.cls_attn, inputs.keys, inputs.cls_feat, 64)
        assert torch.allclose(pruning.select(method, inputs, 64).tokens, tokens, atol=1e-5)


def test_image_erank_reuse_equals_direct_erank():
    inputs = synthetic_inputs(seed=3)
    sel = pruning.select("adaptive", inputs, 64)
    assert sel.info["image_erank"] == pytest.approx(pruning.effective_rank(inputs.feats), rel=1e-4)
    assert math.isfinite(sel.info["image_erank"])
