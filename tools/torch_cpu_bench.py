"""Our NumPy engine against PyTorch's CPU backend on the same evaluation (developer tool).

The #4 benchmark says a mature framework's CPU backend does one 512² evaluation "in about 4 s here";
this measures it on the machine at hand instead of quoting it. The PyTorch side is gpu_bench.py's
TorchEngine on the CPU (torch ops from our weights file, autograd for the input gradient), checked
against NSTObjective at 64 px first (float64 to 1e-10, float32 to 1e-4 relative).

Machines like ours drift between fast and slow minutes (docs/benchmarks.md, "512² is bimodal"), so
each round runs, per size, a fresh `python -m scratchnst bench --sizes S --json` process and a fresh
PyTorch process back to back; the table reports min and median over the rounds of each one's best
evaluation. PyTorch is optional and never a scratchnst dependency: without it this exits 2.

    python tools/torch_cpu_bench.py --sizes 256,512 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import numpy as np  # noqa: E402

CHECK_SIZE = 64
CHECK_TOL = {"float64": 1e-10, "float32": 1e-4}


def _weights(path: str | None) -> str:
    from scratchnst.app.files.weights import resolve_weights

    return str(path or resolve_weights(fetch=False))


def check(weights: str) -> bool:
    """Loss of PyTorch on the CPU against ours at CHECK_SIZE px, both dtypes; prints each."""
    from gpu_bench import TorchEngine, _images, _rel

    from scratchnst.core.objective import NSTObjective
    from scratchnst.app.files.weights import load_vgg16

    ok = True
    for dtype, tol in CHECK_TOL.items():
        content, style, x = _images(CHECK_SIZE, dtype)
        ours_loss, ours_grad = NSTObjective(load_vgg16(weights, dtype=dtype), content, [style]).loss_and_grad(x)
        eng = TorchEngine(weights, dtype, device="cpu")
        torch_loss, torch_grad = eng.objective(content, style)(eng.to_device(x))
        rel = abs(ours_loss - torch_loss) / abs(torch_loss)
        ok &= rel <= tol
        print(f"check {dtype} {CHECK_SIZE} px: loss rel diff {rel:.2e}, grad rel diff "
              f"{_rel(ours_grad, eng.to_host(torch_grad)):.2e} ({'ok' if rel <= tol else 'MISMATCH'})")
    return ok


def torch_child(weights: str, size: int, repeats: int) -> None:
    """One fresh process: PyTorch's best of `repeats` evaluations at size², as one JSON line."""
    import torch
    from gpu_bench import TorchEngine, _images

    eng = TorchEngine(weights, "float32", device="cpu")
    content, style, x = _images(size, "float32")
    fn, xt = eng.objective(content, style), eng.to_device(x)
    fn(xt)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(xt)
        times.append(time.perf_counter() - t)
    print(json.dumps({"s_per_eval": min(times), "torch": torch.__version__, "threads": torch.get_num_threads()}))


def _run(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} … failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(proc.stdout)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=lambda t: [int(s) for s in t.split(",") if s], default=[256, 512])
    p.add_argument("--rounds", type=int, default=3, help="fresh process pairs per size")
    p.add_argument("--repeats", type=int, default=5, help="timed evaluations per process (best is kept)")
    p.add_argument("--weights", default=None, help="VGG-16 weights (default: the cache)")
    p.add_argument("--torch-child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("torch_cpu_bench: PyTorch is not installed; nothing to compare against", file=sys.stderr)
        return 2
    weights = _weights(args.weights)
    if args.torch_child:
        torch_child(weights, args.torch_child, args.repeats)
        return 0
    if not check(weights):
        return 1
    print(f"{'size':>5} {'ours s/eval':>14} {'torch s/eval':>14} {'ours/torch':>10}   (min / median of {args.rounds} rounds)")
    for size in args.sizes:
        ours, theirs = [], []
        for _ in range(args.rounds):
            bench = [sys.executable, "-m", "scratchnst", "bench", "--sizes", str(size), "--repeats", str(args.repeats), "--json"]
            ours.append(_run(bench)["results"][0]["s_per_eval"])
            child = [sys.executable, __file__, "--torch-child", str(size), "--repeats", str(args.repeats), "--weights", weights]
            theirs.append(_run(child)["s_per_eval"])
        pair = lambda v: f"{min(v):.3f} / {statistics.median(v):.3f}"  # noqa: E731
        print(f"{size:5d} {pair(ours):>14} {pair(theirs):>14} {np.median(ours) / np.median(theirs):9.2f}×", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
