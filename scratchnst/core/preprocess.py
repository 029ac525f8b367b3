"""The image edges of the core: RGB pixels <-> the (1, 3, H, W) arrays VGG-16 was trained on.

preprocess: RGB (PIL or uint8 (H, W, 3)) -> BGR minus the ImageNet mean, 0..255 scale (the
Caffe/Keras VGG convention); deprocess is its inverse. File decoding, resizing and saving belong to
the application (scratchnst.app.files.images).
"""

from __future__ import annotations

import types

import numpy as np
from PIL import Image

from scratchnst.core.backend import to_host

MEAN_BGR = (103.939, 116.779, 123.68)
MIN_SIDE = 16  # four 2×2 poolings leave 1 px: the smallest side VGG-16's relu5_1 can see
_MEAN = np.array(MEAN_BGR, dtype=np.float64).reshape(3, 1, 1)
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any-mode PIL image -> new RGB image.

    Alpha is composited over white. "I;16*" is scaled by 255/65535. "I" (32-bit int): kept if in
    0..255, scaled by 255/65535 if in 0..65535, else min-max stretched. "F" (float): scaled by
    255 if in 0..1, kept if in 0..255, else min-max stretched. A mode PIL cannot convert raises
    ValueError.
    """
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        return Image.fromarray(_scale_to_uint8(np.asarray(im), im.mode)).convert("RGB")
    if im.mode in ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError:
        raise ValueError(f"unsupported image mode {im.mode!r}") from None


def _scale_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Grey (H, W) of mode "I;16*", "I" or "F" -> uint8 (H, W), by the rules in `to_rgb`."""
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    offset = 0.0
    if mode.startswith("I;16"):
        scale = 255.0 / 65535.0
    elif mode == "F" and lo >= 0 and hi <= 1:
        scale = 255.0
    elif lo >= 0 and hi <= 255:
        scale = 1.0
    elif mode == "I" and lo >= 0 and hi <= 65535:
        scale = 255.0 / 65535.0
    else:
        scale, offset = 255.0 / max(hi - lo, 1e-12), lo
    return np.clip(np.rint((a - offset) * scale), 0, 255).astype(np.uint8)


def rgb_array(image) -> np.ndarray:
    """PIL image (any mode) or uint8 (H, W, 3) array -> uint8 (H, W, 3) host array."""
    if isinstance(image, Image.Image):
        return np.asarray(image if image.mode == "RGB" else to_rgb(image))
    a = to_host(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB array, got {a.dtype} {a.shape}")
    return a


def preprocess(image, *, dtype="float32", xp: types.ModuleType | None = None):
    """PIL image or uint8 RGB (H, W, 3) -> (1, 3, H, W) BGR array minus MEAN_BGR, 0..255 scale.

    The Caffe/Keras VGG convention. Built on the host in float64, cast to `dtype`, then moved
    with `xp.asarray` (xp: numpy, the default, or cupy). H, W < MIN_SIDE raises ValueError.
    """
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise ValueError(f"preprocess needs a float dtype, got {dt}")
    a = rgb_array(image)
    H, W = a.shape[:2]
    if min(H, W) < MIN_SIDE:
        raise ValueError(f"image is {W}x{H}, smaller than {MIN_SIDE} px on a side")
    x = a[:, :, ::-1].transpose(2, 0, 1).astype(np.float64) - _MEAN
    x = np.ascontiguousarray(x[None], dtype=dt)
    return x if xp is None or xp is np else xp.asarray(x)


def deprocess(x) -> np.ndarray:
    """(1, 3, H, W) or (3, H, W) preprocessed array (host or device) -> uint8 RGB (H, W, 3).

    Inverse of `preprocess`: add MEAN_BGR, BGR -> RGB, round, clip to 0..255 (NaN -> 0).
    """
    a = to_host(x).astype(np.float64)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3 or a.shape[0] != 3:
        raise ValueError(f"expected (1, 3, H, W) or (3, H, W), got {a.shape}")
    rgb = (a + _MEAN)[::-1].transpose(1, 2, 0)
    rgb = np.nan_to_num(rgb, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
