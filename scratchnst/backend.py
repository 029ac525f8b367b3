"""The one place that decides NumPy or CuPy; everything else derives `xp` from its inputs.

CuPy is imported lazily, here only, the first time a backend other than "numpy" is asked for.
"""

from __future__ import annotations

import types
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from scratchnst.errors import ScratchnstError, one_line

BACKENDS = ("auto", "numpy", "cupy")
DTYPES = ("float32", "float64")
GPU_HELP = "pip install 'scratchnst[gpu]' on a machine with an NVIDIA GPU; see docs/gpu.md"

_working: set[int] = set()  # id() of CuPy modules that passed the smoke test in this process

# Host threads that run split work (the conv's im2col bands, Gram position chunks, ReLU stretches,
# pooling channels); None: as many as BLAS has threads.
SPLIT_THREADS: int | None = None
_blas = None  # threadpoolctl controller of the loaded BLAS libraries, made on first use
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
MIN_SPLIT_ELEMENTS = 2**16


def _probe_cupy() -> tuple[types.ModuleType | None, str]:
    """(cupy, "") when CuPy imports, sees a CUDA device and runs a kernel; else (None, why not).

    The smoke test (an elementwise kernel and a reduction) catches installs whose runtime
    libraries or driver do not match, which would otherwise fail at the first real kernel.
    """
    try:
        import cupy
    except ImportError as exc:
        if getattr(exc, "name", None) == "cupy":
            return None, "CuPy is not installed"
        return None, f"CuPy failed to import ({one_line(exc)})"
    except Exception as exc:  # a broken install can raise anything at import time
        return None, f"CuPy failed to import ({one_line(exc)})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return None, f"CuPy sees no CUDA device ({one_line(exc)})"
    if count < 1:
        return None, "CuPy sees no CUDA device"
    if id(cupy) not in _working:
        try:
            if int((cupy.arange(3) * 2).sum()) != 6:
                return None, "CuPy's smoke test computed a wrong result"
        except Exception as exc:
            return None, f"CuPy cannot run a kernel on the GPU ({one_line(exc)})"
        _working.add(id(cupy))
    return cupy, ""


def _cupy_or_none() -> types.ModuleType | None:
    """CuPy when it is usable (see _probe_cupy), else None."""
    return _probe_cupy()[0]


def get_backend(name: str = "auto") -> types.ModuleType:
    """Return the array module for `name`: "numpy", "cupy" or "auto" (CuPy when usable, else NumPy).

    "cupy" without a usable CuPy and CUDA device raises ScratchnstError saying which is missing.
    """
    if name not in BACKENDS:
        raise ScratchnstError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    if name == "numpy":
        return np
    cupy, why = _probe_cupy()
    if cupy is not None:
        return cupy
    if name == "cupy":
        raise ScratchnstError(f"backend 'cupy' needs CuPy and a CUDA device: {why}; {GPU_HELP}")
    return np


def _is_cupy(a) -> bool:
    return type(a).__module__.split(".")[0] == "cupy"


def get_array_module(*arrays) -> types.ModuleType:
    """The module (numpy or cupy) the arrays live in, like cupy.get_array_module."""
    for a in arrays:
        if _is_cupy(a):
            import cupy

            return cupy
    return np


def to_host(a) -> np.ndarray:
    """A NumPy copy of a host or device array (the only device-to-host edge)."""
    return a.get() if _is_cupy(a) else np.asarray(a)


def check_dtype(dtype: str) -> str:
    if str(dtype) not in DTYPES:
        raise ScratchnstError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    return str(dtype)


def backend_name(xp: types.ModuleType) -> str:
    return "cupy" if xp.__name__ == "cupy" else "numpy"


def tune_host_process() -> None:
    """What the applications (the CLI, `stylize`, `bench`'s children) set up for a run on the host:
    reuse_freed_host_memory and give_blas_threads_to_split_work. Process-wide, hence not done
    on import."""
    reuse_freed_host_memory()
    give_blas_threads_to_split_work()


def reuse_freed_host_memory() -> bool:
    """Keep freed large host arrays in the process heap instead of returning them to the OS.

    glibc serves every allocation above its mmap threshold (128 KB, adapting up to 32 MB) with a
    fresh mmap and unmaps it on free, so each objective evaluation re-faults and zeroes every big
    activation, mask and gradient (≈ 1.5 GB of pages at 512²). Three settings keep those pages:
    - the mmap threshold at 2 GB (the largest an int can say): big arrays come from the heap;
      3.16 → 2.44 s per 512² evaluation on the 2-core benchmark machine, ≈ 7% more peak RSS;
    - no trimming: with a 1 GB trim threshold, a 1024² evaluation still handed > 1 GB back at the
      end and faulted it in again, ≈ 2 s of system time each;
    - one malloc arena: split_work's threads would otherwise allocate from arenas of their own,
      whose heaps cannot hold a 64 MB array and mmap it per use instead. The threads allocate a
      few buffers per call, so sharing one arena's lock costs nothing measurable.
    With both, 1024²: 9.7 → 8.2–9.0 s per evaluation, system time 2 → 0.04 s (docs/benchmarks.md).
    Process-wide, so only the applications call it (the CLI, `stylize`, bench's children). Returns
    False where it does not apply (not glibc).
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


def _blas_controller():
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController().select(user_api="blas")
    return _blas


def split_workers(xp: types.ModuleType) -> int:
    """How many threads `split_work` uses: 1 on CuPy (one stream), else SPLIT_THREADS, else BLAS's
    own thread count (so OPENBLAS_NUM_THREADS / OMP_NUM_THREADS still decide)."""
    if xp.__name__ == "cupy":
        return 1
    if SPLIT_THREADS is not None:
        return max(1, SPLIT_THREADS)
    return max((lib.num_threads for lib in _blas_controller().lib_controllers), default=1)


def split_range(xp: types.ModuleType, n: int, item_size: int = 1) -> list[slice]:
    """0..n as one contiguous slice per `split_work` worker (a single slice on CuPy), but no slice
    under MIN_SPLIT_ELEMENTS elements (item_size per item): handing a few microseconds of work
    to another thread costs more than it saves."""
    k = max(1, min(split_workers(xp), n * item_size // MIN_SPLIT_ELEMENTS))
    return [slice(i * n // k, (i + 1) * n // k) for i in range(k)]


def split_work(xp: types.ModuleType, items: list, run) -> list:
    """[run(subset), ...] over disjoint subsets of `items` that together cover it.

    On CuPy, or with one worker: [run(items)]. On the host: one round-robin subset per worker
    thread, with BLAS held at one thread meanwhile, so that each thread does its own share of the
    copies and GEMMs back to back and both kinds of work use every core. (With multithreaded BLAS
    instead, the single-threaded copies between GEMMs left all but one core idle, and every GEMM
    call had to wake the BLAS threads again: docs/benchmarks.md, "Why split the work over our own
    threads".) `run` must write only what its own items own.
    """
    global _pool, _pool_size
    workers = min(split_workers(xp), len(items))
    if workers <= 1:
        return [run(list(items))]
    if _pool_size < workers:
        _pool, _pool_size = ThreadPoolExecutor(workers, thread_name_prefix="scratchnst-split"), workers
    errors = np.geterr()  # per thread: the workers take the caller's floating-point error handling

    def guarded(subset):
        with np.errstate(**errors):
            return run(subset)

    with _blas_controller().limit(limits=1):
        futures = [_pool.submit(guarded, items[i::workers]) for i in range(workers)]
        wait(futures)
    return [future.result() for future in futures]  # re-raises a worker's exception here


def give_blas_threads_to_split_work() -> int:
    """Process-wide, for applications (like reuse_freed_host_memory): BLAS single-threaded for
    good, and SPLIT_THREADS = the threads it had. Returns SPLIT_THREADS.

    split_work already holds BLAS at one thread while it runs; this also keeps the BLAS calls in
    between (L-BFGS's dot products, for one) single-threaded. Each multithreaded OpenBLAS call
    otherwise leaves its threads spinning for up to ~0.1 s, on the cores that the next split work
    needs: the first conv of the backward pass took 46 ms instead of 30 (docs/benchmarks.md).
    """
    global SPLIT_THREADS
    if SPLIT_THREADS is None:
        SPLIT_THREADS = split_workers(np)
        _blas_controller().limit(limits=1)
    return SPLIT_THREADS
