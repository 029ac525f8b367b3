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

Nothing process-wide is changed for good: `engine_threads()` holds BLAS at one thread for the
duration of a run and restores it after (threadpoolctl), and the allocator is left alone.

Big arrays: the ops make their outputs and band buffers with `empty`/`zeros` below instead of
xp.empty/xp.zeros. Inside `lending(arena)` (an NSTObjective lends from its own Arena, from its
targets through every evaluation) those of LEND_MIN_BYTES or more come from the arena's region,
which lasts from one evaluation to the next; anywhere else they are plain xp arrays. The CLI and a
library call run the same code at the same speed (docs/benchmarks.md, "An arena for the big
arrays").
"""

from __future__ import annotations

import bisect
import contextlib
import mmap
import threading
import types
import weakref
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
from threadpoolctl import ThreadpoolController

from scratchnst.core.backend import is_cupy

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
        _blas = ThreadpoolController().select(user_api="blas")
    return _blas


def workers(xp: types.ModuleType = np) -> int:
    """Threads that split work uses: 1 on CuPy, else THREADS, else BLAS's own thread count."""
    global _blas_threads
    if is_cupy(xp):
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


def split_count(xp: types.ModuleType, n: int) -> int:
    """How many workers split_map hands n items to: min(workers(xp), n), at least one."""
    return max(1, min(workers(xp), n))


def split_map(xp: types.ModuleType, items: list, run) -> list:
    """[run(subset), ...] over disjoint round-robin subsets of `items` that together cover it, one
    per worker thread, with BLAS held at one thread meanwhile (each thread does its own share of the
    copies and GEMMs back to back). `run` must write only what its own items own. On CuPy, or with
    one worker: [run(items)]."""
    return split_map_by_worker(xp, items, lambda worker, subset: run(subset))


def split_map_by_worker(xp: types.ModuleType, items: list, run) -> list:
    """split_map, with each call also told its worker: [run(worker, subset), ...], worker 0 ..
    split_count(xp, len(items)) − 1, for buffers that belong to one worker (made once by the caller,
    reused for every item of that worker)."""
    global _pool, _pool_size
    count = split_count(xp, len(items))
    if count <= 1:
        return [run(0, list(items))]
    if _pool_size < count:
        _pool, _pool_size = ThreadPoolExecutor(count, thread_name_prefix="scratchnst-split"), count
    errors = np.geterr()  # per thread: the workers take the caller's floating-point error handling
    arena = _lender.arena  # and the caller's arena

    def guarded(worker, subset):
        with np.errstate(**errors), lending(arena, renew=False):
            return run(worker, subset)

    with _blas_controller().limit(limits=1):
        futures = [_pool.submit(guarded, i, items[i::count]) for i in range(count)]
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


# -- big arrays: an arena that lends freed memory to any shape ------------------------------------

LEND_MIN_BYTES = 2**20  # smaller arrays stay with malloc, whose heap already reuses them cheaply
ALIGN = 4096  # loans start on page boundaries
HEADROOM = 1.1  # a new region is this much more than the most ever lent at once (for fragmentation)


class Arena:
    """Host memory for big arrays: one region, lent out in pieces for any shape and dtype, each piece
    taken back when its array and every view of it are gone, and lent again.

    Why: glibc maps every allocation above its mmap threshold (32 MB at most) afresh and unmaps it
    on free, so without this each evaluation faults in and zeroes its large activations and
    gradients again (at 512², about a quarter of its time).

    How: loans are carved first-fit from the region's free intervals, which merge again when loans
    come back. What does not fit is a plain array, and the shortfall is noted; `renew` (at the start
    of each evaluation) then makes a region big enough for the most ever lent at once, so from the
    second evaluation on everything fits when the loans come in the same order. Split work lends
    from several threads, whose loans interleave as the threads happen to run: an evaluation may
    then still fall short now and then, and the next renew grows the region again. Dropping the
    arena gives the region back once no loan from it is left.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._region: _Region | None = None
        self._returned: list[tuple] = []  # loans given back, not yet settled (see _take_back)
        self._lent = 0  # bytes lent now
        self._over = 0  # of those, bytes lent as memory of their own (they did not fit)
        self._short = 0  # the most of those at once since the last renew
        self.peak_bytes = 0  # the most bytes ever lent at once

    @property
    def region_bytes(self) -> int:
        return 0 if self._region is None else self._region.size

    @property
    def lent_bytes(self) -> int:
        with self._lock:
            self._settle()
            return self._lent

    def renew(self) -> None:
        """A new, larger region when the current one fell short since the last renew."""
        with self._lock:
            self._settle()
            if self._short:
                want = max(int(HEADROOM * self.peak_bytes), self.region_bytes + self._short)
                self._region, self._short = _Region(_aligned(want)), 0

    def empty(self, shape, dtype) -> np.ndarray:
        """An uninitialised C-contiguous array of `shape` and `dtype`, lent from the region."""
        dtype, shape = np.dtype(dtype), _shape(shape)
        size = _aligned(int(np.prod(shape)) * dtype.itemsize)
        with self._lock:
            self._settle()
            region = self._region
            start = None if region is None else region.take(size)
            if start is None:
                self._over += size
                self._short = max(self._short, self._over)
            self._lent += size
            self.peak_bytes = max(self.peak_bytes, self._lent)
        if start is None:  # it does not fit: memory of its own
            region, start, buffer = None, 0, _mapped(size)
        else:
            buffer = region.buffer
        loan = _Loan(buffer, start, shape, dtype)
        weakref.finalize(loan, self._take_back, region, start, size)
        return np.asarray(loan)

    def _take_back(self, region: "_Region | None", start: int, size: int) -> None:
        """A loan's finaliser. It runs in whichever thread drops the last view, at any moment (even
        in the middle of `empty`, when a garbage collection frees one), so it only queues the loan
        (list.append is atomic); the lock holder settles the queue."""
        self._returned.append((region, start, size))

    def _settle(self) -> None:
        """Put the queued loans back (the lock held)."""
        while self._returned:
            region, start, size = self._returned.pop()
            if region is None:
                self._over -= size
            else:
                region.give(start, size)
            self._lent -= size


class _Region:
    """One uint8 buffer and its free intervals [start, end), sorted and never adjacent."""

    def __init__(self, size: int):
        self.buffer = _mapped(size)
        self.size = size
        self.free = [[0, size]]

    def take(self, size: int) -> int | None:
        """The start of `size` bytes carved from the first free interval that holds them, or None.
        (First fit left less unusable room than best fit in the objective's pattern of loans.)"""
        for k, (lo, hi) in enumerate(self.free):
            if hi - lo >= size:
                if hi - lo == size:
                    del self.free[k]
                else:
                    self.free[k][0] = lo + size
                return lo
        return None

    def give(self, start: int, size: int) -> None:
        """Bytes start .. start + size free again, merged with the free neighbours."""
        k = bisect.bisect(self.free, [start, start + size])
        end = start + size
        if k < len(self.free) and self.free[k][0] == end:  # merge with the interval after
            end = self.free.pop(k)[1]
        if k > 0 and self.free[k - 1][1] == start:  # and with the one before
            self.free[k - 1][1] = end
        else:
            self.free.insert(k, [start, end])


class _Loan:
    """What a lent array is a view of (its .base): alive exactly as long as the array or a view is."""

    def __init__(self, buffer: np.ndarray, start: int, shape: tuple, dtype: np.dtype):
        self.buffer = buffer
        self.__array_interface__ = {"data": (buffer.ctypes.data + start, False), "shape": shape, "typestr": dtype.str, "version": 3}


def _mapped(size: int) -> np.ndarray:
    """size bytes of fresh memory mapped for this array alone (never malloc's heap, where a freed
    block may stay held): unmapped once the array is gone."""
    return np.frombuffer(mmap.mmap(-1, size), dtype=np.uint8)


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def _shape(shape) -> tuple:
    return (int(shape),) if np.ndim(shape) == 0 else tuple(int(n) for n in shape)


class _Lender(threading.local):
    arena: Arena | None = None


_lender = _Lender()


@contextlib.contextmanager
def lending(arena: Arena | None, *, renew: bool = True):
    """For the duration, in this thread (and in split_map's workers): `empty` and `zeros` lend big
    host arrays from `arena` (None: from nowhere, plain xp arrays). renew: let the arena grow its
    region first (the start of an evaluation; split_map's workers join one already running)."""
    if arena is not None and renew:
        arena.renew()
    before, _lender.arena = _lender.arena, arena
    try:
        yield
    finally:
        _lender.arena = before


def empty(xp: types.ModuleType, shape, dtype):
    """xp.empty(shape, dtype), lent from the current arena when on the host and big enough."""
    arena = _lender.arena
    if arena is not None and xp is np and int(np.prod(_shape(shape))) * np.dtype(dtype).itemsize >= LEND_MIN_BYTES:
        return arena.empty(shape, dtype)
    return xp.empty(shape, dtype=dtype)


def zeros(xp: types.ModuleType, shape, dtype):
    """xp.zeros(shape, dtype), lent from the current arena as `empty` is."""
    if _lender.arena is None or xp is not np:
        return xp.zeros(shape, dtype=dtype)
    out = empty(xp, shape, dtype)
    out.fill(0)
    return out
