"""Batch mode: many stylize and video jobs (contents x styles, videos x styles, or a jobs file for
sweeps) as Dask tasks.

Dask distributed schedules the tasks, moves them off a dead worker and retries them; this module
keeps to what is ours: the jobs and their output names, their options (checked once, on the
client), OUTDIR/batch.json, skipping finished jobs and resuming checkpointed ones. The loop over
the tasks (its failure policy: a job that raises fails alone), the per-worker cache (the loaded
network, each style's Gram targets) and how Ctrl-C in the client reaches the running jobs (a Dask
Event they poll) are cluster's, shared with video's multi-pass mode.

Each picture job is `stylize` with the same arguments: the same picture bytes, and its manifest
beside it. Each video job is `video` on one worker (its flows computed there, as --workers 0): its
output, manifest and work folder as `video` writes them, so a stopped job resumes at its first
unfinished frame.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from scratchnst.app import cluster
from scratchnst.app.files import report
from scratchnst.app.files.atomic import atomic_write_bytes
from scratchnst.app.files.images import IMAGE_SUFFIXES
from scratchnst.app.picture.memory import estimate_peak_bytes
from scratchnst.app.picture.settings import Settings, comparable_args
from scratchnst.app.picture.stylize import resume, stylize_settings
from scratchnst.app.video.clip import VIDEO_FORMATS, parse_frames
from scratchnst.app.video.frame import Shared
from scratchnst.app.video.options import JOB_OPTIONS, PICTURE_ONLY, VideoOptions, validated_settings, video_settings
from scratchnst.app.video.run import VideoRun, same_run
from scratchnst.errors import ScratchnstError, one_line

OPTION_NAMES = tuple(f.name for f in fields(Settings))
BATCH_FILE = "batch.json"


@dataclass
class Job:
    """One stylize or video run: inputs (absolute), the output path (absolute), its options."""

    content: str  # the content picture, or the video (a file or a folder of frames)
    styles: list[str]
    output: str
    options: dict = field(default_factory=dict)
    line: int | None = None  # the jobs-file line, for messages
    kind: str = "picture"  # or "video"
    settings: Settings | None = None  # its options, validated (checked), on the client
    video: VideoOptions | None = None  # a video job's own options, validated


@dataclass
class JobResult:
    """A job's row in batch.json (status: done, failed, interrupted or pending)."""

    output: str
    content: str
    styles: list[str]
    status: str = "pending"
    error: str | None = None
    seconds: float | None = None
    worker: str | None = None
    manifest: str | None = None
    skipped: bool = False  # done by an earlier run of the batch
    line: int | None = None
    kind: str = "picture"  # or "video"


def _result(job: Job, **fields_) -> JobResult:
    return JobResult(job.output, job.content, job.styles, line=job.line, kind=job.kind, **fields_)


# -- jobs ------------------------------------------------------------------------------------------


def expand_images(paths) -> list[str]:
    """Paths as given, each folder replaced by its images (IMAGE_SUFFIXES, sorted by name)."""
    found = []
    for p in map(str, paths):
        if os.path.isdir(p):
            images = sorted(e.path for e in os.scandir(p) if e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise ScratchnstError(f"{p}: no images in this folder ({', '.join(IMAGE_SUFFIXES)})")
            found += images
        else:
            found.append(p)
    return found


def grid(contents, styles, videos=()) -> list[dict]:
    """The cross products: one job per (content, style), then one per (video, style); folders of
    contents and styles expanded to their images (a video may be a folder of frames: one video)."""
    contents, styles = expand_images(contents), expand_images(styles)
    return [{"content": c, "styles": [s]} for c in contents for s in styles] + [{"video": str(v), "styles": [s]} for v in videos for s in styles]


def read_jobs(path) -> list[dict]:
    """The jobs of a jobs file: one JSON object per line (blank lines skipped), each with
    `content` (or `video`), `styles` (a path or a list), optional `output` and stylize (or video)
    options. Relative input paths are relative to the file's folder. A malformed line raises
    ScratchnstError naming the file and line."""
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ScratchnstError(f"{p}: cannot read the jobs file ({one_line(exc)})") from None
    jobs = []
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            job = json.loads(raw)
        except ValueError as exc:
            raise ScratchnstError(f"{p}:{n}: not JSON ({one_line(exc)})") from None
        try:
            check_job(job)
        except ScratchnstError as exc:
            raise ScratchnstError(f"{p}:{n}: {exc}") from None
        for key in ("content", "video", "styles"):
            if key in job:
                job[key] = _relative_to(p.parent, job[key])
        jobs.append(dict(job, line=n))
    if not jobs:
        raise ScratchnstError(f"{p}: no jobs in the file")
    return jobs


def _relative_to(folder: Path, value):
    if isinstance(value, list):
        return [_relative_to(folder, v) for v in value]
    return str(folder / value)


def check_job(job) -> None:
    """ScratchnstError unless `job` has the shape of a job (its options are checked when it runs)."""
    if not isinstance(job, dict):
        raise ScratchnstError(f"a job is a JSON object, got {type(job).__name__}")
    if "video" in job and "content" in job:
        raise ScratchnstError('a job has "content" (a picture) or "video", not both')
    if "video" in job:
        if not isinstance(job["video"], str) or not job["video"]:
            raise ScratchnstError('"video" must be a video path')
    elif not isinstance(job.get("content"), str) or not job["content"]:
        raise ScratchnstError('a job needs "content": an image path (or "video": a video path)')
    styles = job.get("styles")
    if not (isinstance(styles, str) and styles) and not (isinstance(styles, list) and styles and all(isinstance(s, str) and s for s in styles)):
        raise ScratchnstError('a job needs "styles": an image path or a list of them')
    if "output" in job and (not isinstance(job["output"], str) or not job["output"]):
        raise ScratchnstError('"output" must be a path')


def plan(jobs, out_dir, options: dict | None = None) -> list[Job]:
    """Jobs with their outputs: `output` resolved against out_dir (a trailing / kept: a video's folder
    of frames), else `{content}__{style}.png` (a video: `{video}__{style}` with the video's suffix, or
    .mp4) from the file stems, with `-2`, `-3`, ... where names would collide. Names depend only on
    the jobs and their order. Two jobs given the same output raise ScratchnstError. `options` apply
    to every job they concern (see _applicable); a job's own win."""
    out_dir = Path(out_dir).expanduser().resolve()
    planned, taken = [], {report.manifest_path(out_dir / BATCH_FILE).as_posix().casefold(): "batch.json"}
    for i, job in enumerate(jobs):
        where = f"line {job['line']}" if isinstance(job, dict) and job.get("line") else f"job {i + 1}"
        try:
            check_job(job)
        except ScratchnstError as exc:
            raise ScratchnstError(f"{where}: {exc}") from None
        kind, source = ("video", job["video"]) if "video" in job else ("picture", job["content"])
        styles = [job["styles"]] if isinstance(job["styles"], str) else list(job["styles"])
        own = {k: v for k, v in job.items() if k not in ("content", "video", "styles", "output", "line")}
        inputs = [os.path.abspath(os.path.expanduser(p)) for p in (source, *styles)]  # workers have other cwds
        planned.append(Job(inputs[0], inputs[1:], job.get("output"), {**_applicable(options or {}, kind), **own}, job.get("line"), kind))
        if planned[-1].output is not None:
            given = planned[-1].output
            planned[-1].output = str((out_dir / Path(given).expanduser()).resolve()) + ("/" if given.endswith(("/", os.sep)) else "")
            _claim(taken, planned[-1].output, where)
    labels = _stem_labels([p for job in planned for p in (job.content, *job.styles)])
    for job in planned:
        if job.output is None:
            suffix = _video_suffix(job.content) if job.kind == "video" else ".png"
            base = f"{labels[job.content]}__{'+'.join(labels[s] for s in job.styles)}"
            name, k = base, 1
            while _key(out_dir / f"{name}{suffix}") in taken:
                k += 1
                name = f"{base}-{k}"
            job.output = str(out_dir / f"{name}{suffix}")
            _claim(taken, job.output, "")
    return planned


def _applicable(options: dict, kind: str) -> dict:
    """The batch-wide options that concern a job of `kind`: video's own (video.options.JOB_OPTIONS)
    go to video jobs only, one picture's own (PICTURE_ONLY: --save-every, --checkpoint-every,
    --plot, --tile) to picture jobs only, every other option (an unknown name too, which fails the
    job) to both."""
    other = PICTURE_ONLY if kind == "video" else JOB_OPTIONS
    return {k: v for k, v in options.items() if k.replace("-", "_") not in other}


def _video_suffix(video: str) -> str:
    """A video job's default output suffix: its input's, when we can write that container, else .mp4."""
    suffix = Path(video).suffix.lower()
    return suffix if suffix in VIDEO_FORMATS else ".mp4"


def _key(output) -> str:
    """Two outputs collide when their manifests do (x.png and x.jpg share x.json), ignoring case."""
    return report.manifest_path(Path(output)).as_posix().casefold()


def _claim(taken: dict, output: str, where: str) -> None:
    key = _key(output)
    if key in taken:
        raise ScratchnstError(f"{where}: output {output} collides with {taken[key]}'s (same manifest {report.manifest_path(Path(output)).name})")
    taken[key] = where or output


def _stem_labels(paths) -> dict[str, str]:
    """Each distinct path's file stem; a stem already used by another path gets -2, -3, ..."""
    labels, used = {}, {}
    for p in paths:
        if p in labels:
            continue
        stem = Path(p).stem or "image"
        used[stem.casefold()] = used.get(stem.casefold(), 0) + 1
        labels[p] = stem if used[stem.casefold()] == 1 else f"{stem}-{used[stem.casefold()]}"
    return labels


# -- one job's options, checked once on the client -----------------------------------------------


def job_settings(job: Job) -> Settings:
    """The validated Settings of a picture job; ScratchnstError for an unknown or bad option."""
    options = _named_options(job, OPTION_NAMES, "the options are stylize's, see scratchnst stylize --help")
    return Settings(**options).validated(len(job.styles))


def video_job_settings(job: Job) -> tuple[Settings, VideoOptions]:
    """(Settings, VideoOptions) of a video job, validated: stylize's options but one picture's extra
    outputs, and video's own (frames as "A:B" or [A, B]), with video's defaults (size None: the
    input's; iterations: for each frame after the first). Its flows are computed in its own process
    (workers 0). ScratchnstError for a bad option; the size is checked once the clip is read."""
    names = [n for n in OPTION_NAMES if n not in PICTURE_ONLY] + list(JOB_OPTIONS)
    options = _named_options(job, names, "a video job takes video's options, see scratchnst video --help")
    own = {k: options.pop(k) for k in JOB_OPTIONS if k in options}
    frames = own.get("frames", "0:")
    if isinstance(frames, (list, tuple)) and len(frames) == 2:
        frames = ":".join("" if f is None else str(f) for f in frames)
    if not isinstance(frames, str):
        raise ScratchnstError(f'"frames" takes "A:B" or [A, B] (got {frames!r})')
    own["frames"] = parse_frames(frames)
    if not isinstance(own.get("independent", False), bool):
        raise ScratchnstError(f'"independent" takes true or false (got {own["independent"]!r})')
    video = VideoOptions(**own, workers=0).validated()
    return validated_settings(video_settings(**options), len(job.styles)), video


def checked(job: Job) -> Job:
    """The job with its options validated (Job.settings, Job.video); ScratchnstError for a bad one."""
    if job.kind == "video":
        settings, video = video_job_settings(job)
        return replace(job, settings=settings, video=video)
    return replace(job, settings=job_settings(job))


def _named_options(job: Job, names, known: str) -> dict:
    """The job's options ("style-weight" or "style_weight"), quiet (the batch has one bar over the
    jobs); ScratchnstError for a name not in `names`."""
    options = {k.replace("-", "_"): v for k, v in job.options.items()}
    for name in options:
        if name not in names:
            raise ScratchnstError(f"unknown option {name!r} ({known})")
    return {**options, "quiet": True}


def _same_run(manifest: dict, job: Job, settings: Settings) -> bool:
    """Whether a job manifest describes this job: the same inputs and every resolved option."""
    inputs = [str(Path(p).resolve()) for p in (job.content, *job.styles)]
    return comparable_args(manifest.get("args", {})) == comparable_args(settings.as_args()) and [manifest.get("content"), *manifest.get("styles", [])] == inputs


def read_manifest(output: str) -> dict | None:
    try:
        manifest = json.loads(report.manifest_path(Path(output)).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _resumable(job: Job, settings: Settings) -> bool:
    manifest = read_manifest(job.output)
    if manifest is None or manifest.get("status") not in ("interrupted", "running") or not _same_run(manifest, job, settings):
        return False
    try:
        report.read_resumable(report.manifest_path(Path(job.output)))
    except ScratchnstError:  # no readable checkpoint: start again
        return False
    return True


# -- one job, on a worker ----------------------------------------------------------------------------


def run_job(job: Job, batch_id: str, interrupt_name: str) -> JobResult:
    """The task: run one checked job with this worker's cached net and style targets: a picture
    (resumed when its manifest holds a checkpoint of the same run) or a video (resumed at its first
    unfinished frame when its work folder holds the same run). A user error is a failed result."""
    started = time.perf_counter()
    result = _result(job, worker=cluster.worker_address())
    interrupt = cluster.Interrupt(interrupt_name)
    if interrupt.is_set():  # Ctrl-C came before this job started: leave it for the next run
        return result
    try:
        run = _run_video if job.kind == "video" else _run_picture
        style_cache = cluster.WORKER_CACHE.of_run(batch_id, "grams", lambda: cluster.LRU(64))
        result.status, result.manifest, result.error = run(job, style_cache, interrupt.poll)
    except ScratchnstError as exc:
        result.status, result.error = "failed", one_line(exc)
        result.manifest = _manifest_if_any(job)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def _manifest_if_any(job: Job) -> str | None:
    manifest = report.manifest_path(Path(job.output))
    return str(manifest) if manifest.is_file() else None


def _run_picture(job: Job, style_cache: dict, on_progress) -> tuple[str, str | None, None]:
    """stylize (or resume) one picture job; (its status, its manifest, None)."""
    share = {"net": cluster.WORKER_CACHE.net(job.settings), "style_cache": style_cache, "on_progress": on_progress}
    if _resumable(job, job.settings):
        done = resume(report.manifest_path(Path(job.output)), quiet=True, **share)
    else:
        done = stylize_settings(job.content, job.styles, job.settings, out=job.output, **share)
    return done.status, done.paths.get("manifest"), None


def _run_video(job: Job, style_cache: dict, on_progress) -> tuple[str, str | None, str | None]:
    """One video job, its flows computed here; (its status, its manifest, its error: a multi-pass
    video whose frame failed)."""
    shared = Shared(net=cluster.WORKER_CACHE.net(job.settings), style_cache=style_cache)
    run = VideoRun(job.content, job.styles, job.settings, job.output, job.video, resume="auto", shared=shared, on_progress=on_progress)
    done = run.run()
    return done.status, done.paths.get("manifest"), done.manifest.get("error")


# -- the batch, from the client ----------------------------------------------------------------------


def batch(jobs, client=None, *, out_dir, scheduler: str | None = None, workers: int | None = None,
          quiet: bool = True, **options) -> list[JobResult]:
    """Run stylize and video jobs on Dask: `jobs` are dicts with content (or video), styles, optional
    output and stylize (or video) options (see grid and read_jobs); `options` apply to every job
    they concern (a job's own win).

    client: a distributed.Client to use; else one on `scheduler`, else a local cluster (`workers`
    processes; default: cluster.local_layout). Writes each job's picture (or video) and manifest
    (as stylize and video do) and out_dir/batch.json. A job with a bad option fails at once, with
    the message stylize or video gives. Jobs whose manifest says done with the same inputs and
    options are skipped; interrupted or checkpointed ones resume (a video at its first unfinished
    frame). Ctrl-C: running jobs save a checkpoint (a video its finished frames), and the results
    say "interrupted"/"pending". Returns one JobResult per job, in job order.
    """
    planned = [_check(job) for job in plan(jobs, out_dir, options)]
    out_dir = Path(out_dir).expanduser().resolve()
    previous = _previous_results(out_dir)
    results = [job if isinstance(job, JobResult) else _skip(job, previous) or _result(job) for job in planned]
    todo = {i: job for i, (job, r) in enumerate(zip(planned, results)) if r.status == "pending"}
    if not todo:  # nothing to run: no cluster needed
        write_batch_file(out_dir, results, [])
        return results
    if client is not None:
        return _run(todo, results, client, out_dir, quiet)
    gpus = 0 if scheduler else cluster.gpu_count(options.get("backend", "auto"))
    with cluster.client(scheduler, workers=workers, gpus=gpus, quiet=True, job_bytes=_job_bytes(todo.values())) as c:
        return _run(todo, results, c, out_dir, quiet)


def _check(job: Job) -> Job | JobResult:
    """The job, its options validated (checked); its failed result for a bad option."""
    try:
        return checked(job)
    except ScratchnstError as exc:
        return _result(job, status="failed", error=one_line(exc), manifest=_manifest_if_any(job))


def _job_bytes(jobs) -> int | None:
    """The peak memory of the largest job, with square images (the most pixels a long side allows;
    a video of unknown size at the picture default): what a local worker must have room for."""
    sizes = [(job.settings, job.settings.size or Settings.size) for job in jobs]
    return max(estimate_peak_bytes(replace(s, size=side), (side, side), [(side, side)]) for s, side in sizes)


def _skip(job: Job, previous: dict) -> JobResult | None:
    """The done result of a job an earlier run finished (same inputs and options), else None."""
    manifest = read_manifest(job.output)
    there = os.path.exists(job.output) if job.kind == "video" else os.path.isfile(job.output)  # a video may be a folder of frames
    if manifest is None or manifest.get("status") != "done" or not there or not _same_job(manifest, job):
        return None
    worker = previous.get(job.output, {}).get("worker")
    return _result(job, status="done", seconds=manifest.get("elapsed_s"), worker=worker,
                   manifest=str(report.manifest_path(Path(job.output))), skipped=True)


def _same_job(manifest: dict, job: Job) -> bool:
    if job.kind == "video":
        return same_run(manifest, job.content, job.styles, job.settings, job.video)
    return _same_run(manifest, job, job.settings)


def _previous_results(out_dir: Path) -> dict:
    try:
        return {r["output"]: r for r in json.loads((out_dir / BATCH_FILE).read_text())["jobs"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def write_batch_file(out_dir: Path, results: list[JobResult], workers: list[str]) -> Path:
    counts = {s: sum(r.status == s for r in results) for s in ("done", "failed", "interrupted", "pending")}
    data = {"version": report.version(), "out_dir": str(out_dir), "workers": workers, "counts": counts,
            "jobs": [asdict(r) for r in results]}
    path = out_dir / BATCH_FILE
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())
    return path


def _check_workers(client, jobs) -> list[str]:
    """The workers' addresses, once each has shown it can read the inputs the client sees and write
    every output folder; ScratchnstError naming the worker and path otherwise."""
    readable = sorted({p for job in jobs for p in (job.content, *job.styles) if os.path.exists(p)})
    folders = sorted({str(Path(job.output).parent) for job in jobs})
    return cluster.check_workers(client, readable, folders, "batch")


def _run(todo: dict, results: list[JobResult], client, out_dir: Path, quiet: bool) -> list[JobResult]:
    """Run the jobs of `todo` ({index: checked Job}), one Dask task each (cluster.run_tasks), and
    put their results in `results`: a task that raised is a failed job; after Ctrl-C, one still
    running when the wait ends is "interrupted"."""
    workers = _check_workers(client, todo.values())
    write_batch_file(out_dir, results, workers)
    bar = report.progress_bar(len(results), initial=len(results) - len(todo), disable=quiet, unit="job")

    def submit(batch_id, interrupt_name):
        return {client.submit(run_job, job, batch_id, interrupt_name, key=f"scratchnst-job-{batch_id}-{i}",
                              retries=cluster.RETRIES, pure=False): i for i, job in todo.items()}

    def done(i, result):
        results[i] = result
        bar.set_postfix_str(", ".join(f"{s} {n}" for s in ("done", "failed") if (n := sum(r.status == s for r in results))), refresh=False)
        bar.update(1)
        write_batch_file(out_dir, results, workers)

    def failed(i, message):
        results[i].status, results[i].error = "failed", message
        done(i, results[i])

    try:
        outcome = cluster.run_tasks(client, submit, done, failed)
    finally:
        bar.close()
    for i in outcome.unfinished:
        results[i].status = "interrupted"
    write_batch_file(out_dir, results, workers)
    return results
