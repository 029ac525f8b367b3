"""scratchnst.app.video.work, OUT.work/ beside a video's OUT: a run stopped by Ctrl-C and then by a
SIGKILL, each at a known L-BFGS step, keeps its finished frames, and --resume makes the bytes of a run
never stopped, with --long-term too; a rerun without --resume, a resume with other options and a
resume of nothing are refused."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

pytest.importorskip("av")
pytest.importorskip("cv2")


def _recorded(work: Path, count: int) -> bool:
    """Whether the work folder's state lists `count` finished frames (a frame's PNG is written
    before its record, so the PNG alone may belong to a frame a signal then leaves unrecorded)."""
    try:
        return len(json.loads((work / "state.json").read_text())["frames"]) >= count
    except (OSError, ValueError, KeyError):
        return False


# Runs `scratchnst ARGV` in this Python, which sends itself the signal STOP_WITH as its L-BFGS is about
# to take its STOP_AT_STEP-th step (every frame's iterations counted): a signal that provably lands in
# the middle of a known frame, whatever the machine's speed. (conftest's start_cli holds a run at an
# objective evaluation once a file exists; here the point is a step count across frames.)
STOP_AT_STEP = """
import os, signal, sys
from scratchnst.app.cli import main
from scratchnst.core import optim

real, calls = optim.LBFGS.step, [0]

def step(self):
    calls[0] += 1
    if calls[0] == int(os.environ["STOP_AT_STEP"]):
        os.kill(os.getpid(), getattr(signal, os.environ["STOP_WITH"]))
    return real(self)

optim.LBFGS.step = step
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.weights
def test_resume_after_interrupt_and_kill_gives_the_same_frames(tmp_path, pan_mp4, pan, style, video_tiny, weights_env, run_cli, frames_of):
    def video(*args, step: int | None = None, sig: str | None = None):
        """`scratchnst video ARGS`, stopped by `sig` at its L-BFGS step `step` if given; the finished process."""
        if step is None:
            return run_cli("video", *args, cwd=tmp_path)
        return run_cli("video", *args, cwd=tmp_path, code=STOP_AT_STEP, env={"STOP_AT_STEP": str(step), "STOP_WITH": sig})

    base = [str(pan_mp4), str(style), *video_tiny.argv, "--workers", "0"]
    whole = tmp_path / "whole"
    assert video(*base, "-o", f"{whole}/").returncode == 0
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("an existing OUT stays until the new one is complete")
    args = [*base, "-o", f"{out}/"]
    work = tmp_path / "out.work"
    # Ctrl-C at frame 3's second step (frame 0 takes 4, every later frame 3): frames 0 to 2 are kept
    proc = video(*args, step=4 + 3 + 3 + 2, sig="SIGINT")
    assert proc.returncode == 130, proc.stderr
    m = json.loads((tmp_path / "out.json").read_text())
    assert m["status"] == "interrupted" and m["frames_done"] == 3 and m["work"] == str(work)
    assert (out / "keep.txt").exists()
    again = video(*args)  # without --resume the unfinished run is not overwritten
    assert again.returncode == 2 and "--resume" in again.stderr
    changed = video(*args, "--resume", "--iterations", "2")
    assert changed.returncode == 2 and "other args" in changed.stderr
    # killed at frame 4's second step: frame 3 is kept, frame 4 is not
    proc = video(*args, "--resume", step=3 + 2, sig="SIGKILL")
    assert proc.returncode == -signal.SIGKILL and (out / "keep.txt").exists()
    assert _recorded(work, 4) and not _recorded(work, 5) and not (work / "frame_00004.png").exists()
    r = video(*args, "--resume")
    assert r.returncode == 0, r.stderr
    assert frames_of(out) == frames_of(whole) and len(frames_of(out)) == len(pan)
    assert json.loads((tmp_path / "out.json").read_text())["status"] == "done" and not work.exists()
    other = video(*base, "--iterations", "2", "-o", f"{tmp_path / 'o2'}/", "--frames", "0:3")
    assert other.returncode == 0, other.stderr
    assert video(*base, "-o", f"{out}/", "--resume").returncode == 2  # nothing to resume


@pytest.mark.weights
def test_resume_with_long_term_gives_the_same_frames(tmp_path, there_and_back_mp4, style, video_tiny, weights_env, run_cli, frames_of):
    """--long-term 1,2,4,6 reads frames 5 − 1, 5 − 2 and 5 − 4 back for frame 5: Ctrl-C there, then
    --resume (its flows on a Dask worker now) makes the bytes of a run never stopped (here, no Dask)."""
    base = [str(there_and_back_mp4), str(style), *video_tiny.argv, "--long-term", "1,2,4,6"]
    whole, out = tmp_path / "whole", tmp_path / "out"
    r = run_cli("video", *base, "--workers", "0", "-o", f"{whole}/", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # Ctrl-C at frame 5's second step (frame 0 takes 4, every later frame 3): frames 0 to 4 are kept
    env = {"STOP_AT_STEP": str(4 + 4 * 3 + 2), "STOP_WITH": "SIGINT"}
    proc = run_cli("video", *base, "--workers", "0", "-o", f"{out}/", cwd=tmp_path, code=STOP_AT_STEP, env=env)
    assert proc.returncode == 130 and _recorded(tmp_path / "out.work", 5) and not _recorded(tmp_path / "out.work", 6), proc.stderr
    other = run_cli("video", *base[:-1], "1,2", "--workers", "0", "-o", f"{out}/", "--resume", cwd=tmp_path)
    assert other.returncode == 2 and "other long_term" in other.stderr, other.stderr
    r = run_cli("video", *base, "--workers", "1", "-o", f"{out}/", "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert frames_of(out) == frames_of(whole) and len(frames_of(out)) == 7


@pytest.mark.weights
def test_resume_with_frames_that_stop_early_gives_the_same_frames(tmp_path, pan_mp4, pan, style, video_tiny, weights_env, run_cli, frames_of):
    """Later frames that settle before their cap (--stop-change), each started from the previous PNG
    with its new content continued from the painting (a gap drawn per frame): killed in frame 2,
    resumed, the bytes of a run never stopped."""
    base = [str(pan_mp4), str(style), *video_tiny.argv, "--workers", "0", "--iterations", "10", "--stop-change", "0.2"]
    whole, out, work = tmp_path / "whole", tmp_path / "out", tmp_path / "out.work"
    r = run_cli("video", *base, "-o", f"{whole}/", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    later = json.loads((tmp_path / "whole.json").read_text())["frames"][1:]
    assert {f["stopped"] for f in later} == {"settled"} and all(f["iterations"] < 10 for f in later), later
    # killed at frame 2's second step: frame 0 takes 4 steps and frame 1 its recorded iterations
    env = {"STOP_AT_STEP": str(4 + later[0]["iterations"] + 2), "STOP_WITH": "SIGKILL"}
    proc = run_cli("video", *base, "-o", f"{out}/", cwd=tmp_path, code=STOP_AT_STEP, env=env)
    assert proc.returncode == -signal.SIGKILL and _recorded(work, 2) and not _recorded(work, 3), proc.stderr
    r = run_cli("video", *base, "-o", f"{out}/", "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert frames_of(out) == frames_of(whole) and len(frames_of(out)) == len(pan)
