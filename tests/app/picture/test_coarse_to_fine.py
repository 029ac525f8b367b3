"""A run whose memory plan tiles a scale (app/picture/coarse_to_fine.py): the picture of the untiled run,
the manifest's record of the tiling, the tiles on the progress bar, the plan's L-BFGS history, and a
resume that follows the recorded plan to the bytes of an uninterrupted tiled run."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from scratchnst.app.files import report
from scratchnst.app.picture import inputs as picture_inputs
from scratchnst.app.picture.stylize import resume, stylize
from scratchnst.core.tiled import TiledObjective, halo_overhead, plan_tiles

pytestmark = [pytest.mark.weights, pytest.mark.usefixtures("weights_env")]


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
                               "halo_overhead": round(halo_overhead(tiles), 4), "keep_forward": plan["scales"][0]["keep_forward"],
                               "estimate": plan["estimate"]}]
    assert plan["lbfgs_history"] == 20 and plan["notes"] == [] and plan["budget"] > plan["estimate"] > 0
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
    monkeypatch.setattr(picture_inputs, "make_plan", lambda *a, **k: replace(made(*a, **k), lbfgs_history=2))
    result = _run(pics, tmp_path / "o.png", size=48, iterations=4, tile=16, checkpoint_every=4)
    state = report.read_checkpoint(result.paths["checkpoint"])["optimizer"]
    assert state["options"]["history"] == 2 and 1 <= len(state["s"]) <= 2
    assert result.manifest["plan"]["lbfgs_history"] == 2 and result.manifest["args"]["lbfgs_history"] == 20


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
