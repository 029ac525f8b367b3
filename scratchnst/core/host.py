"""The host machinery, in one place: our own worker threads, BLAS thread limits, and the allocator.

The ops are plain `xp` code; where a measurement showed that splitting an op over the cores pays
(the conv bands, the Gram sums, ReLU and max pooling: docs/benchmarks.md, "Why split the work over
our own threads"), the op hands its pieces to `split_map` or `split_sum` in one line. On CuPy (one
stream) and with one thread both run the pieces in the calling thread.

Two rules keep results identical whatever the thread count:
- `split_map` pieces write disjoint parts of an output: who computes a piece changes nothing, as
  long as the pieces are the same; where a piece's shape changes its arithmetic (a GEMM's bits can
  depend on its width), the pieces are `chunks`, which depend on the size, never on the threads;
- `split_sum` adds such fixed chunks in a fixed order: the same floating-point sum with 1, 2 or 4
  threads.

Process-wide settings are scoped: `engine_threads()` holds BLAS at one thread for the duration of
a run and restores it after (threadpoolctl). `keep_freed_memory()` is the applications'
explicit, documented opt-in to a permanent allocator setting (the CLI and bench make it; a library
call never does); a notebook that wants the CLI's speed calls it once itself.
"""

from __future__ import annotations

import contextlib
import types
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

# Host threads that run split work; None: as many as BLAS had when first asked (so that
# OPENBLAS_NUM_THREADS / OMP_NUM_THREADS still decide).
THREADS: int | None = None
MIN_SPLIT_ELEMENTS = 2**16  # below this, handing work to another thread costs more than it saves
SUM_CHUNK_ELEMENTS = 2**20  # split_sum's chunk: a fixed amount of work, whatever the threads

_blas = None  # threadpoolctl controller of the loaded BLAS libraries, made on first use
_blas_threads: int | None = None
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _blas_controller():
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController().select(user_api="blas")
    return _blas


def workers(xp: types.ModuleType = np) -> int:
    """Threads that split work uses: 1 on CuPy, else THREADS, else BLAS's own thread count."""
    global _blas_threads
    if xp.__name__ == "cupy":
        return 1
    if THREADS is not None:
        return max(1, THREADS)
    if _blas_threads is None:
        _blas_threads = max((lib.num_threads for lib in _blas_controller().lib_controllers), default=1)
    return _blas_threads


def slices(xp: types.ModuleType, n: int, item_size: int = 1) -> list[slice]:
    """0..n as one contiguous slice per worker (a single slice on CuPy), but no slice under
    MIN_SPLIT_ELEMENTS elements (item_size per item)."""
    return _even(n, max(1, min(workers(xp), n * item_size // MIN_SPLIT_ELEMENTS)))


def split_map(xp: types.ModuleType, items: list, run) -> list:
    """[run(subset), ...] over disjoint round-robin subsets of `items` that together cover it, one
    per worker thread, with BLAS held at one thread meanwhile (each thread does its own share of the
    copies and GEMMs back to back). `run` must write only what its own items own. On CuPy, or with
    one worker: [run(items)]."""
    global _pool, _pool_size
    count = min(workers(xp), len(items))
    if count <= 1:
        return [run(list(items))]
    if _pool_size < count:
        _pool, _pool_size = ThreadPoolExecutor(count, thread_name_prefix="scratchnst-split"), count
    errors = np.geterr()  # per thread: the workers take the caller's floating-point error handling

    def guarded(subset):
        with np.errstate(**errors):
            return run(subset)

    with _blas_controller().limit(limits=1):
        futures = [_pool.submit(guarded, items[i::count]) for i in range(count)]
        wait(futures)
    return [future.result() for future in futures]  # re-raises a worker's exception here


def chunks(n: int, item_size: int = 1) -> list[slice]:
    """0..n cut into contiguous chunks of about SUM_CHUNK_ELEMENTS elements (item_size per item):
    how many depends on the size only, never on the threads."""
    return _even(n, max(1, n * item_size // SUM_CHUNK_ELEMENTS))


def _even(n: int, k: int) -> list[slice]:
    """0..n as k contiguous slices whose lengths differ by at most one."""
    return [slice(i * n // k, (i + 1) * n // k) for i in range(k)]


def split_sum(xp: types.ModuleType, n: int, item_size: int, term):
    """Σ term(chunk) over the `chunks` of 0..n, added in chunk order: the same bits whatever the
    thread count."""
    pieces = chunks(n, item_size)
    parts = dict.fromkeys(range(len(pieces)))

    def run(indices):
        for i in indices:
            parts[i] = term(pieces[i])

    split_map(xp, list(parts), run)
    total = parts[0]
    for i in range(1, len(pieces)):
        total = total + parts[i]
    return total


@contextlib.contextmanager
def engine_threads():
    """For the duration: BLAS at one thread, its threads given to split work. Restored after.

    split_map already holds BLAS at one thread while it runs; this also keeps the BLAS calls in
    between (L-BFGS's dot products, for one) single-threaded: a multithreaded OpenBLAS call leaves
    its threads spinning for up to ~0.1 s, on the cores the next split work needs. It also makes
    those dot products' sums independent of the thread count.
    """
    workers()  # remember BLAS's thread count before it is limited
    with _blas_controller().limit(limits=1):
        yield


def keep_freed_memory() -> bool:
    """Opt-in, process-wide and permanent: keep freed large host arrays in the heap.

    glibc serves every allocation above its mmap threshold (at most 32 MB by default) with a fresh
    mmap and unmaps it on free, so each objective evaluation would fault in and zero every big
    activation, mask and gradient again. Three settings keep those pages: the mmap threshold at
    2 GB, no trimming, and one malloc arena (split_map's threads would otherwise get arenas whose
    heaps cannot hold a 64 MB array). The measurements are in docs/benchmarks.md ("The
    allocator"). The applications opt in (the CLI, bench's children); a library call never does it
    behind its caller's back. Returns False where it does not apply (not glibc).
    """
    import ctypes
    import ctypes.util

    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return all(
            libc.mallopt(param, value)
            for param, value in ((M_MMAP_THRESHOLD, 2**31 - 1), (M_TRIM_THRESHOLD, -1), (M_ARENA_MAX, 1))
        )
    except (OSError, AttributeError):
        return False
