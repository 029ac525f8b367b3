"""Style masks (--style-masks): one greyscale picture per style image, white where that style applies.

Read and checked before any heavy work; resized to the content's grid at each scale. The objective
pools them further to each layer's grid (scratchnst.core.objective.layer_mask).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from scratchnst.app.files.images import load_image
from scratchnst.errors import ScratchnstError

GREY_TOLERANCE = 8  # levels R, G and B may differ by (JPEG chroma noise) and still count as grey
ASPECT_TOLERANCE = 0.02  # relative difference of width/height allowed between a mask and the content


def mask_name(source, k: int) -> str:
    """A mask's name for messages and the manifest: its resolved path, or "<style mask K>" in memory."""
    return str(Path(source).resolve()) if isinstance(source, (str, os.PathLike)) else f"<style mask {k + 1}>"


def load_mask(source, k: int) -> np.ndarray:
    """float64 (H, W) weights in 0..1 from a greyscale image file (0..255 → 0..1), a PIL image, or an
    array (uint8 0..255, bool, or floats in 0..1). ScratchnstError (one line) for an unreadable file,
    a colour picture, an array of the wrong kind or an all-zero mask."""
    name = mask_name(source, k)
    if isinstance(source, (str, os.PathLike, Image.Image)):
        rgb = np.asarray(load_image(source) if not isinstance(source, Image.Image) else source.convert("RGB"), dtype=np.int16)
        if int((rgb.max(axis=2) - rgb.min(axis=2)).max()) > GREY_TOLERANCE:
            raise ScratchnstError(f"{name}: a style mask must be greyscale (white: the style applies, black: it does not), not a colour picture")
        m = rgb.mean(axis=2) / 255.0
    else:
        m = _array_mask(np.asarray(source), name)
    if not m.max() > 0:
        raise ScratchnstError(f"{name}: the style mask is all zero, so style {k + 1} would apply nowhere")
    return m


def _array_mask(a: np.ndarray, name: str) -> np.ndarray:
    if a.ndim != 2 or min(a.shape) < 1:
        raise ScratchnstError(f"{name}: a style mask array must be 2-D (H, W), got shape {a.shape}")
    if a.dtype == np.uint8:
        return a / 255.0
    if a.dtype == bool:
        return a.astype(np.float64)
    if a.dtype.kind not in "fiu":
        raise ScratchnstError(f"{name}: a style mask array must hold numbers, got {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise ScratchnstError(f"{name}: a style mask array of {a.dtype} must hold weights in 0..1")
    return a


def check_masks(masks: list[np.ndarray], sources, content_size: tuple[int, int]) -> None:
    """ScratchnstError unless every mask has the content's shape (width/height within ASPECT_TOLERANCE)."""
    cw, ch = content_size
    for k, (m, src) in enumerate(zip(masks, sources)):
        h, w = m.shape
        if abs((w / h) / (cw / ch) - 1) > ASPECT_TOLERANCE:
            raise ScratchnstError(f"{mask_name(src, k)}: the style mask is {w}x{h} but the content image {cw}x{ch}: their shapes differ")


def masks_at(masks: list[np.ndarray], width: int, height: int) -> list[np.ndarray]:
    """Each mask resized to width × height: area-averaged (BOX) when shrinking, bilinear when growing."""
    out = []
    for m in masks:
        h, w = m.shape
        resample = Image.Resampling.BOX if width <= w and height <= h else Image.Resampling.BILINEAR
        img = Image.fromarray(m.astype(np.float32), mode="F").resize((width, height), resample)
        out.append(np.clip(np.asarray(img, dtype=np.float64), 0, 1))
    return out
