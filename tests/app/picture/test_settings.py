"""scratchnst.app.picture.settings: every bad value is one ScratchnstError naming its flag, whatever its
type; validated() returns a new Settings and leaves its own untouched; validating twice changes nothing."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from scratchnst.app.picture.settings import Settings, choice_option, comparable_args, int_option, layers_option
from scratchnst.errors import ScratchnstError

BAD = [
    ({"size": 0}, "--size must be a whole number > 0 (got 0)"),
    ({"size": "big"}, "--size must be a whole number > 0 (got 'big')"),
    ({"size": 1.5}, "--size must be a whole number > 0 (got 1.5)"),
    ({"size": True}, "--size must be a whole number > 0 (got True)"),
    ({"iterations": "many"}, "--iterations must be a whole number > 0 (got 'many')"),
    ({"iterations": [10, 0]}, "--iterations must be a whole number > 0 (got 0)"),
    ({"iterations": [10, 5, 2]}, "--iterations has 3 values for 2 scales: give one number, or one per scale"),
    ({"iterations": [10, 5], "size": 2048}, "--iterations has 2 values for 3 scales: give one number, or one per scale"),
    ({"seed": -1}, "--seed must be a whole number ≥ 0 (got -1)"),
    ({"save_every": -1}, "--save-every must be a whole number ≥ 0 (got -1)"),
    ({"checkpoint_every": "5"}, "--checkpoint-every must be a whole number ≥ 0 (got '5')"),
    ({"lbfgs_history": 0}, "--lbfgs-history must be a whole number > 0 (got 0)"),
    ({"max_memory": "lots"}, "--max-memory: expected a size like 2G, 500M or a number of bytes, got 'lots'"),
    ({"max_memory": 0}, "--max-memory must be a whole number > 0 (got 0)"),
    ({"max_memory": [1]}, "--max-memory must be a whole number > 0 (got [1])"),
    ({"tile": 24}, "--tile must be 0 (never tile) or a multiple of 16 px, the stride of the deepest layer, relu5_1 (got 24)"),
    ({"tile": -16}, "--tile must be 0 (never tile) or a multiple of 16 px, the stride of the deepest layer, relu5_1 (got -16)"),
    ({"tile": "32"}, "--tile must be 0 (never tile) or a multiple of 16 px, the stride of the deepest layer, relu5_1 (got '32')"),
    ({"tile": 16.0}, "--tile must be 0 (never tile) or a multiple of 16 px"),
    ({"tile": True}, "--tile must be 0 (never tile) or a multiple of 16 px"),
    ({"tile": 48, "style_layers": ["relu1_1", "pool5"]}, "--tile must be 0 (never tile) or a multiple of 32 px, the stride of the deepest layer, pool5 (got 48)"),
    ({"scales": "x"}, "--scales takes a list of numbers (got 'x')"),
    ({"scales": 1.0}, "--scales takes a list of numbers (got 1.0)"),
    ({"scales": ["x"]}, "--scales must be a number (got 'x')"),
    ({"scales": []}, "--scales needs at least one value"),
    ({"scales": [0.0]}, "--scales must be > 0 (got 0.0)"),
    ({"scales": [-1.0]}, "--scales must be a finite number ≥ 0 (got -1.0)"),
    ({"scales": [10.0]}, "--scales are fractions of --size (got 10.0; use values like 0.5,1)"),
    ({"style_scale": 0}, "--style-scale must be > 0 (got 0)"),
    ({"content_weight": "heavy"}, "--content-weight must be a number (got 'heavy')"),
    ({"style_weight": float("nan")}, "--style-weight must be a finite number ≥ 0 (got nan)"),
    ({"tv_weight": [1]}, "--tv-weight must be a number (got [1])"),
    ({"learning_rate": "fast"}, "--learning-rate must be a number (got 'fast')"),
    ({"learning_rate": 0}, "--learning-rate must be > 0 (got 0)"),
    ({"normalize": "pixels"}, "--normalize: unknown value 'pixels' (choose from size, none)"),
    ({"normalize": ["size"]}, "--normalize: unknown value ['size'] (choose from size, none)"),
    ({"content_layers": "relu4_1"}, "--content-layers takes a list of layer names (got 'relu4_1')"),
    ({"style_layers": ["relu9_9"]}, "--style-layers: unknown layer 'relu9_9' (layers are conv1_1, relu1_1, ..., relu5_3, pool5)"),
    ({"style_layers": ["relu1_1", "relu1_1"]}, "--style-layers: a layer is listed twice (relu1_1,relu1_1)"),
    ({"content_layers": [], "style_layers": []}, "--content-layers and --style-layers are both empty: nothing to optimise"),
    ({"style_layer_weights": [1, 2]}, "--style-layer-weights has 2 values for 5 style layers"),
    ({"style_layer_weights": "1,2"}, "--style-layer-weights takes a list of numbers (got '1,2')"),
    ({"style_blend": [0]}, "--style-blend must not sum to 0"),
    ({"style_blend": [1, 1]}, "--style-blend has 2 values for 1 style images"),
    ({"style_blend": 2}, "--style-blend takes a list of numbers (got 2)"),
    ({"optimizer": "sgd"}, "--optimizer: unknown value 'sgd' (choose from lbfgs, adam)"),
    ({"pooling": "median"}, "--pooling: unknown value 'median' (choose from max, avg)"),
    ({"conv": "fft"}, "--conv: unknown value 'fft' (choose from auto, im2col, winograd)"),
    ({"backend": "tpu"}, "--backend: unknown value 'tpu' (choose from auto, numpy, cupy)"),
    ({"dtype": "float16"}, "--dtype: unknown value 'float16' (choose from float32, float64)"),
    ({"color": "sepia"}, "--color: unknown value 'sepia' (choose from none, luminance, linear, histogram)"),
    ({"preserve_colors": "yes"}, "--preserve-colors takes true or false (got 'yes')"),
    ({"preserve_colors": True, "color": "histogram"}, "--preserve-colors is --color luminance; it contradicts --color histogram"),
    ({"quiet": 1}, "--quiet takes true or false (got 1)"),
    ({"plot": None}, "--plot takes true or false (got None)"),
    ({"normalize_gradients": True}, "--normalize-gradients needs --optimizer adam"),
    ({"init": 5}, "--init takes noise, content, style or an image path (got 5)"),
    ({"weights": 5}, "--weights takes a path (got 5)"),
    ({"style_masks": "a.png"}, "--style-masks takes a list of masks, one per style image (got 'a.png')"),
    ({"style_masks": ["a.png", "b.png"]}, "--style-masks has 2 masks for 1 style images (one mask per style)"),
    ({"style_masks": ["a.png"], "style_blend": [1]}, "--style-blend mixes the styles everywhere; with --style-masks each style has its own region"),
]


@pytest.mark.parametrize("options, message", BAD, ids=[str(o) for o, _ in BAD])
def test_a_bad_value_is_one_error_naming_its_flag(options, message):
    settings = Settings(**options)
    before = dataclasses.replace(settings)
    with pytest.raises(ScratchnstError, match="^" + re.escape(message)) as info:
        settings.validated(1)
    assert str(info.value).startswith("--")
    assert settings == before  # nothing half-validated left behind


def test_validated_returns_a_new_settings_and_leaves_its_own_alone():
    s = Settings(scales=[0.5, 1], style_weight=2, preserve_colors=True, max_memory="1G", style_layers=["relu1_1", "relu2_1"],
                 style_layer_weights=[1, 3], style_blend=[1, 1])
    before = dataclasses.replace(s)
    v = s.validated(2)
    assert v is not s and s == before
    assert s.scales == [0.5, 1] and s.style_weight == 2 and s.content_weight is None and s.learning_rate is None
    assert v.scales == (0.5, 1.0) and v.style_layers == ("relu1_1", "relu2_1")
    assert v.style_layer_weights == (1.0, 3.0) and v.style_blend == (1.0, 1.0)
    assert isinstance(v.style_weight, float) and v.style_weight == 2.0
    assert (v.content_weight, v.tv_weight) == (1.0, 4e-4)  # the "size" defaults
    assert v.learning_rate == 1.0 and v.max_memory == 2**30 and v.color == "luminance" and v.preserve_colors


def test_a_value_is_only_converted_where_it_always_was():
    """The manifest's "args" keep their bytes: a whole style scale or learning rate stays a whole number."""
    v = Settings(style_scale=2, learning_rate=3, optimizer="adam").validated(1)
    assert type(v.style_scale) is int and type(v.learning_rate) is int
    assert v.as_args() == Settings(style_scale=2, learning_rate=3, optimizer="adam").validated(1).as_args()


def test_tile_is_checked_against_the_runs_layers():
    assert Settings(tile=0).validated(1).tile == 0 and Settings().validated(1).tile is None
    assert Settings(tile=4, content_layers=["relu3_1"], style_layers=["relu1_1"]).validated(1).tile == 4
    assert Settings(tile=64, style_layers=["pool5"]).validated(1).tile == 64


@pytest.mark.parametrize("options, n_styles", [
    ({}, 1),
    ({"scales": (1,), "normalize": "none", "color": "luminance", "max_memory": "500M", "tile": 512}, 1),
    ({"style_masks": [np.ones((4, 4)), np.ones((4, 4))], "optimizer": "adam", "normalize_gradients": True}, 2),
    ({"style_blend": [1, 3], "init": "picture.png", "weights": "w.h5", "content_layers": []}, 2),
    ({"iterations": [30, 10], "scales": [0.5, 1]}, 1),
])
def test_validating_twice_changes_nothing(options, n_styles):
    once = Settings(**options).validated(n_styles)
    twice = once.validated(n_styles)
    assert twice.as_args() == once.as_args()
    assert all(getattr(twice, f.name) is getattr(once, f.name) or getattr(twice, f.name) == getattr(once, f.name)
               for f in dataclasses.fields(Settings) if f.name != "style_masks")


def test_the_option_checks_that_inspect_and_video_share():
    assert int_option("size", 16, minimum=16) == 16
    with pytest.raises(ScratchnstError, match=re.escape("--size must be a whole number ≥ 16 (got 8)")):
        int_option("size", 8, minimum=16)
    assert layers_option("layers", ["relu1_1", "pool5"]) == ("relu1_1", "pool5")
    with pytest.raises(ScratchnstError, match=re.escape("--layers: unknown layer 'relu0_1'")):
        layers_option("layers", ["relu0_1"])
    assert choice_option("pooling", "avg", ("max", "avg")) == "avg"


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


def test_comparable_args_take_a_manifest_from_before_an_option_existed_at_its_default():
    """A manifest written before --tile existed ran untiled-by-default: it compares equal to this
    version's args of the same run (so batch skips the job instead of redoing it), not to another run's."""
    now = Settings().validated(1).as_args()
    before = {k: v for k, v in now.items() if k != "tile"}
    assert comparable_args(before) == comparable_args(now)
    assert comparable_args({**before, "quiet": True}) == comparable_args(now)
    assert comparable_args(before) != comparable_args({**now, "tile": 32})
    assert comparable_args({**before, "size": 17}) != comparable_args(now)


@pytest.mark.parametrize("size, scales", [
    (32, (0.5, 1.0)),
    (384, (0.5, 1.0)),  # the default run: 192 then 384 px, as always
    (1024, (0.5, 1.0)),  # 512 is FIRST_SCALE itself
    (1025, (0.25, 0.5, 1.0)),  # 512.5 > 512: one more halving, 256.25
    (2048, (0.25, 0.5, 1.0)),  # 512, 1024, 2048
    (4096, (0.125, 0.25, 0.5, 1.0)),  # 512, 1024, 2048, 4096
    (8192, (0.0625, 0.125, 0.25, 0.5, 1.0)),
])
def test_without_scales_large_sizes_start_near_512_px(size, scales):
    """The default schedule, worked by hand: --size halved until it is 512 px or less (at least once)."""
    assert Settings(size=size).validated(1).scales == scales
    assert Settings(size=size, scales=[1]).validated(1).scales == (1.0,)  # --scales as given wins


def test_iterations_are_every_scales_or_one_per_scale():
    assert Settings(size=2048, iterations=60).validated(1).scale_iterations() == (60, 60, 60)
    per_scale = Settings(size=2048, iterations=[100, 50, 20]).validated(1)
    assert per_scale.iterations == (100, 50, 20) and per_scale.scale_iterations() == (100, 50, 20)
    assert per_scale.as_args()["iterations"] == [100, 50, 20]
    assert Settings.from_args(per_scale.as_args()).validated(1) == per_scale  # as a manifest records it


@pytest.mark.parametrize("size, scales, iterations", [
    (384, None, 60),
    (1024, None, 60),
    (2048, None, (60, 60, 50)),
    (4096, None, (60, 60, 50, 50)),
    (3000, [1], (50,)),
    (3000, [0.25, 1], (60, 50)),
])
def test_without_iterations_scales_above_1024_px_refine_in_fewer(size, scales, iterations):
    """Worked by hand: 60 at each scale up to 1024 px, 50 above (they refine a picture that has its look)."""
    s = Settings(size=size, scales=scales).validated(1)
    assert s.iterations == iterations
    assert Settings(size=size, scales=scales, iterations=7).validated(1).iterations == 7
