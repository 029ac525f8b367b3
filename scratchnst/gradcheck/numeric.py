"""The numerics of every check: one loop that moves one coordinate and puts it back, the difference
quotients built on it, and the relative error they are judged by.

Central differences (f(x + ε) − f(x − ε)) / 2ε, in the input's dtype (float64 for the checks that
decide), compared with the analytic gradient by
    rel_error(a, n) = max|a − n| / max(max|a|, max|n|, tiny).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from scratchnst.core.backend import to_host

TINY = 1e-30
THRESHOLDS = {"float64": 1e-7, "float32": 1e-2}
EPS = {"float64": 1e-5, "float32": 1e-2}


def rel_error(a, n) -> float:
    """max|a − n| / max(max|a|, max|n|, tiny) over all entries (a normwise relative error)."""
    a, n = to_host(a).astype(np.float64), to_host(n).astype(np.float64)
    return float(np.max(np.abs(a - n)) / max(np.max(np.abs(a)), np.max(np.abs(n)), TINY))


def perturbed(f: Callable, x, i: int, steps: Sequence[float]) -> list:
    """[f(x) with x's flat entry i moved to x_i + step, for each step in turn].

    x is changed in place (f sees the array itself) and entry i is put back afterwards, also when f
    raises. The one loop behind every finite difference in gradcheck.
    """
    flat = x.reshape(-1)
    old = flat[i].copy()
    values = []
    try:
        for step in steps:
            flat[i] = old + step
            values.append(f(x))
    finally:
        flat[i] = old
    return values


def numeric_gradient(f: Callable, x, *, eps: float, coords=None) -> np.ndarray:
    """Central-difference partials of the scalar f at x, for the flat indices `coords` (all when None).

    x is perturbed in place and restored; returns a host float64 vector, one entry per coordinate.
    """
    coords = range(x.size) if coords is None else coords
    value = lambda v: float(f(v))  # noqa: E731
    out = np.empty(len(coords))
    for k, i in enumerate(coords):
        f_plus, f_minus = perturbed(value, x, i, (eps, -eps))
        out[k] = (f_plus - f_minus) / (2 * eps)
    return out


def numeric_jvp(forward: Callable, z, dout, *, eps: float, coords) -> np.ndarray:
    """Central differences of Σ forward(z) · dout, differencing each output entry BEFORE the sum.

    Summing first would subtract two large, nearly equal totals and keep only rounding noise; taking
    (forward(z + ε) − forward(z − ε)) entry by entry keeps the digits that matter.
    """
    out = np.empty(len(coords))
    for k, i in enumerate(coords):
        y_plus, y_minus = perturbed(forward, z, i, (eps, -eps))
        out[k] = float(((y_plus - y_minus) * dout).sum()) / (2 * eps)
    return out


def five_point_gradient(f: Callable, x, *, eps: float, coords) -> np.ndarray:
    """(f(x − 2ε) − 8 f(x − ε) + 8 f(x + ε) − f(x + 2ε)) / 12ε at each flat index in `coords`.

    Exact for polynomials of degree ≤ 4, which the loss terms are in the features (the style loss is
    quartic), so ε can be large and rounding stays small.
    """
    value = lambda v: float(f(v))  # noqa: E731
    steps = [step * eps for step in (-2, -1, 1, 2)]
    out = np.empty(len(coords))
    for k, i in enumerate(coords):
        values = perturbed(value, x, i, steps)
        out[k] = (values[0] - 8 * values[1] + 8 * values[2] - values[3]) / (12 * eps)
    return out
