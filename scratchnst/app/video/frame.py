"""One frame of a video, in either mode: a finished frame read back, its start (fill_new: the warped
previous output, continued across the boundary where the motion is not reliable), the temporal term
towards the warped frame (or several: held_to), the stopping rule of a frame started warm (settled),
and the frame stylized (Painter), its sharpness recorded.

What every frame shares is made once per video (per worker, in multi-pass mode on Dask): the
style images and masks, read and checked with the memory estimate; the net; the styles' Gram
targets at each scale. A frame's start (the warped previous output, or a blend) is handed over in
memory, as the same uint8 image a PNG would hold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from scratchnst.app.files import images as im
from scratchnst.app.picture.coarse_to_fine import CoarseToFine
from scratchnst.app.picture.inputs import Inputs, Styles, check_memory, check_sizes, load_net, read_masks
from scratchnst.app.picture.outputs import picture
from scratchnst.app.picture.settings import INITS, Settings
from scratchnst.app.picture.targets import StyleTargets
from scratchnst.app.video import flow
from scratchnst.core.backend import get_array_module
from scratchnst.core.losses import temporal_loss
from scratchnst.core.objective import PixelTerm
from scratchnst.core.preprocess import preprocess

CONTENT = "<content image>"  # a frame's name as the content of its stylization
FILL_GAPS = (4, 10)  # fill_new: how far past the mirror image new content is taken from, drawn per frame (fill_gap);
# docs/benchmarks.md, "New content painted, and frames that stop when done"


def read_frame(png: Path) -> np.ndarray:
    """A finished frame of the work folder as (H, W, 3) uint8."""
    return np.asarray(Image.open(png).convert("RGB"))


def fill_new(warped: np.ndarray, frame: np.ndarray, mask: np.ndarray, gap: int) -> np.ndarray:
    """A warm frame's start: the warped previous output where the motion is reliable (mask > 0). Where
    it is not (pixels disoccluded or come in at the frame's edge, which the warp fills with stretched
    border pixels), the painting continued across the boundary: the warped output at the pixel's mirror
    image in its nearest reliable pixel, set `gap` px further in (reflected). New content so starts as
    strokes of this video's painting, which a few iterations fit to it, rather than as a photo, which
    20 iterations leave half painted. The input frame itself where that point is not a reliable pixel
    of the frame (a scene cut: none is).

    warped, frame: (H, W, 3) uint8; mask: (H, W) consistency weights (flow.consistency_mask); gap:
    fill_gap of the frame.
    """
    new = mask <= 0
    if new.all() or not new.any():
        return np.where(new[..., None], frame, warped)
    src, found = reflected(new, gap)
    return np.where(new[..., None], np.where(found[..., None], warped[src[..., 0], src[..., 1]], frame), warped)


def fill_gap(k: int) -> int:
    """Frame k's gap for fill_new, drawn from FILL_GAPS by a generator seeded with k (a resumed run draws
    the same). Copied from the same distance every frame, the edge of a pan would repeat itself every
    2 + gap px: at gap 0 as stripes of 2 px, at a fixed 7 as a pattern of 9."""
    low, high = FILL_GAPS
    return int(np.random.default_rng(k).integers(low, high + 1))


def reflected(new: np.ndarray, gap: int) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel p: the point 2q − p + gap·u, q the pixel nearest p (Euclidean) that is not `new`
    and u the step from p towards q rounded to a unit (so p itself where it is not new), as (H, W, 2)
    int (row, column) clipped to the frame; and whether that point lies in the frame on a pixel not
    `new`, (H, W) bool.

    new: (H, W) bool with at least one False.
    """
    _, cv2 = flow.video_libs()
    _, label = cv2.distanceTransformWithLabels(new.astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    q = np.argwhere(~new)[label - 1]  # labels number the zero (not new) pixels in raster order, from 1
    p = np.stack(np.indices(new.shape), -1)
    step = q - p
    unit = np.rint(step / np.maximum(np.hypot(step[..., 0], step[..., 1]), 1)[..., None]).astype(int)
    point = 2 * q - p + gap * unit
    inside = (point >= 0).all(-1) & (point < new.shape).all(-1)
    point = np.clip(point, 0, np.array(new.shape) - 1)
    return point, inside & ~new[point[..., 0], point[..., 1]]


def held_to(warped: list, masks: list) -> tuple[np.ndarray, np.ndarray]:
    """One temporal target for several warped outputs: Σ_n c_n (x − ω_n)² = C (x − m)² + const, with
    C = Σ_n c_n and m = Σ_n c_n ω_n / C; no const where the c_n are binary and disjoint (the long-term
    masks, flow.long_term_masks), where m is the ω_n whose c_n is 1.

    warped: the N outputs warped to the frame, (H, W, 3) uint8 each; masks: their (H, W) weights c_n.
    Returns (m (H, W, 3) uint8, C (H, W) float64): temporal_loss's target and (up to a factor) mask.
    """
    c = [m.astype(np.float64) for m in masks]
    total = sum(c)
    m = sum(ci[..., None] * w for ci, w in zip(c, warped)) / np.maximum(total, 1e-12)[..., None]
    return np.clip(np.rint(m), 0, 255).astype(np.uint8), total


def sharpness(frame: np.ndarray) -> float:
    """Mean |Laplacian| of a frame's luma (0..255), over the pixels with four neighbours: how much stroke
    detail it carries (the manifest's per-frame `sharpness`). frame: (H, W, 3), BT.601 luma."""
    y = frame.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    lap = 4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]
    return float(np.abs(lap).mean())


def settled(change: float, window: int):
    """CoarseToFine's stop_when for a frame started warm: "settled" once the loss fell by less than
    `change` (relative to the loss now) over the last `window` iterations; None (no rule) for change 0."""
    if not change:
        return None

    def stop(history: list[dict]) -> str | None:
        if len(history) <= window:
            return None
        before, now = history[-1 - window]["loss"], history[-1]["loss"]
        return "settled" if before - now < change * abs(now) else None

    return stop


def temporal_terms(settings: Settings, weight: float, warped: np.ndarray, mask: np.ndarray):
    """CoarseToFine's pixel_terms: the temporal term of `weight` towards `warped` ((H, W, 3) uint8)
    under `mask` ((H, W)), both brought to the size and colour space of each scale's content array."""
    target_img = Image.fromarray(im.luma_rgb(warped) if settings.preserve_colors else warped)

    def terms(content):
        _, _, h, w = content.shape
        xp = get_array_module(content)
        target = preprocess(im.resize_to(target_img, w, h), dtype=settings.dtype, xp=xp)
        c = mask if mask.shape == (h, w) else np.asarray(Image.fromarray(mask, mode="F").resize((w, h), Image.Resampling.BILINEAR))
        c = xp.asarray(c[None, None], dtype=settings.dtype)
        return [PixelTerm("temporal", weight, lambda x: temporal_loss(x, target, c))]

    return terms


def frame_settings(settings: Settings, first_iterations: int, *, first: bool, warm: bool) -> Settings:
    """A frame's Settings: the first (frame 0, or pass 1) gets the stylize schedule with
    --first-iterations; one started warm (from a warped previous output) one pass at full size;
    any other (--independent) the video's settings."""
    if first:
        return replace(settings, iterations=first_iterations, quiet=True)
    if warm:
        return replace(settings, scales=(1.0,), quiet=True)
    return replace(settings, quiet=True)


@dataclass
class Shared:
    """What a caller lends the frames of a video: a loaded net (used when it fits the settings) and a
    cache of style Gram targets kept across runs (a batch worker's)."""

    net: object = None
    style_cache: dict | None = None


class Painter:
    """What the frames of one video share, and the stylization of each."""

    def __init__(self, styles: Styles, settings: Settings, frame_size: tuple[int, int], shared: Shared | None = None, *,
                 memory: bool = True):
        """Checks what a frame's stylization would, once: the masks against `frame_size` (W, H); the
        sizes and (memory) the memory estimate of the video's schedule here, and of a warm frame's
        (one scale) at the first such frame. settings: the video's, validated at the frames' size.
        The net is loaded on the first frame."""
        shared = shared or Shared()
        self.settings, self.styles, self.net, self.style_cache = settings, styles, shared.net, shared.style_cache
        self.frame_size, self.memory, self.checked = frame_size, memory, set()
        self.masks = read_masks(settings, frame_size)
        self.start = im.load_image(settings.init) if settings.init not in INITS else None  # --init PATH
        self._check(settings)
        self.targets = None

    def _check(self, settings: Settings) -> None:
        """The size and memory checks of a frame schedule (its scales), once per schedule."""
        if settings.scales not in self.checked:
            check_sizes(settings, self.frame_size, CONTENT, self.styles)
            if self.memory:
                check_memory(settings, self.frame_size, self.styles)
            self.checked.add(settings.scales)

    def paint(self, frame: np.ndarray, png: Path, settings: Settings, *, start: np.ndarray | None = None, terms=None,
              on_progress=None, stop_when=None) -> tuple[dict, np.ndarray] | None:
        """Stylize `frame` ((H, W, 3) uint8) with `settings` (frame_settings of the video's) from
        `start` ((H, W, 3) uint8, else --init), with the pixel terms `terms`, stopping early where
        `stop_when` (settled) says; write it to `png`.

        Returns (its record: iterations, evaluations, why it stopped ("settled", "converged": the
        optimiser's own tolerance, or "iterations"), the last loss terms, seconds, sharpness; the
        output (H, W, 3) uint8), or None when stopped before the end (Ctrl-C, or on_progress asked):
        the frame is not finished.
        Raises picture.coarse_to_fine.NonFiniteError for a NaN/inf loss.
        """
        started = time.perf_counter()
        self._check(settings)
        if self.targets is None:
            self.net = load_net(self.settings, self.net)
            self.targets = StyleTargets(self.net, self.settings, self.styles, self.style_cache)
        content, _ = im.open_image(Image.fromarray(frame), "content")
        inputs = Inputs(content, CONTENT, self.styles, masks=self.masks,
                        start=Image.fromarray(start) if start is not None else self.start)
        run = CoarseToFine(settings, inputs, self.net, self.targets, pixel_terms=terms, on_progress=on_progress, stop_when=stop_when)
        status, error = run.run()
        if error is not None:
            raise error
        if status != "done":
            return None
        out = np.asarray(picture(run.opt.x, settings, content))
        im.save_image(out, png)
        last = run.history[-1] if run.history else {}
        record = {
            "iterations": len(run.history), "evaluations": run.evaluations,
            "stopped": run.stopped or ("converged" if run.opt.converged else "iterations"),
            **{name: last.get(name) for name in ("loss", "content", "style", "tv", "temporal")},
            "stylize_s": round(time.perf_counter() - started, 3), "sharpness": round(sharpness(out), 3),
        }
        return record, out
