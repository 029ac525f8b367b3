"""Winograd F(4×4, 3×3) conv against the naive loops and im2col (forward), finite differences (backward)."""

from fractions import Fraction

import numpy as np
import pytest

from scratchnst.core import host, ops
from scratchnst.gradcheck import THRESHOLDS, check_op
from scratchnst.core.ops import winograd as wg
from scratchnst.core.ops.reference import conv2d_naive

CASES = [  # (x shape, F, pad): sizes not multiples of 4, 1×1 and 2×3 images, C = 1, 3, 64, N = 1, 2
    ((1, 1, 1, 1), 2, 1),
    ((1, 3, 2, 3), 2, 1),
    ((2, 3, 5, 7), 4, 1),
    ((1, 3, 5, 7), 4, 0),
    ((1, 1, 9, 13), 3, 1),
    ((2, 3, 9, 13), 5, 0),
    ((1, 64, 9, 13), 8, 1),
    ((2, 64, 6, 5), 3, 0),
    ((1, 4, 16, 12), 6, 1),
]


def _case(rng, shape, F, dtype="float64"):
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((F, shape[1], 3, 3)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    return x, w, b


def test_matrices_compute_a_correlation_exactly():
    """Aᵀ [(G g) ⊙ (Bᵀ d)] = (Σ_p g_p d_{i+p})_i in exact arithmetic, for every basis g and d."""
    fr = lambda m: [[Fraction(v).limit_denominator(1000) for v in row] for row in m]  # noqa: E731
    AT, G, BT = fr(wg.AT), fr(wg.G), fr(wg.BT)
    for p in range(3):
        for k in range(6):
            gg = [G[i][p] for i in range(6)]
            dd = [BT[i][k] for i in range(6)]
            y = [sum(AT[i][x] * gg[x] * dd[x] for x in range(6)) for i in range(4)]
            assert y == [int(i + p == k) for i in range(4)], (p, k, y)


def test_flip_rows_are_reversed_rows():
    """The flipped kernel's transform is the kernel's own at FLIP (G J = P G)."""
    assert np.array_equal(wg.G[:, ::-1], wg.G[list(wg.FLIP)])
    w = np.random.default_rng(1).standard_normal((3, 2, 3, 3))
    u = wg.winograd_filter_transform(w)
    u_flip = wg.winograd_filter_transform(np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)))
    np.testing.assert_allclose(u_flip, u[list(wg.FLIP36)].transpose(0, 2, 1), rtol=1e-14, atol=1e-14)


def test_shared_subexpressions_match_the_matrices(rng):
    d = rng.standard_normal((6, 5))
    out, e, f = np.empty((6, 5)), np.empty(5), np.empty(5)
    wg._bt_1d(list(d), list(out), e, f)
    np.testing.assert_allclose(out, wg.BT @ d, rtol=1e-14, atol=1e-14)
    y = np.empty((4, 5))
    wg._at_1d(list(d), list(y), e, f)
    np.testing.assert_allclose(y, wg.AT @ d, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("shape,F,pad", CASES)
def test_forward_matches_naive_and_im2col(rng, shape, F, pad):
    x, w, b = _case(rng, shape, F)
    y, _ = wg.winograd_conv2d_forward(x, w, b, pad)
    msg = f"case {shape} F{F} p{pad}"
    np.testing.assert_allclose(y, conv2d_naive(x, w, b, 1, pad), rtol=1e-10, atol=1e-10, err_msg=msg)
    np.testing.assert_allclose(y, ops.conv2d_forward(x, w, b, 1, pad)[0], rtol=1e-10, atol=1e-10, err_msg=msg)


@pytest.mark.parametrize("shape,F,pad", CASES)
def test_backward_matches_im2col(rng, shape, F, pad):
    x, w, b = _case(rng, shape, F)
    y, cache = wg.winograd_conv2d_forward(x, w, b, pad)
    dout = rng.standard_normal(y.shape)
    dx = wg.winograd_conv2d_backward(dout, cache)
    assert dx.shape == x.shape
    np.testing.assert_allclose(dx, ops.conv2d_backward(dout, ops.conv2d_forward(x, w, b, 1, pad)[1]), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape,F,pad", [c for c in CASES if c[0][1] < 64])
def test_backward_finite_differences(rng, shape, F, pad):
    x, w, b = _case(rng, shape, F)
    u = wg.winograd_filter_transform(w)
    fwd = lambda v: wg.winograd_conv2d_forward(v, w, b, pad, u=u)  # noqa: E731
    r = check_op("winograd conv2d", fwd, wg.winograd_conv2d_backward, x, rng, eps=1e-5, threshold=THRESHOLDS["float64"])
    assert r.passed, r


def test_float32_runs_in_float32(rng):
    x, w, b = _case(rng, (1, 3, 9, 10), 4, "float32")
    y, cache = wg.winograd_conv2d_forward(x, w, b, 1)
    assert y.dtype == np.float32 and cache.u.dtype == np.float32
    assert wg.winograd_conv2d_backward(y, cache).dtype == np.float32


def test_float32_error_against_float64_direct(rng):
    """VGG-like layer (256 → 256, ReLU'd input, He-scaled Gaussian weights), float32 vs float64 im2col.

    max |y − y64| / max |y64|: float32 im2col ≈ 3e-7 here; Winograd measured 0.8–1.2e-5 forward
    and 1.0–1.3e-5 backward over seeds 0–3 (the real VGG layers: ≤ 3.5e-6 and ≤ 1.3e-5,
    docs/winograd.md): each output sums 36 products whose factors the transforms scaled by up to
    8 (Aᵀ) and 3.5 (Bᵀ). 5e-5 leaves room for other seeds and BLAS kernels; a wrong coefficient
    (O(1)) or a lost precision step (float16-sized, ≈ 1e-3) is far above it.
    """
    C = F = 256
    x = np.maximum(rng.standard_normal((1, C, 12, 12)), 0)
    w = rng.standard_normal((F, C, 3, 3)) * np.sqrt(2 / (9 * C))
    ref, cache64 = ops.conv2d_forward(x, w, None, 1, 1)
    y32, cache = wg.winograd_conv2d_forward(x.astype(np.float32), w.astype(np.float32), None, 1)
    assert np.abs(y32 - ref).max() / np.abs(ref).max() < 5e-5
    dout = rng.standard_normal(ref.shape)
    dref = ops.conv2d_backward(dout, cache64)
    dx32 = wg.winograd_conv2d_backward(dout.astype(np.float32), cache)
    assert np.abs(dx32 - dref).max() / np.abs(dref).max() < 5e-5


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_same_bytes_on_1_2_4_threads(rng, monkeypatch, dtype):
    """Bands are sized from the shapes only and each is one thread's own: no result bit depends on
    the thread count. Small bands so that every thread count gets several."""
    monkeypatch.setattr(wg, "BAND_BYTES", 1)
    monkeypatch.setattr(wg, "MIN_BAND_TILES", 1)
    x, w, b = _case(rng, (2, 16, 30, 21), 24, dtype)
    u = wg.winograd_filter_transform(w)
    results = []
    saved = host.THREADS
    try:
        for threads in (1, 2, 4):
            host.THREADS = threads
            y, cache = wg.winograd_conv2d_forward(x, w, b, 1, u=u)
            results.append((y, wg.winograd_conv2d_backward(y, cache)))
    finally:
        host.THREADS = saved
    for y, dx in results[1:]:
        assert np.array_equal(y, results[0][0]) and np.array_equal(dx, results[0][1])


def test_one_tile_row_bands_equal_one_band(rng, monkeypatch):
    x, w, b = _case(rng, (1, 5, 26, 19), 7)
    y, cache = wg.winograd_conv2d_forward(x, w, b, 1)
    dx = wg.winograd_conv2d_backward(y, cache)
    for name in ("BAND_BYTES", "MIN_BAND_TILES"):
        monkeypatch.setattr(wg, name, 1)
    assert wg._band_rows(np, 5, 7, 7, 5, 8) == 1
    y1, cache1 = wg.winograd_conv2d_forward(x, w, b, 1)
    np.testing.assert_allclose(y1, y, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(wg.winograd_conv2d_backward(y, cache1), dx, rtol=1e-13, atol=1e-13)


def test_band_and_transform_bytes_follow_the_buffers(monkeypatch, rng):
    """band_bytes: V and M, 36·(C + F) values per 4×4 tile, x1.5 for the transforms' scratch, at most
    the band bound per worker thread (the device's one on a GPU); filter_transform_bytes: u's own
    bytes, and the 18 float64 values per (f, c) held while it is made."""
    assert wg.band_bytes(8, 16, 64, 4) == int(1.5 * 36 * 24 * 4 * 4)  # 64 positions: 4 tiles
    assert wg.band_bytes(8, 16, 64, 8, workers=2) == 2 * wg.band_bytes(8, 16, 64, 4)
    huge = 1e9
    assert wg.band_bytes(64, 64, huge, 4, workers=2) == int(1.5 * 2 * wg.BAND_BYTES)
    assert wg.band_bytes(64, 64, huge, 4, on_device=True) == int(1.5 * wg.DEVICE_BAND_BYTES)
    monkeypatch.setattr(wg, "BAND_BYTES", 1000)
    assert wg.band_bytes(64, 64, huge, 4, workers=3) == 4500
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    kept, making = wg.filter_transform_bytes(3, 5, 4)
    assert kept == wg.winograd_filter_transform(w).nbytes and making == 18 * 8 * 5 * 3


@pytest.mark.parametrize(
    "x_shape,w_shape,pad",
    [((1, 3, 5, 5), (2, 4, 3, 3), 1), ((1, 3, 5, 5), (2, 3, 5, 5), 1), ((1, 3, 5, 5), (2, 3, 3, 3), 2), ((1, 3, 2, 2), (2, 3, 3, 3), 0)],
)
def test_bad_shapes_raise(x_shape, w_shape, pad):
    with pytest.raises(ValueError):
        wg.winograd_conv2d_forward(np.zeros(x_shape), np.zeros(w_shape), None, pad)


@pytest.mark.weights
def test_stylize_with_winograd_lands_where_im2col_does(tmp_path, pics, tiny, weights_env):
    """--conv winograd against --conv im2col, same seed and evaluations: final loss within 1%, and the
    manifest says which convolution each layer ran."""
    import json

    from scratchnst.app.cli import main

    manifests = {}
    for conv in ("im2col", "winograd", "auto"):
        out = tmp_path / f"{conv}.png"
        argv = ["stylize", str(pics.content), str(pics.style), "-o", str(out), *tiny.but(size=48, iterations=4, conv=conv).argv]
        assert main(argv) == 0
        manifests[conv] = json.loads(out.with_suffix(".json").read_text())
    direct, wino = manifests["im2col"]["final_loss"], manifests["winograd"]["final_loss"]
    assert abs(wino - direct) <= 0.01 * direct
    assert manifests["winograd"]["args"]["conv"] == "winograd"
    assert set(manifests["im2col"]["convs"].values()) == {"im2col"} and set(manifests["winograd"]["convs"].values()) == {"winograd"}
    assert manifests["auto"]["convs"]["conv1_1"] == "im2col" and manifests["auto"]["convs"]["conv4_1"] == "winograd"


