"""Plain reference implementations of every selection rule, written the way research code is.

Each function follows methods.md line by line: a per-token Python loop that reads tensors with
``.item()``, distances and erank computed separately, nothing shared or precomputed. They are the
yardstick for ``pruning``: tests check that both select exactly the same tokens on identical
tensors, and ``benchmarks/selection.py`` times both. The in-LLM methods (FastV, DART at layer K)
also have a whole run on a model, ``plain_inllm_run``: the stock forward's attention weights and
cache for the rule, then plain recomputation with the dropped tokens masked (``tests/test_inllm.py``).
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


def dpp_tie_horizon(
    f: torch.Tensor, patch_embeds: torch.Tensor, text_embeds: torch.Tensor, k: int, rtol: float = 1e-6
) -> int:
    """How many of CDPruner's first ``k`` picks are decided by more than float rounding.

    The count is the first step of the greedy DPP walk, run in float64, whose best and second-best
    gains lie within ``rtol`` times the largest first gain of each other (``k`` if none): float32's
    rounding errors build up on the scale of the first gains, not of the shrinking later ones. From
    such a near-tie on, two float32 walks that sum in different orders (CPUs, BLAS builds) may pick
    differently, and every later pick with them."""
    fn = f.double() / f.double().norm(dim=1, keepdim=True)
    img = patch_embeds.double() / patch_embeds.double().norm(dim=1, keepdim=True)
    txt = text_embeds.double() / text_embeds.double().norm(dim=1, keepdim=True)
    rel = (-(img @ txt.T)).mean(dim=-1)
    rel = (rel - rel.min() + 1e-6) / (rel.max() - rel.min()) if rel.max() > rel.min() else torch.ones_like(rel)
    kernel = rel[:, None] * (fn @ fn.T) * rel[None, :]
    cis = torch.zeros(k, f.shape[0], dtype=torch.float64)
    gains = torch.diagonal(kernel).clone()
    scale = float(gains.max())
    for i in range(min(k, f.shape[0] - 1)):
        best, second = torch.topk(gains, 2).values.tolist()
        if not best > 0 or best - second <= rtol * scale:
            return i
        j = int(torch.argmax(gains))
        cis[i] = (kernel[j] - cis[:i, j] @ cis[:i]) / math.sqrt(best)
        gains = gains - cis[i] * cis[i]
        gains[j] = -float("inf")
    return k


# -- the in-LLM methods (FastV, DART at layer K): their rules, and a whole run on a model -------


def plain_fastv(last_attn: torch.Tensor, k: int) -> list[int]:
    scores = last_attn.tolist()
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return ranked[:k]


def plain_dart_llm(
    keys: torch.Tensor,
    hidden: torch.Tensor,
    text_keys: torch.Tensor,
    text_hidden: torch.Tensor,
    k: int,
    pivots: int = 4,
    text_pivots: int = 4,
) -> list[int]:
    n, t = keys.shape[0], text_keys.shape[0]
    l1 = torch.norm(keys.float(), p=1, dim=-1).tolist()
    text_l1 = torch.norm(text_keys.float(), p=1, dim=-1).tolist()
    pivot_list = sorted(range(n), key=lambda i: (-l1[i], i))[: min(pivots, k)]
    text_list = sorted(range(t), key=lambda i: (-text_l1[i], i))[: min(text_pivots, t)]
    h = hidden.float()
    hn = h / h.norm(dim=1, keepdim=True)
    vectors = [hn[i : i + 1] for i in pivot_list]
    for j in text_list:
        v = text_hidden[j : j + 1].float()
        vectors.append(v / v.norm(dim=1, keepdim=True))
    selected = list(pivot_list)
    valid = [i for i in range(n) if i not in pivot_list]
    left, m = k - len(pivot_list), len(vectors)
    for r, vec in enumerate(vectors):
        count = left // m + (1 if r < left % m else 0)
        if count == 0:
            continue
        sims = (vec @ hn.T)[0].tolist()
        chosen = sorted(valid, key=lambda j: (sims[j], j))[:count]
        selected.extend(chosen)
        valid = [j for j in valid if j not in chosen]
    return selected


def plain_inllm_run(
    model,
    embeds: torch.Tensor,
    visual_at: list[int],
    text_from: int,
    method: str,
    k: int,
    params: dict,
    max_new_tokens: int,
    eos: set[int],
) -> tuple[list[int], list[int]]:
    """FastV or DART at layer K on a model, the slow way: (kept visual tokens, greedy new token ids).

    One stock forward of the whole prompt with eager attention gives layer K − 1's attention
    weights, hidden states and cache; the rule picks from them. Then every new token recomputes the
    whole sequence without a cache, at positions 0, 1, 2, ...: layers before K attend causally to
    every token, layers from K on never to a dropped visual token (its column is masked for every
    query), which is what removing it does to every other token.
    """
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    if decoder.config._attn_implementation != "eager":
        raise ValueError("plain_inllm_run reads attention weights: give it a model with eager attention")
    layer, n = params["layer"], len(visual_at)
    with torch.no_grad():
        out = decoder(inputs_embeds=embeds[None], output_attentions=True, output_hidden_states=True, use_cache=True)
        if k >= n:
            picks = list(range(n))
        elif method == "fastv":
            row = out.attentions[layer - 1][0, :, -1, :].float().mean(dim=0)
            picks = plain_fastv(row[visual_at], k)
        elif method == "dart-llm":
            key_states = out.cache.layers[layer - 1].keys[0]  # (heads, L, hd)
            keys = torch.cat([key_states[hd] for hd in range(key_states.shape[0])], dim=1)  # (L, heads * hd)
            hidden = decoder.norm(out.hidden_states[layer])[0]
            extra = {name: params[name] for name in ("pivots", "text_pivots") if name in params}
            picks = plain_dart_llm(keys[visual_at], hidden[visual_at], keys[text_from:], hidden[text_from:], k, **extra)
        else:
            raise ValueError(f"no plain in-LLM run of {method!r}")
        kept = sorted(picks)
        dropped = [visual_at[i] for i in range(n) if i not in kept]
        seq, new = embeds[None], []
        for _ in range(max_new_tokens):
            length = seq.shape[1]
            positions = torch.arange(length)[None]
            neg = torch.finfo(seq.dtype).min
            early = torch.zeros(length, length)
            for q in range(length):
                for c in range(q + 1, length):
                    early[q, c] = neg
            late = early.clone()
            for c in dropped:
                late[:, c] = neg
            h = seq
            rotary = decoder.rotary_emb(h, positions)
            for i, block in enumerate(decoder.layers):
                mask = (early if i < layer else late)[None, None].to(h.dtype)
                h = block(h, attention_mask=mask, position_embeddings=rotary, position_ids=positions)
            token = torch.argmax(head(decoder.norm(h))[0, -1].float()).item()
            new.append(token)
            if token in eos:
                break
            seq = torch.cat([seq, model.get_input_embeddings()(torch.tensor([[token]]))], dim=1)
    return kept, new


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
