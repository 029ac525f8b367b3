"""The Dask layer shared by `batch` and `video`: a client on an existing cluster or a local one, the
one loop that runs their tasks, and what their tasks share on a worker.

Dask distributed does the scheduling, the retries and the worker bookkeeping; this module only
decides how a local cluster is sized for our engine, prepares its workers, turns connection
failures into one line, checks that the workers see the files, runs a set of tasks to their end
with one failure policy (run_tasks), keeps each worker's loaded network and per-run state
(WORKER_CACHE), and carries Ctrl-C from the client to running tasks (Interrupt).

Dask itself (`distributed`) is a lazy import, made where it is used, so the CLI starts without it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections import OrderedDict
from typing import Callable, NamedTuple

from scratchnst.app.files.atomic import probe_writable
from scratchnst.app.picture.inputs import load_net, net_key
from scratchnst.app.picture.memory import available_bytes
from scratchnst.app.picture.settings import int_option
from scratchnst.core import host
from scratchnst.app.engine import array_module
from scratchnst.core.backend import backend_name
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
    return int_option("workers", workers), 1


def _jobs_that_fit(job_bytes: int | None) -> int:
    room = available_bytes()
    return max(1, room // job_bytes) if job_bytes and room else 2**31


def engine_threads_per_worker(workers: int) -> int:
    """The host threads each local worker's engine splits its work over: the cores, shared out."""
    return max(1, cores() // workers)


def gpu_count(backend: str) -> int:
    """CUDA devices a local cluster should give one worker each: 0 unless `backend` runs on CuPy."""
    if backend == "numpy":
        return 0
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
        host.THREADS = self.threads
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _local_cluster(n: int, threads: int, gpus: int, quiet: bool, death_timeout_s: float | None = None):
    """A SpecCluster of n nannied worker processes on 127.0.0.1; worker i sees GPU i when gpus; each
    ends itself `death_timeout_s` after it lost the scheduler (None: Dask's default)."""
    from distributed import Nanny, Scheduler, SpecCluster
    from distributed.system import MEMORY_LIMIT

    def worker(i: int) -> dict:
        env = {"CUDA_VISIBLE_DEVICES": str(i)} if gpus else {}
        options = {"nthreads": threads, "host": "127.0.0.1", "dashboard": False,
                   "dashboard_address": "127.0.0.1:0", "env": env,
                   "memory_limit": MEMORY_LIMIT // n, "silence_logs": 50 if quiet else 30}
        if death_timeout_s is not None:
            options["death_timeout"] = death_timeout_s
        return {"cls": Nanny, "options": options}

    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "port": 0, "dashboard": False, "dashboard_address": "127.0.0.1:0"}}
    return SpecCluster(workers={i: worker(i) for i in range(n)}, scheduler=scheduler, silence_logs=50 if quiet else 30)


@contextlib.contextmanager
def client(scheduler: str | None = None, *, workers: int | None = None, gpus: int = 0, quiet: bool = True,
           job_bytes: int | None = None, death_timeout_s: float | None = None):
    """A distributed.Client: on the cluster at `scheduler` (an address such as tcp://host:8786), or on
    a local cluster of worker processes sized by local_layout (prepared by EngineSetup), closed on exit.
    death_timeout_s: a local worker that lost its scheduler (its client killed) ends itself after it.

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
    cluster = _local_cluster(n, threads, gpus, quiet, death_timeout_s)
    try:
        with Client(cluster) as c:
            c.register_plugin(EngineSetup(engine_threads_per_worker(n)))
            yield c
    finally:
        cluster.close()


# -- the loop ----------------------------------------------------------------------------------------


class Outcome(NamedTuple):
    """How run_tasks ended: whether Ctrl-C stopped it, and the keys of the tasks it left unfinished."""

    interrupted: bool
    unfinished: list


def run_tasks(client, submit: Callable, on_result: Callable, on_failure: Callable) -> Outcome:
    """Run one set of Dask tasks to their end: submit them, take each as it completes, stop them on Ctrl-C.

    submit(run_id, interrupt_name) -> {future: key} submits the tasks: run_id names this run (task
    keys, WORKER_CACHE.of_run), interrupt_name the Dask Event its tasks poll (Interrupt). As each task
    completes, on_result(key, its value) or, for a task that raised, on_failure(key, message).

    Failure policy: a task that raises (after Dask's retries, `retries=RETRIES` where the caller
    asks for them; a worker that keeps dying raises KilledWorker) is a failure of that task alone,
    reported to on_failure with its one line (failure_line: "TypeName: message"); every other task
    goes on. A task that takes a failed task's future as an argument cannot run: Dask fails it with
    the same error, and on_failure hears of it too (the caller knows which tasks depend on which).

    Ctrl-C (KeyboardInterrupt in the client) sets the Event: running tasks save what they have and
    return, queued ones return without starting. The loop waits up to INTERRUPT_WAIT_S for them (a
    second Ctrl-C stops waiting), reports those that completed, and cancels the rest.
    """
    from distributed import Event, as_completed

    run_id = uuid.uuid4().hex
    interrupt = Event(f"scratchnst-interrupt-{run_id}", client=client)
    futures = submit(run_id, interrupt.name)
    seen = set()
    try:
        for future in as_completed(list(futures)):
            seen.add(future)
            _settle(future, futures[future], on_result, on_failure)
    except KeyboardInterrupt:
        interrupt.set()
        rest = [f for f in futures if f not in seen]
        return Outcome(True, _wait_for_running(rest, futures, on_result, on_failure))
    finally:
        interrupt.clear()
    return Outcome(False, [])


def settle_when_done(future, key, on_result: Callable, on_failure: Callable) -> None:
    """run_tasks' reporting for one task of a long-lived client that does not wait (the studio's
    server): once `future` completes, on_result(key, its value) or on_failure(key, its failure_line),
    with run_tasks' failure policy; called on a thread of Dask's client."""
    future.add_done_callback(lambda f: _settle(f, key, on_result, on_failure))


def failure_line(exc: BaseException) -> str:
    """How a task that raised is reported (run_tasks' failure policy): "TypeName: message"."""
    return f"{type(exc).__name__}: {one_line(exc)}"


def _settle(future, key, on_result: Callable, on_failure: Callable) -> None:
    """Report one completed task (see run_tasks)."""
    try:
        value = future.result()
    except Exception as exc:  # raised in the task (a bug, a KilledWorker), or in a task it needed
        on_failure(key, failure_line(exc))
        return
    on_result(key, value)


def _wait_for_running(rest: list, futures: dict, on_result: Callable, on_failure: Callable) -> list:
    """After Ctrl-C: give the tasks of `rest` INTERRUPT_WAIT_S to return, report those that did,
    cancel the others; the keys of the cancelled ones."""
    from distributed import wait

    try:
        wait(rest, timeout=INTERRUPT_WAIT_S)
    except (KeyboardInterrupt, TimeoutError):
        pass
    unfinished = []
    for f in rest:
        if f.done():
            _settle(f, futures[f], on_result, on_failure)
        else:
            f.cancel()
            unfinished.append(futures[f])
    return unfinished


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
    """What the tasks on one worker process share: loaded networks (by weights and picture.inputs.net_key)
    and, per run (a batch, a multi-pass video), what that run keeps on the worker (of_run)."""

    def __init__(self):
        self.lock = threading.RLock()  # of_run's make() may ask for a net
        self.nets = LRU(2)
        self.runs = LRU(2)  # run id -> {name: what the run keeps}

    def net(self, s):
        """The VGG16 for Settings `s`, loaded on first use."""
        key = (s.weights, *net_key(s))
        with self.lock:
            if key not in self.nets:
                self.nets[key] = load_net(s)
            return self.nets[key]

    def of_run(self, run_id: str, name: str, make: Callable):
        """What run `run_id` keeps on this worker under `name`, made by make() on first use: a batch's
        style Gram targets, a multi-pass video's frame painter, a tiled scale's TileSteps."""
        with self.lock:
            if run_id not in self.runs:
                self.runs[run_id] = {}
            kept = self.runs[run_id]
            if name not in kept:
                kept[name] = make()
            return kept[name]

    def forget(self, run_id: str) -> None:
        """Let go of what run `run_id` keeps on this worker (nothing if it keeps nothing)."""
        with self.lock:
            self.runs.pop(run_id, None)


WORKER_CACHE = WorkerCache()  # one per worker process: Dask runs every task of a worker in it


class Interrupt:
    """The client's Dask Event as a task sees it. poll, a stylize run's on_progress, answers True
    (stop, keeping what was done) once the client was interrupted; it asks the scheduler at most
    every POLL_S."""

    def __init__(self, name: str):
        from distributed import Event

        self.event, self.checked, self.stopped = Event(name), 0.0, False

    def is_set(self) -> bool:
        return self.event.is_set()

    def poll(self, _entry=None) -> bool:
        now = time.monotonic()
        if not self.stopped and now - self.checked >= POLL_S:
            self.checked = now
            self.stopped = self.event.is_set()
        return self.stopped


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
