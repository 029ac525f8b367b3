"""Issue #27's clip and its scores: are later frames as crisp, as styled and as steady as the first, and
how many iterations did they take?

    python tools/video_crisp.py clip OUT_DIR/ [--frames 60] [--width 112] [--height 80] [--dx 1] [--photo 180]
    python -m scratchnst video OUT_DIR/ RUN_DIR/ --workers 0 [options]          # any commit's CLI
    python tools/video_crisp.py score RUN_DIR/ [RUN_DIR/ ...] [--every 6] [--strip 14]
    python tools/video_crisp.py crop OUT.jpg RUN_DIR/ [RUN_DIR/ ...] [--frame 40] [--columns 40] [--zoom 3]

`clip` writes a pan as a folder of PNGs: a width × height window of the embedded content photo (resized
to --photo px wide) moving right by dx px a frame. The issue's clip is the default (60 frames, 112×80,
1 px a frame); the seconds clip is `--frames 6 --width 256 --height 192 --dx 2 --photo 320`.

`score` reads a finished run written as a folder of frames (its OUT.json beside it) and prints one row
per run: the sharpness of frames 6 and later over frame 0's, mean (min) (frame.sharpness of the PNGs);
the right strip's sharpness (the --strip columns where new content enters) over the middle's, mean over
the later frames; the style term of each frame as written over frame 0's, mean (max) (video_demo's
written_style); the manifest's temporal error; the iterations of the later frames, mean (min–max), and
why they stopped; seconds per later frame (the manifest's stylize_s); then the sharpness and written
style curves at every --every-th frame. `crop` puts the right --columns of one frame of each run side by
side, enlarged --zoom times (nearest neighbour): where new content has entered the view (the docs'
before/after picture, from runs on the embedded photo). Nothing else it writes belongs in the repository.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scratchnst.app.video.frame import read_frame, sharpness  # noqa: E402
from video_demo import written_style  # noqa: E402
from video_longterm import read_folder, write_windows  # noqa: E402

FIRST_SCORED = 6  # the "frames 6–59": the first frames after frame 0 still carry its schedule


def score(run: Path, every: int, strip: int) -> dict:
    m = json.loads(run.with_suffix(".json").read_text())
    frames = read_folder(run)
    sharp = np.array([sharpness(f) for f in frames])
    w = frames[0].shape[1]
    middle = slice((w - strip) // 2, (w + strip) // 2)
    edge = np.mean([sharpness(f[:, -strip:]) / sharpness(f[:, middle]) for f in frames[1:]])
    _, style = written_style(run)
    later = m["frames"][1:]
    its = np.array([f["iterations"] for f in later])
    return {
        "run": run.name, "sharp": sharp[FIRST_SCORED:].mean() / sharp[0], "sharp_min": sharp[FIRST_SCORED:].min() / sharp[0],
        "edge": edge, "style": style[1:].mean() / style[0], "style_max": style[1:].max() / style[0],
        "temporal": m["temporal_error"], "its": its.mean(), "its_range": f"{its.min()}–{its.max()}",
        "stopped": dict(collections.Counter(f.get("stopped", "iterations") for f in later)),
        "s": np.mean([f["stylize_s"] for f in later]),
        "sharp_curve": " ".join(f"{v:.2f}" for v in sharp[::every] / sharp[0]),
        "style_curve": " ".join(f"{v:.3f}" for v in style[::every] / style[0]),
    }


def crop(out: Path, runs: list[Path], frame: int, columns: int, zoom: int) -> None:
    crops = [read_frame(sorted(r.glob("*.png"))[frame])[:, -columns:] for r in runs]
    h, w = crops[0].shape[:2]
    sheet = Image.new("RGB", (len(crops) * (w * zoom + 6) - 6, h * zoom), "white")
    for k, c in enumerate(crops):
        sheet.paste(Image.fromarray(c).resize((w * zoom, h * zoom), Image.Resampling.NEAREST), (k * (w * zoom + 6), 0))
    sheet.save(out, quality=90)
    print(f"{out}: {sheet.size[0]}x{sheet.size[1]}, {out.stat().st_size // 1024} KB")


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("clip")
    c.add_argument("out", type=Path)
    c.add_argument("--frames", type=int, default=60)
    c.add_argument("--width", type=int, default=112)
    c.add_argument("--height", type=int, default=80)
    c.add_argument("--dx", type=int, default=1)
    c.add_argument("--photo", type=int, default=180, help="the photo's width before the window is cut")
    s = sub.add_parser("score")
    s.add_argument("runs", nargs="+", type=Path)
    s.add_argument("--every", type=int, default=6)
    s.add_argument("--strip", type=int, default=14)
    k = sub.add_parser("crop")
    k.add_argument("out", type=Path)
    k.add_argument("runs", nargs="+", type=Path)
    k.add_argument("--frame", type=int, default=40)
    k.add_argument("--columns", type=int, default=40)
    k.add_argument("--zoom", type=int, default=3)
    args = p.parse_args()
    if args.cmd == "clip":
        write_windows(args.out, [t * args.dx for t in range(args.frames)], args.width, args.height, args.photo)
        return
    if args.cmd == "crop":
        crop(args.out, args.runs, args.frame, args.columns, args.zoom)
        return
    rows = [score(r, args.every, args.strip) for r in args.runs]
    print("| run | sharpness, frames 6+ / frame 0 (min) | right strip / middle | style as written, later / frame 0: mean (max) "
          "| temporal error | iterations per later frame (range) | stopped | s per later frame |")
    for r in rows:
        print(f"| {r['run']} | {r['sharp']:.3f} ({r['sharp_min']:.3f}) | {r['edge']:.2f} | {r['style']:.3f} ({r['style_max']:.3f}) "
              f"| {r['temporal']:.3g} | {r['its']:.1f} ({r['its_range']}) | {r['stopped']} | {r['s']:.2f} |")
    for r in rows:
        print(f"{r['run']}: sharpness every {args.every}th frame: {r['sharp_curve']}\n{r['run']}: style as written: {r['style_curve']}")


if __name__ == "__main__":
    main()
