"""The style-transfer workflow: images in, optimised picture out, coarse to fine.

    inputs.py          read and check the content, styles, masks, start image, output; the memory; the net
    plan.py            the memory plan: each scale whole or tile by tile, the L-BFGS history that fits
    targets.py         the styles at each scale and their Gram matrices, computed once
    coarse_to_fine.py  the optimisation: preprocess → NSTObjective → optimiser, scale after scale
    outputs.py         the picture (colour control, alpha), checkpoints, plot, manifest
    spread.py          a tiled picture's tiles as Dask tasks (--workers, --scheduler)

`stylize()` is the Python API; the CLI is a thin layer over it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field, replace

from PIL import Image

from scratchnst.app.files import report
from scratchnst.app.files.images import DEFAULT
from scratchnst.app.picture.coarse_to_fine import CoarseToFine, NonFiniteError
from scratchnst.app.picture.inputs import Inputs, load_net, read_inputs, style_list
from scratchnst.app.picture.outputs import Outputs
from scratchnst.app.picture.plan import Plan, Workers
from scratchnst.app.picture.settings import Settings, int_option
from scratchnst.app.picture.targets import StyleTargets
from scratchnst.errors import ScratchnstError

__all__ = ["NonFiniteError", "Result", "resume", "stylize", "stylize_settings"]


@dataclass
class Result:
    image: Image.Image
    history: list[dict]
    manifest: dict
    status: str = "done"
    paths: dict = field(default_factory=dict)


def stylize(content=None, styles=None, *, out=None, on_progress=None, on_picture=None, net=None, style_cache=None,
            workers=None, scheduler=None, **options) -> Result:
    """Stylize `content` with `styles` (paths, PIL images or uint8 RGB arrays; both default to the
    embedded pair). Options are the Settings fields (size, iterations, scales, content_weight, ...).
    With `out`, writes the image, the manifest (OUT with .json) and the extras the options ask for.
    Returns a Result (image as PIL, history, manifest dict, status "done" or "interrupted").
    A non-finite loss/gradient raises NonFiniteError after saving the last finite image (status
    "failed"; the Result is on the exception's `.result`).

    on_progress(entry) is called with each iteration's history entry; returning True stops the run
    as Ctrl-C does (status "interrupted", a checkpoint kept). on_picture(history, picture) is called
    after each iteration with the history so far and a function that makes the picture so far (as
    the output would be, colour control included) when called (the studio's previews). net: an
    already loaded VGG16, used when it matches the settings (batch workers keep one). style_cache:
    a dict the caller keeps across runs, holding the Gram targets of named style images (batch jobs
    share them).

    workers (a local cluster of that many processes) or scheduler (the address of an existing Dask
    scheduler): the tiles of each tiled scale's evaluations run as Dask tasks on the cluster's
    workers (spread.py), with the same result as in this process; the run must be tiled (--tile N,
    or a picture larger than the memory budget).
    """
    if isinstance(styles, (str, os.PathLike, Image.Image)):
        styles = [styles]
    styles = style_list(styles)
    settings = Settings(**options).validated(len(styles))
    return stylize_settings(content, styles, settings, out=out, on_progress=on_progress, on_picture=on_picture, net=net,
                            style_cache=style_cache, workers=workers, scheduler=scheduler)


def stylize_settings(content, styles, settings: Settings, *, out=None, on_progress=None, on_picture=None, net=None,
                     style_cache=None, workers=None, scheduler=None) -> Result:
    """stylize with `settings` already validated (Settings.validated's return value, for as many
    styles as `styles` lists): the inputs are read and checked, the options are not again."""
    check_cluster(workers, scheduler)
    inputs = read_inputs(content, style_list(styles), settings, out, workers=_plan_workers(workers, scheduler))
    return _run(inputs, settings, net=net, style_cache=style_cache, on_progress=on_progress, on_picture=on_picture,
                cluster_at=(workers, scheduler))


def resume(manifest_path, *, quiet=None, on_progress=None, on_picture=None, net=None, style_cache=None, workers=None,
           scheduler=None) -> Result:
    """Continue the interrupted run described by `manifest_path` (OUT.json) to its end, with the
    memory plan it recorded (tiled where it was, the same L-BFGS history); workers, scheduler: as
    stylize's (the same picture with or without them)."""
    check_cluster(workers, scheduler)
    manifest, state = report.read_resumable(manifest_path)
    settings = Settings.from_args(manifest["args"])
    if quiet is not None:
        settings = replace(settings, quiet=quiet)
    sources = [manifest["content"], *manifest["styles"], *(manifest["args"].get("style_masks") or [])]
    if any(src.startswith("<") and src != DEFAULT for src in sources):
        raise ScratchnstError(f"{manifest_path}: the run used in-memory images, which cannot be reloaded to resume")
    content, *styles = sources[: 1 + len(manifest["styles"])]
    styles = style_list(styles)
    settings = settings.validated(len(styles))
    plan = Plan.from_dict(manifest["plan"]) if manifest.get("plan") else None
    inputs = read_inputs(content, styles, settings, manifest["output"], plan, _plan_workers(workers, scheduler))
    return _run(inputs, settings, net=net, style_cache=style_cache, on_progress=on_progress, on_picture=on_picture,
                resume_state=state, cluster_at=(workers, scheduler))


def check_cluster(workers, scheduler) -> None:
    """ScratchnstError unless workers (None or a whole number > 0) and scheduler (None or an address)
    leave one way to find the cluster (stylize's and batch's)."""
    if workers is not None:
        int_option("workers", workers)
    if workers is not None and scheduler is not None:
        raise ScratchnstError("--workers sizes a local cluster; the cluster at --scheduler has its own")


def _plan_workers(workers, scheduler) -> Workers | None:
    """The workers the memory plan counts: `workers` local processes sharing the cores, none on this
    machine for a cluster at `scheduler` (each worker's own limit is checked once it is up), None
    without a cluster."""
    if workers is None and scheduler is None:
        return None
    from scratchnst.app import cluster  # Dask, only for a run that asks for a cluster

    return Workers(workers, cluster.engine_threads_per_worker(workers)) if workers else Workers(0, 1)


@contextlib.contextmanager
def _spread(settings: Settings, plan: Plan, workers, scheduler):
    """A Spread on the cluster that `workers` or `scheduler` names, its workers' memory checked
    against `plan`, closed on exit; None when neither."""
    if workers is None and scheduler is None:
        yield None
        return
    # Lazy imports: Dask (cluster, spread) only for a run that asks for a cluster.
    from scratchnst.app import cluster
    from scratchnst.app.picture.spread import Spread, check_memory

    with cluster.client(scheduler, workers=workers) as c:
        cluster.check_workers(c, [], [], "stylize")
        check_memory(c, settings, plan, _plan_workers(workers, scheduler))
        spread = Spread(c, settings)
        try:
            yield spread
        finally:
            spread.close()


def _run(inputs: Inputs, settings: Settings, *, net, style_cache, on_progress, on_picture=None, resume_state=None,
         cluster_at=(None, None)) -> Result:
    """Optimise (from `resume_state`, a read checkpoint, if given) and write the outputs; with
    cluster_at = (workers, scheduler) naming a cluster, the tiles on its workers."""
    if cluster_at != (None, None) and (inputs.plan is None or not inputs.plan.tiled):
        raise ScratchnstError("--workers and --scheduler spread the tiles of a tiled picture, and this one is evaluated "
                              "whole: give --tile N to tile it")
    net = load_net(settings, net)
    outputs = Outputs(settings, inputs, net)

    def after_step(run) -> None:
        outputs.periodic(run)
        if on_picture is not None:
            on_picture(run.history, lambda: outputs.image(run))

    with _spread(settings, inputs.plan, *cluster_at) as spread:
        run = CoarseToFine(settings, inputs, net, StyleTargets(net, settings, inputs.styles, style_cache),
                           on_progress=on_progress, after_step=after_step, spread=spread)
        status, error = run.run(resume_state)
    image, manifest, paths = outputs.finish(run, status, error)
    result = Result(image, run.history, manifest, status, paths)
    if error is not None:
        error.result = result
        raise error
    return result
