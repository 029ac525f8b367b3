"""scratchnst.core.vgg: the forward pass stops at the deepest layer asked for, the backward starts at
the deepest gradient given, and each conv layer's algorithm is chosen by its shape and dtype."""

import numpy as np
import pytest

from scratchnst.core.vgg import LAYER_NAMES
from scratchnst.gradcheck import random_vgg


def test_forward_stops_at_deepest_requested_layer(rng):
    net = random_vgg(rng)
    feats, caches = net.forward(rng.uniform(-100, 100, (1, 3, 32, 32)), ["relu2_1", "relu1_1"])
    assert [c.name for c in caches] == list(LAYER_NAMES[: LAYER_NAMES.index("relu2_1") + 1])
    assert set(feats) == {"relu1_1", "relu2_1"}


def test_backward_starts_at_deepest_gradient(rng):
    """A gradient only at relu1_1 must equal backprop through conv1_1/relu1_1 alone."""
    net = random_vgg(rng)
    x = rng.uniform(-100, 100, (1, 3, 32, 32))
    feats, caches = net.forward(x, ["relu1_1", "relu3_1"])
    d = rng.standard_normal(feats["relu1_1"].shape)
    dx = net.backward({"relu1_1": d}, caches)
    _, short = net.forward(x, ["relu1_1"])
    np.testing.assert_allclose(dx, net.backward({"relu1_1": d}, short), rtol=1e-14)


def test_vgg_conv_choice(rng):
    from scratchnst.core.vgg import LAYERS, VGG16, conv_algorithm

    conv1_1, conv3_1 = (layer for layer in LAYERS if layer.name in ("conv1_1", "conv3_1"))
    assert conv_algorithm("auto", "float32", conv1_1) == "im2col" and conv_algorithm("auto", "float32", conv3_1) == "winograd"
    assert conv_algorithm("auto", "float64", conv3_1) == "im2col"  # float64 is the reference precision
    assert conv_algorithm("winograd", "float64", conv1_1) == "winograd"
    with pytest.raises(ValueError, match="unknown conv 'fft'"):
        VGG16([(np.zeros((1, 1, 3, 3)), np.zeros(1))] * 13, conv="fft")
