"""The style side of the objective: each style image at a scale's size, and its Gram matrices.

The Gram targets of a style image depend on the image, its size, the style layers and the net, so
they are computed once per (image, size) and kept: across the scales of a run, the frames of a
video, and (in a `shared` cache a batch worker keeps) the jobs that use the same style. A tiled scale
makes them tile by tile (core.tiled.tiled_style_grams): the same sums, added in another order, so
they are kept apart from the whole image's.
"""

from __future__ import annotations

from PIL import Image

from scratchnst.app.files import images as im
from scratchnst.app.files.images import DEFAULT
from scratchnst.app.picture import color
from scratchnst.app.picture.inputs import Styles, net_key
from scratchnst.app.picture.settings import Settings
from scratchnst.core.objective import style_grams
from scratchnst.core.preprocess import preprocess
from scratchnst.core.tiled import tiled_style_grams

MIXED_COLORS = ("luminance", "linear")  # --color modes that bring the styles to the content: no sharing


class StyleTargets:
    """The style images of one run (or video) and their Gram targets at each scale."""

    def __init__(self, net, settings: Settings, styles: Styles, shared: dict | None = None):
        """net: the loaded VGG16; settings: validated; shared: a dict the caller keeps across runs,
        holding the Gram targets of named style images (paths and the embedded default)."""
        self.net, self.settings, self.styles = net, settings, styles
        self.shared, self.own = shared, {}

    def images(self, long_side: int, content: Image.Image) -> list:
        """The style images for a scale whose content is `content` (long side `long_side`): resized to
        long_side x style_scale, and brought to the content's luminance or colours as --color says
        (PIL images, or (H, W, 3) uint8 arrays once colour-matched)."""
        s = self.settings
        styles = [im.fit_long_side(st, int(round(long_side * s.style_scale))) for st in self.styles.images]
        if s.color == "luminance":
            return [im.match_luminance(st, content) for st in styles]
        if s.color == "linear":
            return [color.linear_transfer(st, content) for st in styles]
        return styles

    def grams(self, long_side: int, content: Image.Image, core: int | None = None) -> list[dict]:
        """style_grams of every style image at this scale (see images), from the caches when there;
        tile by tile in cores of `core` px when given."""
        if self.settings.color in MIXED_COLORS:  # they mix in this content: nothing to keep
            return [self._grams_of(st, core) for st in self.images(long_side, content)]
        side = int(round(long_side * self.settings.style_scale))
        found = []
        for k, src in enumerate(self.styles.srcs):
            if self.shared is not None and self._named(src):
                cache, key = self.shared, (src, side, self.settings.style_layers, net_key(self.net), self.net.weights_sha256, core)
            else:  # this run's own: by position (two images given in memory share a name)
                cache, key = self.own, (k, side, core)
            if key not in cache:
                cache[key] = self._grams_of(im.fit_long_side(self.styles.images[k], side), core)
            found.append(cache[key])
        return found

    def _grams_of(self, style, core: int | None) -> dict:
        s = self.settings
        image = preprocess(style, dtype=s.dtype, xp=self.net.xp)
        if core is None:
            return style_grams(self.net, image, s.style_layers)
        return tiled_style_grams(self.net, image, s.style_layers, core)

    @staticmethod
    def _named(src: str) -> bool:
        """Whether another run's image of this name is the same image: a path or the embedded default,
        not one given in memory."""
        return not src.startswith("<") or src == DEFAULT
