"""Command line: `python -m scratchnst {stylize,batch,video,weights,gradcheck,bench,inspect,serve}`.

One `_add_<cmd>(subparsers)` per subcommand; every user error is a ScratchnstError (or an argparse
error), printed as one line to stderr with exit code 2. Running out of memory (MemoryError, also a
GPU's) is no mistake of the user's, so it is one line with exit code 1; any other exception is a bug
and shows its traceback. `--debug` adds the traceback to those two one-line errors as well.

Lazy imports: `batch`, `video.run` and `studio.server` (they pull in Dask) are imported inside the
functions that run those commands only, so the other commands start without Dask.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import traceback
from pathlib import Path

import numpy as np

from scratchnst import gradcheck as gc
from scratchnst.app import bench, study
from scratchnst.app.files import weights
from scratchnst.app.picture.color import COLORS
from scratchnst.app.picture.settings import FIRST_SCALE, INITS, LARGE_ITERATIONS, LARGE_SCALE, Settings
from scratchnst.app.picture.settings import ITERATIONS as PICTURE_ITERATIONS  # video has its own ITERATIONS
from scratchnst.app.picture.stylize import check_cluster, resume, stylize
from scratchnst.app.studio import inputs as studio
from scratchnst.app.video.clip import parse_frames
from scratchnst.app.video.options import DEFAULTS as VIDEO
from scratchnst.app.video.options import ITERATIONS, JOB_OPTIONS, STOP_WINDOW
from scratchnst.core import host
from scratchnst.core.backend import BACKENDS, DTYPES
from scratchnst.core.checks import unknown
from scratchnst.core.objective import DEFAULT_WEIGHTS, NORMALIZATIONS
from scratchnst.core.optim import DEFAULT_LEARNING_RATE, OPTIMIZERS
from scratchnst.core.vgg import CONV_ALGORITHMS, POOLINGS
from scratchnst.errors import ScratchnstError, one_line

PROG = "scratchnst"
DEFAULTS = Settings()


class _DefaultsFormatter(argparse.HelpFormatter):
    """Help lines end with the default, written as it would be typed (comma lists, no None)."""

    def _get_help_string(self, action):
        text = action.help or ""
        value = action.default
        if "default" in text or value is None or value is False or value == argparse.SUPPRESS or not action.option_strings:
            return text
        if isinstance(value, (tuple, list)):
            value = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        return f"{text} (default: {value})"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


# -- value parsers (argparse turns their ValueError/ArgumentTypeError into a one-line usage error) --


def _int_at_least(minimum: int):
    """An argparse type: a whole number ≥ minimum."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {'> 0' if minimum == 1 else f'≥ {minimum}'}, got {value}")
        return value

    return parse


_integer, _positive_int, _nonneg_int = _int_at_least(-(2**63)), _int_at_least(1), _int_at_least(0)


def _iterations(text: str) -> int | tuple[int, ...]:
    """An argparse type for --iterations: a whole number, or comma-separated ones (one per scale)."""
    values = tuple(_integer(t) for t in text.split(","))
    return values if len(values) > 1 else values[0]


def _number(text: str) -> float:
    """An argparse type: any number; whether it is in range is Settings' (or the objective's) to say."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _finite_float(text: str) -> float:
    """An argparse type for the study tools' own options (gradcheck's --eps): a finite number ≥ 0."""
    value = _number(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number ≥ 0, got {text!r}")
    return value


def _float_list(text: str) -> tuple[float, ...]:
    return tuple(_number(part) for part in _split(text))


def _whole_list(text: str) -> tuple[int, ...]:
    return tuple(_integer(part) for part in _split(text))


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(_split(text, allow_empty=True))


def _split(text: str, allow_empty: bool = False) -> list[str]:
    parts = [p.strip() for p in text.split(",")]
    if parts == [""] and allow_empty:
        return []
    if any(not p for p in parts):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return parts


# -- subcommands ---------------------------------------------------------------------------------


def _add_stylize(subparsers) -> None:
    p = subparsers.add_parser(
        "stylize",
        help="paint CONTENT in the style of STYLE (no arguments: the embedded example)",
        description="Neural style transfer (Gatys et al. 2015). With no CONTENT/STYLE, stylizes the embedded example pair.",
        formatter_class=_DefaultsFormatter,
    )
    p.add_argument("content", nargs="?", help="content image (default: the embedded photo)")
    p.add_argument("styles", nargs="*", metavar="style", help="one or more style images (default: the embedded painting)")
    p.add_argument("-o", "--output", default="stylized.png", help="output image (.png, .jpg, .webp); the manifest goes beside it as .json")
    p.add_argument("--resume", metavar="OUT.json", help="continue an interrupted run from its manifest")
    _add_stylize_options(p)
    g = p.add_argument_group("cluster (a tiled picture's tiles as Dask tasks, the same picture as without)")
    g.add_argument("--workers", type=_positive_int, default=None, help="a local cluster of N worker processes")
    g.add_argument("--scheduler", metavar="ADDRESS", default=None, help="an existing Dask scheduler, e.g. tcp://host:8786")
    p.set_defaults(func=_run_stylize)


def _add_stylize_options(p, *, size_default=DEFAULTS.size, size_help="long side of the output in px",
                         iterations_default=None,
                         iterations_help=(f"optimiser iterations at each scale, or one number per scale (e.g. 100,50,20) "
                                          f"(default: {PICTURE_ITERATIONS} at each scale; {LARGE_ITERATIONS} at scales above {LARGE_SCALE} px)"),
                         per_image: bool = True) -> None:
    """The Settings options of stylize, registered on `p` (batch and video reuse them; per_image=False leaves
    out the per-image outputs: --save-every, --checkpoint-every, --plot, and --tile: a video is not tiled)."""
    g = p.add_argument_group("size and schedule")
    g.add_argument("--size", type=_integer, default=size_default, help=size_help)
    g.add_argument("--iterations", type=_iterations, default=iterations_default, help=iterations_help)
    g.add_argument("--scales", type=_float_list, default=DEFAULTS.scales,
                   help=f"coarse-to-fine fractions of --size, each optimised in turn (default: 0.5,1 up to --size {2 * FIRST_SCALE}; "
                        f"above, --size halved down to {FIRST_SCALE} px or less: 2048 -> 0.25,0.5,1)")
    g.add_argument("--seed", type=_integer, default=DEFAULTS.seed, help="random seed (noise init)")
    g = p.add_argument_group("objective")
    default_weight = lambda k: " / ".join(f"{DEFAULT_WEIGHTS[n][k]:g} with {n}" for n in NORMALIZATIONS)  # noqa: E731
    g.add_argument("--normalize", choices=NORMALIZATIONS, default=DEFAULTS.normalize,
                   help="size: content and TV terms as means, so the weights look the same at any --size; none: the seed article's sums")
    g.add_argument("--content-weight", type=_number, default=None, help="alpha (default: " + default_weight(0) + ")")
    g.add_argument("--style-weight", type=_number, default=None, help="beta (default: " + default_weight(1) + ")")
    g.add_argument("--tv-weight", type=_number, default=None, help="gamma, total variation (default: " + default_weight(2) + ")")
    g.add_argument("--content-layers", type=_name_list, default=DEFAULTS.content_layers, help="comma list of layer names")
    g.add_argument("--style-layers", type=_name_list, default=DEFAULTS.style_layers, help="comma list of layer names")
    g.add_argument("--style-layer-weights", type=_float_list, default=None, help="one weight per style layer (default: equal)")
    g.add_argument("--style-blend", type=_float_list, default=None, help="one weight per style image (default: equal)")
    g.add_argument("--style-scale", type=_number, default=DEFAULTS.style_scale, help="style images are resized to long side = size x this")
    g.add_argument("--pooling", choices=POOLINGS, default=DEFAULTS.pooling, help="VGG pooling")
    g.add_argument("--style-masks", nargs="+", metavar="MASK", default=None,
                   help="one greyscale mask per style image: where in the output that style applies (white: fully)")
    g.add_argument("--normalize-gradients", action="store_true", help="each layer's gradient divided by its L1 norm (Adam only; then the weights are each layer's pull: try --style-weight 2 to 5)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--init", default=DEFAULTS.init, help=f"start image: {'|'.join(INITS)}|PATH")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=DEFAULTS.optimizer, help="L-BFGS (strong-Wolfe line search) or Adam")
    g.add_argument("--learning-rate", type=_number, default=None, help="step scale (default: " + ", ".join(f"{v:g} for {k}" for k, v in DEFAULT_LEARNING_RATE.items()) + ")")
    g.add_argument("--lbfgs-history", type=_integer, default=DEFAULTS.lbfgs_history, help="L-BFGS memory (pairs kept)")
    g = p.add_argument_group("output")
    g.add_argument("--preserve-colors", action="store_true", help="keep the content's colours (luminance-only transfer; = --color luminance)")
    g.add_argument("--color", choices=COLORS, default=DEFAULTS.color,
                   help="the output's palette: the style's (none), luminance-only transfer, the style's colours linearly matched to the content's before, or histogram-matched after")
    if per_image:
        g.add_argument("--save-every", type=_integer, default=0, help="write OUT_iterNNNN every N iterations (0: never)")
        g.add_argument("--checkpoint-every", type=_integer, default=0, help="write a resumable checkpoint every N iterations")
        g.add_argument("--plot", action="store_true", help="write the loss curves as OUT_loss.png")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("engine")
    g.add_argument("--backend", choices=BACKENDS, default=DEFAULTS.backend, help="array library; auto = CuPy when a CUDA device works")
    g.add_argument("--dtype", choices=DTYPES, default=DEFAULTS.dtype, help="precision of the whole computation")
    g.add_argument("--conv", choices=CONV_ALGORITHMS, default=DEFAULTS.conv,
                   help="convolution: im2col + GEMM, Winograd F(4x4,3x3), or auto (Winograd where it is faster, in float32)")
    g.add_argument("--weights", metavar="PATH", default=None, help="VGG-16 weights file (default: $SCRATCHNST_WEIGHTS, the cache, or fetch)")
    g.add_argument("--max-memory", type=str, default=None, metavar="BYTES", help="memory the run may use, e.g. 2G, 500M (default: what the machine or GPU has available)")
    if per_image:
        g.add_argument("--tile", type=_integer, default=None, metavar="N",
                       help="evaluate the picture in tiles of N px (a multiple of 16 with the default layers), exactly; "
                            "0: never tile (default: tile only what does not fit in --max-memory)")


SETTING_NAMES = [f for f in Settings.__dataclass_fields__]


def _settings_options(args) -> dict:
    """The Settings options the command line gave (or defaulted)."""
    return {name: getattr(args, name) for name in SETTING_NAMES if hasattr(args, name)}


def _run_stylize(args) -> int:
    if args.resume:
        if args.content is not None:
            raise ScratchnstError("--resume takes no CONTENT/STYLE: the run's manifest names them")
        result = resume(args.resume, quiet=args.quiet, workers=args.workers, scheduler=args.scheduler)
    else:
        if args.content is not None and not args.styles:
            raise ScratchnstError("give at least one STYLE image after CONTENT")
        result = stylize(args.content, args.styles or None, out=args.output, workers=args.workers, scheduler=args.scheduler,
                         **_settings_options(args))
    print(f"{PROG}: {result.status}: wrote {result.paths.get('image')} and {result.paths.get('manifest')}", file=sys.stderr)
    if result.status == "interrupted":
        return 128 + _received_signal[0]
    return 0


def _add_batch(subparsers) -> None:
    p = subparsers.add_parser(
        "batch",
        help="stylize many pictures and videos on Dask: contents x styles, videos x styles, or a jobs file of sweeps",
        description=(
            "Every (content, style) pair of --contents and --styles (folders expand to their images), every "
            "(video, style) pair of --videos and --styles, or the jobs of --jobs, as Dask tasks (one per picture, "
            "one per video) on a local cluster or the one at --scheduler. Each output and manifest is what stylize "
            "or video writes; OUTDIR/batch.json has every job's status. Running the same command again skips "
            "finished jobs and resumes interrupted ones (a video at its first unfinished frame)."
        ),
        formatter_class=_DefaultsFormatter,
    )
    g = p.add_argument_group("jobs")
    g.add_argument("--contents", nargs="+", metavar="PATH", help="content images or folders of them")
    g.add_argument("--videos", nargs="+", metavar="PATH", help="video files (or folders of frames, one video each)")
    g.add_argument("--styles", nargs="+", metavar="PATH", help="style images or folders; each is one job per content and per video")
    g.add_argument("--jobs", metavar="JOBS.jsonl", help='instead: one JSON object per line, {"content": ... or "video": ..., "styles": [...], "output": ..., OPTION: VALUE}')
    g.add_argument("-o", "--output", metavar="OUTDIR", required=True, help="folder of the outputs, their manifests and batch.json")
    g = p.add_argument_group("cluster")
    g.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler, e.g. tcp://host:8786 (default: a local cluster)")
    g.add_argument("--workers", type=_positive_int, default=None, help="local worker processes (default: one per core, one per GPU on CuPy)")
    _add_stylize_options(
        p, size_default=None, size_help=f"long side of the output in px (default: {DEFAULTS.size} for a picture; a video's own)",
        iterations_default=None,
        iterations_help=(f"optimiser iterations at each scale (default: a picture's, {PICTURE_ITERATIONS} at each scale; "
                         f"for a video, each frame after the first: {ITERATIONS})"),
    )
    _add_video_options(p.add_argument_group("video jobs (--videos, or the video lines of --jobs)"))
    p.set_defaults(func=_run_batch)


def _run_batch(args) -> int:
    from scratchnst.app import batch as b

    if args.jobs and (args.contents or args.videos or args.styles):
        raise ScratchnstError("give --jobs, or --contents/--videos and --styles, not both")
    if not args.jobs and not ((args.contents or args.videos) and args.styles):
        raise ScratchnstError("give --contents and --styles (or --videos and --styles, or --jobs JOBS.jsonl)")
    check_cluster(args.workers, args.scheduler)
    jobs = b.read_jobs(args.jobs) if args.jobs else b.grid(args.contents or [], args.styles, args.videos or [])
    # size and iterations default by kind (a picture's, a video's); the video options concern video jobs only
    options = {k: v for k, v in _settings_options(args).items() if v is not None} | _video_options(args)
    quiet = options.pop("quiet")
    results = b.batch(jobs, out_dir=args.output, scheduler=args.scheduler, workers=args.workers, quiet=quiet, **options)
    for r in results:
        if r.status == "failed":
            print(f"{PROG}: failed: {r.output}: {r.error}", file=sys.stderr)
    counts = {s: sum(r.status == s for r in results) for s in ("done", "failed", "interrupted", "pending")}
    skipped = sum(r.skipped for r in results)
    summary = ", ".join(f"{n} {s}" + (f" ({skipped} already)" if s == "done" and skipped else "") for s, n in counts.items() if n)
    print(f"{PROG}: batch: {len(results)} jobs: {summary}; see {Path(args.output) / b.BATCH_FILE}", file=sys.stderr)
    if counts["interrupted"] or counts["pending"]:
        return 128 + _received_signal[0]
    return 1 if counts["failed"] else 0


def _frames_range(text: str) -> tuple[int, int | None]:
    try:
        return parse_frames(text)
    except ScratchnstError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--frames ")) from None


def _add_video_options(g) -> None:
    """video's own options (video.options.JOB_OPTIONS), on the argument group `g` of video or batch."""
    g.add_argument("--temporal-weight", type=_number, default=VIDEO.temporal_weight, help="weight of the temporal term (0: warped start only)")
    g.add_argument("--first-iterations", type=_positive_int, default=PICTURE_ITERATIONS, help="optimiser iterations at each scale for the first frame")
    g.add_argument("--frames", type=_frames_range, default=VIDEO.frames, metavar="A:B", help="input frames A (inclusive) to B (exclusive), 0-based (default: all)")
    g.add_argument("--independent", action="store_true", help="the flickering baseline: every frame from --init with --scales, no warp, no temporal term")
    g.add_argument("--fps", type=_number, default=None, help="frame rate of a folder of frames (default: 25; a video keeps its own)")
    g.add_argument("--passes", type=_nonneg_int, default=VIDEO.passes, help=(
        "a multi-pass mode after Ruder et al.: P passes over all frames, each frame of a pass a Dask task (pass 1 every frame "
        "on its own, then --iterations per frame and pass from its last result blended with its two neighbours'); 0: frame by frame"))
    g.add_argument("--stop-change", type=_number, default=VIDEO.stop_change, metavar="R", help=(
        f"a frame started from the warped previous one stops once its loss fell by less than R (relative) over {STOP_WINDOW} "
        f"iterations, --iterations the cap (default {VIDEO.stop_change}; 0: always --iterations)"))
    g.add_argument("--blend", type=_number, default=VIDEO.blend, help="multi-pass: weight of the warped neighbours in each frame's start")
    g.add_argument("--long-term", type=_whole_list, default=VIDEO.long_term, metavar="J", help=(
        "Ruder et al.'s long-term consistency: each frame is held to the outputs of the frames j back, for each j of the comma list "
        "J (1 among them, e.g. 1,10,20,40), where no closer one is reliable, so content that comes back looks as it did; "
        "default: the previous frame only"))


def _video_options(args) -> dict:
    return {name: getattr(args, name) for name in JOB_OPTIONS}


def _add_video(subparsers) -> None:
    p = subparsers.add_parser(
        "video",
        help="stylize a video (or a folder of frames) without flicker",
        description=(
            "Ruder et al. (2016): each frame starts from the previous output warped along the optical flow and a "
            "temporal term keeps it there where the motion is reliable. Finished frames are kept in OUT.work/ "
            "until the video is complete; --resume continues an interrupted run. --passes P is a multi-pass mode "
            "after theirs instead: every frame of a pass is an independent Dask task, so one video keeps many workers busy."
        ),
        formatter_class=_DefaultsFormatter,
    )
    p.add_argument("input", help="a video file (decoded with PyAV), or a folder of frames")
    p.add_argument("styles", nargs="+", metavar="style", help="one or more style images")
    p.add_argument("-o", "--output", required=True, help="the video to write (.mp4, .mov, .mkv, .webm), or FOLDER/ for PNG frames; the manifest goes beside it as .json")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run of this output at its first unfinished frame")
    g = p.add_argument_group("video")
    _add_video_options(g)
    g.add_argument("--workers", type=_nonneg_int, default=None, help="local Dask workers for the optical flow, and with --passes for the frames (default: one per core; 0: no Dask, all in this process)")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS", help="an existing Dask scheduler for the flow (and --passes frame) tasks, e.g. tcp://127.0.0.1:8786")
    _add_stylize_options(
        p, size_default=None, size_help="long side of the frames in px (default: the input's)",
        iterations_default=ITERATIONS, iterations_help="optimiser iterations for each frame after the first (one pass at full size)",
        per_image=False,
    )
    p.set_defaults(func=_run_video)


def _run_video(args) -> int:
    from scratchnst.app.video.run import video

    settings = _settings_options(args)
    result = video(args.input, args.styles, out=args.output, resume=args.resume, workers=args.workers, scheduler=args.scheduler,
                   **_video_options(args), **settings)
    if result.status == "failed":
        print(f"{PROG}: error: {result.manifest['error']}", file=sys.stderr)
    wrote = result.paths.get("output") or f"the finished frames to {result.paths['work']}"
    print(f"{PROG}: {result.status}: wrote {wrote} and {result.paths['manifest']}", file=sys.stderr)
    if result.status == "interrupted":
        return 128 + _received_signal[0]
    return 1 if result.status == "failed" else 0


def _add_weights(subparsers) -> None:
    p = subparsers.add_parser("weights", help="fetch, verify or locate the VGG-16 weights")
    p.add_argument("action", choices=("fetch", "verify", "path"))
    p.add_argument("--weights", metavar="PATH", default=None, help="a weights file to verify/locate instead of the default")
    p.add_argument("--force", action="store_true", help="fetch: download again even if a verified file exists")
    p.set_defaults(func=_run_weights)


def _run_weights(args) -> int:
    if args.action == "fetch":
        path = weights.fetch_weights(force=args.force)
    else:
        path = weights.resolve_weights(args.weights, fetch=False)
    if args.action == "verify":
        print(f"{path}: ok, sha256 {weights.verify_weights(path)}")
    else:
        print(path)
    return 0


def _add_gradcheck(subparsers) -> None:
    def _int_list(text: str) -> tuple[int, ...]:
        return tuple(_positive_int(part) for part in _split(text.replace("x", ",")))

    p = subparsers.add_parser(
        "gradcheck",
        help="check every backward pass against finite differences",
        description=(
            "With no --op/--vgg: every check, one table row each, exit 1 on any failure. "
            "--op shows one op's numbers (analytic vs numeric at sampled coordinates); "
            "--vgg walks the real VGG-16 layer by layer and names a broken backward."
        ),
    )
    p.add_argument("--op", choices=(*gc.OPS, "vgg", "all"), default=None, help="explain one op's check (all: every op, then --vgg)")
    p.add_argument("--vgg", action="store_true", help="layer-by-layer check of the objective's gradient through the real VGG-16")
    p.add_argument("--shape", type=_int_list, default=None, help="input N,C,H,W of --op (vgg: H,W of the image, default 32,32)")
    p.add_argument("--kernel", type=_positive_int, default=None, help="kernel size of conv2d (3) or the pools (2)")
    p.add_argument("--stride", type=_positive_int, default=None, help="stride of conv2d (1) or the pools (the kernel size)")
    p.add_argument("--pad", type=_nonneg_int, default=None, help="zero padding of conv2d (1) or winograd (0 or 1)")
    p.add_argument("--dtype", choices=DTYPES, default="float64")
    p.add_argument("--eps", type=_finite_float, default=None, help="finite-difference step (default 1e-5 float64, 1e-2 float32; vgg: relative to each stage's rms, 1e-4)")
    p.add_argument("--samples", type=_positive_int, default=5, help="coordinates shown per op / checked per VGG stage")
    p.add_argument("--seed", type=_nonneg_int, default=0)
    p.add_argument("--pooling", choices=POOLINGS, default=DEFAULTS.pooling, help="VGG pooling for --vgg")
    p.add_argument("--no-vgg", action="store_true", help="skip the checks through the real VGG-16 (needs the weights)")
    p.add_argument("--weights", metavar="PATH", default=None)
    p.set_defaults(func=_run_gradcheck)


def _run_gradcheck(args) -> int:
    explained = gc.OPS if args.op == "all" else (args.op,) if args.op in gc.OPS else ()
    layer_by_layer = args.vgg or args.op == "vgg" or (args.op == "all" and not args.no_vgg)
    if args.no_vgg and (args.vgg or args.op == "vgg"):
        raise ScratchnstError("--no-vgg contradicts --vgg / --op vgg")
    if not explained and not layer_by_layer:  # the plain table of every check
        if any(getattr(args, a) is not None for a in ("shape", "kernel", "stride", "pad", "eps")):
            raise ScratchnstError("--shape/--kernel/--stride/--pad/--eps need --op")
        net = None if args.no_vgg else weights.load_vgg16(args.weights, backend="numpy", dtype="float64")
        results = gc.run_checks(seed=args.seed, dtype=args.dtype, real_net=net)
        print(f"{'op':34s} {'shapes':44s} {'max rel error':>13s}  result")
        for r in results:
            print(f"{r.op:34s} {r.shapes:44s} {r.max_rel_error:13.2e}  {'pass' if r.passed else 'FAIL'}")
        failed = sum(not r.passed for r in results)
        print(f"{len(results) - failed} passed, {failed} failed")
        return 1 if failed else 0
    if args.op == "all" and args.shape is not None:
        raise ScratchnstError("--shape needs a single --op (shapes differ between ops)")
    failed = 0
    for op in explained:
        geometry = gc.Geometry(args.shape, args.kernel, args.stride, args.pad)
        report = gc.explain_op(op, geometry, dtype=args.dtype, eps=args.eps, samples=args.samples, seed=args.seed)
        print(gc.format_op_report(report), end="\n\n")
        failed += not report.passed
    if layer_by_layer:
        if args.dtype != "float64":
            raise ScratchnstError("the layer-by-layer VGG check runs in float64 only (float32 rounding would hide a bug)")
        size = (32, 32) if args.shape is None or args.op in gc.OPS else args.shape
        if len(size) == 4 and size[:2] == (1, 3):
            size = size[2:]
        if len(size) != 2:
            raise ScratchnstError(f"--shape for vgg is H,W (or 1,3,H,W), got {','.join(map(str, size))}")
        net = weights.load_vgg16(args.weights, backend="numpy", dtype="float64", pooling=args.pooling)
        options = {} if args.eps is None else {"rel_eps": args.eps}
        rows = gc.vgg_layer_check(net, np.random.default_rng(args.seed), size=size, coords=args.samples, **options)
        print(gc.format_layer_report(rows))
        failed += sum(not r.passed for r in rows)
    return 1 if failed else 0


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 256,512, got {text!r}") from None
    if not sizes or min(sizes) < 32:
        raise argparse.ArgumentTypeError(f"sizes must be ≥ 32 (five 2×2 pools), got {text!r}")
    return sizes


def _add_bench(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="time one objective evaluation per image size; GFLOP/s vs GEMM peak, peak RSS",
        description=(
            "Each size runs in a fresh subprocess: GEMM peak, then s/eval of NSTObjective.loss_and_grad at "
            "the default layers (min of --repeats after a warm-up), conv GFLOP/s, % of peak, peak RSS."
        ),
    )
    p.add_argument("--sizes", type=_sizes, default=None, help="comma-separated square sizes (default 128,256,512,1024)")
    p.add_argument("--include-2048", action="store_true", help="also run 2048×2048 (minutes, ~several GB)")
    p.add_argument("--repeats", type=_positive_int, default=3, help="timed evaluations per size (min is reported)")
    # Not "auto": a measurement names the backend it ran on.
    p.add_argument("--backend", choices=tuple(b for b in BACKENDS if b != "auto"), default="numpy")
    p.add_argument("--dtype", choices=DTYPES, default=DEFAULTS.dtype)
    p.add_argument("--conv", type=_name_list, default=("auto", "im2col"), help="comma list of convolution algorithms, each timed in its own process")
    p.add_argument("--profile", action="store_true", help="also break one evaluation down by layer and op")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of the table")
    p.set_defaults(func=_run_bench)


def _run_bench(args) -> int:
    sizes = tuple(args.sizes or bench.DEFAULT_SIZES) + ((2048,) if args.include_2048 else ())
    unknown_convs = [c for c in args.conv if c not in CONV_ALGORITHMS]
    if unknown_convs or not args.conv:
        raise ScratchnstError(f"--conv: {unknown('value', ','.join(unknown_convs), CONV_ALGORITHMS)}")
    bench.run(sizes, repeats=args.repeats, backend=args.backend, dtype=args.dtype, convs=args.conv, profile=args.profile, as_json=args.json)
    return 0


def _add_inspect(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="write pictures of features, Gram matrices and each loss term's gradient, with an index.html",
        description="Look inside the objective: writes PNGs and a static DIR/index.html to browse them (no server).",
    )
    p.add_argument("content", nargs="?", help="content image (default: the embedded photo)")
    p.add_argument("style", nargs="?", help="style image (default: the embedded painting)")
    p.add_argument("-o", "--output", metavar="DIR", default="inspect", help="output directory")
    p.add_argument("--size", type=_integer, default=study.SIZE, help="long side in px")
    p.add_argument("--layers", default=",".join(study.FEATURE_LAYERS), help="comma list of layers whose feature maps to show")
    p.add_argument("--iterations", type=_integer, default=0, help="also run N L-BFGS iterations and show the evolution")
    p.add_argument("--seed", type=_integer, default=0, help="seed of the noise start")
    p.add_argument("--backend", choices=BACKENDS, default=DEFAULTS.backend)
    p.add_argument("--conv", choices=CONV_ALGORITHMS, default=DEFAULTS.conv, help="convolution algorithm")
    p.add_argument("--weights", metavar="PATH", default=None)
    p.set_defaults(func=_run_inspect)


def _run_inspect(args) -> int:
    if args.content is not None and args.style is None:
        raise ScratchnstError("give a STYLE image after CONTENT")
    layers = [name.strip() for name in args.layers.split(",") if name.strip()]
    study.check_options(args.size, args.iterations, layers, args.output, args.seed)  # before the weights are read
    net = weights.load_vgg16(args.weights, backend=args.backend, dtype=DEFAULTS.dtype, conv=args.conv)
    index = study.inspect(
        args.content, args.style, args.output, size=args.size, layers=layers, iterations=args.iterations,
        seed=args.seed, net=net,
    )
    print(f"{PROG}: wrote {index}", file=sys.stderr)
    return 0


def _add_serve(subparsers) -> None:
    limits = studio.Limits()
    p = subparsers.add_parser(
        "serve", help="the web studio: pick images, watch the picture form, study its gradients (a local page)",
        description="A local web studio over the HTTP API in the README's Studio section; runs go to Dask workers.",
        formatter_class=_DefaultsFormatter,
    )
    p.add_argument("--host", default=studio.DEFAULT_HOST, help="address to listen on; any other than 127.0.0.1 requires the token")
    p.add_argument("--port", type=_nonneg_int, default=studio.DEFAULT_PORT, help="port (0: any free one; the address is printed)")
    p.add_argument("--token", default=None, help="the API's token (default: generated and printed for any --host but 127.0.0.1)")
    p.add_argument("--data", metavar="DIR", default=None, help="the studio's images and runs (default: $XDG_DATA_HOME/scratchnst/studio)")
    p.add_argument("--open", action="store_true", help="open the page in a browser")
    p.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler (default: a local cluster)")
    p.add_argument("--workers", type=_positive_int, default=None, help="local worker processes: runs at once (default: one per core)")
    g = p.add_argument_group("limits")
    g.add_argument("--max-upload", type=_positive_int, default=limits.upload_bytes, metavar="BYTES", help="bytes of the images of one request")
    g.add_argument("--max-pixels", type=_positive_int, default=limits.pixels, help="pixels of one uploaded image")
    g.add_argument("--max-size", type=_positive_int, default=limits.size, help="the output's long side in px (--size)")
    g.add_argument("--max-queued", type=_positive_int, default=limits.queued, help="runs queued or running at once")
    g = p.add_argument_group("runs")
    g.add_argument("--preview-every", type=_finite_float, default=studio.PREVIEW_EVERY_S, metavar="SECONDS", help="least time between two updates of a run (0: every iteration)")
    g.add_argument("--checkpoint-every", type=_positive_int, default=studio.CHECKPOINT_EVERY, help="iterations between two checkpoints of a run (what a restart resumes from)")
    p.set_defaults(func=_run_serve)


def _run_serve(args) -> int:
    from scratchnst.app.studio import server  # lazy: tornado and Dask load only for serve

    limits = studio.Limits(args.max_upload, args.max_pixels, args.max_size, args.max_queued)
    server.serve(host=args.host, port=args.port, data=args.data, token=args.token, scheduler=args.scheduler, workers=args.workers,
                 limits=limits, preview_every=args.preview_every, checkpoint_every=args.checkpoint_every, open_browser=args.open)
    return 0


# -- entry point ---------------------------------------------------------------------------------

_received_signal = [signal.SIGINT]


def _on_sigterm(signum, frame):
    _received_signal[0] = signum
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Neural style transfer from scratch: every backward pass by hand.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_add_stylize, _add_batch, _add_video, _add_weights, _add_gradcheck, _add_bench, _add_inspect, _add_serve):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    # --debug is accepted anywhere (before or after the subcommand).
    debug = "--debug" in argv
    args = parser.parse_args([a for a in argv if a != "--debug"])
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with host.engine_threads():
            return args.func(args)
    except ScratchnstError as exc:
        if debug:
            traceback.print_exc()
        print(f"{PROG}: error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 128 + _received_signal[0]
    except MemoryError as exc:  # NumPy's, CuPy's (a subclass) or images' (decoding): the run failed, the input was fine
        if debug:
            traceback.print_exc()
        detail = f" ({one_line(exc)})" if str(exc) else ""
        print(f"{PROG}: error: out of memory{detail}; try a smaller --size (or fewer/smaller style images)", file=sys.stderr)
        return 1
