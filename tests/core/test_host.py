"""scratchnst.core.host, the machinery beside the maths: its arena (big arrays lent for any shape, taken
back when they are gone, and an objective's evaluations reusing them with the same bits as without),
work split over worker threads, and BLAS held at one thread inside the engine."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import numpy as np
import pytest

from scratchnst.core import host
from scratchnst.core.objective import NSTObjective
from scratchnst.gradcheck import random_vgg

MB = 2**20


def _lend_and_drop(arena, *shapes):
    """Lend arrays of these float32 shapes at once, fill them, let them all go."""
    arrays = [arena.empty(shape, np.float32) for shape in shapes]
    for k, a in enumerate(arrays):
        a.fill(k)
    del arrays
    gc.collect()


def test_a_renewed_arena_lends_every_later_shape_from_its_region():
    arena = host.Arena()
    _lend_and_drop(arena, (MB,), (2, MB // 2, 1))  # no region yet: both are arrays of their own
    assert arena.region_bytes == 0 and arena.peak_bytes == 8 * MB and arena.lent_bytes == 0
    arena.renew()
    assert 8 * MB <= arena.region_bytes <= 9 * MB  # the peak at once, plus HEADROOM
    _lend_and_drop(arena, (MB // 4, 4), (3, MB // 4), (MB // 8,))  # other shapes, 7.5 MB at once
    arena.renew()
    assert arena._short == 0 and 8 * MB <= arena.region_bytes <= 9 * MB  # they fitted: no growth
    assert arena._region.free == [[0, arena.region_bytes]]  # and every interval merged back


def test_a_loan_lives_as_long_as_any_view_of_it():
    arena = host.Arena()
    _lend_and_drop(arena, (MB,))
    arena.renew()
    a = arena.empty((MB,), np.float32)
    a.fill(1.0)
    view = a[10:20]
    del a
    gc.collect()
    b = arena.empty((MB,), np.float32)  # the region has no room left for a second 4 MB loan ...
    assert not np.shares_memory(b, view)  # ... so b is memory of its own, not the view's
    b.fill(2.0)
    assert (view == 1.0).all() and arena.lent_bytes == 8 * MB
    del view, b
    gc.collect()
    assert arena.lent_bytes == 0 and arena._region.free == [[0, arena.region_bytes]]


def test_free_intervals_merge_in_any_order():
    region = host._Region(10 * host.ALIGN)
    starts = [region.take(size * host.ALIGN) for size in (2, 3, 4)]
    assert starts == [0, 2 * host.ALIGN, 5 * host.ALIGN] and region.free == [[9 * host.ALIGN, 10 * host.ALIGN]]
    assert region.take(2 * host.ALIGN) is None  # only one page is left
    for k in (1, 0, 2):
        region.give(starts[k], (2, 3, 4)[k] * host.ALIGN)
    assert region.free == [[0, 10 * host.ALIGN]]


def test_empty_and_zeros_lend_only_big_host_arrays_inside_lending():
    arena = host.Arena()
    small, big = (host.LEND_MIN_BYTES // 8,), (host.LEND_MIN_BYTES // 4,)
    assert host.empty(np, big, np.float32).base is None  # outside lending: plain arrays
    with host.lending(arena):
        assert host.empty(np, small, np.float32).base is None
        z = host.zeros(np, big, np.float32)
        assert isinstance(z.base, host._Loan) and not z.any()
        # split_map's workers lend from the caller's arena too
        lent = host.split_map(np, [0, 1], lambda items: [isinstance(host.empty(np, big, np.float32).base, host._Loan) for _ in items])
    assert [flag for part in lent for flag in part] == [True, True]  # both items, each lent from the arena


def test_evaluations_reuse_the_arena_and_give_the_same_bits_as_plain_arrays(rng, monkeypatch):
    """A small net at 64 px, with LEND_MIN_BYTES lowered so that its block-1 arrays are lent. On one
    thread the loans come in the program's order, the same every evaluation, so the region the first
    evaluation's shortfall sized holds the third one whole. Split over two threads the loans interleave
    as the threads happen to run, and an evaluation may still fall short of a region sized by earlier
    interleavings (it then lends a plain array, and the next renew grows the region): there only the
    bits and the loans' return are certain, whatever the machine's load."""
    monkeypatch.setattr(host, "LEND_MIN_BYTES", 2**14)
    net = random_vgg(rng, dtype="float32")
    content, style = (rng.uniform(-100, 100, (1, 3, 64, 64)).astype(np.float32) for _ in range(2))
    x = rng.uniform(-100, 100, (1, 3, 64, 64)).astype(np.float32)
    for threads in (1, 2):
        monkeypatch.setattr(host, "THREADS", threads)
        obj = NSTObjective(net, content, [style])
        results = [obj.evaluate(x) for _ in range(3)]
        arena = obj._arena
        assert arena.region_bytes > 0 and arena.lent_bytes == 0
        assert arena._short == 0 or threads > 1
        assert results[2].grad.base is None  # the gradient is the caller's own, not a loan

        plain = NSTObjective(net, content, [style])
        plain._arena = None  # the same objective with every array a plain one
        want = plain.evaluate(x)
        for got in results:
            assert got.loss == want.loss and np.array_equal(got.grad, want.grad)
def test_split_map_covers_every_item_once_and_passes_errors_on(monkeypatch):
    from scratchnst.core.host import MIN_SPLIT_ELEMENTS, slices, split_map, split_sum

    monkeypatch.setattr("scratchnst.core.host.THREADS", 3)
    parts = split_map(np, list(range(10)), lambda subset: subset)
    assert len(parts) == 3 and sorted(i for part in parts for i in part) == list(range(10))
    assert split_map(np, [7], lambda subset: subset) == [[7]]  # fewer items than workers
    assert slices(np, 10, MIN_SPLIT_ELEMENTS) == [slice(0, 3), slice(3, 6), slice(6, 10)]
    assert slices(np, 10, MIN_SPLIT_ELEMENTS // 4) == [slice(0, 5), slice(5, 10)]  # ≥ the minimum each
    assert slices(np, 10) == [slice(0, 10)]  # too little work to hand over
    monkeypatch.setattr("scratchnst.core.host.SUM_CHUNK_ELEMENTS", 3)
    assert split_sum(np, 10, 1, lambda s: [s.start]) == [0, 3, 6]  # 3 chunks, added in chunk order

    def fails(subset):
        if 4 in subset:
            raise ValueError("band 4")
        return subset

    with pytest.raises(ValueError, match="band 4"):
        split_map(np, list(range(10)), fails)
    # The caller's floating-point error handling holds in the workers too.
    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        split_map(np, [0, 1], lambda subset: np.float32(1e38) * np.float32(10))


def test_split_map_by_worker_tells_each_call_its_worker(monkeypatch):
    """Worker k of split_count gets items[k::count]: the index a caller keys per-worker buffers by."""
    from scratchnst.core.host import split_count, split_map_by_worker

    monkeypatch.setattr("scratchnst.core.host.THREADS", 3)
    assert split_count(np, 10) == 3 and split_count(np, 2) == 2 and split_count(np, 0) == 1
    parts = split_map_by_worker(np, list(range(10)), lambda worker, subset: (worker, subset))
    assert parts == [(0, [0, 3, 6, 9]), (1, [1, 4, 7]), (2, [2, 5, 8])]
    monkeypatch.setattr("scratchnst.core.host.THREADS", 1)
    assert split_map_by_worker(np, [4, 5], lambda worker, subset: (worker, subset)) == [(0, [4, 5])]


def test_engine_threads_hold_blas_at_one_thread_and_restore_it():
    """host.engine_threads (stylize, the CLI, bench): BLAS single-threaded inside, its threads given to
    split work, and the caller's BLAS thread count back afterwards."""
    code = (
        "from threadpoolctl import threadpool_info\n"
        "from scratchnst.core import host\n"
        "blas = lambda: max(p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas')\n"
        "before = blas()\n"
        "with host.engine_threads():\n"
        "    inside, workers = blas(), host.workers()\n"
        "print(before, inside, workers, blas())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr
    before, inside, workers, after = map(int, proc.stdout.split())
    assert (before, inside, workers, after) == (2, 1, 2, 2)
