"""Each op against its naive loop reference (forward) and finite differences (backward); the same bits
split over threads; output shapes for any size (hypothesis)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchnst.core import ops
from scratchnst.gradcheck import CONV_CASES, POOL_CASES, THRESHOLDS, check_op, tie_free
from scratchnst.core.ops.reference import conv2d_naive, gram_naive, pool2d_naive

EPS = 1e-5
THR = THRESHOLDS["float64"]


@pytest.mark.parametrize("shape,kernel,stride,pad", CONV_CASES + [((1, 1, 16, 3), (2, 3, 3), 1, 1), ((3, 2, 4, 4), (5, 4, 4), 1, 3)])
def test_conv_forward_matches_naive(rng, shape, kernel, stride, pad):
    F, KH, KW = kernel
    x = rng.standard_normal(shape)
    w = rng.standard_normal((F, shape[1], KH, KW))
    b = rng.standard_normal(F)
    y, _ = ops.conv2d_forward(x, w, b, stride, pad)
    np.testing.assert_allclose(y, conv2d_naive(x, w, b, stride, pad), rtol=1e-12, atol=1e-12, err_msg=f"case {shape} {kernel} s{stride} p{pad}")


@pytest.mark.parametrize("shape,kernel,stride,pad", CONV_CASES + [((3, 2, 4, 4), (5, 4, 4), 1, 3)])
def test_conv_backward_finite_differences(rng, shape, kernel, stride, pad):
    F, KH, KW = kernel
    x = rng.standard_normal(shape)
    w = rng.standard_normal((F, shape[1], KH, KW))
    r = check_op("conv2d", lambda v: ops.conv2d_forward(v, w, None, stride, pad), ops.conv2d_backward, x, rng, eps=EPS, threshold=THR)
    assert r.passed, r


def test_conv_banded_path_equals_single_band(rng, monkeypatch):
    """Tiling im2col into row bands must not change the result (forward and both backward paths)."""
    x = rng.standard_normal((1, 3, 13, 10))
    w = rng.standard_normal((4, 3, 3, 3))
    dout = rng.standard_normal((1, 4, 13, 10))
    y, cache = ops.conv2d_forward(x, w, None, 1, 1)
    dx = ops.conv2d_backward(dout, cache)
    _, cache2 = ops.conv2d_forward(x, w, None, 2, 1)
    dout2 = rng.standard_normal((1, 4, 7, 5))
    dx2 = ops.conv2d_backward(dout2, cache2)
    w8 = rng.standard_normal((8, 3, 3, 3))  # 2·C ≤ F: the stride-1 backward takes the col2im path
    _, cache8 = ops.conv2d_forward(x, w8, None, 1, 1)
    dout8 = rng.standard_normal((1, 8, 13, 10))
    dx8 = ops.conv2d_backward(dout8, cache8)
    for name in ("TILE_BYTES", "MIN_BAND_COLS"):  # one output row per band
        monkeypatch.setattr(f"scratchnst.core.ops.conv.{name}", 1)
    assert ops.conv._band_rows(np, 27, 4, 12, 13, 8) == 1
    y_b, cache_b = ops.conv2d_forward(x, w, None, 1, 1)
    np.testing.assert_allclose(y_b, y, rtol=1e-13)
    np.testing.assert_allclose(ops.conv2d_backward(dout, cache_b), dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ops.conv2d_backward(dout2, cache2), dx2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ops.conv2d_backward(dout8, cache8), dx8, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2])
def test_split_over_threads_gives_the_same_bits_as_one_thread(rng, monkeypatch, stride):
    """Conv bands, Gram position chunks, ReLU stretches and pooling channels split over 2, 3 or 4
    worker threads give exactly (bit for bit) what one thread gives."""
    x = rng.standard_normal((2, 5, 23, 9))
    w = rng.standard_normal((4, 5, 3, 3))
    b = rng.standard_normal(4)
    w_col2im = rng.standard_normal((16, 5, 3, 3))  # 2·C ≤ F: col2im, with its even/odd band phases
    for name in ("TILE_BYTES", "MIN_BAND_COLS"):  # many small bands
        monkeypatch.setattr(f"scratchnst.core.ops.conv.{name}", 1)
    monkeypatch.setattr("scratchnst.core.host.MIN_SPLIT_ELEMENTS", 1)  # split even these tiny arrays
    monkeypatch.setattr("scratchnst.core.host.SUM_CHUNK_ELEMENTS", 64)  # the Gram sum in several chunks

    def run():
        y, cache = ops.conv2d_forward(x, w, b, stride, 1)
        y16, cache16 = ops.conv2d_forward(x, w_col2im, None, stride, 1)
        g, gcache = ops.gram_forward(y)
        r, mask = ops.relu_forward(y)
        p, pcache = ops.maxpool2d_forward(y, 2, 2)
        return (y, ops.conv2d_backward(y, cache), ops.conv2d_backward(y16, cache16), g, ops.gram_backward(g, gcache),
                r, ops.relu_backward(y, mask), p, ops.maxpool2d_backward(p, pcache))

    monkeypatch.setattr("scratchnst.core.host.THREADS", 1)
    one = run()
    names = ("conv", "conv backward", "col2im backward", "gram", "gram backward", "relu", "relu backward", "maxpool", "maxpool backward")
    for threads in (2, 3, 4):
        monkeypatch.setattr("scratchnst.core.host.THREADS", threads)
        for got, want, what in zip(run(), one, names, strict=True):
            assert np.array_equal(got, want), f"{what} with {threads} threads"


def test_band_bytes_counts_the_larger_pass_up_to_the_tile_bound(monkeypatch):
    """What a memory estimate counts for one 3×3 conv call: the whole image's band (im2col rows
    9·C + output rows F, or the input gradient's 9·F + C, +10% for the flat grid), at most the
    tile bound per worker thread on the host, or the device's one bound."""
    from scratchnst.core.ops import conv

    assert conv.band_bytes(3, 64, 100, 4) == 1.1 * (9 * 64 + 3) * 100 * 4 == conv.band_bytes(64, 3, 100, 4)
    assert conv.band_bytes(16, 16, 100.5, 8, workers=4) == 1.1 * (9 * 16 + 16) * 100.5 * 8
    huge = 1e9  # positions: far over every bound
    assert conv.band_bytes(64, 64, huge, 4, workers=3) == 3 * conv.TILE_BYTES
    assert conv.band_bytes(64, 64, huge, 4, on_device=True) == conv.DEVICE_TILE_BYTES
    monkeypatch.setattr(conv, "TILE_BYTES", 1000)
    assert conv.band_bytes(64, 64, huge, 4, workers=2) == 2000 and conv.tile_bytes(False) == 1000


@pytest.mark.parametrize("shape,kernel,stride,pad", [((1, 1, 2, 2), (1, 3, 3), 1, 0), ((1, 1, 4, 4), (1, 1, 1), 0, 0), ((1, 1, 4, 4), (1, 3, 3), 1, -1)])
def test_conv_rejects_shapes_without_output(shape, kernel, stride, pad):
    x = np.zeros(shape)
    w = np.zeros((kernel[0], shape[1], kernel[1], kernel[2]))
    with pytest.raises(ValueError, match="conv"):
        ops.conv2d_forward(x, w, None, stride, pad)


def test_conv_rejects_channel_mismatch():
    with pytest.raises(ValueError, match=r"\(1, 2, 4, 4\)"):
        ops.conv2d_forward(np.zeros((1, 2, 4, 4)), np.zeros((1, 3, 3, 3)), None)


def test_relu_forward_and_backward(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    y, cache = ops.relu_forward(x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    dout = rng.standard_normal(x.shape)
    np.testing.assert_array_equal(ops.relu_backward(dout, cache), dout * (x > 0))
    # The kink: x == 0 passes no gradient.
    _, cache0 = ops.relu_forward(np.zeros((1, 1, 1, 2)))
    np.testing.assert_array_equal(ops.relu_backward(np.ones((1, 1, 1, 2)), cache0), 0)


@pytest.mark.parametrize("shape,k,stride", POOL_CASES)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_forward_matches_naive_and_backward(rng, shape, k, stride, kind):
    fwd, bwd, reduce = {
        "max": (ops.maxpool2d_forward, ops.maxpool2d_backward, np.max),
        "avg": (ops.avgpool2d_forward, ops.avgpool2d_backward, np.mean),
    }[kind]
    x = tie_free(rng, shape, np, "float64")
    y, _ = fwd(x, k, stride)
    np.testing.assert_allclose(y, pool2d_naive(x, k, stride, reduce), rtol=1e-13)
    r = check_op(kind, lambda v: fwd(v, k, stride), bwd, x, rng, eps=EPS, threshold=THR)
    assert r.passed, r


def test_maxpool_ties_go_to_first_maximum_in_row_major_order():
    x = np.array([[[[1.0, 3.0], [3.0, 3.0]]]])
    y, cache = ops.maxpool2d_forward(x, 2, 2)
    dx = ops.maxpool2d_backward(np.ones_like(y), cache)
    np.testing.assert_array_equal(dx, [[[[0.0, 1.0], [0.0, 0.0]]]])


@pytest.mark.parametrize("shape,k", [((2, 3, 8, 8), 2), ((1, 2, 7, 9), 2), ((1, 2, 9, 12), 3), ((1, 1, 9, 8), 4), ((1, 2, 3, 4), 1)])
def test_maxpool_argmax_is_the_first_maximum_of_each_window_even_with_many_ties(rng, shape, k):
    """Inputs drawn from {0, 1, 2} tie in most windows. np.argmax of a window's row-major ravel is
    its first maximum; both forward paths (k == stride, and the offset scan) must give it."""
    from scratchnst.core.ops.pool import _maxpool_scan

    x = rng.integers(0, 3, shape).astype(np.float32)
    N, C, H, W = shape
    want = np.array(
        [[[[np.argmax(x[n, c, i * k : i * k + k, j * k : j * k + k].ravel()) for j in range(W // k)]
           for i in range(H // k)] for c in range(C)] for n in range(N)]
    )
    y, cache = ops.maxpool2d_forward(x, k, k)
    y_scan, argmax_scan = _maxpool_scan(x, k, k, np.uint8)
    np.testing.assert_array_equal(cache.argmax, want)
    np.testing.assert_array_equal(argmax_scan, want)
    np.testing.assert_array_equal(y, pool2d_naive(x, k, k, np.max))
    np.testing.assert_array_equal(y_scan, y)


def test_pool_odd_sizes_floor_and_leave_remainder_without_gradient(rng):
    x = rng.standard_normal((1, 1, 5, 5))
    y, cache = ops.maxpool2d_forward(x, 2, 2)
    assert y.shape == (1, 1, 2, 2)
    dx = ops.maxpool2d_backward(np.ones_like(y), cache)
    assert np.all(dx[:, :, 4, :] == 0) and np.all(dx[:, :, :, 4] == 0)
    assert dx.sum() == 4


def test_pool_rejects_input_smaller_than_window():
    with pytest.raises(ValueError, match="pool"):
        ops.maxpool2d_forward(np.zeros((1, 1, 1, 4)), 2, 2)


def test_gram_forward_and_nonsymmetric_backward(rng):
    f = rng.standard_normal((2, 4, 3, 5))
    g, cache = ops.gram_forward(f)
    np.testing.assert_allclose(g, gram_naive(f), rtol=1e-12)
    dg = rng.standard_normal((2, 4, 4))
    assert not np.allclose(dg, dg.transpose(0, 2, 1))
    r = check_op("gram", ops.gram_forward, ops.gram_backward, f, rng, eps=EPS, threshold=THR)
    assert r.passed, r


@pytest.mark.parametrize("op", ["conv", "relu", "maxpool", "avgpool", "gram"])
def test_float32_stays_float32(rng, op):
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    if op == "conv":
        w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
        y, cache = ops.conv2d_forward(x, w, np.zeros(3, np.float32), 1, 1)
        dx = ops.conv2d_backward(y, cache)
    else:
        fwd, bwd = {
            "relu": (ops.relu_forward, ops.relu_backward),
            "maxpool": (lambda v: ops.maxpool2d_forward(v, 2, 2), ops.maxpool2d_backward),
            "avgpool": (lambda v: ops.avgpool2d_forward(v, 2, 2), ops.avgpool2d_backward),
            "gram": (ops.gram_forward, ops.gram_backward),
        }[op]
        y, cache = fwd(x)
        dx = bwd(y, cache)
    assert y.dtype == np.float32 and dx.dtype == np.float32


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 3), f=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
       k=st.integers(1, 3), stride=st.integers(1, 3), pad=st.integers(0, 2))
def test_conv_shapes(n, c, f, h, w, k, stride, pad):
    rng = np.random.default_rng(0)
    x, wt = rng.standard_normal((n, c, h, w)), rng.standard_normal((f, c, k, k))
    if h + 2 * pad < k or w + 2 * pad < k:
        with pytest.raises(ValueError):
            ops.conv2d_forward(x, wt, None, stride=stride, pad=pad)
        return
    y, cache = ops.conv2d_forward(x, wt, np.zeros(f), stride=stride, pad=pad)
    assert y.shape == (n, f, (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1)
    assert ops.conv2d_backward(np.ones_like(y), cache).shape == x.shape


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9), k=st.integers(1, 3),
       stride=st.integers(1, 3), kind=st.sampled_from(["max", "avg"]))
def test_pool_and_gram_shapes(n, c, h, w, k, stride, kind):
    x = np.random.default_rng(1).standard_normal((n, c, h, w))
    fwd, bwd = {"max": (ops.maxpool2d_forward, ops.maxpool2d_backward), "avg": (ops.avgpool2d_forward, ops.avgpool2d_backward)}[kind]
    if h < k or w < k:
        with pytest.raises(ValueError):
            fwd(x, k, stride)
        return
    y, cache = fwd(x, k, stride)
    assert y.shape == (n, c, (h - k) // stride + 1, (w - k) // stride + 1)
    assert bwd(np.ones_like(y), cache).shape == x.shape
    g, gcache = ops.gram_forward(x)
    assert g.shape == (n, c, c) and ops.gram_backward(np.ones_like(g), gcache).shape == x.shape
