"""scratchnst.app.video.multipass, `scratchnst video --passes P` on conftest's pan: a frame starts from
its neighbours blended by their masks; each pass lowers the flicker of the independent frames; a frame
that raises fails alone and --resume finishes; on real Dask workers, stopped by Ctrl-C and resumed,
the bytes of a run with every task in the client process."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from scratchnst.app.cli import main
from scratchnst.app.video import multipass

pytest.importorskip("av")
pytest.importorskip("cv2")


@pytest.fixture(scope="session")
def multi(video_tiny):
    """The tiny video run in 3 passes."""
    return video_tiny.but(passes=3)


def test_a_frame_starts_from_its_neighbours_blended_by_their_masks():
    assert [multipass.neighbours(1, k, 4) for k in range(4)] == [()] * 4  # pass 1: every frame on its own
    assert [multipass.neighbours(2, k, 4) for k in range(4)] == [(1,), (0, 2), (1, 3), (2,)]
    own, a, b = (np.full((2, 3, 3), v, np.uint8) for v in (100, 200, 50))
    ca = np.array([[0, 1, 0.5], [1, 0, 0.25]], np.float32)
    # one neighbour, (100 + δ·c·200) / (1 + δ·c) by hand: δ = 1 gives 100, 150, 133.3, 150, 100, 120
    assert multipass.blend(own, [a], [ca], 1.0)[..., 0].tolist() == [[100, 150, 133], [150, 100, 120]]
    assert multipass.blend(own, [a], [ca], 3.0)[0, 2].tolist() == [160] * 3  # (100 + 1.5·200) / 2.5
    assert (multipass.blend(own, [a], [ca], 0.0) == own).all()
    cb = np.full((2, 3), 0.5, np.float32)
    assert multipass.blend(own, [a, b], [ca, cb], 1.0)[0, 1, 0] == 130  # (100 + 200 + 0.5·50) / 2.5
    target, mask = multipass.temporal_target([a, b], [ca, cb])
    # c_a = 1, c_b = 0.5: m = (200 + 25) / 1.5 = 150, c̄ = 0.75; c_a = 0: m = b, c̄ = 0.25
    assert target[0, 1].tolist() == [150] * 3 and mask[0, 1] == 0.75
    assert target[0, 0].tolist() == [50] * 3 and mask[0, 0] == 0.25


@pytest.fixture(scope="module")
def multipass_here(tmp_path_factory, pan_mp4, style, multi, vgg_weights_path, run_cli, frames_of):
    """The multi-pass run with every task in this process (--workers 0): (its frames, its manifest)."""
    tmp = tmp_path_factory.mktemp("multipass")
    r = run_cli("video", str(pan_mp4), str(style), "-o", f"{tmp / 'out'}/", *multi.argv, "--workers", "0", cwd=tmp,
                env={"SCRATCHNST_WEIGHTS": str(vgg_weights_path)})
    assert r.returncode == 0, r.stderr
    return frames_of(tmp / "out"), json.loads((tmp / "out.json").read_text())


@pytest.mark.weights
def test_each_pass_lowers_the_flicker_of_independent_frames(multipass_here, pan):
    frames, m = multipass_here
    n = len(pan)
    assert m["status"] == "done" and m["frames_done"] == n and len(frames) == n
    assert [(p["pass"], p["frames_done"]) for p in m["passes"]] == [(1, 7), (2, 7), (3, 7)]
    assert [(f["pass"], f["index"], f["neighbours"], f["iterations"]) for f in m["frames"]] == [
        (3, k, [j for j in (k - 1, k + 1) if 0 <= j < n], 3) for k in range(n)]
    for f in m["frames"]:
        total = sum(m["args"][f"{k}_weight"] * f[k] for k in ("content", "style", "tv")) + m["video"]["temporal_weight"] * f["temporal"]
        assert f["loss"] == pytest.approx(total, rel=1e-4) and 0.8 < f["reliable"] <= 1
    errors = [p["temporal_error"] for p in m["passes"]]
    assert errors[1] < 0.7 * errors[0] and errors[2] < errors[1]  # pass 1 is the independent baseline
    assert m["temporal_error"] == errors[2] == pytest.approx(np.mean([f["temporal_error"] for f in m["frames"][1:]]))


@pytest.mark.weights
def test_a_multipass_frame_that_raises_fails_alone_and_resume_finishes(tmp_path, pan_mp4, pan, style, multi, multipass_here, weights_env,
                                                                        frames_of, capsys, monkeypatch):
    """The failure policy: frame 3 of pass 2 raises; the frames of pass 3 that start from it (2 to 4)
    cannot run; every other frame is made. The run fails (exit 1) and --resume makes the rest, the
    bytes of a run that never failed."""
    real = multipass.run_frame

    def run_frame(job, *args, **kwargs):
        if (job.pass_, job.index) == (2, 3):
            raise RuntimeError("a frame task that breaks")
        return real(job, *args, **kwargs)

    monkeypatch.setattr(multipass, "run_frame", run_frame)
    monkeypatch.chdir(tmp_path)
    args = ["video", str(pan_mp4), str(style), "-o", "out/", *multi.argv, "--workers", "0"]
    assert main(args) == 1
    error = "pass 2, frame 3: RuntimeError: a frame task that breaks"
    assert f"scratchnst: error: {error}\n" in capsys.readouterr().err
    m = json.loads((tmp_path / "out.json").read_text())
    assert m["status"] == "failed" and m["error"] == error and not (tmp_path / "out").exists()
    assert m["failed"] == [{"pass": 2, "index": 3, "frame": 3, "error": "RuntimeError: a frame task that breaks"}]
    state = json.loads((tmp_path / "out.work" / "state.json").read_text())
    assert state["failed"] == m["failed"]
    assert sorted((r["pass"], r["index"]) for r in state["frames"]) == [
        (p, k) for p in (1, 2, 3) for k in range(len(pan)) if (p, k) != (2, 3) and not (p == 3 and 2 <= k <= 4)]
    monkeypatch.setattr(multipass, "run_frame", real)
    assert main([*args, "--resume"]) == 0, capsys.readouterr().err
    assert frames_of(tmp_path / "out") == multipass_here[0]
    resumed = json.loads((tmp_path / "out.json").read_text())
    assert resumed["status"] == "done" and "error" not in resumed and "failed" not in resumed
    assert [p["temporal_error"] for p in resumed["passes"]] == [p["temporal_error"] for p in multipass_here[1]["passes"]]


@pytest.mark.weights
def test_multipass_on_dask_workers_resumes_after_ctrl_c_with_the_frames_made_here(tmp_path, pan_mp4, pan, style, multi, multipass_here, weights_env,
                                                                                  dask_processes, ctrl_c_from_worker, run_cli, frames_of):
    address = dask_processes.scheduler()
    dask_processes.worker("w1")
    dask_processes.worker("w2")
    args = [str(pan_mp4), str(style), "-o", f"{tmp_path / 'out'}/", *multi.argv, "--scheduler", address]
    work, n = tmp_path / "out.work", len(pan)
    # Ctrl-C once a worker polls for the 29th time: it has finished at least 7 frames (4 iterations
    # at most each), and the 70 iterations of the 21 frames are not all done (the other worker has
    # polled fewer than 29 times, and this frame stops)
    code, err = ctrl_c_from_worker(["video", *args], tmp_path, 4 * n + 1)
    assert code == 130, err
    stopped = json.loads((tmp_path / "out.json").read_text())
    state = json.loads((work / "state.json").read_text())["frames"]
    assert stopped["status"] == "interrupted" and n <= len(state) < 3 * n, err
    workers = {re.search(r"Start worker at:\s+(\S+)", (tmp_path / f"{w}.log").read_text())[1] for w in ("w1", "w2")}
    assert {r["worker"] for r in state} == workers  # the frames of a pass side by side
    changed = run_cli("video", *args, "--resume", "--passes", "4", cwd=tmp_path)
    assert changed.returncode == 2 and "other passes" in changed.stderr
    r = run_cli("video", *args, "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "out.json").read_text())
    assert frames_of(tmp_path / "out") == multipass_here[0]  # Dask workers, stopped and resumed: the same bytes
    assert m["passes"] == [{**p, "stylize_s": m["passes"][i]["stylize_s"]} for i, p in enumerate(multipass_here[1]["passes"])]
    assert m["backend"] == "numpy" and m["weights_sha256"] == multipass_here[1]["weights_sha256"] and not work.exists()
