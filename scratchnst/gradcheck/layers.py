"""The layer-by-layer check (`python -m scratchnst gradcheck --vgg`): the objective's gradient at the
input of every VGG stage against finite differences, and each stage's own backward alone, so a broken
layer is named rather than only detected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scratchnst.core.backend import to_host
from scratchnst.core.objective import NSTObjective
from scratchnst.core.vgg import layers_through
from scratchnst.gradcheck.numeric import THRESHOLDS, TINY, five_point_gradient, numeric_gradient, numeric_jvp, perturbed


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


def kink_side(kind: str, pooling: str, z):
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
    for t in obj.feature_terms({layer: f}):
        value = value + t.weight * t.value
        grad = t.weight * t.grad if grad is None else grad + t.weight * t.grad
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
    y0 = forward(z)
    active, idle = [], []
    for i in order[: 40 * count].tolist():
        y_plus, y_minus = perturbed(forward, z, i, (eps, -eps))
        up, down = y_plus - y0, y0 - y_minus
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
    if str(net.dtype) != "float64":
        raise ValueError(f"the layer-by-layer check needs a float64 net (got {net.dtype})")
    walk = _Walk(net, rng, size, coords, rel_eps, threshold)
    results = []
    out_grad = None  # dL/d(output of layer k), built as the walk goes down
    for k in range(len(walk.layers) - 1, -1, -1):
        row, loss_grad = walk.check_losses(k)
        if row is not None:
            results.append(row)
            out_grad = loss_grad if out_grad is None else out_grad + loss_grad
        row, out_grad, picked = walk.check_stage(k, out_grad)
        results.append(row)
    results.append(walk.check_objective(picked))
    return results


class _Walk:
    """The state of one layer-by-layer check: the net, a random objective on it, one forward pass."""

    def __init__(self, net, rng, size, coords: int, rel_eps: float, threshold: float):
        xp = net.xp
        h, w = size
        content = xp.asarray(rng.uniform(-100, 100, (1, 3, h, w)), dtype="float64")
        style = xp.asarray(rng.uniform(-100, 100, (1, 3, h, w)), dtype="float64")
        self.obj = NSTObjective(net, content, [style], content_weight=1.0, style_weight=1e2, tv_weight=1e-2)
        self.x = xp.asarray(rng.uniform(-100, 100, (1, 3, h, w)), dtype="float64")
        self.net, self.rng, self.coords, self.rel_eps, self.threshold = net, rng, coords, rel_eps, threshold
        self.layers = layers_through(self.obj.layers)
        self.feats, self.caches = net.forward(self.x, [layer.name for layer in self.layers])
        if [c.name for c in self.caches] != [layer.name for layer in self.layers]:
            raise RuntimeError("net.forward no longer returns one cache per layer; the layer-by-layer check needs that")
        self.inputs = [self.x] + [self.feats[layer.name] for layer in self.layers[:-1]]

    def stage(self, k: int, z):
        """Layer k alone, forward, as net.forward runs it."""
        return self.net.layer_forward(self.layers[k], z)[0]

    def tail(self, k: int, z, pattern: list | None = None):
        """L as a function of z = the input of layer k (losses at layers k.. only; no TV).

        With `pattern`, appends which side of every kink the forward took: the sign of each ReLU
        input and the winner of each max-pool window. Equal patterns at z ± ε mean the tail is smooth
        in between, so the central difference is a derivative.
        """
        total = 0.0
        for j in range(k, len(self.layers)):
            if pattern is not None:
                pattern.append(kink_side(self.layers[j].kind, self.net.pooling, z))
            z = self.stage(j, z)
            total = total + _losses_at(self.obj, self.layers[j].name, z)[0]
        return total

    def tail_and_kinks(self, k: int, z) -> tuple[float, list]:
        """(tail(k) at z, which side of every kink the forward took)."""
        pattern = []
        return float(self.tail(k, z, pattern)), pattern

    def tail_differences(self, k: int, z, candidates, eps: float):
        """(coords, central differences of tail(k)) at the first `coords` candidates with no kink."""
        picked, values = [], []
        for i in candidates:
            (f_plus, up), (f_minus, down) = perturbed(lambda v: self.tail_and_kinks(k, v), z, i, (eps, -eps))
            if all(a is None or bool((a == b).all()) for a, b in zip(up, down)):
                picked.append(i)
                values.append((f_plus - f_minus) / (2 * eps))
            if len(picked) == self.coords:
                break
        return picked, np.asarray(values)

    def eps_for(self, z) -> float:
        return self.rel_eps * max(float(np.sqrt(float((z * z).mean()))), 1e-3)

    def check_losses(self, k: int):
        """(the row checking the loss terms at layer k's output, their gradient); (None, None) if none."""
        name = self.layers[k].name
        _, loss_grad = _losses_at(self.obj, name, self.feats[name])
        if loss_grad is None:
            return None, None
        f = self.feats[name].copy()
        picked = sorted(self.rng.choice(f.size, size=min(self.coords, f.size), replace=False).tolist())
        numeric = five_point_gradient(lambda v: _losses_at(self.obj, name, v)[0], f, eps=100 * self.eps_for(f), coords=picked)
        return StageResult(f"losses@{name}", tuple(f.shape), None, _sampled_error(loss_grad, picked, numeric), self.threshold, len(picked)), loss_grad

    def check_stage(self, k: int, out_grad):
        """(the row of layer k, dL/d(its input), the kink-free coordinates of its input)."""
        layer = self.layers[k]
        in_grad = self.net.backward({layer.name: out_grad}, [self.caches[k]])
        z = self.inputs[k].copy()
        eps = self.eps_for(z)
        forward = lambda v: self.stage(k, v)  # noqa: E731
        picked = _kink_free_coords(forward, z, self.rng, self.coords, eps, linear=layer.kind == "conv")
        local = _sampled_error(in_grad, picked, numeric_jvp(forward, z, out_grad, eps=eps, coords=picked))
        # End to end, a kink may also sit downstream: keep the first `coords` candidates free of any.
        candidates = picked + [i for i in self.rng.permutation(z.size)[: 20 * self.coords].tolist() if i not in picked]
        picked, numeric = self.tail_differences(k, z, candidates, eps)
        e2e = _sampled_error(in_grad, picked, numeric) if picked else None
        return StageResult(layer.name, tuple(z.shape), e2e, local, self.threshold, len(picked)), in_grad, picked

    def check_objective(self, picked) -> StageResult:
        """The production path, NSTObjective.loss_and_grad (TV included), at the input pixels the
        walk found kink-free."""
        _, grad = self.obj.loss_and_grad(self.x.copy())
        numeric = numeric_gradient(lambda v: self.obj.loss_and_grad(v)[0], self.x.copy(), eps=self.eps_for(self.x), coords=picked)
        return StageResult("objective (with TV)", tuple(self.x.shape), _sampled_error(grad, picked, numeric), None, self.threshold, len(picked))


def _sampled_error(analytic, picked, numeric) -> float:
    """max over the sampled coordinates of |a − n|, over the largest |a| of the WHOLE stage gradient.

    That is rel_error's normwise error estimated from a sample: dividing by the sampled entries
    alone would blow rounding up wherever the sample happens to hold only tiny gradients.
    """
    a = to_host(analytic).reshape(-1)
    if not len(picked):
        return 0.0
    diff = np.max(np.abs(a[np.asarray(picked, dtype=int)] - numeric))
    return float(diff / max(np.max(np.abs(a)), np.max(np.abs(numeric)), TINY))


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
