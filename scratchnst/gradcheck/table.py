"""The table of checks (`python -m scratchnst gradcheck`): every op and loss term on small random
inputs, and the whole objective through random VGG-shaped nets (and the real VGG-16 when given).

Each op is checked through the scalar Σ op(x) · dout with a random dout, so its backward pass sees a
generic upstream gradient (for the Gram matrix a non-symmetric one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from scratchnst.core import ops
from scratchnst.core.backend import get_array_module, to_host
from scratchnst.core.losses import content_loss, masked_style_loss, style_loss, temporal_loss, tv_loss
from scratchnst.core.objective import NSTObjective
from scratchnst.core.ops.winograd import winograd_conv2d_backward, winograd_conv2d_forward
from scratchnst.gradcheck.inputs import away_from_zero, random_vgg, soft_mask, temporal_inputs, tie_free
from scratchnst.gradcheck.numeric import EPS, THRESHOLDS, numeric_gradient, rel_error


@dataclass
class CheckResult:
    op: str
    shapes: str
    max_rel_error: float
    threshold: float

    @property
    def passed(self) -> bool:
        return bool(self.max_rel_error <= self.threshold)


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


CONV_CASES = [  # (x shape, (F, KH, KW), stride, pad)
    ((2, 3, 7, 7), (4, 3, 3), 1, 1),
    ((1, 2, 8, 11), (3, 3, 3), 2, 1),
    ((2, 3, 6, 5), (2, 1, 1), 1, 0),
    ((1, 2, 9, 7), (3, 2, 2), 3, 2),
    ((1, 2, 5, 6), (2, 5, 5), 1, 2),
    ((1, 3, 7, 6), (2, 3, 2), 1, 0),
    ((1, 2, 4, 5), (2, 1, 1), 1, 1),
]
WINOGRAD_CASES = [  # (x shape, F, pad): 3×3 stride 1, sizes that are not multiples of the 4×4 tile
    ((2, 3, 7, 5), 4, 1),
    ((1, 2, 9, 6), 3, 0),
]
POOL_CASES = [  # (x shape, k, stride)
    ((2, 3, 8, 8), 2, 2),
    ((1, 2, 7, 9), 2, 2),
    ((1, 2, 9, 8), 3, 2),
    ((1, 1, 7, 7), 3, 3),
]


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
    for shape, F, pad in WINOGRAD_CASES:
        x = xp.asarray(rng.standard_normal(shape), dtype=dtype)
        w = xp.asarray(rng.standard_normal((F, shape[1], 3, 3)), dtype=dtype)
        b = xp.asarray(rng.standard_normal(F), dtype=dtype)
        r = check_op("winograd conv2d", lambda v: winograd_conv2d_forward(v, w, b, pad), winograd_conv2d_backward, x, rng, eps=eps, threshold=thr)
        r.shapes += f" k3x3 s1 p{pad}"
        results.append(r)
    x = away_from_zero(rng, (2, 3, 5, 4), xp, dtype)
    results.append(check_op("relu", ops.relu_forward, ops.relu_backward, x, rng, eps=eps, threshold=thr))
    for name, fwd, bwd in (("maxpool", ops.maxpool2d_forward, ops.maxpool2d_backward), ("avgpool", ops.avgpool2d_forward, ops.avgpool2d_backward)):
        for shape, k, stride in POOL_CASES:
            x = tie_free(rng, shape, xp, dtype)
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
    m = soft_mask(rng, f.shape, xp, dtype)
    results.append(check_loss("masked_style", lambda v: masked_style_loss(v, m, a / 15), f, eps=eps, threshold=thr))
    results.append(check_loss("tv", tv_loss, xp.asarray(rng.standard_normal((1, 3, 5, 6)), dtype=dtype), eps=eps, threshold=thr))
    target, mask = temporal_inputs(rng, (1, 3, 5, 6), xp, dtype)
    r = check_loss("temporal", lambda v: temporal_loss(v, target, mask), xp.asarray(rng.standard_normal((1, 3, 5, 6)), dtype=dtype), eps=eps, threshold=thr)
    r.shapes += f" mask{tuple(mask.shape)}"
    results.append(r)
    return results


def objective_check(net, rng, *, size=(32, 32), coords: int | None = None, eps: float, threshold: float, name: str,
                    regions: bool = False) -> CheckResult:
    """The full objective (content + style + TV) through `net` at a small size, at all or sampled pixels.

    regions: two styles on two complementary soft masks (left and right, overlapping in the middle)."""
    xp, dtype = net.xp, net.dtype
    h, w = size
    # Inputs on the preprocessed (mean-subtracted 0-255) scale the real network expects.
    content = xp.asarray(rng.uniform(-100, 100, (1, 3, h, w)), dtype=dtype)
    style = xp.asarray(rng.uniform(-100, 100, (1, 3, h + 8, w - 4)), dtype=dtype)
    styles, masks = [style], None
    if regions:
        styles.append(xp.asarray(rng.uniform(-100, 100, (1, 3, h, w)), dtype=dtype))
        left = np.clip(np.linspace(1.5, -0.5, w), 0, 1)[None, :].repeat(h, 0)
        masks = [left, 1 - left + 0.25 * (left > 0)]
    obj = NSTObjective(net, content, styles, content_weight=1.0, style_weight=1e2, tv_weight=1e-2, style_masks=masks)
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
    results.append(objective_check(net, rng, eps=1e-4 if dtype == "float64" else 1.0, coords=24, threshold=thr,
                                   name="objective (random VGG, 2 regions)", regions=True))
    if real_net is not None:
        results.append(objective_check(real_net, rng, eps=1e-4, coords=16, threshold=thr, name="objective (VGG-16)"))
    return results
