"""The picture controls of Gatys et al. 2017 (issue #17): style regions, colour, alpha, normalised
gradients. Core maths on random nets and arrays; the workflow on tiny generated images."""

from __future__ import annotations

import numpy as np
import pytest

from scratchnst import gradcheck
from scratchnst.core.losses import masked_style_loss, style_loss
from scratchnst.core.objective import NSTObjective, layer_mask
from scratchnst.errors import ScratchnstError


def _images(rng, n_styles=2, size=32):
    content = rng.uniform(-100, 100, (1, 3, size, size))
    styles = [rng.uniform(-100, 100, (1, 3, size + 4 * k, size)) for k in range(n_styles)]
    return content, styles


def _halves(size=32):
    left = np.zeros((size, size))
    left[:, : size // 2] = 1
    return [left, 1 - left]


# -- the masked Gram term -------------------------------------------------------------------------


def test_masked_style_with_a_mask_of_ones_is_the_style_term(rng):
    f = rng.standard_normal((1, 4, 3, 5))
    a = rng.standard_normal((1, 4, 4))
    a = a @ a.transpose(0, 2, 1)
    value, df = masked_style_loss(f, np.ones((1, 1, 3, 5)), a / 15)
    ref_value, ref_df = style_loss(f, a)
    assert np.isclose(value, ref_value, rtol=1e-12) and np.allclose(df, ref_df, rtol=1e-10)


def test_masked_gram_is_the_weighted_mean_of_outer_products(rng):
    f = rng.standard_normal((1, 3, 2, 4))
    m = rng.uniform(0, 1, (1, 1, 2, 4))
    F, w = f.reshape(3, -1), m.reshape(-1)
    g_hat = sum(w[p] * np.outer(F[:, p], F[:, p]) for p in range(8)) / w.sum()  # the naive loop
    value, _ = masked_style_loss(f, m, np.zeros((1, 3, 3)))
    assert np.isclose(value, (g_hat**2).sum() / (4 * 9))


def test_masked_style_gradient_is_right(rng):
    f = rng.standard_normal((1, 4, 3, 5))
    a = rng.standard_normal((1, 4, 4))
    m = gradcheck.soft_mask(rng, f.shape, np, "float64")
    r = gradcheck.check_loss("masked_style", lambda v: masked_style_loss(v, m, a), f, eps=1e-5, threshold=1e-7)
    assert r.passed, r


def test_layer_mask_lines_up_with_the_activations(rng):
    net = gradcheck.random_vgg(rng)
    x = rng.standard_normal((1, 3, 37, 45))
    feats = net.extract(x, ["relu1_1", "relu3_1", "relu5_1", "pool5"])
    mask = np.ones((1, 1, 37, 45))
    for layer, f in feats.items():
        assert layer_mask(mask, layer).shape[2:] == f.shape[2:]
    half = np.zeros((1, 1, 8, 8))
    half[..., :4] = 1
    assert np.array_equal(layer_mask(half, "relu2_1")[0, 0], np.array([[1, 1, 0, 0]] * 4))


def test_objective_with_regions_gradchecks(rng):
    r = gradcheck.objective_check(gradcheck.random_vgg(rng), rng, eps=1e-4, coords=16, threshold=1e-7, name="regions", regions=True)
    assert r.passed, r


def test_one_mask_of_ones_is_the_unmasked_objective(rng):
    net = gradcheck.random_vgg(rng)
    content, styles = _images(rng, 1)
    x = rng.uniform(-100, 100, content.shape)
    plain = NSTObjective(net, content, styles, normalize="size").evaluate(x)
    masked = NSTObjective(net, content, styles, normalize="size", style_masks=[np.ones((32, 32))]).evaluate(x)
    assert np.isclose(plain.loss, masked.loss, rtol=1e-12)
    assert np.allclose(plain.grad, masked.grad, rtol=1e-9, atol=1e-12 * abs(plain.grad).max())


def test_each_region_sees_only_its_own_style(rng):
    net = gradcheck.random_vgg(rng)
    content, styles = _images(rng, 2)
    x = rng.uniform(-100, 100, content.shape)
    left, right = _halves()
    obj = NSTObjective(net, content, styles, style_masks=[left, right], content_weight=0, tv_weight=0)
    grad = obj.loss_and_grad(x)[1]
    assert np.abs(grad).sum() > 0
    # Style 1 on the left only: its gradient at relu1_1 is zero on the right half (the grid is the image's).
    only = NSTObjective(net, content, styles[:1], style_masks=[left], content_weight=0, tv_weight=0, style_layers=["relu1_1"])
    feats, _ = net.forward(x, ["relu1_1"])
    (term,) = only.feature_terms(feats)
    assert np.all(term.grad[..., 16:] == 0) and np.abs(term.grad[..., :16]).sum() > 0


@pytest.mark.parametrize(
    "masks, blend, needle",
    [
        ([np.ones((32, 32))], None, "has 1 masks for 2 style images"),
        ([np.ones((32, 32)), np.zeros((32, 32))], None, "not all zero"),
        ([np.ones((32, 32)), -np.ones((32, 32))], None, "≥ 0"),
        ([np.ones((32, 32)), np.full((32, 32), np.nan)], None, "finite"),
        ([np.ones((32, 32)), np.ones((16, 32))], None, "the content image"),
        (_halves(), (1, 2), "--style-blend"),
    ],
)
def test_bad_masks_are_refused(rng, masks, blend, needle):
    net = gradcheck.random_vgg(rng)
    content, styles = _images(rng, 2)
    with pytest.raises(ScratchnstError, match=needle):
        NSTObjective(net, content, styles, style_masks=masks, style_blend=blend)


# -- normalised gradients -------------------------------------------------------------------------


def test_normalize_gradients_gives_each_layer_unit_l1_norm(rng):
    net = gradcheck.random_vgg(rng)
    content, styles = _images(rng, 1)
    x = rng.uniform(-100, 100, content.shape)
    kw = dict(content_weight=2.0, style_weight=3.0, tv_weight=0, content_layers=[], style_layers=["relu2_1"])
    plain = NSTObjective(net, content, styles, **kw)
    normed = NSTObjective(net, content, styles, normalize_gradients=True, **kw)
    feats, caches = net.forward(x, ["relu2_1"])
    (term,) = plain.feature_terms(feats)
    expected = net.backward({"relu2_1": 3.0 * term.grad / (np.abs(term.grad).sum() + 1e-8)}, caches)
    e = normed.evaluate(x)
    assert e.loss == plain.evaluate(x).loss  # the loss is untouched, only the gradient is rescaled
    assert np.allclose(e.grad, expected, rtol=1e-10)
