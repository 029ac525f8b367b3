"""Image edges of the pipeline: load/resize/save PIL images, and (1, 3, H, W) Caffe-style arrays."""

from __future__ import annotations

import os
import re
import tempfile
import types
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from scratchnst.atomic import atomic_open
from scratchnst.backend import to_host
from scratchnst.errors import ScratchnstError, one_line

MEAN_BGR = (103.939, 116.779, 123.68)
MIN_SIDE = 16
MAX_PIXELS = 2**27  # ~134 megapixels: refuse anything larger (decompression bombs)
SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}

_MEAN = np.array(MEAN_BGR, dtype=np.float64).reshape(3, 1, 1)
# ITU-R BT.601 full-range YCbCr (the JPEG one); rows give Y, Cb - 128, Cr - 128 from R, G, B.
_RGB_TO_YCC = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]
)
_YCC_TO_RGB = np.linalg.inv(_RGB_TO_YCC)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode the image file at `path` into an RGB PIL image (fully loaded, file closed).

    EXIF orientation is applied. Transparent images (RGBA, LA, palette or grey with transparency)
    are composited over WHITE. 16-bit grey is scaled by 255/65535; 32-bit int ("I") and float
    ("F") images are mapped as described in `_to_rgb`. Raises ScratchnstError (one line naming
    the path) for a missing/empty/unreadable/corrupt/non-image file, more than MAX_PIXELS pixels,
    or a side shorter than MIN_SIDE.
    """
    p = Path(path)
    if not p.exists():
        raise ScratchnstError(f"{p}: no such file")
    if p.is_dir():
        raise ScratchnstError(f"{p}: is a directory, not an image file")
    try:
        if p.stat().st_size == 0:
            raise ScratchnstError(f"{p}: file is empty")
        with warnings.catch_warnings():
            # Size is checked below against MAX_PIXELS; PIL's own warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                _check_size(p, im.size)
                im.load()
                im = ImageOps.exif_transpose(im)
                try:
                    return _to_rgb(im)
                except ScratchnstError as exc:
                    raise ScratchnstError(f"{p}: {exc}") from None
    except ScratchnstError:
        raise
    except Image.DecompressionBombError as exc:
        m = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(m.group(1)):,} pixels" if m else "too many pixels"
        raise ScratchnstError(
            f"{p}: image too large ({size}; limit {MAX_PIXELS:,}), possible decompression bomb"
        ) from None
    except Image.UnidentifiedImageError:
        raise ScratchnstError(f"{p}: not an image, or an unsupported image format") from None
    except PermissionError:
        raise ScratchnstError(f"{p}: permission denied") from None
    except MemoryError:
        raise ScratchnstError(f"{p}: out of memory while decoding the image") from None
    except Exception as exc:  # bad data: PIL raises OSError, SyntaxError, ValueError, EOFError...
        raise ScratchnstError(f"{p}: corrupt or truncated image ({one_line(exc)})") from None


def _check_size(p: Path, size: tuple[int, int]) -> None:
    w, h = size
    if w * h > MAX_PIXELS:
        raise ScratchnstError(
            f"{p}: image too large ({w}x{h} = {w * h:,} pixels; limit {MAX_PIXELS:,})"
        )
    if min(w, h) < MIN_SIDE:
        raise ScratchnstError(f"{p}: image is {w}x{h}, smaller than {MIN_SIDE} px on a side")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any-mode PIL image -> new RGB image.

    Alpha is composited over white. "I;16*" is scaled by 255/65535. "I" (32-bit int): kept if in
    0..255, scaled by 255/65535 if in 0..65535, else min-max stretched. "F" (float): scaled by
    255 if in 0..1, kept if in 0..255, else min-max stretched.
    """
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        return Image.fromarray(_scale_to_uint8(np.asarray(im), im.mode)).convert("RGB")
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError:
        raise ScratchnstError(f"unsupported image mode {im.mode!r}") from None


def _scale_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Grey (H, W) of mode "I;16*", "I" or "F" -> uint8 (H, W), by the rules in `_to_rgb`."""
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


def resize_long_side(img: Image.Image, size: int) -> Image.Image:
    """Resize (LANCZOS) so the longer side is `size`, keeping aspect; `img` itself if already so."""
    if size < 1:
        raise ScratchnstError(f"image size must be a positive number of pixels, got {size}")
    w, h = img.size
    if max(w, h) == size:
        return img
    return img.resize(long_side_dims(w, h, size), Image.Resampling.LANCZOS)


def long_side_dims(w: int, h: int, size: int) -> tuple[int, int]:
    """(width, height) of a w x h image resized so its long side is `size` (rounded, ≥ 1)."""
    if w >= h:
        return size, max(1, (h * size + w // 2) // w)
    return max(1, (w * size + h // 2) // h), size


def resize_to(img: Image.Image, width: int, height: int) -> Image.Image:
    """Resize (LANCZOS) to exactly width x height; `img` itself if already that size."""
    if width < 1 or height < 1:
        raise ScratchnstError(f"image size must be positive, got {width}x{height}")
    if img.size == (width, height):
        return img
    return img.resize((width, height), Image.Resampling.LANCZOS)


def _rgb_array(image) -> np.ndarray:
    """PIL image (any mode) or uint8 (H, W, 3) array -> uint8 (H, W, 3) host array."""
    if isinstance(image, Image.Image):
        return np.asarray(image if image.mode == "RGB" else _to_rgb(image))
    a = to_host(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB array, got {a.dtype} {a.shape}")
    return a


def preprocess(image, *, dtype="float32", xp: types.ModuleType | None = None):
    """PIL image or uint8 RGB (H, W, 3) -> (1, 3, H, W) BGR array minus MEAN_BGR, 0..255 scale.

    The Caffe/Keras VGG convention. Built on the host in float64, cast to `dtype`, then moved
    with `xp.asarray` (xp: numpy, the default, or cupy). H, W < MIN_SIDE raises ScratchnstError.
    """
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise ValueError(f"preprocess needs a float dtype, got {dt}")
    a = _rgb_array(image)
    H, W = a.shape[:2]
    if min(H, W) < MIN_SIDE:
        raise ScratchnstError(f"image is {W}x{H}, smaller than {MIN_SIDE} px on a side")
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


def check_output_path(path: str | os.PathLike) -> Path:
    """Validate an output image path before any heavy work; returns it resolved.

    Checks: extension in SAVE_FORMATS, not a directory, and the parent directory either exists
    and is writable or can be created (its nearest existing ancestor is a writable directory,
    proved by creating and removing a probe file there). Leaves nothing behind. Raises ScratchnstError naming the path.
    """
    p = Path(path).expanduser()
    if p.suffix.lower() not in SAVE_FORMATS:
        allowed = ", ".join(SAVE_FORMATS)
        raise ScratchnstError(f"{p}: unsupported output extension {p.suffix!r} (use {allowed})")
    p = p.resolve()
    if p.is_dir():
        raise ScratchnstError(f"{p}: is a directory")
    ancestor = p.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ScratchnstError(f"{p}: cannot create its directory ({ancestor} is not a directory)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ScratchnstError(f"{p}: output directory {ancestor} is not writable")
    # access() trusts the mode bits; root, read-only mounts and pseudo file systems need a real try.
    try:
        fd, probe = tempfile.mkstemp(dir=ancestor, prefix=".scratchnst-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ScratchnstError(f"{p}: output directory {ancestor} is not writable ({one_line(exc)})") from None
    return p


def save_image(image, path: str | os.PathLike, *, quality: int = 95) -> None:
    """Write a PIL image or uint8 (H, W, 3) / (H, W) array to `path`, atomically.

    Format from the extension (.png, .jpg/.jpeg, .webp; `quality` for the lossy two). Writes a
    temp file in the same directory, fsyncs, then os.replace: on any failure the temp file is
    removed and an existing file at `path` is left untouched. Creates the parent directory.
    A new file gets mode 0644; a replaced one keeps its mode.
    """
    p = check_output_path(path)
    if not 1 <= quality <= 100:
        raise ScratchnstError(f"JPEG/WebP quality must be in 1..100, got {quality}")
    if isinstance(image, Image.Image):
        img = image if image.mode in ("RGB", "L") else _to_rgb(image)
    else:
        a = to_host(image)
        if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
            raise ValueError(f"expected a uint8 (H, W, 3) or (H, W) array, got {a.dtype} {a.shape}")
        img = Image.fromarray(a)
    fmt = SAVE_FORMATS[p.suffix.lower()]
    opts = {} if fmt == "PNG" else {"quality": int(quality)}
    with atomic_open(p) as f:
        img.save(f, format=fmt, **opts)


def _ycc(rgb: np.ndarray) -> np.ndarray:
    """uint8/float RGB (H, W, 3) -> float64 (H, W, 3) Y, Cb - 128, Cr - 128 (BT.601 full range)."""
    return rgb.astype(np.float64) @ _RGB_TO_YCC.T


def _from_ycc(ycc: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(ycc @ _YCC_TO_RGB.T), 0, 255).astype(np.uint8)


def preserve_colors(content_rgb: np.ndarray, stylized_rgb: np.ndarray) -> np.ndarray:
    """Luminance-only transfer: uint8 RGB (H, W, 3) with the stylized luma and the content's chroma.

    Colour space: YCbCr, ITU-R BT.601 full range (as in JPEG). Y comes from `stylized_rgb`;
    Cb, Cr come from `content_rgb`, resized (LANCZOS) to the stylized size first if needed.
    Accepts uint8 arrays or PIL images. Out-of-gamut results are clipped to 0..255.
    (Gatys et al. 2016, "Preserving color in neural artistic style transfer".)
    """
    styl = _rgb_array(stylized_rgb)
    H, W = styl.shape[:2]
    cont = _rgb_array(content_rgb)
    if cont.shape[:2] != (H, W):
        cont = np.asarray(resize_to(Image.fromarray(cont), W, H))
    ycc = _ycc(cont)
    ycc[..., 0] = _ycc(styl)[..., 0]
    return _from_ycc(ycc)


def match_luminance(style_rgb: np.ndarray, content_rgb: np.ndarray) -> np.ndarray:
    """Grey uint8 RGB (H, W, 3) of the style's luma, mean/std-matched to the content's luma.

    Gatys et al. 2016: L_s' = (sigma_c / sigma_s) (L_s - mu_s) + mu_c, with Y of BT.601. Output
    has the style's size, R = G = B = L_s'. Pair it with `luma_rgb(content)` for the
    luminance-only run, then `preserve_colors(content, result)`.
    """
    ys = _ycc(_rgb_array(style_rgb))[..., 0]
    yc = _ycc(_rgb_array(content_rgb))[..., 0]
    sd_s = ys.std()
    y = (ys - ys.mean()) * (yc.std() / sd_s if sd_s > 1e-8 else 0.0) + yc.mean()
    return np.repeat(np.clip(np.rint(y), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def luma_rgb(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) or PIL image -> grey uint8 RGB (H, W, 3) of its BT.601 luma."""
    y = _ycc(_rgb_array(rgb))[..., 0]
    return np.repeat(np.clip(np.rint(y), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def default_images() -> tuple[Image.Image, Image.Image]:
    """(content, style) RGB PIL images shipped in scratchnst/assets (see ATTRIBUTION.md there)."""
    assets = resources.files("scratchnst.assets")
    out = []
    for name in ("content.jpg", "style.jpg"):
        with resources.as_file(assets.joinpath(name)) as f:
            out.append(load_image(f))
    return out[0], out[1]
