"""What one picture run reads, checked before any heavy work: the content (and its alpha), the
style images, the style masks, the start image (--init PATH), the output path; the memory the run
will need and how it is spent (plan.py); the network.

`read_inputs` runs every check in the order a user meets them. A video opens its styles and masks
and checks the sizes and memory once (open_styles, read_masks, check_sizes, check_memory), then
makes each frame's Inputs from memory.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from scratchnst.app.files import images as im
from scratchnst.app.files.weights import load_vgg16
from scratchnst.app.picture.masks import check_masks, load_mask
from scratchnst.app.picture.memory import check_fits
from scratchnst.app.picture.plan import Plan, Workers, make_plan, scale_sizes, with_workers
from scratchnst.app.picture.settings import INITS, Settings
from scratchnst.app.engine import array_module
from scratchnst.core.backend import backend_name
from scratchnst.core.preprocess import MIN_SIDE
from scratchnst.errors import ScratchnstError


@dataclass(frozen=True)
class Styles:
    """The style images, decoded (RGB), and their names for the manifest (resolved paths, "<default>",
    or "<style image>" for one given in memory)."""

    images: list
    srcs: list


@dataclass
class Inputs:
    """One run's images, decoded and checked."""

    content: Image.Image
    content_src: str  # the manifest's name of the content
    styles: Styles
    alpha: Image.Image | None = None  # the content's alpha channel, put back on the output
    masks: list | None = None  # the style masks as (H, W) weights, one per style (--style-masks)
    start: Image.Image | None = None  # the start image: --init PATH's, or a video frame's warped start
    out: Path | None = None  # where the picture goes (None: nothing is written)
    plan: Plan | None = None  # the memory plan: tiled or not at each scale (None: untiled)


def style_list(styles) -> list:
    """`styles` as a list (None: [None], the embedded painting); ScratchnstError for an empty one."""
    styles = [None] if styles is None else list(styles)
    if not styles:
        raise ScratchnstError("give at least one style image")
    return styles


def open_styles(styles: list) -> Styles:
    """The style images (paths, PIL images, uint8 arrays or None: the embedded painting), decoded."""
    loaded = [im.open_image(s, "style") for s in styles]
    return Styles([img for img, _ in loaded], [src for _, src in loaded])


def read_inputs(content, styles: list, settings: Settings, out=None, plan: Plan | None = None,
                workers: Workers | None = None) -> Inputs:
    """Every input of a run of validated `settings`, decoded and checked in the order a user meets
    them: the output path, the content, the styles, the start image, that the output overwrites no
    input, the masks, the sizes at each scale, then the memory (the plan, its notes on stderr; or
    `plan`, a resumed run's, estimated again where workers come or go), the tiles on `workers` (None:
    in this process); ScratchnstError (one line) otherwise."""
    s = settings
    out = im.check_output_path(out) if out is not None else None
    content_img, content_src = im.open_image(content, "content")
    alpha = im.content_alpha(content)
    loaded = open_styles(styles)
    start = im.load_image(s.init) if s.init not in INITS else None
    if out is not None:
        inputs = [content_src, *loaded.srcs] + ([s.init] if start is not None else [])
        inputs += [m for m in s.style_masks or () if isinstance(m, (str, os.PathLike))]
        _check_not_an_input(out, inputs)
    masks = read_masks(s, content_img.size)
    if alpha is not None and out is not None and im.SAVE_FORMATS[out.suffix.lower()] not in im.ALPHA_FORMATS:
        print(f"{out.name}: note: {out.suffix} cannot carry the content's alpha; use .png or .webp to keep it", file=sys.stderr)
    check_sizes(s, content_img.size, content_src, loaded)
    style_sizes, xp = [st.size for st in loaded.images], array_module(s.backend)
    if plan is None:
        plan = make_plan(s, content_img.size, style_sizes, xp, workers)
        for note in plan.notes:
            print(f"note: {note}", file=sys.stderr)
    elif workers is not None or plan.workers:
        plan = with_workers(plan, s, content_img.size, style_sizes, xp, workers)
    return Inputs(content_img, content_src, loaded, alpha, masks, start, out, plan)


def read_masks(settings: Settings, content_size: tuple[int, int]) -> list | None:
    """The style masks as (H, W) weights, checked against the content's size (None without --style-masks)."""
    if settings.style_masks is None:
        return None
    masks = [load_mask(m, k) for k, m in enumerate(settings.style_masks)]
    check_masks(masks, settings.style_masks, content_size)
    return masks


def check_sizes(settings: Settings, content_size: tuple[int, int], content_src: str, styles: Styles) -> None:
    """ScratchnstError when the content ((W, H) `content_size`) or a style image, resized for the
    largest scale, would have a side shorter than the net can take."""
    largest = scale_sizes(settings.size, settings.scales)[-1]
    _check_not_too_elongated(content_size, largest, content_src)
    for st, src in zip(styles.images, styles.srcs):
        _check_not_too_elongated(st.size, int(round(largest * settings.style_scale)), src)


def check_memory(settings: Settings, content_size: tuple[int, int], styles: Styles) -> int:
    """The run's peak memory estimate in bytes, untiled (a video's frames are not tiled);
    ScratchnstError when it cannot fit (memory.check_fits). Done before the net is allocated."""
    return check_fits(settings, content_size, [st.size for st in styles.images], array_module(settings.backend))


def net_key(of) -> tuple:
    """The identity of a VGG16: (backend name, dtype, pooling, conv), of a loaded one (`of` a VGG16)
    or of the one a run needs (`of` Settings). A loaded net serves the runs whose key is its own."""
    xp = of.xp if hasattr(of, "xp") else array_module(of.backend)
    return backend_name(xp), str(of.dtype), of.pooling, of.conv


def load_net(settings: Settings, net=None):
    """`net` when it is the one `settings` need (net_key), else the VGG16 loaded for them."""
    if net is not None and net_key(net) == net_key(settings):
        return net
    s = settings
    return load_vgg16(s.weights, backend=s.backend, dtype=s.dtype, pooling=s.pooling, conv=s.conv)


def _check_not_an_input(out: Path, inputs) -> None:
    """ScratchnstError if the output path is (resolved, or the same file as) one of the inputs."""
    for src in inputs:
        if src is None or str(src).startswith("<"):
            continue
        same = Path(src).resolve() == out
        if not same and out.exists():
            try:
                same = os.path.samefile(src, out)
            except OSError:
                pass
        if same:
            raise ScratchnstError(f"{out}: the output would overwrite the input image {src}")


def _check_not_too_elongated(size: tuple[int, int], long_side: int, src: str) -> None:
    """ScratchnstError if resizing a (W, H) image to `long_side` leaves a side shorter than the net can take."""
    w, h = size
    short = min(im.long_side_dims(w, h, long_side))
    if short < MIN_SIDE:
        need = math.ceil(MIN_SIDE * max(w, h) / min(w, h))
        raise ScratchnstError(
            f"{src}: a {w}x{h} image would be {short} px on its short side at {long_side} px; "
            f"the network needs at least {MIN_SIDE}: use --size ≥ {need} or a less elongated image"
        )
