"""scratchnst.app.picture.color: the linear colour map matches the content's mean and covariance,
histogram matching takes the reference's levels, and both bring the content's palette to a run."""

import numpy as np
import pytest
from PIL import Image

from scratchnst.app.files import images as im
from scratchnst.app.picture import color
from scratchnst.app.picture import stylize as stylize_module


def _gaussian_image(rng, mean, cov, shape):
    return np.clip(np.rint(rng.multivariate_normal(mean, cov, shape)), 0, 255).astype(np.uint8)


def test_linear_map_matches_mean_and_covariance(rng):
    style = _gaussian_image(rng, [60, 140, 200], [[400, 100, 0], [100, 300, 50], [0, 50, 200]], (40, 50))
    content = _gaussian_image(rng, [180, 90, 70], [[900, -200, 100], [-200, 500, 0], [100, 0, 300]], (30, 20))
    s, c = style.reshape(-1, 3).astype(float), content.reshape(-1, 3).astype(float)
    a, b = color.linear_map(s, c)
    mu, cov = color.mean_cov(s @ a.T + b)
    mu_c, cov_c = color.mean_cov(c)
    assert np.allclose(mu, mu_c, atol=1e-9) and np.allclose(cov, cov_c, atol=2 * color.COVARIANCE_FLOOR)
    assert np.allclose(np.tril(np.linalg.cholesky(cov_c)), np.linalg.cholesky(cov_c))  # the Cholesky variant
    out = color.linear_transfer(style, content)  # rounded and clipped, but the moments stay close
    mu_o, cov_o = color.mean_cov(out.reshape(-1, 3).astype(float))
    assert out.shape == style.shape and np.abs(mu_o - mu_c).max() < 1.5 and np.abs(cov_o - cov_c).max() < 0.03 * np.abs(cov_c).max()


def test_linear_transfer_of_a_flat_style_does_not_fail():
    out = color.linear_transfer(np.full((8, 8, 3), 90, np.uint8), np.full((8, 8, 3), 30, np.uint8))
    assert np.all(out == 30)


def test_histogram_matching_takes_the_reference_levels():
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2).repeat(4, axis=0)  # uniform 0..255
    ref = np.zeros((10, 10, 3), np.uint8)
    ref[:5], ref[5:] = (50, 100, 150), (200, 210, 220)  # each channel: two levels, half each
    out = color.match_histograms(ramp, ref)
    for c, (lo, hi) in enumerate([(50, 200), (100, 210), (150, 220)]):
        assert set(np.unique(out[..., c])) <= set(range(lo, hi + 1))
        assert np.all(out[:, :60, c] == lo) and np.all(out[:, 196:, c] == hi)  # between the levels' quantiles: interpolated
        assert np.all(np.diff(out[0, :, c].astype(int)) >= 0)  # monotone: the ranks are kept
        assert abs(out[..., c].mean() - (lo + hi) / 2) < 0.05 * (hi - lo)


@pytest.mark.weights
@pytest.mark.parametrize("mode", ["linear", "histogram"])
def test_colour_modes_bring_the_content_palette(two_regions, vgg16, tiny, mode):
    pics, run = two_regions, tiny.but(size=40, iterations=3)
    res = stylize_module.stylize(str(pics["content"]), [str(pics["red"])], color=mode, net=vgg16(), **run)
    plain = stylize_module.stylize(str(pics["content"]), [str(pics["red"])], net=vgg16(), **run)
    assert res.manifest["args"]["color"] == mode
    target = np.asarray(Image.open(pics["content"]), dtype=float).reshape(-1, 3).mean(0)
    got = np.asarray(res.image, dtype=float).reshape(-1, 3).mean(0)
    base = np.asarray(plain.image, dtype=float).reshape(-1, 3).mean(0)
    assert np.abs(got - target).max() < np.abs(base - target).max()


@pytest.mark.weights
def test_preserve_colors_keeps_the_content_chroma(pics, vgg16, tiny):
    res = stylize_module.stylize(str(pics.content), [str(pics.style)], preserve_colors=True, net=vgg16(), **tiny.but(size=40, iterations=3))
    content = np.asarray(im.resize_to(im.load_image(pics.content), *res.image.size))
    ycc = lambda a: a.astype(float) @ np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]).T  # noqa: E731
    got, want = ycc(np.asarray(res.image)), ycc(content)
    # Chroma is the content's (up to rounding and gamut clipping), luma is not.
    assert np.median(np.abs(got[..., 1:] - want[..., 1:])) <= 1.0
    assert np.median(np.abs(got[..., 0] - want[..., 0])) > 1.0
