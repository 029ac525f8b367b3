"""The inputs the checks run on: values that keep finite differences meaningful (no max-pool tie,
no ReLU input near its kink), soft masks, temporal targets, and a small random VGG-shaped net."""

from __future__ import annotations

import numpy as np

from scratchnst.core.vgg import BLOCK_DEPTHS, VGG16


def tie_free(rng, shape, xp, dtype):
    """A permutation of well-separated values, so no max-pool window has a tie within ±ε."""
    values = rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1
    return xp.asarray(values, dtype=dtype)


def away_from_zero(rng, shape, xp, dtype):
    """Normal values pushed at least 0.1 away from the ReLU kink."""
    v = rng.standard_normal(shape)
    return xp.asarray(v + 0.1 * np.sign(v), dtype=dtype)


def soft_mask(rng, shape, xp, dtype):
    """(1, 1, H, W) mask weights in (0.05, 1) for feature maps of `shape` (N, C, H, W): not binary,
    so the check sees a mask that weights positions, not only selects them."""
    return xp.asarray(rng.uniform(0.05, 1.0, (1, 1, shape[2], shape[3])), dtype=dtype)


def temporal_inputs(rng, shape, xp, dtype):
    """(target, mask) for the temporal term of an image of `shape`: a random target, and a 0/1 mask
    (1, 1, H, W) with about a quarter of the pixels masked out."""
    target = xp.asarray(rng.standard_normal(shape), dtype=dtype)
    mask = xp.asarray(rng.uniform(size=(1, 1, *shape[2:])) > 0.25, dtype=dtype)
    return target, mask


def random_vgg(rng, *, widths=(3, 4, 5, 6, 6), xp=np, dtype="float64", pooling: str = "max") -> VGG16:
    """A VGG-16-shaped net (13 convs, 5 blocks) with few channels and random weights, for checks."""
    params, c_in = [], 3
    for depth, width in zip(BLOCK_DEPTHS, widths):
        for _ in range(depth):
            w = rng.standard_normal((width, c_in, 3, 3)) * np.sqrt(2.0 / (9 * c_in))
            b = rng.standard_normal(width) * 0.1
            params.append((xp.asarray(w, dtype=dtype), xp.asarray(b, dtype=dtype)))
            c_in = width
    return VGG16(params, pooling=pooling)
