"""`scratchnst bench`: the speed of one objective evaluation (forward to relu5_1 + input gradient).

For each image size, in a fresh subprocess (so peak RSS is that size's own): the float32 GEMM
throughput of a square matmul, then seconds per `NSTObjective.loss_and_grad` (min of N after a
warm-up) at the default layers, the conv FLOPs it performed, GFLOP/s and % of that GEMM peak.
`--profile` adds a per-layer/op time breakdown of one evaluation.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from scratchnst.app.files.images import default_images, resize_to
from scratchnst.app.files.weights import load_vgg16
from scratchnst.core import host, ops
from scratchnst.core.backend import is_cupy
from scratchnst.core.objective import NSTObjective
from scratchnst.core.preprocess import preprocess
from scratchnst.core.vgg import layers_through, spatial_size
from scratchnst.errors import ScratchnstError

# CuPy is never imported here: a GPU run reaches it through the net's array module (xp.cuda).

DEFAULT_SIZES = (128, 256, 512, 1024)
GEMM_N = 2048


def _clock(xp, fn) -> float:
    """Seconds for fn(), synchronising the device first and after."""
    sync = (lambda: xp.cuda.Device().synchronize()) if is_cupy(xp) else (lambda: None)
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def gemm_peak(xp, dtype: str = "float32", n: int = GEMM_N, repeats: int = 5) -> float:
    """GFLOP/s of an n×n @ n×n matmul on xp, best of `repeats` after one warm-up."""
    rng = np.random.default_rng(0)
    a = xp.asarray(rng.random((n, n), dtype=np.float32).astype(dtype))
    b = xp.asarray(rng.random((n, n), dtype=np.float32).astype(dtype))
    out = xp.empty((n, n), dtype=dtype)
    xp.matmul(a, b, out=out)
    return 2.0 * n**3 / min(_clock(xp, lambda: xp.matmul(a, b, out=out)) for _ in range(repeats)) / 1e9


def conv_flops(params, height: int, width: int, layers) -> dict:
    """FLOPs of the convs one evaluation runs: forward to the deepest of `layers`, and the same again
    for the input gradient of every conv the backward pass crosses (all of them: it ends at the pixels).

    params: VGG16.params ((F, C, KH, KW) kernels); each 3×3 pad-1 conv costs 2·F·C·KH·KW·H·W.
    Returns {"forward": int, "backward": int, "total": int}.
    """
    fwd = 0
    for layer in layers_through(layers):
        if layer.kind == "conv":
            F, C, KH, KW = params[layer.conv][0].shape
            fwd += 2 * F * C * KH * KW * math.prod(spatial_size(layer, height, width))
    return {"forward": fwd, "backward": fwd, "total": 2 * fwd}


def _peak_rss_mb() -> float:
    """Peak resident set of this process in MiB (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _objective(net, size: int):
    """The default objective on the bundled images resized to size×size, and a start image."""
    content, style = (resize_to(im, size, size) for im in default_images())
    xp, dtype = net.xp, str(net.dtype)
    c = preprocess(content, dtype=dtype, xp=xp)
    s = preprocess(style, dtype=dtype, xp=xp)
    obj = NSTObjective(net, c, [s])
    # Start like a run a few steps in: content plus noise (any dense input costs the same).
    noise = np.random.default_rng(0).standard_normal(c.shape).astype(dtype) * 10
    x = c + xp.asarray(noise)
    return obj, x


def measure_size(size: int, *, repeats: int = 3, backend: str = "numpy", dtype: str = "float32", conv: str = "auto",
                 profile: bool = False) -> dict:
    """Time one size in this process. Returns a dict of the measurements (see `run`)."""
    net = load_vgg16(backend=backend, dtype=dtype, conv=conv)
    xp = net.xp
    obj, x = _objective(net, size)
    flops = conv_flops(net.params, size, size, obj.layers)
    loss, grad = obj.loss_and_grad(x)  # warm-up: first touch of every buffer
    if grad.dtype != net.dtype:
        raise ScratchnstError(f"gradient came back {grad.dtype}, expected {net.dtype}")
    # Right before the timed evaluations, under the same load, on as many BLAS threads as there
    # are split workers (an application runs BLAS single-threaded inside each of them).
    with threadpool_limits(host.workers(), user_api="blas"):
        peak = gemm_peak(xp, dtype)
    times = [_clock(xp, lambda: obj.loss_and_grad(x)) for _ in range(repeats)]
    best = min(times)
    result = {
        "size": size,
        "backend": backend,
        "dtype": dtype,
        "conv": conv,
        "loss": float(loss),
        "s_per_eval": best,
        "s_per_eval_all": times,
        "conv_gflop": flops["total"] / 1e9,
        "gflops": flops["total"] / best / 1e9,
        "gemm_peak_gflops": peak,
        "pct_of_peak": 100.0 * flops["total"] / best / 1e9 / peak,
        "peak_rss_mb": _peak_rss_mb(),
        "split_threads": host.workers(xp),
    }
    if profile:
        result["profile"] = profile_eval(obj, x)
    return result


def profile_eval(obj, x) -> dict:
    """Time every op call of one evaluation (ops wrapped for the duration, then restored).

    Returns {"total_s": float, "rows": [(op, input shape, calls, seconds)], largest first}; the time
    outside the ops (loss arithmetic, gradient sums) is the row "other". The net calls every op
    through the ops module, so wrapping the module's functions times them all.
    """
    xp = obj.net.xp
    rows: dict = {}

    def wrap(name, fn):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            if is_cupy(xp):
                xp.cuda.Device().synchronize()
            key = (name, "×".join(str(d) for d in args[0].shape[1:]))
            calls, secs = rows.get(key, (0, 0.0))
            rows[key] = (calls + 1, secs + time.perf_counter() - t)
            return out

        return timed

    names = [n for n in ops.__all__ if n.endswith(("_forward", "_backward"))]
    saved = {n: getattr(ops, n) for n in names}
    try:
        for n in names:
            setattr(ops, n, wrap(n, saved[n]))
        total = _clock(xp, lambda: obj.loss_and_grad(x))
    finally:
        for n in names:
            setattr(ops, n, saved[n])
    table = sorted(((op, shape, c, s) for (op, shape), (c, s) in rows.items()), key=lambda r: -r[3])
    table.append(("other", "", 1, total - sum(r[3] for r in table)))
    return {"total_s": total, "rows": table}


def format_profile(prof: dict) -> str:
    lines = [f"{'op':22s} {'input C×H×W':16s} {'calls':>5s} {'seconds':>8s} {'share':>6s}"]
    for op, shape, calls, secs in prof["rows"]:
        lines.append(f"{op:22s} {shape:16s} {calls:5d} {secs:8.3f} {100 * secs / prof['total_s']:5.1f}%")
    return "\n".join(lines)


def _child(size: int, args) -> dict:
    cmd = [
        sys.executable, "-m", "scratchnst.app.bench", "--child", str(size),
        "--repeats", str(args.repeats), "--backend", args.backend, "--dtype", args.dtype, "--conv", args.conv,
    ]
    if args.profile:
        cmd.append("--profile")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ScratchnstError(f"bench at {size}×{size} failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _machine(backend: str) -> dict:
    info = {"python": platform.python_version(), "numpy": np.__version__, "cpu": platform.processor() or "?"}
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"], info["logical_cpus"] = names[0], len(names)
    except (OSError, IndexError):
        pass
    info["blas"] = [
        {k: p.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
        for p in threadpool_info() if p.get("user_api") == "blas"
    ]
    return info


def run(sizes=DEFAULT_SIZES, *, repeats: int = 3, backend: str = "numpy", dtype: str = "float32",
        convs=("auto", "im2col"), profile: bool = False, as_json: bool = False, out=sys.stdout) -> dict:
    """Benchmark each size and convolution algorithm in its own subprocess; print a table (or JSON).

    Returns {"machine": {...}, "results": [per-run dicts with size, conv, s_per_eval, conv_gflop,
    gflops, gemm_peak_gflops, pct_of_peak, peak_rss_mb, loss, ...]}. The FLOPs are the direct
    convolution's, so Winograd's GFLOP/s are direct-equivalent and may exceed the GEMM peak's share.
    """
    report = {"machine": _machine(backend), "results": []}
    if not as_json:
        print(f"{'size':>6s} {'conv':>8s} {'s/eval':>8s} {'conv GFLOP':>10s} {'GFLOP/s':>8s} {'GEMM peak':>9s} {'% peak':>7s} {'peak RSS MB':>11s}", file=out)
    for size in sizes:
        for conv in convs:
            args = type("A", (), {"repeats": repeats, "backend": backend, "dtype": dtype, "conv": conv, "profile": profile})
            r = _child(size, args)
            report["results"].append(r)
            if not as_json:
                print(
                    f"{size:6d} {conv:>8s} {r['s_per_eval']:8.3f} {r['conv_gflop']:10.1f} {r['gflops']:8.1f} "
                    f"{r['gemm_peak_gflops']:9.1f} {r['pct_of_peak']:6.1f}% {r['peak_rss_mb']:11.0f}",
                    file=out, flush=True,
                )
    if as_json:
        print(json.dumps(report, indent=1), file=out)
    elif profile:
        for r in report["results"]:
            print(f"\nprofile at {r['size']}×{r['size']}, {r['conv']} (one evaluation, {r['profile']['total_s']:.3f} s):", file=out)
            print(format_profile(r["profile"]), file=out)
    return report


def _child_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="scratchnst.app.bench")
    p.add_argument("--child", type=int, required=True)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backend", default="numpy")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--conv", default="auto")
    p.add_argument("--profile", action="store_true")
    a = p.parse_args(argv)
    with host.engine_threads():
        r = measure_size(a.child, repeats=a.repeats, backend=a.backend, dtype=a.dtype, conv=a.conv, profile=a.profile)
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
