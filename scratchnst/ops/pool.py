"""Max and average pooling over k×k windows with a stride, and their backward passes.

x (N, C, H, W) → y (N, C, (H − k) // stride + 1, (W − k) // stride + 1): odd sizes floor, so trailing
rows/columns that fit no window get zero gradient.
"""

from __future__ import annotations

from typing import NamedTuple

from scratchnst.backend import get_array_module
from scratchnst.ops.conv import conv_output_size


class PoolCache(NamedTuple):
    x_shape: tuple
    k: int
    stride: int
    argmax: object  # (N, C, out_h, out_w) window offset p·k + q of the max; None for average pooling


def _windows(x, k: int, stride: int):
    """Yield (offset, view) for each kernel offset (p, q): view[n, c, i, j] = x[n, c, i·s + p, j·s + q]."""
    N, C, H, W = x.shape
    out_h = conv_output_size(H, k, stride, 0, "pool")
    out_w = conv_output_size(W, k, stride, 0, "pool")
    for p in range(k):
        for q in range(k):
            yield p * k + q, x[:, :, p : p + stride * (out_h - 1) + 1 : stride, q : q + stride * (out_w - 1) + 1 : stride]


def maxpool2d_forward(x, k: int, stride: int):
    """Max over each k×k window. x: (N, C, H, W). Returns (y, cache).

    Ties: the gradient goes to the FIRST maximum of the window in row-major order (offsets are scanned
    row by row and only a strictly greater value replaces the running max).
    """
    xp = get_array_module(x)
    y = argmax = None
    for offset, view in _windows(x, k, stride):
        if y is None:
            y = view.copy()
            argmax = xp.zeros(y.shape, dtype=xp.uint8 if k * k <= 256 else xp.int32)
            continue
        better = view > y
        # argmax[better] = offset without a boolean gather. A NumPy scalar, not a Python int: CuPy's
        # copyto checks a Python int with numpy.can_cast, which NumPy 2 refuses.
        xp.copyto(argmax, argmax.dtype.type(offset), where=better)
        xp.maximum(y, view, out=y)
    return y, PoolCache(tuple(x.shape), k, stride, argmax)


def maxpool2d_backward(dout, cache: PoolCache):
    """dx: (N, C, H, W); each dout entry goes to the position of its window's (first) maximum."""
    xp = get_array_module(dout)
    dx = xp.zeros(cache.x_shape, dtype=dout.dtype)
    for offset, view in _windows(dx, cache.k, cache.stride):
        if cache.k <= cache.stride:
            # Windows do not overlap: each position of dx is written by one offset only.
            xp.multiply(dout, cache.argmax == offset, out=view)
        else:
            # view aliases dx; overlapping windows (k > stride) add up across offsets.
            view += dout * (cache.argmax == offset)
    return dx


def avgpool2d_forward(x, k: int, stride: int):
    """Mean over each k×k window. x: (N, C, H, W). Returns (y, cache)."""
    y = None
    for _, view in _windows(x, k, stride):
        if y is None:
            y = view.copy()
        else:
            y += view
    y *= 1.0 / (k * k)
    return y, PoolCache(tuple(x.shape), k, stride, None)


def avgpool2d_backward(dout, cache: PoolCache):
    """dx: (N, C, H, W); each window position receives dout / k²."""
    xp = get_array_module(dout)
    dx = xp.zeros(cache.x_shape, dtype=dout.dtype)
    share = dout * (1.0 / (cache.k * cache.k))
    for _, view in _windows(dx, cache.k, cache.stride):
        view += share
    return dx
