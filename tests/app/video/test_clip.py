"""scratchnst.app.video.clip on conftest's pan: decode and encode (a video file or a folder of frames,
in and out, the audio over the frames' span), a folder of frames becoming a video file; damaged files
refused rather than decoded "successfully" to their first frames, and no false alarm on valid clips
of any container."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from scratchnst.app.cli import main
from scratchnst.app.video import clip
from scratchnst.app.video import run as video

av = pytest.importorskip("av")
pytest.importorskip("cv2")


# -- frames in and out ---------------------------------------------------------------------------


def test_decode_encode_round_trip(tmp_path, pan_mp4, pan):
    (W, H), frames = pan.size, len(pan)
    c = clip.read_clip(pan_mp4)
    assert (len(c.frames), c.fps, c.source_size, c.first, c.total) == (frames, 12, (W, H), 0, frames)
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


def test_audio_is_copied_over_the_frames_span(tmp_path, pan, write_clip):
    src = tmp_path / "with_audio.mp4"
    write_clip(src, pan, audio=True)
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
    assert (len(c.frames), c.fps, c.first) == (len(pan) - 1, 8, 1)
    assert np.array_equal(c.frames[0], pan[1])
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("replaced only once the new frames are complete")
    clip.write_output(sorted(src.glob("*.png"))[:2], out, True, c.fps)
    assert sorted(p.name for p in out.iterdir()) == ["frame_00000.png", "frame_00001.png"]


@pytest.mark.weights
def test_a_folder_of_frames_becomes_a_video_file_without_sound(tmp_path, pan, style, video_tiny, weights_env, capsys, monkeypatch):
    src = tmp_path / "frames"
    src.mkdir()
    for k, f in enumerate(pan[:3]):
        Image.fromarray(f).save(src / f"f{k}.png")
    monkeypatch.chdir(tmp_path)
    assert main(["video", str(src), str(style), "-o", "out.mp4", *video_tiny.argv, "--workers", "0"]) == 0, capsys.readouterr().err
    decoded = clip.read_clip(tmp_path / "out.mp4")
    assert (len(decoded.frames), decoded.fps, decoded.source_size) == (3, clip.DEFAULT_FPS, pan.size)
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert len(c.streams.video) == 1 and not c.streams.audio


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
def test_damaged_video_is_one_line_and_exit_2(tmp_path, pan, style, video_tiny, write_clip, capsys, monkeypatch, suffix, how):
    monkeypatch.chdir(tmp_path)
    good = tmp_path / f"good{suffix}"
    write_clip(good, pan * 2)  # 14 frames
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(_damage(good.read_bytes(), how))
    monkeypatch.setattr(video.VideoRun, "run", lambda self: pytest.fail(f"{bad.name} was accepted: {len(self.clip.frames)} frames"))
    assert main(["video", str(bad), str(style), "-o", "out.mp4", *video_tiny.argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "damaged" in err and "Traceback" not in err, err
    if suffix != ".mp4" or how != "truncated":  # a cut MP4 has lost its index (moov), so it does not even open
        decoded = int(re.search(r"unreadable video stream, .*: decoded (\d+) of about 14 frames", err).group(1))
        assert decoded < 14 and (decoded == 0 or f"--frames 0:{decoded} takes the frames before the damage" in err), err
        if decoded:  # the hint holds: those frames are read without complaint
            assert len(clip.read_clip(bad, frames=(0, decoded)).frames) == decoded
    assert not (tmp_path / "out.mp4").exists() and not (tmp_path / "out.mp4.work").exists()


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".webm", ".mov"])
@pytest.mark.parametrize("frames, audio", [(1, True), (2, False), (7, False), (7, True)])  # 7: the whole pan
def test_valid_clips_decode_every_frame(tmp_path, pan, write_clip, suffix, frames, audio):
    """No false alarm: the declared count (a sample table, a DURATION tag, a duration the audio
    outlasts) matches what decodes, whatever the container."""
    path = tmp_path / f"clip{suffix}"
    write_clip(path, pan[:frames], audio=audio)
    c = clip.read_clip(path)
    assert (len(c.frames), c.total) == (frames, frames)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert clip.declared_frames(container, stream, stream.average_rate) == frames
