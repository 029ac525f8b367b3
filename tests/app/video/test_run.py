"""scratchnst.app.video.run, one `scratchnst video` run (VideoRun) on conftest's pan: every bad input
refused in one line, exit 2, before anything is written; videos as batch jobs (a VideoRun each on
real Dask worker processes) side by side, a rerun skipping the finished ones (same_run), a stopped
video job resuming at its first unfinished frame."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from scratchnst.app import batch
from scratchnst.app.cli import main
from scratchnst.app.video import clip
from scratchnst.app.video import run as video

av = pytest.importorskip("av")
pytest.importorskip("cv2")


# -- bad input -----------------------------------------------------------------------------------


def _bad_inputs(tmp, pan_mp4, pan):
    (tmp / "notes.txt").write_text("not a video")
    with av.open(str(tmp / "empty.mp4"), "w") as c:  # a header and a stream, but not one frame
        s = c.add_stream("libx264", rate=12)
        (s.width, s.height), s.pix_fmt = pan.size, "yuv420p"
        c.start_encoding()
    (tmp / "none").mkdir()
    data = bytearray(pan_mp4.read_bytes())
    start = data.find(b"mdat") + 8  # the header stays readable; the first packets are garbage
    data[start:start + 2000] = b"\xff" * 2000
    (tmp / "garbled.mp4").write_bytes(bytes(data))
    (tmp / "mixed").mkdir()
    Image.fromarray(pan[0]).save(tmp / "mixed" / "a.png")
    Image.fromarray(pan[1][:40]).save(tmp / "mixed" / "b.png")
    return {
        "not a video": (["notes.txt"], "not a video"),
        "zero frames (file)": (["empty.mp4"], "no video"),
        "zero frames (folder)": (["none"], "no frames"),
        "unreadable stream": (["garbled.mp4"], "unreadable video stream"),
        "--frames out of range": ([str(pan_mp4), "--frames", "3:99"], "out of range"),
        "--frames start past the end": ([str(pan_mp4), "--frames", "7:"], "out of range"),
        "--frames malformed": ([str(pan_mp4), "--frames", "4:2"], "A:B"),
        "frames of varying size": (["mixed"], "varying size"),
        "missing input": (["nothing.mp4"], "no such file"),
        "unknown output suffix": ([str(pan_mp4), "-o", "out.gif"], "unknown video suffix"),
        "output is the input": ([str(pan_mp4), "-o", str(pan_mp4)], "overwrite the input"),
        "--passes with --independent": ([str(pan_mp4), "--passes", "2", "--independent"], "without --passes"),
        "--blend negative": ([str(pan_mp4), "--passes", "2", "--blend", "-1"], "--blend must be"),
        "--stop-change negative": ([str(pan_mp4), "--stop-change", "-0.1"], "--stop-change must be"),
        "--stop-change 1 or more": ([str(pan_mp4), "--stop-change", "1"], "--stop-change is a relative change"),
        "--stop-change not a number": ([str(pan_mp4), "--stop-change", "x"], "--stop-change"),
        "--long-term not numbers": ([str(pan_mp4), "--long-term", "1,x"], "--long-term: expected a whole number"),
        "--long-term 0": ([str(pan_mp4), "--long-term", "1,0"], "--long-term must be a whole number > 0"),
        "--long-term negative": ([str(pan_mp4), "--long-term", "1,-10"], "--long-term must be a whole number > 0"),
        "--long-term without 1": ([str(pan_mp4), "--long-term", "10,20"], "--long-term must include 1"),
        "--long-term twice": ([str(pan_mp4), "--long-term", "1,10,10"], "listed twice"),
        "--long-term with --passes": ([str(pan_mp4), "--long-term", "1,10", "--passes", "2"], "without --passes"),
        "--long-term with --independent": ([str(pan_mp4), "--long-term", "1,10", "--independent"], "without --independent"),
    }


CASES = ["not a video", "zero frames (file)", "zero frames (folder)", "unreadable stream", "--frames out of range",
         "--frames start past the end", "--frames malformed", "frames of varying size", "missing input",
         "unknown output suffix", "output is the input", "--passes with --independent", "--blend negative",
         "--stop-change negative", "--stop-change 1 or more", "--stop-change not a number", "--long-term not numbers", "--long-term 0",
         "--long-term negative", "--long-term without 1", "--long-term twice", "--long-term with --passes", "--long-term with --independent"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_2(tmp_path, pan_mp4, pan, style, video_tiny, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    args, needle = _bad_inputs(tmp_path, pan_mp4, pan)[case]
    src, *rest = args
    if "-o" not in rest:
        rest += ["-o", "out.mp4"]
    try:
        code = main(["video", src, str(style), *rest, *video_tiny.argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err, err
    assert not (tmp_path / "out.mp4").exists() and not (tmp_path / "out.mp4.work").exists()


# -- several videos as batch jobs, on real Dask scheduler and worker processes --------------------


@pytest.fixture
def batch_tiny(tiny):
    """The tiny video run of the batch jobs: 32 px, 2 iterations on every frame."""
    return tiny.but(iterations=2, first_iterations=2)


def _jobs(out: Path) -> list[dict]:
    return json.loads((out / "batch.json").read_text())["jobs"]


@pytest.mark.weights
def test_videos_run_as_parallel_batch_jobs_and_a_rerun_skips_them(tmp_path, pan, style, batch_tiny, weights_env, write_clip, dask_processes,
                                                                 run_cli):
    write_clip(tmp_path / "a.mp4", pan[:6])
    write_clip(tmp_path / "b.mkv", pan[6:0:-1])  # the pan backwards
    (tmp_path / "notes.mp4").write_text("not a video")
    address = dask_processes.scheduler()
    dask_processes.worker("w1")
    dask_processes.worker("w2")
    args = ["--videos", "a.mp4", "b.mkv", "notes.mp4", "gone.mp4", "--styles", str(style), "-o", "out", "--scheduler", address, *batch_tiny.argv]
    r = run_cli("batch", *args, cwd=tmp_path, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"scratchnst: batch: 4 jobs: 2 done, 2 failed; see {Path('out') / 'batch.json'}"
    jobs = _jobs(tmp_path / "out")
    assert [(Path(j["output"]).name, j["kind"], j["status"]) for j in jobs] == [
        ("a__style.mp4", "video", "done"), ("b__style.mkv", "video", "done"), ("notes__style.mp4", "video", "failed"),
        ("gone__style.mp4", "video", "failed")]
    assert jobs[2]["error"].startswith(f"{tmp_path / 'notes.mp4'}: not a video"), jobs[2]
    assert jobs[3]["error"] == f"{tmp_path / 'gone.mp4'}: no such file or folder", jobs[3]
    assert jobs[0]["worker"] != jobs[1]["worker"]  # side by side, one worker each
    for j in jobs[:2]:
        decoded = clip.read_clip(j["output"])
        assert (len(decoded.frames), decoded.fps, decoded.frames[0].shape) == (6, 12, (24, 32, 3))
        m = json.loads(Path(j["manifest"]).read_text())
        assert m["status"] == "done" and m["video"]["workers"] == 0 and [f["iterations"] for f in m["frames"]] == [2] * 6
    manifest = json.loads(Path(jobs[0]["manifest"]).read_text())
    ran = {"size": 32, "iterations": 2, "first_iterations": 2, "scales": [1]}
    for changed, same in [({}, True), ({"temporal_weight": 999}, False), ({"frames": "0:5"}, False), ({"frames": "0:6"}, True), ({"size": 48}, False),
                          ({"passes": 2}, False), ({"long_term": [1, 3]}, False), ({"long_term": []}, True), ({"stop_change": 0}, False)]:
        job = batch.Job(str(tmp_path / "a.mp4"), [str(style)], jobs[0]["output"], {**ran, **changed}, kind="video")
        assert video.same_run(manifest, job.content, job.styles, *batch.video_job_settings(job)) is same, changed
    older = {**manifest, "video": {k: v for k, v in manifest["video"].items() if k != "stop_change"}}  # from before --stop-change: off then
    for stop_change, same in ((0, True), (0.01, False)):
        job = batch.Job(str(tmp_path / "a.mp4"), [str(style)], jobs[0]["output"], {**ran, "stop_change": stop_change}, kind="video")
        assert video.same_run(older, job.content, job.styles, *batch.video_job_settings(job)) is same, stop_change
    stamps = [os.stat(j["output"]).st_mtime_ns for j in jobs[:2]]
    r = run_cli("batch", *args, cwd=tmp_path, timeout=300)  # the failed job is tried again; the done ones are skipped
    assert r.returncode == 1 and "4 jobs: 2 done (2 already), 2 failed" in r.stderr, r.stderr
    assert [(j["status"], j["skipped"]) for j in _jobs(tmp_path / "out")] == [("done", True), ("done", True)] + [("failed", False)] * 2
    assert [os.stat(j["output"]).st_mtime_ns for j in jobs[:2]] == stamps
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".") or p.suffix == ".work"]


@pytest.mark.weights
def test_a_stopped_video_job_resumes_at_its_first_unfinished_frame(tmp_path, pan, style, batch_tiny, weights_env, write_clip, dask_processes,
                                                                   ctrl_c_from_worker, run_cli):
    write_clip(tmp_path / "a.mp4", pan)
    job = {"video": "a.mp4", "styles": [str(style)], "output": "a/", "frames": "0:6", "temporal_weight": 500, "iterations": 8,
           "stop_change": 0}  # every later frame its 8 iterations: the Ctrl-C below lands at a known step
    (tmp_path / "jobs.jsonl").write_text(json.dumps(job) + "\n")
    address = dask_processes.scheduler()
    dask_processes.worker("w1")
    args = ["--jobs", "jobs.jsonl", "-o", "out", "--scheduler", address, *batch_tiny.argv]
    out, work = tmp_path / "out", tmp_path / "out" / "a.work"
    # Ctrl-C at frame 3's third iteration (frame 0 takes 2, every later frame 8): frames 0 to 2 are kept
    code, err = ctrl_c_from_worker(["batch", *args], tmp_path, 2 + 8 + 8 + 3)
    assert code == 130, err
    [stopped_job] = _jobs(out)
    stopped = json.loads(Path(stopped_job["manifest"]).read_text())
    assert stopped_job["status"] == "interrupted" and stopped["status"] == "interrupted", err
    assert stopped["frames_done"] == 3 and not (out / "a").exists()
    r = run_cli("batch", *args, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "a.json").read_text())
    assert m["status"] == "done" and m["video"]["frames"] == [0, 6] and m["video"]["temporal_weight"] == 500
    assert m["frames"][: stopped["frames_done"]] == stopped["frames"]  # the finished frames were kept, not made again
    assert [f["iterations"] for f in m["frames"]] == [2] + [8] * 5
    assert sorted(p.name for p in (out / "a").iterdir()) == [f"frame_{k:05d}.png" for k in range(6)] and not work.exists()
