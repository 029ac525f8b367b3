"""The Gatys objective: value against the formula written out independently, gradient by finite differences."""

import numpy as np
import pytest

from scratchnst.gradcheck import THRESHOLDS, objective_check, random_vgg
from scratchnst.core.objective import NSTObjective
from scratchnst.core.ops.reference import gram_naive
from scratchnst.core.vgg import LAYER_NAMES
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


def test_forward_stops_at_deepest_requested_layer(rng):
    net = random_vgg(rng)
    feats, caches = net.forward(_image(rng, 32, 32), ["relu2_1", "relu1_1"])
    assert [c.name for c in caches] == list(LAYER_NAMES[: LAYER_NAMES.index("relu2_1") + 1])
    assert set(feats) == {"relu1_1", "relu2_1"}


def test_backward_starts_at_deepest_gradient(rng):
    """A gradient only at relu1_1 must equal backprop through conv1_1/relu1_1 alone."""
    net = random_vgg(rng)
    x = _image(rng, 32, 32)
    feats, caches = net.forward(x, ["relu1_1", "relu3_1"])
    d = rng.standard_normal(feats["relu1_1"].shape)
    dx = net.backward({"relu1_1": d}, caches)
    _, short = net.forward(x, ["relu1_1"])
    np.testing.assert_allclose(dx, net.backward({"relu1_1": d}, short), rtol=1e-14)


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
def test_objective_gradient_through_the_real_vgg16(rng, vgg_weights_path):
    """The full objective through the real network (float64, 32×32), at sampled pixels."""
    from scratchnst.app.files.weights import load_vgg16

    net = load_vgg16(vgg_weights_path, backend="numpy", dtype="float64")
    r = objective_check(net, rng, coords=16, eps=1e-4, threshold=THRESHOLDS["float64"], name="objective (VGG-16)")
    assert r.passed, r
