"""The layer-by-layer check (`python -m scratchnst gradcheck --vgg`): the objective's gradient at the
input of every VGG stage against finite differences, and each stage's own backward alone, so a broken
layer is named rather than only detected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from scratchnst import ops
from scratchnst.backend import to_host
from scratchnst.gradcheck import THRESHOLDS, TINY, numeric_gradient
from scratchnst.losses import content_loss, style_loss
from scratchnst.objective import NSTObjective


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
