"""What tiling costs: one objective evaluation untiled against tiled (developer tool, NumPy backend).

    python tools/tiled_cost.py --size 1024 --core 512 [--repeats 2] [--dtype float32]

The embedded pair at --size (long side), the real weights, the default layers and `normalize="size"`:
NSTObjective.evaluate against TiledObjective.evaluate (recomputing pass 1's forwards, and keeping
them) on targets made tile by tile (tiled_features, tiled_style_grams). Prints each evaluation's
seconds (wall, and CPU over all threads: the fairer figure on a shared machine), the ratios of the
fastest, and how far the tiled loss and gradient are from the untiled ones. The evaluations take
turns, so that a change in the machine's load touches each alike; the first of each is slower
(their arenas grow to their arrays during it).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from scratchnst.app.files import images as im
from scratchnst.app.files.weights import load_vgg16
from scratchnst.core.objective import NSTObjective
from scratchnst.core.preprocess import preprocess
from scratchnst.core.tiled import TiledObjective, halo_overhead, tiled_features, tiled_style_grams


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--core", type=int, default=512)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dtype", default="float32")
    args = p.parse_args()
    net = load_vgg16(None, backend="numpy", dtype=args.dtype)
    content, style = (preprocess(im.fit_long_side(im.open_image(None, role)[0], args.size), dtype=args.dtype)
                      for role in ("content", "style"))
    x = np.random.default_rng(0).normal(0, 24, content.shape).astype(args.dtype)
    whole = NSTObjective(net, content, [style], normalize="size")
    tiled = NSTObjective(net, content, None, grams=[tiled_style_grams(net, style, whole.style_layers, args.core)],
                         content_features=tiled_features(net, content, whole.content_layers, args.core), normalize="size")
    runs = {"untiled": whole.evaluate, "tiled": TiledObjective(tiled, args.core).evaluate,
            "tiled, keep_forward": TiledObjective(tiled, args.core, keep_forward=True).evaluate}
    print(f"{content.shape[3]}x{content.shape[2]}, {args.dtype}, cores of {args.core} px: "
          f"{len(TiledObjective(tiled, args.core).tiles)} tiles, halo overhead {halo_overhead(TiledObjective(tiled, args.core).tiles):.4f}")
    seconds, cpu, results = {name: [] for name in runs}, {name: [] for name in runs}, {}
    for _ in range(args.repeats):  # in turn, so that a change in the machine's load touches each alike
        for name, evaluate in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            results[name] = evaluate(x.copy())
            seconds[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    for name, times in seconds.items():
        print(f"{name}: {', '.join(f'{s:.2f}' for s in times)} s ({min(times) / min(seconds['untiled']):.2f}x untiled); "
              f"CPU {', '.join(f'{s:.2f}' for s in cpu[name])} s ({min(cpu[name]) / min(cpu['untiled']):.2f}x)", flush=True)
    a, b = results["untiled"], results["tiled"]
    print(f"tiled vs untiled: loss {abs(b.loss - a.loss) / abs(a.loss):.1e}, "
          f"gradient {np.linalg.norm(b.grad - a.grad) / np.linalg.norm(a.grad):.1e} (relative, normwise)")


if __name__ == "__main__":
    main()
