"""scratchnst.app.picture.coarse_to_fine: each scale runs its iterations at its size; a NaN/inf loss
stops the run with the last finite image kept (exit 1, not resumable); a Ctrl-C at an awkward moment
of the scale loop (between scales, between a step and its record) still resumes to the bytes and
losses of the uninterrupted run (conftest's `reference`). A scale the memory plan tiles: the picture of
the untiled run, the manifest's record of the tiling, the tiles on the progress bar, the plan's L-BFGS
history, and a resume that follows the recorded plan to the bytes of an uninterrupted tiled run."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

import scratchnst
from scratchnst.app.files import report
from scratchnst.app.picture import inputs as picture_inputs
from scratchnst.app.picture import stylize as sty
from scratchnst.app.picture.coarse_to_fine import CoarseToFine
from scratchnst.app.picture.settings import NOISE_STD
from scratchnst.app.picture.stylize import resume, stylize
from scratchnst.core.preprocess import deprocess
from scratchnst.core.tiled import TiledObjective, halo_overhead, plan_tiles

pytestmark = [pytest.mark.weights, pytest.mark.usefixtures("weights_env")]


def test_multiscale_runs_each_scale(pics, tiny):
    res = scratchnst.stylize(str(pics.content), [str(pics.style)], **tiny.but(size=48, iterations=2, scales=(0.5, 1.0)))
    assert [h["size"] for h in res.history] == [24, 24, 48, 48]
    assert res.image.size == (48, 40)


def test_each_scale_runs_its_own_iterations_and_resumes_with_them(tmp_path, pics, tiny):
    """--iterations 3,1: three at the coarse scale, one at the fine; a run interrupted in its coarse
    scale resumes to the uninterrupted run's losses and bytes."""
    options = tiny.but(size=48, iterations=(3, 1), scales=(0.5, 1.0), checkpoint_every=1)
    whole = sty.stylize(str(pics.content), [str(pics.style)], out=tmp_path / "whole.png", **options)
    assert [h["size"] for h in whole.history] == [24, 24, 24, 48]
    assert whole.manifest["args"]["iterations"] == [3, 1]
    out = tmp_path / "cut.png"
    with pytest.MonkeyPatch.context() as m:
        _interrupt_at_record(m, 2)
        assert sty.stylize(str(pics.content), [str(pics.style)], out=out, **options).status == "interrupted"
    resumed = sty.resume(out.with_suffix(".json"), quiet=True)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    assert out.read_bytes() == (tmp_path / "whole.png").read_bytes()


# -- non-finite ------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["--optimizer", "adam", "--learning-rate", "1e30"],
    ["--style-weight", "1e38"],
], ids=["adam-lr-1e30", "style-weight-1e38"])
def test_nonfinite_stops_keeps_the_last_finite_image_exit_1(tmp_path, pics, tiny, run_cli, refused, args):
    out = tmp_path / "nf.png"
    r = run_cli("stylize", *map(str, pics), "-o", str(out), *tiny.but(iterations=3).argv, *args, cwd=tmp_path)
    refused(r, None, "NaN/inf", "lower --learning-rate", str(out), code=1)
    m = json.loads(out.with_suffix(".json").read_text())
    assert m["status"] == "failed" and "NaN/inf" in m["error"] and m["history"] == []
    # The last finite image is the noise start (seed 0): nothing finite came after it.
    noise = np.random.default_rng(0).normal(0.0, NOISE_STD, (1, 3, 27, 32)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), deprocess(noise))
    refused(run_cli("stylize", "--resume", str(out.with_suffix(".json")), cwd=tmp_path), None, "that run failed")


# -- interrupts at awkward moments (in-process, deterministic) -------------------------------------


@pytest.mark.parametrize("moment", ["between-scales", "before-bookkeeping"])
def test_interrupt_at_an_awkward_moment_still_resumes_identically(tmp_path, reference, monkeypatch, moment):
    """KeyboardInterrupt while scale 1's images are prepared (the optimiser still belongs to scale 0),
    or right after opt.step() returned but before the iteration was recorded."""
    if moment == "between-scales":
        original = CoarseToFine._images_at

        def images_at(self, long_side):
            if long_side == self.sizes[1]:  # scale 1's images: its optimiser does not exist yet
                raise KeyboardInterrupt
            return original(self, long_side)

        monkeypatch.setattr(CoarseToFine, "_images_at", images_at)
    else:
        _interrupt_at_record(monkeypatch, 3)
    out = tmp_path / "d.png"
    res = sty.stylize(str(reference.content), [str(reference.style)], out=out, **reference.run)
    assert res.status == "interrupted"
    # Between scales: all of scale 0 is kept. Before the bookkeeping: the finished step 3 is counted.
    assert [h["iteration"] for h in res.history] == list(range(1, 6 if moment == "between-scales" else 4))
    monkeypatch.undo()
    m = sty.resume(out.with_suffix(".json"), quiet=True).manifest
    assert [h["loss"] for h in m["history"]] == reference.losses
    assert out.read_bytes() == reference.image


def _interrupt_at_record(monkeypatch, n: int) -> None:
    """KeyboardInterrupt at the n-th CoarseToFine._record: right after a step, before its bookkeeping."""
    original, calls = CoarseToFine._record, [0]

    def record(self):
        calls[0] += 1
        if calls[0] == n:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(CoarseToFine, "_record", record)


# -- tiled scales ----------------------------------------------------------------------------------


def _run(pics, out, **options):
    return stylize(str(pics.content), [str(pics.style)], out=out, **{"quiet": True, "scales": (1.0,), **options})


def test_a_tiled_run_is_the_untiled_run_and_the_manifest_records_it(tmp_path, pics, monkeypatch):
    """float64, the same seed: the same picture tile by tile (cores of 32 px at 64 px: 2 × 2 tiles)."""
    run = dict(size=64, iterations=3, dtype="float64")
    whole = _run(pics, tmp_path / "whole.png", tile=0, **run)
    evaluate, tiled_evaluations = TiledObjective.evaluate, []
    monkeypatch.setattr(TiledObjective, "evaluate", lambda self, x: tiled_evaluations.append(self.core) or evaluate(self, x))
    tiled = _run(pics, tmp_path / "tiled.png", tile=32, **run)
    assert tiled_evaluations == [32] * tiled.manifest["evaluations"] == [32] * whole.manifest["evaluations"]
    a, b = (np.asarray(Image.open(tmp_path / name), dtype=int) for name in ("whole.png", "tiled.png"))
    assert a.shape == b.shape == (53, 64, 3) and np.abs(a - b).max() <= 1
    assert np.allclose([h["loss"] for h in tiled.history], [h["loss"] for h in whole.history], rtol=1e-9, atol=0)
    [untiled] = whole.manifest["plan"]["scales"]
    assert untiled["core"] is None and untiled["tiles"] == 1
    plan = json.loads((tmp_path / "tiled.json").read_text())["plan"]
    tiles = plan_tiles(53, 64, 32, ["relu4_1", "relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"])
    assert plan["scales"] == [{"size": 64, "width": 64, "height": 53, "core": 32, "tiles": 4,
                               "history": 20, "halo_overhead": round(halo_overhead(tiles), 4),
                               "keep_forward": plan["scales"][0]["keep_forward"], "estimate": plan["estimate"],
                               "worker_estimate": 0}]
    assert plan["notes"] == [] and plan["budget"] > plan["estimate"] > 0 and plan["workers"] == 0
    assert tiled.manifest["args"]["tile"] == 32


def test_the_progress_bar_shows_the_tiles(tmp_path, pics, tiny, run_cli):
    """48 px in cores of 16: 3 × 3 tiles, two passes (style, then the gradient) per evaluation."""
    r = run_cli("stylize", *map(str, pics), "-o", str(tmp_path / "o.png"), *tiny.but(size=48, quiet=False).argv, "--tile", "16",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "tile 1/18" in r.stderr and "tile 18/18" in r.stderr and "note:" not in r.stderr


def test_the_run_uses_the_plans_history(tmp_path, pics, monkeypatch):
    """A plan that shortened the L-BFGS history: the optimiser keeps that many pairs."""
    made = picture_inputs.make_plan
    monkeypatch.setattr(picture_inputs, "make_plan", lambda *a, **k: _with_history(made(*a, **k), 2))
    result = _run(pics, tmp_path / "o.png", size=48, iterations=4, tile=16, checkpoint_every=4)
    state = report.read_checkpoint(result.paths["checkpoint"])["optimizer"]
    assert state["options"]["history"] == 2 and 1 <= len(state["s"]) <= 2
    assert result.manifest["plan"]["scales"][0]["history"] == 2 and result.manifest["args"]["lbfgs_history"] == 20


def _with_history(p, history):
    return replace(p, scales=tuple(replace(s, history=history) for s in p.scales))


def test_a_tiled_run_resumes_to_the_bytes_of_an_uninterrupted_one(tmp_path, pics, monkeypatch):
    run = dict(size=48, iterations=4, tile=16)
    out = tmp_path / "out.png"
    seen = []
    stopped = _run(pics, out, on_progress=lambda e: seen.append(e) or len(seen) == 2, **run)
    assert stopped.status == "interrupted" and stopped.manifest["plan"]["scales"][0]["core"] == 16

    def no_new_plan(*args, **kwargs):
        raise AssertionError("a resumed run follows the plan it recorded")

    monkeypatch.setattr(picture_inputs, "make_plan", no_new_plan)
    done = resume(out.with_suffix(".json"), quiet=True)
    monkeypatch.undo()
    whole = _run(pics, tmp_path / "whole.png", **run)
    assert done.status == "done" and done.manifest["plan"] == stopped.manifest["plan"]
    assert [h["loss"] for h in done.history] == [h["loss"] for h in whole.history]
    assert out.read_bytes() == (tmp_path / "whole.png").read_bytes()
