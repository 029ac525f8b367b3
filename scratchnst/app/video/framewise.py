"""`scratchnst video`, frame by frame without flicker (Ruder, Dosovitskiy & Brox 2016).

The flow of every frame pair, submitted at once to Dask workers (flow.pair_flow) → frame by frame:
the previous output warped along the flow starts the frame and is its temporal target where the
motion is reliable (frame.temporal_terms: PixelTerm "temporal", losses.temporal_loss) → Painter →
the work folder (the frame's PNG, then state.json).

Each frame starts from the previous frame's PNG, never from a result kept in memory, so a resumed
run makes the bytes an uninterrupted one makes.
"""

from __future__ import annotations

import contextlib
import time

from scratchnst.app import cluster
from scratchnst.app.video import flow
from scratchnst.app.video.frame import fill_new, frame_settings, read_frame, settled, temporal_terms
from scratchnst.app.video.options import STOP_WINDOW, VideoOptions


def run(video, records: list[dict]) -> tuple[str, list[dict]]:
    """Every frame of `video` (a run.VideoRun) after the finished ones (`records`), in order:
    (status "done" or "interrupted", the records of the finished frames)."""
    status = "done"
    try:
        with _flows(video.clip.frames, len(records), video.options) as pair_of:
            for k in range(len(records), len(video.clip.frames)):
                waited = time.perf_counter()
                pair = pair_of(k) if k > 0 else None  # on Dask: usually computed already
                waited = time.perf_counter() - waited
                record = _stylize(video, k, pair)
                if record is None:  # stopped before the end
                    status = "interrupted"
                    break
                records.append({**record, "flow_wait_s": round(waited, 3)})
                video.work.save(records)
                video.progress(records[-1])
    except KeyboardInterrupt:
        status = "interrupted"
    return status, records


def _stylize(video, k: int, pair) -> dict | None:
    """Frame k's record once stylized and written (pair: its PairFlow from frame k − 1, None for
    frame 0); None when stopped before the end."""
    o, warped, start, terms = video.options, None, None, None
    if pair is not None:
        warped = flow.warp_frame(read_frame(video.work.png(k - 1)), pair.backward)
        if not o.independent:
            start = fill_new(warped, video.clip.frames[k], pair.mask)
            terms = temporal_terms(video.settings, o.temporal_weight, warped, pair.mask)
    settings = frame_settings(video.settings, o.first_iterations, first=k == 0, warm=start is not None)
    stop_when = settled(o.stop_change, STOP_WINDOW) if start is not None else None
    painted = video.painter.paint(video.clip.frames[k], video.work.png(k), settings, start=start, terms=terms,
                                  on_progress=video.on_progress, stop_when=stop_when)
    if painted is None:
        return None
    record, out = painted
    return {
        "index": k, "frame": video.clip.first + k, **record,
        "temporal_error": None if warped is None else flow.temporal_error(out, warped, pair.mask),
        "reliable": None if pair is None else float(pair.mask.mean()),
        "flow_s": None if pair is None else round(pair.seconds, 3),
    }


@contextlib.contextmanager
def _flows(frames: list, first: int, options: VideoOptions):
    """pair_of(k) -> flow.PairFlow of frames k − 1 → k, for k ≥ first.

    Every pair is an independent task: all are submitted to Dask before the first frame is stylized,
    and each is gathered when its frame comes. workers=0 computes each pair here when asked for.
    """
    needed = range(max(first, 1), len(frames))
    if options.workers == 0 or not needed:
        yield lambda k: flow.pair_flow(frames[k - 1], frames[k])
        return
    lo = needed[0] - 1
    with cluster.client(options.scheduler, workers=options.workers) as client:
        remote = client.scatter(frames[lo:])
        futures = {k: client.submit(flow.pair_flow, remote[k - 1 - lo], remote[k - lo], pure=False) for k in needed}
        yield lambda k: futures.pop(k).result()
