"""Every stylize option in one dataclass: defaults, validation and the manifest's "args".

`Settings.validated` checks every value once, at the application's edge, before any heavy work: it
returns a new Settings and leaves the one it was called on as it was. A bad value, of any type, is
one ScratchnstError naming the option's command-line flag. The `*_option` checks below are the same
for the options of video and inspect; where a rule is the core's (a weight, a layer name, a choice)
they call the core's check and put the flag in front of its ValueError.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace

from scratchnst.app.picture.color import COLORS
from scratchnst.app.picture.masks import mask_name
from scratchnst.app.picture.memory import parse_bytes
from scratchnst.app.picture.plan import scale_sizes
from scratchnst.core.backend import BACKENDS, DTYPES
from scratchnst.core.checks import check_choice
from scratchnst.core.objective import (
    CONTENT_LAYERS, DEFAULT_WEIGHTS, NORMALIZATIONS, STYLE_LAYERS, check_mask_count, check_weight, check_weights,
)
from scratchnst.core.optim import DEFAULT_LEARNING_RATE, LBFGS_HISTORY, OPTIMIZERS
from scratchnst.core.tiled import alignment
from scratchnst.core.vgg import CONV_ALGORITHMS, LAYER_NAMES, POOLINGS, check_layers
from scratchnst.errors import ScratchnstError, user_error

INITS = ("noise", "content", "style")
NOISE_STD = 24.0  # the white-noise start, in preprocessed 0..255 units
MAX_SCALE = 4  # --scales are fractions of --size; a larger one is a size typed as a scale
FIRST_SCALE = 512  # without --scales, the first scale is the largest halving of --size up to this (default_scales)
ITERATIONS = 60  # without --iterations, each scale's up to LARGE_SCALE px (default_iterations)
LARGE_SCALE = 1024  # px: without --iterations, a larger scale refines the one before in LARGE_ITERATIONS
LARGE_ITERATIONS = 50  # docs/benchmarks.md, "Iterations at print sizes"


@dataclass
class Settings:
    size: int = 384
    iterations: int | tuple[int, ...] | None = None  # every scale's, or one per scale; None: default_iterations
    scales: tuple[float, ...] | None = None  # None: default_scales(size)
    seed: int = 0
    normalize: str = "size"  # objective.NORMALIZATIONS; the weights left None take its DEFAULT_WEIGHTS
    content_weight: float | None = None
    style_weight: float | None = None
    tv_weight: float | None = None
    content_layers: tuple[str, ...] = CONTENT_LAYERS
    style_layers: tuple[str, ...] = STYLE_LAYERS
    style_layer_weights: tuple[float, ...] | None = None
    style_blend: tuple[float, ...] | None = None
    style_scale: float = 1.0
    init: str = "noise"
    optimizer: str = "lbfgs"
    learning_rate: float | None = None
    lbfgs_history: int = LBFGS_HISTORY
    pooling: str = "max"
    conv: str = "auto"  # vgg.CONV_ALGORITHMS: Winograd where it is faster (float32), im2col elsewhere
    preserve_colors: bool = False  # the alias of color="luminance"
    color: str = "none"  # color.COLORS
    style_masks: tuple | None = None  # one mask per style image: paths, PIL images or (H, W) arrays
    normalize_gradients: bool = False  # each layer's gradient to L1 norm 1 (Adam only)
    save_every: int = 0
    checkpoint_every: int = 0
    backend: str = "auto"
    dtype: str = "float32"
    weights: str | None = None
    plot: bool = False
    quiet: bool = False
    max_memory: int | None = None  # bytes the run may use; None: what the machine/GPU has available
    tile: int | None = None  # the tiles' core in px (plan.py); 0: never tile; None: as the memory needs

    def validated(self, n_styles: int) -> Settings:
        """A new Settings with every value checked and normalised (tuples, floats for the weights and
        scales, the default weights and learning rate filled in, --preserve-colors as --color
        luminance); self is not changed. ScratchnstError naming the flag for a bad value of any type.
        Idempotent: validating a validated Settings (for as many styles) gives an equal one."""
        schedule = _schedule(self)
        objective = _objective(self, n_styles)
        engine = _engine(self)
        tile = _tile(self.tile, objective["content_layers"] + objective["style_layers"])
        return replace(self, **schedule, **objective, **engine, tile=tile, **_outputs(self, n_styles, objective["style_blend"]))

    def scale_iterations(self) -> tuple[int, ...]:
        """Each scale's iterations, of validated settings: --iterations at every scale, or its values."""
        return tuple(self.iterations) if isinstance(self.iterations, tuple) else (self.iterations,) * len(self.scales)

    def as_args(self) -> dict:
        """JSON-ready dict of every resolved option (the manifest's "args"; in-memory masks by a name)."""
        args = {f.name: getattr(self, f.name) for f in fields(self)}  # not asdict: it would deep-copy mask arrays
        args = {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}
        if self.style_masks is not None:
            args["style_masks"] = [mask_name(m, k) for k, m in enumerate(self.style_masks)]
        return args

    @classmethod
    def from_args(cls, args: dict) -> Settings:
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items() if k in known}
        return cls(**values)


def comparable_args(args: dict) -> dict:
    """A manifest's "args", to compare two runs by: the options a manifest from before they existed
    leaves out at their defaults (what that run did), and without --quiet (it changes no output)."""
    return {k: v for k, v in {**Settings().as_args(), **args}.items() if k != "quiet"}


# -- the groups of Settings.validated, each a dict of checked values ---------------------------------


def _schedule(s: Settings) -> dict:
    """Size, iterations, scales, seed, the per-image outputs' periods and the memory limit."""
    scales = default_scales(int_option("size", s.size)) if s.scales is None else _scales(s.scales)
    return {
        "size": int_option("size", s.size),
        "iterations": default_iterations(s.size, scales) if s.iterations is None else _iterations(s.iterations, len(scales)),
        "save_every": int_option("save-every", s.save_every, minimum=0),
        "checkpoint_every": int_option("checkpoint-every", s.checkpoint_every, minimum=0),
        "lbfgs_history": int_option("lbfgs-history", s.lbfgs_history),
        "max_memory": _max_memory(s.max_memory),
        "seed": int_option("seed", s.seed, minimum=0),
        "style_scale": positive_option("style-scale", s.style_scale),
        "scales": scales,
    }


def default_scales(size: int) -> tuple[float, ...]:
    """The coarse-to-fine schedule without --scales: --size halved until it is FIRST_SCALE px or less,
    at least once, and every size between. Up to 1024 px that is (0.5, 1); at print sizes the
    multi-scale recipe that users of neural-style run by hand (256 → 512 → 1024 → 2048 → ...), so that
    the first scale is near the size VGG sees detail at and each larger one refines the last:
    2048 → (0.25, 0.5, 1), 4096 → (0.125, 0.25, 0.5, 1)."""
    halvings = 1
    while size / 2**halvings > FIRST_SCALE:
        halvings += 1
    return tuple(0.5**k for k in range(halvings, 0, -1)) + (1.0,)


def default_iterations(size: int, scales: tuple[float, ...]) -> int | tuple[int, ...]:
    """Each scale's iterations without --iterations: ITERATIONS, and LARGE_ITERATIONS at the scales
    larger than LARGE_SCALE px, which refine a picture that already has its look (measured: docs/
    benchmarks.md, "Iterations at print sizes"). A run with no such scale has the one number."""
    sides = scale_sizes(size, scales)
    if max(sides) <= LARGE_SCALE:
        return ITERATIONS
    return tuple(ITERATIONS if side <= LARGE_SCALE else LARGE_ITERATIONS for side in sides)


def _scales(values) -> tuple[float, ...]:
    """--scales as floats, each in (0, MAX_SCALE]."""
    scales = tuple(weight_option("scales", v) for v in list_option("scales", values, "numbers"))
    if not scales:
        raise ScratchnstError("--scales needs at least one value")
    for v in scales:
        positive_option("scales", v)
        if v > MAX_SCALE:
            raise ScratchnstError(f"--scales are fractions of --size (got {v}; use values like 0.5,1)")
    return scales


def _iterations(value, n_scales: int) -> int | tuple[int, ...]:
    """--iterations: a whole number > 0 (every scale's), or a list of them, one per scale."""
    if isinstance(value, (tuple, list)):
        values = tuple(int_option("iterations", v) for v in value)
        if len(values) != n_scales:
            raise ScratchnstError(f"--iterations has {len(values)} values for {n_scales} scales: give one number, or one per scale")
        return values
    return int_option("iterations", value)


def _max_memory(value) -> int | None:
    """--max-memory as bytes: a whole number, or text like "2G" (memory.parse_bytes)."""
    if value is None:
        return None
    if isinstance(value, str):
        with user_error("--max-memory"):
            value = parse_bytes(value)
    return int_option("max-memory", value)


def _tile(value, layers: tuple[str, ...]) -> int | None:
    """--tile: None, or a whole number ≥ 0 that is 0 or a multiple of the layers' alignment (the
    stride of the deepest, tiled.alignment)."""
    if value is None:
        return None
    align = alignment(layers)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value % align:
        raise ScratchnstError(
            f"--tile must be 0 (never tile) or a multiple of {align} px, the stride of the deepest layer, "
            f"{max(layers, key=LAYER_NAMES.index)} (got {value!r})"
        )
    return value


def _objective(s: Settings, n_styles: int) -> dict:
    """The loss: normalisation, the three weights (None: DEFAULT_WEIGHTS), the layers and their weights."""
    normalize = choice_option("normalize", s.normalize, NORMALIZATIONS)
    weights = {
        name: default if getattr(s, name) is None else weight_option(name.replace("_", "-"), getattr(s, name))
        for name, default in zip(("content_weight", "style_weight", "tv_weight"), DEFAULT_WEIGHTS[normalize])
    }
    content_layers = layers_option("content-layers", s.content_layers)
    style_layers = layers_option("style-layers", s.style_layers)
    if not content_layers and not style_layers:
        raise ScratchnstError("--content-layers and --style-layers are both empty: nothing to optimise")
    return {
        "normalize": normalize, **weights, "content_layers": content_layers, "style_layers": style_layers,
        "style_layer_weights": _weights_option("style-layer-weights", s.style_layer_weights, len(style_layers), "style layers"),
        "style_blend": _weights_option("style-blend", s.style_blend, n_styles, "style images", nonzero_sum=True),
    }


def _weights_option(flag: str, values, count: int, what: str, *, nonzero_sum: bool = False) -> tuple[float, ...] | None:
    """One weight per item (objective.check_weights), None left None."""
    if values is None:
        return None
    values = list_option(flag, values, "numbers")
    with user_error():
        return check_weights(f"--{flag}", values, count, what, nonzero_sum=nonzero_sum)


def _engine(s: Settings) -> dict:
    """The optimiser and its step, the net's pooling and convolution, backend, dtype and weights file."""
    optimizer = choice_option("optimizer", s.optimizer, OPTIMIZERS)
    learning_rate = DEFAULT_LEARNING_RATE[optimizer] if s.learning_rate is None else positive_option("learning-rate", s.learning_rate)
    return {
        "optimizer": optimizer,
        "learning_rate": learning_rate,
        "pooling": choice_option("pooling", s.pooling, POOLINGS),
        "conv": choice_option("conv", s.conv, CONV_ALGORITHMS),
        "backend": choice_option("backend", s.backend, BACKENDS),
        "dtype": choice_option("dtype", s.dtype, DTYPES),
        "weights": None if s.weights is None else path_option("weights", s.weights),
    }


def _outputs(s: Settings, n_styles: int, style_blend) -> dict:
    """--init, --color / --preserve-colors, --style-masks' count, --normalize-gradients' optimiser, switches."""
    color = choice_option("color", s.color, COLORS)
    preserve_colors = flag_option("preserve-colors", s.preserve_colors)
    if preserve_colors and color not in ("none", "luminance"):
        raise ScratchnstError(f"--preserve-colors is --color luminance; it contradicts --color {color}")
    color = "luminance" if preserve_colors else color
    masks = s.style_masks
    if masks is not None:
        masks = list_option("style-masks", masks, "masks, one per style image")
        with user_error():
            check_mask_count(len(masks), n_styles, style_blend, "--style-masks", "--style-blend")
    if flag_option("normalize-gradients", s.normalize_gradients) and s.optimizer != "adam":
        raise ScratchnstError(
            "--normalize-gradients needs --optimizer adam: the normalised gradient is not the loss's, and L-BFGS's line search needs the true one"
        )
    init = s.init if s.init in INITS else path_option("init", s.init, f"{', '.join(INITS)} or an image path")
    return {
        "init": init, "color": color, "preserve_colors": color == "luminance", "style_masks": masks,
        "plot": flag_option("plot", s.plot), "quiet": flag_option("quiet", s.quiet),
    }


# -- the checks of one option, in flags (video and inspect use them too) -----------------------------


def int_option(flag: str, value, minimum: int = 1) -> int:
    """value, a whole number ≥ minimum (not a bool); ScratchnstError naming --flag otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        bound = "> 0" if minimum == 1 else f"≥ {minimum}"
        raise ScratchnstError(f"--{flag} must be a whole number {bound} (got {value!r})")
    return value


def weight_option(flag: str, value) -> float:
    """value as a float, finite and ≥ 0 (objective.check_weight); ScratchnstError naming --flag otherwise."""
    with user_error():
        return check_weight(f"--{flag}", value)


def positive_option(flag: str, value):
    """value itself (not converted), a finite number > 0; ScratchnstError naming --flag otherwise."""
    if weight_option(flag, value) <= 0:
        raise ScratchnstError(f"--{flag} must be > 0 (got {value!r})")
    return value


def choice_option(flag: str, value, choices: Iterable[str]):
    """value, one of `choices`; otherwise "--flag: unknown value ... (choose from ...)"."""
    with user_error(f"--{flag}"):
        return check_choice("value", value, choices)


def layers_option(flag: str, names) -> tuple[str, ...]:
    """The layer names as a tuple, each a VGG-16 layer (vgg.check_layers) and none twice."""
    names = list_option(flag, names, "layer names")
    with user_error(f"--{flag}"):
        check_layers(names)
    if len(set(names)) != len(names):
        raise ScratchnstError(f"--{flag}: a layer is listed twice ({','.join(names)})")
    return names


def flag_option(flag: str, value) -> bool:
    """value, True or False; ScratchnstError naming --flag otherwise."""
    if not isinstance(value, bool):
        raise ScratchnstError(f"--{flag} takes true or false (got {value!r})")
    return value


def path_option(flag: str, value, what: str = "a path") -> str:
    """value as a str path (os.fspath); ScratchnstError naming --flag unless it is a str or PathLike."""
    if not isinstance(value, (str, os.PathLike)):
        raise ScratchnstError(f"--{flag} takes {what} (got {value!r})")
    return os.fspath(value)


def list_option(flag: str, values, what: str) -> tuple:
    """values as a tuple; ScratchnstError naming --flag for a string or a single value."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ScratchnstError(f"--{flag} takes a list of {what} (got {values!r})")
    return tuple(values)
