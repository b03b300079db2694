"""Synthetic encodings shaped like a real vision tower's: clustered patches, peaked attention.

Random Gaussian features are nearly orthogonal in high dimension, so similarity-based rules never
fire on them. These inputs instead place patches in spatially coherent clusters (regions of an
image) with a few attention peaks, so that every method's rule is exercised.
"""

from __future__ import annotations

import torch

from pruning import PruneInputs


def synthetic_inputs(
    grid: tuple[int, int] = (24, 24),
    dim_pre: int = 1024,
    dim: int = 4096,
    *,
    seed: int = 0,
    n_regions: int = 24,
    noise: float = 0.02,
    texture: float = 1.5,
    n_waves: int = 16,
    key_dim: int = 64,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> PruneInputs:
    """A ``PruneInputs`` with N = rows·cols tokens; deterministic per seed."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = grid
    n = rows * cols
    ys = torch.arange(rows).repeat_interleave(cols).float() / rows
    xs = torch.arange(cols).repeat(rows).float() / cols
    seeds_yx = torch.rand(n_regions, 2, generator=g)
    d2 = (ys[:, None] - seeds_yx[None, :, 0]) ** 2 + (xs[:, None] - seeds_yx[None, :, 1]) ** 2
    region = d2.argmin(dim=1)  # (N,) Voronoi region of each patch
    centers_pre = torch.randn(n_regions, dim_pre, generator=g)
    freqs = 2 * torch.pi * 3 * torch.rand(n_waves, 2, generator=g)  # spatial frequencies, 0-3 cycles
    phases = 2 * torch.pi * torch.rand(n_waves, generator=g)
    waves = torch.cos(ys[:, None] * freqs[:, 0] + xs[:, None] * freqs[:, 1] + phases)  # (N, n_waves)
    smooth = waves @ torch.randn(n_waves, dim_pre, generator=g) / n_waves**0.5  # (N, C) slow texture
    feats_pre = centers_pre[region] + texture * smooth + noise * torch.randn(n, dim_pre, generator=g)
    mix = torch.randn(dim_pre, dim, generator=g) / dim_pre**0.5
    feats = torch.nn.functional.gelu(feats_pre @ mix)  # (N, D) a smooth projector image of V
    logits = 2.0 * torch.randn(n, generator=g)
    logits[torch.randperm(n, generator=g)[: max(1, n // 50)]] += 6.0
    cls_attn = torch.softmax(logits, dim=0) * 0.9  # [CLS] keeps some attention on itself
    keys = feats_pre[:, :key_dim] + 0.1 * torch.randn(n, key_dim, generator=g)
    cls_feat = torch.randn(dim_pre, generator=g)
    to = lambda t: t.to(device=device, dtype=dtype)
    return PruneInputs(
        feats_pre=to(feats_pre),
        feats=to(feats),
        cls_attn=to(cls_attn),
        grid=grid,
        keys=to(keys),
        cls_feat=to(cls_feat),
    )
