"""The picture controls of Gatys et al. 2017 (issue #17): style regions, colour, alpha, normalised
gradients. Core maths on random nets and arrays; the workflow on tiny generated images."""

from __future__ import annotations

import numpy as np
import pytest

from scratchnst import gradcheck
from scratchnst.core.losses import masked_style_loss, style_loss
from scratchnst.core.objective import NSTObjective, layer_mask
from scratchnst.errors import ScratchnstError


# -- the masked Gram term -------------------------------------------------------------------------


# -- normalised gradients -------------------------------------------------------------------------


# -- colour ---------------------------------------------------------------------------------------

from PIL import Image  # noqa: E402

from scratchnst.app.picture import color  # noqa: E402
from scratchnst.app.picture import stylize as stylize_module  # noqa: E402
from scratchnst.app.cli import main  # noqa: E402
from scratchnst.app.picture.masks import load_mask, masks_at  # noqa: E402
from scratchnst.app.picture.settings import Settings  # noqa: E402


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


# -- settings and masks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, needle",
    [
        ({"color": "sepia"}, "--color: unknown value"),
        ({"preserve_colors": True, "color": "histogram"}, "contradicts --color histogram"),
        ({"normalize_gradients": True}, "needs --optimizer adam"),
        ({"style_masks": ["a.png"]}, "has 1 masks for 2 style images"),
        ({"style_masks": ["a.png", "b.png"], "style_blend": (1, 1)}, "--style-blend"),
    ],
)
def test_bad_control_settings(options, needle):
    with pytest.raises(ScratchnstError, match=needle):
        Settings(**options).validated(2)


def test_preserve_colors_is_color_luminance():
    s = Settings(preserve_colors=True).validated(1)
    assert s.color == "luminance" and s.preserve_colors
    s = Settings(color="luminance").validated(1)
    assert s.preserve_colors


def test_masks_load_and_resize(tmp_path):
    grey = np.zeros((20, 30), np.uint8)
    grey[:, :15] = 255
    Image.fromarray(grey).save(tmp_path / "m.png")
    m = load_mask(tmp_path / "m.png", 0)
    assert m.shape == (20, 30) and m.max() == 1 and m.min() == 0
    (small,) = masks_at([m], 15, 10)  # area averaging: column 7 straddles the edge
    assert np.allclose(small[:, :7], 1) and np.allclose(small[:, 8:], 0) and np.isclose(small[0, 7], 0.5)
    assert np.allclose(load_mask(np.full((4, 4), 0.25), 0), 0.25) and load_mask(np.eye(3, dtype=bool), 0).sum() == 3


def _mask_files(tmp_path, size=(48, 40)):
    w, h = size
    left = np.zeros((h, w), np.uint8)
    left[:, : w // 2] = 255
    paths = [tmp_path / "left.png", tmp_path / "right.png"]
    Image.fromarray(left).save(paths[0])
    Image.fromarray(255 - left).save(paths[1])
    return paths


@pytest.mark.parametrize("case", ["colour", "zero", "unreadable", "aspect", "count", "array"])
def test_bad_masks_are_one_line_exit_2_before_the_net_loads(tmp_path, capsys, monkeypatch, rng, case):
    def no_net(*a, **k):
        raise AssertionError("the net was loaded before the masks were checked")

    monkeypatch.setattr(stylize_module, "load_vgg16", no_net)
    content, style = tmp_path / "c.png", tmp_path / "s.png"
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(content)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(style)
    masks = _mask_files(tmp_path)
    needle = {"colour": "must be greyscale", "zero": "all zero", "unreadable": "not an image", "aspect": "shapes differ",
              "count": "has 1 masks for 2 style images", "array": "must be 2-D"}[case]
    if case == "colour":
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(masks[1])
    elif case == "zero":
        Image.fromarray(np.zeros((40, 48), np.uint8)).save(masks[1])
    elif case == "unreadable":
        masks[1].write_bytes(b"not a png at all")
    elif case == "aspect":
        Image.fromarray(np.full((40, 20), 255, np.uint8)).save(masks[1])
    if case == "array":
        with pytest.raises(ScratchnstError, match=needle):
            stylize_module.stylize(str(content), [str(style)] * 2, style_masks=[np.ones((40, 48)), np.ones((40, 48, 3))], quiet=True)
        return
    argv = ["stylize", str(content), str(style), str(style), "-o", str(tmp_path / "o.png"), "--quiet", "--style-masks", *map(str, masks)]
    if case == "count":
        argv = argv[:-1]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err


# -- through the workflow (real weights, tiny sizes) ----------------------------------------------

TINY = dict(size=40, iterations=3, scales=(1.0,), quiet=True)


@pytest.fixture
def pics(tmp_path, rng):
    """A 48x40 content, two stripy styles (red, blue) and two complementary half masks."""
    yy, xx = np.mgrid[0:40, 0:48]
    content = np.stack([100 + 60 * np.sin(xx / 5), 120 + 50 * np.cos(yy / 4), 90 + 40 * np.sin((xx + yy) / 7)], -1)
    red = np.stack([200 + 50 * np.sin(xx / 2), 40 + 30 * np.sin(yy / 3), 40 + 0 * xx], -1)
    blue = np.stack([40 + 0 * xx, 60 + 30 * np.cos(xx / 3), 200 + 50 * np.sin(yy / 2)], -1)
    paths = {}
    for name, a in (("content", content), ("red", red), ("blue", blue)):
        paths[name] = tmp_path / f"{name}.png"
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(paths[name])
    paths["masks"] = _mask_files(tmp_path)
    return paths


@pytest.mark.weights
def test_regions_normalized_gradients_and_the_manifest(tmp_path, pics, vgg_weights_path, monkeypatch, capsys):
    monkeypatch.setenv("SCRATCHNST_WEIGHTS", str(vgg_weights_path))
    out = tmp_path / "out.png"
    argv = ["stylize", str(pics["content"]), str(pics["red"]), str(pics["blue"]), "-o", str(out), "--size", "40", "--iterations", "4",
            "--scales", "1", "--quiet", "--init", "content", "--optimizer", "adam", "--learning-rate", "4", "--normalize-gradients",
            "--style-weight", "3", "--style-masks", *map(str, pics["masks"])]
    assert main(argv) == 0, capsys.readouterr().err
    import json

    args = json.loads(out.with_suffix(".json").read_text())["args"]
    assert args["style_masks"] == [str(p.resolve()) for p in pics["masks"]] and args["normalize_gradients"] and args["color"] == "none"
    rgb = np.asarray(Image.open(out), dtype=float)
    start = np.asarray(Image.open(pics["content"]).resize((40, 33), Image.Resampling.LANCZOS), dtype=float)
    change = rgb - start  # red style on the left, blue on the right: the halves move apart in red minus blue
    shift = change[..., 0] - change[..., 2]
    assert shift[:, :18].mean() > shift[:, 22:].mean() + 1


@pytest.mark.weights
@pytest.mark.parametrize("mode", ["linear", "histogram"])
def test_colour_modes_bring_the_content_palette(pics, vgg_weights_path, mode):
    net = stylize_module.load_vgg16(vgg_weights_path)
    res = stylize_module.stylize(str(pics["content"]), [str(pics["red"])], color=mode, net=net, **TINY)
    plain = stylize_module.stylize(str(pics["content"]), [str(pics["red"])], net=net, **TINY)
    assert res.manifest["args"]["color"] == mode
    target = np.asarray(Image.open(pics["content"]), dtype=float).reshape(-1, 3).mean(0)
    got = np.asarray(res.image, dtype=float).reshape(-1, 3).mean(0)
    base = np.asarray(plain.image, dtype=float).reshape(-1, 3).mean(0)
    assert np.abs(got - target).max() < np.abs(base - target).max()


@pytest.mark.weights
@pytest.mark.parametrize("suffix", [".png", ".webp", ".jpg"])
def test_an_rgba_content_keeps_its_alpha(tmp_path, pics, vgg_weights_path, suffix, capsys):
    rgba = Image.open(pics["content"]).convert("RGBA")
    alpha = np.zeros((40, 48), np.uint8)
    alpha[8:32, 10:40] = 255
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(tmp_path / "rgba.png")
    out = tmp_path / f"out{suffix}"
    net = stylize_module.load_vgg16(vgg_weights_path)
    res = stylize_module.stylize(str(tmp_path / "rgba.png"), [str(pics["red"])], out=out, net=net, **TINY)
    err = capsys.readouterr().err
    saved = Image.open(out)
    if suffix == ".jpg":
        assert saved.mode == "RGB" and "cannot carry the content's alpha" in err and len(err.strip().splitlines()) == 1
        return
    assert res.image.mode == "RGBA" and saved.mode == "RGBA" and saved.size == (40, 33) and "alpha" not in err
    a = np.asarray(saved.getchannel("A"))
    assert a[10:25, 15:32].min() > 200 and a[:3].max() < 30  # the content's alpha, resized
