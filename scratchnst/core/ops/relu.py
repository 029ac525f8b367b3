"""ReLU and its backward pass."""

from __future__ import annotations

from scratchnst.core import host
from scratchnst.core.backend import get_array_module


def relu_forward(x):
    """y = max(x, 0).

    x: (any shape). Returns (y, cache) where the cache is the boolean mask x > 0, a quarter of the
    memory of keeping x itself.
    """
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    y, mask = host.empty(xp, x.shape, x.dtype), host.empty(xp, x.shape, bool)
    _elementwise(xp, _relu, x, y, mask)
    return y, mask


def relu_backward(dout, cache):
    """dx = dout where x > 0, else 0 (the subgradient at 0 is taken as 0)."""
    xp = get_array_module(dout)
    dout = xp.ascontiguousarray(dout)
    dx = host.empty(xp, dout.shape, dout.dtype)
    _elementwise(xp, xp.multiply, dout, cache, dx)
    return dx


def _relu(x, y, mask) -> None:
    xp = get_array_module(x)
    xp.greater(x, 0, out=mask)
    xp.multiply(x, mask, out=y)


def _elementwise(xp, fn, *arrays) -> None:
    """fn(*stretches) over matching stretches of the flattened arrays, split over the host threads."""
    flat = [a.reshape(-1) for a in arrays]
    host.split_map(xp, host.slices(xp, flat[0].size), lambda parts: [fn(*(a[s] for a in flat)) for s in parts])
