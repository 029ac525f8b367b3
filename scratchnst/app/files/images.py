"""Image edges of the pipeline: load/resize/save PIL images, and (1, 3, H, W) Caffe-style arrays."""

from __future__ import annotations

import os
import re
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from scratchnst.app.files.atomic import atomic_open, probe_writable
from scratchnst.core.backend import to_host
from scratchnst.core.preprocess import ALPHA_MODES, MIN_SIDE, rgb_array, to_rgb
from scratchnst.errors import ScratchnstError, one_line, user_error

MAX_PIXELS = 2**27  # ~134 megapixels: refuse anything larger (decompression bombs)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")  # what a folder of images (or frames) holds
SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
ALPHA_FORMATS = ("PNG", "WEBP")  # the SAVE_FORMATS that carry an alpha channel

# ITU-R BT.601 full-range YCbCr (the JPEG one); rows give Y, Cb - 128, Cr - 128 from R, G, B.
_RGB_TO_YCC = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]
)
_YCC_TO_RGB = np.linalg.inv(_RGB_TO_YCC)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode the image file at `path` into an RGB PIL image (fully loaded, file closed).

    EXIF orientation is applied. Transparent images (RGBA, LA, palette or grey with transparency)
    are composited over WHITE. 16-bit grey is scaled by 255/65535; 32-bit int ("I") and float
    ("F") images are mapped as described in `scratchnst.core.preprocess.to_rgb`. Raises ScratchnstError (one line naming
    the path) for a missing/empty/unreadable/corrupt/non-image file, more than MAX_PIXELS pixels,
    or a side shorter than MIN_SIDE. Running out of memory is no fault of the file: MemoryError
    (naming the path) goes on to the caller.
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
                with user_error(str(p)):  # a mode to_rgb cannot convert
                    return to_rgb(im)
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
    except MemoryError:  # not the file's fault, so not ScratchnstError (the CLI: exit 1)
        raise MemoryError(f"while decoding {p}") from None
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
    try:
        probe_writable(ancestor)
    except OSError as exc:
        raise ScratchnstError(f"{p}: output directory {ancestor} is not writable ({one_line(exc)})") from None
    return p


def save_image(image, path: str | os.PathLike, *, quality: int = 95) -> None:
    """Write a PIL image or uint8 (H, W, 3) / (H, W) array to `path`, atomically.

    Format from the extension (.png, .jpg/.jpeg, .webp; `quality` for the lossy two). An RGBA image
    keeps its alpha in PNG and WebP and is composited over white in JPEG. Writes a
    temp file in the same directory, fsyncs, then os.replace: on any failure the temp file is
    removed and an existing file at `path` is left untouched. Creates the parent directory.
    A new file gets mode 0644; a replaced one keeps its mode.
    """
    p = check_output_path(path)
    if not 1 <= quality <= 100:
        raise ScratchnstError(f"JPEG/WebP quality must be in 1..100, got {quality}")
    fmt = SAVE_FORMATS[p.suffix.lower()]
    if isinstance(image, Image.Image):
        keep = ("RGB", "L", "RGBA") if fmt in ALPHA_FORMATS else ("RGB", "L")  # RGBA into JPEG: over white
        with user_error():
            img = image if image.mode in keep else to_rgb(image)
    else:
        a = to_host(image)
        if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
            raise ValueError(f"expected a uint8 (H, W, 3) or (H, W) array, got {a.dtype} {a.shape}")
        img = Image.fromarray(a)
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
    styl = rgb_array(stylized_rgb)
    H, W = styl.shape[:2]
    cont = rgb_array(content_rgb)
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
    ys = _ycc(rgb_array(style_rgb))[..., 0]
    yc = _ycc(rgb_array(content_rgb))[..., 0]
    sd_s = ys.std()
    y = (ys - ys.mean()) * (yc.std() / sd_s if sd_s > 1e-8 else 0.0) + yc.mean()
    return np.repeat(np.clip(np.rint(y), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def luma_rgb(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) or PIL image -> grey uint8 RGB (H, W, 3) of its BT.601 luma."""
    y = _ycc(rgb_array(rgb))[..., 0]
    return np.repeat(np.clip(np.rint(y), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def default_images() -> tuple[Image.Image, Image.Image]:
    """(content, style) RGB PIL images shipped in scratchnst/assets (see ATTRIBUTION.md there)."""
    assets = resources.files("scratchnst.assets")
    out = []
    for name in ("content.jpg", "style.jpg"):
        with resources.as_file(assets.joinpath(name)) as f:
            out.append(load_image(f))
    return out[0], out[1]


DEFAULT = "<default>"  # the manifest's name for an embedded default image


def open_image(source, what: str) -> tuple[Image.Image, str]:
    """(RGB image, its name for the manifest) from a path, a PIL image, a uint8 RGB array, or None
    (the embedded default `what`: "content" or "style")."""
    if source is None or source == DEFAULT:
        content, style = default_images()
        return (content if what == "content" else style), DEFAULT
    if isinstance(source, (str, os.PathLike)):
        return load_image(source), str(Path(source).resolve())
    if isinstance(source, Image.Image):
        image, name = source, f"<{what} image>"
    else:
        image, name = Image.fromarray(np.asarray(source, dtype=np.uint8)), f"<{what} array>"
    with user_error():  # a mode to_rgb cannot convert
        return to_rgb(image), name


def content_alpha(source) -> Image.Image | None:
    """The alpha channel ("L" image) of an RGBA/LA/transparent content (a path, PIL image or
    (H, W, 4) uint8 array), with the EXIF orientation load_image applies; None when it has none.
    Call after open_image has accepted the source (so a path is a readable image)."""
    if source is None or (isinstance(source, str) and source == DEFAULT):
        return None
    if isinstance(source, (str, os.PathLike)):
        with Image.open(source) as img:
            img.load()
            return content_alpha(ImageOps.exif_transpose(img))
    if isinstance(source, Image.Image):
        if source.mode in ALPHA_MODES or "transparency" in source.info:
            return source.convert("RGBA").getchannel("A")
        return None
    a = np.asarray(source)
    return Image.fromarray(a[..., 3].astype(np.uint8)) if a.ndim == 3 and a.shape[2] == 4 else None


def fit_long_side(img: Image.Image, long_side: int) -> Image.Image:
    """Resize to `long_side`, or larger where needed to keep the short side ≥ MIN_SIDE."""
    w, h = img.size
    need = -(-MIN_SIDE * max(w, h) // min(w, h))
    return resize_long_side(img, max(long_side, need))
