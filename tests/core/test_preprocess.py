"""scratchnst.core.preprocess: RGB uint8 ↔ the mean-subtracted BGR (1, 3, H, W) array VGG-16 takes, exact
both ways, any array back to a valid image."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from scratchnst.core.preprocess import deprocess, preprocess


@pytest.mark.parametrize("h, w", [(16, 16), (17, 31), (40, 23), (64, 128)])
def test_round_trip_exact(rng, h, w):
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    for dtype in ("float32", "float64"):
        x = preprocess(a, dtype=dtype)
        assert x.shape == (1, 3, h, w) and x.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(deprocess(x), a)
        np.testing.assert_array_equal(deprocess(x[0]), a)


def test_channel_order_and_mean():
    a = np.zeros((16, 20, 3), np.uint8)
    a[..., 0] = 255  # pure red
    x = preprocess(a, dtype="float64")
    np.testing.assert_allclose(x[0, 2], 255 - 123.68)  # BGR: red is channel 2
    np.testing.assert_allclose(x[0, 1], -116.779)
    np.testing.assert_allclose(x[0, 0], -103.939)


def test_preprocess_pil_equals_array(rng):
    a = rng.integers(0, 256, (21, 34, 3), dtype=np.uint8)
    np.testing.assert_array_equal(preprocess(Image.fromarray(a)), preprocess(a))
    grey = Image.fromarray(a[..., 0])  # mode L -> RGB
    np.testing.assert_array_equal(deprocess(preprocess(grey)), np.repeat(a[..., :1], 3, 2))


@pytest.mark.parametrize("h, w", [(15, 40), (40, 15), (1, 1)])
def test_preprocess_too_small(h, w):
    with pytest.raises(ValueError, match="smaller than 16"):  # the core's ValueError: load_image refuses such files first
        preprocess(np.zeros((h, w, 3), np.uint8))


def test_preprocess_rejects_bad_arrays():
    with pytest.raises(ValueError):
        preprocess(np.zeros((20, 20, 3), np.float32))
    with pytest.raises(ValueError):
        preprocess(np.zeros((20, 20), np.uint8))
    with pytest.raises(ValueError):
        preprocess(np.zeros((20, 20, 3), np.uint8), dtype="int32")


def test_deprocess_rounds_and_clips():
    x = np.zeros((1, 3, 16, 16))
    x[0, 0] = 1000.0  # B far above 255
    x[0, 1] = -1000.0  # G far below 0
    x[0, 2, 0, 0] = np.nan
    x[0, 2, 0, 1] = 0.6 - 123.68 + 10  # R = 10.6 -> 11
    out = deprocess(x)
    assert out.dtype == np.uint8 and out.shape == (16, 16, 3)
    assert (out[..., 2] == 255).all() and (out[..., 1] == 0).all()
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 11


@settings(max_examples=60, deadline=None)
@given(st.tuples(st.integers(16, 40), st.integers(16, 40)).flatmap(
    lambda hw: arrays(np.uint8, (hw[0], hw[1], 3))))
def test_round_trip_property(a):
    x = preprocess(a)
    assert x.shape == (1, 3) + a.shape[:2]
    np.testing.assert_array_equal(deprocess(x), a)


@pytest.mark.gpu
def test_preprocess_cupy_round_trip(rng):
    from scratchnst.core.backend import get_backend, is_cupy

    cupy = get_backend("auto")
    if not is_cupy(cupy):
        pytest.skip("needs CuPy and a CUDA device")
    a = rng.integers(0, 256, (19, 23, 3), dtype=np.uint8)
    x = preprocess(a, xp=cupy)
    assert isinstance(x, cupy.ndarray) and x.dtype == cupy.float32
    np.testing.assert_array_equal(cupy.asnumpy(x), preprocess(a))
    np.testing.assert_array_equal(deprocess(x), a)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.tuples(st.just(1), st.just(3), st.integers(1, 8), st.integers(1, 8)),
              elements=st.floats(allow_nan=True, allow_infinity=True, width=64)))
def test_deprocess_of_anything_is_a_valid_image(x):
    rgb = deprocess(x)
    assert rgb.dtype == np.uint8 and rgb.shape == (x.shape[2], x.shape[3], 3)


@settings(max_examples=30, deadline=None)
@given(st.tuples(st.integers(16, 33), st.integers(16, 33)).flatmap(lambda hw: arrays(np.uint8, (hw[0], hw[1], 3))),
       st.sampled_from(["float32", "float64"]))
def test_preprocess_deprocess_round_trip_any_dtype(a, dtype):
    x = preprocess(a, dtype=dtype)
    assert x.dtype == np.dtype(dtype) and x.shape == (1, 3, *a.shape[:2])
    np.testing.assert_array_equal(deprocess(x), a)
