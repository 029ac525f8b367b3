"""The memory plan of a picture run, made before the net is loaded: at each scale the whole image at
once where the run fits, else tile by tile (core/tiled.py) in the largest cores that fit, with the
L-BFGS history that fits; or a refusal that says what would fit. The manifest records the plan, and
a resumed run follows the recorded one (the machine's free memory may have changed since).

The budget is --max-memory, else what the machine (or the GPU) has available (memory.budget); the
models are memory.py's: estimate_peak_bytes for the whole image, tiled_peak_bytes for tiles.

    --tile 0      never tile: the whole run must fit (memory.check_fits, and its refusal)
    --tile N      every scale larger than one core is tiled in cores of N px
    (default)     a scale whose whole run fits stays untiled; else the largest core (a multiple of
                  the layers' alignment) whose tiled run fits
    history       at a scale where no core of PREFERRED_CORE px or more fits beside L-BFGS's
                  image-sized vectors, the largest --lbfgs-history with which one does (a note on
                  stderr); at one pair, any core down to the alignment. Each scale has its own: a
                  finished scale's pairs are dropped (optim's finish), so the small scales keep the
                  whole history and only the largest ones shorten it
    keep_forward  where the chosen core's every forward pass fits too (saves pass 2's forwards)
    refused       not even one pair and the smallest core fit: the message says what would (a
                  smaller --size, a larger --max-memory, Adam)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from scratchnst.app.files.images import long_side_dims
from scratchnst.app.picture.memory import (
    budget, check_fits, estimate_peak_bytes, format_bytes, largest_passing, tile_pixels, tiled_peak_bytes,
)
from scratchnst.core.backend import is_cupy
from scratchnst.core.preprocess import MIN_SIDE
from scratchnst.core.tiled import alignment
from scratchnst.errors import ScratchnstError

# Cores the planner prefers to a longer L-BFGS history: at relu5_1 an inner 256-px core runs a crop of
# (64 + 256 + 58)² pixels through the net, 2.2 times its own; a 128-px one 3.8 times.
PREFERRED_CORE = 256


@dataclass(frozen=True)
class ScalePlan:
    """How one scale is evaluated: the whole image at once (core None), or in `tiles` tiles of
    `core`-px cores whose crops hold `halo_overhead` times the image's pixels; L-BFGS keeps
    `history` pairs there."""

    size: int  # the scale's long side
    width: int
    height: int
    history: int
    core: int | None = None
    tiles: int = 1
    halo_overhead: float = 1.0
    keep_forward: bool = False
    estimate: int = 0  # bytes, memory.py's model


@dataclass(frozen=True)
class Plan:
    """The plan of a run: each scale's, the budget (None: unknown) and the estimate of the run's
    peak (bytes), and the notes the run prints."""

    scales: tuple[ScalePlan, ...]
    budget: int | None
    estimate: int
    notes: tuple[str, ...] = ()

    @property
    def tiled(self) -> bool:
        return any(s.core is not None for s in self.scales)

    def as_dict(self) -> dict:
        """The manifest's "plan"."""
        return {"budget": self.budget, "estimate": self.estimate, "notes": list(self.notes),
                "scales": [asdict(s) for s in self.scales]}

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        """The plan a manifest recorded (as_dict's; a manifest from before each scale had its own
        history records one, "lbfgs_history", for all); ScratchnstError when it is not one."""
        try:
            scales = tuple(ScalePlan(**{"history": d.get("lbfgs_history"), **s}) for s in d["scales"])
            if any(not isinstance(s.history, int) for s in scales):
                raise TypeError
            return cls(scales, d["budget"], int(d["estimate"]), tuple(d.get("notes", ())))
        except (KeyError, TypeError, ValueError):
            raise ScratchnstError("the manifest's memory plan cannot be read") from None


def scale_sizes(size: int, scales) -> list[int]:
    """The long side of each scale: size x scale, at least MIN_SIDE."""
    return [max(MIN_SIDE, int(round(size * s))) for s in scales]


class _Geometry:
    """A run's sizes at each scale: (long side, the image's (width, height), the styles')."""

    def __init__(self, settings, content_size: tuple[int, int], style_sizes):
        self.content_size, self.style_sizes = content_size, list(style_sizes)
        self.scales = []
        for side in scale_sizes(settings.size, settings.scales):
            style_side = max(MIN_SIDE, int(round(side * settings.style_scale)))
            self.scales.append((side, long_side_dims(*content_size, side), [long_side_dims(*st, style_side) for st in self.style_sizes]))


def make_plan(settings, content_size: tuple[int, int], style_sizes, xp=None) -> Plan:
    """The plan of a run of validated `settings` on a content of (width, height) `content_size` and
    styles of `style_sizes`, on the array module xp (None: the host); ScratchnstError when nothing
    fits the budget, saying what would."""
    gpu = xp is not None and is_cupy(xp)
    geometry = _Geometry(settings, content_size, style_sizes)
    if settings.tile == 0:
        need = check_fits(settings, content_size, style_sizes, xp)
        return Plan(_untiled(settings, geometry, gpu), budget(settings, xp)[0], need)
    limit, where = budget(settings, xp)
    need = estimate_peak_bytes(settings, content_size, style_sizes, gpu=gpu)
    if settings.tile is None and (limit is None or need <= limit):
        return Plan(_untiled(settings, geometry, gpu), limit, need)
    scales = _search(settings, geometry, limit, gpu)
    if scales is None:
        raise _refusal(settings, geometry, limit, where, gpu)
    notes = []
    if shortened := [s for s in scales if s.history != settings.lbfgs_history]:
        at = ", ".join(f"{s.history} at {s.width}x{s.height}" for s in shortened)
        tiles = f"tiles of {settings.tile} px" if settings.tile else f"tiles of {PREFERRED_CORE} px or more"
        notes.append(f"--lbfgs-history {at} instead of {settings.lbfgs_history}: each pair is two images of the scale's "
                     f"size in memory, and with more pairs {tiles} do not fit in {format_bytes(limit)} {where}")
    if settings.tile is None and any(s.core for s in scales):
        tiled = ", ".join(f"{s.width}x{s.height} in {s.tiles} tiles of {s.core}-px cores" for s in scales if s.core)
        notes.append(f"the whole picture needs {format_bytes(need)} > {format_bytes(limit)} {where}: tiled, {tiled}")
    return Plan(tuple(scales), limit, max(s.estimate for s in scales), tuple(notes))


def _untiled(settings, geometry: _Geometry, gpu: bool) -> tuple[ScalePlan, ...]:
    return tuple(ScalePlan(side, *dims, settings.lbfgs_history, estimate=_whole(settings, geometry, side, gpu))
                 for side, dims, _ in geometry.scales)


def _whole(settings, geometry: _Geometry, side: int, gpu: bool) -> int:
    """estimate_peak_bytes of the scale of long side `side`, untiled."""
    at = replace(settings, size=side, scales=(1.0,))
    return estimate_peak_bytes(at, geometry.content_size, geometry.style_sizes, gpu=gpu)


def _search(settings, geometry: _Geometry, limit: int | None, gpu: bool) -> list[ScalePlan] | None:
    """Each scale's plan, the first of its own that fits: the history as given and down to one pair
    with cores of PREFERRED_CORE px or more, then one pair with any core; None when a scale fits
    none. A history longer than the iterations holds no more pairs than they make: it is kept as
    given."""

    def tries(held: int) -> list[tuple[int, int]]:
        if settings.optimizer != "lbfgs" or limit is None:
            return [(held, 0)]
        return [(h, PREFERRED_CORE) for h in range(held, 0, -1)] + [(1, 0)]

    return _each_scale(settings, geometry, limit, gpu, tries)


def _scales(settings, geometry: _Geometry, limit: int | None, gpu: bool, floor: int) -> list[ScalePlan] | None:
    """Each scale's plan with the history as given and cores of `floor` px or more (or the one of
    --tile), or None when one of them does not fit."""
    return _each_scale(settings, geometry, limit, gpu, lambda held: [(held, floor)])


def _each_scale(settings, geometry: _Geometry, limit: int | None, gpu: bool, tries) -> list[ScalePlan] | None:
    """Each scale's plan: the first of tries(held) that fits, (history, the least core) pairs, where
    held is the pairs the scale's iterations can make (min(history, iterations)); None when a scale
    fits none. A scale after the first counts the one before's finished optimiser (_scale)."""
    scales, previous = [], None
    for (side, dims, style_dims), iterations in zip(geometry.scales, settings.scale_iterations()):
        held = min(settings.lbfgs_history, iterations)
        for history, floor in tries(held):
            at = replace(settings, lbfgs_history=history, iterations=iterations)
            scale = _scale(at, geometry, (side, dims, style_dims, previous), limit, gpu, floor)
            if scale is not None:
                scales.append(replace(scale, history=settings.lbfgs_history if history == held else history))
                break
        else:
            return None
        previous = dims
    return scales


def _scale(settings, geometry: _Geometry, scale: tuple, limit: int | None, gpu: bool, floor: int) -> ScalePlan | None:
    """One scale's plan (scale: its long side, (width, height), the styles', the previous scale's
    (width, height) or None): untiled where the whole fits (without --tile) or the image is within
    one --tile core; else the largest core ≥ floor that fits (or --tile's); None when none does."""
    side, dims, style_dims, previous = scale
    fits = lambda need: limit is None or need <= limit  # noqa: E731
    if settings.tile is None or max(dims) <= settings.tile:
        whole = _whole(settings, geometry, side, gpu)
        if fits(whole):
            return ScalePlan(side, *dims, settings.lbfgs_history, estimate=whole)
        if settings.tile is not None:
            return None
    names = (*settings.content_layers, *settings.style_layers)
    estimate = lambda core, keep=False: tiled_peak_bytes(  # noqa: E731
        settings, dims, style_dims, core, keep_forward=keep, gpu=gpu, previous=previous)
    core = settings.tile
    if core is None:
        align = alignment(names)
        top = -(-max(dims) // align)  # a core of top · align px covers the image
        k = largest_passing(min(top, -(-floor // align) or 1), top, lambda k: fits(estimate(k * align)))
        if k is None:
            return None
        core = _even_core(dims, k * align, align, names)
    elif not fits(estimate(core)):
        return None
    keep = bool(settings.style_layers) and limit is not None and fits(estimate(core, True))
    _, crops, tiles = tile_pixels(dims, core, names)
    return ScalePlan(side, *dims, settings.lbfgs_history, core, tiles, round(crops / (dims[0] * dims[1]), 4), keep,
                     estimate(core, keep))


def _even_core(dims: tuple[int, int], core: int, align: int, names) -> int:
    """The smallest core (a multiple of align) that cuts the image into as many tiles as `core` does:
    tiles of even sizes, the largest crop no larger."""
    per_side = -(-max(dims) // core)
    even = -(-max(dims) // per_side)
    even = -(-even // align) * align
    return even if tile_pixels(dims, even, names)[2] == tile_pixels(dims, core, names)[2] else core


def _refusal(settings, geometry: _Geometry, limit: int, where: str, gpu: bool) -> ScratchnstError:
    """The error of a run that does not fit even at one pair and the smallest core: its least
    estimate, and what would fit (the largest --size, the --max-memory, Adam)."""
    names = (*settings.content_layers, *settings.style_layers)
    least = replace(settings, lbfgs_history=1)
    core = settings.tile or alignment(names)
    _, dims, style_dims = geometry.scales[-1]
    previous = geometry.scales[-2][1] if len(geometry.scales) > 1 else None
    need = tiled_peak_bytes(replace(least, iterations=1), dims, style_dims, core, gpu=gpu, previous=previous)
    fits_at = lambda s: _scales(s, _Geometry(s, geometry.content_size, geometry.style_sizes), limit, gpu, 0) is not None  # noqa: E731
    best = largest_passing(MIN_SIDE, settings.size, lambda size: fits_at(replace(least, size=size)))
    hints = [f"largest --size that fits: {best}" if best else "not even the smallest size fits",
             f"or --max-memory {math.ceil(need / 2**30 * 100) / 100:.2f}G"]
    if settings.optimizer == "lbfgs" and fits_at(replace(settings, optimizer="adam")):
        hints.append("or --optimizer adam")
    if settings.tile:  # the cores the planner would choose
        found = _search(replace(settings, tile=None), geometry, limit, gpu)
        if found is not None:
            hints.append(f"or --tile {max(s.core or 0 for s in found)}")
    what = f"{core}-px cores" + (", --lbfgs-history 1" if settings.optimizer == "lbfgs" else "")
    return ScratchnstError(
        f"estimated peak memory {format_bytes(need)} > {format_bytes(limit)} {where}, even tiled ({what}); {', '.join(hints)}"
    )
