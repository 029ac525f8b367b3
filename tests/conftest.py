"""Shared fixtures: a seeded `rng`, the real VGG-16 weights for tests marked `weights`, an in-process
Dask cluster, and real Dask scheduler and worker processes on 127.0.0.1 for the batch tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scratchnst.errors import WeightsError
from scratchnst.app.files.weights import resolve_weights


@pytest.fixture
def rng() -> np.random.Generator:
    """A freshly seeded generator, so every test sees the same numbers."""
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def vgg_weights_path() -> Path:
    """Path of the verified real weights, fetched on first use (`weights fetch`'s route).

    A failure to get them fails the tests that need them: CI must prove the fetch works.
    """
    try:
        return resolve_weights()
    except WeightsError as e:
        pytest.fail(f"real VGG-16 weights unavailable: {e}")


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def client():
    """A distributed.Client on an in-process cluster of one one-thread worker (tasks run one after
    another); inproc:// comms, so nothing but the HTTP endpoint (on 127.0.0.1) opens a socket."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0",
                      worker_dashboard_address="127.0.0.1:0") as lc, Client(lc, timeout=30) as c:
        yield c


class DaskProcesses:
    """`dask scheduler` and `dask worker` processes on 127.0.0.1, run in `folder` (their logs there,
    this checkout's package importable, the environment as it is when each starts)."""

    def __init__(self, folder: Path):
        self.folder, self.procs = folder, []
        self.scheduler_file = folder / "scheduler.json"

    def _start(self, *args, log: str) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with open(self.folder / log, "w") as f:  # a log file, not a pipe nobody reads (it could fill and block)
            proc = subprocess.Popen([str(Path(sys.executable).with_name("dask")), *args], cwd=self.folder, env=env,
                                    stdout=f, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def _wait_for(self, proc, log: str, ready, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline, (self.folder / log).read_text()
            time.sleep(0.05)

    def scheduler(self) -> str:
        """Start the scheduler; its address once it listens."""
        proc = self._start("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                           "--scheduler-file", str(self.scheduler_file), log="scheduler.log")
        self._wait_for(proc, "scheduler.log", self.scheduler_file.exists)
        return json.loads(self.scheduler_file.read_text())["address"]

    def worker(self, name: str) -> subprocess.Popen:
        """Start a one-thread worker (no nanny) named `name`, logging to NAME.log; back once it has
        registered with the scheduler."""
        log = f"{name}.log"
        proc = self._start("worker", "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny", "--no-dashboard",
                           "--death-timeout", "60", "--scheduler-file", str(self.scheduler_file), "--name", name, log=log)
        self._wait_for(proc, log, lambda: "Registered to:" in (self.folder / log).read_text())
        return proc

    def run_on_workers(self, code: str) -> None:
        """Run the Python `code` in every worker process started so far, in a namespace of its own (a
        test patches what the tasks will call there); sent by a client of this scheduler."""
        from distributed import Client

        with Client(scheduler_file=str(self.scheduler_file), timeout=30) as c:
            c.run(exec, code, {"__name__": "scratchnst_test_hook"})

    def stop(self) -> None:
        """The workers first, each gone before the next (a worker leaving tells the scheduler), then the scheduler."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def dask_processes(tmp_path):
    """A DaskProcesses in tmp_path; whatever it started and is still running is stopped afterwards."""
    procs = DaskProcesses(tmp_path)
    try:
        yield procs
    finally:
        procs.stop()
