"""scratchnst.core.losses: the masked style term (Gatys et al. 2017's regions) against the plain style
term, the naive weighted Gram matrix and finite differences; the temporal term (Ruder et al. 2016):
its value, no gradient outside the mask, finite differences."""

import numpy as np

from scratchnst import gradcheck
from scratchnst.core.losses import masked_style_loss, style_loss, temporal_loss


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


def test_temporal_loss_value_and_gradient(rng):
    x, target = rng.standard_normal((2, 1, 3, 5, 6))
    mask = (rng.uniform(size=(1, 1, 5, 6)) > 0.3).astype(np.float64)
    value, dx = temporal_loss(x, target, mask)
    assert np.isclose(value, np.sum(mask * (x - target) ** 2) / x.size)
    assert np.all(dx[np.broadcast_to(mask, x.shape) == 0] == 0)
    r = gradcheck.check_loss("temporal", lambda v: temporal_loss(v, target, mask), x.copy(), eps=1e-6, threshold=1e-7)
    assert r.passed, r
    assert any(r.op == "temporal" and r.passed for r in gradcheck.op_checks(rng))
