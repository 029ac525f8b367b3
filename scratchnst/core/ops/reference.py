"""Naive loop versions of the forward ops: slow, obviously correct, the readable reference the tests hold
the fast ops to. Host NumPy only.
"""

from __future__ import annotations

import numpy as np


def conv2d_naive(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int = 1, pad: int = 0) -> np.ndarray:
    """y[n, f, i, j] = b[f] + Σ_{c,p,q} w[f, c, p, q] · xpad[n, c, i·stride + p, j·stride + q]."""
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    xpad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out_h = (H + 2 * pad - KH) // stride + 1
    out_w = (W + 2 * pad - KW) // stride + 1
    y = np.zeros((N, F, out_h, out_w), dtype=x.dtype)
    for n in range(N):
        for f in range(F):
            for i in range(out_h):
                for j in range(out_w):
                    window = xpad[n, :, i * stride : i * stride + KH, j * stride : j * stride + KW]
                    y[n, f, i, j] = np.sum(window * w[f]) + (0 if b is None else b[f])
    return y


def pool2d_naive(x: np.ndarray, k: int, stride: int, reduce=np.max) -> np.ndarray:
    """y[n, c, i, j] = reduce(x[n, c, i·s : i·s + k, j·s : j·s + k]); reduce is np.max or np.mean."""
    N, C, H, W = x.shape
    out_h = (H - k) // stride + 1
    out_w = (W - k) // stride + 1
    y = np.zeros((N, C, out_h, out_w), dtype=x.dtype)
    for i in range(out_h):
        for j in range(out_w):
            y[:, :, i, j] = reduce(x[:, :, i * stride : i * stride + k, j * stride : j * stride + k], axis=(2, 3))
    return y


def gram_naive(f: np.ndarray) -> np.ndarray:
    """g[n, i, j] = Σ_{h,w} f[n, i, h, w] · f[n, j, h, w]."""
    N, C = f.shape[:2]
    g = np.zeros((N, C, C), dtype=f.dtype)
    for n in range(N):
        for i in range(C):
            for j in range(C):
                g[n, i, j] = np.sum(f[n, i] * f[n, j])
    return g
