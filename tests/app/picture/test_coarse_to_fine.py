"""scratchnst.app.picture.coarse_to_fine: each scale runs its iterations at its size; a NaN/inf loss
stops the run with the last finite image kept (exit 1, not resumable); a Ctrl-C at an awkward moment
of the scale loop (between scales, between a step and its record) still resumes to the bytes and
losses of the uninterrupted run (conftest's `reference`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import scratchnst
from scratchnst.app.picture import stylize as sty
from scratchnst.app.picture.coarse_to_fine import CoarseToFine
from scratchnst.app.picture.settings import NOISE_STD
from scratchnst.core.preprocess import deprocess

pytestmark = [pytest.mark.weights, pytest.mark.usefixtures("weights_env")]


def test_multiscale_runs_each_scale(pics, tiny):
    res = scratchnst.stylize(str(pics.content), [str(pics.style)], **tiny.but(size=48, iterations=2, scales=(0.5, 1.0)))
    assert [h["size"] for h in res.history] == [24, 24, 48, 48]
    assert res.image.size == (48, 40)


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
    calls = {"n": 0}
    if moment == "between-scales":
        original = CoarseToFine._images_at

        def images_at(self, long_side):
            if long_side == self.sizes[1]:  # scale 1's images: its optimiser does not exist yet
                raise KeyboardInterrupt
            return original(self, long_side)

        monkeypatch.setattr(CoarseToFine, "_images_at", images_at)
    else:
        original = CoarseToFine._record

        def record(self):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
            return original(self)

        monkeypatch.setattr(CoarseToFine, "_record", record)
    out = tmp_path / "d.png"
    res = sty.stylize(str(reference.content), [str(reference.style)], out=out, **reference.run)
    assert res.status == "interrupted"
    # Between scales: all of scale 0 is kept. Before the bookkeeping: the finished step 3 is counted.
    assert [h["iteration"] for h in res.history] == list(range(1, 6 if moment == "between-scales" else 4))
    monkeypatch.undo()
    m = sty.resume(out.with_suffix(".json"), quiet=True).manifest
    assert [h["loss"] for h in m["history"]] == reference.losses
    assert out.read_bytes() == reference.image
