"""`scratchnst video` on a synthetic clip made here with PyAV: a textured picture panned a few pixels per
frame, so the true motion is known. Warp and mask against that motion, the temporal term's gradient,
encode/decode, less flicker with the temporal term, resume after an interrupt, bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from scratchnst import gradcheck
from scratchnst.app import batch
from scratchnst.app.video import clip, flow, multipass, options
from scratchnst.app.video import run as video
from scratchnst.app.cli import build_parser, main
from scratchnst.app.picture.settings import Settings
from scratchnst.core.losses import temporal_loss
from scratchnst.errors import ScratchnstError

av = pytest.importorskip("av")
pytest.importorskip("cv2")

W, H, FRAMES, DX, DY = 64, 48, 7, 2, 1  # the pan: frame t is the texture window at (t·DX, t·DY)
TINY = ["--iterations", "3", "--first-iterations", "4", "--scales", "1", "--quiet"]


def _texture(rng, w, h) -> np.ndarray:
    """Smooth random colour blobs (so the flow has texture to lock on, and no aliasing)."""
    small = rng.uniform(0, 255, (h // 4, w // 4, 3)).astype(np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(1))
    return np.asarray(img)


@pytest.fixture(scope="module")
def pan() -> list[np.ndarray]:
    """FRAMES (H, W, 3) uint8 frames, frame t(p) = texture(p + t·(DX, DY)): so frame t(p) =
    frame t−1(p + (DX, DY)), and the flow from frame t to frame t − 1 is (DX, DY) everywhere."""
    big = _texture(np.random.default_rng(0), W + FRAMES * DX + 8, H + FRAMES * DY + 8)
    return [np.ascontiguousarray(big[t * DY: t * DY + H, t * DX: t * DX + W]) for t in range(FRAMES)]


def _write_clip(path, frames, fps=12, audio=False) -> None:
    """An H.264 clip (CRF 0, 4:4:4: lossless but for the RGB↔YUV rounding; VP9 in a .webm), optionally
    with a second of sine tone (AAC; Opus in a .webm). A keyframe every 4 frames, as real clips have
    several."""
    webm = Path(path).suffix == ".webm"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libvpx-vp9" if webm else "libx264", rate=fps)
        s.width, s.height, s.pix_fmt = W, H, "yuv444p"
        s.options = {"g": "4", **({"lossless": "1"} if webm else {"crf": "0"})}
        a = c.add_stream("libopus" if webm else "aac", rate=48000) if audio else None
        for f in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
        if a is not None:
            tone = (0.2 * np.sin(np.arange(48000) * 2 * np.pi * 440 / 48000)).astype(np.float32)[None]
            for start in range(0, 48000, 960):
                frame = av.AudioFrame.from_ndarray(tone[:, start:start + 960].copy(), format="flt", layout="mono")
                frame.rate = 48000
                for packet in a.encode(frame):
                    c.mux(packet)
            for packet in a.encode():
                c.mux(packet)


@pytest.fixture(scope="module")
def pan_mp4(tmp_path_factory, pan):
    path = tmp_path_factory.mktemp("clip") / "pan.mp4"
    _write_clip(path, pan)
    return path


# -- frames in and out ---------------------------------------------------------------------------


def test_decode_encode_round_trip(tmp_path, pan_mp4, pan):
    c = clip.read_clip(pan_mp4)
    assert (len(c.frames), c.fps, c.source_size, c.first, c.total) == (FRAMES, 12, (W, H), 0, FRAMES)
    assert max(np.abs(a.astype(int) - b).mean() for a, b in zip(c.frames, pan)) < 2.0
    pngs = []
    for k, f in enumerate(c.frames):
        pngs.append(tmp_path / f"{k}.png")
        Image.fromarray(f).save(pngs[-1])
    out = tmp_path / "again.mkv"
    assert clip.write_output(pngs, out, False, c.fps) is None
    again = clip.read_clip(out, frames=(2, 5))
    assert (len(again.frames), again.fps, again.first, again.source_size) == (3, 12, 2, (W, H))
    luma = lambda f: f.astype(float) @ (0.299, 0.587, 0.114)  # noqa: E731  (4:2:0 halves the chroma)
    assert max(np.abs(luma(a) - luma(b)).mean() for a, b in zip(again.frames, c.frames[2:5])) < 2.0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind
    half = clip.read_clip(pan_mp4, size=32)
    assert half.frames[0].shape == (24, 32, 3) and half.source_size == (W, H)


def test_audio_is_copied_over_the_frames_span(tmp_path, pan):
    src = tmp_path / "with_audio.mp4"
    _write_clip(src, pan, audio=True)
    pngs = []
    for k, f in enumerate(pan):
        pngs.append(tmp_path / f"{k}.png")
        Image.fromarray(f).save(pngs[-1])
    out = tmp_path / "out.mp4"
    assert clip.write_output(pngs[:3], out, False, 12, audio_from=src, span=(0.25, 0.5)) is None
    with av.open(str(out)) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        times = [float(p.pts * p.time_base) for p in c.demux(c.streams.audio[0]) if p.pts is not None]
    assert times and min(times) >= 0 and max(times) < 0.26


def test_folder_of_frames_in_and_out(tmp_path, pan):
    src = tmp_path / "frames"
    src.mkdir()
    for k, f in enumerate(pan):
        Image.fromarray(f).save(src / f"f{k:03d}.png")
    c = clip.read_clip(src, frames=(1, None), fps=8)
    assert (len(c.frames), c.fps, c.first) == (FRAMES - 1, 8, 1)
    assert np.array_equal(c.frames[0], pan[1])
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("replaced only once the new frames are complete")
    clip.write_output(sorted(src.glob("*.png"))[:2], out, True, c.fps)
    assert sorted(p.name for p in out.iterdir()) == ["frame_00000.png", "frame_00001.png"]


@pytest.mark.weights
def test_a_folder_of_frames_becomes_a_video_file_without_sound(tmp_path, pan, style, _weights, capsys, monkeypatch):
    src = tmp_path / "frames"
    src.mkdir()
    for k, f in enumerate(pan[:3]):
        Image.fromarray(f).save(src / f"f{k}.png")
    monkeypatch.chdir(tmp_path)
    assert main(["video", str(src), str(style), "-o", "out.mp4", *TINY, "--workers", "0"]) == 0, capsys.readouterr().err
    decoded = clip.read_clip(tmp_path / "out.mp4")
    assert (len(decoded.frames), decoded.fps, decoded.source_size) == (3, clip.DEFAULT_FPS, (W, H))
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert len(c.streams.video) == 1 and not c.streams.audio


def test_video_options_validated_is_a_new_object_and_the_defaults_have_one_home():
    given = options.VideoOptions(first_iterations=None, frames=[2, None])
    checked = given.validated()
    assert checked is not given and (given.first_iterations, given.frames) == (None, [2, None])
    assert (checked.first_iterations, checked.frames) == (Settings().iterations, (2, None))
    assert options.JOB_OPTIONS == ("temporal_weight", "first_iterations", "frames", "independent", "fps", "passes", "blend")
    parser = build_parser()
    video_args = parser.parse_args(["video", "in.mp4", "s.png", "-o", "o.mp4"])
    batch_args = parser.parse_args(["batch", "--videos", "in.mp4", "--styles", "s.png", "-o", "out"])
    for args in (video_args, batch_args):
        assert {k: getattr(args, k) for k in options.JOB_OPTIONS} == {k: getattr(options.DEFAULTS, k) for k in options.JOB_OPTIONS}
    assert video_args.iterations == options.ITERATIONS


# -- warp, flow, mask ----------------------------------------------------------------------------


def _warp_naive(image, flow_):
    """Per-pixel bilinear sampling, the readable reference for flow.warp."""
    H_, W_ = flow_.shape[:2]
    out = np.zeros(image.shape, dtype=np.float64)
    for y in range(H_):
        for x in range(W_):
            sx = min(max(x + flow_[y, x, 0], 0), W_ - 1)
            sy = min(max(y + flow_[y, x, 1], 0), H_ - 1)
            x0, y0 = int(np.floor(sx)), int(np.floor(sy))
            x1, y1 = min(x0 + 1, W_ - 1), min(y0 + 1, H_ - 1)
            ax, ay = sx - x0, sy - y0
            out[y, x] = ((1 - ay) * ((1 - ax) * image[y0, x0] + ax * image[y0, x1])
                         + ay * ((1 - ax) * image[y1, x0] + ax * image[y1, x1]))
    return out


@pytest.mark.parametrize("shape", [(5, 7, 3), (6, 4)])
def test_warp_matches_the_naive_reference(rng, shape):
    image = rng.uniform(0, 255, shape)
    f = rng.uniform(-3, 3, (*shape[:2], 2))
    assert np.allclose(flow.warp(image, f), _warp_naive(image, f))


def test_warp_follows_the_known_motion(pan):
    backward = np.tile(np.array([DX, DY], np.float32), (H, W, 1))  # frame t(p) = frame t−1(p + (DX, DY))
    warped = flow.warp(pan[2], backward)
    inside = flow.inside_mask(backward)
    assert np.array_equal(warped[inside], pan[3][inside].astype(np.float64))
    assert inside.sum() == (W - DX) * (H - DY)
    yy, xx = np.mgrid[0:H, 0:W]
    ramp = 3.0 * xx + 5.0 * yy  # bilinear sampling is exact on a linear image
    sub = np.full((H, W, 2), (0.25, 0.75))
    assert np.allclose(flow.warp(ramp, sub)[:-1, :-1], (ramp + 3 * 0.25 + 5 * 0.75)[:-1, :-1])


def test_flow_and_mask_recover_the_known_motion(pan):
    pair = flow.pair_flow(pan[2], pan[3])
    reliable = pair.mask > 0
    assert reliable.mean() > 0.8
    assert np.abs(pair.backward[reliable] - (DX, DY)).max() < 0.5
    assert np.median(np.abs(pair.backward[reliable] - (DX, DY))) < 0.1
    # The strip that came in from outside frame t − 1 (right DX columns, bottom DY rows) is masked.
    assert not reliable[:, W - DX:].any() and not reliable[H - DY:, :].any()
    warped = flow.warp(pan[2], pair.backward)
    assert np.abs(warped - pan[3])[reliable].mean() < 1.0


def test_mask_marks_occlusions_and_motion_boundaries():
    backward = np.tile(np.array([2.0, 0.0]), (20, 30, 1))
    forward = -backward.copy()
    forward[5:10, 12:17] = 0.0  # the forward flow does not lead back: occluded
    mask = flow.consistency_mask(backward, forward)
    assert not mask[5:10, 10:15].any()  # pixels p with p + (2, 0) in the inconsistent square
    assert mask[12:, :20].all() and mask[:4, :20].all()
    assert not mask[:, 28:].any()  # sampled from outside frame t − 1
    step = np.zeros((20, 30, 2))
    step[:, 15:, 0] = 3.0  # a moving object's edge: a motion boundary, but consistent motion
    edge = flow.consistency_mask(step, -step)  # the forward flow leads back everywhere
    assert not edge[:, 14:16].any() and edge[:, :12].all()


# -- the temporal term ---------------------------------------------------------------------------


def test_temporal_loss_value_and_gradient(rng):
    x, target = rng.standard_normal((2, 1, 3, 5, 6))
    mask = (rng.uniform(size=(1, 1, 5, 6)) > 0.3).astype(np.float64)
    value, dx = temporal_loss(x, target, mask)
    assert np.isclose(value, np.sum(mask * (x - target) ** 2) / x.size)
    assert np.all(dx[np.broadcast_to(mask, x.shape) == 0] == 0)
    r = gradcheck.check_loss("temporal", lambda v: temporal_loss(v, target, mask), x.copy(), eps=1e-6, threshold=1e-7)
    assert r.passed, r
    assert any(r.op == "temporal" and r.passed for r in gradcheck.op_checks(rng))


def test_gradcheck_cli_explains_temporal(capsys):
    assert main(["gradcheck", "--op", "temporal"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("temporal: x(1, 3, 5, 6)") and ": pass" in out


# -- whole runs (real weights, tiny) -------------------------------------------------------------


# Subprocesses import this checkout's package, wherever they run.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH")]))}


def _run(args, cwd, **kw):
    return subprocess.run([sys.executable, "-m", "scratchnst", "video", *args], cwd=cwd, capture_output=True, text=True, env=ENV, **kw)


@pytest.fixture
def _weights(vgg_weights_path, monkeypatch):
    monkeypatch.setenv("SCRATCHNST_WEIGHTS", str(vgg_weights_path))


@pytest.fixture(scope="module")
def style(tmp_path_factory):
    path = tmp_path_factory.mktemp("style") / "style.png"
    Image.fromarray(_texture(np.random.default_rng(1), 48, 48)[:, ::-1]).save(path)
    return path


@pytest.mark.weights
def test_temporal_term_lowers_flicker_and_the_manifest_says_so(tmp_path, pan_mp4, style, _weights):
    runs = {}
    for name, extra in (("warm", ["--temporal-weight", "0", "--workers", "0"]), ("ours", ["--temporal-weight", "3000"])):
        out = tmp_path / f"{name}.mp4"
        r = _run([str(pan_mp4), str(style), "-o", str(out), *TINY, *extra], tmp_path)  # ours: flows on a Dask worker
        assert r.returncode == 0, r.stderr
        runs[name] = json.loads(out.with_suffix(".json").read_text())
        assert not (tmp_path / f"{name}.mp4.work").exists()
        decoded = clip.read_clip(out)
        assert (len(decoded.frames), decoded.fps, decoded.source_size) == (FRAMES, 12, (W, H))
    m = runs["ours"]
    assert m["status"] == "done" and m["frames_done"] == FRAMES and m["size"] == [W, H] and m["fps"] == "12"
    assert [f["iterations"] for f in m["frames"]] == [4] + [3] * (FRAMES - 1)
    for f in m["frames"][1:]:
        total = sum(m["args"][f"{k}_weight"] * f[k] for k in ("content", "style", "tv")) + m["video"]["temporal_weight"] * f["temporal"]
        assert f["loss"] == pytest.approx(total, rel=1e-4)
        assert f["temporal_error"] >= 0 and 0.8 < f["reliable"] <= 1 and f["flow_s"] > 0
    assert m["temporal_error"] < 0.7 * runs["warm"]["temporal_error"]


def _frames_of(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def _recorded(work: Path, count: int) -> bool:
    """Whether the work folder's state lists `count` finished frames (a frame's PNG is written
    before its record, so the PNG alone may belong to a frame a signal then leaves unrecorded)."""
    try:
        return len(json.loads((work / "state.json").read_text())["frames"]) >= count
    except (OSError, ValueError, KeyError):
        return False


# Runs `scratchnst ARGV` in this Python, which sends itself the signal STOP_WITH as its L-BFGS is about
# to take its STOP_AT_STEP-th step (every frame's iterations counted): a signal that provably lands in
# the middle of a known frame, whatever the machine's speed.
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


def _stopped_at_step(args, cwd, step: int, sig: str):
    """`scratchnst video ARGS`, stopped by `sig` at its L-BFGS step `step`; the finished process."""
    env = {**ENV, "STOP_AT_STEP": str(step), "STOP_WITH": sig}
    return subprocess.run([sys.executable, "-c", STOP_AT_STEP, "video", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.weights
def test_resume_after_interrupt_and_kill_gives_the_same_frames(tmp_path, pan_mp4, style, _weights):
    base = [str(pan_mp4), str(style), *TINY, "--workers", "0"]
    whole = tmp_path / "whole"
    assert _run([*base, "-o", f"{whole}/"], tmp_path).returncode == 0
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("an existing OUT stays until the new one is complete")
    args = [*base, "-o", f"{out}/"]
    work = tmp_path / "out.work"
    # Ctrl-C at frame 3's second step (frame 0 takes 4, every later frame 3): frames 0 to 2 are kept
    proc = _stopped_at_step(args, tmp_path, 4 + 3 + 3 + 2, "SIGINT")
    assert proc.returncode == 130, proc.stderr
    m = json.loads((tmp_path / "out.json").read_text())
    assert m["status"] == "interrupted" and m["frames_done"] == 3 and m["work"] == str(work)
    assert (out / "keep.txt").exists()
    again = _run(args, tmp_path)  # without --resume the unfinished run is not overwritten
    assert again.returncode == 2 and "--resume" in again.stderr
    changed = _run([*args, "--resume", "--iterations", "2"], tmp_path)
    assert changed.returncode == 2 and "other args" in changed.stderr
    # killed at frame 4's second step: frame 3 is kept, frame 4 is not
    proc = _stopped_at_step([*args, "--resume"], tmp_path, 3 + 2, "SIGKILL")
    assert proc.returncode == -signal.SIGKILL and (out / "keep.txt").exists()
    assert _recorded(work, 4) and not _recorded(work, 5) and not (work / "frame_00004.png").exists()
    r = _run([*args, "--resume"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert _frames_of(out) == _frames_of(whole) and len(_frames_of(out)) == FRAMES
    assert json.loads((tmp_path / "out.json").read_text())["status"] == "done" and not work.exists()
    other = _run([*base, "--iterations", "2", "-o", f"{tmp_path / 'o2'}/", "--frames", "0:3"], tmp_path)
    assert other.returncode == 0, other.stderr
    assert _run([*base, "-o", f"{out}/", "--resume"], tmp_path).returncode == 2  # nothing to resume


# -- bad input -----------------------------------------------------------------------------------


def _bad_inputs(tmp, pan_mp4, pan):
    (tmp / "notes.txt").write_text("not a video")
    with av.open(str(tmp / "empty.mp4"), "w") as c:  # a header and a stream, but not one frame
        s = c.add_stream("libx264", rate=12)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
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
    }


CASES = ["not a video", "zero frames (file)", "zero frames (folder)", "unreadable stream", "--frames out of range",
         "--frames start past the end", "--frames malformed", "frames of varying size", "missing input",
         "unknown output suffix", "output is the input", "--passes with --independent", "--blend negative"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_2(tmp_path, pan_mp4, pan, style, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    args, needle = _bad_inputs(tmp_path, pan_mp4, pan)[case]
    src, *rest = args
    if "-o" not in rest:
        rest += ["-o", "out.mp4"]
    try:
        code = main(["video", src, str(style), *rest, *TINY])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err, err
    assert not (tmp_path / "out.mp4").exists() and not (tmp_path / "out.mp4.work").exists()


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 now raises ImportError
    with pytest.raises(ScratchnstError, match=r"scratchnst\[video\]"):
        flow.video_libs()


# -- damaged files: a bad stream must not decode "successfully" to its first frames ---------------


def _damage(data: bytes, how: str) -> bytes:
    """A sixth of the bytes from the middle on replaced by seeded noise, or the file cut in half."""
    if how == "truncated":
        return data[: len(data) // 2]
    out, mid = bytearray(data), len(data) // 2
    out[mid: mid + len(data) // 6] = np.random.default_rng(3).integers(0, 256, len(data) // 6, dtype=np.uint8).tobytes()
    return bytes(out)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".webm"])
@pytest.mark.parametrize("how", ["garbled", "truncated"])
def test_damaged_video_is_one_line_and_exit_2(tmp_path, pan, style, capsys, monkeypatch, suffix, how):
    monkeypatch.chdir(tmp_path)
    good = tmp_path / f"good{suffix}"
    _write_clip(good, pan * 2)
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(_damage(good.read_bytes(), how))
    monkeypatch.setattr(video.VideoRun, "run", lambda self: pytest.fail(f"{bad.name} was accepted: {len(self.clip.frames)} frames"))
    assert main(["video", str(bad), str(style), "-o", "out.mp4", *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "damaged" in err and "Traceback" not in err, err
    if suffix != ".mp4" or how != "truncated":  # a cut MP4 has lost its index (moov), so it does not even open
        decoded = int(re.search(r"unreadable video stream, .*: decoded (\d+) of about 14 frames", err).group(1))
        assert decoded < 14 and (decoded == 0 or f"--frames 0:{decoded} takes the frames before the damage" in err), err
        if decoded:  # the hint holds: those frames are read without complaint
            assert len(clip.read_clip(bad, frames=(0, decoded)).frames) == decoded
    assert not (tmp_path / "out.mp4").exists() and not (tmp_path / "out.mp4.work").exists()


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".webm", ".mov"])
@pytest.mark.parametrize("frames, audio", [(1, True), (2, False), (FRAMES, False), (FRAMES, True)])
def test_valid_clips_decode_every_frame(tmp_path, pan, suffix, frames, audio):
    """No false alarm: the declared count (a sample table, a DURATION tag, a duration the audio
    outlasts) matches what decodes, whatever the container."""
    path = tmp_path / f"clip{suffix}"
    _write_clip(path, pan[:frames], audio=audio)
    c = clip.read_clip(path)
    assert (len(c.frames), c.total) == (frames, frames)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert clip.declared_frames(container, stream, stream.average_rate) == frames


# -- several videos as batch jobs, on real Dask scheduler and worker processes --------------------

BATCH_TINY = ["--size", "32", "--iterations", "2", "--first-iterations", "2", "--scales", "1", "--quiet"]


# Sent to the Dask workers before a run (conftest's run_on_workers): at a worker's AFTER-th progress
# poll (one per iteration of a frame), unless the client was interrupted already, Ctrl-C reaches the
# client's process group, as a terminal sends it, and that frame waits until the client has set the
# interrupt Event; every poll asks the Event (no POLL_S between). So the run stops at a known point
# of its work, whatever the machines' speed.
CTRL_C_FROM_WORKER = """
import os, signal, time
from pathlib import Path
from scratchnst.app import cluster

calls = [0]

def poll(self, _entry=None):
    calls[0] += 1
    if calls[0] == AFTER and not self.event.is_set():
        os.killpg(int(Path(PGID).read_text()), signal.SIGINT)
        deadline = time.monotonic() + 60
        while not self.event.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
    self.stopped = self.stopped or self.event.is_set()
    return self.stopped

cluster.Interrupt.poll = poll
"""


def _ctrl_c_from_worker(dask_processes, args, cwd: Path, after: int) -> tuple[int, str]:
    """Run `scratchnst ARGS` in its own process group, stopped by Ctrl-C at a worker's `after`-th
    poll (CTRL_C_FROM_WORKER); (exit code, stderr)."""
    pgid = cwd / "cli.pgid"
    dask_processes.run_on_workers(CTRL_C_FROM_WORKER.replace("AFTER", str(after)).replace("PGID", repr(str(pgid))))
    # the shell writes its pid, the group's id, before it becomes the CLI
    proc = subprocess.Popen(["sh", "-c", f'echo $$ > "{pgid}"; exec "$@"', "sh", sys.executable, "-m", "scratchnst", *args],
                            cwd=cwd, env=ENV, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, err


def _batch(args, cwd):
    return subprocess.run([sys.executable, "-m", "scratchnst", "batch", *args], cwd=cwd, capture_output=True, text=True, env=ENV, timeout=300)


def _jobs(out: Path) -> list[dict]:
    return json.loads((out / "batch.json").read_text())["jobs"]


@pytest.mark.weights
def test_videos_run_as_parallel_batch_jobs_and_a_rerun_skips_them(tmp_path, pan, style, _weights, dask_processes):
    _write_clip(tmp_path / "a.mp4", pan[:6])
    _write_clip(tmp_path / "b.mkv", pan[6:0:-1])  # the pan backwards
    (tmp_path / "notes.mp4").write_text("not a video")
    address = dask_processes.scheduler()
    dask_processes.worker("w1")
    dask_processes.worker("w2")
    args = ["--videos", "a.mp4", "b.mkv", "notes.mp4", "gone.mp4", "--styles", str(style), "-o", "out", "--scheduler", address, *BATCH_TINY]
    r = _batch(args, tmp_path)
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
                          ({"passes": 2}, False)]:
        job = batch.Job(str(tmp_path / "a.mp4"), [str(style)], jobs[0]["output"], {**ran, **changed}, kind="video")
        assert video.same_run(manifest, job.content, job.styles, *batch.video_job_settings(job)) is same, changed
    stamps = [os.stat(j["output"]).st_mtime_ns for j in jobs[:2]]
    r = _batch(args, tmp_path)  # the failed job is tried again; the done ones are skipped
    assert r.returncode == 1 and "4 jobs: 2 done (2 already), 2 failed" in r.stderr, r.stderr
    assert [(j["status"], j["skipped"]) for j in _jobs(tmp_path / "out")] == [("done", True), ("done", True)] + [("failed", False)] * 2
    assert [os.stat(j["output"]).st_mtime_ns for j in jobs[:2]] == stamps
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".") or p.suffix == ".work"]


@pytest.mark.weights
def test_a_stopped_video_job_resumes_at_its_first_unfinished_frame(tmp_path, pan, style, _weights, dask_processes):
    _write_clip(tmp_path / "a.mp4", pan)
    job = {"video": "a.mp4", "styles": [str(style)], "output": "a/", "frames": "0:6", "temporal_weight": 500, "iterations": 8}
    (tmp_path / "jobs.jsonl").write_text(json.dumps(job) + "\n")
    address = dask_processes.scheduler()
    dask_processes.worker("w1")
    args = ["--jobs", "jobs.jsonl", "-o", "out", "--scheduler", address, *BATCH_TINY]
    out, work = tmp_path / "out", tmp_path / "out" / "a.work"
    # Ctrl-C at frame 3's third iteration (frame 0 takes 2, every later frame 8): frames 0 to 2 are kept
    code, err = _ctrl_c_from_worker(dask_processes, ["batch", *args], tmp_path, 2 + 8 + 8 + 3)
    assert code == 130, err
    [stopped_job] = _jobs(out)
    stopped = json.loads(Path(stopped_job["manifest"]).read_text())
    assert stopped_job["status"] == "interrupted" and stopped["status"] == "interrupted", err
    assert stopped["frames_done"] == 3 and not (out / "a").exists()
    r = _batch(args, tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "a.json").read_text())
    assert m["status"] == "done" and m["video"]["frames"] == [0, 6] and m["video"]["temporal_weight"] == 500
    assert m["frames"][: stopped["frames_done"]] == stopped["frames"]  # the finished frames were kept, not made again
    assert [f["iterations"] for f in m["frames"]] == [2] + [8] * 5
    assert sorted(p.name for p in (out / "a").iterdir()) == [f"frame_{k:05d}.png" for k in range(6)] and not work.exists()


# -- multi-pass mode: every frame of a pass a Dask task -------------------------------------------


def test_a_multipass_batch_job_runs_its_passes_on_its_worker():
    job = batch.Job("a.mp4", ["s.png"], "out.mp4", {"passes": 3, "blend": 0.5}, kind="video")
    _, own = batch.video_job_settings(job)
    assert (own.passes, own.blend, own.workers) == (3, 0.5, 0)
    with pytest.raises(ScratchnstError, match="--passes must be a whole number"):
        batch.video_job_settings(batch.Job("a.mp4", ["s.png"], "out.mp4", {"passes": 1.5}, kind="video"))

MULTI = [*TINY, "--passes", "3"]


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
def multipass_here(tmp_path_factory, pan_mp4, style, vgg_weights_path):
    """The multi-pass run with every task in this process (--workers 0): (its frames, its manifest)."""
    tmp = tmp_path_factory.mktemp("multipass")
    r = _run([str(pan_mp4), str(style), "-o", f"{tmp / 'out'}/", *MULTI, "--workers", "0"], tmp)
    assert r.returncode == 0, r.stderr
    return _frames_of(tmp / "out"), json.loads((tmp / "out.json").read_text())


@pytest.mark.weights
def test_each_pass_lowers_the_flicker_of_independent_frames(multipass_here):
    frames, m = multipass_here
    assert m["status"] == "done" and m["frames_done"] == FRAMES and len(frames) == FRAMES
    assert [(p["pass"], p["frames_done"]) for p in m["passes"]] == [(1, 7), (2, 7), (3, 7)]
    assert [(f["pass"], f["index"], f["neighbours"], f["iterations"]) for f in m["frames"]] == [
        (3, k, [n for n in (k - 1, k + 1) if 0 <= n < FRAMES], 3) for k in range(FRAMES)]
    for f in m["frames"]:
        total = sum(m["args"][f"{k}_weight"] * f[k] for k in ("content", "style", "tv")) + m["video"]["temporal_weight"] * f["temporal"]
        assert f["loss"] == pytest.approx(total, rel=1e-4) and 0.8 < f["reliable"] <= 1
    errors = [p["temporal_error"] for p in m["passes"]]
    assert errors[1] < 0.7 * errors[0] and errors[2] < errors[1]  # pass 1 is the independent baseline
    assert m["temporal_error"] == errors[2] == pytest.approx(np.mean([f["temporal_error"] for f in m["frames"][1:]]))


@pytest.mark.weights
def test_a_multipass_frame_that_raises_fails_alone_and_resume_finishes(tmp_path, pan_mp4, style, multipass_here, _weights,
                                                                        capsys, monkeypatch):
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
    args = ["video", str(pan_mp4), str(style), "-o", "out/", *MULTI, "--workers", "0"]
    assert main(args) == 1
    error = "pass 2, frame 3: RuntimeError: a frame task that breaks"
    assert f"scratchnst: error: {error}\n" in capsys.readouterr().err
    m = json.loads((tmp_path / "out.json").read_text())
    assert m["status"] == "failed" and m["error"] == error and not (tmp_path / "out").exists()
    assert m["failed"] == [{"pass": 2, "index": 3, "frame": 3, "error": "RuntimeError: a frame task that breaks"}]
    state = json.loads((tmp_path / "out.work" / "state.json").read_text())
    assert state["failed"] == m["failed"]
    assert sorted((r["pass"], r["index"]) for r in state["frames"]) == [
        (p, k) for p in (1, 2, 3) for k in range(FRAMES) if (p, k) != (2, 3) and not (p == 3 and 2 <= k <= 4)]
    monkeypatch.setattr(multipass, "run_frame", real)
    assert main([*args, "--resume"]) == 0, capsys.readouterr().err
    assert _frames_of(tmp_path / "out") == multipass_here[0]
    resumed = json.loads((tmp_path / "out.json").read_text())
    assert resumed["status"] == "done" and "error" not in resumed and "failed" not in resumed
    assert [p["temporal_error"] for p in resumed["passes"]] == [p["temporal_error"] for p in multipass_here[1]["passes"]]


@pytest.mark.weights
def test_multipass_on_dask_workers_resumes_after_ctrl_c_with_the_frames_made_here(tmp_path, pan_mp4, style, multipass_here, dask_processes):
    address = dask_processes.scheduler()
    dask_processes.worker("w1")
    dask_processes.worker("w2")
    args = [str(pan_mp4), str(style), "-o", f"{tmp_path / 'out'}/", *MULTI, "--scheduler", address]
    work = tmp_path / "out.work"
    # Ctrl-C once a worker polls for the 29th time: it has finished at least 7 frames (4 iterations
    # at most each), and the 70 iterations of the 21 frames are not all done (the other worker has
    # polled fewer than 29 times, and this frame stops)
    code, err = _ctrl_c_from_worker(dask_processes, ["video", *args], tmp_path, 4 * FRAMES + 1)
    assert code == 130, err
    stopped = json.loads((tmp_path / "out.json").read_text())
    state = json.loads((work / "state.json").read_text())["frames"]
    assert stopped["status"] == "interrupted" and FRAMES <= len(state) < 3 * FRAMES, err
    workers = {re.search(r"Start worker at:\s+(\S+)", (tmp_path / f"{w}.log").read_text())[1] for w in ("w1", "w2")}
    assert {r["worker"] for r in state} == workers  # the frames of a pass side by side
    changed = _run([*args, "--resume", "--passes", "4"], tmp_path)
    assert changed.returncode == 2 and "other passes" in changed.stderr
    r = _run([*args, "--resume"], tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "out.json").read_text())
    assert _frames_of(tmp_path / "out") == multipass_here[0]  # Dask workers, stopped and resumed: the same bytes
    assert m["passes"] == [{**p, "stylize_s": m["passes"][i]["stylize_s"]} for i, p in enumerate(multipass_here[1]["passes"])]
    assert m["backend"] == "numpy" and m["weights_sha256"] == multipass_here[1]["weights_sha256"] and not work.exists()
