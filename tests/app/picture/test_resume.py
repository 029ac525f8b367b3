"""No lost work: a picture run stopped by SIGKILL after a checkpoint, SIGTERM, Ctrl-C or its own
on_progress keeps its image, manifest and checkpoint, and `stylize --resume` (resume() in
scratchnst.app.picture.stylize) finishes it with the bytes and losses of a run never stopped; a
manifest that cannot be resumed is refused. docs/reliability.md lists the cases and their outcomes."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from PIL import Image

import scratchnst
from scratchnst.app.picture.stylize import resume

pytestmark = [pytest.mark.weights, pytest.mark.usefixtures("weights_env")]


def _resume_and_compare(run_cli, manifest: Path, cwd: Path, reference) -> dict:
    r = run_cli("stylize", "--resume", str(manifest), "--quiet", cwd=cwd)
    assert r.returncode == 0, r.stderr
    m = json.loads(manifest.read_text())
    assert m["status"] == "done"
    assert [h["loss"] for h in m["history"]] == reference.losses
    assert [h["iteration"] for h in m["history"]] == list(range(1, 11))
    assert Path(m["output"]).read_bytes() == reference.image
    return m


def test_sigkill_after_a_checkpoint_at_the_scale_boundary_resumes_identically(tmp_path, reference, out, start_cli, wait_until, run_cli):
    before, manifest = out.read_bytes(), out.with_suffix(".json")
    # The manifest is written just after the checkpoint at iteration 5; from then on the run's next
    # evaluation waits, so the kill finds it there however fast the machine is.
    proc = start_cli("stylize", str(reference.content), str(reference.style), "-o", str(out), *reference.run.argv,
                     "--checkpoint-every", "5", cwd=tmp_path, hold_while=manifest)
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
    proc = start_cli("stylize", str(reference.content), str(reference.style), "-o", str(out), *reference.run.argv,
                     "--checkpoint-every", "6", cwd=tmp_path, hold_while=manifest)
    wait_until(manifest.exists, proc=proc, what=f"{manifest.name} (the checkpoint at iteration 6)")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    m = json.loads(out.with_suffix(".json").read_text())
    assert proc.returncode == 143 and m["status"] == "interrupted", err
    assert "Traceback" not in err and Image.open(out).size == (40, 33)
    assert len(m["history"]) == 6 and Path(m["checkpoint"]).is_file()  # held after iteration 6: no more, no less
    _resume_and_compare(run_cli, out.with_suffix(".json"), tmp_path, reference)


def test_sigint_saves_image_and_interrupted_manifest(tmp_path, pics, tiny, start_cli, wait_until):
    out = tmp_path / "out.png"
    args = [str(pics.content), str(pics.style), "-o", str(out), *tiny.but(size=48, iterations=100000, save_every=1).argv]
    proc = start_cli("stylize", *args, cwd=tmp_path)  # 100000 iterations: still running when Ctrl-C comes
    wait_until((tmp_path / "out_iter0002.png").exists, proc=proc, what="out_iter0002.png (iteration 2 saved)")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    m = json.loads(out.with_suffix(".json").read_text())
    assert m["status"] == "interrupted" and len(m["history"]) >= 2
    assert Image.open(out).size == (48, 40)
    assert "Traceback" not in err


def test_on_progress_returning_true_stops_the_run_as_ctrl_c_does(tmp_path, pics, tiny):
    """The explicit stop (batch's and video's interrupt): status "interrupted", the image and a
    checkpoint kept, and a resume continues to the same end as an uninterrupted run."""
    out = tmp_path / "out.png"
    seen = []
    run = tiny.but(size=40, iterations=5)
    res = scratchnst.stylize(str(pics.content), [str(pics.style)], out=out, on_progress=lambda e: seen.append(e) or len(seen) == 2, **run)
    assert res.status == "interrupted" and [h["iteration"] for h in res.history] == [1, 2] and len(seen) == 2
    m = json.loads(out.with_suffix(".json").read_text())
    assert m["status"] == "interrupted" and os.path.isfile(m["checkpoint"])
    done = resume(out.with_suffix(".json"), quiet=True)
    whole = scratchnst.stylize(str(pics.content), [str(pics.style)], out=tmp_path / "whole.png", **run)
    assert done.status == "done" and [h["loss"] for h in done.history] == [h["loss"] for h in whole.history]
    assert out.read_bytes() == (tmp_path / "whole.png").read_bytes()


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
    refused(run_cli("stylize", str(reference.content), "--resume", str(done), cwd=d), None, "--resume takes no CONTENT")
