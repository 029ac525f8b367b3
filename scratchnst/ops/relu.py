"""ReLU and its backward pass."""

from __future__ import annotations


def relu_forward(x):
    """y = max(x, 0).

    x: (any shape). Returns (y, cache) where the cache is the boolean mask x > 0,
    a quarter of the memory of keeping x itself.
    """
    mask = x > 0
    return x * mask, mask


def relu_backward(dout, cache):
    """dx = dout where x > 0, else 0 (the subgradient at 0 is taken as 0)."""
    return dout * cache
