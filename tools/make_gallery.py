"""Regenerate the README gallery (docs/gallery/*.jpg) from the embedded default pair.

Each picture is `python -m scratchnst stylize` with one option changed from the defaults; the
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

from PIL import Image

GALLERY = Path(__file__).resolve().parent.parent / "docs" / "gallery"
RUNS = {
    "default": [],
    "preserve-colors": ["--preserve-colors"],
    "avg-pooling": ["--pooling", "avg"],
    "more-style": ["--style-weight", "1e-3"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=sorted(RUNS), action="append")
    args = p.parse_args()
    GALLERY.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or RUNS:
            out = Path(tmp) / f"{name}.png"
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "scratchnst", "stylize", "-o", str(out), "--quiet", *RUNS[name]], check=True)
            wall = time.perf_counter() - start
            m = json.loads(out.with_suffix(".json").read_text())
            Image.open(out).save(GALLERY / f"{name}.jpg", quality=88)
            print(f"{name}: wall {wall:.1f} s, manifest elapsed {m['elapsed_s']:.1f} s, "
                  f"{m['evaluations']} evaluations, sizes {m['scale_sizes']}, final loss {m['final_loss']:.4g}")


if __name__ == "__main__":
    main()
