"""The tiled objective: the geometry worked by hand (receptive fields, alignment, ownership), bad cores,
and tiled = untiled (loss, gradient, every total) for every term and option, on random VGG-shaped nets
and once on the real weights; the targets tile by tile."""

import numpy as np
import pytest

from scratchnst.core import tiled
from scratchnst.core.losses import temporal_loss
from scratchnst.core.objective import NSTObjective, PixelTerm, style_grams
from scratchnst.core.tiled import (
    FIELDS, TiledObjective, alignment, halo_overhead, plan_tiles, tiled_features, tiled_style_grams,
)
from scratchnst.core.vgg import LAYERS, VGG16, spatial_size
from scratchnst.gradcheck import random_vgg

# Layer sets by their deepest layer's stride: 4, 8, 16 (the default layers) and 32.
SHALLOW = dict(content_layers=["relu2_2"], style_layers=["relu1_1", "relu2_1", "relu3_1"])
MIDDLE = dict(content_layers=["relu4_1"], style_layers=["relu1_1", "relu2_1", "relu3_1", "relu4_1"])
DEEP = dict(content_layers=["relu4_1"], style_layers=["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"])
POOL5 = dict(content_layers=["relu3_2"], style_layers=["relu1_1", "relu5_2", "pool5"])


def _image(rng, h, w, dtype="float64"):
    return rng.uniform(-100, 100, (1, 3, h, w)).astype(dtype)


# -- the geometry ---------------------------------------------------------------------------------


def test_receptive_fields_worked_by_hand():
    """Unit i of a layer reads pixels [stride·i + lo, stride·i + hi]. By hand: each 3×3 conv widens the
    field by one unit of the current grid on each side (± stride), each 2×2 pool doubles the stride and
    adds one old unit on the right (+ stride).
    relu1_1: conv1_1 → [i − 1, i + 1].
    relu2_1: conv1_2 [i − 2, i + 2]; pool1 (stride 2) [2i − 2, 2i + 3]; conv2_1 [2i − 4, 2i + 5].
    relu3_1: conv2_2 [2i − 6, 2i + 7]; pool2 [4i − 6, 4i + 9]; conv3_1 [4i − 10, 4i + 13].
    relu4_1: conv3_2, conv3_3 [4i − 18, 4i + 21]; pool3 [8i − 18, 8i + 25]; conv4_1 [8i − 26, 8i + 33].
    relu5_1: conv4_2, conv4_3 [8i − 42, 8i + 49]; pool4 [16i − 42, 16i + 57]; conv5_1 [16i − 58, 16i + 73].
    pool5: conv5_2, conv5_3 [16i − 90, 16i + 105]; pool5 [32i − 90, 32i + 121]."""
    assert FIELDS["relu1_1"] == (1, -1, 1)
    assert FIELDS["relu2_1"] == (2, -4, 5)
    assert FIELDS["relu3_1"] == (4, -10, 13)
    assert FIELDS["relu4_1"] == (8, -26, 33)
    assert FIELDS["relu5_1"] == (16, -58, 73) and FIELDS["relu5_1"].hi - FIELDS["relu5_1"].lo + 1 == 132
    assert FIELDS["pool5"] == (32, -90, 121)
    assert FIELDS["conv1_1"] == FIELDS["relu1_1"] and FIELDS["pool1"] == (2, -2, 3)


def _positive_vgg(rng):
    """A VGG-shaped net of positive weights and biases with average pooling: on a positive image every
    ReLU passes, so a unit's input gradient is positive exactly on its receptive field."""
    params, c_in = [], 3
    for layer in LAYERS:
        if layer.kind == "conv":
            params.append((np.abs(rng.standard_normal((4, c_in, 3, 3))), np.abs(rng.standard_normal(4))))
            c_in = 4
    return VGG16(params, pooling="avg", conv="im2col")


@pytest.mark.parametrize("layer, i", [("relu1_1", 3), ("relu2_1", 5), ("relu4_1", 6), ("relu5_1", 5), ("pool5", 3)])
@pytest.mark.parametrize("axis", [2, 3])
def test_receptive_fields_are_what_the_net_reads(rng, layer, i, axis):
    """The derived field against the net itself: the input gradient of unit i is nonzero on exactly
    [stride·i + lo, stride·i + hi], along either axis."""
    net, f = _positive_vgg(rng), FIELDS[layer]
    shape = [1, 3, 32, 32]
    shape[axis] = f.stride * i + f.hi + 1 + f.stride  # the whole field inside the image, and more after it
    assert f.stride * i + f.lo >= 0
    x = rng.uniform(0.5, 1.5, shape)
    feats, caches = net.forward(x, [layer])
    seed, unit = np.zeros_like(feats[layer]), [0, slice(None), 0, 0]
    unit[axis] = i
    seed[tuple(unit)] = 1
    dx = net.backward({layer: seed}, caches)
    support = np.nonzero(np.abs(dx).sum(axis=tuple(a for a in range(4) if a != axis)))[0]
    assert (support.min(), support.max()) == (f.stride * i + f.lo, f.stride * i + f.hi)


def test_alignment_is_the_deepest_layers_stride():
    assert alignment([]) == 1 and alignment(["relu1_1", "conv1_2"]) == 1
    assert alignment(["relu2_1"]) == 2 and alignment(SHALLOW["style_layers"]) == 4
    assert alignment(["relu1_1", "relu4_1"]) == 8
    assert alignment(DEEP["style_layers"]) == alignment(["pool4"]) == alignment(["relu5_3"]) == 16
    assert alignment(["relu1_1", "pool5"]) == 32


@pytest.mark.parametrize("height, width, core, layers", [
    (50, 70, 16, DEEP), (96, 48, 32, DEEP), (37, 83, 16, MIDDLE), (96, 90, 16, MIDDLE), (61, 45, 8, SHALLOW),
    (96, 70, 32, POOL5), (20, 20, 64, MIDDLE),
])
def test_tiles_own_every_position_exactly_once(height, width, core, layers):
    """Cores partition the image; every position of every layer is owned by one tile, whose crop holds
    its receptive field (or reaches the image's edge there) and starts on the alignment."""
    names = layers["content_layers"] + layers["style_layers"]
    tiles, align = plan_tiles(height, width, core, names), alignment(names)
    covered = np.zeros((height, width), int)
    for t in tiles:
        t.core.of(covered)[...] += 1
        assert t.crop.top % align == 0 and t.crop.left % align == 0
        assert t.crop.top <= t.core.top and t.crop.left <= t.core.left
        assert t.crop.bottom >= t.core.bottom and t.crop.right >= t.core.right
    assert (covered == 1).all()
    for name in names:
        f = FIELDS[name]
        owners = np.zeros(spatial_size(name, height, width), int)
        for t in tiles:
            whole, local = t.owned(name, height, width)
            whole.of(owners)[...] += 1
            assert local == (whole.top - t.crop.top // f.stride, whole.left - t.crop.left // f.stride,
                             whole.bottom - t.crop.top // f.stride, whole.right - t.crop.left // f.stride)
            crop_grid = spatial_size(name, *t.crop.shape)
            for lo, hi, start, end, size, n in ((whole.top, whole.bottom, t.crop.top, t.crop.bottom, height, crop_grid[0]),
                                                (whole.left, whole.right, t.crop.left, t.crop.right, width, crop_grid[1])):
                if hi > lo:  # the owned units on the crop's grid, their fields inside the crop or it at the image's edge
                    assert 0 <= lo - start // f.stride and hi - start // f.stride <= n
                    assert f.stride * lo + f.lo >= start or start == 0
                    assert f.stride * (hi - 1) + f.hi < end or end == size
        assert (owners == 1).all(), (name, owners)


def test_edge_tiles_and_halos():
    """The last row and column of cores are what is left of the image; crops are clipped to it, and
    the middle layers' crops are smaller than the image (so the halo is what the exactness tests test)."""
    names = MIDDLE["content_layers"] + MIDDLE["style_layers"]
    tiles = plan_tiles(90, 70, 32, names)
    assert [t.core.bottom - t.core.top for t in tiles[::3]] == [32, 32, 26]
    assert [t.core.right - t.core.left for t in tiles[:3]] == [32, 32, 6]
    assert all(t.crop.bottom <= 90 and t.crop.right <= 70 for t in tiles)
    assert any(t.crop.area < 90 * 70 for t in tiles)
    # relu4_1 at 8 px: a core from 32 to 64 reads [32 − 26, 56 + 33] = [6, 89]: the crop from 0 (6 rounded
    # down to 8's multiple) to 90 along that axis.
    assert plan_tiles(200, 200, 32, ["relu4_1"])[1 * 7 + 1].crop == (0, 0, 90, 90)
    # relu5_1 at 16 px, core 64 .. 128: [64 − 58, 112 + 73] = [6, 185] → crop 0 .. 186.
    assert plan_tiles(400, 400, 64, ["relu5_1"])[1 * 7 + 1].crop == (0, 0, 186, 186)
    assert halo_overhead(plan_tiles(64, 64, 64, names)) == 1.0


@pytest.mark.parametrize("core", [24, 0, -16, 8, 16.0, "16", True, None])
def test_bad_core_sizes_are_refused(rng, core):
    with pytest.raises(ValueError, match=r"^core must be a positive multiple of 16 pixels") as info:
        plan_tiles(64, 64, core, DEEP["style_layers"])
    assert "--" not in str(info.value)
    net = random_vgg(rng)
    obj = NSTObjective(net, _image(rng, 48, 48), [_image(rng, 48, 48)], **DEEP)
    with pytest.raises(ValueError, match=r"^core must be a positive multiple of 16 pixels"):
        TiledObjective(obj, core)


def test_an_empty_image_is_refused():
    with pytest.raises(ValueError, match="plan_tiles needs an image of at least one pixel"):
        plan_tiles(0, 16, 16, ["relu1_1"])


# -- tiled = untiled -------------------------------------------------------------------------------


def _net(rng, dtype, pooling, conv):
    return VGG16(random_vgg(rng, dtype=dtype, pooling=pooling).params, pooling=pooling, conv=conv)


def _build(rng, shape, *, dtype="float64", pooling="max", conv="im2col", styles=1, masks=False, pixel=False, layers=DEEP, **options):
    """(objective, x) on a random net: content and x of `shape`, styles of other sizes."""
    net = _net(rng, dtype, pooling, conv)
    h, w = shape
    content, x = _image(rng, h, w, dtype), _image(rng, h, w, dtype)
    style_images = [_image(rng, h + 8 * k + 4, w - 4, dtype) for k in range(styles)]
    keywords = dict(layers, **options)
    if masks:  # two overlapping soft regions, left and right
        left = np.clip(np.linspace(1.5, -0.5, w), 0, 1)[None, :].repeat(h, 0)
        keywords["style_masks"] = [left, 1 - left + 0.25 * (left > 0)]
    if pixel:  # video's temporal term
        target, mask = _image(rng, h, w, dtype), (rng.uniform(size=(1, 1, h, w)) > 0.25).astype(dtype)
        keywords["pixel_terms"] = [PixelTerm("temporal", 7.0, lambda z: temporal_loss(z, target, mask))]
    return NSTObjective(net, content, style_images, **keywords), x


def _errors(obj, x, core, keep=False):
    """(loss, gradient (normwise), worst total) relative errors of the tiled evaluation."""
    a = obj.evaluate(x.copy())
    b = TiledObjective(obj, core, keep_forward=keep).evaluate(x.copy())
    assert b.grad.dtype == a.grad.dtype and b.grad.shape == a.grad.shape and set(b.terms) == set(a.terms)
    loss = abs(b.loss - a.loss) / abs(a.loss)
    grad = np.linalg.norm((b.grad - a.grad).ravel()) / np.linalg.norm(a.grad.ravel())
    terms = max(abs(b.terms[k] - a.terms[k]) / max(abs(a.terms[k]), 1e-300) for k in a.terms)
    print(f"tiled vs untiled: loss {loss:.1e}, grad {grad:.1e}, totals {terms:.1e}")
    return loss, grad, terms


CASES64 = {  # name: (shape, core, options)
    "content only": ((50, 70), 16, dict(layers=MIDDLE, style_layers=[], content_layers=["relu2_2", "relu4_1"], tv_weight=0)),
    "style only": ((64, 48), 16, dict(layers=MIDDLE, content_layers=[], tv_weight=0)),
    "blend of two styles": ((37, 83), 16, dict(layers=MIDDLE, styles=2, style_blend=[3, 1], style_layer_weights=[1, 2, 0.5, 3])),
    "style regions": ((48, 64), 16, dict(layers=MIDDLE, styles=2, masks=True)),
    "regions, deep": ((96, 80), 32, dict(layers=DEEP, styles=2, masks=True)),
    "tv": ((59, 45), 16, dict(layers=SHALLOW, tv_weight=3.0, style_weight=1e3)),
    "pixel term": ((48, 61), 16, dict(layers=MIDDLE, pixel=True)),
    "normalize size": ((90, 70), 32, dict(layers=MIDDLE, normalize="size", tv_weight=1.0)),
    "normalize none, deep": ((96, 80), 16, dict(layers=DEEP, normalize="none")),
    "avg pooling": ((70, 53), 16, dict(layers=MIDDLE, pooling="avg")),
    "winograd": ((53, 70), 16, dict(layers=MIDDLE, conv="winograd")),
    "pool5": ((96, 70), 32, dict(layers=POOL5)),
    "normalize gradients": ((64, 56), 16, dict(layers=MIDDLE, normalize_gradients=True)),
    "regions, normalize gradients": ((64, 56), 16, dict(layers=MIDDLE, styles=2, masks=True, normalize_gradients=True)),
    "one tile": ((40, 40), 64, dict(layers=DEEP)),
}


@pytest.mark.parametrize("keep", [False, True], ids=["recompute", "keep_forward"])
@pytest.mark.parametrize("name", list(CASES64))
def test_tiled_is_untiled_in_float64(rng, name, keep):
    shape, core, options = CASES64[name]
    obj, x = _build(rng, shape, **options)
    assert max(_errors(obj, x, core, keep)) < 1e-10


CASES32 = {
    "default layers, conv auto": ((96, 80), 16, dict(layers=DEEP, conv="auto", tv_weight=1.0)),
    "middle layers, im2col, size": ((90, 70), 16, dict(layers=MIDDLE, normalize="size", tv_weight=1.0)),
    "regions, winograd, avg": ((64, 75), 16, dict(layers=MIDDLE, conv="winograd", pooling="avg", styles=2, masks=True, pixel=True)),
}


@pytest.mark.parametrize("name", list(CASES32))
def test_tiled_is_untiled_in_float32(rng, name):
    shape, core, options = CASES32[name]
    obj, x = _build(rng, shape, dtype="float32", **options)
    loss, grad, terms = _errors(obj, x, core)
    assert loss < 1e-5 and terms < 1e-5 and grad < 1e-3


def test_a_halo_one_pixel_short_is_not_exact(rng, monkeypatch):
    """The exactness tests can fail: with relu4_1's field one pixel short on the right, the crops miss a
    pixel some owned position reads, and the tiled gradient is off."""
    obj, x = _build(rng, (90, 70), layers=MIDDLE)
    assert max(_errors(obj, x, 16)) < 1e-10
    f = FIELDS["relu4_1"]
    monkeypatch.setitem(tiled.FIELDS, "relu4_1", f._replace(hi=f.hi - 1))
    assert _errors(obj, x, 16)[1] > 1e-6


def test_a_wrong_shape_is_refused(rng):
    obj, x = _build(rng, (48, 48), layers=SHALLOW)
    with pytest.raises(ValueError, match=r"^x has shape \(1, 3, 48, 40\), the content image \(1, 3, 48, 48\)$"):
        TiledObjective(obj, 16).evaluate(x[..., :40])


@pytest.mark.weights
def test_tiled_is_untiled_on_the_real_vgg16(rng, vgg16):
    net = vgg16(backend="numpy", dtype="float64")
    content, style, x = _image(rng, 64, 64), _image(rng, 72, 60), _image(rng, 64, 64)
    for layers, core in ((MIDDLE, 16), (DEEP, 32)):
        obj = NSTObjective(net, content, [style], normalize="size", **layers)
        assert max(_errors(obj, x, core)) < 1e-10


# -- the targets tile by tile ----------------------------------------------------------------------


@pytest.mark.parametrize("shape, core, layers", [((96, 80), 16, DEEP), ((61, 90), 16, MIDDLE), ((96, 70), 32, POOL5)])
def test_tiled_targets_are_the_untiled_ones(rng, shape, core, layers):
    net = random_vgg(rng)
    names = layers["content_layers"] + layers["style_layers"]
    image = _image(rng, *shape)
    whole, tiles = net.extract(image, names), tiled_features(net, image, names, core)
    assert set(tiles) == set(whole)
    for name in names:
        assert tiles[name].shape == whole[name].shape
        assert np.abs(tiles[name] - whole[name]).max() <= 1e-12 * np.abs(whole[name]).max(), name
    grams, tiled_grams = style_grams(net, image, names), tiled_style_grams(net, image, names, core)
    for name in names:
        (g, m), (tg, tm) = grams[name], tiled_grams[name]
        assert m == tm and np.abs(tg - g).max() <= 1e-12 * np.abs(g).max(), name


def test_an_objective_from_tiled_targets_is_the_same(rng):
    net = random_vgg(rng)
    content, style, x = _image(rng, 70, 64), _image(rng, 80, 52), _image(rng, 70, 64)
    plain = NSTObjective(net, content, [style], **MIDDLE)
    names = MIDDLE["content_layers"]
    from_tiles = NSTObjective(net, content, None, grams=[tiled_style_grams(net, style, MIDDLE["style_layers"], 16)],
                              content_features=tiled_features(net, content, names, 16), **MIDDLE)
    a, b = plain.evaluate(x.copy()), TiledObjective(from_tiles, 16).evaluate(x.copy())
    assert abs(b.loss - a.loss) <= 1e-10 * abs(a.loss)
    assert np.linalg.norm((b.grad - a.grad).ravel()) <= 1e-10 * np.linalg.norm(a.grad.ravel())
    with pytest.raises(ValueError, match=r"^content_features needs a \(8, 8\) activation at relu4_1$"):
        NSTObjective(net, content, [style], content_features={"relu4_1": np.zeros((1, 6, 8, 7))}, **MIDDLE)


@pytest.mark.parametrize("options, passes", [
    (dict(layers=MIDDLE), 2), (dict(layers=MIDDLE, style_layers=[]), 1), (dict(layers=MIDDLE, normalize_gradients=True), 3),
])
def test_on_tile_counts_every_tile_of_every_pass(rng, options, passes):
    """on_tile(done, total) after each tile of each pass: 1 .. total, total = the tiles times the passes
    (pass 2; pass 1 with style layers; the norms' with normalize_gradients); the evaluation unchanged."""
    obj, x = _build(rng, (50, 40), **options)
    seen = []
    tiled = TiledObjective(obj, 16, on_tile=lambda done, total: seen.append((done, total)))
    assert tiled.passes == passes and len(tiled.tiles) == 12
    a, b = tiled.evaluate(x.copy()), TiledObjective(obj, 16).evaluate(x.copy())
    assert seen == [(k, passes * 12) for k in range(1, passes * 12 + 1)]
    assert a.loss == b.loss and np.array_equal(a.grad, b.grad)
    seen.clear()
    TiledObjective(obj, 16, keep_forward=True, on_tile=lambda done, total: seen.append((done, total))).evaluate(x.copy())
    assert seen[-1] == (passes * 12, passes * 12) and len(seen) == passes * 12
