"""Max and average pooling over k×k windows with a stride, and their backward passes.

x (N, C, H, W) → y (N, C, (H − k) // stride + 1, (W − k) // stride + 1): odd sizes floor, so trailing
rows/columns that fit no window get zero gradient.
"""

from __future__ import annotations

from typing import NamedTuple

from scratchnst.core import host
from scratchnst.core.backend import get_array_module
from scratchnst.core.ops.conv import conv_output_size


class PoolCache(NamedTuple):
    x_shape: tuple
    k: int
    stride: int
    argmax: object  # (N, C, out_h, out_w) window offset p·k + q of the max; None for average pooling


def maxpool2d_forward(x, k: int, stride: int):
    """Max over each k×k window. x: (N, C, H, W). Returns (y, cache).

    Ties: the gradient goes to the FIRST maximum of the window in row-major order (offsets are scanned
    row by row and only a strictly greater value replaces the running max).
    """
    xp = get_array_module(x)
    N, C, H, W = x.shape
    shape = (N, C, conv_output_size(H, k, stride, 0, "pool"), conv_output_size(W, k, stride, 0, "pool"))
    y = host.empty(xp, shape, x.dtype)
    argmax = host.empty(xp, shape, xp.uint8 if k * k <= 256 else xp.int32)
    pool = _maxpool_tiled if k == stride else _maxpool_scan

    def run(channels):  # channels are independent: each host thread takes its own
        for c in channels:
            y[:, c], argmax[:, c] = pool(x[:, c], k, stride, argmax.dtype)

    host.split_map(xp, host.slices(xp, C, N * H * W), run)
    return y, PoolCache(tuple(x.shape), k, stride, argmax)


def maxpool2d_backward(dout, cache: PoolCache):
    """dx: (N, C, H, W); each dout entry goes to the position of its window's (first) maximum."""
    xp = get_array_module(dout)
    dx = host.zeros(xp, cache.x_shape, dout.dtype)

    def run(channels):  # channel by channel, as in the forward pass
        for c in channels:
            for offset, view in _windows(dx[:, c], cache.k, cache.stride):
                if cache.k <= cache.stride:
                    # Windows do not overlap: each position of dx is written by one offset only.
                    xp.multiply(dout[:, c], cache.argmax[:, c] == offset, out=view)
                else:
                    # view aliases dx; overlapping windows (k > stride) add up across offsets.
                    view += dout[:, c] * (cache.argmax[:, c] == offset)

    host.split_map(xp, host.slices(xp, dx.shape[1], dx[:, 0].size), run)
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
    dx = host.zeros(xp, cache.x_shape, dout.dtype)
    share = dout * (1.0 / (cache.k * cache.k))
    for _, view in _windows(dx, cache.k, cache.stride):
        view += share
    return dx


def _windows(x, k: int, stride: int):
    """Yield (offset, view) for each kernel offset (p, q): view[n, c, i, j] = x[n, c, i·s + p, j·s + q]."""
    N, C, H, W = x.shape
    out_h = conv_output_size(H, k, stride, 0, "pool")
    out_w = conv_output_size(W, k, stride, 0, "pool")
    for p in range(k):
        for q in range(k):
            yield p * k + q, x[:, :, p : p + stride * (out_h - 1) + 1 : stride, q : q + stride * (out_w - 1) + 1 : stride]


def _maxpool_scan(x, k: int, stride: int, dtype):
    """Any windows: a running max over the k² offset views, in row-major offset order. Returns
    (y, argmax)."""
    xp = get_array_module(x)
    y = argmax = None
    for offset, view in _windows(x, k, stride):
        if y is None:
            y = view.copy()
            argmax = xp.zeros(y.shape, dtype=dtype)
            continue
        _keep_first_max(y, argmax, view, argmax.dtype.type(offset))
    return y, argmax


def _keep_first_max(best, tag, value, value_tag) -> None:
    """Where value > best (strictly: ties keep the earlier): best = value, tag = value_tag. In place."""
    xp = get_array_module(best)
    # tag[better] = value_tag without a boolean gather. A scalar tag must be a NumPy scalar, not a
    # Python int: CuPy's copyto checks a Python int with numpy.can_cast, which NumPy 2 refuses.
    xp.copyto(tag, value_tag, where=value > best)
    xp.maximum(best, value, out=best)


def _maxpool_tiled(x, k: int, stride: int, dtype):
    """Non-overlapping windows (k == stride): the max along each window row, then down the rows.
    Returns (y, argmax).

    Split W into (out_w, k) and H into (out_h, k) (free views, after cropping the rows and columns no
    window covers): first the max over q of x[.., i·k + p, j·k + q] for every input row, with the
    first q that holds it; then the max of those over p, carrying p·k + q. The first maximum in
    row-major order is the first row's first maximum, so the tie rule is the scan's. This reads the
    input twice instead of once per offset (docs/benchmarks.md: about 2× faster at 2×2).
    """
    xp = get_array_module(x)
    N, C, H, W = x.shape
    out_h = conv_output_size(H, k, k, 0, "pool")
    out_w = conv_output_size(W, k, k, 0, "pool")
    cols = x[:, :, : out_h * k, : out_w * k].reshape(N, C, out_h * k, out_w, k)
    row_max = xp.maximum(cols[..., 0], cols[..., 1]) if k > 1 else cols[..., 0].copy()
    first_q = (cols[..., 1] > cols[..., 0]).astype(dtype) if k > 1 else xp.zeros(row_max.shape, dtype)
    for q in range(2, k):
        _keep_first_max(row_max, first_q, cols[..., q], first_q.dtype.type(q))
    row_max = row_max.reshape(N, C, out_h, k, out_w)
    first_q = first_q.reshape(N, C, out_h, k, out_w)
    y, argmax = row_max[:, :, :, 0].copy(), first_q[:, :, :, 0].copy()
    for p in range(1, k):
        _keep_first_max(y, argmax, row_max[:, :, :, p], first_q[:, :, :, p] + first_q.dtype.type(p * k))
    return y, argmax
