"""Batch on Dask vs the same stylize CLI calls one after another; workers; the Dask layer's overhead.

    python tools/batch_bench.py [--rounds 2] [--size 256] [--iterations 10] [--jobs 8]

Modes run interleaved, round by round (a shared machine's load drifts): `seq` (one `stylize` CLI
call per job, one after another), `batch-wN` (`scratchnst batch --workers N`). Then, in this
process: what the per-worker cache saves per job (loading the net, a style's Gram targets), and
the per-job overhead of the Dask layer (tiny jobs on a 1-worker local cluster already started:
(batch wall - sum of job seconds) / jobs). Results: docs/benchmarks.md, "Batch on Dask".
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's package, for the in-process measurements
ASSETS = REPO / "scratchnst" / "assets"


def _inputs(d: Path, jobs: int) -> tuple[list[str], list[str]]:
    """jobs/2 contents (variants of the embedded photo) and 2 styles (the painting and its mirror)."""
    photo, painting = Image.open(ASSETS / "content.jpg").convert("RGB"), Image.open(ASSETS / "style.jpg").convert("RGB")
    variants = [photo, ImageOps.mirror(photo), ImageOps.flip(photo), photo.rotate(90, expand=True)]
    contents = []
    for i in range(jobs // 2):
        p = d / f"content{i}.png"
        ImageOps.posterize(variants[i % 4], 8 - i // 4).save(p)
        contents.append(str(p))
    styles = [str(d / "style0.png"), str(d / "style1.png")]
    painting.save(styles[0])
    ImageOps.mirror(painting).save(styles[1])
    return contents, styles


def _wall(cmds: list[list[str]], env: dict) -> float:
    t = time.perf_counter()
    for cmd in cmds:
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def _components(style: str, size: int) -> dict:
    """Seconds each job would spend without the worker cache: net load, style targets per scale."""
    from scratchnst.app.files import images as im
    from scratchnst.core.preprocess import preprocess
    from scratchnst.app.files.weights import load_vgg16
    from scratchnst.core import host
    from scratchnst.core.objective import style_grams
    from scratchnst.app.picture.settings import Settings

    out = {}
    t = time.perf_counter()
    net = load_vgg16()
    out["net load"] = time.perf_counter() - t
    img = im.load_image(style)
    with host.engine_threads():
        for side in (size // 2, size):
            x = preprocess(im.fit_long_side(img, side))
            best = min(_timed(lambda: style_grams(net, x, Settings().style_layers)) for _ in range(3))
            out[f"style targets {side} px"] = best
    return out


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _overhead(d: Path, contents: list[str], styles: list[str], n: int = 16) -> tuple[float, float]:
    """(local 1-worker cluster start s, per-job Dask-layer overhead ms) on tiny jobs."""
    from scratchnst.app import batch as b
    from scratchnst.app import cluster

    jobs = [{"content": contents[i % len(contents)], "styles": [styles[0]], "output": f"o{i}.png"} for i in range(n)]
    t = time.perf_counter()
    with cluster.client(workers=1) as c:
        start = time.perf_counter() - t
        b.batch(jobs[:1], c, out_dir=d / "warm", size=32, iterations=1, scales=(1.0,))  # load the worker's net
        t = time.perf_counter()
        results = b.batch(jobs, c, out_dir=d / "tiny", size=32, iterations=1, scales=(1.0,))
        wall = time.perf_counter() - t
    return start, 1000 * (wall - sum(r.seconds for r in results)) / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--workers", default="1,2", help="batch worker counts to compare")
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    d = Path(tempfile.mkdtemp(prefix="batch-bench-"))
    try:
        contents, styles = _inputs(d, args.jobs)
        opts = ["--size", str(args.size), "--iterations", str(args.iterations), "--quiet"]
        py = [sys.executable, "-m", "scratchnst"]
        modes = {"seq": lambda r: [[*py, "stylize", c, s, "-o", str(d / f"seq{r}" / f"{i}_{j}.png"), *opts]
                                   for i, c in enumerate(contents) for j, s in enumerate(styles)]}
        for w in map(int, args.workers.split(",")):
            modes[f"batch-w{w}"] = lambda r, w=w: [[*py, "batch", "--contents", *contents, "--styles", *styles,
                                                    "-o", str(d / f"w{w}-{r}"), "--workers", str(w), *opts]]
        print(f"uptime: {os.popen('uptime').read().strip()}")
        walls = {m: [] for m in modes}
        for r in range(args.rounds):
            for mode, cmds in modes.items():
                walls[mode].append(_wall(cmds(r), env))
                print(f"round {r + 1} {mode:10s} {walls[mode][-1]:7.1f} s", flush=True)
        print(f"uptime: {os.popen('uptime').read().strip()}")
        seq = sum(walls["seq"]) / len(walls["seq"])
        for mode, ws in walls.items():
            mean = sum(ws) / len(ws)
            print(f"{mode:10s} mean {mean:7.1f} s  {args.jobs / mean * 60:5.2f} jobs/min  {mean / seq:.2f}x seq")
        for name, s in _components(styles[0], args.size).items():
            print(f"{name:24s} {s * 1000:7.0f} ms")
        start, per_job = _overhead(d, contents, styles)
        print(f"local cluster start (1 worker)  {start:5.2f} s")
        print(f"Dask layer per job              {per_job:5.0f} ms")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
