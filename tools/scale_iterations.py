"""How many iterations a scale needs: a run's last scale read at every saved iteration (developer tool).

    python -m scratchnst stylize --size 1024 --scales 0.25,0.5,1 --save-every 5 -o run.png
    python tools/scale_iterations.py run.json [--pair K[,K...] --crop X,Y,SIDE -o pair.jpg]

For each OUT_iterNNNN picture that `--save-every` wrote during the run's last scale: the iterations
that scale had run, its loss terms then (from the manifest's history) relative to the last
iteration's, the mean and 99th-percentile absolute difference to the final picture (0..255 over
every channel), and the sharpness (video.frame.sharpness: mean |Laplacian| of the luma) relative to
the final picture's. A run stopped after k iterations of its last scale is the run above at
iteration k (L-BFGS is deterministic and the scale's start is the same), so one run answers for
every k. --pair K writes the SIDE-px square at (X, Y) of the picture after K iterations of the last
scale beside the same square of the final picture (1:1, a 4-px white gap); --pair 30,50 writes the
squares after 30 and after 50 iterations, then the final one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from scratchnst.app.video.frame import sharpness


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("manifest", type=Path, help="the run's OUT.json (its OUT_iterNNNN pictures beside it)")
    p.add_argument("--pair", metavar="K[,K...]", help="also write the crop after K iterations of the last scale beside the final's")
    p.add_argument("--crop", default="0,0,256", metavar="X,Y,SIDE")
    p.add_argument("-o", "--output", type=Path, default=Path("pair.jpg"))
    args = p.parse_args()
    m = json.loads(args.manifest.read_text())
    history = m["history"]
    last_scale = history[-1]["scale"]
    first = next(h["iteration"] for h in history if h["scale"] == last_scale) - 1  # iterations before the last scale
    by_iteration = {h["iteration"]: h for h in history}
    out = Path(m["output"])
    final = np.asarray(Image.open(out).convert("RGB"), dtype=np.float64)
    end = history[-1]
    print(f"{out.name}: last scale {end['size']} px, {end['iteration'] - first} iterations, loss {end['loss']:.4g}")
    print("its  loss/final  style/final  content/final  |diff| mean  |diff| p99  sharpness/final")
    for path in sorted(out.parent.glob(f"{out.stem}_iter*{out.suffix}")):
        n = int(path.stem.rsplit("_iter", 1)[1])
        if n <= first or n not in by_iteration:
            continue
        h = by_iteration[n]
        picture = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
        diff = np.abs(picture - final)
        print(f"{n - first:3d}  {h['loss'] / end['loss']:10.4f}  {h['style'] / end['style']:11.4f}  "
              f"{h['content'] / end['content']:13.4f}  {diff.mean():11.2f}  {np.percentile(diff, 99):10.1f}  "
              f"{sharpness(picture) / sharpness(final):15.4f}")
    if args.pair:
        x, y, side = (int(v) for v in args.crop.split(","))
        ks = [int(k) for k in args.pair.split(",")]
        pictures = [Image.open(out.parent / f"{out.stem}_iter{first + k:04d}{out.suffix}") for k in ks] + [Image.open(out)]
        pair = Image.new("RGB", (len(pictures) * (side + 4) - 4, side), "white")
        for k, picture in enumerate(pictures):
            pair.paste(picture.convert("RGB").crop((x, y, x + side, y + side)), (k * (side + 4), 0))
        pair.save(args.output, quality=90)
        print(f"wrote {args.output}: after {', '.join(map(str, ks))} and {end['iteration'] - first} iterations, left to right")


if __name__ == "__main__":
    main()
