"""ReLU and its backward pass."""

from __future__ import annotations

from scratchnst.backend import get_array_module, split_range, split_work


def relu_forward(x):
    """y = max(x, 0).

    x: (any shape). Returns (y, cache) where the cache is the boolean mask x > 0,
    a quarter of the memory of keeping x itself.
    """
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    y, mask = xp.empty_like(x), xp.empty(x.shape, dtype=bool)
    flat_x, flat_y, flat_mask = x.reshape(-1), y.reshape(-1), mask.reshape(-1)

    def run(chunks):  # elementwise: each host thread takes its own stretch (backend.split_work)
        for c in chunks:
            xp.greater(flat_x[c], 0, out=flat_mask[c])
            xp.multiply(flat_x[c], flat_mask[c], out=flat_y[c])

    split_work(xp, split_range(xp, x.size), run)
    return y, mask


def relu_backward(dout, cache):
    """dx = dout where x > 0, else 0 (the subgradient at 0 is taken as 0)."""
    xp = get_array_module(dout)
    dout = xp.ascontiguousarray(dout)
    dx = xp.empty_like(dout)
    flat_dout, flat_dx, flat_mask = dout.reshape(-1), dx.reshape(-1), cache.reshape(-1)

    def run(chunks):
        for c in chunks:
            xp.multiply(flat_dout[c], flat_mask[c], out=flat_dx[c])

    split_work(xp, split_range(xp, dx.size), run)
    return dx
