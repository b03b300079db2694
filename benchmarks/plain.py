"""Plain reference implementations of every selection rule, written the way research code is.

Each function follows methods.md line by line: a per-token Python loop that reads tensors with
``.item()``, distances and erank computed separately, nothing shared or precomputed. They are the
yardstick for ``pruning``: tests check that both select exactly the same tokens on identical
tensors, and ``benchmarks/selection.py`` times both.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def plain_erank(x: torch.Tensor) -> float:
    x = x.float()
    x = x - x.mean(dim=0, keepdim=True)
    n, d = x.shape
    m = x @ x.T if n <= d else x.T @ x
    eig = torch.linalg.eigvalsh(m)
    eig = torch.clamp(eig, min=1e-12)
    s = torch.sqrt(eig)
    p = s / s.sum()
    return math.exp(-(p * torch.log(p)).sum().item())


def plain_cosine_distance(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    x = x / x.norm(dim=1, keepdim=True)
    return 1.0 - x @ x.T


def plain_attention(a: torch.Tensor, k: int) -> list[int]:
    idx = torch.argsort(a, descending=True, stable=True)
    return [idx[i].item() for i in range(k)]


def _plain_maxmin(dist: torch.Tensor, k: int, picked: list[int]) -> list[int]:
    picked = list(picked)
    while len(picked) < k:
        if len(picked) == 0:
            scores = torch.topk(dist, 2, dim=0, largest=False).values[1, :]
        else:
            rows = dist[torch.tensor(picked)]
            scores = torch.min(rows, dim=0).values
            scores[torch.tensor(picked)] = -float("inf")
        picked.append(torch.argmax(scores).item())
    return picked


def plain_diversity(f: torch.Tensor, k: int) -> list[int]:
    dist = plain_cosine_distance(f)
    return _plain_maxmin(dist, k, [])


def plain_adaptive(
    f: torch.Tensor, a: torch.Tensor, k: int, step: float = 0.01, tau_max: float = 0.25, erank_avg: float = 90.0
) -> list[int]:
    e = plain_erank(f)
    dist = plain_cosine_distance(f)
    sorted_idx = torch.argsort(a, descending=True, stable=True)
    n = a.shape[0]
    rank = {}
    for r in range(n):
        rank[sorted_idx[r].item()] = r + 1
    alive = torch.ones(n, dtype=torch.bool)
    picked = []
    for r in range(n):
        i = sorted_idx[r].item()
        if not alive[i].item():
            continue
        picked.append(i)
        if len(picked) == k:
            break
        tau = min(rank[i] * (e / erank_avg) * step, tau_max)
        alive[dist[i] < tau] = False
    for r in range(n):
        if len(picked) == k:
            break
        i = sorted_idx[r].item()
        if i not in picked:
            picked.append(i)
    return picked


def plain_vispruner(v: torch.Tensor, a: torch.Tensor, k: int, r: float = 0.5) -> list[int]:
    k_imp = int(k * r)
    k_div = k - k_imp
    sorted_idx = torch.argsort(a, descending=True, stable=True)
    important = [sorted_idx[i].item() for i in range(k_imp)]
    residual = [sorted_idx[i].item() for i in range(k_imp, a.shape[0])]
    v = v.float()
    v = v / v.norm(dim=1, keepdim=True)
    while len(residual) > k_div:
        s = min(8, len(residual) - k_div)
        part_a = residual[0::2]
        part_b = residual[1::2]
        if part_b:
            sim = v[torch.tensor(part_a)] @ v[torch.tensor(part_b)].T
            scores = sim.max(dim=1).values
        else:
            scores = torch.zeros(len(part_a))
        ranked = sorted(range(len(part_a)), key=lambda j: (-scores[j].item(), -part_a[j]))
        survivors = [part_a[ranked[j]] for j in range(s, len(part_a))]
        residual = survivors + part_b
    return important + residual


def plain_visionzip(
    v: torch.Tensor, a: torch.Tensor, keys: torch.Tensor, cls_feat: torch.Tensor, k: int, d: int | None = None
) -> tuple[list[int], torch.Tensor]:
    n = a.shape[0]
    if d is None:
        d = max(1, round(k * 54 / 64))
    c = k - d
    sorted_idx = torch.argsort(a, descending=True, stable=True)
    dominant = sorted(sorted_idx[i].item() for i in range(d - 1))
    tokens = [cls_feat.float()] + [v[i].float() for i in dominant]
    remaining = [i for i in range(n) if i not in dominant]
    if c > 0:
        step = max(1, len(remaining) // c)
        targets = remaining[::step][:c]
        members = [i for i in remaining if i not in targets]
        kn = keys.float() / keys.float().norm(dim=1, keepdim=True)
        groups = {t: [] for t in targets}
        for m in members:
            best, best_sim = None, -float("inf")
            for t in targets:
                sim = (kn[m] @ kn[t]).item()
                if sim > best_sim:
                    best, best_sim = t, sim
            groups[best].append(m)
        for t in targets:
            merged = v[t].float().clone()
            if groups[t]:
                merged = merged + v[torch.tensor(groups[t])].float().mean(dim=0)
            tokens.append(merged)
    return dominant, torch.stack(tokens)


def plain_hybrid(f: torch.Tensor, a: torch.Tensor, k: int, ratio: float = 0.5) -> list[int]:
    k_att = math.floor(ratio * k)
    start = plain_attention(a, k_att)
    dist = plain_cosine_distance(f)
    return _plain_maxmin(dist, k, start)


def plain_hybrid_erank(
    f: torch.Tensor, a: torch.Tensor, k: int, r_hi=0.75, r_lo=0.25, erank_lo=60.0, erank_hi=120.0, inverse=False
) -> list[int]:
    if inverse:
        r_hi, r_lo = r_lo, r_hi
    e = plain_erank(f)
    ratio = r_hi - (r_hi - r_lo) * (e - erank_lo) / (erank_hi - erank_lo)
    ratio = min(max(ratio, min(r_hi, r_lo)), max(r_hi, r_lo))
    return plain_hybrid(f, a, k, ratio)


def plain_random(n: int, k: int, seed: int = 0) -> list[int]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [perm[i].item() for i in range(k)]


def plain_uniform(rows: int, cols: int, k: int) -> list[int]:
    k_rows = max(math.ceil(k / cols), min(rows, max(1, round(math.sqrt(k * rows / cols)))))
    out = []
    for band in range(k_rows):
        y = int((band + 0.5) * rows / k_rows)
        count = k // k_rows + (1 if band < k % k_rows else 0)
        for j in range(count):
            out.append(y * cols + int((j + 0.5) * cols / count))
    return out


def plain_downsample(f: torch.Tensor, rows: int, cols: int, k: int) -> tuple[list[int], torch.Tensor]:
    # pooled grid: an exact tiling p x q if one exists (aspect closest to the grid's), else k cells in bands
    best = None
    for p in range(1, rows + 1):
        if k % p != 0 or rows % p != 0 or cols % (k // p) != 0:
            continue
        q = k // p
        err = max(p * cols, q * rows) / min(p * cols, q * rows)
        if best is None or err < best[0] - 1e-12:
            best = (err, p, q)
    cells = []
    if best is not None:
        _, p, q = best
        for b in range(p):
            for j in range(q):
                cells.append((b * rows // p, (b + 1) * rows // p, j * cols // q, (j + 1) * cols // q))
    else:
        bands = round(math.sqrt(k * rows / cols))
        bands = max(1, min(bands, rows, k))
        bands = max(bands, math.ceil(k / cols))
        for b in range(bands):
            m = k // bands
            if b < k % bands:
                m += 1
            for j in range(m):
                cells.append((b * rows // bands, (b + 1) * rows // bands, j * cols // m, (j + 1) * cols // m))
    tokens = []
    alone = []
    for r0, r1, c0, c1 in cells:
        members = [r * cols + c for r in range(r0, r1) for c in range(c0, c1)]
        tokens.append(f[torch.tensor(members)].float().mean(dim=0))
        if len(members) == 1:
            alone.append(members[0])
    return sorted(alone), torch.stack(tokens)


def plain_prumerge_plus(
    v: torch.Tensor, a: torch.Tensor, keys: torch.Tensor, k: int, adaptive: bool = True
) -> tuple[list[int], torch.Tensor]:
    n = a.shape[0]
    attn = a.double().numpy()
    sorted_idx = torch.argsort(a, descending=True, stable=True)
    if adaptive:
        q1 = np.percentile(attn, 25)
        q3 = np.percentile(attn, 75)
        upper = q3 + 1.5 * (q3 - q1)
        n_out = len(np.where(attn > upper)[0])
        ratio = max(n_out, 1) / n
        picked = [sorted_idx[i].item() for i in range(int(n * ratio))]
        step = max(1, int(int(1 / ratio) / 3))
        for x in range(0, n - 1, step):
            if x not in picked:
                picked.append(x)
    else:
        n_att = math.ceil((k - 1) / 2)
        n_sp = k - 1 - n_att
        picked = [sorted_idx[i].item() for i in range(n_att)]
        others = [i for i in range(n) if i not in picked]
        for j in range(n_sp):
            picked.append(others[(2 * j + 1) * len(others) // (2 * n_sp)])
    kept = sorted(picked)
    kn = keys.float() / keys.float().norm(dim=1, keepdim=True)
    v = v.float()
    a = a.float()
    n_nb = min(32, n - 1)
    tokens = []
    for i in kept:
        rest = [j for j in range(n) if j != i]
        sims = (kn[i : i + 1] @ kn[torch.tensor(rest)].T)[0].tolist()
        ranked = sorted(range(len(rest)), key=lambda t: (-sims[t], rest[t]))
        nbrs = torch.tensor([rest[t] for t in ranked[:n_nb]])
        tokens.append(v[i] + (v[nbrs] * a[nbrs][:, None]).sum(dim=0))
    dropped = [j for j in range(n) if j not in kept]
    extra = torch.zeros(v.shape[1])
    if dropped:
        idx = torch.tensor(dropped)
        extra = (v[idx] * a[idx][:, None]).sum(dim=0)
    tokens.append(extra)
    return kept, torch.stack(tokens)


def plain_dart(f: torch.Tensor, k: int, pivots: int = 4) -> list[int]:
    n = f.shape[0]
    f = f.float()
    p = min(pivots, k)
    l1 = torch.norm(f, p=1, dim=-1)
    pivot_list = [torch.argsort(l1, descending=True, stable=True)[i].item() for i in range(p)]
    fn = f / f.norm(dim=1, keepdim=True)
    selected = list(pivot_list)
    valid = [i for i in range(n) if i not in pivot_list]
    left = k - p
    for r, piv in enumerate(pivot_list):
        count = left // p + (1 if r < left % p else 0)
        if count == 0:
            continue
        sims = (fn[piv : piv + 1] @ fn.T)[0].tolist()
        ranked = sorted(valid, key=lambda j: (sims[j], j))
        chosen = ranked[:count]
        selected.extend(chosen)
        valid = [j for j in valid if j not in chosen]
    return selected


def plain_cdpruner(
    f: torch.Tensor, patch_embeds: torch.Tensor, text_embeds: torch.Tensor, k: int, theta: float | None = None
) -> list[int]:
    n = f.shape[0]
    fn = f.float() / f.float().norm(dim=1, keepdim=True)
    sim = fn @ fn.T
    img = patch_embeds.float() / patch_embeds.float().norm(dim=1, keepdim=True)
    txt = text_embeds.float() / text_embeds.float().norm(dim=1, keepdim=True)
    rel = (-(img @ txt.T)).mean(dim=-1)
    if rel.max().item() > rel.min().item():
        rel = (rel - rel.min() + 1e-6) / (rel.max() - rel.min())
    else:
        rel = torch.ones(n)
    if theta is not None:
        alpha = theta / (2 * (1 - theta))
        rel = torch.exp(alpha * rel)
    kernel = rel[:, None] * sim * rel[None, :]
    cis = torch.zeros(k, n)
    di2s = torch.diagonal(kernel).clone()
    selected = []
    for i in range(k):
        j = torch.argmax(di2s).item()
        if not di2s[j].item() > 0:
            break
        selected.append(j)
        eis = (kernel[j] - cis[:i, j] @ cis[:i]) / torch.sqrt(di2s[j])
        cis[i] = eis
        di2s = di2s - eis * eis
        di2s[j] = -float("inf")
    for j in range(n):
        if len(selected) == k:
            break
        if j not in selected:
            selected.append(j)
    return selected


def plain_select(method: str, inputs, k: int) -> list[int]:
    """The plain counterpart of ``pruning.select(method, inputs, k)``: picked indices, pick order."""
    return plain_picks(method, inputs, k).tolist()


def plain_picks(method: str, inputs, k: int) -> torch.Tensor:
    return torch.tensor(_plain_list(method, inputs, k), dtype=torch.long)


def _plain_list(method: str, inputs, k: int) -> list[int]:
    v, f, a = inputs.feats_pre, inputs.feats, inputs.cls_attn
    if method == "attention":
        return plain_attention(a, k)
    if method == "diversity":
        return plain_diversity(f, k)
    if method == "adaptive":
        return plain_adaptive(f, a, k)
    if method == "vispruner":
        return plain_vispruner(v, a, k)
    if method == "visionzip":
        return plain_visionzip(v, a, inputs.keys, inputs.cls_feat, k)[0]
    if method == "hybrid":
        return plain_hybrid(f, a, k)
    if method == "hybrid-erank":
        return plain_hybrid_erank(f, a, k)
    if method == "random":
        return plain_random(a.shape[0], k)
    if method == "uniform":
        return plain_uniform(*inputs.grid, k)
    if method == "downsample":
        return plain_downsample(f, *inputs.grid, k)[0]
    if method == "prumerge+":
        return plain_prumerge_plus(v, a, inputs.keys, k)[0]
    if method == "dart":
        return plain_dart(f, k)
    if method == "cdpruner":
        return plain_cdpruner(f, inputs.patch_embeds, inputs.text_embeds, k)
    raise ValueError(f"no plain implementation of {method!r}")
