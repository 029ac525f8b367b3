"""Every stylize option in one dataclass: defaults, validation and the manifest's "args".

Validation raises ScratchnstError with the option's command-line name, before any heavy work.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, fields
from typing import Sequence

from scratchnst.core.backend import BACKENDS, DTYPES, BackendUnavailable, get_backend
from scratchnst.app.picture.color import COLORS
from scratchnst.core.checks import check_choice
from scratchnst.core.objective import (
    CONTENT_LAYERS, DEFAULT_WEIGHTS, NORMALIZATIONS, STYLE_LAYERS, check_mask_count, check_weight, check_weights,
)
from scratchnst.core.optim import DEFAULT_LEARNING_RATE, LBFGS_HISTORY, OPTIMIZERS
from scratchnst.core.vgg import CONV_ALGORITHMS, POOLINGS, check_layers
from scratchnst.errors import ScratchnstError, user_error

INITS = ("noise", "content", "style")
NOISE_STD = 24.0  # the white-noise start, in preprocessed 0..255 units


@dataclass
class Settings:
    size: int = 384
    iterations: int = 60
    scales: tuple[float, ...] = (0.5, 1.0)
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

    def validated(self, n_styles: int) -> "Settings":
        """Self, checked and normalised (tuples, default learning rate); ScratchnstError otherwise."""
        _positive_int("size", self.size)
        _positive_int("iterations", self.iterations)
        _nonneg_int("save-every", self.save_every)
        _nonneg_int("checkpoint-every", self.checkpoint_every)
        _positive_int("lbfgs-history", self.lbfgs_history)
        if self.max_memory is not None:
            if isinstance(self.max_memory, str):
                from scratchnst.app.picture.memory import parse_bytes

                try:
                    self.max_memory = parse_bytes(self.max_memory)
                except ValueError as exc:
                    raise ScratchnstError(f"--max-memory: {exc}") from None
            _positive_int("max-memory", self.max_memory)
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ScratchnstError(f"--seed must be a whole number ≥ 0 (got {self.seed!r})")
        _choice("normalize", self.normalize, NORMALIZATIONS)
        for name, default in zip(("content_weight", "style_weight", "tv_weight"), DEFAULT_WEIGHTS[self.normalize]):
            value = getattr(self, name)
            setattr(self, name, default if value is None else weight_option(name.replace("_", "-"), value))
        _positive_float("style-scale", self.style_scale)
        self.scales = tuple(float(s) for s in self.scales)
        if not self.scales:
            raise ScratchnstError("--scales needs at least one value")
        for s in self.scales:
            _positive_float("scales", s)
            if s > 4:
                raise ScratchnstError(f"--scales are fractions of --size (got {s}; use values like 0.5,1)")
        self.content_layers = _layers("content-layers", self.content_layers)
        self.style_layers = _layers("style-layers", self.style_layers)
        if not self.content_layers and not self.style_layers:
            raise ScratchnstError("--content-layers and --style-layers are both empty: nothing to optimise")
        with user_error():
            self.style_layer_weights = check_weights("--style-layer-weights", self.style_layer_weights, len(self.style_layers), "style layers")
            self.style_blend = check_weights("--style-blend", self.style_blend, n_styles, "style images", nonzero_sum=True)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("pooling", self.pooling, POOLINGS)
        _choice("conv", self.conv, CONV_ALGORITHMS)
        _choice("backend", self.backend, BACKENDS)
        _choice("dtype", self.dtype, DTYPES)
        self._check_controls(n_styles)
        if self.learning_rate is None:
            self.learning_rate = DEFAULT_LEARNING_RATE[self.optimizer]
        _positive_float("learning-rate", self.learning_rate)
        return self

    def _check_controls(self, n_styles: int) -> None:
        """--color / --preserve-colors, --style-masks' count, --normalize-gradients' optimiser."""
        _choice("color", self.color, COLORS)
        if self.preserve_colors and self.color not in ("none", "luminance"):
            raise ScratchnstError(f"--preserve-colors is --color luminance; it contradicts --color {self.color}")
        if self.preserve_colors:
            self.color = "luminance"
        self.preserve_colors = self.color == "luminance"
        if self.style_masks is not None:
            if isinstance(self.style_masks, (str, bytes)) or not hasattr(self.style_masks, "__len__"):
                raise ScratchnstError("style_masks must be a list with one mask per style image")
            self.style_masks = tuple(self.style_masks)
            with user_error():
                check_mask_count(len(self.style_masks), n_styles, self.style_blend, "--style-masks", "--style-blend")
        if self.normalize_gradients and self.optimizer != "adam":
            raise ScratchnstError(
                "--normalize-gradients needs --optimizer adam: the normalised gradient is not the loss's, and L-BFGS's line search needs the true one"
            )

    def as_args(self) -> dict:
        """JSON-ready dict of every resolved option (the manifest's "args"; in-memory masks by a name)."""
        args = {f.name: getattr(self, f.name) for f in fields(self)}  # not asdict: it would deep-copy mask arrays
        args = {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}
        if self.style_masks is not None:
            from scratchnst.app.picture.masks import mask_name

            args["style_masks"] = [mask_name(m, k) for k, m in enumerate(self.style_masks)]
        return args

    @classmethod
    def from_args(cls, args: dict) -> "Settings":
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items() if k in known}
        return cls(**values)


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ScratchnstError(f"--{name} must be a whole number > 0 (got {value!r})")


def _nonneg_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ScratchnstError(f"--{name} must be a whole number ≥ 0 (got {value!r})")


def weight_option(flag: str, value) -> float:
    """value as a float, finite and ≥ 0 (objective.check_weight); ScratchnstError naming --flag otherwise."""
    with user_error():
        return check_weight(f"--{flag}", value)


def array_module(backend: str) -> types.ModuleType:
    """The array module of --backend (core.backend.get_backend); ScratchnstError for an unknown name,
    or for "cupy" where CuPy or a CUDA device is missing (the message says which)."""
    try:
        return get_backend(backend)
    except (ValueError, BackendUnavailable) as exc:
        raise ScratchnstError(str(exc)) from None


def _positive_float(name: str, value) -> None:
    if weight_option(name, value) <= 0:
        raise ScratchnstError(f"--{name} must be > 0 (got {value!r})")


def _choice(name: str, value, choices: Sequence[str]) -> None:
    with user_error(f"--{name}"):
        check_choice("value", value, choices)


def _layers(name: str, layers) -> tuple[str, ...]:
    layers = tuple(layers)
    with user_error(f"--{name}"):
        check_layers(layers)
    if len(set(layers)) != len(layers):
        raise ScratchnstError(f"--{name}: a layer is listed twice ({','.join(layers)})")
    return layers
