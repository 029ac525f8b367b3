"""What video adds to the stylize Settings, and video's own defaults: the one home of both.

The video() signature, the CLI (video's and batch's options) and batch's video jobs take their
defaults and their lists of option names from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from scratchnst.app.picture.settings import ITERATIONS as PICTURE_ITERATIONS, Settings, int_option, list_option, weight_option
from scratchnst.errors import ScratchnstError

ITERATIONS = 20  # --iterations of a video: each frame after the first, the cap of the stopping rule; docs/benchmarks.md, "Video"
STOP_WINDOW = 3  # --stop-change: the loss's relative fall over this many iterations; docs/benchmarks.md, "Video crispness (issue #27)"
PICTURE_ONLY = ("save_every", "checkpoint_every", "plot", "tile")  # Settings fields of one picture only: its extra outputs, its tiles
RUN_WIDE = {"run_wide": True}  # field metadata: an option of where the run goes (the cluster), not of its frames


@dataclass(frozen=True)
class VideoOptions:
    """What video adds to the stylize Settings."""

    temporal_weight: float = 300.0  # on the "size"-normalised objective; docs/benchmarks.md, "Style drift: measured on what is written"
    first_iterations: int | None = PICTURE_ITERATIONS  # the first frame's, at each scale (None: a picture's)
    frames: tuple[int, int | None] = (0, None)  # input frames A:B
    independent: bool = False  # the baseline: every frame from --init, no warp, no temporal term
    fps: float | None = None  # frame rate of a folder of frames (a video keeps its own)
    passes: int = 0  # 0: frame by frame; P: Ruder et al.'s multi-pass mode, P passes over all frames (multipass.py)
    stop_change: float = 0.01  # a frame started warm stops once its loss fell by less than this (relative) over STOP_WINDOW
    # iterations; 0: always --iterations (docs/benchmarks.md, "New content painted, and frames that stop when done")
    blend: float = 1.0  # multi-pass: δ, the weight of the warped neighbours in a frame's start (Ruder et al.'s
    # blendWeight; 3 gave the same flicker: docs/benchmarks.md, "Multi-pass")
    long_term: tuple[int, ...] = ()  # J: frame k is held to the outputs of frames k − j, j in J (1 among them), each
    # where no closer one is reliable (Ruder et al.'s long-term term); (): the previous frame only
    workers: int | None = field(default=None, metadata=RUN_WIDE)  # local Dask workers (None: cluster's default; 0: no Dask)
    scheduler: str | None = field(default=None, metadata=RUN_WIDE)  # an existing Dask scheduler's address

    def validated(self) -> "VideoOptions":
        """A new VideoOptions, checked and normalised (first_iterations resolved, frames a tuple);
        ScratchnstError naming the option otherwise. Self is left as it is."""
        temporal_weight = weight_option("temporal-weight", self.temporal_weight)
        first = int_option("first-iterations", PICTURE_ITERATIONS if self.first_iterations is None else self.first_iterations)
        if self.fps is not None and not weight_option("fps", self.fps) > 0:
            raise ScratchnstError(f"--fps must be > 0 (got {self.fps!r})")
        if self.workers is not None:
            int_option("workers", self.workers, minimum=0)
        int_option("passes", self.passes, minimum=0)
        blend = weight_option("blend", self.blend)
        stop_change = weight_option("stop-change", self.stop_change)
        if stop_change >= 1:
            raise ScratchnstError(f"--stop-change is a relative change of the loss, below 1 (got {self.stop_change!r}; 0 turns the rule off)")
        if self.passes and self.independent:
            raise ScratchnstError("--independent is the frame-by-frame baseline: give it without --passes (--passes 1 stylizes every frame independently)")
        return replace(self, temporal_weight=temporal_weight, first_iterations=first, blend=blend, stop_change=stop_change,
                       frames=tuple(self.frames), long_term=self._long_term())

    def _long_term(self) -> tuple[int, ...]:
        """--long-term J as a sorted tuple: whole numbers ≥ 1, none twice, 1 among them, frame by frame with the
        temporal term only."""
        offsets = tuple(int_option("long-term", j) for j in list_option("long-term", self.long_term, "frame offsets such as 1,10,20,40"))
        if not offsets:
            return ()
        if len(set(offsets)) != len(offsets):
            raise ScratchnstError(f"--long-term: an offset is listed twice ({','.join(map(str, offsets))})")
        if 1 not in offsets:
            raise ScratchnstError(f"--long-term must include 1, the previous frame, which starts each frame (got {','.join(map(str, offsets))})")
        if self.passes or self.independent:
            raise ScratchnstError(f"--long-term is for frame-by-frame runs with the temporal term: give it without {'--passes' if self.passes else '--independent'}")
        return tuple(sorted(offsets))


JOB_OPTIONS = tuple(f.name for f in fields(VideoOptions) if not f.metadata.get("run_wide"))  # a batch video job's own
DEFAULTS = VideoOptions()


def video_settings(**options) -> Settings:
    """Settings with a video's defaults: size None (the input's), ITERATIONS for each later frame."""
    return Settings(**{"size": None, "iterations": ITERATIONS, **options})


def validated_settings(settings: Settings, n_styles: int) -> Settings:
    """settings.validated for a video of `n_styles` style images: a new Settings, whose size None
    (the input's) stays None until the clip is read."""
    checked = replace(settings, size=1 if settings.size is None else settings.size).validated(n_styles)
    return replace(checked, size=settings.size)
