"""Finite-difference checks of every backward pass: the proof that the hand-written gradients are right.

Central differences (f(x + ε) − f(x − ε)) / 2ε in float64, compared with the analytic gradient by
    rel_error(a, n) = max|a − n| / max(max|a|, max|n|, tiny).
Each op is checked through the scalar Σ op(x) · dout with a random dout, so its backward pass sees a
generic upstream gradient (for the Gram matrix a non-symmetric one).

Three ways in: `run_checks` (every op, the table `python -m scratchnst gradcheck` prints);
`explain_op` (one op with its numbers shown, `--op NAME`); `vgg_layer_check` (the objective's
gradient through the real VGG-16 checked at the input of every layer, so a broken backward is named,
`--vgg`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from scratchnst import ops
from scratchnst.backend import get_array_module, to_host
from scratchnst.losses import content_loss, style_loss, tv_loss
from scratchnst.objective import NSTObjective
from scratchnst.vgg import BLOCK_DEPTHS, VGG16

TINY = 1e-30
THRESHOLDS = {"float64": 1e-7, "float32": 1e-2}
EPS = {"float64": 1e-5, "float32": 1e-2}


@dataclass
class CheckResult:
    op: str
    shapes: str
    max_rel_error: float
    threshold: float

    @property
    def passed(self) -> bool:
        return bool(self.max_rel_error <= self.threshold)


def rel_error(a, n) -> float:
    """max|a − n| / max(max|a|, max|n|, tiny) over all entries (a normwise relative error)."""
    a, n = to_host(a).astype(np.float64), to_host(n).astype(np.float64)
    return float(np.max(np.abs(a - n)) / max(np.max(np.abs(a)), np.max(np.abs(n)), TINY))


def numeric_gradient(f: Callable, x, *, eps: float, coords=None) -> np.ndarray:
    """Central-difference partials of the scalar f at x, for the flat indices `coords` (all when None).

    x is perturbed in place and restored; returns a host float64 vector, one entry per coordinate.
    """
    flat = x.reshape(-1)
    coords = range(flat.size) if coords is None else coords
    out = np.empty(len(coords))
    for k, i in enumerate(coords):
        old = flat[i].copy()
        flat[i] = old + eps
        f_plus = float(f(x))
        flat[i] = old - eps
        f_minus = float(f(x))
        flat[i] = old
        out[k] = (f_plus - f_minus) / (2 * eps)
    return out


def check_op(name: str, forward: Callable, backward: Callable, x, rng, *, eps: float, threshold: float) -> CheckResult:
    """Check backward(dout, cache) against d/dx Σ forward(x)[0] · dout for a random dout."""
    xp = get_array_module(x)
    y, cache = forward(x)
    dout = xp.asarray(rng.standard_normal(y.shape), dtype=x.dtype)
    analytic = backward(dout, cache)
    numeric = numeric_gradient(lambda v: (forward(v)[0] * dout).sum(), x, eps=eps)
    return CheckResult(name, f"x{tuple(x.shape)} -> {tuple(y.shape)}", rel_error(analytic.reshape(-1), numeric), threshold)


def check_loss(name: str, loss_and_grad: Callable, x, *, eps: float, threshold: float, coords=None) -> CheckResult:
    """Check the gradient of a scalar loss: loss_and_grad(x) -> (loss, dx)."""
    analytic = to_host(loss_and_grad(x)[1]).reshape(-1)
    numeric = numeric_gradient(lambda v: loss_and_grad(v)[0], x, eps=eps, coords=coords)
    if coords is not None:
        analytic = analytic[np.asarray(coords)]
    return CheckResult(name, f"x{tuple(x.shape)}", rel_error(analytic, numeric), threshold)


def _tie_free(rng, shape, xp, dtype):
    """A permutation of well-separated values, so no max-pool window has a tie within ±ε."""
    values = rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1
    return xp.asarray(values, dtype=dtype)


def _away_from_zero(rng, shape, xp, dtype):
    """Normal values pushed at least 0.1 away from the ReLU kink."""
    v = rng.standard_normal(shape)
    return xp.asarray(v + 0.1 * np.sign(v), dtype=dtype)


CONV_CASES = [  # (x shape, (F, KH, KW), stride, pad)
    ((2, 3, 7, 7), (4, 3, 3), 1, 1),
    ((1, 2, 8, 11), (3, 3, 3), 2, 1),
    ((2, 3, 6, 5), (2, 1, 1), 1, 0),
    ((1, 2, 9, 7), (3, 2, 2), 3, 2),
    ((1, 2, 5, 6), (2, 5, 5), 1, 2),
    ((1, 3, 7, 6), (2, 3, 2), 1, 0),
    ((1, 2, 4, 5), (2, 1, 1), 1, 1),
]
POOL_CASES = [  # (x shape, k, stride)
    ((2, 3, 8, 8), 2, 2),
    ((1, 2, 7, 9), 2, 2),
    ((1, 2, 9, 8), 3, 2),
    ((1, 1, 7, 7), 3, 3),
]


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


def op_checks(rng, *, xp=np, dtype: str = "float64") -> list[CheckResult]:
    """Every op and loss term on small random inputs."""
    eps, thr = EPS[dtype], THRESHOLDS[dtype]
    results = []
    for shape, (F, KH, KW), stride, pad in CONV_CASES:
        x = xp.asarray(rng.standard_normal(shape), dtype=dtype)
        w = xp.asarray(rng.standard_normal((F, shape[1], KH, KW)), dtype=dtype)
        b = xp.asarray(rng.standard_normal(F), dtype=dtype)
        r = check_op("conv2d", lambda v: ops.conv2d_forward(v, w, b, stride, pad), ops.conv2d_backward, x, rng, eps=eps, threshold=thr)
        r.shapes += f" k{KH}x{KW} s{stride} p{pad}"
        results.append(r)
    x = _away_from_zero(rng, (2, 3, 5, 4), xp, dtype)
    results.append(check_op("relu", ops.relu_forward, ops.relu_backward, x, rng, eps=eps, threshold=thr))
    for name, fwd, bwd in (("maxpool", ops.maxpool2d_forward, ops.maxpool2d_backward), ("avgpool", ops.avgpool2d_forward, ops.avgpool2d_backward)):
        for shape, k, stride in POOL_CASES:
            x = _tie_free(rng, shape, xp, dtype)
            r = check_op(name, lambda v: fwd(v, k, stride), bwd, x, rng, eps=eps, threshold=thr)
            r.shapes += f" k{k} s{stride}"
            results.append(r)
    f = xp.asarray(rng.standard_normal((2, 4, 3, 5)), dtype=dtype)
    results.append(check_op("gram", ops.gram_forward, ops.gram_backward, f, rng, eps=eps, threshold=thr))
    p = xp.asarray(rng.standard_normal((1, 4, 3, 5)), dtype=dtype)
    a = xp.asarray(rng.standard_normal((1, 4, 4)), dtype=dtype)
    a = a @ a.transpose(0, 2, 1)
    f = xp.asarray(rng.standard_normal((1, 4, 3, 5)), dtype=dtype)
    results.append(check_loss("content", lambda v: content_loss(v, p), f, eps=eps, threshold=thr))
    results.append(check_loss("style", lambda v: style_loss(v, a), f, eps=eps, threshold=thr))
    results.append(check_loss("tv", tv_loss, xp.asarray(rng.standard_normal((1, 3, 5, 6)), dtype=dtype), eps=eps, threshold=thr))
    return results


def objective_check(net, rng, *, size=(32, 32), coords: int | None = None, eps: float, threshold: float, name: str) -> CheckResult:
    """The full objective (content + style + TV) through `net` at a small size, at all or sampled pixels."""
    xp, dtype = net.xp, net.dtype
    h, w = size
    # Inputs on the preprocessed (mean-subtracted 0-255) scale the real network expects.
    content = xp.asarray(rng.uniform(-100, 100, (1, 3, h, w)), dtype=dtype)
    style = xp.asarray(rng.uniform(-100, 100, (1, 3, h + 8, w - 4)), dtype=dtype)
    obj = NSTObjective(net, content, [style], content_weight=1.0, style_weight=1e2, tv_weight=1e-2)
    x = xp.asarray(rng.uniform(-100, 100, (1, 3, h, w)), dtype=dtype)
    picked = None if coords is None else sorted(rng.choice(x.size, size=coords, replace=False).tolist())
    r = check_loss(name, obj.loss_and_grad, x, eps=eps, threshold=threshold, coords=picked)
    r.shapes += f" {'all' if picked is None else len(picked)} coords"
    return r


def run_checks(*, seed: int = 0, dtype: str = "float64", real_net=None) -> list[CheckResult]:
    """All op checks, the objective through a random VGG-shaped net (max and avg pooling), and through
    `real_net` (the real VGG-16, float64) at a tiny size when given."""
    rng = np.random.default_rng(seed)
    results = op_checks(rng, dtype=dtype)
    thr = THRESHOLDS[dtype]
    for pooling in ("max", "avg"):
        net = random_vgg(rng, dtype=dtype, pooling=pooling)
        results.append(objective_check(net, rng, eps=1e-4 if dtype == "float64" else 1.0, coords=48, threshold=thr, name=f"objective (random VGG, {pooling}pool)"))
    if real_net is not None:
        results.append(objective_check(real_net, rng, eps=1e-4, coords=16, threshold=thr, name="objective (VGG-16)"))
    return results


# -- the teaching view: one op, its numbers shown --------------------------------------------------

OPS = ("conv2d", "relu", "maxpool", "avgpool", "gram", "content", "style", "tv")
DEFAULT_SHAPES = {  # x for the layers, the feature map F for the losses, the image for TV
    "conv2d": (1, 3, 6, 6),
    "relu": (1, 2, 4, 5),
    "maxpool": (1, 2, 6, 6),
    "avgpool": (1, 2, 6, 6),
    "gram": (1, 4, 3, 5),
    "content": (1, 4, 3, 5),
    "style": (1, 4, 3, 5),
    "tv": (1, 3, 5, 6),
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
        raise ValueError(f"{op}: --shape needs 4 positive sizes N,C,H,W, got {shape}")
    if op in ("content", "style") and shape[0] != 1:
        raise ValueError(f"{op}: the loss is defined for one image, so N must be 1 (got shape {shape})")
    return shape


def _op_function(op: str, x, rng, *, kernel, stride, pad):
    """(scalar f(v), analytic df/dx at x, description) for op at x.

    Layers and the Gram matrix are checked through f(v) = Σ op(v) · dout with a random dout; the losses
    are scalars already.
    """
    xp, dtype = get_array_module(x), x.dtype

    def through(forward, backward, what):
        y, cache = forward(x)
        dout = xp.asarray(rng.standard_normal(y.shape), dtype=dtype)
        return (lambda v: (forward(v)[0] * dout).sum()), backward(dout, cache), f"x{tuple(x.shape)} -> {tuple(y.shape)}{what}"

    if op == "conv2d":
        k = 3 if kernel is None else kernel
        F = 4
        w = xp.asarray(rng.standard_normal((F, x.shape[1], k, k)), dtype=dtype)
        b = xp.asarray(rng.standard_normal(F), dtype=dtype)
        s, p = (1 if stride is None else stride), (1 if pad is None else pad)
        return through(lambda v: ops.conv2d_forward(v, w, b, s, p), ops.conv2d_backward, f" w{tuple(w.shape)} s{s} p{p}")
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
    if op == "tv":
        return (lambda v: tv_loss(v)[0]), tv_loss(x)[1], f"x{tuple(x.shape)}"
    raise ValueError(f"unknown op {op!r} (choose from {', '.join(OPS)})")


def explain_op(
    op: str,
    *,
    shape=None,
    kernel: int | None = None,
    stride: int | None = None,
    pad: int | None = None,
    dtype: str = "float64",
    eps: float | None = None,
    samples: int = 5,
    seed: int = 0,
    xp=np,
) -> OpReport:
    """Check one op's backward with the numbers shown: analytic vs numeric at `samples` coordinates.

    shape: (N, C, H, W) of the op's input (DEFAULT_SHAPES when None); kernel/stride/pad for conv2d and
    the pools (pad: conv2d only). The max relative error is over every coordinate when the input has at
    most ALL_COORDS_UP_TO entries, else over a random 256 of them.
    """
    if op not in OPS:
        raise ValueError(f"unknown op {op!r} (choose from {', '.join(OPS)})")
    if dtype not in THRESHOLDS:
        raise ValueError(f"unknown dtype {dtype!r} (choose from {', '.join(THRESHOLDS)})")
    if pad is not None and op != "conv2d":
        raise ValueError(f"--pad applies to conv2d only, not {op}")
    if (kernel is not None or stride is not None) and op not in ("conv2d", "maxpool", "avgpool"):
        raise ValueError(f"--kernel/--stride apply to conv2d and the pools, not {op}")
    eps = EPS[dtype] if eps is None else float(eps)
    if not eps > 0:
        raise ValueError(f"--eps must be > 0, got {eps}")
    rng = np.random.default_rng(seed)
    shape = _shape4(DEFAULT_SHAPES[op] if shape is None else shape, op)
    if op == "maxpool":  # well-separated values: no window has a tie within ±eps
        x = _tie_free(rng, shape, xp, dtype)
    elif op == "relu":
        x = _away_from_zero(rng, shape, xp, dtype)
    else:
        x = xp.asarray(rng.standard_normal(shape), dtype=dtype)
    f, analytic, shapes = _op_function(op, x, rng, kernel=kernel, stride=stride, pad=pad)
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


# -- layer by layer through the real network ------------------------------------------------------


@dataclass
class StageResult:
    """One row of the layer-by-layer check.

    end_to_end: rel error of dL/d(this stage's input) against differences of the whole rest of the
    objective; local: rel error of this stage's own backward alone (through Σ stage(z) · dout with the
    dout it really received). None where a column does not apply.
    """

    stage: str
    shape: tuple
    end_to_end: float | None
    local: float | None
    threshold: float
    coords: int

    @property
    def broken(self) -> bool:
        """This stage's own backward disagrees with finite differences."""
        return self.local is not None and self.local > self.threshold

    @property
    def passed(self) -> bool:
        return not self.broken and (self.end_to_end is None or self.end_to_end <= self.threshold)

    @property
    def verdict(self) -> str:
        if self.broken:
            return "BROKEN here"
        if not self.passed:
            return "wrong (inherited from above)"
        return "ok"


def _stage_forward(net, index: int, z):
    """Layer `index` of the VGG table alone, forward, through the ops (what net.forward does there)."""
    from scratchnst.vgg import LAYERS

    _, kind, conv = LAYERS[index]
    if kind == "conv":
        w, b = net.params[conv]
        return ops.conv2d_forward(z, w, b, stride=1, pad=1)[0]
    if kind == "relu":
        return ops.relu_forward(z)[0]
    pool = ops.maxpool2d_forward if net.pooling == "max" else ops.avgpool2d_forward
    return pool(z, 2, 2)[0]


def _kink_side(kind: str, pooling: str, z):
    """Which side of its kinks a ReLU or max-pool stage is on for input z (None: no kinks).

    ReLU: the sign pattern z > 0. Max-pool 2×2/2: the winning offset of every window (first maximum,
    like the op). Computed here from z, not from the op's cache, so it does not trust the code under test.
    """
    if kind == "relu":
        return z > 0
    if kind == "pool" and pooling == "max":
        N, C, H, W = z.shape
        oh, ow = H // 2, W // 2
        windows = z[:, :, : 2 * oh, : 2 * ow].reshape(N, C, oh, 2, ow, 2).transpose(0, 1, 2, 4, 3, 5)
        return windows.reshape(N, C, oh, ow, 4).argmax(axis=-1)
    return None


def _losses_at(obj: NSTObjective, layer: str, f):
    """(weighted loss terms that live at `layer`, their gradient) for activation f; (0, None) if none."""
    value, grad = 0.0, None
    if layer in obj.content_layers:
        v, d = content_loss(f, obj.targets[layer])
        value, grad = value + obj.content_weight * v, obj.content_weight * d
    for name, w in zip(obj.style_layers, obj.style_layer_weights):
        if name == layer:
            v, d = style_loss(f, obj.grams[layer])
            value = value + obj.style_weight * w * v
            d = (obj.style_weight * w) * d
            grad = d if grad is None else grad + d
    return value, grad


def _kink_free_coords(forward, z, rng, count: int, eps: float, *, linear: bool = False) -> list[int]:
    """Up to `count` flat indices of z where `forward` is linear on [z − ε, z + ε] along that axis.

    ReLU and max-pool have kinks (an input at 0, a window with a near-tie) where the derivative is
    undefined and a central difference means nothing; those coordinates are skipped. Half the picks
    are "active" ones (the output moves), so a check is never only about zeros. Uses forwards only;
    a `linear` forward (conv) needs no search.
    """
    order = rng.permutation(z.size)
    if linear:
        return sorted(order[:count].tolist())
    flat = z.reshape(-1)
    y0 = forward(z)
    active, idle = [], []
    for i in order[: 40 * count].tolist():
        old = flat[i].copy()
        flat[i] = old + eps
        up = forward(z) - y0
        flat[i] = old - eps
        down = y0 - forward(z)
        flat[i] = old
        moved = float(abs(up).max())
        if float(abs(up - down).max()) > 1e-3 * max(eps, moved):
            continue  # a kink within ±ε
        (active if moved > 0 else idle).append(i)
        if len(active) >= (count + 1) // 2 and len(active) + len(idle) >= count:
            break
    picked = active[: (count + 1) // 2]
    picked += idle[: count - len(picked)]
    picked += [i for i in active if i not in picked][: count - len(picked)]
    return sorted(picked)


def _numeric_jvp(forward, z, dout, *, eps: float, coords) -> np.ndarray:
    """Central differences of Σ forward(z) · dout, differencing each output entry BEFORE the sum.

    Summing first would subtract two large, nearly equal totals and keep only rounding noise; taking
    (forward(z + ε) − forward(z − ε)) entry by entry keeps the digits that matter.
    """
    flat = z.reshape(-1)
    out = np.empty(len(coords))
    for k, i in enumerate(coords):
        old = flat[i].copy()
        flat[i] = old + eps
        y_plus = forward(z)
        flat[i] = old - eps
        y_minus = forward(z)
        flat[i] = old
        out[k] = float(((y_plus - y_minus) * dout).sum()) / (2 * eps)
    return out


def _five_point(f: Callable, x, *, eps: float, coords) -> np.ndarray:
    """(f(x − 2ε) − 8 f(x − ε) + 8 f(x + ε) − f(x + 2ε)) / 12ε at each flat index in `coords`.

    Exact for polynomials of degree ≤ 4, which the loss terms are in the features (the style loss is
    quartic), so ε can be large and rounding stays small.
    """
    flat = x.reshape(-1)
    out = np.empty(len(coords))
    for k, i in enumerate(coords):
        old = flat[i].copy()
        values = []
        for step in (-2, -1, 1, 2):
            flat[i] = old + step * eps
            values.append(float(f(x)))
        flat[i] = old
        out[k] = (values[0] - 8 * values[1] + 8 * values[2] - values[3]) / (12 * eps)
    return out


def vgg_layer_check(
    net,
    rng,
    *,
    size: tuple[int, int] = (32, 32),
    coords: int = 4,
    rel_eps: float = 1e-4,
    threshold: float = THRESHOLDS["float64"],
) -> list[StageResult]:
    """The objective's input gradient checked stage by stage through `net` (float64), deepest first.

    For each layer k up to the deepest loss layer, z_k is its input and g_k = dL/dz_k comes from the
    net's own backward run one layer at a time (net.backward on the one-layer cache list [caches[k]]).
    Two checks per stage at a few kink-free coordinates of z_k, with ε = rel_eps · rms(z_k) (activations
    grow to thousands in the middle of VGG; a fixed ε would be tiny there and drown in rounding):
      end-to-end: g_k against central differences of L as a function of z_k (the rest of the net and
                  the losses run forward from z_k);
      local:      layer k's backward alone against differences of Σ layer_k(z) · g_{k+1}.
    A stage whose local check fails is BROKEN; stages below it inherit a wrong end-to-end gradient.
    Rows "losses@layer" check the loss terms' gradient at that layer, and the last row the whole
    NSTObjective.loss_and_grad (TV included) at the input pixels.
    """
    from scratchnst.vgg import LAYER_NAMES, LAYERS

    xp = net.xp
    if str(net.dtype) != "float64":
        raise ValueError(f"the layer-by-layer check needs a float64 net (got {net.dtype})")
    h, w = size
    content = xp.asarray(rng.uniform(-100, 100, (1, 3, h, w)), dtype="float64")
    style = xp.asarray(rng.uniform(-100, 100, (1, 3, h, w)), dtype="float64")
    obj = NSTObjective(net, content, [style], content_weight=1.0, style_weight=1e2, tv_weight=1e-2)
    x = xp.asarray(rng.uniform(-100, 100, (1, 3, h, w)), dtype="float64")
    deepest = max(LAYER_NAMES.index(n) for n in obj.layers)
    names = LAYER_NAMES[: deepest + 1]
    feats, caches = net.forward(x, names)
    if [c.name for c in caches] != list(names):
        raise RuntimeError("net.forward no longer returns one cache per layer; the layer-by-layer check needs that")
    inputs = [x] + [feats[n] for n in names[:-1]]

    def tail(k, z, pattern: list | None = None):
        """L as a function of z = the input of layer k (losses at layers k.. only; no TV).

        With `pattern`, appends which side of every kink the forward took: the sign of each ReLU
        input and the winner of each max-pool window. Equal patterns at z ± ε mean the tail is smooth
        in between, so the central difference is a derivative.
        """
        total = 0.0
        for j in range(k, deepest + 1):
            if pattern is not None:
                pattern.append(_kink_side(LAYERS[j][1], net.pooling, z))
            z = _stage_forward(net, j, z)
            total = total + _losses_at(obj, names[j], z)[0]
        return total

    def e2e_numeric(k, z, candidates, eps):
        """(coords, central differences of tail(k)) at the first `coords` candidates with no kink."""
        flat, picked, values = z.reshape(-1), [], []
        for i in candidates:
            old = flat[i].copy()
            flat[i] = old + eps
            up_side = []
            f_plus = float(tail(k, z, up_side))
            flat[i] = old - eps
            down_side = []
            f_minus = float(tail(k, z, down_side))
            flat[i] = old
            if all(a is None or bool((a == b).all()) for a, b in zip(up_side, down_side)):
                picked.append(i)
                values.append((f_plus - f_minus) / (2 * eps))
            if len(picked) == coords:
                break
        return picked, np.asarray(values)

    def eps_for(z) -> float:
        return rel_eps * max(float(np.sqrt(float((z * z).mean()))), 1e-3)

    def error(analytic, picked, numeric) -> float:
        """max over the sampled coordinates of |a − n|, over the largest |a| of the WHOLE stage gradient.

        That is rel_error's normwise error estimated from a sample: dividing by the sampled entries
        alone would blow rounding up wherever the sample happens to hold only tiny gradients.
        """
        a = to_host(analytic).reshape(-1)
        if not len(picked):
            return 0.0
        diff = np.max(np.abs(a[np.asarray(picked, dtype=int)] - numeric))
        return float(diff / max(np.max(np.abs(a)), np.max(np.abs(numeric)), TINY))

    results = []
    out_grad = None  # dL/d(output of layer k), built as the walk goes down
    for k in range(deepest, -1, -1):
        name, kind = names[k], LAYERS[k][1]
        _, loss_grad = _losses_at(obj, name, feats[name])
        if loss_grad is not None:
            f = feats[name].copy()
            eps = eps_for(f)
            picked = sorted(rng.choice(f.size, size=min(coords, f.size), replace=False).tolist())
            numeric = _five_point(lambda v: _losses_at(obj, name, v)[0], f, eps=100 * eps, coords=picked)
            results.append(StageResult(f"losses@{name}", tuple(f.shape), None, error(loss_grad, picked, numeric), threshold, len(picked)))
            out_grad = loss_grad if out_grad is None else out_grad + loss_grad
        in_grad = net.backward({name: out_grad}, [caches[k]])
        z = inputs[k].copy()
        eps = eps_for(z)
        layer = lambda v, k=k: _stage_forward(net, k, v)  # noqa: E731
        picked = _kink_free_coords(layer, z, rng, coords, eps, linear=kind == "conv")
        local = error(in_grad, picked, _numeric_jvp(layer, z, out_grad, eps=eps, coords=picked))
        # End to end, a kink may also sit downstream: keep the first `coords` candidates free of any.
        candidates = picked + [i for i in rng.permutation(z.size)[: 20 * coords].tolist() if i not in picked]
        picked, numeric = e2e_numeric(k, z, candidates, eps)
        e2e = error(in_grad, picked, numeric) if picked else None
        results.append(StageResult(name, tuple(z.shape), e2e, local, threshold, len(picked)))
        out_grad = in_grad
    # The production path, NSTObjective.loss_and_grad (TV included), at the input pixels the walk
    # found kink-free.
    _, grad = obj.loss_and_grad(x.copy())
    numeric = numeric_gradient(lambda v: obj.loss_and_grad(v)[0], x.copy(), eps=eps_for(x), coords=picked)
    results.append(StageResult("objective (with TV)", tuple(x.shape), error(grad, picked, numeric), None, threshold, len(picked)))
    return results


def format_layer_report(results: list[StageResult]) -> str:
    """The layer-by-layer table, deepest stage first (the order the gradient flows), and a verdict."""
    lines = [
        "dL/d(input of each stage), checked against central differences at a few kink-free coordinates",
        f"{'stage':22s} {'input shape':22s} {'end-to-end':>11s} {'local':>10s}  verdict",
    ]
    fmt = lambda v: f"{v:11.2e}" if v is not None else f"{'-':>11s}"  # noqa: E731
    for r in results:
        lines.append(f"{r.stage:22s} {str(r.shape):22s} {fmt(r.end_to_end)} {fmt(r.local)[1:]}  {r.verdict}")
    broken = [r.stage for r in results if r.broken]
    failed = [r.stage for r in results if not r.passed]
    if broken:
        lines.append(f"broken backward: {', '.join(broken)}")
    elif failed:
        lines.append(f"wrong gradients at: {', '.join(failed)} (no single layer's backward is at fault)")
    else:
        lines.append(f"all {len(results)} stages agree with finite differences")
    return "\n".join(lines)
