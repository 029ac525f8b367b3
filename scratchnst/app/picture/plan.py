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
                  smaller --size, a larger --max-memory, Adam, fewer --workers)
    workers       a run whose tiles go to Dask workers (spread.py): each scale also records one
                  worker's estimate (memory.worker_peak_bytes), which the run checks against each
                  worker's memory limit once the cluster is up (spread.check_memory); a local
                  cluster's workers share this machine, so the budget holds this process and all of
                  them, and no forward is kept (the workers do not keep them)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

from scratchnst.app.files.images import long_side_dims
from scratchnst.app.picture.memory import (
    budget, check_fits, estimate_peak_bytes, format_bytes, idle_worker_bytes, largest_passing, tile_pixels,
    tiled_peak_bytes, worker_peak_bytes,
)
from scratchnst.core.backend import is_cupy
from scratchnst.core.preprocess import MIN_SIDE
from scratchnst.core.tiled import alignment
from scratchnst.errors import ScratchnstError

# Cores the planner prefers to a longer L-BFGS history: at relu5_1 an inner 256-px core runs a crop of
# (64 + 256 + 58)² pixels through the net, 2.2 times its own; a 128-px one 3.8 times.
PREFERRED_CORE = 256
_SAME = object()  # _Model.at: the model's own workers


class Workers(NamedTuple):
    """The Dask workers a run's tiles go to, as the plan counts them: `local` worker processes on
    this machine, in the budget beside this one (0: a cluster elsewhere, whose workers have their own
    memory), each splitting its work over `threads` engine threads."""

    local: int = 0
    threads: int = 1


@dataclass(frozen=True)
class ScalePlan:
    """How one scale is evaluated: the whole image at once (core None), or in `tiles` tiles of
    `core`-px cores whose crops hold `halo_overhead` times the image's pixels; L-BFGS keeps
    `history` pairs there. estimate: this process's peak and the local workers'; worker_estimate:
    one worker's, where the run has workers."""

    size: int  # the scale's long side
    width: int
    height: int
    history: int
    core: int | None = None
    tiles: int = 1
    halo_overhead: float = 1.0
    keep_forward: bool = False
    estimate: int = 0  # bytes, memory.py's model
    worker_estimate: int = 0  # bytes, memory.worker_peak_bytes (0: the run has no workers)


@dataclass(frozen=True)
class Plan:
    """The plan of a run: each scale's, the budget (None: unknown) and the estimate of the run's
    peak (bytes), the notes the run prints, and the local worker processes the estimates count."""

    scales: tuple[ScalePlan, ...]
    budget: int | None
    estimate: int
    notes: tuple[str, ...] = ()
    workers: int = 0

    @property
    def tiled(self) -> bool:
        return any(s.core is not None for s in self.scales)

    def as_dict(self) -> dict:
        """The manifest's "plan"."""
        return {"budget": self.budget, "estimate": self.estimate, "notes": list(self.notes), "workers": self.workers,
                "scales": [asdict(s) for s in self.scales]}

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        """The plan a manifest recorded (as_dict's; a manifest from before each scale had its own
        history records one, "lbfgs_history", for all); ScratchnstError when it is not one."""
        try:
            scales = tuple(ScalePlan(**{"history": d.get("lbfgs_history"), **s}) for s in d["scales"])
            if any(not isinstance(s.history, int) for s in scales):
                raise TypeError
            return cls(scales, d["budget"], int(d["estimate"]), tuple(d.get("notes", ())), int(d.get("workers", 0)))
        except (KeyError, TypeError, ValueError):
            raise ScratchnstError("the manifest's memory plan cannot be read") from None


def scale_sizes(size: int, scales) -> list[int]:
    """The long side of each scale: size x scale, at least MIN_SIDE."""
    return [max(MIN_SIDE, int(round(size * s))) for s in scales]


class _Model:
    """memory.py's estimates of a run's scales where it runs: its sizes at each scale, scales: (long
    side, the image's (width, height), the styles'), on a GPU or not, with the Dask workers its
    tiles go to (None: in this process)."""

    def __init__(self, settings, content_size: tuple[int, int], style_sizes, gpu: bool, workers: Workers | None):
        self.content_size, self.style_sizes, self.gpu, self.workers = content_size, list(style_sizes), gpu, workers
        self.scales = []
        for side in scale_sizes(settings.size, settings.scales):
            style_side = max(MIN_SIDE, int(round(side * settings.style_scale)))
            self.scales.append((side, long_side_dims(*content_size, side), [long_side_dims(*st, style_side) for st in self.style_sizes]))

    def at(self, settings, workers: Workers | None | object = _SAME) -> _Model:
        """The same run's model with other settings (sizes, scales) and, if given, other workers (None:
        in this process)."""
        return _Model(settings, self.content_size, self.style_sizes, self.gpu, self.workers if workers is _SAME else workers)

    @property
    def local(self) -> int:
        return self.workers.local if self.workers else 0

    def whole(self, settings, side: int) -> int:
        """The scale of long side `side` untiled: estimate_peak_bytes, and the local workers idle."""
        at = replace(settings, size=side, scales=(1.0,))
        need = estimate_peak_bytes(at, self.content_size, self.style_sizes, gpu=self.gpu)
        return need + self.local * idle_worker_bytes(settings)

    def tiled(self, settings, scale: tuple, core: int, keep: bool = False) -> tuple[int, int]:
        """(this process's and the local workers' peak, one worker's) of `scale` (its long side,
        (width, height), the styles', the previous scale's (width, height) or None) in cores of
        `core` px; keep: every tile's forward kept in this process (only without workers)."""
        _, dims, style_dims, previous = scale
        here = tiled_peak_bytes(settings, dims, style_dims, core, keep_forward=keep, gpu=self.gpu, previous=previous)
        if self.workers is None:
            return here, 0
        worker = worker_peak_bytes(settings, dims, core, gpu=self.gpu, threads=self.workers.threads)
        return here + self.local * worker, worker


def make_plan(settings, content_size: tuple[int, int], style_sizes, xp=None, workers: Workers | None = None) -> Plan:
    """The plan of a run of validated `settings` on a content of (width, height) `content_size` and
    styles of `style_sizes`, on the array module xp (None: the host), its tiles on `workers` (None:
    in this process); ScratchnstError when nothing fits the budget, saying what would."""
    gpu = xp is not None and is_cupy(xp)
    model = _Model(settings, content_size, style_sizes, gpu, workers)
    if settings.tile == 0:
        need = check_fits(settings, content_size, style_sizes, xp)
        return Plan(_untiled(settings, model), budget(settings, xp)[0], need)
    limit, where = budget(settings, xp)
    need = max(model.whole(settings, side) for side, _, _ in model.scales)
    if settings.tile is None and (limit is None or need <= limit):
        return Plan(_untiled(settings, model), limit, need, (), model.local)
    scales = _search(settings, model, limit)
    if scales is None:
        raise _refusal(settings, model, limit, where)
    notes = []
    if shortened := [s for s in scales if s.history != settings.lbfgs_history]:
        at = ", ".join(f"{s.history} at {s.width}x{s.height}" for s in shortened)
        tiles = f"tiles of {settings.tile} px" if settings.tile else f"tiles of {PREFERRED_CORE} px or more"
        notes.append(f"--lbfgs-history {at} instead of {settings.lbfgs_history}: each pair is two images of the scale's "
                     f"size in memory, and with more pairs {tiles} do not fit in {format_bytes(limit)} {where}")
    if settings.tile is None and any(s.core for s in scales):
        tiled = ", ".join(f"{s.width}x{s.height} in {s.tiles} tiles of {s.core}-px cores" for s in scales if s.core)
        notes.append(f"the whole picture needs {format_bytes(need)} > {format_bytes(limit)} {where}: tiled, {tiled}")
    if settings.tile is None and model.local and (note := _workers_note(settings, model, limit, where, scales)):
        notes.append(note)
    return Plan(tuple(scales), limit, max(s.estimate for s in scales), tuple(notes), model.local)


def _workers_note(settings, model: _Model, limit: int, where: str, scales: list[ScalePlan]) -> str | None:
    """A note when the local workers' share of the budget makes a scale's cores smaller than this
    process alone would tile it in (None otherwise)."""
    alone = _search(settings, model.at(settings, None), limit) or []
    smaller = [(s, a) for s, a in zip(scales, alone) if s.core and (a.core is None or a.core > s.core)]
    if not smaller:
        return None
    share = model.local * max(s.worker_estimate for s in scales)
    at = ", ".join(f"{s.core}-px cores at {s.width}x{s.height} instead of {f'{a.core} px' if a.core else 'the whole image'}"
                   for s, a in smaller)
    return f"the {model.local} local workers take up to {format_bytes(share)} of the {format_bytes(limit)} {where}: {at}"


def with_workers(recorded: Plan, settings, content_size: tuple[int, int], style_sizes, xp=None,
                 workers: Workers | None = None) -> Plan:
    """A resumed run's recorded plan (each scale whole or in its cores, with its history) estimated
    again for the workers its tiles now go to (None: this process; no forward kept with workers);
    ScratchnstError when a local cluster no longer fits the budget beside it, naming what would."""
    model = _Model(settings, content_size, style_sizes, xp is not None and is_cupy(xp), workers)
    plan = _estimated(recorded, settings, model)
    limit, where = budget(settings, xp)
    if model.local and limit is not None and plan.estimate > limit:
        fewer = _fewer_workers(workers, lambda w: _estimated(recorded, settings, model.at(settings, w)).estimate <= limit)
        hint = f"resume with --workers {fewer}" if fewer else "resume without --workers"
        raise ScratchnstError(f"the run's recorded plan with {model.local} local workers needs an estimated "
                              f"{format_bytes(plan.estimate)} > {format_bytes(limit)} {where}; {hint}")
    return plan


def _fewer_workers(workers: Workers, fits) -> int | None:
    """The most local workers, fewer than `workers`' and each with the cores they leave, for which
    fits(Workers) holds; None where there are no fewer or not even one fits."""
    if workers.local <= 1:
        return None
    cores = workers.local * workers.threads
    return largest_passing(1, workers.local - 1, lambda n: fits(Workers(n, max(1, cores // n))))


def _estimated(recorded: Plan, settings, model: _Model) -> Plan:
    """`recorded`'s scales, cores and histories with `model`'s estimates."""
    scales, previous = [], None
    for s, (side, dims, style_dims), iterations in zip(recorded.scales, model.scales, settings.scale_iterations()):
        at = replace(settings, lbfgs_history=s.history, iterations=iterations)
        if s.core is None:
            scales.append(replace(s, estimate=model.whole(at, side), worker_estimate=0))
        else:
            keep = s.keep_forward and model.workers is None
            need, worker = model.tiled(at, (side, dims, style_dims, previous), s.core, keep)
            scales.append(replace(s, keep_forward=keep, estimate=need, worker_estimate=worker))
        previous = dims
    return replace(recorded, scales=tuple(scales), estimate=max(s.estimate for s in scales), workers=model.local)


def worker_core(settings, plan: Plan, room: float, threads: int = 1) -> int | None:
    """The largest core (a multiple of the layers' alignment, no larger than the plan's) at which one
    worker with `threads` engine threads runs the tiles of every tiled scale of `plan` in `room`
    bytes (memory.worker_peak_bytes); None when not even the alignment's does."""
    tiled = [s for s in plan.scales if s.core]
    if not tiled:
        return None
    align = alignment((*settings.content_layers, *settings.style_layers))
    fits = lambda k: all(worker_peak_bytes(settings, (s.width, s.height), k * align, threads=threads) <= room for s in tiled)  # noqa: E731
    k = largest_passing(1, max(s.core for s in tiled) // align, fits)
    return k * align if k else None


def _untiled(settings, model: _Model) -> tuple[ScalePlan, ...]:
    return tuple(ScalePlan(side, *dims, settings.lbfgs_history, estimate=model.whole(settings, side))
                 for side, dims, _ in model.scales)


def _search(settings, model: _Model, limit: int | None) -> list[ScalePlan] | None:
    """Each scale's plan, the first of its own that fits: the history as given and down to one pair
    with cores of PREFERRED_CORE px or more, then one pair with any core; None when a scale fits
    none. A history longer than the iterations holds no more pairs than they make: it is kept as
    given."""

    def tries(held: int) -> list[tuple[int, int]]:
        if settings.optimizer != "lbfgs" or limit is None:
            return [(held, 0)]
        return [(h, PREFERRED_CORE) for h in range(held, 0, -1)] + [(1, 0)]

    return _each_scale(settings, model, limit, tries)


def _scales(settings, model: _Model, limit: int | None, floor: int) -> list[ScalePlan] | None:
    """Each scale's plan with the history as given and cores of `floor` px or more (or the one of
    --tile), or None when one of them does not fit."""
    return _each_scale(settings, model, limit, lambda held: [(held, floor)])


def _each_scale(settings, model: _Model, limit: int | None, tries) -> list[ScalePlan] | None:
    """Each scale's plan: the first of tries(held) that fits, (history, the least core) pairs, where
    held is the pairs the scale's iterations can make (min(history, iterations)); None when a scale
    fits none. A scale after the first counts the one before's finished optimiser (_scale)."""
    scales, previous = [], None
    for (side, dims, style_dims), iterations in zip(model.scales, settings.scale_iterations()):
        held = min(settings.lbfgs_history, iterations)
        for history, floor in tries(held):
            at = replace(settings, lbfgs_history=history, iterations=iterations)
            scale = _scale(at, model, (side, dims, style_dims, previous), limit, floor)
            if scale is not None:
                scales.append(replace(scale, history=settings.lbfgs_history if history == held else history))
                break
        else:
            return None
        previous = dims
    return scales


def _scale(settings, model: _Model, scale: tuple, limit: int | None, floor: int) -> ScalePlan | None:
    """One scale's plan (scale: its long side, (width, height), the styles', the previous scale's
    (width, height) or None): untiled where the whole fits (without --tile) or the image is within
    one --tile core; else the largest core ≥ floor that fits (or --tile's); None when none does."""
    side, dims, style_dims, previous = scale
    fits = lambda need: limit is None or need <= limit  # noqa: E731
    if settings.tile is None or max(dims) <= settings.tile:
        whole = model.whole(settings, side)
        if fits(whole):
            return ScalePlan(side, *dims, settings.lbfgs_history, estimate=whole)
        if settings.tile is not None:
            return None
    names = (*settings.content_layers, *settings.style_layers)
    estimate = lambda core, keep=False: model.tiled(settings, scale, core, keep)[0]  # noqa: E731
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
    keep = bool(settings.style_layers) and limit is not None and model.workers is None and fits(estimate(core, True))
    _, crops, tiles = tile_pixels(dims, core, names)
    return ScalePlan(side, *dims, settings.lbfgs_history, core, tiles, round(crops / (dims[0] * dims[1]), 4), keep,
                     *model.tiled(settings, scale, core, keep))


def _even_core(dims: tuple[int, int], core: int, align: int, names) -> int:
    """The smallest core (a multiple of align) that cuts the image into as many tiles as `core` does:
    tiles of even sizes, the largest crop no larger."""
    per_side = -(-max(dims) // core)
    even = -(-max(dims) // per_side)
    even = -(-even // align) * align
    return even if tile_pixels(dims, even, names)[2] == tile_pixels(dims, core, names)[2] else core


def _refusal(settings, model: _Model, limit: int, where: str) -> ScratchnstError:
    """The error of a run that does not fit even at one pair and the smallest core: its least
    estimate, and what would fit (the largest --size, the --max-memory, Adam, fewer local workers,
    the --tile the planner would choose)."""
    names = (*settings.content_layers, *settings.style_layers)
    least = replace(settings, lbfgs_history=1)
    core = settings.tile or alignment(names)
    side, dims, style_dims = model.scales[-1]
    previous = model.scales[-2][1] if len(model.scales) > 1 else None
    need = model.tiled(replace(least, iterations=1), (side, dims, style_dims, previous), core)[0]
    fits_at = lambda s, workers=_SAME: _scales(s, model.at(s, workers), limit, 0) is not None  # noqa: E731
    best = largest_passing(MIN_SIDE, settings.size, lambda size: fits_at(replace(least, size=size)))
    hints = [f"largest --size that fits: {best}" if best else "not even the smallest size fits",
             f"or --max-memory {math.ceil(need / 2**30 * 100) / 100:.2f}G"]
    if settings.optimizer == "lbfgs" and fits_at(replace(settings, optimizer="adam")):
        hints.append("or --optimizer adam")
    if model.local:  # fewer local workers, or none
        fewer = _fewer_workers(model.workers, lambda w: fits_at(least, w))
        if fewer is not None:
            hints.append(f"or --workers {fewer}")
        elif fits_at(least, None):
            hints.append("or without --workers")
    if settings.tile:  # the cores the planner would choose
        found = _search(replace(settings, tile=None), model, limit)
        if found is not None:
            hints.append(f"or --tile {max(s.core or 0 for s in found)}")
    what = f"{core}-px cores" + (", --lbfgs-history 1" if settings.optimizer == "lbfgs" else "")
    return ScratchnstError(
        f"estimated peak memory {format_bytes(need)} > {format_bytes(limit)} {where}, even tiled ({what}); {', '.join(hints)}"
    )
