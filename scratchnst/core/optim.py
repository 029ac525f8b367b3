"""Optimisers on xp arrays: L-BFGS with a strong-Wolfe line search, and Adam.

Both minimise `fun(x) -> (loss, grad)` where `x` is any float array (NumPy or CuPy, e.g. a
(1, 3, H, W) image) and `grad` has x's shape. `fun` may return a third item (NSTObjective.evaluate
returns the loss terms): the optimiser keeps the one of the point it accepted as `info`. Internally everything is a flat view in x's dtype;
scalars (losses, dot products, step lengths) are Python floats, so nothing big is upcast.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from scratchnst.core.backend import get_array_module, to_host
from scratchnst.core.checks import check_choice

Objective = Callable[..., tuple]

# Strong-Wolfe constants (Nocedal & Wright's usual choice for quasi-Newton methods).
C1, C2 = 1e-4, 0.9
# The defaults, here only: step scales per optimiser (Adam's in 0..255 pixel units) and L-BFGS's memory.
DEFAULT_LEARNING_RATE = {"lbfgs": 1.0, "adam": 8.0}
LBFGS_HISTORY = 20


def _dot(a, b) -> float:
    return float(a.dot(b))


def _amax(a) -> float:
    return float(abs(a).max()) if a.size else 0.0


class _Optimizer:
    """Shared plumbing: the first evaluation, finiteness checks, counters and state dicts."""

    name = ""
    _arrays: tuple[str, ...] = ()  # extra flat arrays kept in the state dict

    def _start(self, x0, fun: Objective) -> None:
        self.xp = get_array_module(x0)
        if x0.dtype.kind != "f":
            raise ValueError(f"{self.name}: x0 must be a float array, got {x0.dtype}")
        self.fun = fun
        self.shape = tuple(x0.shape)
        self._x = x0.reshape(-1).copy()
        self.evaluations = self.iteration = 0
        self.converged = self.nonfinite = False
        self.loss, self._g, ok, self.info = self._evaluate(self._x)
        if not ok:  # nothing finite to start from: flag it and refuse to move
            self.nonfinite = self.converged = True

    def _evaluate(self, x_flat) -> tuple[float, object, bool, object]:
        """Loss, flat gradient (a private copy in x's dtype), whether both are finite, and fun's info."""
        loss, grad, *info = self.fun(x_flat.reshape(self.shape))
        self.evaluations += 1
        loss = float(loss)
        g = self.xp.asarray(grad).astype(x_flat.dtype).reshape(-1)
        ok = math.isfinite(loss) and bool(self.xp.isfinite(g).all())
        return loss, g, ok, (info[0] if info else None)

    @property
    def x(self):
        """Current iterate, shaped like x0."""
        return self._x.reshape(self.shape)

    @property
    def grad(self):
        """Gradient at `x`, shaped like x0."""
        return self._g.reshape(self.shape)

    def state_dict(self) -> dict:
        """Host copy of everything needed to continue: NumPy arrays plus JSON-able scalars."""
        state = {
            "optimizer": self.name,
            "options": dict(self.options),
            "x": to_host(self.x),
            "grad": to_host(self.grad),
            "loss": self.loss,
            "evaluations": self.evaluations,
            "iteration": self.iteration,
            "converged": self.converged,
            "nonfinite": self.nonfinite,
            "info": self.info,
        }
        for key in self._arrays:
            state[key] = to_host(getattr(self, "_" + key))
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()` onto this optimiser's array module (host or device)."""
        if state["optimizer"] != self.name:
            raise ValueError(f"state is for {state['optimizer']!r}, not {self.name!r}")
        xp = self.xp
        self.options = dict(state["options"])
        self.shape = tuple(state["x"].shape)
        # Fresh contiguous copies, so the restored run computes exactly as the saved one did.
        self._x = xp.array(state["x"]).reshape(-1)
        self._g = xp.array(state["grad"]).reshape(-1)
        self.loss = float(state["loss"])
        self.evaluations = int(state["evaluations"])
        self.iteration = int(state["iteration"])
        self.converged = bool(state["converged"])
        self.nonfinite = bool(state["nonfinite"])
        self.info = state.get("info")
        for key in self._arrays:
            setattr(self, "_" + key, xp.array(state[key]))

    def finish(self) -> None:
        """This optimiser steps no more (its scale is done; the next one starts from x): let go of
        what only a next step needs. x, the gradient, loss, counters and state_dict stay."""

    @classmethod
    def from_state(cls, state: dict, fun: Objective, xp=np):
        """Rebuild an optimiser from `state_dict()` output without evaluating `fun` again."""
        self = cls.__new__(cls)
        self.xp, self.fun = xp, fun
        self.load_state_dict(state)
        return self


class LBFGS(_Optimizer):
    """Limited-memory BFGS: two-loop recursion plus a strong-Wolfe line search.

    The line search is Nocedal & Wright, Numerical Optimization (2nd ed.), Algorithm 3.5
    (bracketing) and 3.6 (zoom) with c1 = 1e-4, c2 = 0.9; trial steps come from the cubic that
    matches phi and phi' at two points (N&W eq. 3.59), safeguarded to stay 10% inside the
    bracket. A non-finite loss or gradient counts as "step too long": the next trial lies a fifth of
    the way from the last good point towards it. The first trial is 1 * lr once curvature pairs exist.
    x0: float array of any shape; fun(x) -> (loss, grad shaped like x).
    """

    name = "lbfgs"

    def __init__(
        self,
        x0,
        fun: Objective,
        *,
        history: int = LBFGS_HISTORY,
        max_line_search: int = 20,
        learning_rate: float = DEFAULT_LEARNING_RATE["lbfgs"],
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-12,
    ) -> None:
        if history < 1 or max_line_search < 1 or not learning_rate > 0:
            raise ValueError("lbfgs: history and max_line_search must be >= 1, learning_rate > 0")
        self.options = {
            "history": int(history),
            "max_line_search": int(max_line_search),
            "learning_rate": float(learning_rate),
            "tolerance_grad": float(tolerance_grad),
            "tolerance_change": float(tolerance_change),
        }
        self._s, self._y, self._rho = [], [], []
        self.step_length = 0.0
        self._start(x0, fun)
        if not self.converged and _amax(self._g) <= tolerance_grad:
            self.converged = True

    # -- one iteration ------------------------------------------------------------------------

    def step(self) -> float:
        """One L-BFGS iteration (one line search, several evaluations); returns the loss."""
        if self.converged:
            return self.loss
        opts = self.options
        g = self._g
        found = None
        if self._s:
            d = self._direction(g)
            gtd = _dot(g, d)
            if gtd < 0:  # otherwise rounding broke descent
                found = self._line_search(d, gtd, opts["learning_rate"])
        # No usable quasi-Newton step: forget the curvature pairs and retry along steepest descent.
        reset = bool(self._s) and found is None
        if found is None:
            d, gtd = -g, -_dot(g, g)
            found = self._line_search(d, gtd, self._first_step(g))
        # No evaluations after this point. The state changes of the iteration are applied together,
        # so an interrupt (Ctrl-C) inside the line searches above leaves the optimiser exactly as it
        # was before step(): a checkpoint taken then resumes to the same iterates.
        if reset:
            self._reset()
        self.iteration += 1
        if found is None:
            self.converged = True
            return self.loss
        t, f_new, x_new, g_new, self.info = found
        s, y = x_new - self._x, g_new - g
        self._remember(s, y)
        f_old = self.loss
        self._x, self.loss, self._g, self.step_length = x_new, f_new, g_new, t
        if (
            _amax(g_new) <= opts["tolerance_grad"]
            or _amax(s) <= opts["tolerance_change"]
            or abs(f_new - f_old) < opts["tolerance_change"]
        ):
            self.converged = True
        return self.loss

    def _first_step(self, g) -> float:
        """Trial step with no curvature pairs yet, times lr.

        For a positive loss, t = f / |g|^2: where the linear model f - t |g|^2 reaches zero
        (a Polyak step with f* = 0). It is invariant to scaling the loss or x, and for
        f = a/2 (x - x*)^2 it is half the Newton step, so on image losses (f ~ 1e5..1e12,
        |g| ~ 1e5..1e9) the first trial lands near the right scale instead of ~1/|g|_1,
        which costs one 10x extrapolation per decade. Otherwise min(1, 1/|g|_1) (minFunc, torch).
        """
        lr = self.options["learning_rate"]
        gg = _dot(g, g)
        if self.loss > 0 and gg > 0 and math.isfinite(self.loss / gg):
            return self.loss / gg * lr
        return min(1.0, 1.0 / float(abs(g).sum())) * lr

    def _direction(self, g):
        """-H g by the two-loop recursion (N&W Alg. 7.4), H0 = gamma I, gamma = s'y / y'y."""
        q = -g
        alpha = []
        for s, y, rho in zip(reversed(self._s), reversed(self._y), reversed(self._rho)):
            a = rho * _dot(s, q)
            q -= a * y
            alpha.append(a)
        y_last = self._y[-1]
        q *= 1.0 / (self._rho[-1] * _dot(y_last, y_last))  # gamma = s'y / y'y = 1 / (rho y'y)
        for s, y, rho, a in zip(self._s, self._y, self._rho, reversed(alpha)):
            b = rho * _dot(y, q)
            q += (a - b) * s
        return q

    def _remember(self, s, y) -> None:
        """Keep (s, y) only when s'y is clearly positive, so H stays positive definite."""
        ys = _dot(y, s)
        # Relative test: s'y > 1e-10 |s| |y| is invariant to scaling x or the loss.
        if not ys > 1e-10 * math.sqrt(_dot(s, s) * _dot(y, y)):
            return
        self._s.append(s)
        self._y.append(y)
        self._rho.append(1.0 / ys)
        if len(self._s) > self.options["history"]:
            del self._s[0], self._y[0], self._rho[0]

    def _reset(self) -> None:
        self._s, self._y, self._rho = [], [], []

    def finish(self) -> None:
        """The curvature pairs go (2 · history image-sized vectors): a finished optimiser keeps x,
        its gradient and counters, and its state_dict an empty history (resumed, it steps no more)."""
        self._reset()

    # -- line search --------------------------------------------------------------------------

    def _line_search(self, d, gtd0: float, t: float):
        """Strong-Wolfe search along d from x (strong_wolfe), starting with step t; (t, loss, x_new,
        g_new, info) or None on failure."""
        x = self._x

        def probe(t: float) -> Trial:
            x_t = x + t * d
            f, g, ok, info = self._evaluate(x_t)
            return Trial(t, f, _dot(g, d) if ok else math.nan, x_t, g, ok, info)

        start = Trial(0.0, self.loss, gtd0, x, self._g, True, self.info)
        tiny = self.options["tolerance_change"] / max(_amax(d), 1e-300)
        return strong_wolfe(probe, start, t, budget=self.options["max_line_search"], tiny=tiny)

    # -- state --------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Host copy of x, loss, grad, the (s, y, rho) pairs as (m, n) arrays, counters."""
        state = super().state_dict()
        state["s"], state["y"] = self._stack(self._s), self._stack(self._y)
        state["rho"], state["step_length"] = list(self._rho), self.step_length
        return state

    def _stack(self, pairs: list) -> np.ndarray:
        """(m, n) host array of m flat history vectors (m may be 0)."""
        if not pairs:
            return np.zeros((0, self._x.size), self._x.dtype)
        return np.stack([to_host(a) for a in pairs])

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        xp = self.xp
        self._s = [xp.array(row) for row in state["s"]]
        self._y = [xp.array(row) for row in state["y"]]
        self._rho = [float(r) for r in state["rho"]]
        self.step_length = float(state["step_length"])


class Trial:
    """One line-search point: step t, phi(t), phi'(t), the x and gradient there, and fun's info."""

    __slots__ = ("t", "f", "gtd", "x", "g", "ok", "info")

    def __init__(self, t: float, f: float, gtd: float, x, g, ok: bool, info=None) -> None:
        self.t, self.f, self.gtd, self.x, self.g, self.ok, self.info = t, f, gtd, x, g, ok, info

    def found(self) -> tuple:
        return self.t, self.f, self.x, self.g, self.info


def strong_wolfe(probe: Callable[[float], Trial], start: Trial, t: float, *, budget: int, tiny: float):
    """A step along a descent direction meeting the strong Wolfe conditions; (t, loss, x, g, info)
    of it, or None.

    phi(t) = f(x + t d); probe(t) evaluates it, start is t = 0 (phi'(0) < 0). Accept t with
    phi(t) <= phi(0) + c1 t phi'(0) (sufficient decrease) and |phi'(t)| <= c2 |phi'(0)| (curvature).
    At most `budget` probes; the bracket is not shrunk below `tiny`. When the budget runs out the
    lowest point meeting sufficient decrease is returned instead; None means no such point was seen.
    """
    f0, gtd0 = start.f, start.gtd
    best: list[Trial] = []

    def trial(t: float) -> Trial:
        cur = probe(t)
        if cur.ok and cur.f <= f0 + C1 * t * gtd0 and (not best or cur.f < best[0].f):
            best[:] = [cur]
        return cur

    # Algorithm 3.5: grow t until the minimiser along d is bracketed by (lo, hi).
    prev = start
    while True:
        if budget == 0:
            return best[0].found() if best else None
        cur = trial(t)
        budget -= 1
        if not cur.ok or cur.f > f0 + C1 * t * gtd0 or (prev.t > 0 and cur.f >= prev.f):
            lo, hi = prev, cur
            break
        if abs(cur.gtd) <= -C2 * gtd0:
            return cur.found()
        if cur.gtd >= 0:
            lo, hi = cur, prev
            break
        t = _extrapolate(prev, cur)
        prev = cur

    # Algorithm 3.6: shrink the bracket; lo always has the lowest sufficient-decrease loss.
    while budget > 0 and abs(hi.t - lo.t) > tiny:
        cur = trial(_interpolate(lo, hi))
        budget -= 1
        if not cur.ok or cur.f > f0 + C1 * cur.t * gtd0 or cur.f >= lo.f:
            hi = cur
        else:
            if abs(cur.gtd) <= -C2 * gtd0:
                return cur.found()
            if cur.gtd * (hi.t - lo.t) >= 0:
                hi = lo
            lo = cur
    return best[0].found() if best else None


def _cubic_min(p: Trial, q: Trial) -> float:
    """Minimiser of the cubic through (t, phi, phi') at p and q (N&W eq. 3.59); nan if none."""
    d1 = p.gtd + q.gtd - 3.0 * (p.f - q.f) / (p.t - q.t)
    disc = d1 * d1 - p.gtd * q.gtd
    if not disc >= 0:  # complex roots: the cubic has no local minimum
        return math.nan
    d2 = math.copysign(math.sqrt(disc), q.t - p.t)
    denom = q.gtd - p.gtd + 2.0 * d2
    if denom == 0:
        return math.nan
    return q.t - (q.t - p.t) * (q.gtd + d2 - d1) / denom


def _extrapolate(prev: Trial, cur: Trial) -> float:
    """Next bracketing trial beyond cur.t: the cubic's minimiser, kept within [1.1, 10] x cur.t."""
    lo, hi = 1.1 * cur.t, 10.0 * cur.t
    t = _cubic_min(prev, cur)
    return hi if not math.isfinite(t) else min(max(t, lo), hi)


def _interpolate(lo: Trial, hi: Trial) -> float:
    """Zoom trial inside the bracket: cubic minimiser kept 10% away from either end.

    With a non-finite end there is no cubic; take a step a fifth of the way from lo.
    """
    a, b = min(lo.t, hi.t), max(lo.t, hi.t)
    width = b - a
    t = _cubic_min(lo, hi) if hi.ok else lo.t + 0.2 * (hi.t - lo.t)
    if not math.isfinite(t):
        return 0.5 * (a + b)
    return min(max(t, a + 0.1 * width), b - 0.1 * width)


class Adam(_Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction; one evaluation per step.

    A non-finite loss or gradient at the new point rejects it: x, loss, grad and the moments
    stay at the previous step and both `nonfinite` and `converged` are set (retrying would
    produce the same point).
    """

    name = "adam"
    _arrays = ("m", "v")

    def __init__(
        self,
        x0,
        fun: Objective,
        *,
        learning_rate: float = DEFAULT_LEARNING_RATE["adam"],
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
    ) -> None:
        self.options = {
            "learning_rate": float(learning_rate),
            "beta1": float(beta1),
            "beta2": float(beta2),
            "eps": float(eps),
        }
        self._start(x0, fun)
        self._m = self.xp.zeros_like(self._x)
        self._v = self.xp.zeros_like(self._x)

    def step(self) -> float:
        """x <- x - lr m_hat / (sqrt(v_hat) + eps); evaluates the new x; returns its loss."""
        if self.converged:
            return self.loss
        o, g, xp = self.options, self._g, self.xp
        k = self.iteration + 1
        m = o["beta1"] * self._m + (1.0 - o["beta1"]) * g
        v = o["beta2"] * self._v + (1.0 - o["beta2"]) * (g * g)
        # Bias correction: the moments start at 0, so after k steps they are scaled by
        # (1 - beta^k); dividing it out gives unbiased m_hat, v_hat.
        v_hat = v * (1.0 / (1.0 - o["beta2"] ** k))
        x_new = self._x - (o["learning_rate"] / (1.0 - o["beta1"] ** k)) * m / (xp.sqrt(v_hat) + o["eps"])
        f, g_new, ok, info = self._evaluate(x_new)
        if not ok:
            self.nonfinite = self.converged = True
            return self.loss
        self._x, self.loss, self._g, self._m, self._v, self.info = x_new, f, g_new, m, v, info
        self.iteration = k
        return self.loss


OPTIMIZERS = {"lbfgs": LBFGS, "adam": Adam}


def make_optimizer(name: str, x0, fun: Objective, **options) -> LBFGS | Adam:
    """Build the optimiser called `name` ("lbfgs" or "adam") at x0; options go to its constructor.
    An unknown name raises ValueError."""
    return OPTIMIZERS[check_choice("optimizer", name, OPTIMIZERS)](x0, fun, **options)
