"""Peak-memory estimate of a stylize run, and what the machine (or GPU) has: refuse before allocating.

The model (bytes), calibrated against measured peak RSS on the NumPy backend (docs/reliability.md):

    BASELINE                              interpreter, NumPy/PIL/h5py, reading + verifying the weights
  + CANONICAL_SIZE * itemsize / 4         the 13 conv layers on the backend, in the run's dtype (the
                                          float32 weights file's size: their parameters plus ~30 KB)
  + ACT_FACTOR * E * P * itemsize         activations and backward caches at the largest scale
  + conv bands                            the largest of one conv call's bands, as the op module
                                          bounds them (ops.conv.band_bytes, ops.winograd.band_bytes:
                                          per split worker thread on the host, one band on a GPU; one
                                          conv runs at a time and frees its bands when it returns)
  + Winograd filter transforms            kept for each conv that runs Winograd
                                          (ops.winograd.filter_transform_bytes)
  + optimiser vectors                     L-BFGS: 2 * history + 8 vectors of 3 * H * W; Adam: 6

P is the largest pixel count the net sees (the output at the largest scale, or a style image at
size x style_scale), E the number of activation elements per input pixel of every VGG layer up to
the deepest requested one (a 2x2 pool quarters the pixels), and ACT_FACTOR the measured multiple
of that (caches, masks, transient copies of the forward and backward).

A scale evaluated tile by tile (core/tiled.py; plan.py decides) holds one tile's activations at a
time, and what stays image-sized (tiled_peak_bytes):

    BASELINE + the conv layers + Winograd's transforms      as above
  + ACT_FACTOR * E * P_tile * itemsize + conv bands         at the largest crop (core and halo) of
                                                            the image's or a style image's tiles
  + ACT_FACTOR * E * (Σ crops) * itemsize                   every tile's forward, with keep_forward
  + (optimiser vectors + IMAGE_ARRAYS) * 3 * H * W * itemsize   L-BFGS's pairs: at most one per iteration
  + the previous scale's finished optimiser                x and its gradient (finished_vectors), until
                                                            this scale's optimiser has started
  + content targets                                         Σ over the content layers of channels /
                                                            stride² values per pixel (relu4_1: 8)
  + MASK_BYTES per pixel and style mask

A scale whose tiles run on Dask workers (picture/spread.py) adds each worker's peak
(worker_peak_bytes), in the layout above:

    BASELINE + the conv layers + Winograd's transforms      as above
  + CANONICAL_SIZE                                          the float32 weights it read the net from
  + ACT_FACTOR * E * P_tile * itemsize + conv bands         at the image's largest crop, with the
                                                            worker's engine threads (it keeps no
                                                            forward; the style targets are made in
                                                            the client)
  + RECEIVED * (image + content targets + masks)            what the run broadcasts to it

Between tiled scales a worker keeps the process and its net (idle_worker_bytes). On a local
cluster the plan counts the workers in the budget beside this process (plan.Workers).
"""

from __future__ import annotations

import math
import os
import re
import types
from dataclasses import replace
from typing import Sequence

from scratchnst.app.files.images import long_side_dims
from scratchnst.app.files.weights import CANONICAL_SIZE
from scratchnst.core import host
from scratchnst.core.backend import is_cupy
from scratchnst.core.ops import conv, winograd
from scratchnst.core.preprocess import MIN_SIDE
from scratchnst.core.tiled import plan_tiles
from scratchnst.core.vgg import LAYER_NAMES, LAYERS, conv_algorithm, layers_through
from scratchnst.errors import ScratchnstError

BASELINE = 120 * 2**20
ACT_FACTOR = 1.0
# Image-sized arrays (3·H·W values) of a tiled evaluation besides the optimiser's vectors: the
# gradient summed over the tiles, TV's two differences, its gradient and its weighted copy.
IMAGE_ARRAYS = 5
# A worker holds what the run broadcasts to it (the image, the objective) twice at its peak: as the
# message it received and as the arrays made from it (measured: docs/benchmarks.md, "Workers in the
# memory plan").
RECEIVED = 2
# Bytes per pixel of each style mask: at the scale's size in float64 (masks.masks_at), on the
# objective's grid and pooled to the layers' (a third more) in the run's dtype.
MASK_BYTES = {4: 8 + 4 * 4 / 3, 8: 8 + 8 * 4 / 3}
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_bytes(text: str) -> int:
    """"2G", "500M", "1.5GiB", "123456" -> bytes (K/M/G/T are powers of 1024); ValueError otherwise."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.I)
    if not m:
        raise ValueError(f"expected a size like 2G, 500M or a number of bytes, got {text!r}")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"must be at least 1 byte, got {text!r}")
    return int(value)


def format_bytes(n: float) -> str:
    """1610612736 -> '1.50 GB' (binary units, as --max-memory reads them)."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def _layers_run(layers: Sequence[str]):
    """The VGG layers a forward pass to `layers` runs (unknown names ignored; at least conv1_1)."""
    return layers_through([n for n in layers if n in LAYER_NAMES] or ["conv1_1"])


def _activations_per_pixel(layers) -> float:
    """Activation elements per input pixel of the image and every layer of `layers` (a 2×2 pool
    quarters the pixels)."""
    return sum((layer.channels * 4.0**-layer.pools for layer in layers), 3.0)


def estimate_peak_bytes(
    settings, content_size: tuple[int, int], style_sizes: Sequence[tuple[int, int]], *, gpu: bool = False
) -> int:
    """Upper estimate of the peak memory of a run (bytes), before anything big is allocated.

    settings: validated Settings; content_size, style_sizes: (width, height) of the loaded images;
    gpu: the run is on CuPy (its conv bands are larger).
    """
    itemsize = _itemsize(settings)
    top = max(MIN_SIDE, int(round(settings.size * max(settings.scales))))
    cw, ch = long_side_dims(*content_size, top)
    pixels = cw * ch
    for sw, sh in style_sizes:
        w, h = long_side_dims(sw, sh, max(MIN_SIDE, int(round(top * settings.style_scale))))
        pixels = max(pixels, w * h)
    transforms, activations, tiles = _net_bytes(settings, pixels, gpu)
    optimiser = optimiser_vectors(settings) * 3 * cw * ch * itemsize
    return int(_process_bytes(settings) + transforms + activations + tiles + optimiser)


def tiled_peak_bytes(settings, dims: tuple[int, int], style_dims: Sequence[tuple[int, int]], core: int, *,
                     keep_forward: bool = False, gpu: bool = False, previous: tuple[int, int] | None = None) -> int:
    """Upper estimate of the peak memory (bytes) of one scale evaluated tile by tile in cores of
    `core` px (a multiple of tiled.alignment of the run's layers), before anything big is allocated.

    settings: validated Settings; dims: (width, height) of the image at that scale; style_dims: the
    style images' at that scale (their targets are made tile by tile too); keep_forward: every
    tile's forward pass kept from pass 1 to pass 2; gpu: the run is on CuPy; previous: the (width,
    height) of the scale before, whose finished optimiser (finished_vectors) lives until this one's
    has started.
    """
    itemsize, names = _itemsize(settings), _layer_names(settings)
    largest, crops, _ = tile_pixels(dims, core, names)
    for style in style_dims:
        largest = max(largest, tile_pixels(style, core, names)[0])
    kept = ACT_FACTOR * _activations_per_pixel(_layers_run(names)) * crops * itemsize if keep_forward else 0
    # L-BFGS adds one pair per iteration at most: a scale of fewer iterations never holds its whole history.
    vectors = optimiser_vectors(replace(settings, lbfgs_history=min(settings.lbfgs_history, settings.iterations)))
    before = previous[0] * previous[1] if previous else 0
    optimiser = (3 * (vectors + IMAGE_ARRAYS) * dims[0] * dims[1] + 3 * finished_vectors(settings) * before) * itemsize
    here = _tile_bytes(settings, largest, gpu, host.workers()) + _objective_bytes(settings, dims)
    return int(here + kept + optimiser)


def worker_peak_bytes(settings, dims: tuple[int, int], core: int, *, gpu: bool = False, threads: int = 1) -> int:
    """Upper estimate of the peak memory (bytes) of one Dask worker running the tiles of a scale of
    (width, height) `dims` in cores of `core` px (picture/spread.py), with `threads` engine threads
    (their conv bands); on a GPU, of the device it runs on."""
    largest = tile_pixels(dims, core, _layer_names(settings))[0]
    image = 3 * dims[0] * dims[1] * _itemsize(settings)
    sent = _objective_bytes(settings, dims) + image  # what is broadcast to it, once as received, once as arrays
    return int(_tile_bytes(settings, largest, gpu, threads) + CANONICAL_SIZE + RECEIVED * sent)


def idle_worker_bytes(settings) -> int:
    """A Dask worker's memory between tiled scales (bytes): the process and the net it keeps, and
    the weights file's float32 arrays it read the net from (a plain process's VmHWM after loading
    the net: 187 MiB in float32, 266 MiB in float64; a Dask worker's, 268 MiB in float64)."""
    return int(_process_bytes(settings) + CANONICAL_SIZE)


def _process_bytes(settings) -> float:
    """BASELINE and the conv layers in the run's dtype."""
    return BASELINE + CANONICAL_SIZE * _itemsize(settings) / 4


def _tile_bytes(settings, largest: int, gpu: bool, threads: int) -> float:
    """The process and the net, and one crop of `largest` pixels through it with the bands of
    `threads` host threads."""
    transforms, activations, bands = _net_bytes(settings, largest, gpu, threads)
    return _process_bytes(settings) + transforms + activations + bands


def _objective_bytes(settings, dims: tuple[int, int]) -> float:
    """The image-sized arrays of the objective of a (width, height) `dims` image: the content
    targets (Σ over the content layers of channels / stride² values per pixel; relu4_1: 8) and the
    style masks."""
    itemsize, pixels = _itemsize(settings), dims[0] * dims[1]
    targets = sum(layer.channels * 4.0**-layer.pools for layer in LAYERS if layer.name in settings.content_layers)
    return targets * pixels * itemsize + len(settings.style_masks or ()) * MASK_BYTES[itemsize] * pixels


def tile_pixels(dims: tuple[int, int], core: int, layers: Sequence[str]) -> tuple[int, int, int]:
    """(pixels of the largest crop, Σ pixels of the crops, the tiles) of a (width, height) image in
    cores of `core` px for a net run to `layers` (tiled.plan_tiles). Tiles are the rows' spans times
    the columns', each axis's found alone: one column of tiles, one row."""
    width, height = dims
    rows = [t.crop.shape[0] for t in plan_tiles(height, 1, core, layers)]
    cols = [t.crop.shape[1] for t in plan_tiles(1, width, core, layers)]
    return max(rows) * max(cols), sum(rows) * sum(cols), len(rows) * len(cols)


def optimiser_vectors(settings) -> int:
    """Image-sized vectors (3·H·W values) the optimiser keeps: L-BFGS 2 · history + 8, Adam 6."""
    return 2 * settings.lbfgs_history + 8 if settings.optimizer == "lbfgs" else 6


def finished_vectors(settings) -> int:
    """Image-sized vectors an optimiser keeps once its scale is done (optim's finish): x and its
    gradient, and Adam's two moments."""
    return 2 if settings.optimizer == "lbfgs" else 4


def _net_bytes(settings, pixels: float, gpu: bool, threads: int | None = None) -> tuple[float, float, float]:
    """(Winograd's filter transforms and bands, the activations and caches, the im2col bands) of a
    forward and backward of `pixels` input pixels to the run's deepest layer, split over `threads`
    host threads (None: this process's, host.workers)."""
    itemsize = _itemsize(settings)
    layers = _layers_run(_layer_names(settings))
    convs = [layer for layer in layers if layer.kind == "conv"]
    winograds = [layer for layer in convs if conv_algorithm(settings.conv, settings.dtype, layer) == "winograd"]
    # The bands one conv call holds, im2col's and Winograd's, as each op module bounds them, at the
    # layer's positions (pixels · 4^-pools: the model's, not floored).
    bands = {"on_device": gpu, "workers": 1 if gpu else threads or host.workers()}
    tiles = max(conv.band_bytes(l.c_in, l.channels, pixels * 4.0**-l.pools, itemsize, **bands) for l in convs)
    transforms = 0
    if winograds:  # the transforms kept, the largest one being made, and the largest call's band buffers
        made = [winograd.filter_transform_bytes(l.c_in, l.channels, itemsize) for l in winograds]
        transforms = sum(kept for kept, _ in made) + max(making for _, making in made)
        transforms += max(winograd.band_bytes(l.c_in, l.channels, pixels * 4.0**-l.pools, itemsize, **bands) for l in winograds)
    activations = ACT_FACTOR * _activations_per_pixel(layers) * pixels * itemsize
    return transforms, activations, tiles


def _itemsize(settings) -> int:
    return 8 if settings.dtype == "float64" else 4


def _layer_names(settings) -> tuple[str, ...]:
    return (*settings.content_layers, *settings.style_layers)


def largest_size_that_fits(settings, content_size, style_sizes, limit: int, *, gpu: bool = False) -> int | None:
    """The largest --size (others unchanged) whose estimate is ≤ limit; None if not even the minimum."""
    fits = lambda size: estimate_peak_bytes(replace(settings, size=size), content_size, style_sizes, gpu=gpu) <= limit
    return largest_passing(MIN_SIDE, settings.size, fits)


def largest_passing(lo: int, hi: int, passes) -> int | None:
    """The largest n in lo .. hi with passes(n), for a passes that holds up to some n and not after
    (a bisection); None if not even passes(lo)."""
    if not passes(lo):
        return None
    while lo < hi:  # invariant: passes(lo)
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if passes(mid) else (lo, mid - 1)
    return lo


def available_bytes(xp: types.ModuleType | None = None) -> int | None:
    """Bytes the run can still allocate: free GPU memory for CuPy, else the host's available memory
    (MemAvailable, capped by a cgroup limit); None when it cannot be told."""
    if xp is not None and is_cupy(xp):
        free, _ = xp.cuda.runtime.memGetInfo()
        return int(free + xp.get_default_memory_pool().free_bytes())
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            pass
    found.extend(_cgroup_room())
    return min(found) if found else None


def _cgroup_room() -> list[int]:
    """[limit - usage] of this process's cgroup (v2, or v1), if it has a memory limit."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            return [max(0, int(limit) - usage)]
    return []


def budget(settings, xp=None) -> tuple[int | None, str]:
    """(bytes the run may use, where that comes from in words): --max-memory, else what the GPU or
    the machine has available (available_bytes); None when it cannot be told."""
    limit = getattr(settings, "max_memory", None)
    if limit is not None:
        return limit, "allowed by --max-memory"
    gpu = xp is not None and is_cupy(xp)
    return available_bytes(xp), "free on the GPU" if gpu else "available on this machine"


def check_fits(settings, content_size, style_sizes, xp=None) -> int:
    """The estimate in bytes; ScratchnstError when it exceeds --max-memory or what is available."""
    gpu = xp is not None and is_cupy(xp)
    need = estimate_peak_bytes(settings, content_size, style_sizes, gpu=gpu)
    limit, where = budget(settings, xp)
    if limit is None:
        return need
    if need <= limit:
        return need
    best = largest_size_that_fits(settings, content_size, style_sizes, limit, gpu=gpu)
    hint = f"largest --size that fits: {best}" if best else "not even the smallest size fits"
    raise ScratchnstError(
        f"estimated peak memory {format_bytes(need)} > {format_bytes(limit)} {where}; "
        f"{hint} (--max-memory sets the limit)"
    )
