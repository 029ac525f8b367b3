"""What the studio accepts, checked once at its edge: a run's options (stylize's, checked by Settings,
so a bad one is the line the CLI would print) and an uploaded image (checked as stylize reads one);
serve's defaults and limits (the one home of each: the CLI's options take them from here).
Every refusal is a ScratchnstError with one line; `status` says which HTTP status the server answers."""

from __future__ import annotations

import warnings
from dataclasses import fields
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from scratchnst.app.files import images as im
from scratchnst.app.picture.settings import INITS, Settings
from scratchnst.core.checks import unknown
from scratchnst.errors import ScratchnstError

# Settings fields a form may set. Left out: what names files on the server (weights, style masks,
# an init path), what the studio decides for every run (quiet, checkpoints, plot, iteration files).
SERVER_CHOSEN = ("save_every", "checkpoint_every", "plot", "quiet", "weights", "style_masks")
FORM_OPTIONS = tuple(f.name for f in fields(Settings) if f.name not in SERVER_CHOSEN)


DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8765  # serve --host: any other needs the token
PREVIEW_EVERY_S = 2.0  # serve --preview-every: the least time between two updates (the "at least every 2 s")
CHECKPOINT_EVERY = 20  # serve --checkpoint-every: each costs ~0.2 s at 384 px (docs/benchmarks.md, "Studio")


class Limits(NamedTuple):
    """serve's limits: bytes of one request's images, pixels of one image, the output's long side,
    runs queued or running at once."""

    upload_bytes: int = 64 * 2**20
    pixels: int = 40_000_000
    size: int = 1024
    queued: int = 16


class Refused(ScratchnstError):
    """A request the studio refuses; `status` is the HTTP status it answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def run_args(options, n_styles: int, limits: Limits, checkpoint_every: int) -> dict:
    """The validated stylize arguments (Settings.as_args) of a request's `options`, a JSON object of
    stylize's option names (lists for the comma-list options); ScratchnstError naming the flag."""
    if not isinstance(options, dict):
        raise ScratchnstError(f"options must be a JSON object of stylize's options (got {type(options).__name__})")
    for name in options:
        if name not in FORM_OPTIONS:
            raise ScratchnstError(unknown("option", name, FORM_OPTIONS))
    if "init" in options and options["init"] not in INITS:
        raise ScratchnstError(f"--init: the studio starts from {', '.join(INITS)} (got {options['init']!r})")
    settings = Settings.from_args({**options, "quiet": True, "checkpoint_every": checkpoint_every}).validated(n_styles)
    if settings.size > limits.size:
        raise Refused(f"--size {settings.size} is over this studio's limit of {limits.size} px (serve --max-size)")
    return settings.as_args()


def check_image(path: Path, what: str, limits: Limits) -> str:
    """The PIL format of the uploaded image file at `path` (`what`: "content", "style 2"), once it is
    an image stylize can read within the limits; ScratchnstError otherwise, naming `what`, never the
    server's path."""
    try:
        if path.stat().st_size == 0:
            raise ScratchnstError(f"{what}: file is empty")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as header:  # the header only: the pixels are not decoded yet
                (w, h), fmt = header.size, header.format
        if w * h > limits.pixels:
            raise Refused(f"{what}: image too large ({w}x{h} = {w * h:,} pixels; this studio's limit is {limits.pixels:,}, "
                          "serve --max-pixels)", 413)
        im.load_image(path)  # every check stylize makes of an input
    except ScratchnstError as exc:
        exc.args = (str(exc).replace(str(path), what),)
        raise
    except Exception as exc:  # not an image at all, or a header PIL refuses (a decompression bomb): load_image says which
        try:
            im.load_image(path)
        except ScratchnstError as refused:
            line = str(refused).replace(str(path), what)
            raise Refused(line, 413) if isinstance(exc, Image.DecompressionBombError) else ScratchnstError(line) from None
        raise ScratchnstError(f"{what}: not an image, or an unsupported image format") from None
    return fmt
