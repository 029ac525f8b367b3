"""Winograd F(4×4, 3×3) against im2col on the VGG-16 convs (developer tool, NumPy backend).

    python tools/winograd_sweep.py layers [--size 512] [--rounds 5] [--random]
        every conv an evaluation runs (conv1_1 .. conv5_1) at that input size: forward and input-
        gradient ms of both algorithms, timed A, B, A, B, ... in this process (min of the rounds),
        GFLOP/s as direct-conv FLOPs 2·F·C·9·H·W per pass, and which is faster
    python tools/winograd_sweep.py accuracy [--size 128]
        per conv, max |y − y64| / max |y64| of float32 im2col and float32 Winograd against float64
        im2col, forward and input gradient, on the real activations of the bundled content image
    python tools/winograd_sweep.py points [--size 16]
        why these interpolation points: float32 forward error of F(4×4, 3×3) with several point
        sets (matrices derived here in exact fractions, applied with einsum) on a few real layers
    python tools/winograd_sweep.py whole [--size 512] [--rounds 5] [--convs auto]
        whole objective evaluations (forward to relu5_1 + input gradient, as `scratchnst bench`),
        im2col and Winograd interleaved in one process; the loss and gradient differences between
        them in float32 and in float64, and of each float32 result from float64 im2col; then each
        variant's peak RSS in a fresh child process

Winograd is switched on by wrapping ops.conv2d_forward / conv2d_backward for the duration (the
VGG16 class calls them through the ops module): the convs chosen (--convs all, auto = AUTO, or a
comma list) run winograd_conv2d_forward with filter transforms made once up front.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scratchnst.core import host, ops  # noqa: E402
from scratchnst.core.ops.winograd import (  # noqa: E402
    WinogradCache,
    winograd_conv2d_backward,
    winograd_conv2d_forward,
    winograd_filter_transform,
)
from scratchnst.core.vgg import LAYERS, VGG16  # noqa: E402

EVAL_CONVS = [name for name, kind, _, *_ in LAYERS[: [n for n, _, _, *_ in LAYERS].index("relu5_1")] if kind == "conv"]
# The convs where Winograd was faster in both passes at 512² on the benchmark machine
# (docs/winograd.md, per-layer table); the rest stay im2col.
AUTO = ("conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv4_1", "conv4_2", "conv4_3", "conv5_1")


def conv_shapes(size: int) -> list[tuple[str, int, int, int]]:
    """[(name, F, C, H)] of the convs an evaluation runs, at input size×size."""
    shapes, c, h = [], 3, size
    widths = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}
    for name, kind, _, *_ in LAYERS:
        if kind == "pool":
            h //= 2
        elif kind == "conv" and name in EVAL_CONVS:
            f = widths[int(name[4])]
            shapes.append((name, f, c, h))
            c = f
    return shapes


def real_params(dtype="float32"):
    from scratchnst.app.files.weights import load_vgg16

    return load_vgg16(backend="numpy", dtype=dtype).params


@contextlib.contextmanager
def winograd_convs(net: VGG16, names):
    """Run net's convs in `names` by Winograd (filter transforms made here, once) while inside."""
    conv_index = {name: conv for name, kind, conv, *_ in LAYERS if kind == "conv"}
    transforms = {id(net.params[conv_index[n]][0]): winograd_filter_transform(net.params[conv_index[n]][0]) for n in names}
    forward, backward = ops.conv2d_forward, ops.conv2d_backward

    def conv_forward(x, w, b, stride=1, pad=0):
        u = transforms.get(id(w))
        if u is None or stride != 1 or pad not in (0, 1):
            return forward(x, w, b, stride, pad)
        return winograd_conv2d_forward(x, w, b, pad, u=u)

    def conv_backward(dout, cache):
        return winograd_conv2d_backward(dout, cache) if isinstance(cache, WinogradCache) else backward(dout, cache)

    ops.conv2d_forward, ops.conv2d_backward = conv_forward, conv_backward
    try:
        yield
    finally:
        ops.conv2d_forward, ops.conv2d_backward = forward, backward


def pick_convs(spec: str) -> list[str]:
    if spec == "all":
        return list(EVAL_CONVS)
    if spec == "auto":
        return list(AUTO)
    if spec in ("", "none"):
        return []
    return spec.split(",")


ARENA = host.Arena()  # the big arrays from one arena, as in an objective's evaluations


def _best(fn, rounds_list):
    with host.lending(ARENA):
        t = time.perf_counter()
        out = fn()
        rounds_list.append(time.perf_counter() - t)
    return out


def cmd_layers(args) -> None:
    rng = np.random.default_rng(0)
    params = None if args.random else real_params()
    print(f"{'conv':8s} {'C→F':>9s} {'H':>4s} | {'fwd im2col':>10s} {'wino':>6s} {'GF/s':>9s} {'faster':>7s} | {'bwd im2col':>10s} {'wino':>6s} {'GF/s':>9s} {'faster':>7s}")
    rows = []
    for i, (name, F, C, H) in enumerate(conv_shapes(args.size)):
        if params is None:
            w = (rng.standard_normal((F, C, 3, 3)) * np.sqrt(2 / (9 * C))).astype(np.float32)
            b = np.zeros(F, np.float32)
        else:
            w, b = params[i]
        x = np.maximum(rng.standard_normal((1, C, H, H)), 0).astype(np.float32)
        dout = rng.standard_normal((1, F, H, H)).astype(np.float32)
        u = winograd_filter_transform(w)
        _, c_direct = ops.conv2d_forward(x, w, b, 1, 1)
        _, c_wino = winograd_conv2d_forward(x, w, b, 1, u=u)
        times = {k: [] for k in ("fd", "fw", "bd", "bw")}
        for _ in range(args.rounds):  # A, B, A, B: both see the same minutes of a noisy machine
            _best(lambda: ops.conv2d_forward(x, w, b, 1, 1), times["fd"])
            _best(lambda: winograd_conv2d_forward(x, w, b, 1, u=u), times["fw"])
            _best(lambda: ops.conv2d_backward(dout, c_direct), times["bd"])
            _best(lambda: winograd_conv2d_backward(dout, c_wino), times["bw"])
        ms = {k: 1e3 * min(v) for k, v in times.items()}
        gflop = 2 * F * C * 9 * H * H / 1e9
        row = {"conv": name, "C": C, "F": F, "H": H, **{f"{k}_ms": round(v, 2) for k, v in ms.items()}, "gflop": gflop}
        rows.append(row)
        gf = lambda k: gflop / ms[k] * 1e3  # noqa: E731
        fast = lambda a, b: "wino" if ms[b] < ms[a] else "im2col"  # noqa: E731
        print(
            f"{name:8s} {C:4d}→{F:<4d} {H:4d} | {ms['fd']:10.1f} {ms['fw']:6.1f} {gf('fd'):4.0f}/{gf('fw'):<4.0f} {fast('fd', 'fw'):>7s} |"
            f" {ms['bd']:10.1f} {ms['bw']:6.1f} {gf('bd'):4.0f}/{gf('bw'):<4.0f} {fast('bd', 'bw'):>7s}",
            flush=True,
        )
    total = {k: sum(r[f"{k}_ms"] for r in rows) for k in ("fd", "fw", "bd", "bw")}
    print(f"sum: forward {total['fd']:.0f} → {total['fw']:.0f} ms, input gradient {total['bd']:.0f} → {total['bw']:.0f} ms")
    if args.json:
        print(json.dumps(rows))


def _activations(size: int):
    """Float64 inputs of every evaluation conv, from the bundled content image through VGG-16."""
    from scratchnst.app.files.images import default_images, resize_to
    from scratchnst.core.preprocess import preprocess
    from scratchnst.app.files.weights import load_vgg16

    net = load_vgg16(backend="numpy", dtype="float64")
    content = resize_to(default_images()[0], size, size)
    x = preprocess(content, dtype="float64", xp=np)
    inputs = {}
    for name, kind, conv, *_ in LAYERS[: [n for n, _, _, *_ in LAYERS].index("relu5_1") + 1]:
        if kind == "conv":
            inputs[name] = x
            x, _ = ops.conv2d_forward(x, *net.params[conv], 1, 1)
        elif kind == "relu":
            x, _ = ops.relu_forward(x)
        else:
            x, _ = ops.maxpool2d_forward(x, 2, 2)
    return net, inputs


def cmd_accuracy(args) -> None:
    net, inputs = _activations(args.size)
    rng = np.random.default_rng(0)
    rel = lambda a, r: float(np.abs(a - r).max() / np.abs(r).max())  # noqa: E731
    print(f"{'conv':8s} {'fwd im2col32':>12s} {'fwd wino32':>10s} {'ratio':>6s} | {'bwd im2col32':>12s} {'bwd wino32':>10s} {'ratio':>6s}")
    for name, kind, conv, *_ in LAYERS:
        if name not in inputs:
            continue
        w, b = net.params[conv]
        x = inputs[name]
        y64, c64 = ops.conv2d_forward(x, w, b, 1, 1)
        dout = rng.standard_normal(y64.shape)
        dx64 = ops.conv2d_backward(dout, c64)
        x32, w32, b32, d32 = (a.astype(np.float32) for a in (x, w, b, dout))
        yd, cd = ops.conv2d_forward(x32, w32, b32, 1, 1)
        yw, cw = winograd_conv2d_forward(x32, w32, b32, 1)
        fd, fw = rel(yd, y64), rel(yw, y64)
        bd, bw = rel(ops.conv2d_backward(d32, cd), dx64), rel(winograd_conv2d_backward(d32, cw), dx64)
        print(f"{name:8s} {fd:12.2e} {fw:10.2e} {fw / fd:6.1f} | {bd:12.2e} {bw:10.2e} {bw / bd:6.1f}", flush=True)


def cook_toom(points, m: int = 4, r: int = 3):
    """(Aᵀ, G, Bᵀ) of F(m, r) for the finite `points` plus ∞, in exact fractions (as ops.winograd
    derives them): Aᵀ = Vmᵀ, G = Vr, Bᵀ = Vn⁻ᵀ, then each Bᵀ row scaled to smallest entry ±1."""
    from fractions import Fraction

    n = m + r - 1
    pts = [Fraction(p) for p in points]
    vander = lambda cols: [[p**k for k in range(cols)] for p in pts] + [[Fraction(0)] * (cols - 1) + [Fraction(1)]]  # noqa: E731
    a = [row[:] + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(vander(n))]
    for c in range(n):  # Gauss-Jordan: a = [Vn | I] → [I | Vn⁻¹]
        piv = next(i for i in range(c, n) if a[i][c] != 0)
        a[c], a[piv] = a[piv], a[c]
        a[c] = [v / a[c][c] for v in a[c]]
        for i in range(n):
            if i != c and a[i][c] != 0:
                a[i] = [x - a[i][c] * y for x, y in zip(a[i], a[c])]
    bt = [list(col) for col in zip(*[row[n:] for row in a])]
    g = vander(r)
    for i in range(n):
        scale = min(abs(v) for v in bt[i] if v != 0)
        bt[i], g[i] = [v / scale for v in bt[i]], [v * scale for v in g[i]]
    at = [list(col) for col in zip(*vander(m))]
    return tuple(np.array([[float(v) for v in row] for row in mat]) for mat in (at, g, bt))


def _einsum_winograd(x, w, at, g, bt):
    """Plain F(4×4, 3×3), pad 1, in x's dtype: every 6×6 tile cut out, transformed by einsum."""
    dt = x.dtype
    at, g, bt = (a.astype(dt) for a in (at, g, bt))
    N, C, H, W = x.shape
    th, tw = -(-H // 4), -(-W // 4)
    xp_ = np.zeros((N, C, 4 * th + 2, 4 * tw + 2), dt)
    xp_[:, :, 1 : 1 + H, 1 : 1 + W] = x
    d = np.stack([np.stack([xp_[:, :, 4 * i : 4 * i + 6, 4 * j : 4 * j + 6] for j in range(tw)], 2) for i in range(th)], 2)
    u = np.einsum("ak,fckl,bl->abfc", g, w.astype(dt), g)
    v = np.einsum("ak,nctskl,bl->abcnts", bt, d, bt)
    m = np.einsum("abfc,abcnts->abfnts", u, v)
    y = np.einsum("ia,abfnts,jb->nftisj", at, m, at).reshape(N, -1, 4 * th, 4 * tw)
    return y[:, :, :H, :W]


POINT_SETS = {
    "0, ±1, ±2 (Lavin)": (0, 1, -1, 2, -2),
    "0, ±1, ±1/2": (0, 1, -1, 0.5, -0.5),
    "0, ±1, 2, 1/2": (0, 1, -1, 2, 0.5),
    "0, ±1, −2, −1/2 (ours)": (0, 1, -1, -2, -0.5),
    "0, ±2, ±1/2": (0, 2, -2, 0.5, -0.5),
    "0, ±1, 1/2, −2": (0, 1, -1, 0.5, -2),
}


def cmd_points(args) -> None:
    params = real_params("float64")
    rng = np.random.default_rng(0)
    print("max |y − y64| / max |y64|, forward, ReLU'd standard normal input, real weights")
    print(f"{'conv':8s} {'H':>3s} {'im2col32':>9s} " + " ".join(f"{k:>22s}" for k in POINT_SETS))
    for name in ("conv1_2", "conv3_1", "conv4_1", "conv5_1"):
        conv = next(c for n, kind, c, *_ in LAYERS if n == name)
        w = params[conv][0]
        x = np.maximum(rng.standard_normal((1, w.shape[1], args.size, args.size)), 0)
        ref = ops.conv2d_forward(x, w, None, 1, 1)[0]
        scale = np.abs(ref).max()
        direct = np.abs(ops.conv2d_forward(x.astype(np.float32), w.astype(np.float32), None, 1, 1)[0] - ref).max() / scale
        errs = [np.abs(_einsum_winograd(x.astype(np.float32), w, *cook_toom(p)) - ref).max() / scale for p in POINT_SETS.values()]
        print(f"{name:8s} {args.size:3d} {direct:9.2e} " + " ".join(f"{e:22.2e}" for e in errs), flush=True)


def _eval_setup(size: int, dtype: str):
    from scratchnst.app.bench import _objective
    from scratchnst.app.files.weights import load_vgg16

    net = load_vgg16(backend="numpy", dtype=dtype, conv="im2col")  # the baseline: winograd_convs swaps in the rest
    obj, x = _objective(net, size)
    return net, obj, x


def _both(net, obj, x, names):
    """(loss, grad) of one evaluation by im2col and one with Winograd on `names`."""
    direct = obj.loss_and_grad(x)
    with winograd_convs(net, names):
        return direct, obj.loss_and_grad(x)


def _diff(a, b) -> tuple[float, float]:
    """Relative loss difference and normwise relative gradient difference of (loss, grad) a vs b."""
    (la, ga), (lb, gb) = a, b
    ga, gb = (np.asarray(g, dtype=np.float64).ravel() for g in (ga, gb))
    return abs(float(la) - float(lb)) / abs(float(lb)), float(np.linalg.norm(ga - gb) / np.linalg.norm(gb))


def cmd_whole(args) -> None:
    names = pick_convs(args.convs)
    net, obj, x = _eval_setup(args.size, "float32")
    print(f"{args.size}² float32, Winograd on: {', '.join(names) or 'none'}")
    d32, w32 = _both(net, obj, x, names)
    print("float32 winograd vs float32 im2col: loss rel diff %.2e, gradient normwise rel diff %.2e" % _diff(w32, d32), flush=True)
    times = {"im2col": [], "winograd": []}
    for r in range(args.rounds):
        _best(lambda: obj.loss_and_grad(x), times["im2col"])
        with winograd_convs(net, names):
            _best(lambda: obj.loss_and_grad(x), times["winograd"])
        print(f"  round {r}: im2col {times['im2col'][-1]:.3f} s, winograd {times['winograd'][-1]:.3f} s", flush=True)
    a, b = min(times["im2col"]), min(times["winograd"])
    ratios = sorted(w / d for d, w in zip(times["im2col"], times["winograd"]))
    print(f"min: im2col {a:.3f} s, winograd {b:.3f} s ({b / a:.3f}×); median paired ratio {ratios[len(ratios) // 2]:.3f}")
    del net, obj, x
    if not args.skip_float64:
        net, obj, x = _eval_setup(args.size, "float64")
        d64, w64 = _both(net, obj, x, names)
        print("float64 winograd vs float64 im2col: loss rel diff %.2e, gradient normwise rel diff %.2e" % _diff(w64, d64))
        print("float32 im2col vs float64 im2col: loss rel diff %.2e, gradient normwise rel diff %.2e" % _diff(d32, d64))
        print("float32 winograd vs float64 im2col: loss rel diff %.2e, gradient normwise rel diff %.2e" % _diff(w32, d64), flush=True)
        del net, obj, x
    for mode in ("none", args.convs):
        cmd = [sys.executable, __file__, "rss", "--size", str(args.size), "--convs", mode]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        print(f"peak RSS, two evaluations, Winograd on {mode}: {out} MB (fresh process)")


def cmd_rss(args) -> None:
    from scratchnst.app.bench import _peak_rss_mb

    net, obj, x = _eval_setup(args.size, "float32")
    with winograd_convs(net, pick_convs(args.convs)):
        obj.loss_and_grad(x)
        obj.loss_and_grad(x)
    print(f"{_peak_rss_mb():.0f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("layers")
    q.add_argument("--size", type=int, default=512)
    q.add_argument("--rounds", type=int, default=5)
    q.add_argument("--random", action="store_true", help="random He-scaled weights instead of the real ones")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_layers)
    q = sub.add_parser("accuracy")
    q.add_argument("--size", type=int, default=128)
    q.set_defaults(func=cmd_accuracy)
    q = sub.add_parser("points")
    q.add_argument("--size", type=int, default=16)
    q.set_defaults(func=cmd_points)
    for name, func in (("whole", cmd_whole), ("rss", cmd_rss)):
        q = sub.add_parser(name)
        q.add_argument("--size", type=int, default=512)
        q.add_argument("--rounds", type=int, default=5)
        q.add_argument("--convs", default="auto", help="all, auto, none, or a comma list of conv names")
        q.add_argument("--skip-float64", action="store_true")
        q.set_defaults(func=func)
    args = p.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
