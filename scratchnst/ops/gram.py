"""Gram matrix G = F Fᵀ over spatial positions, and its backward pass."""

from __future__ import annotations


def gram_forward(f):
    """Channel-by-channel inner products over all positions, unnormalised.

    f: (N, C, H, W). Returns (g, cache) with g: (N, C, C), g[n, i, j] = Σ_p f[n, i, p] f[n, j, p].
    """
    N, C, H, W = f.shape
    F = f.reshape(N, C, H * W)
    return F @ F.transpose(0, 2, 1), f


def gram_backward(dg, cache):
    """df from dg: (N, C, C), any dg (symmetric or not).

    G = F Fᵀ is quadratic in F, so dF = (dg + dgᵀ) F: each entry g[i, j] depends on row i
    through F[j] and on row j through F[i].
    """
    f = cache
    N, C, H, W = f.shape
    F = f.reshape(N, C, H * W)
    return ((dg + dg.transpose(0, 2, 1)) @ F).reshape(f.shape)
