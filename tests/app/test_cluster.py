"""scratchnst.app.cluster: run_tasks, the one loop of batch and multi-pass video, on conftest's in-process
cluster (one one-thread worker): results and failures as tasks complete (the failure policy), a task
that needs a failed one, Ctrl-C in the client stopping the running tasks through the Dask Event,
cancelling one that does not stop in time; what a worker keeps per run; the local cluster's layout;
the paths a worker cannot see. Every wait is bounded."""

from __future__ import annotations

import threading
import time

import pytest

from scratchnst.app import cluster
from scratchnst.errors import ScratchnstError

DEADLINE_S = 60
RELEASE = threading.Event()  # lets a task of the in-process worker that ignores the interrupt return


def _value(x, *_after):
    return x


def _boom(x):
    raise ValueError(f"bad value {x}")


def _plus_one(x):
    return x + 1


def _until_interrupted(interrupt_name: str, *_after) -> str:
    """A task that stops when the client is interrupted, as a stylize run does through on_progress."""
    interrupt, deadline = cluster.Interrupt(interrupt_name), time.monotonic() + DEADLINE_S
    while not interrupt.poll():
        assert time.monotonic() < deadline, "the interrupt never came"
        time.sleep(0.01)
    return "stopped"


def _queued(interrupt_name: str, *_after) -> str:
    """A task that returns without working when the client was interrupted before it started."""
    return "pending" if cluster.Interrupt(interrupt_name).is_set() else "ran"


def _ignores_interrupts(*_after) -> str:
    RELEASE.wait(DEADLINE_S)
    return "late"


def test_each_task_is_reported_as_it_completes_and_a_failure_fails_alone(client):
    got, failed = {}, {}

    def submit(run_id, interrupt_name):
        bad = client.submit(_boom, 2, key=f"bad-{run_id}", pure=False)
        futures = {bad: "bad", client.submit(_plus_one, bad, key=f"needs-bad-{run_id}", pure=False): "needs bad"}
        for k in range(3):
            futures[client.submit(_value, k, key=f"value-{run_id}-{k}", pure=False)] = f"value {k}"
        return futures

    outcome = cluster.run_tasks(client, submit, got.__setitem__, failed.__setitem__)
    assert outcome == (False, [])
    assert got == {"value 0": 0, "value 1": 1, "value 2": 2}
    # the task that needed the failed one cannot run: Dask fails it with the same error
    assert failed == {"bad": "ValueError: bad value 2", "needs bad": "ValueError: bad value 2"}


def test_ctrl_c_stops_the_running_task_and_the_queued_one_returns_without_work(client):
    got = {}

    def submit(run_id, interrupt_name):
        first = client.submit(_value, "first", key=f"first-{run_id}", pure=False)
        running = client.submit(_until_interrupted, interrupt_name, first, key=f"running-{run_id}", pure=False)
        queued = client.submit(_queued, interrupt_name, running, key=f"queued-{run_id}", pure=False)
        return {first: "first", running: "running", queued: "queued"}

    def on_result(key, value):
        got[key] = value
        if key == "first":
            raise KeyboardInterrupt  # Ctrl-C, landing in the client's loop while "running" runs

    outcome = cluster.run_tasks(client, submit, on_result, lambda key, message: got.setdefault(key, message))
    assert outcome == (True, [])
    assert got == {"first": "first", "running": "stopped", "queued": "pending"}  # "stopped": the task saw the interrupt


def test_a_task_that_does_not_stop_in_time_is_cancelled_and_left_unfinished(client, monkeypatch):
    monkeypatch.setattr(cluster, "INTERRUPT_WAIT_S", 0.5)
    got = {}
    RELEASE.clear()

    def submit(run_id, interrupt_name):
        first = client.submit(_value, "first", key=f"first-{run_id}", pure=False)
        stubborn = client.submit(_ignores_interrupts, first, key=f"stubborn-{run_id}", pure=False)
        return {first: "first", stubborn: "stubborn"}

    def on_result(key, value):
        got[key] = value
        if key == "first":
            raise KeyboardInterrupt

    try:
        outcome = cluster.run_tasks(client, submit, on_result, got.__setitem__)
    finally:
        RELEASE.set()  # the worker's thread is free for the next test
    assert outcome == (True, ["stubborn"]) and got == {"first": "first"}


def test_interrupt_poll_answers_whether_to_stop(client):
    from distributed import Event

    event = Event("scratchnst-test-poll", client=client)
    event.clear()
    interrupt = cluster.Interrupt("scratchnst-test-poll")
    assert interrupt.poll({"iteration": 1}) is False
    event.set()
    interrupt.checked = 0.0  # the next poll asks the scheduler (they are POLL_S apart)
    assert interrupt.poll({"iteration": 2}) is True and interrupt.poll() is True
    event.clear()


def test_a_worker_keeps_what_a_run_made_for_its_two_latest_runs():
    cache, made = cluster.WorkerCache(), []
    make = lambda: made.append(1) or object()  # noqa: E731
    first = cache.of_run("run-a", "painter", make)
    assert cache.of_run("run-a", "painter", make) is first and len(made) == 1
    cache.of_run("run-b", "painter", make)
    cache.of_run("run-c", "painter", make)
    assert cache.of_run("run-a", "painter", make) is not first and len(made) == 4  # run-a was dropped


def test_local_layout():
    assert cluster.local_layout() == (cluster.cores(), 1)
    assert cluster.local_layout(gpus=2) == (2, 1)
    assert cluster.local_layout(3) == (3, 1)
    assert cluster.local_layout(job_bytes=2**60) == (1, 1)  # no more workers than jobs fit in memory
    assert cluster.local_layout(job_bytes=2**20) == (cluster.cores(), 1)
    assert cluster.engine_threads_per_worker(1) == cluster.cores()
    with pytest.raises(ScratchnstError, match="--workers"):
        cluster.local_layout(0)


def test_check_paths_names_what_a_worker_cannot_see(tmp_path):
    assert cluster.check_paths([str(tmp_path)], [str(tmp_path)]) is None
    assert cluster.check_paths([str(tmp_path / "gone.png")], []) == f"cannot read {tmp_path / 'gone.png'}"
    assert cluster.check_paths([], ["/sys"]).startswith("cannot write to /sys")
