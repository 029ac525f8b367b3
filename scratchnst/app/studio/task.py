"""What the studio runs on a Dask worker: one run (a stylize run of a run folder, resumed from its
checkpoint where it has one) and the study panel of a run's latest picture.

A run task holds the run's lock (runs.Run.lock_path, flock) while it writes the folder, and stops,
keeping what it has as Ctrl-C does, when its Owner says so: the Stop button (the run's Dask Event),
or another server owning the data folder now (DATA/session changed: this task's server was killed
and a new one started, which runs the run again). The new server's task waits for the lock, so
the orphan's last checkpoint is written before it is resumed: never two writers in one folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import time
from pathlib import Path

from scratchnst.app import cluster, study
from scratchnst.app.files import images as im
from scratchnst.app.files import report
from scratchnst.app.files.atomic import atomic_write_bytes
from scratchnst.app.picture.coarse_to_fine import make_objective
from scratchnst.app.picture.inputs import open_styles
from scratchnst.app.picture.settings import Settings
from scratchnst.app.picture.stylize import NonFiniteError, resume, stylize_settings
from scratchnst.app.picture.targets import StyleTargets
from scratchnst.app.studio.runs import Run, read_json, write_json
from scratchnst.core.preprocess import preprocess
from scratchnst.errors import ScratchnstError, one_line

POLL_S = cluster.POLL_S  # how often a task asks whether it should stop (and a waiting one, for the lock)
PNG_LEVEL = 1  # the previews' zlib level: the fastest (a preview lives a second or two)


class Owner:
    """Whether a run task should stop: poll (its on_progress) answers True once the run's stop Event
    is set (cluster.Interrupt) or once `session` no longer owns the data folder (`lost`)."""

    def __init__(self, data: str, session: str, stop_name: str):
        self.session_path, self.session = Path(data) / "session", session
        self.interrupt = cluster.Interrupt(stop_name)
        self.checked, self.lost = 0.0, False

    def is_lost(self) -> bool:
        """Whether another server owns the data folder now (read at most every POLL_S)."""
        now = time.monotonic()
        if not self.lost and now - self.checked >= POLL_S:
            self.checked = now
            try:
                self.lost = self.session_path.read_text() != self.session
            except OSError:
                self.lost = True
        return self.lost

    def stop_asked(self) -> bool:
        try:
            return self.interrupt.poll()
        except Exception:  # the scheduler cannot be asked: the server that owned this run is gone
            self.lost = True
            return True

    def poll(self, _entry=None) -> bool:
        return self.is_lost() or self.stop_asked()


@contextlib.contextmanager
def holding(run: Run, owner: Owner):
    """Hold the run's lock for the block, yielding True; while another process holds it (an orphan
    of a killed server, saving), wait; yield False if the owner says stop first."""
    fd = os.open(run.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if owner.poll():
                    yield False
                    return
                time.sleep(POLL_S)
        yield True
    finally:
        os.close(fd)  # releases the lock (a killed process's goes with it)


class Previews:
    """The run's updates while it forms: preview.png, then state.json (so a reader that sees an
    iteration in the state finds at least that picture), at most every `every` seconds."""

    def __init__(self, run: Run, owner: Owner, settings: Settings, every: float):
        self.run, self.owner, self.every, self.last = run, owner, every, float("-inf")
        self.total = sum(settings.scale_iterations())

    def fields(self, history: list) -> dict:
        return {"progress": history[-1] if history else None, "history": history, "total": self.total}

    def update(self, history: list, picture) -> None:
        now = time.monotonic()
        if now - self.last < self.every or self.owner.is_lost():
            return
        self.last = now
        png = io.BytesIO()
        picture().save(png, format="PNG", compress_level=PNG_LEVEL)
        atomic_write_bytes(self.run.preview, png.getvalue(), durable=False)  # remade with every update
        self.run.write_state("running", **self.fields(history))


def run_task(folder: str, data: str, session: str, stop_name: str, preview_every: float) -> str:
    """The task of one run: its final status ("done", "stopped", "failed"), or "lost" when another
    server took the run over (that server's task finishes it)."""
    run, owner = Run(folder), Owner(data, session, stop_name)
    with holding(run, owner) as held:
        if not held:
            return "lost"
        run.log(f"start {session} {os.getpid()}")
        status = "failed"  # what an exception leaves (the server records its line)
        try:
            status = _started(run, owner, preview_every)
        finally:
            run.log(f"end {session} {status}")
        return status


def _started(run: Run, owner: Owner, preview_every: float) -> str:
    """run_task once it holds the lock."""
    if owner.is_lost():
        return "lost"
    if owner.stop_asked():
        recorded = run.state()
        run.write_state("stopped", **{k: recorded.get(k) for k in ("progress", "history", "total")})
        return "stopped"
    return _stylize(run, owner, preview_every)


def _stylize(run: Run, owner: Owner, preview_every: float) -> str:
    r = run.request()
    settings = Settings.from_args(r["args"]).validated(len(r["styles"]))
    previews = Previews(run, owner, settings, preview_every)
    manifest = read_json(run.manifest) or {}
    if manifest.get("status") == "done":  # finished by an orphan after its server was killed
        run.write_state("done", **previews.fields(manifest.get("history") or []))
        return "done"
    run.write_state("running", **previews.fields(manifest.get("history") or []))
    share = {"net": cluster.WORKER_CACHE.net(settings), "on_progress": owner.poll, "on_picture": previews.update}
    try:
        if manifest.get("status") in ("interrupted", "running") and report.checkpoint_path(run.out).is_file():
            result = resume(run.manifest, quiet=True, **share)
        else:
            content, styles = run.inputs()
            result = stylize_settings(content, styles, settings, out=run.out, **share)
    except NonFiniteError as exc:
        run.write_state("failed", error=one_line(exc), **previews.fields(exc.result.history))
        return "failed"
    except ScratchnstError as exc:
        run.write_state("failed", error=one_line(exc), **previews.fields([]))
        return "failed"
    if owner.is_lost():
        return "lost"
    status = "done" if result.status == "done" else "stopped"
    run.write_state(status, **previews.fields(result.history))
    return status


# -- the study panel ---------------------------------------------------------------------------------


def picture_tag(path: Path) -> str:
    """A tag that changes whenever the picture at `path` does (the image's ETag)."""
    st = path.stat()
    return f"{st.st_mtime_ns:x}-{st.st_size:x}"


def study_task(folder: str) -> dict:
    """The study panel of the run's latest picture (study.term_gradients' pictures, study.loss_breakdown's
    rows), written to its study/ folder; the study.json it wrote."""
    run = Run(folder)
    path = run.picture()
    if path is None:
        raise ScratchnstError("the run has no picture yet")
    tag = picture_tag(path)
    r = run.request()
    s = Settings.from_args(r["args"]).validated(len(r["styles"]))
    net = cluster.WORKER_CACHE.net(s)
    picture = im.load_image(path)
    history = run.state().get("history") or []
    long_side = history[-1]["size"] if history else max(picture.size)
    content_path, style_paths = run.inputs()
    fitted = im.fit_long_side(im.load_image(content_path), long_side)
    if fitted.size != picture.size:  # a picture of another scale than the history says: its own size
        fitted = im.resize_to(fitted, *picture.size)
    content = preprocess(im.luma_rgb(fitted) if s.color == "luminance" else fitted, dtype=s.dtype, xp=net.xp)
    obj = make_objective(net, s, content, StyleTargets(net, s, open_styles(style_paths)).grams(long_side, fitted))
    terms, caches = obj.terms(preprocess(picture, dtype=s.dtype, xp=net.xp))
    pictures = []
    for term, grad in study.gradients_of(obj, terms, caches).items():
        name = term.replace(" ", "_") + ".png"
        im.save_image(study.gradient_picture(grad), run.study_folder / name)
        pictures.append({"term": term, "image": name})
    found = {"picture": tag, "size": list(picture.size), "iteration": history[-1]["iteration"] if history else 0,
             "terms": study.loss_breakdown(terms), "gradients": pictures}
    write_json(run.study_folder / "study.json", found)
    return found
