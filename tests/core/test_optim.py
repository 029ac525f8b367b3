"""Tests for scratchnst.core.optim: convergence, strong Wolfe, save/resume, non-finite handling."""

import io
import json

import numpy as np
import pytest

from scratchnst.core.backend import get_array_module
from scratchnst.core.optim import C1, C2, LBFGS, Adam, Trial, make_optimizer, strong_wolfe


def rosenbrock(x):
    """Extended Rosenbrock: sum over pairs of 100 (b - a^2)^2 + (1 - a)^2; minimum 0 at ones.

    x on NumPy or CuPy; the gradient stays on x's array module."""
    xp = get_array_module(x)
    a, b = x.reshape(-1)[0::2], x.reshape(-1)[1::2]
    r, q = b - a * a, 1 - a
    g = xp.empty_like(x.reshape(-1))
    g[0::2] = -400 * a * r - 2 * q
    g[1::2] = 200 * r
    return float(xp.sum(100 * r * r + q * q)), g.reshape(x.shape)


def rosen_start(n, dtype=np.float64):
    return np.tile(np.array([-1.2, 1.0], dtype), n // 2)


def make_quadratic(rng, n, cond):
    """f = 1/2 (x - x*)'A(x - x*) with A = Q diag(lam) Q' of condition `cond`; returns fun, x*."""
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    a = (q * np.logspace(0, np.log10(cond), n)) @ q.T
    x_star = rng.normal(size=n)

    def fun(x):
        ar = a @ (x - x_star)
        return float(0.5 * (x - x_star) @ ar), ar

    return fun, x_star


def run(opt, max_evaluations):
    while not opt.converged and opt.evaluations < max_evaluations:
        opt.step()
    return opt


@pytest.mark.parametrize("n, max_evals", [(2, 120), (100, 200)])
def test_lbfgs_minimises_rosenbrock(n, max_evals):
    opt = run(LBFGS(rosen_start(n), rosenbrock), max_evals)
    assert opt.evaluations <= max_evals + 20  # one line search may overrun the check
    assert opt.loss < 1e-10, (opt.loss, opt.evaluations)
    np.testing.assert_allclose(opt.x, 1.0, atol=1e-5)


@pytest.mark.parametrize("history, max_evals", [(10, 600), (100, 250)])
def test_lbfgs_reaches_quadratic_minimiser(rng, history, max_evals):
    fun, x_star = make_quadratic(rng, 60, 1e3)
    opt = LBFGS(np.zeros(60), fun, history=history, tolerance_grad=1e-10, tolerance_change=0.0)
    run(opt, max_evals)
    assert opt.converged and np.abs(opt.grad).max() <= 1e-10
    np.testing.assert_allclose(opt.x, x_star, rtol=0, atol=1e-8 * np.abs(x_star).max())
    assert opt.evaluations < max_evals


@pytest.mark.parametrize("learning_rate", [1.0, 1e-3, 30.0])
def test_line_search_accepts_only_strong_wolfe_steps(rng, learning_rate):
    fun, _ = make_quadratic(rng, 30, 1e2)
    opt = LBFGS(rng.normal(size=30), fun, learning_rate=learning_rate, tolerance_change=0.0)
    for _ in range(12):
        x0, f0, g0 = opt.x.copy(), opt.loss, opt.grad.copy()
        opt.step()
        s = opt.x - x0  # s = t d, so the conditions read in s without knowing t
        assert opt.loss <= f0 + 1e-4 * (g0 @ s)  # sufficient decrease, c1 = 1e-4
        assert abs(opt.grad @ s) <= 0.9 * abs(g0 @ s)  # strong curvature, c2 = 0.9
        assert opt.loss < f0
    if learning_rate != 1.0:  # a badly scaled trial step must have made the search work
        assert opt.evaluations > opt.iteration + 1


def _probe_of(phi, dphi, calls):
    """probe(t) of a 1-D phi with derivative dphi (x is t, g is phi'), counting its calls."""
    def probe(t):
        calls.append(t)
        f, g = phi(t), dphi(t)
        ok = np.isfinite(f) and np.isfinite(g)
        return Trial(t, f, g, t, g, ok)
    return probe


@pytest.mark.parametrize("t0", [1e-3, 1.0, 50.0])
def test_strong_wolfe_returns_a_step_meeting_both_conditions(t0):
    phi, dphi = (lambda t: (t - 3.0) ** 4 - 5 * t), (lambda t: 4 * (t - 3.0) ** 3 - 5)
    calls = []
    start = Trial(0.0, phi(0.0), dphi(0.0), 0.0, dphi(0.0), True)
    t, f, x, g, _ = strong_wolfe(_probe_of(phi, dphi, calls), start, t0, budget=20, tiny=1e-12)
    assert f == phi(t) and f <= start.f + C1 * t * start.gtd  # sufficient decrease
    assert abs(g) <= C2 * abs(start.gtd)  # strong curvature
    assert calls[0] == t0 and len(calls) <= 20


def test_strong_wolfe_keeps_to_its_budget_and_says_none_without_a_decrease():
    calls = []
    rising = _probe_of(lambda t: 1.0 + t, lambda t: 1.0, calls)  # phi'(0) claimed < 0, phi only rises
    start = Trial(0.0, 1.0, -1.0, 0.0, -1.0, True)
    assert strong_wolfe(rising, start, 1.0, budget=4, tiny=0.0) is None and len(calls) == 4
    assert strong_wolfe(rising, start, 1.0, budget=0, tiny=0.0) is None and len(calls) == 4


def test_line_search_failure_marks_converged():
    # The "gradient" points uphill, so no step along -grad can decrease the loss.
    fun = lambda x: (float(x @ x), -2 * x)
    x0 = np.array([1.0, -2.0])
    opt = LBFGS(x0, fun, max_line_search=5)
    opt.step()
    assert opt.converged and opt.loss == 5.0
    np.testing.assert_array_equal(opt.x, x0)
    evaluations = opt.evaluations
    opt.step()
    assert opt.evaluations == evaluations


def test_adam_converges_on_quadratic(rng):
    c = rng.normal(size=20)
    scale = np.linspace(1.0, 10.0, 20)
    fun = lambda x: (float(np.sum(scale * (x - c) ** 2)), 2 * scale * (x - c))
    opt = Adam(np.zeros(20), fun, learning_rate=0.05)
    first = opt.loss
    losses = [opt.step() for _ in range(600)]
    assert losses[50] < 0.5 * first
    assert opt.loss < 1e-6 * first
    assert opt.evaluations == 601 and opt.iteration == 600
    np.testing.assert_allclose(opt.x, c, atol=1e-2)


def roundtrip(state):
    """Through the formats a checkpoint uses: NumPy arrays via savez, the rest via JSON."""
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    with np.load(buf) as saved:
        restored = {k: saved[k] for k in saved.files}
    restored.update(json.loads(json.dumps({k: v for k, v in state.items() if k not in arrays})))
    return restored


@pytest.mark.parametrize("name, options", [("lbfgs", {"history": 5}), ("adam", {"learning_rate": 0.05})])
@pytest.mark.parametrize("rebuild", ["constructor", "from_state"])
def test_save_and_resume_is_bit_identical(name, options, rebuild):
    x0 = rosen_start(20, np.float32)
    straight = make_optimizer(name, x0, rosenbrock, **options)
    for _ in range(10):
        straight.step()

    first = make_optimizer(name, x0, rosenbrock, **options)
    for _ in range(4):
        first.step()
    state = roundtrip(first.state_dict())
    if rebuild == "constructor":
        resumed = make_optimizer(name, state["x"], rosenbrock, **options)
        resumed.load_state_dict(state)
    else:
        resumed = type(first).from_state(state, rosenbrock)
    for _ in range(6):
        resumed.step()

    assert not straight.converged
    assert resumed.x.dtype == np.float32 and resumed.x.shape == x0.shape
    assert resumed.x.tobytes() == straight.x.tobytes()
    assert resumed.grad.tobytes() == straight.grad.tobytes()
    assert resumed.loss == straight.loss
    assert (resumed.evaluations, resumed.iteration) == (straight.evaluations, straight.iteration)


def test_lbfgs_never_accepts_a_nonfinite_point():
    # Minimum of |x - 3|^2 lies inside the region x > 2 where the loss is NaN.
    def fun(x):
        if np.any(x > 2.0):
            return float("nan"), np.full_like(x, np.nan)
        return float(np.sum((x - 3.0) ** 2)), 2 * (x - 3.0)

    opt = LBFGS(np.zeros(4), fun, learning_rate=10.0)
    start = opt.loss
    for _ in range(30):
        opt.step()
    assert np.isfinite(opt.x).all() and np.isfinite(opt.grad).all() and np.isfinite(opt.loss)
    assert np.all(opt.x <= 2.0) and opt.loss < 4.0 + 1e-6 < 0.2 * start  # 4 = loss at x = 2
    assert not opt.nonfinite


def test_nan_gradient_with_finite_loss_is_rejected():
    fun = lambda x: (float(x @ x), 2 * x if np.all(np.abs(x) < 1.5) else np.full_like(x, np.inf))
    opt = LBFGS(np.ones(3), fun, learning_rate=5.0)
    opt.step()
    assert np.isfinite(opt.grad).all() and np.all(np.abs(opt.x) < 1.5) and opt.loss < 3.0


@pytest.mark.parametrize("name", ["lbfgs", "adam"])
def test_nonfinite_start_sets_flag_and_stops(name):
    fun = lambda x: (float("nan"), np.zeros_like(x))
    opt = make_optimizer(name, np.ones(3, np.float32), fun)
    assert opt.nonfinite and opt.converged and opt.evaluations == 1
    opt.step()
    assert opt.evaluations == 1
    np.testing.assert_array_equal(opt.x, 1.0)


def test_adam_keeps_last_finite_iterate():
    fun = lambda x: (float(x @ x), 2 * x) if np.all(x > -0.2) else (float("inf"), 2 * x)
    opt = Adam(np.array([0.5, 0.5]), fun, learning_rate=0.2)
    for _ in range(20):
        previous = opt.x.copy()
        opt.step()
    assert opt.nonfinite and 0 < opt.iteration < 10  # moves ~lr per step, so it gets there
    np.testing.assert_array_equal(opt.x, previous)
    assert np.isfinite(opt.loss) and np.all(opt.x > -0.2)


@pytest.mark.parametrize("name", ["lbfgs", "adam"])
def test_float32_stays_float32(name, rng):
    seen = set()

    def fun(x):
        seen.add(x.dtype)
        loss, g = rosenbrock(x.astype(np.float64))  # a float64 gradient is cast back
        return loss, g

    x0 = rng.normal(size=(1, 3, 4, 4)).astype(np.float32)
    opt = make_optimizer(name, x0, fun)
    for _ in range(5):
        opt.step()
    assert seen == {np.dtype(np.float32)}
    assert opt.x.dtype == opt.grad.dtype == np.float32 and opt.x.shape == x0.shape
    state = opt.state_dict()
    arrays = [k for k, v in state.items() if isinstance(v, np.ndarray)]
    assert {"x", "grad"} <= set(arrays) and all(state[k].dtype == np.float32 for k in arrays), arrays


def test_deterministic(rng):
    fun, _ = make_quadratic(rng, 40, 1e3)
    x0 = rng.normal(size=40)
    a, b = run(LBFGS(x0, fun), 30), run(LBFGS(x0, fun), 30)
    assert a.x.tobytes() == b.x.tobytes() and a.evaluations == b.evaluations


def test_make_optimizer_rejects_unknown_name():
    with pytest.raises(ValueError, match=r"^unknown optimizer 'sgd' \(choose from lbfgs, adam\)$"):
        make_optimizer("sgd", np.zeros(2), lambda x: (0.0, x))


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["lbfgs", "adam"])
def test_cupy_matches_numpy(name):
    cupy = pytest.importorskip("cupy")
    from scratchnst.core.backend import BackendUnavailable, get_backend

    try:
        get_backend("cupy")
    except BackendUnavailable:
        pytest.skip("no CUDA device")

    x0 = rosen_start(20)
    host = make_optimizer(name, x0, rosenbrock)
    device = make_optimizer(name, cupy.asarray(x0), rosenbrock)
    for _ in range(15):
        host.step()
        device.step()
    assert isinstance(device.x, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(device.x), host.x, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["lbfgs", "adam"])
def test_a_finished_optimiser_keeps_its_point_and_lets_go_of_its_pairs(name):
    """finish(): what a next scale needs of a done one (x, gradient, loss, counters) stays, and so does
    its state_dict (restored, the same point); L-BFGS's curvature pairs go."""
    opt = run(make_optimizer(name, rosen_start(8), rosenbrock, **({"history": 4} if name == "lbfgs" else {})), 12)
    x, g, loss, counts = opt.x.copy(), opt.grad.copy(), opt.loss, (opt.iteration, opt.evaluations)
    if name == "lbfgs":
        assert len(opt.state_dict()["s"]) > 0
    opt.finish()
    assert np.array_equal(opt.x, x) and np.array_equal(opt.grad, g) and opt.loss == loss
    assert (opt.iteration, opt.evaluations) == counts
    state = roundtrip(opt.state_dict())
    if name == "lbfgs":
        assert state["s"].shape == (0, 8) and state["y"].shape == (0, 8) and state["rho"] == []
    back = type(opt).from_state(state, rosenbrock)
    assert np.array_equal(back.x, x) and back.loss == loss and back.iteration == counts[0]
