"""Metrics of methods.md: effective rank, attention entropy, retained attention.

All are computed in float32 whatever the input dtype, and return Python floats.
"""

from __future__ import annotations

import torch

__all__ = [
    "EIGEN_CLAMP",
    "attention_entropy",
    "effective_rank",
    "erank_from_centered_gram",
    "retained_attention",
]

EIGEN_CLAMP = 1e-12  # methods.md, Metrics: eigenvalues are clamped at 1e-12 before the square root


def erank_from_centered_gram(gram_c: torch.Tensor, *, row_gram: bool = False) -> torch.Tensor:
    """Effective rank from a column-centred Gram matrix (X_c X_cᵀ or X_cᵀ X_c), as a 0-d tensor.

    Args:
        gram_c: (m, m) symmetric positive semi-definite, float32.
        row_gram: ``gram_c`` is X_c X_cᵀ, the Gram of the centred *rows*. Centred rows sum to zero,
            so the all-ones vector is an exact null vector and one eigenvalue is exactly 0. In
            float32 the solver returns it as rounding noise of either sign (about 1e-7 of the
            largest eigenvalue); kept, its square root moves erank by up to 2e-4 relative, in a
            direction that depends on the BLAS kernel. Deviation from methods.md, documented: that
            eigenvalue (the smallest) is dropped, which is its exact value's contribution (p = 0).
            Every other eigenvalue is clamped at 1e-12 as methods.md says.
    Stays on the device (no synchronisation), so callers can use the value in further tensor maths.
    """
    eig = torch.linalg.eigvalsh(gram_c)  # (m,) ascending
    if row_gram and eig.shape[0] > 1:
        eig = eig[1:]  # (m - 1,): the centring null direction, exactly zero
    eig = eig.clamp_min(EIGEN_CLAMP)
    sigma = eig.sqrt()
    p = sigma / sigma.sum()
    return torch.exp(-(p * p.log()).sum())


def effective_rank(x: torch.Tensor) -> float:
    """erank(X) of methods.md: exp of the entropy of the sum-normalised singular values.

    Args:
        x: (n, d) matrix, any float dtype, any device. Columns are centred over the n rows first.
    Returns:
        A float in [1, min(n, d)]. Raises ``ValueError`` for non-2-D, empty or non-finite input.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"effective_rank needs a 2-D tensor, got {getattr(x, 'shape', type(x).__name__)}")
    n, d = x.shape
    if n < 1 or d < 1:
        raise ValueError(f"effective_rank needs a non-empty matrix, got shape {(n, d)}")
    x = x.detach().float()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("effective_rank input contains NaN or Inf")
    xc = x - x.mean(dim=0, keepdim=True)  # (n, d)
    gram = xc @ xc.T if n <= d else xc.T @ xc  # (min(n, d), min(n, d))
    return float(erank_from_centered_gram(gram, row_gram=n <= d))


def _attention_probs(a: torch.Tensor) -> torch.Tensor:
    if not isinstance(a, torch.Tensor) or a.dim() != 1 or a.numel() < 1:
        raise ValueError(f"attention must be a non-empty 1-D tensor, got {getattr(a, 'shape', type(a).__name__)}")
    a = a.detach().float()
    if not bool(torch.isfinite(a).all()):
        raise ValueError("attention contains NaN or Inf")
    if bool((a < 0).any()):
        raise ValueError(f"attention must be non-negative, got minimum {a.min().item()}")
    total = a.sum()
    if float(total) <= 0:
        raise ValueError("attention sums to zero: there is no distribution to measure")
    return a / total


def attention_entropy(a: torch.Tensor, normalized: bool = False) -> float:
    """Entropy (nats) of the [CLS] attention over the N patches, renormalised to sum to one.

    Args:
        a: (N,) non-negative attention.
        normalized: divide by log N (0 = all on one patch, 1 = uniform). A 1-token image gives 0.
    """
    p = _attention_probs(a)
    h = float(-(p * p.clamp_min(torch.finfo(torch.float32).tiny).log()).sum())
    h = max(h, 0.0)
    if normalized:
        n = p.numel()
        return h / float(torch.log(torch.tensor(float(n)))) if n > 1 else 0.0
    return h


def retained_attention(a: torch.Tensor, keep: torch.Tensor) -> float:
    """Share of the [CLS] attention mass (renormalised over the N patches) held by ``keep``.

    Args:
        a: (N,) non-negative attention.
        keep: (K,) integer indices into a, unique.
    """
    p = _attention_probs(a)
    if not isinstance(keep, torch.Tensor) or keep.dim() != 1 or keep.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"keep must be a 1-D integer tensor, got {getattr(keep, 'dtype', type(keep).__name__)}")
    if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= p.numel()):
        raise ValueError(f"keep indices must lie in [0, {p.numel() - 1}], got {keep.min().item()}..{keep.max().item()}")
    if keep.unique().numel() != keep.numel():
        raise ValueError("keep indices must be unique")
    return float(p[keep.to(p.device)].sum())
