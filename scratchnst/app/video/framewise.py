"""`scratchnst video`: a clip stylized frame by frame without flicker (Ruder, Dosovitskiy & Brox 2016).

clip (videoio.read_clip) → the flow of every frame pair, submitted at once to Dask workers
(flow.pair_flow) → frame by frame: the previous output warped along the flow starts the frame and is
its temporal target where the motion is reliable (PixelTerm "temporal", losses.temporal_loss) →
Stylizer → the work folder (the frame's PNG, then state.json) → every frame done: the video (or a
folder of frames) built beside OUT and renamed into place; the manifest OUT.json.

A stopped run (Ctrl-C, kill, crash) keeps every finished frame in OUT.work/; `--resume` continues
at the first unfinished one. Each frame starts from the previous frame's PNG, never from state kept
in memory, so a resumed run makes the bytes an uninterrupted one makes.

`--passes P` is a multi-pass mode after Ruder et al.'s instead (multipass.py): every frame of a pass is an
independent Dask task, so one video uses many workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from scratchnst.app import cluster
from scratchnst.app.video import flow
from scratchnst.app.video import multipass
from scratchnst.app.files import report
from scratchnst.app.video import clip as videoio
from scratchnst.app.files import images as im
from scratchnst.core.preprocess import preprocess
from scratchnst.app.files.atomic import atomic_write_bytes
from scratchnst.app.picture.settings import Settings
from scratchnst.app.picture.stylize import Stylizer
from scratchnst.core.backend import backend_name, get_array_module
from scratchnst.core.losses import temporal_loss
from scratchnst.core.objective import PixelTerm, check_weight
from scratchnst.errors import ScratchnstError, one_line

DEFAULT_TEMPORAL_WEIGHT = 1000.0  # on the "size"-normalised objective; docs/benchmarks.md, "Video"
DEFAULT_ITERATIONS = 20  # each frame after the first (which gets the stylize default, 60); docs/benchmarks.md, "Video"
STATE = "state.json"
PICTURE_ONLY = ("save_every", "checkpoint_every", "plot")  # Settings fields of one picture's extra outputs


@dataclass
class VideoOptions:
    """What video adds to the stylize Settings."""

    temporal_weight: float = DEFAULT_TEMPORAL_WEIGHT
    first_iterations: int | None = None  # None: Settings().iterations
    frames: tuple[int, int | None] = (0, None)  # input frames A:B
    independent: bool = False  # the baseline: every frame from --init, no warp, no temporal term
    fps: float | None = None  # frame rate of a folder of frames (a video keeps its own)
    passes: int = 0  # 0: frame by frame; P: Ruder et al.'s multi-pass mode, P passes over all frames (multipass.py)
    blend: float = multipass.DEFAULT_BLEND  # multi-pass: weight of the warped neighbours in a frame's start
    workers: int | None = None  # local Dask workers for the flows (None: cluster's default; 0: no Dask)
    scheduler: str | None = None  # an existing Dask scheduler's address

    def validated(self) -> "VideoOptions":
        self.temporal_weight = check_weight("temporal-weight", self.temporal_weight)
        if self.first_iterations is None:
            self.first_iterations = Settings().iterations
        if not isinstance(self.first_iterations, int) or self.first_iterations < 1:
            raise ScratchnstError(f"--first-iterations must be a whole number > 0 (got {self.first_iterations!r})")
        if self.fps is not None and not check_weight("fps", self.fps) > 0:
            raise ScratchnstError(f"--fps must be > 0 (got {self.fps!r})")
        if self.workers is not None and self.workers < 0:
            raise ScratchnstError(f"--workers must be a whole number ≥ 0 (got {self.workers})")
        if isinstance(self.passes, bool) or not isinstance(self.passes, int) or self.passes < 0:
            raise ScratchnstError(f"--passes must be a whole number ≥ 0 (got {self.passes!r})")
        self.blend = check_weight("blend", self.blend)
        if self.passes and self.independent:
            raise ScratchnstError("--independent is the frame-by-frame baseline: give it without --passes (--passes 1 stylizes every frame independently)")
        self.frames = tuple(self.frames)
        return self


JOB_OPTIONS = tuple(f.name for f in dataclasses.fields(VideoOptions) if f.name not in ("workers", "scheduler"))  # a batch job's own


@dataclass
class VideoResult:
    status: str  # "done" or "interrupted"
    manifest: dict
    paths: dict


def work_dir(out: Path) -> Path:
    """OUT.work/ beside OUT: finished frames and their state until the video is complete."""
    return out.with_name(out.name + ".work")


def frame_png(work: Path, k: int, pass_: int | None = None) -> Path:
    """Where frame k's finished PNG is kept: OUT.work/frame_k.png, or in multi-pass mode
    OUT.work/pass_p/frame_k.png for pass p."""
    folder = work if pass_ is None else work / f"pass_{pass_:02d}"
    return folder / f"frame_{k:05d}.png"


class VideoRun:
    """One video: the clip, the settings of its frames, the work folder, the flows, the frames."""

    def __init__(self, source, styles, settings: Settings, out, options: VideoOptions, *, resume: bool | str = False,
                 style_cache: dict | None = None, on_progress=None):
        """Every check that needs no network: options, output, the clip itself (decoded here).

        resume: False starts afresh (refusing a work folder that holds an unfinished run), True
        continues the work folder's run (refusing one of other inputs or options), "auto" continues
        it when it is this run and else starts afresh in its place (batch). style_cache, on_progress:
        Stylizer's, for every frame; `net` may be set to a loaded VGG16 before run()."""
        flow.video_libs()
        self.options = options.validated()
        self.source = str(Path(source).resolve())
        self.out = videoio.check_output(out, source)
        self.folder_output = videoio.is_folder_output(out)
        self.styles = list(styles) if styles else None
        for style in self.styles or []:
            im.open_image(style, "style")  # a bad style image is refused before the clip is decoded
        self.clip = videoio.read_clip(source, self.options.frames, settings.size, self.options.fps)
        h, w = self.clip.frames[0].shape[:2]
        self.settings = dataclasses.replace(settings, size=max(h, w)).validated(len(self.styles or [None]))
        self.frames_sha256 = hashlib.sha256(b"".join(f.tobytes() for f in self.clip.frames)).hexdigest()  # the input's content, as decoded
        self.work = work_dir(self.out)
        self.resume = resume
        self.net, self.style_cache, self.on_progress = None, {} if style_cache is None else style_cache, on_progress

    # -- the work folder ----------------------------------------------------------------------------

    def _identity(self) -> dict:
        """What a resumed run must share with the one that wrote the work folder."""
        o = self.options
        return {
            "input": self.source, "styles": [str(Path(s).resolve()) for s in self.styles or []],
            "frames": [self.clip.first, self.clip.first + len(self.clip.frames)], "frames_sha256": self.frames_sha256,
            "args": self.settings.as_args(),
            "temporal_weight": o.temporal_weight, "first_iterations": o.first_iterations, "independent": o.independent,
            **({"passes": o.passes, "blend": o.blend} if o.passes else {}),
        }

    def _open_work(self) -> list[dict]:
        """The records of the frames already finished (none for a fresh run)."""
        if self.resume == "auto":
            try:
                return self._finished_frames()
            except ScratchnstError:  # no run there, another run's, or a broken one: this run replaces it
                shutil.rmtree(self.work, ignore_errors=True)
        elif self.resume:
            return self._finished_frames()
        elif (self.work / STATE).exists():
            raise ScratchnstError(f"{self.work} holds an unfinished run of this output: add --resume to continue it, or delete the folder")
        self.work.mkdir(parents=True, exist_ok=True)
        self._save_state([])
        return []

    def _finished_frames(self) -> list[dict]:
        """The records of the frames the work folder holds of this very run; ScratchnstError when it
        holds no run, or one of other inputs or options."""
        state_file = self.work / STATE
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError) as exc:
            raise ScratchnstError(f"{state_file}: no unfinished run to resume ({one_line(exc)})") from None
        if not isinstance(state, dict) or not isinstance(state.get("identity"), dict) or "args" not in state["identity"]:
            raise ScratchnstError(f"{state_file}: not a scratchnst video state file; delete {self.work} to start again")
        ours = _quiet_free(self._identity())
        for key, value in ours.items():
            if _quiet_free(state["identity"]).get(key) != value:
                raise ScratchnstError(f"{self.work}: --resume with other {key} than the interrupted run; give the same input and options, or delete the folder")
        records = state["frames"]
        if not all(frame_png(self.work, r["index"], r.get("pass")).is_file() for r in records):
            raise ScratchnstError(f"{self.work}: finished frames are missing from the work folder; delete it to start again")
        return records

    def _save_state(self, records: list[dict]) -> None:
        data = {"identity": self._identity(), "frames": records}
        atomic_write_bytes(self.work / STATE, (json.dumps(data, indent=1) + "\n").encode())

    # -- one frame ----------------------------------------------------------------------------------

    def _frame_settings(self, k: int, init: str | None) -> Settings:
        """Frame 0 gets the stylize schedule with --first-iterations; later frames --iterations, and
        (unless independent) one pass at full size from the warped previous output `init`."""
        s = self.settings
        if k == 0:
            return dataclasses.replace(s, iterations=self.options.first_iterations, quiet=True)
        if init is None:
            return dataclasses.replace(s, quiet=True)
        return dataclasses.replace(s, scales=(1.0,), init=init, quiet=True)

    def _stylize_frame(self, k: int, pair) -> dict:
        """Stylize frame k (pair: its PairFlow from frame k − 1, None for frame 0); write its PNG."""
        warped, init, terms = None, None, None
        if pair is not None:
            warped = warp_uint8(read_frame(frame_png(self.work, k - 1)), pair.backward)
            if not self.options.independent:
                init = str(self.work / "warped.png")
                im.save_image(warped, init)
                terms = temporal_terms(self.settings, self.options.temporal_weight, warped, pair.mask)
        record, out, self.net = stylize_frame(self.clip.frames[k], self.styles, self._frame_settings(k, init), frame_png(self.work, k),
                                              terms=terms, net=self.net, style_cache=self.style_cache, on_progress=self.on_progress)
        return {
            "index": k, "frame": self.clip.first + k, **record,
            "temporal_error": None if warped is None else flow.temporal_error(out, warped, pair.mask),
            "reliable": None if pair is None else float(pair.mask.mean()),
            "flow_s": None if pair is None else round(pair.seconds, 3),
        }

    # -- the run ------------------------------------------------------------------------------------

    def run(self) -> VideoResult:
        if self.options.passes:
            return multipass.run(self)
        records = self._open_work()
        started = time.perf_counter()
        status = "done"
        try:
            with _flows(self.clip.frames, len(records), self.options) as pair_of:
                for k in range(len(records), len(self.clip.frames)):
                    waited = time.perf_counter()
                    pair = pair_of(k) if k > 0 else None  # on Dask: usually computed already
                    waited = time.perf_counter() - waited
                    record = {**self._stylize_frame(k, pair), "flow_wait_s": round(waited, 3)}
                    records.append(record)
                    self._save_state(records)
                    self._progress(record)
        except KeyboardInterrupt:
            status = "interrupted"
        elapsed = time.perf_counter() - started
        return self._finish(status, records, elapsed)

    def _progress(self, r: dict) -> None:
        if self.settings.quiet:
            return
        err = "" if r["temporal_error"] is None else f", temporal error {r['temporal_error']:.3g}"
        where = f"pass {r['pass']}/{self.options.passes}, " if "pass" in r else ""
        print(f"{where}frame {r['index'] + 1}/{len(self.clip.frames)}: {r['stylize_s']:.1f} s, loss {r['loss']:.4g}{err}", file=sys.stderr)

    def _finish(self, status: str, records: list[dict], elapsed: float, extra: dict | None = None) -> VideoResult:
        """The video (when done) from the frames of `records` (the last pass's in multi-pass mode), and
        the manifest, with `extra` fields over the frame-by-frame ones."""
        paths = {"work": str(self.work)}
        note = None
        if status == "done":
            pngs = [frame_png(self.work, r["index"], r.get("pass")) for r in records]
            fps, n = self.clip.fps, len(records)
            span = (self.clip.start_s, self.clip.start_s + n / fps)
            audio = None if Path(self.source).is_dir() else self.source  # a folder of frames has no sound
            note = videoio.write_output(pngs, self.out, self.folder_output, fps, audio, span)
            paths = {"output": str(self.out)}
        manifest = {**self._manifest(status, records, elapsed, note), **(extra or {})}
        paths["manifest"] = str(report.write_manifest(self.out, manifest))
        if status == "done":
            shutil.rmtree(self.work, ignore_errors=True)
        return VideoResult(status, manifest, paths)

    def _manifest(self, status: str, records: list[dict], elapsed: float, note: str | None) -> dict:
        errors = [r["temporal_error"] for r in records if r["temporal_error"] is not None]
        h, w = self.clip.frames[0].shape[:2]
        later = [r["stylize_s"] for r in records[1:]]
        return {
            "version": report.version(), "status": status, "input": self.source, "styles": self.styles or [im.DEFAULT],
            "output": str(self.out), "args": self.settings.as_args(),
            "video": {**dataclasses.asdict(self.options), "frames": [self.clip.first, self.clip.first + len(self.clip.frames)]},
            "backend": backend_name(self.net.xp) if self.net is not None else None,
            "weights_sha256": self.net.weights_sha256 if self.net is not None else None,
            "fps": str(self.clip.fps), "source_size": list(self.clip.source_size), "size": [w, h],
            "frames_done": len(records), "frames_total": len(self.clip.frames),
            "temporal_error": float(np.mean(errors)) if errors else None,
            "seconds_per_frame": round(float(np.mean(later)), 3) if later else None,
            "flow_s": round(sum(r["flow_s"] or 0.0 for r in records), 3),
            "stylize_s": round(sum(r["stylize_s"] for r in records), 3),
            "elapsed_s": round(elapsed, 3),
            **({"work": str(self.work)} if status != "done" else {}),
            **({"note": note} if note else {}),
            "frames": records,
        }


def same_run(manifest: dict, source, styles, settings: Settings, options: VideoOptions) -> bool:
    """Whether the video manifest `manifest` is of this run: the same input and styles, resolved
    options and frames. Read without decoding the clip: settings.size None (the input's size) is the
    manifest's source_size, and frames A: (to the end) matches any end."""
    keys = ("temporal_weight", "first_iterations", "independent", "fps", "passes", "blend")
    try:
        size = settings.size or max(manifest["source_size"])
        o = dataclasses.replace(options).validated()
        ours = {"inputs": [source, *styles], "args": dataclasses.replace(settings, size=size).validated(len(styles)).as_args(),
                **{k: getattr(o, k) for k in keys}}
        recorded = {"passes": 0, "blend": multipass.DEFAULT_BLEND, **manifest["video"]}  # manifests from before --passes
        theirs = {"inputs": [manifest["input"], *manifest["styles"]], "args": manifest["args"], **{k: recorded[k] for k in keys}}
        for identity in (ours, theirs):
            identity["inputs"] = [str(Path(p).resolve()) for p in identity["inputs"]]
        done = manifest["video"]["frames"]
    except (KeyError, TypeError, ValueError, ScratchnstError):
        return False
    first, stop = o.frames
    return _quiet_free(ours) == _quiet_free(theirs) and done[0] == first and stop in (None, done[1])


def _quiet_free(identity: dict) -> dict:
    """The identity without options that do not change the frames (--quiet)."""
    args = {k: v for k, v in identity["args"].items() if k != "quiet"}
    return {**identity, "args": args}


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


def video(source, styles=None, *, out, resume: bool = False, temporal_weight=DEFAULT_TEMPORAL_WEIGHT, first_iterations=None,
          frames=(0, None), independent=False, fps=None, passes=0, blend=multipass.DEFAULT_BLEND, workers=None, scheduler=None,
          **settings) -> VideoResult:
    """Stylize the video (or folder of frames) `source` with `styles` (paths; None: the embedded
    painting) into `out` (a .mp4/.mov/.mkv/.webm file, or a folder ending in /). Settings fields as
    for stylize (size=None keeps the input's size; iterations apply to each frame after the first).
    passes: 0 goes frame by frame; P > 0 is the multi-pass mode (multipass.py), every frame of a
    pass a Dask task. Returns a VideoResult; status "interrupted" after Ctrl-C, with the finished
    frames kept for resume=True."""
    settings.setdefault("iterations", DEFAULT_ITERATIONS)
    settings.setdefault("size", None)
    options = VideoOptions(temporal_weight, first_iterations, frames, independent, fps, passes, blend, workers, scheduler)
    return VideoRun(source, styles, Settings(**settings), out, options, resume=resume).run()


# -- one frame, either mode ------------------------------------------------------------------------


def read_frame(png: Path) -> np.ndarray:
    """A finished frame of the work folder as (H, W, 3) uint8."""
    return np.asarray(Image.open(png).convert("RGB"))


def warp_uint8(image: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """`image` ((H, W, 3) uint8) warped along the flow `backward`, rounded back to uint8."""
    return np.clip(np.rint(flow.warp(image, backward)), 0, 255).astype(np.uint8)


def temporal_terms(settings: Settings, weight: float, warped: np.ndarray, mask: np.ndarray):
    """Stylizer's pixel_terms: the temporal term of `weight` towards `warped` ((H, W, 3) uint8)
    under `mask` ((H, W)), both brought to the size and colour space of each scale's content array."""
    target_img = Image.fromarray(im.luma_rgb(warped) if settings.preserve_colors else warped)

    def terms(content):
        _, _, h, w = content.shape
        xp = get_array_module(content)
        target = preprocess(im.resize_to(target_img, w, h), dtype=settings.dtype, xp=xp)
        c = mask if mask.shape == (h, w) else np.asarray(Image.fromarray(mask, mode="F").resize((w, h), Image.Resampling.BILINEAR))
        c = xp.asarray(c[None, None], dtype=settings.dtype)
        return [PixelTerm("temporal", weight, lambda x: temporal_loss(x, target, c))]

    return terms


def stylize_frame(frame: np.ndarray, styles, settings: Settings, png: Path, *, terms=None, net=None, style_cache=None,
                  on_progress=None):
    """Stylize one frame ((H, W, 3) uint8) with `settings` and write it to `png`.

    Returns (its record: iterations, evaluations, the last loss terms, seconds; the output (H, W, 3)
    uint8; the net used). Raises KeyboardInterrupt when stopped before the end: the frame is not
    finished, and is redone on resume."""
    started = time.perf_counter()
    stylizer = Stylizer(Image.fromarray(frame), styles, settings, None, net=net, style_cache=style_cache, pixel_terms=terms,
                        on_progress=on_progress)
    result = stylizer.run()
    if result.status != "done":
        raise KeyboardInterrupt
    out = np.asarray(result.image)
    im.save_image(out, png)
    last = result.history[-1] if result.history else {}
    record = {
        "iterations": len(result.history), "evaluations": stylizer.evaluations,
        **{name: last.get(name) for name in ("loss", "content", "style", "tv", "temporal")},
        "stylize_s": round(time.perf_counter() - started, 3),
    }
    return record, out, stylizer.net
