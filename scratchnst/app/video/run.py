"""One `scratchnst video` run, in either mode: the clip and the settings of its frames, checked; the
work folder; the frames (framewise.py, or multipass.py with --passes); then the video (or folder
of frames) built beside OUT and renamed into place, and the manifest OUT.json.

A stopped run (Ctrl-C, kill, crash) keeps every finished frame in OUT.work/ (work.py); `--resume`
continues at the first unfinished one. `video()` is the Python entry point
(scratchnst.app.video.video); batch's video jobs make a VideoRun on their worker.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from scratchnst.app.files import images as im
from scratchnst.app.files import report
from scratchnst.app.picture.inputs import open_styles, style_list
from scratchnst.app.picture.settings import Settings
from scratchnst.app.video import clip, flow, framewise, multipass
from scratchnst.app.video.frame import Painter, Shared
from scratchnst.app.video.options import DEFAULTS, VideoOptions, validated_settings, video_settings
from scratchnst.app.video.work import WorkFolder, comparable
from scratchnst.core.backend import backend_name


@dataclass
class VideoResult:
    status: str  # "done", "interrupted", or "failed" (multi-pass: a frame failed; the others kept)
    manifest: dict
    paths: dict


class VideoRun:
    """One video: the clip, the settings of its frames, the work folder, the painter of its frames."""

    def __init__(self, source, styles, settings: Settings, out, options: VideoOptions, *, resume: bool | str = False,
                 shared: Shared | None = None, on_progress=None):
        """Every check that needs no network: the output, the styles, the clip itself (decoded here),
        what each frame's stylization checks (frame.Painter: masks, sizes, memory where the frames
        run here).

        settings: validated by options.validated_settings (size None: the input's); options:
        validated. resume: WorkFolder.open's. shared: what the frames may reuse (a loaded net, a
        style-target cache); on_progress: each frame's stylize on_progress (True stops the video, as
        Ctrl-C does)."""
        flow.video_libs()
        self.options, self.resume, self.on_progress = options, resume, on_progress
        self.source = str(Path(source).resolve())
        self.out = clip.check_output(out, source)
        self.folder_output = clip.is_folder_output(out)
        self.styles = list(styles) if styles else None
        opened = open_styles(style_list(self.styles))  # a bad style image is refused before the clip is decoded
        self.clip = clip.read_clip(source, options.frames, settings.size, options.fps)
        h, w = self.clip.frames[0].shape[:2]
        self.settings = replace(settings, size=max(h, w))
        self.frames_sha256 = hashlib.sha256(b"".join(f.tobytes() for f in self.clip.frames)).hexdigest()  # the input's content, as decoded
        self.work = WorkFolder(self.out, self._identity())
        on_dask = options.passes and options.workers != 0  # the frames run on the workers, which check their memory
        self.painter = Painter(opened, self.settings, (w, h), shared, memory=not on_dask)

    def _identity(self) -> dict:
        """What a resumed run must share with the one that wrote the work folder."""
        o = self.options
        return {
            "input": self.source, "styles": [str(Path(s).resolve()) for s in self.styles or []],
            "frames": [self.clip.first, self.clip.first + len(self.clip.frames)], "frames_sha256": self.frames_sha256,
            "args": self.settings.as_args(),
            "temporal_weight": o.temporal_weight, "first_iterations": o.first_iterations, "independent": o.independent,
            "stop_change": o.stop_change,
            **({"passes": o.passes, "blend": o.blend} if o.passes else {}),
            **({"long_term": list(o.long_term)} if o.long_term else {}),
        }

    def run(self) -> VideoResult:
        records = self.work.open(self.resume)
        started = time.perf_counter()
        if self.options.passes:
            status, records, extra = multipass.run(self, records)
        else:
            (status, records), extra = framewise.run(self, records), {}
        return self._finish(status, records, time.perf_counter() - started, extra)

    def progress(self, r: dict) -> None:
        """One line on stderr per finished frame (unless --quiet)."""
        if self.settings.quiet:
            return
        err = "" if r["temporal_error"] is None else f", temporal error {r['temporal_error']:.3g}"
        where = f"pass {r['pass']}/{self.options.passes}, " if "pass" in r else ""
        print(f"{where}frame {r['index'] + 1}/{len(self.clip.frames)}: {r['stylize_s']:.1f} s, loss {r['loss']:.4g}{err}", file=sys.stderr)

    def _finish(self, status: str, records: list[dict], elapsed: float, extra: dict) -> VideoResult:
        """The video (when done) from the frames of `records` (the last pass's in multi-pass mode), and
        the manifest, with `extra` fields over the frame-by-frame ones."""
        paths = {"work": str(self.work.path)}
        note = None
        if status == "done":
            pngs = [self.work.png(r["index"], r.get("pass")) for r in records]
            fps, n = self.clip.fps, len(records)
            span = (self.clip.start_s, self.clip.start_s + n / fps)
            audio = None if Path(self.source).is_dir() else self.source  # a folder of frames has no sound
            note = clip.write_output(pngs, self.out, self.folder_output, fps, audio, span)
            paths = {"output": str(self.out)}
        manifest = {**self._manifest(status, records, elapsed, note), **extra}
        paths["manifest"] = str(report.write_manifest(self.out, manifest))
        if status == "done":
            self.work.remove()
        return VideoResult(status, manifest, paths)

    def _manifest(self, status: str, records: list[dict], elapsed: float, note: str | None) -> dict:
        errors = [r["temporal_error"] for r in records if r["temporal_error"] is not None]
        h, w = self.clip.frames[0].shape[:2]
        later = [r["stylize_s"] for r in records[1:]]
        net = self.painter.net
        return {
            "version": report.version(), "status": status, "input": self.source, "styles": self.styles or [im.DEFAULT],
            "output": str(self.out), "args": self.settings.as_args(),
            "video": {**dataclasses.asdict(self.options), "frames": [self.clip.first, self.clip.first + len(self.clip.frames)]},
            "backend": backend_name(net.xp) if net is not None else None,
            "weights_sha256": net.weights_sha256 if net is not None else None,
            "fps": str(self.clip.fps), "source_size": list(self.clip.source_size), "size": [w, h],
            "frames_done": len(records), "frames_total": len(self.clip.frames),
            "temporal_error": float(np.mean(errors)) if errors else None,
            "seconds_per_frame": round(float(np.mean(later)), 3) if later else None,
            "flow_s": round(sum(r["flow_s"] or 0.0 for r in records), 3),
            "stylize_s": round(sum(r["stylize_s"] for r in records), 3),
            "elapsed_s": round(elapsed, 3),
            **({"work": str(self.work.path)} if status != "done" else {}),
            **({"note": note} if note else {}),
            "frames": records,
        }


def same_run(manifest: dict, source, styles, settings: Settings, options: VideoOptions) -> bool:
    """Whether the video manifest `manifest` is of this run: the same input and styles, resolved
    options and frames. settings, options: validated (options.validated_settings, VideoOptions.validated).
    Read without decoding the clip: settings.size None (the input's size) is the manifest's
    source_size, and frames A: (to the end) matches any end."""
    keys = ("temporal_weight", "first_iterations", "independent", "fps", "passes", "blend", "stop_change", "long_term")
    try:
        size = settings.size or max(manifest["source_size"])
        ours = {"inputs": [source, *styles], "args": replace(settings, size=size).as_args(), **{k: getattr(options, k) for k in keys}}
        recorded = {"passes": 0, "blend": DEFAULTS.blend, "stop_change": 0.0, "long_term": DEFAULTS.long_term,
                    **manifest["video"]}  # manifests from before these options (--stop-change was off then)
        theirs = {"inputs": [manifest["input"], *manifest["styles"]], "args": manifest["args"], **{k: recorded[k] for k in keys}}
        theirs["long_term"] = tuple(theirs["long_term"])  # a list in JSON
        for identity in (ours, theirs):
            identity["inputs"] = [str(Path(p).resolve()) for p in identity["inputs"]]
        done = manifest["video"]["frames"]
    except (KeyError, TypeError, ValueError):
        return False
    first, stop = options.frames
    return comparable(ours) == comparable(theirs) and done[0] == first and stop in (None, done[1])


def video(source, styles=None, *, out, resume: bool = False, **options) -> VideoResult:
    """Stylize the video (or folder of frames) `source` with `styles` (paths; None: the embedded
    painting) into `out` (a .mp4/.mov/.mkv/.webm file, or a folder ending in /).

    options: VideoOptions' fields (temporal_weight, first_iterations, frames, independent, fps,
    passes, stop_change, blend, long_term, workers, scheduler; their defaults there) and Settings fields as for stylize
    (size=None, the default, keeps the input's size; iterations apply to each frame after the first,
    options.ITERATIONS by default). passes: 0 goes frame by frame; P > 0 is the multi-pass mode
    (multipass.py), every frame of a pass a Dask task. Returns a VideoResult; status "interrupted"
    after Ctrl-C, with the finished frames kept for resume=True; "failed" when a multi-pass frame
    failed (the manifest's "error").
    """
    own = {f.name: options.pop(f.name) for f in fields(VideoOptions) if f.name in options}
    checked = VideoOptions(**own).validated()
    settings = validated_settings(video_settings(**options), len(style_list(list(styles) if styles else None)))
    return VideoRun(source, styles, settings, out, checked, resume=resume).run()
