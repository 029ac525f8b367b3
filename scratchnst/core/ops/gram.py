"""Gram matrix G = F Fᵀ over spatial positions, and its backward pass."""

from __future__ import annotations

from scratchnst.core import host
from scratchnst.core.backend import get_array_module


def gram_forward(f):
    """Channel-by-channel inner products over all positions, unnormalised.

    f: (N, C, H, W). Returns (g, cache) with g: (N, C, C), g[n, i, j] = Σ_p f[n, i, p] f[n, j, p].
    """
    N, C, H, W = f.shape
    F = f.reshape(N, C, H * W)
    # A sum over positions: host.split_sum adds fixed chunks of them, in order, over the threads.
    g = host.split_sum(get_array_module(f), H * W, N * C, lambda p: F[:, :, p] @ F[:, :, p].transpose(0, 2, 1))
    return g, f


def gram_backward(dg, cache):
    """df from dg: (N, C, C), any dg (symmetric or not).

    G = F Fᵀ is quadratic in F, so dF = (dg + dgᵀ) F: each entry g[i, j] depends on row i
    through F[j] and on row j through F[i].
    """
    f = cache
    xp = get_array_module(f)
    N, C, H, W = f.shape
    F = f.reshape(N, C, H * W)
    s = dg + dg.transpose(0, 2, 1)
    df = host.empty(xp, F.shape, F.dtype)
    # dF's columns are positions: each host thread fills its own chunks of them.
    host.split_map(xp, host.chunks(H * W, N * C), lambda parts: [xp.matmul(s, F[:, :, p], out=df[:, :, p]) for p in parts])
    return df.reshape(f.shape)
