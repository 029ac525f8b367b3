"""CuPy against NumPy: every op, the objective, the optimisers and a stylize run on the GPU.

Tests marked `gpu` run only where CuPy imports and sees a CUDA device (the helper below); elsewhere
they are skipped with the reason. Tolerances are normwise relative errors (gradcheck.rel_error):
1e-5 in float32, 1e-12 in float64. That asking for CuPy where there is none fails with one clear line
is tested on every machine, in tests/core/test_backend.py and tests/app/test_engine.py.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

import scratchnst
from scratchnst.core import ops
from scratchnst.core.backend import _probe_cupy, get_backend, to_host
from scratchnst.gradcheck import CONV_CASES, POOL_CASES, random_vgg, rel_error, tie_free
from scratchnst.core.objective import NSTObjective
from scratchnst.core.optim import make_optimizer

TOL = {"float32": 1e-5, "float64": 1e-12}
DTYPES = ["float32", "float64"]
# With CUPY_TF32=1 CuPy's float32 GEMMs round their inputs to 10 mantissa bits: ~1e-3, not 1e-5.
TF32_ON = int(os.environ.get("CUPY_TF32", "0") or 0) > 0


def _cuda():
    """(cupy, "") when CuPy imports and sees a working CUDA device, else (None, why not)."""
    try:
        return _probe_cupy()
    except Exception as exc:  # never let the probe break collection on a CPU machine
        return None, f"CuPy probe failed: {exc}"


cp, WHY_NOT = _cuda()


def gpu_test(f):
    """Mark `f` as a gpu test, skipped (with the reason) where there is no usable CUDA device."""
    f = pytest.mark.skipif(cp is None, reason=f"needs CuPy and a CUDA device: {WHY_NOT}")(f)
    return pytest.mark.gpu(f)


def _tol(dtype: str) -> float:
    if dtype == "float32" and TF32_ON:
        pytest.skip("CUPY_TF32=1: float32 GEMMs run in TF32, so the float32 parity tolerance does not apply")
    return TOL[dtype]


def _pair(a: np.ndarray, dtype: str):
    """The same values as a NumPy array and a CuPy array of `dtype`."""
    host = np.asarray(a, dtype=dtype)
    return host, cp.asarray(host)


def _close(dev, host, tol: float, what: str) -> None:
    assert type(dev).__module__.split(".")[0] == "cupy", f"{what}: came back as {type(dev)}, not a CuPy array"
    assert dev.shape == host.shape and dev.dtype == host.dtype, f"{what}: {dev.shape} {dev.dtype} vs {host.shape} {host.dtype}"
    err = rel_error(dev, host)
    assert err <= tol, f"{what}: CuPy vs NumPy rel error {err:.2e} > {tol:g}"


# -- ops -----------------------------------------------------------------------------------------

# (x shape, (F, KH, KW), stride, pad): gradcheck's cases plus the ones that pick each backward path
# in conv2d_backward: flipped-kernel (stride 1, 2C > F), col2im (few input channels, like the RGB
# layer), col2im (stride 2 / 3), and pad > K − 1.
GPU_CONV_CASES = CONV_CASES + [
    ((1, 3, 20, 17), (8, 3, 3), 1, 1),
    ((2, 6, 12, 12), (4, 3, 3), 1, 1),
    ((1, 4, 15, 16), (5, 3, 3), 2, 1),
    ((1, 3, 16, 13), (4, 3, 3), 3, 0),
    ((3, 2, 4, 4), (5, 4, 4), 1, 3),
]


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,kernel,stride,pad", GPU_CONV_CASES)
def test_conv2d_matches_numpy(rng, dtype, shape, kernel, stride, pad):
    tol = _tol(dtype)
    F, KH, KW = kernel
    case = f"x{shape} w{(F, shape[1], KH, KW)} s{stride} p{pad} {dtype}"
    x, x_d = _pair(rng.standard_normal(shape), dtype)
    w, w_d = _pair(rng.standard_normal((F, shape[1], KH, KW)), dtype)
    b, b_d = _pair(rng.standard_normal(F), dtype)
    y, cache = ops.conv2d_forward(x, w, b, stride, pad)
    y_d, cache_d = ops.conv2d_forward(x_d, w_d, b_d, stride, pad)
    _close(y_d, y, tol, f"conv2d forward {case}")
    dout, dout_d = _pair(rng.standard_normal(y.shape), dtype)
    _close(ops.conv2d_backward(dout_d, cache_d), ops.conv2d_backward(dout, cache), tol, f"conv2d backward {case}")


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,pad", [((1, 3, 13, 10), 1), ((2, 8, 9, 7), 0), ((1, 64, 20, 24), 1)])
def test_winograd_matches_numpy(rng, dtype, shape, pad):
    """The same xp code of the Winograd convolution on CuPy as on NumPy (the transforms included)."""
    tol = _tol(dtype)
    x, x_d = _pair(rng.standard_normal(shape), dtype)
    w, w_d = _pair(rng.standard_normal((5, shape[1], 3, 3)), dtype)
    b, b_d = _pair(rng.standard_normal(5), dtype)
    y, cache = ops.winograd_conv2d_forward(x, w, b, pad)
    y_d, cache_d = ops.winograd_conv2d_forward(x_d, w_d, b_d, pad)
    _close(y_d, y, tol, f"winograd forward {shape} p{pad} {dtype}")
    dout, dout_d = _pair(rng.standard_normal(y.shape), dtype)
    _close(ops.winograd_conv2d_backward(dout_d, cache_d), ops.winograd_conv2d_backward(dout, cache), tol, f"winograd backward {shape} p{pad} {dtype}")


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_banded_path_matches_numpy(rng, monkeypatch, dtype):
    """One output row per band (both tile bounds = 1) on both backends, through all three conv paths."""
    tol = _tol(dtype)
    monkeypatch.setattr("scratchnst.core.ops.conv.TILE_BYTES", 1)
    monkeypatch.setattr("scratchnst.core.ops.conv.DEVICE_TILE_BYTES", 1)
    monkeypatch.setattr("scratchnst.core.ops.conv.MIN_BAND_COLS", 1)
    for shape, (F, KH, KW), stride in [((1, 6, 13, 10), (4, 3, 3), 1), ((1, 3, 13, 10), (8, 3, 3), 1), ((1, 3, 13, 10), (4, 3, 3), 2)]:
        x, x_d = _pair(rng.standard_normal(shape), dtype)
        w, w_d = _pair(rng.standard_normal((F, shape[1], KH, KW)), dtype)
        y, cache = ops.conv2d_forward(x, w, None, stride, 1)
        y_d, cache_d = ops.conv2d_forward(x_d, w_d, None, stride, 1)
        _close(y_d, y, tol, f"banded conv2d forward {shape} s{stride}")
        dout, dout_d = _pair(rng.standard_normal(y.shape), dtype)
        _close(ops.conv2d_backward(dout_d, cache_d), ops.conv2d_backward(dout, cache), tol, f"banded conv2d backward {shape} s{stride}")


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_matches_numpy(rng, dtype):
    x, x_d = _pair(rng.standard_normal((2, 3, 9, 7)), dtype)
    x[0, 0, 0, :2] = x_d[0, 0, 0, :2] = 0  # the kink passes no gradient on either backend
    y, mask = ops.relu_forward(x)
    y_d, mask_d = ops.relu_forward(x_d)
    np.testing.assert_array_equal(to_host(y_d), y)
    dout, dout_d = _pair(rng.standard_normal(x.shape), dtype)
    np.testing.assert_array_equal(to_host(ops.relu_backward(dout_d, mask_d)), ops.relu_backward(dout, mask))


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("shape,k,stride", POOL_CASES + [((1, 2, 10, 10), 3, 1)])
def test_pool_matches_numpy(rng, dtype, kind, shape, k, stride):
    tol = _tol(dtype)
    fwd, bwd = {
        "max": (ops.maxpool2d_forward, ops.maxpool2d_backward),
        "avg": (ops.avgpool2d_forward, ops.avgpool2d_backward),
    }[kind]
    x = tie_free(rng, shape, np, dtype)  # no ties: the winner is the same on both backends
    x_d = cp.asarray(x)
    y, cache = fwd(x, k, stride)
    y_d, cache_d = fwd(x_d, k, stride)
    _close(y_d, y, tol, f"{kind}pool forward {shape} k{k} s{stride}")
    if kind == "max":
        np.testing.assert_array_equal(to_host(cache_d.argmax), cache.argmax)
    dout, dout_d = _pair(rng.standard_normal(y.shape), dtype)
    _close(bwd(dout_d, cache_d), bwd(dout, cache), tol, f"{kind}pool backward {shape} k{k} s{stride}")


@gpu_test
def test_maxpool_ties_go_to_the_first_maximum_on_cupy():
    x = cp.zeros((1, 1, 4, 4), dtype="float32")
    y, cache = ops.maxpool2d_forward(x, 2, 2)
    assert int(cache.argmax.max()) == 0
    dx = ops.maxpool2d_backward(cp.ones_like(y), cache)
    expected = np.zeros((1, 1, 4, 4), dtype="float32")
    expected[:, :, ::2, ::2] = 1
    np.testing.assert_array_equal(to_host(dx), expected)


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 4, 3, 5), (2, 7, 6, 6), (1, 64, 16, 16)])
def test_gram_matches_numpy(rng, dtype, shape):
    tol = _tol(dtype)
    f, f_d = _pair(rng.standard_normal(shape), dtype)
    g, cache = ops.gram_forward(f)
    g_d, cache_d = ops.gram_forward(f_d)
    _close(g_d, g, tol, f"gram forward {shape}")
    dg, dg_d = _pair(rng.standard_normal(g.shape), dtype)  # not symmetric on purpose
    _close(ops.gram_backward(dg_d, cache_d), ops.gram_backward(dg, cache), tol, f"gram backward {shape}")


# -- the objective -------------------------------------------------------------------------------


def _images(rng, shapes):
    return [rng.uniform(-100, 100, (1, 3, h, w)) for h, w in shapes]


def _objectives(net_host, net_dev, content, styles, **options):
    dtype = str(net_host.dtype)
    host = NSTObjective(net_host, np.asarray(content, dtype), [np.asarray(s, dtype) for s in styles], **options)
    dev = NSTObjective(net_dev, cp.asarray(content, dtype), [cp.asarray(s, dtype) for s in styles], **options)
    return host, dev


def _compare_objectives(host, dev, x, tol: float, what: str) -> None:
    dtype = str(host.net.dtype)
    loss, grad = host.loss_and_grad(np.asarray(x, dtype))
    loss_d, grad_d = dev.loss_and_grad(cp.asarray(x, dtype))
    assert isinstance(loss_d, float), f"{what}: loss is {type(loss_d)}, not a Python float"
    assert abs(loss_d - loss) <= tol * abs(loss), f"{what}: loss {loss_d!r} (CuPy) vs {loss!r} (NumPy)"
    terms, terms_d = host.evaluate(np.asarray(x, dtype)).terms, dev.evaluate(cp.asarray(x, dtype)).terms
    assert terms and set(terms_d) == set(terms), f"{what}: terms {sorted(terms_d)} (CuPy) vs {sorted(terms)} (NumPy)"
    for term, value in terms.items():
        assert abs(terms_d[term] - value) <= tol * max(abs(value), 1e-30), f"{what}: {term} term"
    _close(grad_d, grad, tol, f"{what}: gradient")


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_objective_random_net_matches_numpy(dtype, pooling):
    """A random VGG-shaped net built from the same seed on both backends; two styles of other sizes,
    several content layers, TV on."""
    tol = _tol(dtype)
    net = random_vgg(np.random.default_rng(3), xp=np, dtype=dtype, pooling=pooling)
    net_d = random_vgg(np.random.default_rng(3), xp=cp, dtype=dtype, pooling=pooling)
    rng = np.random.default_rng(4)
    content, style1, style2, x = _images(rng, [(40, 36), (32, 48), (44, 44), (40, 36)])
    host, dev = _objectives(
        net, net_d, content, [style1, style2],
        content_layers=("relu4_1", "relu2_2"), style_weight=30.0, tv_weight=0.1, style_blend=(3, 1),
    )
    _compare_objectives(host, dev, x, tol, f"random net {dtype} {pooling}")


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES)
def test_objective_with_style_masks_and_normalized_gradients_matches_numpy(dtype):
    """Two styles on two soft, overlapping masks (Gatys 2017 regions), each layer's gradient L1-normalised."""
    tol = _tol(dtype)
    net = random_vgg(np.random.default_rng(3), xp=np, dtype=dtype)
    net_d = random_vgg(np.random.default_rng(3), xp=cp, dtype=dtype)
    rng = np.random.default_rng(6)
    content, style1, style2, x = _images(rng, [(40, 36), (32, 48), (44, 44), (40, 36)])
    left = np.clip(np.linspace(1.5, -0.5, 36), 0, 1)[None, :].repeat(40, 0)
    host, dev = _objectives(net, net_d, content, [style1, style2], style_weight=30.0, tv_weight=0.1,
                            style_masks=[left, 1.2 - left], normalize_gradients=True)
    _compare_objectives(host, dev, x, tol, f"regions {dtype}")


@gpu_test
@pytest.mark.weights
@pytest.mark.parametrize("dtype", DTYPES)
def test_objective_real_weights_matches_numpy(vgg16, dtype):
    """The real VGG-16 at 64 px, default layers and weights."""
    tol = _tol(dtype)
    net = vgg16(backend="numpy", dtype=dtype)
    net_d = vgg16(backend="cupy", dtype=dtype)
    assert net_d.xp is cp
    rng = np.random.default_rng(5)
    content, style, x = _images(rng, [(64, 64), (64, 64), (64, 64)])
    host, dev = _objectives(net, net_d, content, [style])
    _compare_objectives(host, dev, x, tol, f"real VGG-16 64 px {dtype}")


@gpu_test
def test_evaluation_stays_on_the_device():
    net_d = random_vgg(np.random.default_rng(0), xp=cp, dtype="float32")
    content, style, x = _images(np.random.default_rng(1), [(32, 32)] * 3)
    obj = NSTObjective(net_d, cp.asarray(content, "float32"), [cp.asarray(style, "float32")], tv_weight=0.1)
    loss, grad = obj.loss_and_grad(cp.asarray(x, "float32"))
    assert isinstance(loss, float) and np.isfinite(loss)
    assert isinstance(grad, cp.ndarray) and grad.dtype == cp.float32 and grad.shape == x.shape
    assert obj.targets and all(isinstance(t, cp.ndarray) for t in obj.targets.values())
    assert obj.grams and all(isinstance(g, cp.ndarray) for g in obj.grams.values())


# -- optimisers ----------------------------------------------------------------------------------


@gpu_test
@pytest.mark.parametrize("name,steps", [("lbfgs", 4), ("adam", 5)])
def test_optimizer_matches_numpy(name, steps):
    """A few steps on the random-net objective in float64: same iterates, losses and evaluation counts."""
    tol = 1e-9  # a few line searches compound the 1e-12 per evaluation
    net = random_vgg(np.random.default_rng(6), xp=np, dtype="float64")
    net_d = random_vgg(np.random.default_rng(6), xp=cp, dtype="float64")
    content, style, x0 = _images(np.random.default_rng(7), [(32, 32)] * 3)
    host, dev = _objectives(net, net_d, content, [style], tv_weight=0.01)
    opt = make_optimizer(name, np.array(x0), host.loss_and_grad)
    opt_d = make_optimizer(name, cp.asarray(x0), dev.loss_and_grad)
    start = opt.loss
    for step in range(steps):
        opt.step()
        opt_d.step()
        what = f"{name} step {step + 1}"
        assert opt_d.evaluations == opt.evaluations, f"{what}: {opt_d.evaluations} evaluations on CuPy, {opt.evaluations} on NumPy"
        assert abs(opt_d.loss - opt.loss) <= tol * abs(opt.loss), f"{what}: loss {opt_d.loss!r} vs {opt.loss!r}"
        _close(opt_d.x, opt.x, tol, f"{what}: iterate")
    assert opt_d.loss < start
    # The state dict comes back to the host and restores onto the device.
    state = opt_d.state_dict()
    arrays = {k: v for k, v in state.items() if k in ("x", "grad", "s", "y", "m", "v")}
    assert {"x", "grad"} <= set(arrays) and all(isinstance(v, np.ndarray) for v in arrays.values()), sorted(arrays)
    again = type(opt_d).from_state(state, dev.loss_and_grad, xp=cp)
    again.step()
    opt_d.step()
    _close(again.x, to_host(opt_d.x), 1e-12, f"{name}: resumed from its state dict")


# -- stylize -------------------------------------------------------------------------------------


@pytest.fixture
def gpu_pics(pictures):
    """A 56x48 content and a 40x52 style."""
    return pictures.save("content.png", 56, 48), pictures.save("style.png", 40, 52)


@pytest.fixture
def run(tiny, vgg_weights_path):
    """A 48 px run of 3 iterations on the real weights."""
    return tiny.but(size=48, iterations=3, weights=str(vgg_weights_path))


def _stylize(pictures, run, **options):
    content, style = pictures
    return scratchnst.stylize(str(content), [str(style)], **run.but(**options))


@gpu_test
@pytest.mark.weights
def test_stylize_runs_on_cupy(gpu_pics, run, tmp_path):
    out = tmp_path / "out.png"
    result = _stylize(gpu_pics, run, backend="cupy", out=out)
    assert result.status == "done"
    assert result.manifest["backend"] == "cupy"
    assert result.image.size == (48, 41)
    assert len(result.history) == 3 and all(np.isfinite(h["loss"]) for h in result.history)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert Image.open(out).size == (48, 41)


@gpu_test
@pytest.mark.weights
def test_stylize_cupy_matches_numpy_in_float64(gpu_pics, run):
    runs = {b: _stylize(gpu_pics, run, backend=b, dtype="float64") for b in ("numpy", "cupy")}
    assert len(runs["numpy"].history) == 3
    for h_np, h_cp in zip(runs["numpy"].history, runs["cupy"].history, strict=True):
        assert h_cp["evaluations"] == h_np["evaluations"]
        assert abs(h_cp["loss"] - h_np["loss"]) <= 1e-9 * abs(h_np["loss"]), (h_cp, h_np)
    a = np.asarray(runs["cupy"].image, dtype=np.int16)
    b = np.asarray(runs["numpy"].image, dtype=np.int16)
    assert np.abs(a - b).max() <= 1, "the two images differ by more than rounding to uint8"


@gpu_test
@pytest.mark.weights
def test_stylize_on_cupy_is_deterministic(gpu_pics, run):
    """Same seed, same bytes. cuBLAS and CuPy's reductions are run-to-run deterministic on one GPU
    with one library version (no atomics on these paths); docs/gpu.md says what to do if not."""
    first = _stylize(gpu_pics, run, backend="cupy", seed=11)
    second = _stylize(gpu_pics, run, backend="cupy", seed=11)
    assert [h["loss"] for h in first.history] == [h["loss"] for h in second.history]
    assert first.image.tobytes() == second.image.tobytes()


@gpu_test
def test_auto_picks_cupy_where_a_device_is_present():
    assert get_backend("auto") is cp
    assert get_backend("cupy") is cp


# -- tiled (issue #25) ---------------------------------------------------------------------------


@gpu_test
@pytest.mark.parametrize("dtype, options", [
    ("float64", {"tv_weight": 0.1}),
    ("float64", {"style_masks": True, "normalize_gradients": True}),
    ("float64", {"normalize": "none", "pooling": "avg"}),
    ("float32", {"tv_weight": 0.1}),
])
def test_tiled_evaluation_is_the_untiled_one_on_cupy(dtype, options):
    """core/tiled.py on the device: a 48x40 image in 16-px cores against the whole image, both on CuPy;
    loss and totals within 1e-10 (float32: 1e-5), the gradient normwise within 1e-10 (float32: 1e-3,
    a ReLU or max-pool tie flipping) and still a CuPy array; with every tile's forward kept too."""
    from scratchnst.core.tiled import TiledObjective

    options = dict(options)
    net_d = random_vgg(np.random.default_rng(3), xp=cp, dtype=dtype, pooling=options.pop("pooling", "max"))
    rng = np.random.default_rng(8)
    content, style1, style2, x = _images(rng, [(48, 40), (32, 48), (44, 44), (48, 40)])
    if options.pop("style_masks", False):
        left = np.zeros((48, 40))
        left[:, :22] = 1
        options["style_masks"] = [left, 1 - left]
        styles = [style1, style2]
    else:
        styles = [style1]
    obj = NSTObjective(net_d, cp.asarray(content, dtype), [cp.asarray(s, dtype) for s in styles], style_weight=30.0,
                       **options)
    loss_tol, grad_tol = (1e-10, 1e-10) if dtype == "float64" else (1e-5, 1e-3)
    whole = obj.evaluate(cp.asarray(x, dtype))
    for keep in (False, True):
        tiles = TiledObjective(obj, 16, keep_forward=keep).evaluate(cp.asarray(x, dtype))
        assert len(TiledObjective(obj, 16).tiles) == 9
        assert abs(tiles.loss - whole.loss) <= loss_tol * abs(whole.loss), (keep, tiles.loss, whole.loss)
        for term, value in whole.terms.items():
            assert abs(tiles.terms[term] - value) <= loss_tol * max(abs(value), 1e-30), (keep, term)
        assert type(tiles.grad).__module__.split(".")[0] == "cupy"
        error = float(cp.linalg.norm((tiles.grad - whole.grad).ravel()) / cp.linalg.norm(whole.grad.ravel()))
        assert error <= grad_tol, (keep, error)


@gpu_test
@pytest.mark.weights
def test_a_tiled_stylize_on_cupy_is_the_untiled_picture(gpu_pics, run):
    """--tile 32 on the device: the picture of the untiled run (float64, same seed) within rounding
    to uint8, the same losses within 1e-9, and the plan budgeted on the GPU's free memory."""
    whole = _stylize(gpu_pics, run, backend="cupy", dtype="float64", tile=0)
    tiled = _stylize(gpu_pics, run, backend="cupy", dtype="float64", tile=32)
    assert tiled.manifest["plan"]["scales"][-1]["core"] == 32 and whole.manifest["plan"]["scales"][-1]["core"] is None
    for a, b in zip(tiled.history, whole.history, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-9 * abs(b["loss"]), (a, b)
    diff = np.abs(np.asarray(tiled.image, dtype=np.int16) - np.asarray(whole.image, dtype=np.int16)).max()
    assert diff <= 1, diff
    free, total = cp.cuda.runtime.memGetInfo()
    assert 0 < tiled.manifest["plan"]["budget"] <= total


@gpu_test
@pytest.mark.weights
def test_spread_tiles_on_cupy_workers_give_the_bytes_of_this_process(vgg16, vgg_weights_path, client):
    """A tiled evaluation's tiles on a Dask worker whose net is on the device (picture/spread.py):
    the loss and gradient of the same tiles evaluated here, bit for bit."""
    from scratchnst.app.picture.settings import Settings
    from scratchnst.app.picture.spread import Spread
    from scratchnst.core.tiled import TiledObjective

    net_d = vgg16(backend="cupy", dtype="float64")
    rng = np.random.default_rng(9)
    content, style, x = _images(rng, [(40, 56), (36, 30), (40, 56)])
    obj = NSTObjective(net_d, cp.asarray(content), [cp.asarray(style)])
    spread = Spread(client, Settings(backend="cupy", dtype="float64", weights=str(vgg_weights_path)))
    try:
        here = TiledObjective(obj, 16).evaluate(cp.asarray(x))
        there = TiledObjective(obj, 16, spread=spread).evaluate(cp.asarray(x))
    finally:
        spread.close()
    assert there.loss == here.loss and there.terms == here.terms
    assert np.array_equal(to_host(there.grad), to_host(here.grad))
