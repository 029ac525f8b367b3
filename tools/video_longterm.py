"""The long-term temporal term (`video --long-term J`, issue #27) measured on a back-and-forth pan, where
content leaves the view and comes back.

    python tools/video_longterm.py clip OUT_DIR/ [--out 20] [--dx 2] [--width 112] [--height 80]
    python tools/video_longterm.py flows CLIP_DIR/ [--dx 2] [--long-term 1,10,20,40]
    python tools/video_longterm.py bench CLIP_DIR/ [--dx 2] [--long-term 1,10,20,40 ...] [--out-dir DIR] [video options]

`clip` writes the clip as a folder of PNGs: a window of the embedded content photo (resized to 180 px
wide) moving right by dx px a frame for --out frames, then back, so frame 2·out is frame 0 again and the
window's position p(t) is known exactly. `flows` compares, for every frame of the way back and every j
of J, the flow from frame t to frame t − j measured directly (flow.pair_flow, what video does) with the
consecutive flows chained: the share of the returning strip (the pixels the previous frame does not
show) that each one's long-term masks hold to an earlier frame, and the share held along a flow within
1 px of the known motion. `bench` stylizes the clip with the previous frame only and with each
--long-term J, and scores each run: the returning region's mean squared difference (RGB 0..255) to
its first appearance in frame 0, aligned by the known motion, over the frames of the way back and at
the last frame alone; the same for the region that stayed in view; and the style loss and temporal
error of the manifest (a run whose OUT.json says done is scored again, not made again). Nothing it
writes belongs in the repository.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scratchnst.app.files import images as im  # noqa: E402
from scratchnst.app.video import flow  # noqa: E402
from scratchnst.app.video.frame import read_frame  # noqa: E402
from scratchnst.app.video.run import video  # noqa: E402


def positions(frames: int, out: int, dx: int) -> list[int]:
    """p(t), the window's left edge in frame t: out frames to the right by dx, then back."""
    return [dx * (t if t <= out else 2 * out - t) for t in range(frames)]


def make_clip(folder: Path, out: int, dx: int, width: int, height: int) -> None:
    write_windows(folder, positions(2 * out + 1, out, dx), width, height)


def write_windows(folder: Path, lefts: list[int], width: int, height: int, photo: int = 180) -> None:
    """A clip as a folder of PNGs: frame t the width × height window of the embedded content photo
    (resized to `photo` px wide), vertically centred, its left edge at lefts[t]."""
    content, _ = im.default_images()
    img = np.asarray(im.resize_long_side(content, photo))
    top = (img.shape[0] - height) // 2
    if max(lefts) + width > img.shape[1] or min(lefts) < 0 or top < 0:
        raise SystemExit(f"{width}x{height} windows at {min(lefts)}..{max(lefts)} do not fit a {img.shape[1]}x{img.shape[0]} photo")
    folder.mkdir(parents=True, exist_ok=True)
    for t, left in enumerate(lefts):
        Image.fromarray(img[top:top + height, left:left + width]).save(folder / f"frame_{t:05d}.png")


def read_folder(folder: Path) -> list[np.ndarray]:
    return [read_frame(f) for f in sorted(Path(folder).glob("*.png"))]


def regions(pos: list[int], width: int):
    """For each frame t of the way back: (the columns x of frame t whose scene column x + p(t) was out
    of view at the turn, and those that stayed in view from frame 0 on), as index arrays."""
    turn = max(pos)
    for t in range(pos.index(turn) + 1, len(pos)):
        x = np.arange(width)
        scene = x + pos[t]
        yield t, x[scene < turn], x[(scene >= turn) & (scene < pos[0] + width)]


def score(frames: list[np.ndarray], pos: list[int]) -> dict:
    """The mean squared difference of frame t's pixels to frame 0's at the same scene point (x + p(t)),
    over the returning region ("back": every frame of the way back; "last": the last frame alone) and the
    region that stayed in view ("stayed")."""
    first, W = frames[0].astype(np.float64), frames[0].shape[1]
    sums = {"back": [0.0, 0], "stayed": [0.0, 0]}
    for t, back, stayed in regions(pos, W):
        for name, cols in (("back", back), ("stayed", stayed)):
            d = frames[t][:, cols].astype(np.float64) - first[:, cols + pos[t] - pos[0]]
            sums[name][0] += (d**2).sum()
            sums[name][1] += d.size
    _, last_back, _ = list(regions(pos, W))[-1]
    last = frames[-1][:, last_back].astype(np.float64) - first[:, last_back + pos[-1] - pos[0]]
    return {"back": sums["back"][0] / sums["back"][1], "stayed": sums["stayed"][0] / sums["stayed"][1], "last": float((last**2).mean())}


def chained(frames: list[np.ndarray], t: int, j: int, consecutive: dict) -> tuple[np.ndarray, np.ndarray]:
    """The flow from frame t to frame t − j as the consecutive backward flows chained, and its mask: the
    product of the consecutive masks along the chain (a point out of view in between breaks it)."""
    pair = consecutive[t]
    w, c = pair.backward.astype(np.float64), pair.mask.astype(np.float64)
    for m in range(t - 1, t - j, -1):
        step = consecutive[m]
        c = c * (flow.warp(step.mask, w) > 0.5) * flow.inside_mask(w)
        w = w + flow.warp(step.backward, w)
    return w, c


def flows(args) -> None:
    frames = read_folder(args.clip)
    pos = positions(len(frames), (len(frames) - 1) // 2, args.dx)
    consecutive = {t: flow.pair_flow(frames[t - 1], frames[t]) for t in range(1, len(frames))}
    counts = {name: {"entering": 0, "held": 0, "right": 0} for name in ("direct", "chained")}
    for t, back, _ in regions(pos, frames[0].shape[1]):
        entering = np.zeros(frames[0].shape[:2], bool)
        entering[:, back] = consecutive[t].mask[:, back] == 0  # what the previous frame does not show
        masks, motion = {1: consecutive[t].mask}, {}
        for j in (j for j in args.long_term if 1 < j <= t):
            direct = flow.pair_flow(frames[t - j], frames[t])
            masks[j], motion[j] = direct.mask, direct.backward
        for name in ("direct", "chained"):
            if name == "chained":
                for j in motion:
                    motion[j], masks[j] = chained(frames, t, j, consecutive)
            n = counts[name]
            n["entering"] += int(entering.sum())
            for j, c in flow.long_term_masks(masks).items():
                if j > 1:
                    held = entering & (c > 0)
                    n["held"] += int(held.sum())
                    n["right"] += int((np.abs(motion[j][held] - (pos[t] - pos[t - j], 0)).max(-1) < 1).sum())
    for name, n in counts.items():
        print(f"{name:8s}: of {n['entering']} returning pixels the previous frame does not show, {n['held'] / max(n['entering'], 1):6.1%} "
              f"held to an earlier frame, {n['right'] / max(n['entering'], 1):6.1%} along a flow within 1 px of the true motion")


def bench(args) -> None:
    frames = read_folder(args.clip)
    pos = positions(len(frames), (len(frames) - 1) // 2, args.dx)
    runs = [("previous frame only", ())] + [(f"--long-term {j}", tuple(int(v) for v in j.split(","))) for j in args.long_term]
    print(f"{'run':28s} {'back':>8s} {'last':>8s} {'stayed':>8s} {'style/frame 0':>14s} {'temporal error':>14s} {'s/frame':>8s} {'wall s':>7s}")
    for name, offsets in runs:
        out = Path(args.out_dir) / ("short" if not offsets else "long-" + "-".join(map(str, offsets)))
        started = time.perf_counter()
        budget = {k: v for k, v in (("iterations", args.iterations), ("first_iterations", args.first_iterations)) if v is not None}
        done = out.with_suffix(".json")
        if done.exists() and json.loads(done.read_text())["status"] == "done":  # a finished run of an earlier call: scored again
            m = json.loads(done.read_text())
        else:
            m = video(str(args.clip), None, out=f"{out}/", long_term=offsets, workers=0, quiet=True, **budget).manifest
        s = score(read_folder(out), pos)
        style = [f["style"] / m["frames"][0]["style"] for f in m["frames"][1:]]
        print(f"{name:28s} {s['back']:8.1f} {s['last']:8.1f} {s['stayed']:8.1f} {np.mean(style):7.3f} ({max(style):.3f}) "
              f"{m['temporal_error']:14.2f} {m['seconds_per_frame']:8.1f} {time.perf_counter() - started:7.0f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("clip")
    c.add_argument("clip", type=Path)
    c.add_argument("--out", type=int, default=20, help="frames on the way out (and as many back)")
    c.add_argument("--width", type=int, default=112)
    c.add_argument("--height", type=int, default=80)
    f = sub.add_parser("flows")
    f.add_argument("clip", type=Path)
    f.add_argument("--long-term", type=lambda s: [int(v) for v in s.split(",")], default=[1, 10, 20, 40])
    b = sub.add_parser("bench")
    b.add_argument("clip", type=Path)
    b.add_argument("--long-term", nargs="+", default=["1,10,20,40"], help="one run for each J")
    b.add_argument("--out-dir", default=".")
    b.add_argument("--iterations", type=int, default=None)
    b.add_argument("--first-iterations", type=int, default=None)
    for q in (c, f, b):
        q.add_argument("--dx", type=int, default=2, help="px per frame")
    args = p.parse_args()
    if args.cmd == "clip":
        make_clip(args.clip, args.out, args.dx, args.width, args.height)
    elif args.cmd == "flows":
        flows(args)
    else:
        bench(args)


if __name__ == "__main__":
    main()
