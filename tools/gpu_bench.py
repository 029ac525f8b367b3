"""Benchmark our CuPy engine against PyTorch CUDA on the same NST evaluation (developer tool).

One evaluation = NSTObjective.loss_and_grad at the default layers and weights (forward to relu5_1,
content + style losses, input gradient), on the embedded content/style pair resized to S×S. For each
precision mode and size it reports seconds per evaluation (median and min of --repeats, device
synchronised around each), the conv TFLOP/s that implies, and the device-memory peak of one
evaluation above what was resident before it:
  cupy:  the memory pool's high-water mark (pool emptied first, so total_bytes() after the evaluation
         is the most it held at once) and the drop in cudaMemGetInfo's free bytes (pool + cuBLAS);
  torch: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), and the same free-bytes drop.
The PyTorch side is written here from torch ops (no torchvision): VGG-16 features from OUR weights
file (scratchnst.app.files.weights.read_vgg16_weights), the same losses, .backward() to the input. Before any
timing it checks that torch's loss matches ours to 1e-4 relative at 64 px (float64, and float32 with
TF32 off).

Precision modes, each in its own process (CuPy reads CUPY_TF32 once, at its first float32 GEMM):
  fp32: CUPY_TF32=0; torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
  tf32: CUPY_TF32=1; both torch flags True (PyTorch's own default is cudnn on, matmul off)

Writes gpu_bench.json and gpu_bench.md to --out (default $OUT, else ./out) and the table to stdout.
Exit 0: all measured and the 64 px check passed; 1: the check failed or a measurement broke;
2: nothing to measure (no CuPy/GPU, no weights).
PyTorch is optional: without it only the CuPy rows are measured. It is never a scratchnst dependency.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the device machine runs the tree as it is, without installing it

import numpy as np  # noqa: E402

MARK = "@@RESULT "
MODES = ("fp32", "tf32")
CHECK_SIZE = 64
CHECK_TOL = 1e-4
MiB = 2**20
CHILD_GRACE_S = 20


def _say(msg: str) -> None:
    print(f"gpu_bench: {msg}", flush=True)


def _emit(kind: str, **data) -> None:
    """One result line for the parent process (the child's only protocol)."""
    print(MARK + json.dumps({"kind": kind, **data}), flush=True)


# -- the two engines -----------------------------------------------------------------------------


def _images(size: int, dtype: str):
    """Host (1, 3, S, S) preprocessed content, style, and a start point (content + fixed noise)."""
    from scratchnst.app.files.images import default_images, resize_to
    from scratchnst.core.preprocess import preprocess

    content, style = (preprocess(resize_to(img, size, size), dtype="float64") for img in default_images())
    x = content + np.random.default_rng(0).standard_normal(content.shape) * 10
    return content.astype(dtype), style.astype(dtype), x.astype(dtype)


def conv_flops(size: int) -> int:
    """FLOPs of the convs one default evaluation runs at S×S: forward to relu5_1, and again for the
    input gradient (every conv down to the pixels); a 3×3 pad-1 conv costs 2·F·C·9·H·W."""
    from scratchnst.core.objective import CONTENT_LAYERS, STYLE_LAYERS
    from scratchnst.core.vgg import layers_through, spatial_size

    total = 0
    for layer in layers_through(CONTENT_LAYERS + STYLE_LAYERS):
        if layer.kind == "conv":
            h, w = spatial_size(layer, size, size)
            total += 2 * layer.channels * layer.c_in * 9 * h * w
    return 2 * total


class OurEngine:
    """scratchnst on CuPy."""

    name = "cupy"

    def __init__(self, weights: str, dtype: str):
        import cupy

        from scratchnst.app.files.weights import load_vgg16

        self.cp = cupy
        self.net = load_vgg16(weights, backend="cupy", dtype=dtype)
        self.dtype = dtype

    def sync(self) -> None:
        self.cp.cuda.Device().synchronize()

    def objective(self, content, style):
        from scratchnst.core.objective import NSTObjective

        obj = NSTObjective(self.net, self.cp.asarray(content), [self.cp.asarray(style)])
        return lambda x: obj.loss_and_grad(x)

    def to_device(self, x):
        return self.cp.asarray(x)

    def to_host(self, a) -> np.ndarray:
        return self.cp.asnumpy(a)

    def release(self) -> None:
        self.sync()
        self.cp.get_default_memory_pool().free_all_blocks()

    def peak_of(self, fn) -> dict:
        """Run fn() once from an emptied pool; the pool's growth and the device's free-memory drop."""
        pool = self.cp.get_default_memory_pool()
        self.release()
        resident = pool.used_bytes()
        free_before = self.cp.cuda.runtime.memGetInfo()[0]
        result = fn()
        self.sync()
        free_after = self.cp.cuda.runtime.memGetInfo()[0]
        return {
            "result": result,
            "peak_mib": (pool.total_bytes() - resident) / MiB,
            "device_drop_mib": (free_before - free_after) / MiB,
            "resident_mib": resident / MiB,
        }


class TorchEngine:
    """The same computation written with torch ops, autograd for the gradient (CUDA, or device="cpu"
    for tools/torch_cpu_bench.py)."""

    name = "torch"

    def __init__(self, weights: str, dtype: str, device: str = "cuda"):
        import torch

        from scratchnst.core.objective import CONTENT_LAYERS, STYLE_LAYERS
        from scratchnst.core.vgg import LAYER_NAMES
        from scratchnst.app.files.weights import read_vgg16_weights

        self.torch = torch
        self.dev = torch.device(device)
        self.tdtype = getattr(torch, dtype)
        # The file's kernels are HWIO (3, 3, C, F); torch wants OIHW (F, C, 3, 3).
        self.params = [
            (
                torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1))).to(self.dev, self.tdtype),
                torch.from_numpy(np.asarray(b)).to(self.dev, self.tdtype),
            )
            for _, k, b in read_vgg16_weights(weights)
        ]
        self.content_layers, self.style_layers = list(CONTENT_LAYERS), list(STYLE_LAYERS)
        self.deepest = max(LAYER_NAMES.index(n) for n in self.content_layers + self.style_layers)

    def sync(self) -> None:
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize()

    def features(self, x):
        import torch.nn.functional as Fn

        from scratchnst.core.vgg import LAYERS

        wanted, feats = set(self.content_layers + self.style_layers), {}
        for name, kind, conv, *_ in LAYERS[: self.deepest + 1]:
            if kind == "conv":
                w, b = self.params[conv]
                x = Fn.conv2d(x, w, b, stride=1, padding=1)
            elif kind == "relu":
                x = Fn.relu(x)
            else:
                x = Fn.max_pool2d(x, 2, 2)
            if name in wanted:
                feats[name] = x
        return feats

    @staticmethod
    def gram(f):
        _, C, H, W = f.shape
        F = f.reshape(C, H * W)
        return F @ F.T

    def objective(self, content, style):
        """loss_and_grad with NSTObjective's defaults: α, β, γ from scratchnst.core.objective, equal style
        layer weights, TV = Σ (vertical differences)² + Σ (horizontal differences)²."""
        from scratchnst.core.objective import DEFAULT_WEIGHTS

        CONTENT_WEIGHT, STYLE_WEIGHT, TV_WEIGHT = DEFAULT_WEIGHTS["none"]  # NSTObjective's defaults

        torch = self.torch
        with torch.no_grad():
            fc = self.features(self.to_device(content))
            fs = self.features(self.to_device(style))
            targets = {l: fc[l] for l in self.content_layers}
            grams = {l: self.gram(fs[l]) for l in self.style_layers}
        layer_w = 1.0 / len(self.style_layers)

        def loss_and_grad(x):
            x = x.detach().requires_grad_(True)
            feats = self.features(x)
            content_term = sum(0.5 * ((feats[l] - targets[l]) ** 2).sum() for l in self.content_layers)
            style_term = 0
            for l in self.style_layers:
                _, C, H, W = feats[l].shape
                style_term = style_term + layer_w * ((self.gram(feats[l]) - grams[l]) ** 2).sum() / (4.0 * C * C * (H * W) ** 2)
            tv_term = ((x[:, :, 1:, :] - x[:, :, :-1, :]) ** 2).sum() + ((x[:, :, :, 1:] - x[:, :, :, :-1]) ** 2).sum()
            loss = CONTENT_WEIGHT * content_term + STYLE_WEIGHT * style_term + TV_WEIGHT * tv_term
            loss.backward()
            return float(loss.item()), x.grad

        return loss_and_grad

    def to_device(self, x):
        return self.torch.from_numpy(np.ascontiguousarray(x)).to(self.dev, self.tdtype)

    def to_host(self, a) -> np.ndarray:
        return a.detach().cpu().numpy()

    def release(self) -> None:
        self.sync()
        self.torch.cuda.empty_cache()

    def peak_of(self, fn) -> dict:
        torch = self.torch
        self.release()
        resident = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        free_before = torch.cuda.mem_get_info()[0]
        result = fn()
        self.sync()
        free_after = torch.cuda.mem_get_info()[0]
        return {
            "result": result,
            "peak_mib": (torch.cuda.max_memory_allocated() - resident) / MiB,
            "device_drop_mib": (free_before - free_after) / MiB,
            "resident_mib": resident / MiB,
        }


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), np.max(np.abs(b)), 1e-300))


# -- the child: one precision mode ---------------------------------------------------------------


def _set_torch_precision(mode: str):
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    tf32 = mode == "tf32"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    return torch


def _check(engines: dict, weights: str, dtype: str, mode: str) -> None:
    """Loss and gradient of both engines at CHECK_SIZE px on the same start point."""
    content, style, x = _images(CHECK_SIZE, dtype)
    out = {}
    for name, make in engines.items():
        eng = make(weights, dtype)
        loss, grad = eng.objective(content, style)(eng.to_device(x))
        out[name] = (loss, eng.to_host(grad))
        del eng
    (l_ours, g_ours), (l_torch, g_torch) = out["cupy"], out["torch"]
    loss_rel = abs(l_ours - l_torch) / abs(l_torch)
    _emit(
        "check", mode=mode, dtype=dtype, size=CHECK_SIZE, loss_cupy=l_ours, loss_torch=l_torch,
        loss_rel=loss_rel, grad_rel=_rel(g_ours, g_torch), passed=bool(loss_rel <= CHECK_TOL),
    )


def _measure(eng, size: int, repeats: int, mode: str, dtype: str) -> None:
    content, style, x = _images(size, dtype)
    fn = eng.objective(content, style)
    xd = eng.to_device(x)
    first = eng.peak_of(lambda: fn(xd))  # also the warm-up (kernel compiles, cuBLAS/cuDNN handles)
    loss = first["result"][0]
    del first["result"]
    times = []
    for _ in range(repeats):
        eng.sync()
        t = time.perf_counter()
        fn(xd)
        eng.sync()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    flops = conv_flops(size)
    _emit(
        "time", mode=mode, dtype=dtype, engine=eng.name, size=size, loss=loss,
        s_per_eval=med, s_min=min(times), s_all=times, conv_tflops=flops / med / 1e12, **first,
    )


def child(args) -> int:
    import cupy

    torch = None if args.no_torch else _set_torch_precision(args.mode)
    env = {
        "mode": args.mode,
        "CUPY_TF32": os.environ.get("CUPY_TF32"),
        "NVIDIA_TF32_OVERRIDE": os.environ.get("NVIDIA_TF32_OVERRIDE"),
        "torch_cudnn_allow_tf32": None if torch is None else torch.backends.cudnn.allow_tf32,
        "torch_matmul_allow_tf32": None if torch is None else torch.backends.cuda.matmul.allow_tf32,
        "torch_cudnn_benchmark": None if torch is None else torch.backends.cudnn.benchmark,
    }
    _emit("mode", **env)
    engines = {"cupy": OurEngine}
    if torch is not None:
        engines["torch"] = TorchEngine
        for dtype in (["float64", "float32"] if args.mode == "fp32" else ["float32"]):
            try:
                _check(engines, args.weights, dtype, args.mode)
            except Exception as exc:  # report and go on to the timings
                _emit("error", mode=args.mode, what=f"check {dtype}", error=f"{type(exc).__name__}: {exc}")
    last = {}  # engine -> (size, seconds its whole measurement took)
    for size in args.sizes:
        for name, make in engines.items():
            # Cost grows with the pixels: predict this size from the last one and skip what won't fit.
            guess = last[name][1] * (size / last[name][0]) ** 2 if name in last else 0.0
            if time.time() + guess > args.deadline:
                _emit("skipped", mode=args.mode, engine=name, size=size, why=f"time budget (would take ~{guess:.0f} s)")
                continue
            eng = None
            began = time.time()
            try:
                eng = make(args.weights, "float32")
                _measure(eng, size, args.repeats, args.mode, "float32")
                last[name] = (size, time.time() - began)
            except Exception as exc:  # out of memory at 2048, say: keep the other rows
                _emit("error", mode=args.mode, engine=name, size=size, error=" ".join(f"{type(exc).__name__}: {exc}".split())[:400])
            finally:
                if eng is not None:
                    eng.release()
                del eng
                cupy.get_default_memory_pool().free_all_blocks()
                if torch is not None:
                    torch.cuda.empty_cache()
    return 0


# -- the parent: environment, one child per mode, the report -------------------------------------


def _environment(weights: str) -> dict:
    import cupy

    info = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cupy": cupy.__version__,
        "weights": weights,
    }
    try:
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        info["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
        info["gpu_memory_gib"] = round(props["totalGlobalMem"] / 2**30, 1)
        info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        info["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
    except Exception as exc:
        info["gpu"] = f"unknown ({exc})"
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    except ImportError:
        info["torch"] = None
    return info


def _run_child(mode: str, args, budget_s: float) -> list[dict]:
    env = dict(os.environ)
    env["CUPY_TF32"] = "1" if mode == "tf32" else "0"
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--child", mode, "--weights", args.weights,
        "--sizes", ",".join(map(str, args.sizes)), "--repeats", str(args.repeats),
        "--deadline", str(time.time() + budget_s),
    ] + (["--no-torch"] if args.no_torch else [])
    rows = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    start = time.time()
    # A child past its budget (a hung kernel, a size far slower than predicted) is killed, so the
    # parent always gets to write what was measured.
    watchdog = threading.Timer(budget_s + CHILD_GRACE_S, proc.kill)
    watchdog.start()
    try:
        for line in proc.stdout:
            if line.startswith(MARK):
                row = json.loads(line[len(MARK):])
                rows.append(row)
                _say(_row_line(row))
            else:
                print(line, end="", flush=True)
        proc.wait()
    finally:
        watchdog.cancel()
    if proc.returncode:
        why = f"killed after {time.time() - start:.0f} s (budget {budget_s:.0f} s)" if proc.returncode < 0 else f"exited with status {proc.returncode}"
        rows.append({"kind": "error", "mode": mode, "error": f"child {why}"})
    return rows


def _row_line(row: dict) -> str:
    if row["kind"] == "time":
        return (f"{row['mode']} {row['engine']:5s} {row['size']:5d} px: {row['s_per_eval']:.4f} s/eval, "
                f"peak {row['peak_mib']:.0f} MiB, loss {row['loss']:.6e}")
    if row["kind"] == "check":
        return (f"{row['mode']} check {row['dtype']} {row['size']} px: loss rel diff {row['loss_rel']:.2e}, "
                f"grad rel diff {row['grad_rel']:.2e}: {'ok' if row['passed'] else 'MISMATCH'}")
    return json.dumps(row)


def _markdown(env: dict, rows: list[dict]) -> str:
    lines = ["# GPU benchmark: scratchnst on CuPy vs PyTorch CUDA", ""]
    lines.append("Environment: " + ", ".join(f"{k} {v}" for k, v in env.items() if k != "weights"))
    lines.append("")
    lines.append("fp32 = TF32 off in both (CUPY_TF32=0; torch cudnn/matmul allow_tf32 False); "
                 "tf32 = TF32 on in both (CUPY_TF32=1; both torch flags True).")
    lines.append("")
    checks = [r for r in rows if r["kind"] == "check"]
    if checks:
        lines += ["## Same computation? (64 px, loss and gradient, torch vs ours)", "",
                  "| mode | dtype | loss (ours) | loss (torch) | loss rel diff | grad rel diff | ≤ 1e-4 |",
                  "|---|---|---|---|---|---|---|"]
        for r in checks:
            lines.append(f"| {r['mode']} | {r['dtype']} | {r['loss_cupy']:.9e} | {r['loss_torch']:.9e} | "
                         f"{r['loss_rel']:.2e} | {r['grad_rel']:.2e} | {'yes' if r['passed'] else 'NO'} |")
        lines.append("")
    times = [r for r in rows if r["kind"] == "time"]
    lines += ["## Seconds per evaluation (float32; loss_and_grad at the default layers)", "",
              "| mode | size | engine | s/eval (median) | min | conv TFLOP/s | peak MiB | free-memory drop MiB | resident MiB | loss |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(times, key=lambda r: (r["mode"], r["size"], r["engine"])):
        lines.append(f"| {r['mode']} | {r['size']} | {r['engine']} | {r['s_per_eval']:.4f} | {r['s_min']:.4f} | "
                     f"{r['conv_tflops']:.1f} | {r['peak_mib']:.0f} | {r['device_drop_mib']:.0f} | {r['resident_mib']:.0f} | {r['loss']:.6e} |")
    pairs = {(r["mode"], r["size"]): {} for r in times}
    for r in times:
        pairs[(r["mode"], r["size"])][r["engine"]] = r
    ratio = [(k, v) for k, v in sorted(pairs.items()) if "cupy" in v and "torch" in v]
    if ratio:
        lines += ["", "| mode | size | cupy / torch time | cupy / torch peak memory |", "|---|---|---|---|"]
        for (mode, size), v in ratio:
            lines.append(f"| {mode} | {size} | {v['cupy']['s_per_eval'] / v['torch']['s_per_eval']:.2f}× | "
                         f"{v['cupy']['peak_mib'] / max(v['torch']['peak_mib'], 1e-9):.2f}× |")
    other = [r for r in rows if r["kind"] in ("error", "skipped")]
    if other:
        lines += ["", "## Not measured", ""] + [f"- {json.dumps(r)}" for r in other]
    lines += ["", "Peak: cupy = memory-pool high-water mark above what was resident (pool emptied first); "
              "torch = max_memory_allocated above memory_allocated. Free-memory drop: cudaMemGetInfo before/after "
              "one evaluation (includes library workspaces). Times: median of the repeats, device synchronised "
              "around each, after one warm-up evaluation."]
    return "\n".join(lines) + "\n"


def parent(args) -> int:
    from scratchnst.core.backend import _probe_cupy
    from scratchnst.errors import ScratchnstError
    from scratchnst.app.files.weights import resolve_weights

    cupy, why = _probe_cupy()
    if cupy is None:
        _say(f"CuPy is not usable here ({why}); nothing to benchmark")
        return 2
    try:
        args.weights = str(resolve_weights(args.weights, fetch=False))
    except ScratchnstError as exc:
        _say(f"no VGG-16 weights: {exc} (set SCRATCHNST_WEIGHTS to a carried copy; see docs/gpu.md)")
        return 2
    if not args.no_torch:
        try:
            import torch

            if not torch.cuda.is_available():
                _say("PyTorch sees no CUDA device: measuring CuPy only")
                args.no_torch = True
        except ImportError:
            _say("PyTorch is not installed: measuring CuPy only")
            args.no_torch = True
    env = _environment(args.weights)
    _say("environment: " + json.dumps(env))
    rows = []
    for mode in args.modes:  # an equal share each, so an overrun in one mode cannot starve the next
        rows += _run_child(mode, args, args.budget_s / len(args.modes))
    out = Path(args.out or os.environ.get("OUT") or ROOT / "out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_bench.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1) + "\n")
    md = _markdown(env, rows)
    (out / "gpu_bench.md").write_text(md)
    print(md)
    _say(f"wrote {out / 'gpu_bench.json'} and {out / 'gpu_bench.md'}")
    bad = [r for r in rows if r["kind"] == "error" or (r["kind"] == "check" and not r["passed"])]
    return 1 if bad else 0


def _sizes(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=_sizes, default=[512, 1024, 2048], help="comma list of square image sizes in px")
    p.add_argument("--modes", type=lambda t: [m for m in t.split(",") if m], default=list(MODES), help="fp32,tf32")
    p.add_argument("--repeats", type=int, default=3, help="timed evaluations per size, after one warm-up")
    p.add_argument("--budget-s", type=float, default=200.0, help="time for all modes; sizes left when it runs out are skipped")
    p.add_argument("--weights", default=None, help="VGG-16 weights (default: $SCRATCHNST_WEIGHTS, then the cache)")
    p.add_argument("--out", default=None, help="folder for gpu_bench.json/.md (default: $OUT, else ./out)")
    p.add_argument("--no-torch", action="store_true", help="measure CuPy only")
    p.add_argument("--child", choices=MODES, default=None, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, default=float("inf"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if any(m not in MODES for m in args.modes):
        p.error(f"--modes takes {', '.join(MODES)}")
    if args.child:
        args.mode = args.child
        return child(args)
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
