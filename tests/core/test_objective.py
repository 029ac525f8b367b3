"""The Gatys objective: value against the formula written out independently, gradient by finite
differences; the controls of Gatys et al. 2017 (style regions, normalised gradients) on random nets."""

import numpy as np
import pytest

from scratchnst.gradcheck import THRESHOLDS, objective_check, random_vgg
from scratchnst.core.objective import NSTObjective, layer_mask
from scratchnst.core.ops.reference import gram_naive
from scratchnst.errors import ScratchnstError


def _image(rng, h, w):
    return rng.uniform(-100, 100, (1, 3, h, w))


def _formula(net, x, content, styles, *, cl, sl, alpha, beta, gamma, blend, layer_w, per_size=False):
    """L(x) from the issue's formula, with naive Gram matrices; styles here share x's size.
    per_size: the content term as a mean over each layer's activations, TV over the pixel values."""
    fx = net.extract(x, cl + sl)
    fc = net.extract(content, cl)
    total = sum(alpha * 0.5 * np.sum((fx[l] - fc[l]) ** 2) / (fx[l].size if per_size else 1) for l in cl)
    for l, wl in zip(sl, layer_w):
        A = sum(b * gram_naive(net.extract(s, [l])[l]) for b, s in zip(blend, styles))
        G = gram_naive(fx[l])
        _, N, H, W = fx[l].shape
        total += beta * wl * np.sum((G - A) ** 2) / (4 * N**2 * (H * W) ** 2)
    tv = np.sum((x[:, :, 1:] - x[:, :, :-1]) ** 2) + np.sum((x[:, :, :, 1:] - x[:, :, :, :-1]) ** 2)
    return total + gamma * tv / (x.size if per_size else 1)


def test_loss_equals_the_formula(rng):
    net = random_vgg(rng)
    content, s1, s2, x = (_image(rng, 32, 40) for _ in range(4))
    kw = dict(cl=["relu4_1", "relu2_2"], sl=["relu1_1", "relu3_1", "relu5_1"], alpha=2.0, beta=30.0, gamma=0.1)
    obj = NSTObjective(
        net, content, [s1, s2], content_layers=kw["cl"], style_layers=kw["sl"],
        content_weight=2.0, style_weight=30.0, tv_weight=0.1, style_blend=[3, 1], style_layer_weights=[1, 2, 0.5],
    )
    loss, grad = obj.loss_and_grad(x.copy())
    expected = _formula(net, x, content, [s1, s2], blend=[0.75, 0.25], layer_w=[1, 2, 0.5], **kw)
    assert loss == pytest.approx(expected, rel=1e-12)
    assert grad.shape == x.shape and np.isfinite(grad).all()
    evaluation = obj.evaluate(x.copy())
    assert evaluation.loss == loss and np.array_equal(evaluation.grad, grad)
    terms = evaluation.terms
    assert loss == pytest.approx(2.0 * terms["content"] + 30.0 * terms["style"] + 0.1 * terms["tv"], rel=1e-12)


def test_options_as_an_object_or_as_keywords_are_the_same_objective(rng):
    from scratchnst.core.objective import ObjectiveOptions

    net = random_vgg(rng)
    content, s1, s2, x = (_image(rng, 24, 28) for _ in range(4))
    options = ObjectiveOptions(style_layers=("relu1_1", "relu3_1"), style_weight=30.0, style_blend=(3, 1), normalize="size")
    by_object = NSTObjective(net, content, [s1, s2], options)
    by_keywords = NSTObjective(net, content, [s1, s2], style_layers=("relu1_1", "relu3_1"), style_weight=30.0,
                               style_blend=(3, 1), normalize="size")
    a, b = by_object.evaluate(x.copy()), by_keywords.evaluate(x.copy())
    assert a.loss == b.loss and np.array_equal(a.grad, b.grad) and a.terms == b.terms
    assert by_object.options == by_keywords.options == options
    assert (by_object.style_blend, by_object.content_weight) == ([0.75, 0.25], 1.0)  # checked, defaults filled in
    # keywords set fields of a given options object; a name that is no option is a TypeError
    tv_off = NSTObjective(net, content, [s1, s2], options, tv_weight=0.0)
    assert tv_off.tv_weight == 0.0 and tv_off.style_weight == 30.0 and options.tv_weight is None
    with pytest.raises(TypeError, match="style_wieght"):
        NSTObjective(net, content, [s1], style_wieght=1.0)


def test_size_normalisation_is_the_formula_per_activation(rng):
    net = random_vgg(rng)
    content, s1, x = (_image(rng, 24, 36) for _ in range(3))
    kw = dict(cl=["relu4_1", "relu2_2"], sl=["relu1_1", "relu3_1"], alpha=2.0, beta=30.0, gamma=0.1)
    obj = NSTObjective(
        net, content, [s1], content_layers=kw["cl"], style_layers=kw["sl"], normalize="size",
        content_weight=2.0, style_weight=30.0, tv_weight=0.1,
    )
    expected = _formula(net, x, content, [s1], blend=[1.0], layer_w=[0.5, 0.5], per_size=True, **kw)
    assert obj.loss_and_grad(x.copy())[0] == pytest.approx(expected, rel=1e-12)
    r = objective_check_of(obj, x, rng)
    assert r.passed, r


def objective_check_of(obj, x, rng):
    from scratchnst.gradcheck import check_loss

    return check_loss("size-normalised objective", obj.loss_and_grad, x.copy(), eps=1e-5, threshold=THRESHOLDS["float64"],
                      coords=sorted(rng.choice(x.size, size=12, replace=False).tolist()))


def test_size_normalisation_defaults_and_bad_values(rng):
    from scratchnst.core.objective import DEFAULT_WEIGHTS

    net = random_vgg(rng)
    content, style = _image(rng, 32, 32), _image(rng, 32, 32)
    obj = NSTObjective(net, content, [style], normalize="size")
    assert (obj.content_weight, obj.style_weight, obj.tv_weight) == DEFAULT_WEIGHTS["size"]
    raw = NSTObjective(net, content, [style])  # the seed formula stays the API's default
    assert raw.normalize == "none" and (raw.content_weight, raw.style_weight, raw.tv_weight) == DEFAULT_WEIGHTS["none"]
    with pytest.raises(ValueError, match=r"^unknown normalize 'pixels' \(choose from size, none\)$"):
        NSTObjective(net, content, [style], normalize="pixels")
    with pytest.raises(ValueError, match=r"^style_weight must be a finite number ≥ 0 \(got nan\)$"):
        NSTObjective(net, content, [style], style_weight=float("nan"))


def test_default_layer_weights_are_uniform(rng):
    net = random_vgg(rng)
    content, style, x = (_image(rng, 32, 32) for _ in range(3))
    obj = NSTObjective(net, content, [style], content_weight=0, style_weight=1, tv_weight=0)
    expected = _formula(net, x, content, [style], cl=[], sl=list(obj.style_layers), alpha=0, beta=1, gamma=0, blend=[1], layer_w=[0.2] * 5)
    assert obj.loss_and_grad(x)[0] == pytest.approx(expected, rel=1e-12)
    assert obj.content_layers == ["relu4_1"] and obj.style_layers == ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]


def test_style_of_another_size_is_rescaled_per_position(rng):
    """A style image tiled 2×2 has the same per-position statistics: after rescaling by M/M_style its
    target Gram matrices agree with the single tile's (away from the tile borders the conv sees)."""
    net = random_vgg(rng)
    tile = _image(rng, 32, 32)
    content = _image(rng, 32, 32)
    small = NSTObjective(net, content, [tile], style_layers=["relu1_1"])
    big = NSTObjective(net, content, [np.tile(tile, (1, 1, 2, 2))], style_layers=["relu1_1"])
    a, b = small.grams["relu1_1"], big.grams["relu1_1"]
    assert np.max(np.abs(a - b)) / np.max(np.abs(a)) < 0.15  # only the seams differ
    raw = 4 * a  # what an unrescaled Gram matrix of the 2×2 tiling would be near
    assert np.max(np.abs(raw - b)) > np.max(np.abs(a - b))


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_objective_gradient_finite_differences(rng, pooling):
    net = random_vgg(rng, pooling=pooling)
    r = objective_check(net, rng, size=(32, 36), coords=40, eps=1e-4, threshold=THRESHOLDS["float64"], name="objective")
    assert r.passed, r


def test_unknown_layer_and_bad_weights_are_rejected(rng):
    net = random_vgg(rng)
    c = _image(rng, 32, 32)
    # The core's ValueError names its own parameters; no command-line flag (the application adds those).
    bad = [
        (dict(content_layers=["relu9_9"]), "^unknown layer 'relu9_9'"),
        (dict(style_weight=float("nan")), "^style_weight must be a finite number"),
        (dict(tv_weight="x"), "^tv_weight must be a number"),
        (dict(style_blend=[1.0]), "^style_blend has 1 values for 2 style images$"),
        (dict(style_layer_weights=[1.0, 2.0]), "^style_layer_weights has 2 values for 5 style layers$"),
        (dict(style_blend=[0, 0]), "^style_blend must not sum to 0$"),
    ]
    for options, needle in bad:
        with pytest.raises(ValueError, match=needle) as info:
            NSTObjective(net, c, [c, c], **options)
        assert not isinstance(info.value, ScratchnstError) and "--" not in str(info.value)


def test_float32_objective_stays_float32_and_agrees_with_float64(rng):
    net64 = random_vgg(np.random.default_rng(3))
    net32 = random_vgg(np.random.default_rng(3), dtype="float32")
    content, style, x = (_image(rng, 32, 32) for _ in range(3))
    l64, g64 = NSTObjective(net64, content, [style], tv_weight=1e-3).loss_and_grad(x)
    l32, g32 = NSTObjective(net32, content.astype(np.float32), [style.astype(np.float32)], tv_weight=1e-3).loss_and_grad(x.astype(np.float32))
    assert g32.dtype == np.float32
    assert l32 == pytest.approx(l64, rel=1e-4)
    assert np.max(np.abs(g32 - g64)) / np.max(np.abs(g64)) < 1e-4


@pytest.mark.weights
def test_objective_gradient_through_the_real_vgg16(rng, vgg16):
    """The full objective through the real network (float64, 32×32), at sampled pixels."""
    net = vgg16(backend="numpy", dtype="float64")
    r = objective_check(net, rng, coords=16, eps=1e-4, threshold=THRESHOLDS["float64"], name="objective (VGG-16)")
    assert r.passed, r


# -- style regions and normalised gradients (Gatys et al. 2017) ----------------------------------


def _images(rng, n_styles=2, size=32):
    content = _image(rng, size, size)
    styles = [_image(rng, size + 4 * k, size) for k in range(n_styles)]
    return content, styles


def _halves(size=32):
    left = np.zeros((size, size))
    left[:, : size // 2] = 1
    return [left, 1 - left]


def test_layer_mask_lines_up_with_the_activations(rng):
    net = random_vgg(rng)
    x = rng.standard_normal((1, 3, 37, 45))
    feats = net.extract(x, ["relu1_1", "relu3_1", "relu5_1", "pool5"])
    assert list(feats) == ["relu1_1", "relu3_1", "relu5_1", "pool5"]
    mask = np.ones((1, 1, 37, 45))
    for layer, f in feats.items():
        assert layer_mask(mask, layer).shape[2:] == f.shape[2:]
    half = np.zeros((1, 1, 8, 8))
    half[..., :4] = 1
    assert np.array_equal(layer_mask(half, "relu2_1")[0, 0], np.array([[1, 1, 0, 0]] * 4))


def test_objective_with_regions_gradchecks(rng):
    r = objective_check(random_vgg(rng), rng, eps=1e-4, coords=16, threshold=1e-7, name="regions", regions=True)
    assert r.passed, r


def test_one_mask_of_ones_is_the_unmasked_objective(rng):
    net = random_vgg(rng)
    content, styles = _images(rng, 1)
    x = rng.uniform(-100, 100, content.shape)
    plain = NSTObjective(net, content, styles, normalize="size").evaluate(x)
    masked = NSTObjective(net, content, styles, normalize="size", style_masks=[np.ones((32, 32))]).evaluate(x)
    assert np.isclose(plain.loss, masked.loss, rtol=1e-12)
    assert np.allclose(plain.grad, masked.grad, rtol=1e-9, atol=1e-12 * abs(plain.grad).max())


def test_each_region_sees_only_its_own_style(rng):
    net = random_vgg(rng)
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
        ([np.ones((32, 32))], None, "^style_masks has 1 masks for 2 style images"),
        ([np.ones((32, 32)), np.zeros((32, 32))], None, "not all zero"),
        ([np.ones((32, 32)), -np.ones((32, 32))], None, "≥ 0"),
        ([np.ones((32, 32)), np.full((32, 32), np.nan)], None, "finite"),
        ([np.ones((32, 32)), np.ones((16, 32))], None, "the content image"),
        (_halves(), (1, 2), "^style_blend mixes the styles everywhere; with style_masks"),
    ],
)
def test_bad_masks_are_refused(rng, masks, blend, needle):
    """The core's ValueError, naming its parameters (the application checks masks before, in flags)."""
    net = random_vgg(rng)
    content, styles = _images(rng, 2)
    with pytest.raises(ValueError, match=needle) as info:
        NSTObjective(net, content, styles, style_masks=masks, style_blend=blend)
    assert "--" not in str(info.value)


def test_normalize_gradients_gives_each_layer_unit_l1_norm(rng):
    net = random_vgg(rng)
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
