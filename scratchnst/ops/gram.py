"""Gram matrix G = F Fᵀ over spatial positions, and its backward pass."""

from __future__ import annotations

from scratchnst.backend import get_array_module, split_range, split_work


def gram_forward(f):
    """Channel-by-channel inner products over all positions, unnormalised.

    f: (N, C, H, W). Returns (g, cache) with g: (N, C, C), g[n, i, j] = Σ_p f[n, i, p] f[n, j, p].
    """
    xp = get_array_module(f)
    N, C, H, W = f.shape
    F = f.reshape(N, C, H * W)

    def partial_gram(chunks):  # a sum over positions: each host thread sums its own chunk of them
        return sum(F[:, :, c] @ F[:, :, c].transpose(0, 2, 1) for c in chunks)

    parts = split_work(xp, split_range(xp, H * W, N * C), partial_gram)
    return sum(parts[1:], parts[0]), f


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
    df = xp.empty_like(F)

    def run(chunks):  # dF's columns are positions: each host thread fills its own
        for c in chunks:
            xp.matmul(s, F[:, :, c], out=df[:, :, c])

    split_work(xp, split_range(xp, H * W, N * C), run)
    return df.reshape(f.shape)
