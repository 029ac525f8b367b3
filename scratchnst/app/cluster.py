"""The Dask layer shared by `batch` and `video`: a client on an existing cluster or a local one, and
what their tasks share on a worker.

Dask distributed does the scheduling, the retries and the worker bookkeeping; this module only
decides how a local cluster is sized for our engine, prepares its workers, turns connection
failures into one line, checks that the workers see the files, keeps each worker's loaded network
and style targets (WORKER_CACHE), and carries Ctrl-C from the client to running tasks (Interrupt).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import OrderedDict

from scratchnst.app.files.atomic import probe_writable
from scratchnst.errors import ScratchnstError, one_line

try:
    from distributed import WorkerPlugin
except ImportError:  # client() says how to install Dask
    WorkerPlugin = object

CONNECT_TIMEOUT_S = 10
WORKERS_TIMEOUT_S = 30  # how long a client waits for the first worker to join
POLL_S = 0.25  # how often a running task asks whether the client was interrupted
INTERRUPT_WAIT_S = 120  # after Ctrl-C: how long the client waits for running tasks to save
RETRIES = 1  # a task that raised (not a user error: batch makes those results) runs once more elsewhere


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def local_layout(workers: int | None = None, *, gpus: int = 0, job_bytes: int | None = None) -> tuple[int, int]:
    """(worker processes, threads each) for a local cluster on this machine.

    One task per worker at a time (one Dask thread): each job is a whole stylize run whose engine
    splits its work over the cores its worker owns (engine_threads_per_worker). On the CPU, one
    worker per core: jobs are independent, so separate processes scale without the engine's
    per-op hand-offs between threads (docs/benchmarks.md, "Batch on Dask"), but no more workers
    than the available memory holds jobs of `job_bytes` (memory.estimate_peak_bytes) each. On
    CuPy: one worker per GPU.
    """
    if workers is None:
        workers = gpus if gpus else min(cores(), _jobs_that_fit(job_bytes))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ScratchnstError(f"--workers must be a whole number > 0 (got {workers!r})")
    return workers, 1


def _jobs_that_fit(job_bytes: int | None) -> int:
    from scratchnst.app.picture.memory import available_bytes

    room = available_bytes()
    return max(1, room // job_bytes) if job_bytes and room else 2**31


def engine_threads_per_worker(workers: int) -> int:
    """The host threads each local worker's engine splits its work over: the cores, shared out."""
    return max(1, cores() // workers)


def gpu_count(backend: str) -> int:
    """CUDA devices a local cluster should give one worker each: 0 unless `backend` runs on CuPy."""
    if backend == "numpy":
        return 0
    from scratchnst.app.engine import array_module
    from scratchnst.core.backend import backend_name

    xp = array_module(backend)
    return xp.cuda.runtime.getDeviceCount() if backend_name(xp) == "cupy" else 0


class EngineSetup(WorkerPlugin):
    """A Dask WorkerPlugin for the workers of our own local cluster (also those a nanny restarts).

    - the engine's host threads (scratchnst.core.host.THREADS) set to the worker's share of the
      cores; BLAS stays at the one thread Dask's nanny gives it (OMP_NUM_THREADS=1), which is
      what the engine holds it at during a run anyway;
    - SIGINT ignored: Ctrl-C in a terminal reaches the whole process group, and the client, not
      each worker, decides what an interrupt does (running jobs save a checkpoint).
    """

    name = "scratchnst-engine-setup"

    def __init__(self, threads: int):
        self.threads = threads

    def setup(self, worker=None) -> None:
        from scratchnst.core import host

        host.THREADS = self.threads
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    def teardown(self, worker=None) -> None:
        pass


def _local_cluster(n: int, threads: int, gpus: int, quiet: bool):
    """A SpecCluster of n nannied worker processes on 127.0.0.1; worker i sees GPU i when gpus."""
    from distributed import Nanny, Scheduler, SpecCluster
    from distributed.system import MEMORY_LIMIT

    def worker(i: int) -> dict:
        env = {"CUDA_VISIBLE_DEVICES": str(i)} if gpus else {}
        options = {"nthreads": threads, "host": "127.0.0.1", "dashboard": False,
                   "dashboard_address": "127.0.0.1:0", "env": env,
                   "memory_limit": MEMORY_LIMIT // n, "silence_logs": 50 if quiet else 30}
        return {"cls": Nanny, "options": options}

    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "port": 0, "dashboard": False, "dashboard_address": "127.0.0.1:0"}}
    return SpecCluster(workers={i: worker(i) for i in range(n)}, scheduler=scheduler, silence_logs=50 if quiet else 30)


@contextlib.contextmanager
def client(scheduler: str | None = None, *, workers: int | None = None, gpus: int = 0, quiet: bool = True,
           job_bytes: int | None = None):
    """A distributed.Client: on the cluster at `scheduler` (an address such as tcp://host:8786), or on
    a local cluster of worker processes sized by local_layout (prepared by EngineSetup), closed on exit.

    A scheduler that cannot be reached raises ScratchnstError naming the address.
    """
    try:
        from distributed import Client
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
    n, threads = local_layout(workers, gpus=gpus, job_bytes=job_bytes)
    cluster = _local_cluster(n, threads, gpus, quiet)
    try:
        with Client(cluster) as c:
            c.register_plugin(EngineSetup(engine_threads_per_worker(n)))
            yield c
    finally:
        cluster.close()


# -- on the workers ----------------------------------------------------------------------------------


class LRU(OrderedDict):
    """A dict that keeps its `size` most recently used entries."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def __getitem__(self, key):
        self.move_to_end(key)
        return super().__getitem__(key)

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class WorkerCache:
    """What the tasks on one worker process share: loaded networks (by weights, backend, dtype,
    pooling, conv) and, per run (a batch, a multi-pass video), the style Gram targets Stylizer keys
    by (style, size, layers, ...)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.nets = LRU(2)
        self.grams = LRU(2)  # run id -> LRU of Stylizer's style_cache entries

    def net(self, s):
        """The VGG16 for Settings `s`, loaded on first use."""
        from scratchnst.app.files.weights import load_vgg16
        from scratchnst.app.engine import array_module
        from scratchnst.core.backend import backend_name

        key = (s.weights, backend_name(array_module(s.backend)), s.dtype, s.pooling, s.conv)
        with self.lock:
            if key not in self.nets:
                self.nets[key] = load_vgg16(s.weights, backend=s.backend, dtype=s.dtype, pooling=s.pooling, conv=s.conv)
            return self.nets[key]

    def style_cache(self, run_id: str) -> dict:
        with self.lock:
            if run_id not in self.grams:
                self.grams[run_id] = LRU(64)
            return self.grams[run_id]


WORKER_CACHE = WorkerCache()  # one per worker process: Dask runs every task of a worker in it


class Interrupt:
    """The client's Dask Event, polled at most every POLL_S from a task's on_progress: once set,
    the task raises KeyboardInterrupt inside stylize, which saves what it has."""

    def __init__(self, name: str):
        from distributed import Event

        self.event, self.checked = Event(name), 0.0

    def is_set(self) -> bool:
        return self.event.is_set()

    def poll(self, _entry=None) -> None:
        now = time.monotonic()
        if now - self.checked >= POLL_S:
            self.checked = now
            if self.event.is_set():
                raise KeyboardInterrupt


def worker_address() -> str | None:
    """The address of the worker running this task; None outside a worker."""
    from distributed import get_worker

    try:
        return get_worker().address
    except ValueError:
        return None


def check_paths(readable: list[str], writable: list[str]) -> str | None:
    """On a worker: None, or a line naming the first input it cannot read or output folder it
    cannot write (atomic.probe_writable)."""
    for p in readable:
        if not os.access(p, os.R_OK):
            return f"cannot read {p}"
    for d in writable:
        try:
            probe_writable(d)
        except OSError as exc:
            return f"cannot write to {d} ({one_line(exc)})"
    return None


def check_workers(client, readable: list[str], folders: list[str], what: str) -> list[str]:
    """The workers' addresses, once one has joined and each has shown it can read `readable` and
    write into `folders` (created here); ScratchnstError naming the worker and the path otherwise
    (`what`: the command, for the message)."""
    from distributed import TimeoutError as DaskTimeout

    try:
        client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
    except (DaskTimeout, TimeoutError):
        raise ScratchnstError(f"no Dask workers joined the scheduler {client.scheduler.address} within {WORKERS_TIMEOUT_S} s") from None
    for d in folders:
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as exc:
            raise ScratchnstError(f"{d}: cannot create the output folder ({one_line(exc)})") from None
    problems = client.run(check_paths, readable, folders)
    for address, problem in sorted(problems.items()):
        if problem:
            raise ScratchnstError(f"worker {address} {problem}: {what} needs every input and output on storage all workers share")
    return sorted(problems)
