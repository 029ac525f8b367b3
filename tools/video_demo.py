"""Clips made from one picture by panning and zooming, for the Video benchmarks and the docs strip.

    python tools/video_demo.py clip IMAGE OUT.mp4 [--frames 8] [--size 256] [--dx 3] [--zoom 0.004]
    python tools/video_demo.py bench CLIP STYLE --size 256 [--runs ours,warm,independent,multipass] [--passes 6] [--known-dx DX] [...]
    python tools/video_demo.py strip OUT.jpg [--frames 4] [--every 1] [--size 160]
    python tools/video_demo.py written OUT_DIR/ [--every 6]

`clip` writes a pan (dx px per frame) with a slow zoom; `bench` stylizes a clip with the temporal term
(ours), with the warped start only (warm: --temporal-weight 0), independently, and in multi-pass mode
(--passes, on a local Dask cluster of --workers), and prints the temporal error and seconds per frame
of each (from the manifests) and of each pass of the multi-pass run; `strip` makes the docs picture:
every --every-th frame of ours above the independent baseline, from the embedded default pair;
`written` scores a finished run written as a folder of frames (its OUT.json beside it): the style term
of each frame as written (its PNG, clipped to 0..255 and rounded) beside the manifest's (the optimiser's
last image, unclipped), each over frame 0's. Nothing it writes belongs in the repository except the strip.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scratchnst.app.video import flow  # noqa: E402
from scratchnst.app.files import images as im  # noqa: E402
from scratchnst.app.video.run import video  # noqa: E402
from scratchnst.app.video.clip import VIDEO_FORMATS, encode  # noqa: E402


def pan_zoom_frames(img: Image.Image, frames: int, size: int, dx: float, zoom: float) -> list[np.ndarray]:
    """`frames` views (long side `size`) of a window moving right by dx output px per frame while
    the window shrinks by `zoom` per frame (a zoom in)."""
    w, h = img.size
    out_w, out_h = im.long_side_dims(int(w * 0.8), int(h * 0.8), size)
    scale = 0.8 * w / out_w  # source px per output px at frame 0
    out = []
    for t in range(frames):
        s = scale * (1 - zoom * t)
        cx = w * 0.4 + t * dx * scale
        cy = h / 2
        box = (cx - out_w * s / 2, cy - out_h * s / 2, cx + out_w * s / 2, cy + out_h * s / 2)
        out.append(np.asarray(img.resize((out_w, out_h), Image.Resampling.LANCZOS, box=box)))
    return out


def write_clip(frames: list[np.ndarray], path: Path, fps: int = 12) -> None:
    with tempfile.TemporaryDirectory() as d:
        pngs = []
        for k, f in enumerate(frames):
            pngs.append(Path(d) / f"{k:05d}.png")
            Image.fromarray(f).save(pngs[-1])
        encode(pngs, path, VIDEO_FORMATS[path.suffix], fps)


RUNS = {"ours": {}, "warm": {"temporal_weight": 0.0}, "independent": {"independent": True}, "multipass": {}}


def known_motion_error(folder: Path, dx: float) -> float:
    """The temporal error of a folder of output frames under the true motion of a pure pan by dx px
    per frame (flow (dx, 0) everywhere, mask: the pixels that were inside the previous frame)."""
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]
    h, w = frames[0].shape[:2]
    motion = np.tile(np.array([dx, 0.0]), (h, w, 1))
    mask = flow.inside_mask(motion).astype(np.float64)
    return float(np.mean([flow.temporal_error(b, flow.warp(a, motion), mask) for a, b in zip(frames, frames[1:])]))


def bench(args) -> None:
    rows = []
    for name in args.runs.split(","):
        out = Path(args.out_dir) / name
        started = time.perf_counter()
        opts = dict(RUNS[name], temporal_weight=args.temporal_weight) if name in ("ours", "multipass") else RUNS[name]
        if name == "multipass":
            opts |= {"passes": args.passes, "workers": args.workers}
        r = video(args.clip, [args.style], out=f"{out}/", size=args.size, iterations=args.iterations,
                  first_iterations=args.first_iterations, quiet=True, **opts)
        m = r.manifest
        later = m["frames"][1:]
        known = known_motion_error(out, args.known_dx) if args.known_dx is not None else float("nan")
        rows.append((name, m["temporal_error"], known, m["seconds_per_frame"], np.mean([f["flow_s"] for f in later]),
                     np.mean([f["style"] for f in later]), np.mean([f["content"] for f in later]), time.perf_counter() - started))
        Path(f"{out}.frames.json").write_text(json.dumps(m["frames"], indent=1))
        for p in m.get("passes", []):
            print(f"multipass, pass {p['pass']}: temporal error {p['temporal_error']:.2f}, "
                  f"{p['stylize_s']:.0f} s of stylization")
    print(f"{'run':12s} {'temporal error':>14s} {'(true flow)':>11s} {'s/frame':>8s} {'flow s':>7s} {'style':>10s} {'content':>10s} {'wall s':>7s}")
    for name, err, known, spf, fl, st, co, wall in rows:
        print(f"{name:12s} {err:14.2f} {known:11.2f} {spf:8.1f} {fl:7.3f} {st:10.4g} {co:10.4g} {wall:7.0f}")


def strip(args) -> None:
    content, _ = im.default_images()
    frames = pan_zoom_frames(content, args.frames, args.size, args.dx, args.zoom)
    with tempfile.TemporaryDirectory() as d:
        rows = []
        for name, shown in (("ours", frames), ("independent", frames[::args.every])):  # independent frames: only those shown
            clip, out = Path(d) / f"{name}-clip", Path(d) / f"{name}/"
            clip.mkdir()
            for k, f in enumerate(shown):  # a folder of frames: no codec between the frames and the runs
                Image.fromarray(f).save(clip / f"{k:05d}.png")
            video(clip, None, out=str(out) + "/", size=args.size, iterations=args.iterations, quiet=True, **RUNS[name])
            rows.append([Image.open(p) for p in sorted(out.glob("*.png"))[::args.every if name == "ours" else 1]])
    w, h = rows[0][0].size
    n = len(rows[0])
    sheet = Image.new("RGB", (w * n + 4 * (n - 1), 2 * h + 4), "white")
    for r, row in enumerate(rows):
        for k, frame in enumerate(row):
            sheet.paste(frame, (k * (w + 4), r * (h + 4)))
    sheet.save(args.out, quality=85)
    print(f"{args.out}: {Path(args.out).stat().st_size // 1024} KB")


def written_style(out_dir) -> tuple[np.ndarray, np.ndarray]:
    """The style term of each frame of a finished run written as a folder of frames (its OUT.json beside
    it): (the manifest's, the optimiser's last image, unclipped; the frame as written, its PNG clipped to
    0..255 and rounded), scored with the run's own objective."""
    from dataclasses import replace

    from scratchnst.app.picture.coarse_to_fine import make_objective
    from scratchnst.app.picture.inputs import load_net, open_styles, style_list
    from scratchnst.app.picture.settings import Settings
    from scratchnst.app.picture.targets import StyleTargets
    from scratchnst.core.preprocess import preprocess

    out = Path(out_dir)
    m = json.loads(out.with_suffix(".json").read_text())
    s = replace(Settings.from_args(m["args"]), quiet=True)
    net = load_net(s)
    targets = StyleTargets(net, s, open_styles(style_list(None if m["styles"] == [im.DEFAULT] else m["styles"])))
    png = []
    for f in sorted(out.glob("*.png")):
        img = Image.open(f).convert("RGB")
        x = preprocess(img, dtype=s.dtype, xp=net.xp)
        png.append(make_objective(net, s, x, targets.grams(max(img.size), img)).evaluate(x).terms["style"])
    return np.array([f["style"] for f in m["frames"]]), np.array(png)


def written(args) -> None:
    kept, png = written_style(args.out_dir)
    print(f"frame 0's style term: {kept[0]:.4g} (the optimiser's), {png[0]:.4g} as written ({png[0] / kept[0]:.3f}x)")
    for name, v in (("the optimiser's", kept / kept[0]), ("as written", png / png[0])):
        print(f"later / frame 0, {name}: mean {v[1:].mean():.3f}, max {v[1:].max():.3f}, min {v[1:].min():.3f}; "
              f"every {args.every}th frame: {' '.join(f'{r:.3f}' for r in v[::args.every])}")


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("clip")
    c.add_argument("image")
    c.add_argument("out", type=Path)
    b = sub.add_parser("bench")
    b.add_argument("clip")
    b.add_argument("style")
    b.add_argument("--runs", default="ours,warm,independent")
    b.add_argument("--out-dir", default=".")
    b.add_argument("--temporal-weight", type=float, default=None)
    b.add_argument("--passes", type=int, default=6, help="the multipass run's passes")
    b.add_argument("--workers", type=int, default=None, help="the multipass run's local Dask workers (default: one per core)")
    b.add_argument("--known-dx", type=float, default=None, help="the clip is a pure pan by this many px per frame: also score with the true flow")
    s = sub.add_parser("strip")
    s.add_argument("out")
    s.add_argument("--every", type=int, default=1, help="show every N-th frame of the clip")
    for q in (c, b, s):
        q.add_argument("--size", type=int, default=256)
        q.add_argument("--frames", type=int, default=8 if q is c else 4)
        q.add_argument("--dx", type=float, default=3.0)
        q.add_argument("--zoom", type=float, default=0.004)
        q.add_argument("--iterations", type=int, default=30)
        q.add_argument("--first-iterations", type=int, default=60)
    w = sub.add_parser("written")
    w.add_argument("out_dir")
    w.add_argument("--every", type=int, default=6)
    args = p.parse_args()
    if args.cmd == "written":
        written(args)
    elif args.cmd == "clip":
        write_clip(pan_zoom_frames(Image.open(args.image).convert("RGB"), args.frames, args.size, args.dx, args.zoom), args.out)
    elif args.cmd == "bench":
        if args.temporal_weight is None:
            from scratchnst.app.video.options import DEFAULTS
            args.temporal_weight = DEFAULTS.temporal_weight
        bench(args)
    else:
        strip(args)


if __name__ == "__main__":
    main()
