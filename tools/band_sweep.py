"""How big should an im2col band be? Measure it on this machine (developer tool, NumPy backend).

ops.conv sizes its bands by TILE_BYTES and MIN_BAND_COLS, and host.split_map runs them on
host.THREADS threads (default: as many as BLAS has). Two measurements back those settings:

    python tools/band_sweep.py layers --size 512 --rounds 4 [--threads N]
        every distinct VGG conv at that input size (forward; the backward passes are the same
        shapes), median GFLOP/s by band height, the heights run round-robin so that each round
        sees the same minute of a noisy machine (heights are rounded so that every band worker
        gets the same number of bands)
    python tools/band_sweep.py whole --size 512 --rounds 10 [--other NAME=VALUE ...]
        whole objective evaluations, alternating the current settings with the first session's
        (16 MB bands of at least 4096 columns, one after another on multithreaded BLAS; ReLU and
        pooling single-threaded as well, since they split only when host.THREADS > 1) or with
        the given ones; prints each pair and the median of the paired ratios, the statistic that
        survives the machine drifting between fast and slow minutes (docs/benchmarks.md)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from scratchnst.core import host  # noqa: E402
from scratchnst.core.ops import conv  # noqa: E402

# The first session's settings: 16 MB bands of at least 4096 columns, one after another, each GEMM
# on all of BLAS's threads.
EARLIER = {"TILE_BYTES": 16 * 2**20, "MIN_BAND_COLS": 4096, "THREADS": 1}


def _shapes(size: int) -> list[tuple[int, int, int]]:
    """Distinct (C, F, H) of VGG-16's convs up to conv5_1 at a size×size input."""
    from scratchnst.core.vgg import BLOCK_DEPTHS

    shapes, c, h = [], 3, size
    for block, depth in enumerate(BLOCK_DEPTHS, start=1):
        f = (64, 128, 256, 512, 512)[block - 1]
        for _ in range(depth if block < 5 else 1):
            if (c, f, h) not in shapes:
                shapes.append((c, f, h))
            c = f
        h //= 2
    return shapes


ARENA = host.Arena()  # the big arrays from one arena, as in an objective's evaluations


def _best_seconds(fn, repeats: int = 2) -> float:
    times = []
    for _ in range(repeats):
        with host.lending(ARENA):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return min(times)


def layers(size: int, rounds: int) -> None:
    """Median GFLOP/s per conv shape and band height, round-robin over the heights."""
    rng = np.random.default_rng(0)
    tile, min_cols = conv.TILE_BYTES, conv.MIN_BAND_COLS
    for C, F, H in _shapes(size):
        x = rng.standard_normal((1, C, H, H), dtype=np.float32)
        w = rng.standard_normal((F, C, 3, 3), dtype=np.float32)
        conv.TILE_BYTES, conv.MIN_BAND_COLS = tile, min_cols
        default = conv._band_rows(np, 9 * C, F, H + 2, H, 4)
        conv.TILE_BYTES = 0  # from here on, bands of MIN_BAND_COLS columns
        heights = {}
        for r in (1, 2, 4, 8, 16, 32, 64, 128, H):
            conv.MIN_BAND_COLS = min(r, H) * (H + 2)
            heights.setdefault(conv._band_rows(np, 9 * C, F, H + 2, H, 4), conv.MIN_BAND_COLS)
        rates = {rows: [] for rows in heights}
        for _ in range(rounds):
            for rows, cols in heights.items():
                conv.MIN_BAND_COLS = cols
                rates[rows].append(2 * F * C * 9 * H * H / _best_seconds(lambda: conv._conv_gemm(x, w, None, 1, 1)) / 1e9)
        cells = "  ".join(f"{rows}:{statistics.median(v):.0f}" for rows, v in sorted(rates.items()))
        print(f"{C:>3}->{F:<3} at {H:>4}² (default {default:>3} rows)  median GFLOP/s by rows per band  {cells}", flush=True)
    conv.TILE_BYTES, conv.MIN_BAND_COLS = tile, min_cols


def whole(size: int, rounds: int, other: dict) -> None:
    """Paired whole-evaluation times: current band constants against `other` (EARLIER by default)."""
    from scratchnst.app.bench import _objective, conv_flops, gemm_peak
    from scratchnst.app.files.weights import load_vgg16

    blas_threads = host.workers()  # before anything pins BLAS
    current = {name: getattr(host if name == "THREADS" else conv, name) for name in EARLIER}
    current["THREADS"] = current["THREADS"] or blas_threads
    net = load_vgg16()
    obj, x = _objective(net, size)
    gflop = conv_flops(net.params, size, size, obj.layers)["total"] / 1e9
    ratios = []
    for _ in range(rounds):
        peak, pair = gemm_peak(np), []
        for constants in (current, {**current, **other}):
            for name, value in constants.items():
                setattr(host if name == "THREADS" else conv, name, value)
            # As an application runs each: with split work, BLAS single-threaded throughout
            # (host.engine_threads); without, BLAS on all its threads.
            with threadpool_limits(1 if constants["THREADS"] > 1 else blas_threads, user_api="blas"):
                pair.append(_best_seconds(lambda: obj.loss_and_grad(x), repeats=1))
        ratios.append(pair[0] / pair[1])
        print(f"GEMM peak {peak:.0f} GFLOP/s  current {pair[0]:.3f} s ({100 * gflop / pair[0] / peak:.1f}%)  "
              f"other {pair[1]:.3f} s ({100 * gflop / pair[1] / peak:.1f}%)  ratio {ratios[-1]:.3f}", flush=True)
    print(f"median current/other over {rounds} pairs: {statistics.median(ratios):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("layers", "whole"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, help="layers: band worker threads (default: as many as BLAS has)")
    parser.add_argument("--other", nargs="*", metavar="NAME=VALUE", default=[],
                        help=f"whole: compare against these values of {', '.join(EARLIER)} instead of the earlier ones")
    args = parser.parse_args()
    host.THREADS = args.threads
    if args.mode == "layers":
        layers(args.size, args.rounds)
    else:
        other = dict((name, int(value)) for name, value in (item.split("=") for item in args.other)) or EARLIER
        whole(args.size, args.rounds, other)


if __name__ == "__main__":
    main()
