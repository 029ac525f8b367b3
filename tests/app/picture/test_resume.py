"""Reliability of a stylize run: the output never overwrites an input, and no run loses its work (a kill
after a checkpoint, SIGTERM, interrupts at awkward moments, resume, non-finite values).

Each row is a subprocess run of `python -m scratchnst stylize` (or one in this process) on generated
pictures; docs/reliability.md lists the cases and their outcomes. The refusals of bad input in that
document are tested beside the module that checks them (tests/app/...).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scratchnst.core.preprocess import deprocess
from scratchnst.app.picture.coarse_to_fine import CoarseToFine
from scratchnst.app.picture.settings import NOISE_STD

pytestmark = [pytest.mark.weights, pytest.mark.usefixtures("weights_env")]


# -- the output path -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["same", "relative", "symlink", "hardlink", "init", "mask"])
def test_output_may_not_overwrite_an_input(tmp_path, pics, tiny, run_cli, refused, case):
    content, style = pics
    before = content.read_bytes()
    args = [str(content), str(style)]
    if case == "same":
        target = str(content)
    elif case == "relative":
        (tmp_path / "sub").mkdir()
        target = os.path.join("..", content.name)
        r = run_cli("stylize", *args, "-o", target, *tiny.argv, cwd=tmp_path / "sub")
        refused(r, None, "would overwrite the input image")
        assert content.read_bytes() == before
        return
    elif case == "symlink":
        (tmp_path / "link.png").symlink_to(content)
        target = str(tmp_path / "link.png")
    elif case == "hardlink":
        os.link(content, tmp_path / "hard.png")
        target = str(tmp_path / "hard.png")
    elif case == "init":
        shutil.copyfile(content, tmp_path / "init.png")
        target = str(tmp_path / "init.png")
        args += ["--init", target]
    else:
        Image.fromarray(np.full((40, 48), 255, np.uint8)).save(tmp_path / "mask.png")
        target = str(tmp_path / "mask.png")
        args += ["--style-masks", target]
    r = run_cli("stylize", *args, "-o", target, *tiny.argv, cwd=tmp_path)
    refused(r, None, "would overwrite the input image")
    assert content.read_bytes() == before


# -- no lost work: interrupts, kills, resume -------------------------------------------------------

RUN = ["--size", "40", "--scales", "0.5,1", "--iterations", "5", "--seed", "1", "--quiet"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, make_pictures, run_cli, vgg_weights_path):
    """The uninterrupted run every resumed run must reproduce: (content, style, image bytes, losses)."""
    d = tmp_path_factory.mktemp("reference")
    pictures = make_pictures(d, seed=11)
    content, style = pictures.save("c.png"), pictures.save("s.png", 40, 44)
    r = run_cli("stylize", str(content), str(style), "-o", str(d / "ref.png"), *RUN, cwd=d, env={"SCRATCHNST_WEIGHTS": str(vgg_weights_path)})
    assert r.returncode == 0, r.stderr
    m = json.loads((d / "ref.json").read_text())
    assert len(m["history"]) == 10
    return content, style, (d / "ref.png").read_bytes(), [h["loss"] for h in m["history"]]


def _resume_and_compare(run_cli, manifest: Path, cwd: Path, reference) -> dict:
    r = run_cli("stylize", "--resume", str(manifest), "--quiet", cwd=cwd)
    assert r.returncode == 0, r.stderr
    m = json.loads(manifest.read_text())
    assert m["status"] == "done"
    assert [h["loss"] for h in m["history"]] == reference[3]
    assert [h["iteration"] for h in m["history"]] == list(range(1, 11))
    assert Path(m["output"]).read_bytes() == reference[2]
    return m


def test_sigkill_after_a_checkpoint_at_the_scale_boundary_resumes_identically(tmp_path, reference, out, start_cli, wait_until, run_cli):
    before, manifest = out.read_bytes(), out.with_suffix(".json")
    # The manifest is written just after the checkpoint at iteration 5; from then on the run's next
    # evaluation waits, so the kill finds it there however fast the machine is.
    proc = start_cli("stylize", str(reference[0]), str(reference[1]), "-o", str(out), *RUN, "--checkpoint-every", "5", cwd=tmp_path,
                     hold_while=manifest)
    wait_until(manifest.exists, proc=proc, what=f"{manifest.name} (the checkpoint at iteration 5)")
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert out.read_bytes() == before  # a killed run leaves OUT untouched
    m = json.loads(out.with_suffix(".json").read_text())
    assert m["status"] == "running" and len(m["history"]) == 5 and m["history"][-1]["scale"] == 0
    _resume_and_compare(run_cli, out.with_suffix(".json"), tmp_path, reference)


def test_sigterm_mid_run_saves_and_resumes_identically(tmp_path, reference, start_cli, wait_until, run_cli):
    out = tmp_path / "c.png"
    manifest = out.with_suffix(".json")
    # The checkpoint at iteration 6, inside the second scale; the run then waits in its next
    # evaluation, so SIGTERM lands mid-run however fast the machine is.
    proc = start_cli("stylize", str(reference[0]), str(reference[1]), "-o", str(out), *RUN, "--checkpoint-every", "6", cwd=tmp_path,
                     hold_while=manifest)
    wait_until(manifest.exists, proc=proc, what=f"{manifest.name} (the checkpoint at iteration 6)")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    m = json.loads(out.with_suffix(".json").read_text())
    assert proc.returncode == 143 and m["status"] == "interrupted", err
    assert "Traceback" not in err and Image.open(out).size == (40, 33)
    assert len(m["history"]) == 6 and Path(m["checkpoint"]).is_file()  # held after iteration 6: no more, no less
    _resume_and_compare(run_cli, out.with_suffix(".json"), tmp_path, reference)


def test_resume_refuses_a_finished_run_and_a_missing_checkpoint(tmp_path, reference, run_cli, refused):
    d = tmp_path
    done = d / "done.json"
    done.write_text(json.dumps({"status": "done", "args": {}, "output": str(d / "done.png")}))
    refused(run_cli("stylize", "--resume", str(done), cwd=d), None, "already done")
    lost = d / "lost.json"
    lost.write_text(json.dumps({"status": "running", "args": {}, "output": str(d / "lost.png")}))
    refused(run_cli("stylize", "--resume", str(lost), cwd=d), None, "no checkpoint")
    (d / "junk.json").write_text("[1, 2]")
    refused(run_cli("stylize", "--resume", str(d / "junk.json"), cwd=d), None, "not a scratchnst run manifest")
    refused(run_cli("stylize", str(reference[0]), "--resume", str(done), cwd=d), None, "--resume takes no CONTENT")


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
    from scratchnst.app.picture import stylize as sty

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
    res = sty.stylize(str(reference[0]), [str(reference[1])], out=out, size=40, scales=(0.5, 1.0), iterations=5, seed=1, quiet=True)
    assert res.status == "interrupted"
    # Between scales: all of scale 0 is kept. Before the bookkeeping: the finished step 3 is counted.
    assert [h["iteration"] for h in res.history] == list(range(1, 6 if moment == "between-scales" else 4))
    monkeypatch.undo()
    m = sty.resume(out.with_suffix(".json"), quiet=True).manifest
    assert [h["loss"] for h in m["history"]] == reference[3]
    assert out.read_bytes() == reference[2]
