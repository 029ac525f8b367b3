"""Regenerate scratchnst/assets/{content,style}.jpg (see scratchnst/assets/ATTRIBUTION.md).

    python tools/make_default_images.py            # both images
    python tools/make_default_images.py --style    # only the generated style image

content.jpg: scikit-image's `astronaut` photograph (NASA, public domain), long side 512. Needs
scikit-image importable (e.g. `pip install --target /tmp/skimg scikit-image` and
PYTHONPATH=/tmp/skimg); it is not a dependency of scratchnst.
style.jpg: a deterministic (seeded) swirling brush-stroke painting drawn here with PIL.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ASSETS = Path(__file__).resolve().parent.parent / "scratchnst" / "assets"
SIZE = 512
SEED = 1889  # the year of The Starry Night, for flavour
QUALITY = 90

# (vortex centre x, y as fractions of the side, radius in px, spin +1/-1)
VORTICES = [(0.30, 0.30, 95, 1), (0.68, 0.22, 70, -1), (0.80, 0.62, 85, 1),
            (0.22, 0.74, 75, -1), (0.52, 0.52, 60, 1)]
# Palette (RGB) for the calm flow and for the bright vortex cores.
BLUES = [(18, 36, 92), (28, 62, 140), (44, 92, 170), (70, 130, 200), (16, 24, 60), (40, 110, 130)]
WARMS = [(250, 214, 60), (244, 160, 40), (232, 96, 30), (255, 236, 150), (200, 60, 40)]


def flow_angle(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Stroke direction (radians) at points (x, y): a wavy drift plus Gaussian-weighted swirls."""
    vx = np.ones_like(x) * 0.6
    vy = 0.5 * np.sin(x / 45.0) * np.cos(y / 70.0)
    for cx, cy, r, spin in VORTICES:
        dx, dy = x - cx * SIZE, y - cy * SIZE
        w = 3.0 * np.exp(-(dx * dx + dy * dy) / (2.0 * r * r))
        d = np.hypot(dx, dy) + 1e-6
        vx += spin * w * (-dy / d)
        vy += spin * w * (dx / d)
    return np.arctan2(vy, vx)


def warmth(x: float, y: float) -> float:
    """0..1: how close (x, y) is to a vortex core, where the palette turns yellow/orange."""
    best = 0.0
    for cx, cy, r, _ in VORTICES:
        d2 = (x - cx * SIZE) ** 2 + (y - cy * SIZE) ** 2
        best = max(best, float(np.exp(-d2 / (2.0 * (0.8 * r) ** 2))))
    return best


def jitter(rng: np.random.Generator, c: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    shifted = np.array(c) + rng.integers(-amount, amount + 1, 3)
    return tuple(int(v) for v in np.clip(shifted, 0, 255))


def stroke(draw: ImageDraw.ImageDraw, rng: np.random.Generator, x: float, y: float,
           length: int, width: int, color: tuple[int, int, int]) -> None:
    """One curved stroke traced along the flow field: dark edge first, then the paint on top."""
    pts = [(x, y)]
    step = 3.0
    for _ in range(length // 3):
        a = float(flow_angle(np.array(x), np.array(y)))
        x, y = x + step * np.cos(a), y + step * np.sin(a)
        pts.append((x, y))
    edge = tuple(int(v * 0.55) for v in color)
    for fill, w in ((edge, width + 2), (color, width)):
        draw.line(pts, fill=fill, width=w, joint="curve")
        for px, py in (pts[0], pts[-1]):  # round brush ends
            draw.ellipse((px - w / 2, py - w / 2, px + w / 2, py + w / 2), fill=fill)
    hi = tuple(min(255, int(v * 1.25 + 20)) for v in color)  # a thin highlight along the stroke
    draw.line([(px + 1, py - 1) for px, py in pts], fill=hi, width=max(1, width // 3))


def make_style(seed: int = SEED) -> Image.Image:
    """A 512x512 RGB swirling-stroke painting, identical for the same seed and Pillow version."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (SIZE, SIZE), BLUES[0])
    draw = ImageDraw.Draw(img)
    for n, (width, length) in zip((900, 2200, 3800), ((11, 36), (7, 27), (4, 18))):
        for _ in range(n):
            x, y = rng.uniform(-20, SIZE + 20, 2)
            t = warmth(x, y)
            pal = WARMS if rng.random() < t * 1.1 else BLUES
            color = jitter(rng, pal[rng.integers(len(pal))], 18)
            stroke(draw, rng, x, y, int(length * rng.uniform(0.6, 1.4)), width, color)
    img = img.filter(ImageFilter.GaussianBlur(0.7))
    grain = rng.normal(0.0, 7.0, (SIZE, SIZE, 1))  # canvas grain, same on all channels
    a = np.clip(np.asarray(img, dtype=np.float64) + grain, 0, 255).astype(np.uint8)
    return Image.fromarray(a).filter(ImageFilter.UnsharpMask(radius=2, percent=80, threshold=2))


def make_content() -> Image.Image:
    """scikit-image's astronaut photograph (NASA, public domain), long side 512."""
    try:
        from skimage import data
    except ImportError:
        sys.exit(
            "make_default_images: scikit-image is needed for content.jpg; install it outside the "
            "project (pip install --target /tmp/skimg scikit-image), run with "
            "PYTHONPATH=/tmp/skimg, "
            "or pass --style to regenerate only the style image"
        )
    img = Image.fromarray(data.astronaut()).convert("RGB")
    w, h = img.size
    if max(w, h) != SIZE:
        s = SIZE / max(w, h)
        img = img.resize((round(w * s), round(h * s)), Image.Resampling.LANCZOS)
    return img


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--style", action="store_true", help="regenerate only style.jpg")
    args = ap.parse_args(argv)
    ASSETS.mkdir(parents=True, exist_ok=True)
    images = {"style.jpg": make_style()}
    if not args.style:
        images["content.jpg"] = make_content()
    for name, img in images.items():
        path = ASSETS / name
        img.save(path, format="JPEG", quality=QUALITY, optimize=True)
        print(f"wrote {path} ({img.size[0]}x{img.size[1]}, {path.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
