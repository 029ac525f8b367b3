"""The video tests' clip, made here with PyAV: a textured picture panned a few pixels per frame, so the
true motion is known (`pan`, as frames and as `pan_mp4`; out and back, `there_and_back_mp4`; `write_clip`
for others); the style picture;
the tiny video run; a folder's frames as bytes; Ctrl-C sent from a Dask worker at a known point of
its work."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

W, H, FRAMES, DX, DY = 64, 48, 7, 2, 1  # the pan: frame t is the texture window at (t·DX, t·DY)


class Pan(list):
    """The pan's FRAMES (H, W, 3) uint8 frames, and its geometry: size (W, H), motion (DX, DY) per frame."""

    size = (W, H)
    motion = (DX, DY)


def _texture(rng, w, h) -> np.ndarray:
    """Smooth random colour blobs (so the flow has texture to lock on, and no aliasing)."""
    small = rng.uniform(0, 255, (h // 4, w // 4, 3)).astype(np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(1))
    return np.asarray(img)


@pytest.fixture(scope="session")
def pan() -> Pan:
    """Frame t(p) = texture(p + t·(DX, DY)): so frame t(p) = frame t−1(p + (DX, DY)), and the flow from
    frame t to frame t − 1 is (DX, DY) everywhere."""
    big = _texture(np.random.default_rng(0), W + FRAMES * DX + 8, H + FRAMES * DY + 8)
    return Pan(np.ascontiguousarray(big[t * DY: t * DY + H, t * DX: t * DX + W]) for t in range(FRAMES))


def write_clip(path, frames, fps=12, audio=False) -> None:
    """An H.264 clip (CRF 0, 4:4:4: lossless but for the RGB↔YUV rounding; VP9 in a .webm), optionally
    with a second of sine tone (AAC; Opus in a .webm). A keyframe every 4 frames, as real clips have
    several."""
    av = pytest.importorskip("av")
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


@pytest.fixture(name="write_clip", scope="session")
def _write_clip():
    """write_clip(path, frames, fps=12, audio=False): frames of the pan's size as a clip (see above)."""
    return write_clip


@pytest.fixture(scope="session")
def pan_mp4(tmp_path_factory, pan) -> Path:
    path = tmp_path_factory.mktemp("clip") / "pan.mp4"
    write_clip(path, pan)
    return path


THERE_AND_BACK = (0, 1, 2, 3, 2, 1, 0)  # the pan's frames out and back: what leaves the view returns


@pytest.fixture(scope="session")
def there_and_back_mp4(tmp_path_factory, pan) -> Path:
    """The pan out and back (its frames THERE_AND_BACK) as a clip: the strip at the left and top edges of
    frame 0 leaves the view by frame 3 and is back, frame by frame, by frame 6 (frame 0 again)."""
    path = tmp_path_factory.mktemp("clip") / "there_and_back.mp4"
    write_clip(path, [pan[t] for t in THERE_AND_BACK])
    return path


@pytest.fixture(scope="session")
def style(tmp_path_factory, make_pictures) -> Path:
    """A 48x48 style picture."""
    return make_pictures(tmp_path_factory.mktemp("style")).save("style.png", 48, 48)


@pytest.fixture(scope="session")
def video_tiny(tiny):
    """The tiny video run: the clip at its own size, 4 iterations on the first frame and 3 on each later
    one (--iterations 3 --first-iterations 4 --scales 1 --quiet)."""
    return tiny.but(size=None, iterations=3, first_iterations=4)


def frames_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


@pytest.fixture(name="frames_of", scope="session")
def _frames_of():
    """frames_of(folder): the bytes of its PNG frames, by name."""
    return frames_of


# Sent to the Dask workers before a run (conftest's run_on_workers): at a worker's AFTER-th progress
# poll (one per iteration of a frame), unless the client was interrupted already, Ctrl-C reaches the
# client's process group, as a terminal sends it, and that frame waits until the client has set the
# interrupt Event; every poll asks the Event (no POLL_S between). So the run stops at a known point
# of its work, whatever the machines' speed. The group's id is in the file GROUP, which the test
# writes once it has started the client; the poll waits for it.
CTRL_C_FROM_WORKER = """
import os, signal, time
from pathlib import Path
from scratchnst.app import cluster

calls = [0]

def poll(self, _entry=None):
    calls[0] += 1
    if calls[0] == AFTER and not self.event.is_set():
        group, deadline = Path(GROUP), time.monotonic() + 60
        while not group.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(int(group.read_text()), signal.SIGINT)
        deadline = time.monotonic() + 60
        while not self.event.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
    self.stopped = self.stopped or self.event.is_set()
    return self.stopped

cluster.Interrupt.poll = poll
"""


@pytest.fixture
def ctrl_c_from_worker(dask_processes, start_cli):
    """ctrl_c_from_worker(args, cwd, after): `scratchnst ARGS` run in its own process group (on the
    scheduler of `dask_processes`), stopped by Ctrl-C at a worker's `after`-th poll (CTRL_C_FROM_WORKER);
    (exit code, stderr)."""

    def run(args, cwd: Path, after: int) -> tuple[int, str]:
        group = cwd / "cli.group"
        dask_processes.run_on_workers(CTRL_C_FROM_WORKER.replace("AFTER", str(after)).replace("GROUP", repr(str(group))))
        proc = start_cli(*args, cwd=cwd, new_session=True)
        written = group.with_suffix(".tmp")
        written.write_text(str(proc.pid))  # the CLI leads its own process group: its id is the CLI's pid
        os.replace(written, group)  # whole, or not there at all, for the worker that waits for it
        _, err = proc.communicate(timeout=300)
        return proc.returncode, err

    return run
