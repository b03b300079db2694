"""CDPruner: a conditional DPP over the visual tokens, its kernel weighted by relevance to the question."""

from __future__ import annotations

import torch

from ..geometry import cosine_matrix, row_norms
from ..registry import optional_below_one, register
from ..types import PruneInputs, Selection
from .attention import selection_from_order

__all__ = ["RELEVANCE_EPS", "cdpruner_kernel", "dpp_greedy", "question_relevance", "select_cdpruner"]

FLOAT32_MAX = float(torch.finfo(torch.float32).max)
RELEVANCE_EPS = 1e-6  # methods.md §12: added to the shifted relevance before min–max scaling


def question_relevance(patch_embeds: torch.Tensor, text_embeds: torch.Tensor, theta: float | None) -> torch.Tensor:
    """r_i = (s_i − min s + ε) / (max s − min s), s_i = −mean_m cos(E_i, T_m); then exp(α r), α = θ / (2(1 − θ)),
    when ``theta`` is given. (N, P), (M, P) -> (N,) float32.

    The minus sign is the authors': CLIP's patch-level similarity to the text is inverted at these
    layers, so the least text-like patches score highest. When every s_i is equal (max = min, where
    the authors divide by zero) every r_i is 1: the kernel is then the plain similarity.
    """
    e = patch_embeds.float()
    t = text_embeds.float()
    e = e / row_norms(e, "patch_embeds")[:, None]
    t = t / row_norms(t, "text_embeds")[:, None]
    s = (e @ t.T).mean(dim=1).neg_()  # (N,); −mean(x) is mean(−x) to the bit
    lo, hi = torch.aminmax(s)
    r = (s - lo).add_(RELEVANCE_EPS).div_(hi - lo) if bool(hi > lo) else torch.ones_like(s)
    if theta is not None:
        alpha = theta / (2 * (1 - theta))
        r = torch.exp(alpha * r)
    return r


def cdpruner_kernel(feats: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """L = diag(r) · S · diag(r), S_ij = cos(F_i, F_j) in float32. (N, D), (N,) -> (N, N)."""
    sim, _ = cosine_matrix(feats, "feats")  # (N, N), a fresh tensor: scaled in place, (r_i · S_ij) · r_j
    return sim.mul_(relevance[:, None]).mul_(relevance[None, :])


def dpp_greedy(kernel: torch.Tensor, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast greedy MAP inference of a DPP (incremental Cholesky), K picks.

    Each step picks j = argmax of the remaining gains d_j (ties: lower index), then
    e = (L_j − cᵀ_{:,j} · C) / sqrt(d_j) becomes row i of C and every gain drops by e². Once the best
    gain is not positive (the picked set already spans every other token; the authors' code would
    take the root of a non-positive number there), the remaining picks are the unpicked tokens in
    index order. On CUDA the loop never waits for the device (``_dpp_device``); on CPU it branches
    on the host (``_dpp_host``), which saves the masks and selects the device loop needs, with the
    same picks.

    Returns (K,) picks in order and a 0-d count of the picks the DPP itself made.
    """
    if kernel.device.type == "cpu":
        return _dpp_host(kernel, budget)
    return _dpp_device(kernel, budget)


def _dpp_host(kernel: torch.Tensor, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``dpp_greedy`` on CPU: the same torch arithmetic as the device loop, but each step's pick is
    a Python int, so rows and gains are indexed directly instead of through masks and ``where``.

    The walk's cost is the number of torch calls per step (about 11), not their arithmetic, so it
    runs in inference mode (no autograd bookkeeping per call) and every result lands in a buffer
    made before the loop: the first largest gain and its index in ``best``/``at``, cᵀ_{:,j} · C in
    ``proj``, row i of C in a view of ``c``. The returned tensors are made outside inference mode.
    """
    n = kernel.shape[0]
    order: list[int] = []
    with torch.inference_mode():
        c = torch.zeros(budget, n, dtype=kernel.dtype)  # (K, N) rows of the incremental Cholesky factor
        rows = c.unbind(0)  # row i of C, written in place
        cols = c.T  # (N, K): cols[j, :i] is c[:i, j]
        gains = torch.diagonal(kernel).clone()  # (N,)
        drop = torch.empty_like(gains)  # (N,) e², each step's fall of the gains
        best = torch.empty(1, dtype=kernel.dtype)
        at = torch.empty(1, dtype=torch.long)
        proj = torch.empty(1, n, dtype=kernel.dtype)  # cᵀ_{:,j} · C, the matmul of the device loop
        proj_row = proj[0]
        for i in range(budget):
            torch.max(gains, 0, keepdim=True, out=(best, at))  # the first largest gain, as argmax
            if not best.item() > 0:
                break
            j = at.item()
            torch.mm(cols[j : j + 1, :i], c[:i], out=proj)
            e = torch.sub(kernel[j], proj_row, out=rows[i])  # (N,), row i of C
            e.div_(best.sqrt_())  # torch's sqrt, not math.sqrt: the device loop's rounding
            gains.sub_(torch.mul(e, e, out=drop))
            gains.index_fill_(0, at, float("-inf"))
            order.append(j)
    dpp_picks = len(order)
    if dpp_picks < budget:  # exhausted: the unpicked tokens in index order
        picked = set(order)
        order += [j for j in range(n) if j not in picked][: budget - dpp_picks]
    return torch.tensor(order, dtype=torch.long), torch.tensor(dpp_picks)


def _dpp_device(kernel: torch.Tensor, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``dpp_greedy`` in torch, with no host synchronisation inside the loop."""
    n = kernel.shape[0]
    device = kernel.device
    c = torch.zeros(budget, n, dtype=kernel.dtype, device=device)  # (K, N) rows of the incremental Cholesky factor
    gains = torch.diagonal(kernel).clone()  # (N,)
    free = torch.ones(n, dtype=torch.int32, device=device)
    order = torch.empty(budget, dtype=torch.long, device=device)
    dpp_picks = torch.zeros((), dtype=torch.long, device=device)
    for i in range(budget):
        best = torch.argmax(gains)
        ok = gains[best] > 0
        j = torch.where(ok, best, torch.argmax(free))  # argmax of the free mask: lowest unpicked index
        order[i] = j
        e = (kernel[j] - c[:i, j] @ c[:i]) / torch.sqrt(gains[j])  # (N,)
        e = torch.where(ok, e, torch.zeros_like(e))
        c[i] = e
        gains -= e * e
        gains[j] = float("-inf")
        free[j] = 0
        dpp_picks += ok.long()
    return order, dpp_picks


@register("cdpruner", needs=("patch_embeds", "text_embeds"), checks={"theta": optional_below_one}, replayable=True)
def select_cdpruner(inputs: PruneInputs, budget: int, *, theta: float | None = None) -> Selection:
    """CDPruner: greedy DPP MAP over a kernel of feature similarity weighted by question relevance.

    Paper: "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning in
    MLLMs" (CDPruner, Zhang et al., NeurIPS 2025). Rule (methods.md §12): relevance r of each patch
    to the question from the patch embeddings E (``patch_embeds``) and text embeddings T
    (``text_embeds``) in the vision tower's joint image–text space (``question_relevance``: the
    authors' negated, min–max scaled cosine, optionally exp(α r) with α = θ / (2(1 − θ)), which the
    authors leave switched off: ``theta=None``); kernel L_ij = r_i · cos(F_i, F_j) · r_j on the
    post-projector features F; K picks of the fast greedy DPP MAP (``dpp_greedy``). Ties go to the
    lower token index. The walk does not depend on K, so ``order[:s]`` is the selection at budget s.

    Deviations from the authors' code, deliberate, both where theirs is undefined: equal relevance
    everywhere gives r = 1 (they divide by zero), and an exhausted kernel (no positive gain left)
    fills up with the lowest unpicked indices (their loop takes a non-positive square root).

    ``info``: ``relevance`` (N,) CPU float32, ``n_dpp_picks`` (picks before any fill-up), ``theta``.
    """
    relevance = question_relevance(inputs.patch_embeds, inputs.text_embeds, theta)  # (N,)
    largest = float(relevance.max())
    bound = largest * largest * (1 + 2**-20)  # |L_ij| <= r_i · r_j · |cos_ij| <= max(r)², up to rounding
    if not bound <= FLOAT32_MAX:
        raise ValueError(
            f"the CDPruner kernel overflows float32 (largest relevance {largest:.4g}, theta = {theta}): "
            "use a smaller theta"
        )
    kernel = cdpruner_kernel(inputs.feats, relevance)  # (N, N)
    order, dpp_picks = dpp_greedy(kernel, budget)
    info = {"relevance": relevance.cpu(), "n_dpp_picks": int(dpp_picks), "theta": theta}
    return selection_from_order("cdpruner", inputs, order, info)
