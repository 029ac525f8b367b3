"""The Dask layer shared by `batch` and `video`: a client on an existing cluster or a local one.

Dask distributed does the scheduling, the retries and the worker bookkeeping; this module only
decides how a local cluster is sized for our engine and turns connection failures into one line.
"""

from __future__ import annotations

import contextlib
import os

from scratchnst.errors import ScratchnstError, one_line

CONNECT_TIMEOUT_S = 10


def local_layout(workers: int | None = None, *, gpus: int = 0) -> tuple[int, int]:
    """(worker processes, threads each) for a local cluster on this machine.

    One task per worker at a time (one thread), and the engine's own split over the cores that
    worker owns: each job is a whole stylize run, and our threads already use the cores better
    than several concurrent jobs in one process would (they would fight over the same BLAS and
    caches). On CuPy: one worker per GPU.
    """
    if workers is None:
        workers = gpus if gpus else 1
    if workers < 1:
        raise ScratchnstError(f"--workers must be a whole number > 0 (got {workers})")
    return workers, 1


def engine_threads_per_worker(workers: int) -> int:
    """The host threads each local worker's engine splits its work over: the cores, shared out."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // workers)


@contextlib.contextmanager
def client(scheduler: str | None = None, *, workers: int | None = None, gpus: int = 0, quiet: bool = True):
    """A distributed.Client: on the cluster at `scheduler` (an address such as tcp://host:8786), or on
    a local cluster of worker processes sized by local_layout, closed on exit.

    A scheduler that cannot be reached raises ScratchnstError naming the address.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ScratchnstError("batch and video need Dask: pip install 'dask[distributed]'") from None
    if scheduler is not None:
        try:
            c = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
        except Exception as exc:  # OSError, TimeoutError, ValueError for a malformed address...
            raise ScratchnstError(f"cannot connect to the Dask scheduler at {scheduler} ({one_line(exc)})") from None
        try:
            yield c
        finally:
            c.close()
        return
    n, threads = local_layout(workers, gpus=gpus)
    env = {name: str(engine_threads_per_worker(n)) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    cluster = LocalCluster(
        n_workers=n, threads_per_worker=threads, processes=True, host="127.0.0.1",
        dashboard_address=None, silence_logs=50 if quiet else 30, env=env,
    )
    try:
        with Client(cluster) as c:
            yield c
    finally:
        cluster.close()
