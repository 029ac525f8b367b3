"""The teaching view of one op (`python -m scratchnst gradcheck --op NAME`): analytic against numeric
values at a few coordinates, the max relative error, and what that error means in float32 or float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scratchnst.core import ops
from scratchnst.core.backend import get_array_module, to_host
from scratchnst.core.checks import unknown
from scratchnst.core.losses import content_loss, masked_style_loss, style_loss, temporal_loss, tv_loss
from scratchnst.errors import ScratchnstError
from scratchnst.gradcheck.inputs import away_from_zero, soft_mask, temporal_inputs, tie_free
from scratchnst.gradcheck.numeric import EPS, THRESHOLDS, numeric_gradient, rel_error

OPS = ("conv2d", "winograd", "relu", "maxpool", "avgpool", "gram", "content", "style", "masked_style", "tv", "temporal")
PADDED = ("conv2d", "winograd")  # the ops --pad applies to
DEFAULT_SHAPES = {  # x for the layers, the feature map F for the losses, the image for TV
    "conv2d": (1, 3, 6, 6),
    "winograd": (1, 3, 7, 5),  # not a multiple of the 4×4 output tile
    "relu": (1, 2, 4, 5),
    "maxpool": (1, 2, 6, 6),
    "avgpool": (1, 2, 6, 6),
    "gram": (1, 4, 3, 5),
    "content": (1, 4, 3, 5),
    "style": (1, 4, 3, 5),
    "masked_style": (1, 4, 3, 5),
    "tv": (1, 3, 5, 6),
    "temporal": (1, 3, 5, 6),
}
ALL_COORDS_UP_TO = 4096  # inputs this small get every coordinate differenced; bigger ones a sample
DTYPE_MEANING = {
    "float64": (
        "float64 carries ~16 digits, so central differences agree with a right backward to ~1e-10: "
        "an error above 1e-7 is a bug, not rounding."
    ),
    "float32": (
        "float32 carries ~7 digits, so the difference quotient itself is only good to ~1e-3: errors up "
        "to 1e-2 are rounding, not a bug (rerun with --dtype float64 to let a real bug stand out)."
    ),
}


@dataclass(frozen=True)
class Geometry:
    """An op's input and window: shape (N, C, H, W) of its input (DEFAULT_SHAPES[op] when None); kernel
    and stride for conv2d and the pools; pad for conv2d and winograd (3×3, stride 1, pad 0 or 1)."""

    shape: tuple | None = None
    kernel: int | None = None
    stride: int | None = None
    pad: int | None = None


@dataclass
class OpReport:
    """One op's check with the numbers behind it: samples are (index, analytic, numeric)."""

    op: str
    shapes: str
    dtype: str
    eps: float
    samples: list
    max_rel_error: float
    threshold: float
    coords_checked: int
    coords_total: int

    @property
    def passed(self) -> bool:
        return bool(self.max_rel_error <= self.threshold)


def _shape4(shape, op: str) -> tuple[int, int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ScratchnstError(f"{op}: --shape needs 4 positive sizes N,C,H,W, got {shape}")
    if op in ("content", "style", "masked_style") and shape[0] != 1:
        raise ScratchnstError(f"{op}: the loss is defined for one image, so N must be 1 (got shape {shape})")
    return shape


def _op_function(op: str, x, rng, geometry: Geometry):
    """(scalar f(v), analytic df/dx at x, description) for op at x.

    Layers and the Gram matrix are checked through f(v) = Σ op(v) · dout with a random dout; the losses
    are scalars already.
    """
    xp, dtype = get_array_module(x), x.dtype
    kernel, stride, pad = geometry.kernel, geometry.stride, geometry.pad

    def through(forward, backward, what):
        y, cache = forward(x)
        dout = xp.asarray(rng.standard_normal(y.shape), dtype=dtype)
        return (lambda v: (forward(v)[0] * dout).sum()), backward(dout, cache), f"x{tuple(x.shape)} -> {tuple(y.shape)}{what}"

    if op in PADDED:
        k = 3 if kernel is None else kernel
        F = 4
        w = xp.asarray(rng.standard_normal((F, x.shape[1], k, k)), dtype=dtype)
        b = xp.asarray(rng.standard_normal(F), dtype=dtype)
        s, p = (1 if stride is None else stride), (1 if pad is None else pad)
        if op == "winograd":  # F(4×4, 3×3): always 3×3 and stride 1 (explain_op refuses --kernel/--stride)
            forward, backward = (lambda v: ops.winograd_conv2d_forward(v, w, b, p)), ops.winograd_conv2d_backward
        else:
            forward, backward = (lambda v: ops.conv2d_forward(v, w, b, s, p)), ops.conv2d_backward
        return through(forward, backward, f" w{tuple(w.shape)} s{s} p{p}")
    if op == "relu":
        return through(ops.relu_forward, ops.relu_backward, "")
    if op in ("maxpool", "avgpool"):
        k = 2 if kernel is None else kernel
        s = k if stride is None else stride
        fwd, bwd = (ops.maxpool2d_forward, ops.maxpool2d_backward) if op == "maxpool" else (ops.avgpool2d_forward, ops.avgpool2d_backward)
        return through(lambda v: fwd(v, k, s), bwd, f" k{k} s{s}")
    if op == "gram":
        return through(ops.gram_forward, ops.gram_backward, "")
    if op == "content":
        p = xp.asarray(rng.standard_normal(x.shape), dtype=dtype)
        return (lambda v: content_loss(v, p)[0]), content_loss(x, p)[1], f"F{tuple(x.shape)}, P the same"
    if op == "style":
        a = xp.asarray(rng.standard_normal((1, x.shape[1], x.shape[1])), dtype=dtype)
        a = a @ a.transpose(0, 2, 1)
        return (lambda v: style_loss(v, a)[0]), style_loss(x, a)[1], f"F{tuple(x.shape)}, A{tuple(a.shape)}"
    if op == "masked_style":
        a = xp.asarray(rng.standard_normal((1, x.shape[1], x.shape[1])), dtype=dtype)
        a = a @ a.transpose(0, 2, 1) / (x.shape[2] * x.shape[3])
        m = soft_mask(rng, x.shape, xp, dtype)
        return (lambda v: masked_style_loss(v, m, a)[0]), masked_style_loss(x, m, a)[1], f"F{tuple(x.shape)}, mask{tuple(m.shape)}, Â{tuple(a.shape)}"
    if op == "tv":
        return (lambda v: tv_loss(v)[0]), tv_loss(x)[1], f"x{tuple(x.shape)}"
    if op == "temporal":
        target, mask = temporal_inputs(rng, x.shape, xp, dtype)
        value = lambda v: temporal_loss(v, target, mask)[0]  # noqa: E731
        return value, temporal_loss(x, target, mask)[1], f"x{tuple(x.shape)}, target the same, mask{tuple(mask.shape)}"
    raise ScratchnstError(unknown("op", op, OPS))


def explain_op(op: str, geometry: Geometry = Geometry(), *, dtype: str = "float64", eps: float | None = None,
               samples: int = 5, seed: int = 0, xp=np) -> OpReport:
    """Check one op's backward with the numbers shown: analytic vs numeric at `samples` coordinates.

    geometry: the op's input shape and window (Geometry). The max relative error is over every
    coordinate when the input has at most ALL_COORDS_UP_TO entries, else over a random 256 of them.
    """
    if op not in OPS:
        raise ScratchnstError(unknown("op", op, OPS))
    if dtype not in THRESHOLDS:
        raise ScratchnstError(unknown("dtype", dtype, THRESHOLDS))
    if geometry.pad is not None and op not in PADDED:
        raise ScratchnstError(f"--pad applies to {' and '.join(PADDED)} only, not {op}")
    if (geometry.kernel is not None or geometry.stride is not None) and op not in ("conv2d", "maxpool", "avgpool"):
        raise ScratchnstError(f"--kernel/--stride apply to conv2d and the pools, not {op}")
    eps = EPS[dtype] if eps is None else float(eps)
    if not eps > 0:
        raise ScratchnstError(f"--eps must be > 0, got {eps}")
    rng = np.random.default_rng(seed)
    shape = _shape4(DEFAULT_SHAPES[op] if geometry.shape is None else geometry.shape, op)
    if op == "maxpool":  # well-separated values: no window has a tie within ±eps
        x = tie_free(rng, shape, xp, dtype)
    elif op == "relu":
        x = away_from_zero(rng, shape, xp, dtype)
    else:
        x = xp.asarray(rng.standard_normal(shape), dtype=dtype)
    try:
        f, analytic, shapes = _op_function(op, x, rng, geometry)
    except ValueError as exc:  # the op refused the shapes the user asked for
        raise ScratchnstError(str(exc)) from None
    analytic = to_host(analytic).reshape(-1).astype(np.float64)
    total = x.size
    coords = list(range(total)) if total <= ALL_COORDS_UP_TO else sorted(rng.choice(total, 256, replace=False).tolist())
    numeric = numeric_gradient(f, x, eps=eps, coords=coords)
    picked = coords if len(coords) <= samples else sorted(rng.choice(len(coords), samples, replace=False).tolist())
    shown = [(tuple(int(i) for i in np.unravel_index(coords[j], shape)), float(analytic[coords[j]]), float(numeric[j])) for j in picked[:samples]]
    err = rel_error(analytic[np.asarray(coords)], numeric)
    return OpReport(op, shapes, dtype, eps, shown, err, THRESHOLDS[dtype], len(coords), total)


def format_op_report(r: OpReport) -> str:
    """The report as text: the sampled coordinates, the max relative error and what it means."""
    lines = [f"{r.op}: {r.shapes}  ({r.dtype}, eps={r.eps:g})"]
    lines.append(f"  {'index (n, c, h, w)':22s} {'analytic':>14s} {'numeric':>14s} {'|difference|':>13s}")
    for index, a, n in r.samples:
        lines.append(f"  {str(index):22s} {a:14.6e} {n:14.6e} {abs(a - n):13.2e}")
    scope = "all" if r.coords_checked == r.coords_total else f"{r.coords_checked} random of"
    verdict = "pass" if r.passed else "FAIL"
    lines.append(
        f"  max relative error over {scope} {r.coords_total} coordinates: {r.max_rel_error:.2e}"
        f" (threshold {r.threshold:g}): {verdict}"
    )
    lines.append(f"  {DTYPE_MEANING[r.dtype]}")
    return "\n".join(lines)
