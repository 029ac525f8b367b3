"""`scratchnst video`, frame by frame without flicker (Ruder, Dosovitskiy & Brox 2016).

The flow of every frame pair, computed by Dask workers a few frames ahead (flow.pair_flow) → frame
by frame: the previous output warped along the flow starts the frame and is its temporal target
where the motion is reliable (frame.temporal_terms: PixelTerm "temporal", losses.temporal_loss) →
Painter → the work folder (the frame's PNG, then state.json).

With --long-term J (Ruder et al.'s long-term term) frame k is also held to the outputs of frames
k − j, j in J, each warped along the flow measured directly from frame k to frame k − j, where no
closer frame of J is reliable (flow.long_term_masks); the pixels that are, start from them too.

Each frame starts from the previous frame's PNG, never from a result kept in memory, so a resumed
run makes the bytes an uninterrupted one makes.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from scratchnst.app import cluster
from scratchnst.app.video import flow
from scratchnst.app.video.frame import fill_gap, fill_new, frame_settings, held_to, read_frame, settled, temporal_terms
from scratchnst.app.video.options import STOP_WINDOW, VideoOptions

FLOW_AHEAD = 8  # frames whose flows are asked of the workers ahead of the frame being stylized


def run(video, records: list[dict]) -> tuple[str, list[dict]]:
    """Every frame of `video` (a run.VideoRun) after the finished ones (`records`), in order:
    (status "done" or "interrupted", the records of the finished frames)."""
    status = "done"
    try:
        with _flows(video.clip.frames, len(records), video.options) as flows_of:
            for k in range(len(records), len(video.clip.frames)):
                waited = time.perf_counter()
                pairs = flows_of(k)  # on Dask: usually computed already
                waited = time.perf_counter() - waited
                record = _stylize(video, k, pairs)
                if record is None:  # stopped before the end
                    status = "interrupted"
                    break
                records.append({**record, "flow_wait_s": round(waited, 3)})
                video.work.save(records)
                video.progress(records[-1])
    except KeyboardInterrupt:
        status = "interrupted"
    return status, records


def _stylize(video, k: int, pairs: dict) -> dict | None:
    """Frame k's record once stylized and written (pairs: {j: its PairFlow from frame k − j} for the
    offsets j it has, none for frame 0); None when stopped before the end."""
    o, pair, warped, start, terms, held = video.options, pairs.get(1), None, None, None, None
    if pair is not None:
        warped = flow.warp_frame(read_frame(video.work.png(k - 1)), pair.backward)
        if not o.independent:
            target, mask, held = _long_term(video, k, pairs, warped) if o.long_term else (warped, pair.mask, None)
            start = fill_new(target, video.clip.frames[k], mask, fill_gap(k))
            terms = temporal_terms(video.settings, o.temporal_weight, target, mask)
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
        **({"long_term": held} if held is not None else {}),
        "flow_s": None if pair is None else round(sum(p.seconds for p in pairs.values()), 3),
    }


def _long_term(video, k: int, pairs: dict, warped) -> tuple[np.ndarray, np.ndarray, dict]:
    """Frame k's start and temporal target under --long-term: the outputs of frames k − j warped to it
    (warped: frame k − 1's), each where flow.long_term_masks gives it, as one target (frame.held_to: the
    masks are disjoint, so the term is Ruder et al.'s sum over j); and {j: the share of frame k held to
    frame k − j}. Returns (target (H, W, 3) uint8, mask (H, W) float32, shares)."""
    masks = flow.long_term_masks({j: p.mask for j, p in pairs.items()})
    used = [j for j, c in masks.items() if j == 1 or c.any()]  # an earlier output no pixel is held to is not read
    outputs = [warped if j == 1 else flow.warp_frame(read_frame(video.work.png(k - j)), pairs[j].backward) for j in used]
    target, total = held_to(outputs, [masks[j] for j in used])
    return target, total.astype(np.float32), {str(j): round(float(c.mean()), 4) for j, c in masks.items()}


class _Flows:
    """flows_of(k) -> {j: flow.PairFlow of frames k − j → k} for the offsets j of --long-term (1 alone
    when it is off) that frame k has (k − j ≥ 0).

    Every pair is an independent Dask task, submitted FLOW_AHEAD frames ahead of the frame being
    stylized and gathered when its frame comes, so only those frames' flows are held (each a few times
    the frame's size, |J| pairs a frame). workers=0 computes them here when asked for.
    """

    def __init__(self, frames: list, first: int, options: VideoOptions, client=None):
        self.frames, self.client, self.offsets = frames, client, options.long_term or (1,)
        self.lo = max(first - self.offsets[-1], 0)  # the first frame any pair needs
        self.remote = client.scatter(frames[self.lo:]) if client is not None else None
        self.futures, self.next = {}, max(first, 1)
        if client is not None:
            self._submit_until(self.next + FLOW_AHEAD)  # computed while the first frame is stylized

    def _pairs(self, k: int) -> list[int]:
        return [j for j in self.offsets if k - j >= 0]

    def _submit_until(self, stop: int) -> None:
        r = self.remote
        for k in range(self.next, min(stop, len(self.frames))):
            self.futures[k] = {j: self.client.submit(flow.pair_flow, r[k - j - self.lo], r[k - self.lo], pure=False) for j in self._pairs(k)}
        self.next = max(self.next, stop)

    def __call__(self, k: int) -> dict:
        if self.client is None:
            return {j: flow.pair_flow(self.frames[k - j], self.frames[k]) for j in self._pairs(k)}
        self._submit_until(k + 1 + FLOW_AHEAD)
        return {j: f.result() for j, f in self.futures.pop(k, {}).items()}


@contextlib.contextmanager
def _flows(frames: list, first: int, options: VideoOptions):
    """A _Flows for the frames from `first` on, on a Dask client (computed here with workers=0, or
    when no frame is left)."""
    if options.workers == 0 or first >= len(frames):
        yield _Flows(frames, first, options)
        return
    with cluster.client(options.scheduler, workers=options.workers) as client:
        yield _Flows(frames, first, options, client)
