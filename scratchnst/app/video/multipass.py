"""`scratchnst video --passes P`: Ruder, Dosovitskiy & Brox's multi-pass mode, every frame of a pass an
independent Dask task, so one video keeps many workers busy.

Pass 1 stylizes every frame on its own (the stylize schedule with --first-iterations, from --init).
Each later pass runs --iterations more at full size on every frame. Frame k starts from its own
result of the pass before, blended with its neighbours' (n = k − 1 and k + 1) results of the pass
before warped to frame k, where the motion is reliable (c_n, flow.consistency_mask):

    x₀ = (x_k + δ Σ_n c_n ⊙ ω(x_n)) / (1 + δ Σ_n c_n)          δ = --blend

and the temporal term keeps it close to the ω(x_n) under the c_n. Ruder et al. sweep the clip in
alternating directions with one neighbour, this pass's: frame k − 1 is finished before frame k
starts (Gauss–Seidel). Taking the pass before's results (Jacobi) is what makes the frames of a pass
independent tasks; with one neighbour per pass, alternating, it left more flicker than with both
at once (docs/benchmarks.md, "Multi-pass"), so both it is. Measured there too: agreement spreads
slowly this way, and frame by frame (framewise.py) flickers far less; this mode is for when a
cluster's workers matter more.

Dask runs the whole graph at once: frame (p, k) after (p − 1, k) and (p − 1, n), so workers start
on pass p + 1 while pass p finishes elsewhere; the flows are tasks too, each computed once and kept
on the workers. A task reads its inputs from, and writes its frame to, OUT.work/pass_p/ (storage
every worker shares); the client records each finished frame in the work folder's state, so
--resume skips it. With --workers 0 the same tasks run here one after another, with the same bytes.

A frame task that raises fails that frame alone (cluster.run_tasks' failure policy; the same with
--workers 0): its error goes into state.json and the manifest, the frames that start from it stay
unfinished, every other frame goes on, and the run ends "failed" with its finished frames kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scratchnst.app import cluster
from scratchnst.app.picture.inputs import open_styles, style_list
from scratchnst.app.picture.memory import estimate_peak_bytes
from scratchnst.app.picture.settings import Settings
from scratchnst.app.video import flow
from scratchnst.app.video.frame import Painter, Shared, frame_settings, held_to, read_frame, temporal_terms
from scratchnst.app.video.work import frame_png
from scratchnst.core.backend import backend_name


def neighbours(pass_: int, k: int, frames: int) -> tuple[int, ...]:
    """The frames whose warped results join frame k's start in pass `pass_`: none in pass 1, then
    the previous and the next frame (those the clip has)."""
    if pass_ == 1:
        return ()
    return tuple(n for n in (k - 1, k + 1) if 0 <= n < frames)


def blend(own: np.ndarray, warped, masks, weight: float) -> np.ndarray:
    """A frame's start: (own + δ Σ c_n ⊙ ω(x_n)) / (1 + δ Σ c_n), rounded to uint8.

    own: (H, W, 3) uint8; warped: its neighbours' results warped to it, each (H, W, 3) uint8; masks:
    their (H, W) weights c_n in [0, 1]; weight: δ ≥ 0.
    """
    num, den = own.astype(np.float64), np.ones(own.shape[:2] + (1,))
    for w, c in zip(warped, masks):
        wc = weight * c.astype(np.float64)[..., None]
        num, den = num + wc * w, den + wc
    return np.clip(np.rint(num / den), 0, 255).astype(np.uint8)


def temporal_target(warped, masks):
    """One temporal term for the neighbours' (the mean of theirs, up to a constant):
    (1/N) Σ_n c_n (x − ω_n)² = c̄ (x − m)² + const, with c̄ = (1/N) Σ_n c_n and m as frame.held_to's.

    warped: the N neighbours' results warped to the frame, (H, W, 3) uint8; masks: their (H, W)
    weights c_n. Returns (m as (H, W, 3) uint8, c̄ (H, W) float32): temporal_loss's target and mask.
    """
    m, total = held_to(warped, masks)
    return m, (total / len(masks)).astype(np.float32)


@dataclass(frozen=True)
class FrameJob:
    """Frame `index` of pass `pass_`: what a worker needs besides the frame itself and its flow."""

    pass_: int
    index: int
    frame: int  # its number in the input (--frames A:B starts at A)
    neighbours: tuple
    work: str  # OUT.work/
    styles: list | None
    settings: Settings  # the video's
    first_iterations: int
    temporal_weight: float
    blend: float


def run_frame(job: FrameJob, frame: np.ndarray, pairs, painter: Painter, on_progress=None) -> dict | None:
    """Stylize frame job.index ((H, W, 3) uint8) for pass job.pass_ with `painter` and write it to the
    work folder. pairs: flow.pair_flow(frame n, frame k) for each neighbour n. Returns the frame's
    record, or None when stopped before the end (the frame is not finished).
    """
    work, s, p, k = Path(job.work), job.settings, job.pass_, job.index
    start, terms = None, None
    if p > 1:
        start = read_frame(frame_png(work, k, p - 1))
        if job.neighbours:
            warped = [flow.warp_frame(read_frame(frame_png(work, n, p - 1)), pair.backward) for n, pair in zip(job.neighbours, pairs)]
            masks = [pair.mask for pair in pairs]
            start = blend(start, warped, masks, job.blend)
            terms = temporal_terms(s, job.temporal_weight, *temporal_target(warped, masks))
    settings = frame_settings(s, job.first_iterations, first=p == 1, warm=p > 1)
    painted = painter.paint(frame, frame_png(work, k, p), settings, start=start, terms=terms, on_progress=on_progress)
    if painted is None:
        return None
    net = painter.net
    return {
        "pass": p, "index": k, "frame": job.frame, "neighbours": list(job.neighbours), **painted[0],
        "temporal_error": None,  # set once frame k − 1 of this pass is done too (score)
        "reliable": float(np.mean([pair.mask.mean() for pair in pairs])) if pairs else None,
        "flow_s": round(sum(pair.seconds for pair in pairs), 3) if pairs else None,
        "backend": backend_name(net.xp), "weights_sha256": net.weights_sha256,
    }


def score(work: str, pass_: int, k: int, pair) -> float:
    """The temporal error of frame k ≥ 1 of a pass against frame k − 1 of it warped to frame k
    (pair: flow.pair_flow(frame k − 1, frame k)): the flicker measure of frame-by-frame mode."""
    previous = flow.warp_frame(read_frame(frame_png(Path(work), k - 1, pass_)), pair.backward)
    return flow.temporal_error(read_frame(frame_png(Path(work), k, pass_)), previous, pair.mask)


# -- the tasks on Dask workers ---------------------------------------------------------------------


def _frame_task(job: FrameJob, run_id: str, interrupt_name: str, frame, pairs, *after) -> dict | None:
    """run_frame on a worker, with the painter this run keeps there (its net, style images and
    targets, made by the first of its frames on the worker); None once interrupted. `after`: the
    frames of the pass before this one starts from (only there to order the tasks)."""
    interrupt = cluster.Interrupt(interrupt_name)
    if interrupt.is_set() or any(a is None for a in after):
        return None
    s = job.settings
    make = lambda: Painter(open_styles(style_list(job.styles)), s, frame.shape[1::-1], Shared(net=cluster.WORKER_CACHE.net(s)))  # noqa: E731
    record = run_frame(job, frame, pairs, cluster.WORKER_CACHE.of_run(run_id, "painter", make), interrupt.poll)
    return None if record is None else {**record, "worker": cluster.worker_address()}


def _score_task(work: str, pass_: int, k: int, pair, *frames) -> float | None:
    return None if any(f is None for f in frames) else score(work, pass_, k, pair)


# -- the run, from the client ----------------------------------------------------------------------


class Passes:
    """The passes of one video (a run.VideoRun in multi-pass mode), their records and failures.

    Failure policy (cluster.run_tasks'): a frame (or temporal error) task that raises is recorded
    with its one-line error, in state.json and the manifest; the frames that start from it cannot
    run and stay unfinished; every other frame goes on. The run then ends "failed", its finished
    frames kept for --resume, which runs the rest again.
    """

    def __init__(self, video, records: list[dict]):
        self.v = video
        self.n = len(video.clip.frames)
        self.records = {(r["pass"], r["index"]): r for r in records}  # (pass, index) -> the frame's record
        self.early = {}  # (pass, index) -> a temporal error that came before its frame's record
        self.failed = {}  # ("frame" | "score", pass, index) -> the one-line error of a task that raised

    def job(self, p: int, k: int) -> FrameJob:
        v, o = self.v, self.v.options
        return FrameJob(p, k, v.clip.first + k, neighbours(p, k, self.n), str(v.work.path), v.styles, v.settings,
                        o.first_iterations, o.temporal_weight, o.blend)

    def todo(self):
        """(pass, frame) of every frame not yet finished, pass by pass."""
        return [(p, k) for p in range(1, self.v.options.passes + 1) for k in range(self.n) if (p, k) not in self.records]

    def unscored(self):
        """(pass, frame) of every k ≥ 1 whose temporal error is still to be measured."""
        return [(p, k) for p in range(1, self.v.options.passes + 1) for k in range(1, self.n)
                if self.records.get((p, k), {}).get("temporal_error") is None]

    def needs(self, kind: str, p: int, k: int) -> list[tuple[int, int]]:
        """The frames a task starts from: a frame, its own and its neighbours' of the pass before; a
        temporal error, the two frames it compares."""
        if kind == "score":
            return [(p, k - 1), (p, k)]
        return [] if p == 1 else [(p - 1, n) for n in (k, *neighbours(p, k, self.n))]

    def add(self, record: dict) -> None:
        key = record["pass"], record["index"]
        self.records[key] = {**record, "temporal_error": self.early.pop(key, record["temporal_error"])}
        self.save()
        self.v.progress(record)

    def scored(self, p: int, k: int, error: float) -> None:
        if (p, k) not in self.records:
            self.early[p, k] = error
            return
        self.records[p, k]["temporal_error"] = error
        self.save()

    def fail(self, key: tuple, message: str) -> None:
        self.failed[key] = message
        self.save()

    def failures(self) -> list[dict]:
        """The tasks that raised themselves, not for want of a frame that failed before them."""
        own = [key for key in sorted(self.failed) if all(n in self.records for n in self.needs(*key))]
        return [{"pass": p, "index": k, "frame": self.v.clip.first + k, "error": (self.failed[kind, p, k] if kind == "frame" else
                 f"temporal error: {self.failed[kind, p, k]}")} for kind, p, k in own]

    def save(self) -> None:
        self.v.work.save(sorted(self.records.values(), key=lambda r: (r["pass"], r["index"])), self.failures())

    def run(self) -> str:
        """Every unfinished frame and score; "done", "interrupted" or "failed" (see the class)."""
        try:
            stopped = self._run_here() if self.v.options.workers == 0 else self._run_on_dask()
        except KeyboardInterrupt:
            stopped = True
        return "interrupted" if stopped else "failed" if self.failures() else "done"

    def _run_here(self) -> bool:
        """The tasks in this process, pass by pass, each flow computed once when first needed;
        whether on_progress stopped them."""
        frames, flows = self.v.clip.frames, {}

        def pair(n, k):
            if (n, k) not in flows:
                flows[n, k] = flow.pair_flow(frames[n], frames[k])
            return flows[n, k]

        for p in range(1, self.v.options.passes + 1):
            for _, k in [t for t in self.todo() if t[0] == p and self._can_run("frame", *t)]:
                job = self.job(p, k)
                try:
                    record = run_frame(job, frames[k], [pair(n, k) for n in job.neighbours], self.v.painter, self.v.on_progress)
                except Exception as exc:  # the failure policy: this frame's, the others go on
                    self.fail(("frame", p, k), cluster.failure_line(exc))
                    continue
                if record is None:
                    return True
                self.add(record)
            for _, k in [t for t in self.unscored() if t[0] == p and self._can_run("score", *t)]:
                try:
                    self.scored(p, k, score(str(self.v.work.path), p, k, pair(k - 1, k)))
                except Exception as exc:
                    self.fail(("score", p, k), cluster.failure_line(exc))
        return False

    def _can_run(self, kind: str, p: int, k: int) -> bool:
        return all(n in self.records for n in self.needs(kind, p, k))

    def _run_on_dask(self) -> bool:
        """The whole graph submitted at once (cluster.run_tasks); each result recorded as it comes;
        whether Ctrl-C stopped it."""
        v, o = self.v, self.v.options
        gpus = 0 if o.scheduler else cluster.gpu_count(v.settings.backend)
        with cluster.client(o.scheduler, workers=o.workers, gpus=gpus, job_bytes=self._frame_bytes()) as client:
            readable = [str(Path(s).resolve()) for s in v.styles or []] + ([v.settings.weights] if v.settings.weights else [])
            cluster.check_workers(client, readable, [str(v.work.path)], "video --passes")
            return cluster.run_tasks(client, lambda run_id, interrupt: self._submit(client, run_id, interrupt),
                                     self._collect, self.fail).interrupted

    def _submit(self, client, run_id: str, interrupt_name: str) -> dict:
        """Submit every unfinished frame and score; {future: ("frame" | "score", pass, frame)}."""
        remote = client.scatter(self.v.clip.frames)
        flows, done, futures = {}, {}, {}

        def pair(n, k):
            if (n, k) not in flows:
                flows[n, k] = client.submit(flow.pair_flow, remote[n], remote[k], key=f"scratchnst-flow-{run_id}-{n}-{k}", pure=False)
            return flows[n, k]

        def frame(p, k):  # the future of frame (p, k), or its record when finished before
            return done.get((p, k), self.records.get((p, k)))

        for p, k in self.todo():
            job = self.job(p, k)
            after = [frame(*n) for n in self.needs("frame", p, k)]
            f = client.submit(_frame_task, job, run_id, interrupt_name, remote[k], [pair(n, k) for n in job.neighbours], *after,
                              key=f"scratchnst-frame-{run_id}-{p}-{k}", pure=False, retries=cluster.RETRIES)
            done[p, k], futures[f] = f, ("frame", p, k)
        for p, k in self.unscored():
            f = client.submit(_score_task, str(self.v.work.path), p, k, pair(k - 1, k), frame(p, k), frame(p, k - 1),
                              key=f"scratchnst-score-{run_id}-{p}-{k}", pure=False)
            futures[f] = ("score", p, k)
        return futures

    def _collect(self, key: tuple, value) -> None:
        kind, p, k = key
        if value is None:  # interrupted
            return
        if kind == "frame":
            self.add(value)
        else:
            self.scored(p, k, value)

    def _frame_bytes(self) -> int:
        """The peak memory of one frame task: what a local worker must have room for."""
        h, w = self.v.clip.frames[0].shape[:2]
        return estimate_peak_bytes(self.v.settings, (w, h), [(w, h)] * len(self.v.styles or [None]))

    def summary(self) -> list[dict]:
        """Per pass: frames done, mean temporal error, seconds of stylization."""
        rows = []
        for p in range(1, self.v.options.passes + 1):
            mine = [r for (q, _), r in sorted(self.records.items()) if q == p]
            errors = [r["temporal_error"] for r in mine if r["temporal_error"] is not None]
            rows.append({
                "pass": p, "frames_done": len(mine),
                "temporal_error": float(np.mean(errors)) if len(errors) == self.n - 1 else None,
                "stylize_s": round(sum(r["stylize_s"] for r in mine), 3),
            })
        return rows

    def extra(self) -> dict:
        """What a multi-pass manifest has over a frame-by-frame one: the passes, their flicker and
        seconds, the failures; the backend and weights when the frames were made on workers."""
        summary = self.summary()
        stylize_s = sum(row["stylize_s"] for row in summary)
        extra = {"passes": summary, "temporal_error": summary[-1]["temporal_error"],
                 "stylize_s": round(stylize_s, 3), "seconds_per_frame": round(stylize_s / self.n, 3)}
        flows = {(tuple(r["neighbours"]), r["index"]): r["flow_s"] for r in self.records.values() if r["flow_s"] is not None}
        extra["flow_s"] = round(sum(flows.values()), 3)  # each pair's flows once, however many passes used them
        if self.v.painter.net is None and self.records:  # the frames were made on workers
            any_record = next(iter(self.records.values()))
            extra |= {"backend": any_record["backend"], "weights_sha256": any_record["weights_sha256"]}
        if failures := self.failures():
            more = f" (and {len(failures) - 1} more: see \"failed\")" if len(failures) > 1 else ""
            first = failures[0]
            extra |= {"failed": failures, "error": f"pass {first['pass']}, frame {first['index']}: {first['error']}{more}"}
        return extra


def run(video, records: list[dict]) -> tuple[str, list[dict], dict]:
    """The passes of `video` (a run.VideoRun) after the finished frames `records`: (status, the
    records of the last pass's frames, the manifest's multi-pass fields)."""
    passes = Passes(video, records)
    status = passes.run()
    last = [r for (p, _), r in sorted(passes.records.items()) if p == video.options.passes]
    return status, last, passes.extra()
