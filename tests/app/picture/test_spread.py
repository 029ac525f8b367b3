"""A tiled picture's tiles as Dask tasks (spread.py): the same bytes as the tiles evaluated in this
process, on an in-process cluster for every pass and option and on real `dask` processes with a
worker SIGKILLed mid-evaluation, or Ctrl-C mid-evaluation and a resume; a tile that raises; the
command line's refusals."""

from __future__ import annotations

import json
import pickle
import re
import signal

import numpy as np
import pytest
from PIL import Image

from scratchnst.app.cluster import WORKER_CACHE
from scratchnst.app.picture.settings import Settings
from scratchnst.app.picture.spread import Spread, TileFailed
from scratchnst.core.objective import NSTObjective
from scratchnst.core.tiled import TiledObjective, TileSteps

pytestmark = pytest.mark.weights


def _objective(vgg16, rng, dtype: str, **options) -> NSTObjective:
    net = vgg16("numpy", dtype)
    content = rng.uniform(-100, 100, (1, 3, 40, 56)).astype(dtype)
    styles = [rng.uniform(-100, 100, (1, 3, 36, 30)).astype(dtype) for _ in range(2)]
    if "style_masks" in options:
        left = np.zeros((40, 56))
        left[:, :30] = 1
        options["style_masks"] = [left, 1 - left]
    else:
        styles = styles[:1]
    return NSTObjective(net, content, styles, **options)


def test_an_objective_pickles_without_its_net(vgg16, rng):
    obj = _objective(vgg16, rng, "float64")
    back = pickle.loads(pickle.dumps(obj))
    assert back.net is None and back.pixel_terms == []
    assert all(np.array_equal(back.targets[k], obj.targets[k]) for k in obj.targets)
    x = rng.uniform(-100, 100, obj.shape)
    a, b = obj.evaluate(x), back.attached(obj.net).evaluate(x)
    assert a.loss == b.loss and np.array_equal(a.grad, b.grad)


@pytest.mark.parametrize("dtype, options", [
    ("float64", {}),
    ("float32", {"normalize": "size"}),
    ("float64", {"style_masks": True}),
    ("float32", {"normalize_gradients": True, "tv_weight": 1e-2}),
])
def test_spread_tiles_give_the_bytes_of_this_process(vgg16, vgg_weights_path, rng, client, dtype, options):
    """Every pass (the Gram sums, the norms, the gradient) on the cluster, added in tile order: the
    loss, gradient and totals of the tiles evaluated here, bit for bit, over two evaluations."""
    obj = _objective(vgg16, rng, dtype, **options)
    settings = Settings(backend="numpy", dtype=dtype, weights=str(vgg_weights_path))
    spread = Spread(client, settings)
    seen = []
    here = TiledObjective(obj, 16)
    there = TiledObjective(obj, 16, spread=spread, on_tile=lambda done, total: seen.append((done, total)))
    assert len(here.tiles) == 12
    for step in range(2):
        x = rng.uniform(-100, 100, obj.shape).astype(dtype)
        a, b = here.evaluate(x), there.evaluate(x)
        assert a.loss == b.loss and a.terms == b.terms
        assert np.array_equal(a.grad, b.grad)
    spread.close()
    total = there.passes * 12
    assert seen == [(k, total) for k in range(1, total + 1)] * 2


def test_a_worker_keeps_only_the_running_scales_tiles(vgg16, vgg_weights_path, rng, client):
    """The in-process worker's cache (this process's WORKER_CACHE): during each scale it keeps that
    scale's TileSteps (its objective, its arena of a tile's arrays) and not the scale's before; none
    once the spread is closed."""
    obj = _objective(vgg16, rng, "float32")
    spread = Spread(client, Settings(backend="numpy", dtype="float32", weights=str(vgg_weights_path)))
    before, held = set(WORKER_CACHE.runs), []
    for _ in range(2):  # two scales: a TiledObjective each
        TiledObjective(obj, 16, spread=spread).evaluate(rng.uniform(-100, 100, obj.shape).astype("float32"))
        held.append(set(WORKER_CACHE.runs) - before)
    assert [len(h) for h in held] == [1, 1] and held[0] != held[1]
    spread.close()
    assert set(WORKER_CACHE.runs) - before == set()


def test_a_tile_that_raises_fails_the_evaluation_in_one_line(vgg16, vgg_weights_path, rng, client, monkeypatch):
    obj = _objective(vgg16, rng, "float32")
    real = TileSteps.run

    def broken(self, step, x, t, *args):
        if t == 4:
            raise RuntimeError("no room\nfor this tile")
        return real(self, step, x, t, *args)

    monkeypatch.setattr(TileSteps, "run", broken)  # the in-process worker runs this module's class
    spread = Spread(client, Settings(backend="numpy", dtype="float32", weights=str(vgg_weights_path)))
    with pytest.raises(TileFailed, match=r"^tile 5 of 12 failed on the cluster \(tile_grams\): RuntimeError: no room for this tile$"):
        TiledObjective(obj, 16, spread=spread).evaluate(obj.net.xp.zeros(obj.shape, dtype="float32"))
    spread.close()


def hold_tile(n: int) -> str:
    """Code for a worker (conftest's run_on_workers): its n-th tile waits there until the test sets
    tiled.RELEASED_BY_TEST (or kills the worker), and the worker records that it holds it, so an
    evaluation is provably unfinished while the test acts."""
    return f"""
import time
from scratchnst.core import tiled

real, calls = tiled.TileSteps.run, [0]

def run(self, *args):
    calls[0] += 1
    if calls[0] == {n}:
        tiled.HELD_BY_TEST = True
        while not getattr(tiled, "RELEASED_BY_TEST", False):
            time.sleep(0.05)
    return real(self, *args)

tiled.TileSteps.run = run
"""


def _holds_a_tile(scheduler_file: str) -> bool:
    from distributed import Client

    with Client(scheduler_file=scheduler_file, timeout=30) as c:
        held = c.run(lambda: getattr(__import__("sys").modules.get("scratchnst.core.tiled"), "HELD_BY_TEST", False))
    return any(held.values())


def test_a_worker_killed_mid_evaluation_costs_only_its_tiles(tmp_path, pics, tiny, dask_processes, start_cli, run_cli,
                                                             wait_until, weights_env):
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1: the first holds a tile until it
    is SIGKILLed; Dask runs its tiles on the second (which holds the image and the objective too:
    they are broadcast), and the picture is the bytes of the run without a cluster."""
    content, style = pics.content, pics.style
    run = tiny.but(size=64, tile=32, iterations=2, dtype="float64")
    address = dask_processes.scheduler()
    first = dask_processes.worker("first")
    dask_processes.run_on_workers(hold_tile(2))  # the first worker's second tile, until it is killed
    dask_processes.worker("second")
    spread = start_cli("stylize", content, style, "-o", "spread.png", "--scheduler", address, *run.argv, cwd=tmp_path)
    wait_until(lambda: _holds_a_tile(str(dask_processes.scheduler_file)), proc=spread, what="the first worker holding a tile")
    first.kill()
    _, err = spread.communicate(timeout=120)
    assert spread.returncode == 0, err
    r = run_cli("stylize", content, style, "-o", "here.png", *run.argv, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "spread.png").read_bytes() == (tmp_path / "here.png").read_bytes()
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("spread", "here"))
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert a["plan"]["scales"][0]["tiles"] == 4


def test_ctrl_c_mid_evaluation_saves_and_resumes_to_the_bytes_of_this_process(tmp_path, pics, tiny, dask_processes,
                                                                           start_cli, run_cli, wait_until, weights_env):
    """Ctrl-C while a worker holds a tile: the running tile finishes (cluster.run_tasks), the run stops
    as it does in one process (exit 130, OUT, an interrupted manifest and a checkpoint), and
    `--resume` on the cluster ends at the bytes and losses of the run without one."""
    content, style = pics.content, pics.style
    run = tiny.but(size=64, tile=32, iterations=3, dtype="float64")
    address = dask_processes.scheduler()
    dask_processes.worker("only")
    dask_processes.run_on_workers(hold_tile(10))  # in the run's second evaluation
    spread = start_cli("stylize", content, style, "-o", "spread.png", "--scheduler", address, *run.argv, cwd=tmp_path)
    wait_until(lambda: _holds_a_tile(str(dask_processes.scheduler_file)), proc=spread, what="the worker holding a tile")
    spread.send_signal(signal.SIGINT)
    dask_processes.run_on_workers("from scratchnst.core import tiled\ntiled.RELEASED_BY_TEST = True")
    _, err = spread.communicate(timeout=120)
    assert spread.returncode == 130 and "Traceback" not in err, err
    m = json.loads((tmp_path / "spread.json").read_text())
    assert m["status"] == "interrupted" and len(m["history"]) < 3 and (tmp_path / "spread.png").is_file()
    r = run_cli("stylize", "--resume", "spread.json", "--scheduler", address, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_cli("stylize", content, style, "-o", "here.png", *run.argv, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "spread.png").read_bytes() == (tmp_path / "here.png").read_bytes()
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("spread", "here"))
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]] and a["status"] == "done"
    # The worker's peak resident size (VmHWM) is within what the plan estimated for it.
    from distributed import Client

    with Client(scheduler_file=str(dask_processes.scheduler_file), timeout=30) as c:
        (peak,) = c.run(lambda: int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024).values()
    estimate = a["plan"]["scales"][0]["worker_estimate"]
    assert peak <= estimate <= 1.6 * peak, (peak, estimate)


def test_a_local_cluster_gives_the_bytes_of_this_process_and_is_in_the_memory_plan(tmp_path, pics, tiny, run_cli,
                                                                                   weights_env):
    """`--workers 2`: a local cluster of two worker processes on 127.0.0.1 gives the picture of the run
    without one, and the manifest's plan counts both workers beside this process."""
    run = tiny.but(size=64, tile=32, iterations=2, dtype="float64")
    for name, flags in (("local", ["--workers", "2"]), ("here", [])):
        r = run_cli("stylize", pics.content, pics.style, "-o", f"{name}.png", *run.argv, *flags, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "local.png").read_bytes() == (tmp_path / "here.png").read_bytes()
    local, here = (json.loads((tmp_path / f"{n}.json").read_text())["plan"] for n in ("local", "here"))
    (scale,), (alone,) = local["scales"], here["scales"]
    assert local["workers"] == 2 and here["workers"] == 0 and alone["worker_estimate"] == 0
    assert scale["core"] == alone["core"] == 32 and not scale["keep_forward"]
    assert scale["estimate"] - 2 * scale["worker_estimate"] < alone["estimate"]  # this process keeps no forwards


def test_too_many_local_workers_for_the_budget_are_refused_before_the_cluster_starts(tmp_path, pics, out, tiny, run_cli,
                                                                                     refused):
    """A --max-memory that holds this process and one worker, not two (the net is not read: the
    weights do not exist)."""
    from scratchnst.app import cluster
    from scratchnst.app.picture import memory
    from scratchnst.app.picture.plan import Workers, make_plan

    run = tiny.but(size=64, tile=32, iterations=1)
    sizes = (Image.open(pics.content).size, [Image.open(pics.style).size])
    threads = 2 * cluster.engine_threads_per_worker(2)  # one worker gets the cores of two
    one = make_plan(Settings(**run).validated(1), *sizes, workers=Workers(1, threads)).estimate
    r = run_cli("stylize", pics.content, pics.style, "-o", out, *run.argv, "--workers", "2", "--max-memory", str(one),
                "--weights", str(tmp_path / "no.h5"), cwd=tmp_path)
    refused(r, out, f"> {memory.format_bytes(one)} allowed by --max-memory, even tiled (32-px cores",
            ", or --workers 1")


def test_a_worker_with_too_little_memory_is_refused_in_one_line_before_any_tile(tmp_path, pics, out, tiny, dask_processes,
                                                                                run_cli, refused, weights_env):
    """A `dask worker --memory-limit 300MB`: Dask pauses it at 240 MB, and one tile there needs the net
    and its Winograd transforms (about 420 MB): the run says so, naming the worker, and writes nothing."""
    address = dask_processes.scheduler()
    dask_processes.worker("small", "--memory-limit", "300MB")
    run = tiny.but(size=64, tile=32, iterations=1)
    r = run_cli("stylize", pics.content, pics.style, "-o", out, "--scheduler", address, *run.argv, cwd=tmp_path)
    refused(r, out, "worker tcp://127.0.0.1:", "may hold 228.88 MB (80% of its memory limit, where Dask pauses it) and its "
            "tiles need an estimated ", "give the workers more memory (dask worker --memory-limit)")


@pytest.mark.parametrize("flags, needle", [
    (["--workers", "0"], "--workers: must be > 0"),
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "--workers sizes a local cluster"),
    (["--workers", "2"], "--workers and --scheduler spread the tiles of a tiled picture"),
    (["--workers", "2", "--tile", "0"], "--workers and --scheduler spread the tiles of a tiled picture"),
])
def test_cluster_flags_refused_in_one_line(tmp_path, pics, out, tiny, run_cli, refused, weights_env, flags, needle):
    r = run_cli("stylize", pics.content, pics.style, "-o", out, *tiny.argv, *flags, cwd=tmp_path)
    refused(r, out, needle)
    assert not re.search(r"Traceback|distributed", r.stderr)
