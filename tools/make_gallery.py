"""Regenerate the README gallery (docs/gallery/*.jpg) from the embedded default pair.

Each picture is `python -m scratchnst stylize` with one option changed from the defaults (for
"regions", a generated second style and two generated masks, written to a temporary folder); the
default run's wall time and manifest numbers are printed for the README.

    python tools/make_gallery.py [--only default]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

GALLERY = Path(__file__).resolve().parent.parent / "docs" / "gallery"
RUNS = {
    "default": [],
    "color-linear": ["--color", "linear"],
    "avg-pooling": ["--pooling", "avg"],
    "more-style": ["--style-weight", "1e-3"],
    "im2col": ["--conv", "im2col"],  # beside "default" (Winograd where it pays): docs/winograd.md
    "regions": lambda tmp: ["<default>", "<default>", str(waves(tmp)), "--style-masks", *map(str, figure_masks(tmp))],
}
SIDE = 512  # the embedded content's size: the masks are drawn at it


def figure_masks(tmp: Path) -> list[Path]:
    """Two complementary soft masks: a centred ellipse around the astronaut, and the rest."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    r = np.hypot((xx - 0.42) / 0.36, (yy - 0.62) / 0.48)
    figure = np.clip((1.1 - r) / 0.2, 0, 1)  # 1 inside, a soft edge, 0 outside
    paths = [tmp / "figure.png", tmp / "background.png"]
    for path, m in zip(paths, (figure, 1 - figure)):
        Image.fromarray(np.rint(255 * m).astype(np.uint8)).save(path)
    return paths


def waves(tmp: Path) -> Path:
    """A generated second style: wavy teal and magenta bands with a little grain."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(float)
    t = 0.5 + 0.5 * np.sin(xx / 9 + 3 * np.sin(yy / 23))[..., None]
    rgb = t * np.array([20, 160, 150]) + (1 - t) * np.array([200, 40, 140]) + rng.normal(0, 12, (SIDE, SIDE, 3))
    path = tmp / "waves.png"
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=sorted(RUNS), action="append")
    args = p.parse_args()
    GALLERY.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or RUNS:
            out = Path(tmp) / f"{name}.png"
            start = time.perf_counter()
            run = RUNS[name](Path(tmp)) if callable(RUNS[name]) else RUNS[name]  # a callable writes its inputs to tmp
            subprocess.run([sys.executable, "-m", "scratchnst", "stylize", "-o", str(out), "--quiet", *run], check=True)
            wall = time.perf_counter() - start
            m = json.loads(out.with_suffix(".json").read_text())
            Image.open(out).save(GALLERY / f"{name}.jpg", quality=88)
            print(f"{name}: wall {wall:.1f} s, manifest elapsed {m['elapsed_s']:.1f} s, "
                  f"{m['evaluations']} evaluations, sizes {m['scale_sizes']}, final loss {m['final_loss']:.4g}")


if __name__ == "__main__":
    main()
