"""scratchnst.app.files.report: the files a run writes beside OUT and reads back to resume: their names,
a manifest that stays JSON with non-finite numbers in it, a checkpoint that brings the optimiser's
arrays back bit for bit, and what cannot be resumed refused with one line naming the file."""

import json
import re

import numpy as np
import pytest

from scratchnst.app.files import report
from scratchnst.errors import ScratchnstError


def test_the_files_beside_out_are_named_after_it(tmp_path):
    out = tmp_path / "pics" / "result.png"
    assert report.manifest_path(out) == tmp_path / "pics" / "result.json"
    assert report.checkpoint_path(out) == tmp_path / "pics" / "result.ckpt.npz"
    assert report.iteration_path(out, 40) == tmp_path / "pics" / "result_iter0040.png"
    assert report.plot_path(out) == tmp_path / "pics" / "result_loss.png"


def test_a_manifest_writes_nan_and_inf_as_null(tmp_path):
    out = tmp_path / "result.png"
    path = report.write_manifest(out, {"status": "failed", "final_loss": float("nan"), "history": [{"loss": float("inf")}, {"loss": 2.5}]})
    assert path == report.manifest_path(out)
    assert json.loads(path.read_text()) == {"status": "failed", "final_loss": None, "history": [{"loss": None}, {"loss": 2.5}]}


def test_a_checkpoint_gives_back_its_arrays_bit_for_bit_and_its_state(tmp_path, rng):
    out = tmp_path / "result.png"
    x = rng.standard_normal((1, 3, 5, 7)).astype(np.float32)
    state = {"scale_index": 1, "iteration": 6, "history": [{"iteration": 6, "loss": 1.5}],
             "optimizer": {"x": x, "grad": -x, "loss": 1.5, "iteration": 2}}
    path = report.write_checkpoint(out, state)
    back = report.read_checkpoint(path)
    assert {k: v for k, v in back.items() if k != "optimizer"} == {k: v for k, v in state.items() if k != "optimizer"}
    assert back["optimizer"]["x"].dtype == np.float32 and back["optimizer"]["x"].tobytes() == x.tobytes()
    assert back["optimizer"]["grad"].tobytes() == (-x).tobytes()
    assert (back["optimizer"]["loss"], back["optimizer"]["iteration"]) == (1.5, 2)


def test_resuming_reads_an_interrupted_run_and_refuses_what_cannot_be_resumed(tmp_path):
    out = tmp_path / "result.png"
    ckpt = report.write_checkpoint(out, {"iteration": 3, "optimizer": {"x": np.zeros(2)}})
    manifest = {"status": "interrupted", "args": {}, "output": str(out), "checkpoint": str(ckpt)}
    report.write_manifest(out, manifest)
    got, state = report.read_resumable(report.manifest_path(out))
    assert got == manifest and state["iteration"] == 3
    cases = {
        "done": ({**manifest, "status": "done"}, "already done"),
        "failed": ({**manifest, "status": "failed", "error": "NaN"}, "that run failed (NaN)"),
        "no-checkpoint": ({**manifest, "checkpoint": str(tmp_path / "gone.npz")}, "no checkpoint to resume from"),
        "not-a-manifest": ([1, 2], "not a scratchnst run manifest"),
    }
    for name, (content, needle) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(content))
        with pytest.raises(ScratchnstError, match=re.escape(needle)) as info:
            report.read_resumable(path)
        assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
    (tmp_path / "junk.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(ScratchnstError, match="not a readable scratchnst checkpoint"):
        report.read_checkpoint(tmp_path / "junk.npz")
