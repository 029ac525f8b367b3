"""scratchnst.app.studio.runs and task's lock: images kept under names the server chose (the same bytes
once), names and ids that could be paths refused, runs newest first and active ones oldest first, the
recorded state; a task waits for a run's lock while another holds it and gives up when told to stop."""

from __future__ import annotations

import fcntl
import os
import threading

import pytest

from scratchnst.app.studio.runs import NotFound, Store
from scratchnst.app.studio.task import holding


def _image(store: Store, pictures, name: str, w: int = 48) -> str:
    tmp = store.temp_path()
    tmp.write_bytes(pictures.save(name, w).read_bytes())
    return store.add_image(tmp, "PNG")


def test_images_and_runs_under_names_the_server_chose(tmp_path, pictures):
    store = Store(tmp_path / "data")
    a, b = _image(store, pictures, "a.png"), _image(store, pictures, "b.png", 40)
    again = store.temp_path()
    again.write_bytes((store.images / a).read_bytes())
    assert store.add_image(again, "PNG") == a and not again.exists()  # the same bytes: kept once
    assert len(a) == 20 and a.endswith(".png") and set(store.image_names()) == {a, b}
    for bad in ("../data/session", "a/b.png", "x\0.png", "..", a.replace(".png", ".exe")):
        with pytest.raises(NotFound):
            store.image(bad)
    first = store.new_run(a, [b], {"size": 32}, {"size": 32})
    second = store.new_run(b, [a, b], {}, {})
    assert [r.id for r in store.all_runs()] == sorted([first.id, second.id], reverse=True)
    assert first.state()["status"] == "queued" and first.inputs()[0].endswith("inputs/content.png")
    assert [os.path.basename(p) for p in second.inputs()[1]] == ["style-1.png", "style-2.png"]
    first.write_state("done", history=[])
    assert [r.id for r in store.active()] == [second.id]
    for bad in ("../runs", first.id + "/..", "20990101-000000-abcdef"):
        with pytest.raises(NotFound):
            store.run(bad)
    store.remove(second)
    assert [r.id for r in store.all_runs()] == [first.id]
    session = store.claim()
    assert store.session() == session and store.claim() != session


class _Owner:
    def __init__(self):
        self.stop = threading.Event()

    def poll(self, _entry=None) -> bool:
        return self.stop.is_set()


def test_a_task_waits_for_the_lock_and_gives_up_when_told(tmp_path, pictures, wait_until):
    store = Store(tmp_path / "data")
    name = _image(store, pictures, "a.png")
    run = store.new_run(name, [name], {}, {})
    holder = os.open(run.lock_path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another process's task (flock locks belong to the open file)
    owner, got = _Owner(), []
    waiter = threading.Thread(target=lambda: got.append(holding(run, owner).__enter__()))
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive() and not got  # still waiting
    owner.stop.set()
    waiter.join(30)
    assert got == [False]
    os.close(holder)  # the holder lets go: the next task gets the lock
    with holding(run, _Owner()) as held:
        assert held
