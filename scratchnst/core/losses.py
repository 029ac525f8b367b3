"""The loss terms of Gatys et al. (2015; the masked style term of 2017) and the temporal term of Ruder
et al. (2016) for video, each returning (value, gradient w.r.t. its input).

Values are 0-d arrays on the input's array module (no host sync here); the objective converts them.
"""

from __future__ import annotations

from scratchnst.core import ops
from scratchnst.core.backend import get_array_module


def content_loss(f, p):
    """½ Σ (F − P)². f, p: (N, C, H, W) activations of the image and the content target.

    Returns (loss, df) with df = F − P.
    """
    diff = f - p
    return 0.5 * (diff * diff).sum(), diff


def style_loss(f, a):
    """Σ (G − A)² / (4 N² M²) with G = F Fᵀ, N channels and M = H·W positions of f.

    f: (1, N, H, W) activations; a: (1, N, N) target Gram matrix at the same M.
    Returns (loss, df): dE/dG = (G − A) / (2 N² M²), then back through the Gram matrix.
    """
    g, cache = ops.gram_forward(f)
    value, dg = gram_style_loss(g, a, f.shape[2] * f.shape[3])
    return value, ops.gram_backward(dg, cache)


def gram_style_loss(g, a, positions: int):
    """Σ (G − A)² / (4 N² M²) from the Gram matrix itself: g, a: (1, N, N), g summed over M =
    `positions` positions (the whole layer's, when g is a sum of tiles' Gram matrices).
    Returns (loss, dE/dG) with dE/dG = (G − A) / (2 N² M²)."""
    C = g.shape[1]
    diff = g - a
    scale = 1.0 / (4.0 * C * C * positions ** 2)
    return scale * (diff * diff).sum(), (2.0 * scale) * diff


def tv_loss(x):
    """Total variation Σ (x[i+1, j] − x[i, j])² + Σ (x[i, j+1] − x[i, j])² over x: (N, C, H, W).

    Returns (loss, dx). Each squared difference d = x[b] − x[a] sends +2d to x[b] and −2d to x[a].
    """
    dh = x[:, :, 1:, :] - x[:, :, :-1, :]
    dw = x[:, :, :, 1:] - x[:, :, :, :-1]
    loss = (dh * dh).sum() + (dw * dw).sum()
    dx = get_array_module(x).zeros_like(x)
    dx[:, :, 1:, :] += 2 * dh
    dx[:, :, :-1, :] -= 2 * dh
    dx[:, :, :, 1:] += 2 * dw
    dx[:, :, :, :-1] -= 2 * dw
    return loss, dx


def temporal_loss(x, target, mask):
    """(1/D) Σ_k c_k (x_k − t_k)² over the D = x.size values of x: (N, C, H, W) (Ruder et al. 2016).

    target: shaped like x (the previous frame's output warped to this one); mask c: broadcastable to
    x, e.g. (1, 1, H, W), 1 where the motion is reliable and 0 where it is not (occlusions, motion
    boundaries). Returns (loss, dx) with dx = 2 c (x − t) / D.
    """
    diff = mask * (x - target)
    scale = 1.0 / x.size
    return scale * (diff * (x - target)).sum(), (2.0 * scale) * diff


def masked_style_loss(f, mask, a_hat):
    """One region's style term Σ (Ĝ − Â)² / (4 N²), Ĝ = F diag(m) Fᵀ / Σm (Gatys et al. 2017, §4.1).

    f: (1, N, H, W) activations; mask: (1, 1, H, W) weights ≥ 0 on f's grid (not all 0); a_hat:
    (1, N, N) the style's Gram matrix per position (G_style / M_style). Ĝ is the mask-weighted mean
    of the outer products f_p f_pᵀ: with a binary mask it is Gatys 2017's (F∘m)(F∘m)ᵀ / Σm, and with
    m = 1 everywhere it is G / M, so the term equals style_loss(f, M·Â) exactly.
    Returns (loss, df). Ĝ is the Gram matrix of F·√m over Σm, so dE/dF = gram_backward(dE/dĜ / Σm)·√m.
    """
    xp = get_array_module(f)
    root = xp.sqrt(mask)
    g, cache = ops.gram_forward(f * root)
    value, dg = masked_gram_style_loss(g, mask.sum(), a_hat)
    return value, ops.gram_backward(dg, cache) * root


def masked_gram_style_loss(g, total, a_hat):
    """One region's Σ (Ĝ − Â)² / (4 N²) from g = Σ_p m_p F_p F_pᵀ: (1, N, N) (the Gram matrix of F·√m,
    or a sum of tiles' ones) and total = Σ_p m_p over the whole layer; Ĝ = g / total.
    Returns (loss, dE/dg) with dE/dg = (Ĝ − Â) / (2 N² total)."""
    N = g.shape[1]
    diff = g / total - a_hat
    scale = 1.0 / (4.0 * N * N)
    return scale * (diff * diff).sum(), (2.0 * scale / total) * diff


def regions_style_loss(f, regions):
    """The style term of one layer over several regions: Σ_k masked_style_loss(f, m_k, Â_k).

    f: (1, N, H, W); regions: [(mask (1, 1, H, W), a_hat (1, N, N)), ...], possibly empty (then 0).
    Returns (loss, df); where masks overlap their terms add."""
    value, df = f.sum() * 0, f * 0
    for m, a_hat in regions:
        v, d = masked_style_loss(f, m, a_hat)
        value, df = value + v, df + d
    return value, df
