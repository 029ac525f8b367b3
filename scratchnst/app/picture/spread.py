"""One picture's tiles on a Dask cluster (stylize --workers N, --scheduler ADDRESS): every pass of a
tiled evaluation (core/tiled.py) as Dask tasks, one a tile, their results added here in tile order,
so the picture is the same, byte for byte, as the one evaluated in this process.

    per scale        the objective (its targets and masks, not the net) is scattered to every
                     worker once; each worker evaluates it with its own net (cluster.WORKER_CACHE)
                     in the TileSteps it keeps for the scale's evaluations, and lets go of them
                     (the objective, the arena of a tile's arrays) when the next scale starts
    per evaluation   the image is scattered once; per pass, what the pass needs (the style terms'
                     dE/dG, the norms) once; then a task per tile (TileSteps.run)
    per result       held until the tiles before it are in, then added (TiledObjective's reduce)

The tasks go through cluster.run_tasks, the one loop of batch and video. A worker lost
mid-evaluation costs only its tiles: Dask runs them again on another (the image and the objective
were broadcast, so every worker holds them). A tile that raises fails the evaluation (TileFailed,
one line, exit 1); Ctrl-C waits for the running tiles and stops the run as in this process (a
checkpoint of the last accepted image). Before the first tile, each worker's memory limit is checked
against what its tiles need (check_memory): Dask pauses a worker above a share of its limit, and a
paused worker runs no task.
"""

from __future__ import annotations

import contextlib
import uuid
import weakref
from typing import Callable

from scratchnst.app.cluster import WORKER_CACHE, run_tasks
from scratchnst.app.engine import array_module
from scratchnst.app.picture.memory import format_bytes
from scratchnst.app.picture.plan import Plan, Workers, worker_core
from scratchnst.core.backend import is_cupy, to_host
from scratchnst.core.tiled import TiledObjective, TileSteps
from scratchnst.errors import ScratchnstError


class TileFailed(ScratchnstError):
    """A tile's task raised on the cluster (after Dask's own rescheduling of lost workers). Exit 1."""

    exit_code = 1


class Spread:
    """The `spread` of TiledObjective: runs each pass's tiles as tasks on `client`'s workers, which
    load the net of `settings` (picture.settings.Settings) once each."""

    def __init__(self, client, settings):
        self.client, self.settings = client, settings
        # (a weak reference to the scale's TiledObjective, its token, its objective's future): weak,
        # so that a finished scale's objective and targets go when the run lets go of them
        # (coarse_to_fine).
        self._scale = None

    def close(self) -> None:
        """Let go of the scale's objective on the workers."""
        if self._scale is not None:
            _, token, future = self._scale
            self._scale = None
            future.release()
            # The workers' TileSteps of it; a worker or scheduler that is gone keeps nothing.
            with contextlib.suppress(OSError, TimeoutError):
                self.client.run(_forget, token, on_error="ignore")

    @contextlib.contextmanager
    def tiles(self, tiled: TiledObjective, x):
        """run(step, args, reduce) for one evaluation of `tiled` at x: (1, 3, H, W)."""
        objective = self._objective(tiled)
        image = self.client.scatter(to_host(x), broadcast=True, hash=False)
        try:
            yield lambda step, args, reduce: self._run(tiled, objective, image, step, args, reduce)
        finally:
            image.release()

    def _objective(self, tiled: TiledObjective):
        """The future of (a token, tiled's objective, its core) on every worker, scattered on the
        scale's first evaluation (the token names the worker's TileSteps of it)."""
        if self._scale is None or self._scale[0]() is not tiled:
            self.close()
            token = uuid.uuid4().hex
            future = self._broadcast(f"scratchnst-objective-{token}", (token, tiled.objective, tiled.core))
            self._scale = (weakref.ref(tiled), token, future)
        return self._scale[2]

    def _broadcast(self, key: str, value):
        """The future of `value` (any object, a tuple included) on every worker, under Dask key `key`."""
        return self.client.scatter({key: value}, broadcast=True, hash=False)[key]

    def _run(self, tiled: TiledObjective, objective, image, step: str, args: tuple, reduce: Callable) -> None:
        """One pass: step(x, t, *args) of every tile on the workers, reduce(t, result) in tile order."""
        n, results, failed = len(tiled.tiles), {}, []
        shipped = self._broadcast(f"scratchnst-args-{uuid.uuid4().hex}", args) if args else None
        ready = [0]  # the next tile to reduce

        def submit(run_id: str, _interrupt: str) -> dict:
            return {self.client.submit(run_tile, self.settings, objective, step, image, t, shipped,
                                       key=f"scratchnst-tile-{step}-{t + 1}-{run_id}", pure=False): t for t in range(n)}

        def on_result(t: int, result) -> None:
            results[t] = result
            while ready[0] in results:
                reduce(ready[0], results.pop(ready[0]))
                ready[0] += 1

        try:
            outcome = run_tasks(self.client, submit, on_result, lambda t, line: failed.append((t, line)))
        finally:
            if shipped is not None:
                shipped.release()
        if outcome.interrupted:
            raise KeyboardInterrupt
        if failed:
            t, line = min(failed)
            raise TileFailed(f"tile {t + 1} of {n} failed on the cluster ({step}): {line}")


def check_memory(client, settings, plan: Plan, workers: Workers) -> None:
    """ScratchnstError (one line, before any tile runs) when one of `client`'s workers may hold less
    than its tiles need: the plan's worker_estimate against the share of the worker's memory limit
    above which Dask pauses it, and the --tile that would fit. No check on a GPU, whose memory the
    limit does not cover, nor for a worker without a limit."""
    need = max(s.worker_estimate for s in plan.scales)
    if not need or is_cupy(array_module(settings.backend)):
        return
    for address, (limit, share) in sorted(client.run(_memory_limit).items()):
        if limit and need > share * limit:
            core = worker_core(settings, plan, share * limit, workers.threads)
            hint = f", or --tile {core}" if core else ""
            raise ScratchnstError(
                f"worker {address} may hold {format_bytes(share * limit)} ({share:.0%} of its memory limit, where Dask pauses it) "
                f"and its tiles need an estimated {format_bytes(need)}: give the workers more memory (dask worker --memory-limit){hint}")


def _memory_limit(dask_worker=None) -> tuple[int, float]:
    """On a worker (client.run passes it): (its memory limit in bytes, 0 for none; the share of it
    above which Dask pauses it, 1 where it never does)."""
    manager = dask_worker.memory_manager
    return int(manager.memory_limit or 0), float(manager.memory_pause_fraction or 1.0)


def _forget(token: str) -> None:
    """On a worker: let go of the TileSteps of the scale `token` names."""
    WORKER_CACHE.forget(token)


def run_tile(settings, objective: tuple, step: str, x, t: int, args: tuple | None):
    """On a worker: tile t's `step` of the shipped objective ((token, NSTObjective, core)), with this
    worker's net, by the TileSteps it keeps for the scale (TileSteps.run)."""
    token, shipped, core = objective

    def make() -> TileSteps:
        return TileSteps(shipped.attached(WORKER_CACHE.net(settings)), core)

    steps = WORKER_CACHE.of_run(token, "tiles", make)
    return steps.run(step, steps.objective.net.xp.asarray(x), t, *(args or ()))
