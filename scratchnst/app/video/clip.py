"""Video edges: frames in (a video file decoded with PyAV, or a folder of images), frames out (a video
encoded with PyAV, the input's audio copied, or a folder of PNGs), each output complete or not at all.

Every bad input is a one-line ScratchnstError: not a video, no frames, an unreadable stream (a decoding
error, a frame the decoder marks corrupt, or fewer frames than the container declares: a damaged or
truncated file), a --frames range outside the clip, frames of varying size in a folder.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from scratchnst.app.files import images as im
from scratchnst.app.video.flow import video_libs
from scratchnst.errors import ScratchnstError, one_line

DEFAULT_FPS = Fraction(25)  # for a folder of frames, unless --fps says otherwise
# Output suffix -> (container format, video codec). H.264 wherever the container takes it.
VIDEO_FORMATS = {".mp4": ("mp4", "libx264"), ".mov": ("mov", "libx264"), ".mkv": ("matroska", "libx264"), ".webm": ("webm", "libvpx-vp9")}
CRF = "18"  # x264 quality: visually lossless for stylized frames
# A stream that decodes more than this share of its declared frames short (and at least two) is damaged
# or cut: a count from a duration is approximate (a variable frame rate, a rounded duration).
SHORT_TOLERANCE = 0.05


class Clip(NamedTuple):
    """The frames to stylize, (H, W, 3) uint8 at the working size, and where they came from."""

    frames: list
    fps: Fraction
    source_size: tuple[int, int]  # (W, H) of the input frames
    first: int  # the input index of frames[0]
    start_s: float  # presentation time of frames[0] (to cut the audio to the same span)
    total: int  # frames the input has (for a video read only to the end of --frames: those decoded)


def parse_frames(text: str) -> tuple[int, int | None]:
    """'A:B' -> (A, B): input frames A (inclusive, default 0) to B (exclusive, default the end)."""
    a, sep, b = text.partition(":")
    try:
        start = int(a) if a.strip() else 0
        stop = int(b) if b.strip() else None
    except ValueError:
        start = -1
    if not sep or start < 0 or (stop is not None and stop <= start):
        raise ScratchnstError(f"--frames takes A:B with whole numbers 0 ≤ A < B, either may be left out (got {text!r})")
    return start, stop


def _check_range(src, frames: tuple[int, int | None], total: int) -> tuple[int, int]:
    start, stop = frames
    stop = total if stop is None else stop
    if start >= total or stop > total:
        raise ScratchnstError(f"--frames {start}:{stop} is out of range: {src} has {total} frames (0 to {total - 1})")
    return start, stop


def _fit(rgb: np.ndarray, size: int | None) -> np.ndarray:
    img = Image.fromarray(rgb)
    return rgb if size is None else np.asarray(im.resize_long_side(img, size))


def read_clip(source, frames: tuple[int, int | None] = (0, None), size: int | None = None, fps=None) -> Clip:
    """The frames of `source` (a video file or a folder of images) in the range `frames`, resized to
    long side `size` (None: as they are). fps: the frame rate of a folder (DEFAULT_FPS when None);
    a video keeps its own."""
    p = Path(source)
    if not p.exists():
        raise ScratchnstError(f"{p}: no such file or folder")
    if p.is_dir():
        return _read_folder(p, frames, size, Fraction(fps) if fps else DEFAULT_FPS)
    return _read_video(p, frames, size)


def _read_folder(p: Path, frames, size, fps: Fraction) -> Clip:
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in im.IMAGE_SUFFIXES and f.is_file())
    if not files:
        raise ScratchnstError(f"{p}: no frames (no {', '.join(im.IMAGE_SUFFIXES)} files in the folder)")
    first_size = None
    for f in files:  # sizes from the headers only: a bad frame later is refused before any work
        try:
            with Image.open(f) as img:
                frame_size = img.size
        except Exception as exc:
            raise ScratchnstError(f"{f}: not a readable image ({one_line(exc)})") from None
        first_size = first_size or frame_size
        if frame_size != first_size:
            raise ScratchnstError(f"{p}: frames of varying size: {f.name} is {frame_size[0]}x{frame_size[1]}, {files[0].name} {first_size[0]}x{first_size[1]}")
    start, stop = _check_range(p, frames, len(files))
    loaded = [_fit(np.asarray(im.load_image(f)), size) for f in files[start:stop]]
    return Clip(loaded, fps, first_size, start, float(start / fps), len(files))


def _read_video(p: Path, frames, size) -> Clip:
    av, _ = video_libs()
    try:
        container = av.open(str(p))
    except Exception as exc:  # av.error.InvalidDataError and kin, PermissionError, IsADirectoryError
        raise ScratchnstError(f"{p}: not a video, an unsupported format, or a damaged file ({one_line(exc)})") from None
    with container:
        if not container.streams.video:
            raise ScratchnstError(f"{p}: has no video stream")
        stream = container.streams.video[0]
        fps = stream.average_rate or stream.guessed_rate or DEFAULT_FPS
        declared = declared_frames(container, stream, fps)
        start, stop = frames
        out, times, total = [], [], 0
        try:
            for frame in container.decode(stream):
                if total >= start:
                    if frame.is_corrupt:  # decoded, the damage concealed
                        raise _unreadable(p, total, declared, f"frame {total} is corrupt")
                    out.append(_fit(frame.to_ndarray(format="rgb24"), size))
                    times.append(frame.time)
                total += 1
                if stop is not None and total >= stop:
                    break
        except av.error.FFmpegError as exc:
            raise _unreadable(p, total, declared, one_line(exc)) from None
    ended = stop is None or total < stop  # a damaged or cut file can end early without an error
    if ended and declared and total < declared - max(1, math.ceil(SHORT_TOLERANCE * declared)):
        raise _unreadable(p, total, declared, "the stream ends early")
    if total == 0:
        raise ScratchnstError(f"{p}: the video has no frames")
    _check_range(p, frames, total)
    h, w = (stream.height, stream.width) if stream.width else out[0].shape[:2]
    return Clip(out, Fraction(fps), (w, h), start, float(times[0] or 0.0), total)


def _unreadable(p: Path, decoded: int, declared: int | None, why: str) -> ScratchnstError:
    of = f" of about {declared}" if declared else ""
    keep = f"; --frames 0:{decoded} takes the frames before the damage" if decoded else ""
    return ScratchnstError(f"{p}: unreadable video stream, the file is damaged or truncated: decoded {decoded}{of} frames ({why}){keep}")


def declared_frames(container, stream, fps) -> int | None:
    """The frames the container says its video `stream` has (None when it says nothing): the least
    of its frame count (MP4's sample table, mkvmerge's NUMBER_OF_FRAMES tag) and its duration × fps."""
    counts = [n for n in (stream.frames, _int_or_none(_tag(stream, "NUMBER_OF_FRAMES"))) if n]
    seconds = _declared_seconds(container, stream)
    if seconds:
        counts.append(round(seconds * fps))
    return min(counts) if counts else None


def _declared_seconds(container, stream) -> float | None:
    """The video stream's duration: Matroska's DURATION tag, else the stream's own duration, else the
    container's when the video is its only stream. FFmpeg fills in a stream's unknown duration with
    the container's, which lasts as long as the longest stream (often the audio): not the video's."""
    tagged = _clock_seconds(_tag(stream, "DURATION"))
    if tagged:
        return tagged
    whole = container.duration / 1_000_000 if container.duration else None  # in AV_TIME_BASE units
    own = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
    only = len(container.streams) == 1
    if own and (only or not whole or abs(own - whole) > 1e-3):  # not a copy of the container's
        return own
    return whole if only else None


def _tag(stream, name: str) -> str | None:
    """A stream's metadata tag by name, case aside and with or without a language suffix (NAME-eng)."""
    for key, value in stream.metadata.items():
        if key.upper().partition("-")[0] == name:
            return value
    return None


def _int_or_none(text) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def _clock_seconds(text: str | None) -> float | None:
    """'HH:MM:SS.fraction' (Matroska's DURATION tag) -> seconds; None when it is not that."""
    try:
        h, m, s = text.split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)
    except (AttributeError, ValueError):
        return None


# -- output --------------------------------------------------------------------------------------


def is_folder_output(out) -> bool:
    """-o FOLDER/ (or an existing folder): frames out as PNGs instead of a video file."""
    return str(out).endswith(("/", os.sep)) or Path(out).is_dir()


def check_output(out, source) -> Path:
    """The resolved output path, checked before any work: a known video suffix or a folder, and not
    the input itself."""
    p = Path(out).expanduser().resolve()
    if not is_folder_output(out):
        if p.suffix.lower() not in VIDEO_FORMATS:
            raise ScratchnstError(f"{p}: unknown video suffix (use {', '.join(VIDEO_FORMATS)}, or end -o with / for a folder of frames)")
        im.check_output_path(p.with_suffix(".png"))  # the same writable-parent checks as an image
    if p == Path(source).resolve():
        raise ScratchnstError(f"{p}: the output would overwrite the input {source}")
    return p


def write_output(paths: list, out: Path, folder: bool, fps: Fraction, audio_from=None, span=None) -> str | None:
    """The finished frames (PNG paths) as the video or folder `out`, built beside it and renamed into
    place, so an existing `out` stays untouched until the new one is complete. audio_from: the input
    video, whose first audio stream is copied over `span` = (start, end) seconds. Returns a note when
    audio could not be copied, else None."""
    if folder:
        _write_folder(paths, out)
        return None
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        note = encode(paths, Path(tmp), VIDEO_FORMATS[out.suffix.lower()], fps, audio_from, span)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return note


def _write_folder(paths: list, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        for k, src in enumerate(paths):
            shutil.copyfile(src, tmp / f"frame_{k:05d}.png")
        if out.exists():  # swap: the old folder goes only once the new one is in place
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def encode(paths: list, target: Path, fmt: tuple[str, str], fps: Fraction, audio_from=None, span=None) -> str | None:
    """Encode the PNG frames at `paths` into `target` with (container, codec) `fmt` at `fps`; copy the
    first audio stream of `audio_from` (a video path) cut to `span` seconds. Returns a note when the
    audio was not copied (the container does not take its codec), else None."""
    av, _ = video_libs()
    container_format, codec = fmt
    first = np.asarray(Image.open(paths[0]).convert("RGB"))
    h, w = first.shape[:2]
    note = None
    with av.open(str(target), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p" if w % 2 == 0 and h % 2 == 0 else "yuv444p"  # 4:2:0 needs even sides
        stream.options = {"crf": CRF} if codec == "libx264" else {}
        source = av.open(str(audio_from)) if audio_from is not None else None
        try:
            audio = None
            if source is not None and source.streams.audio:
                try:
                    audio = (source.streams.audio[0], container.add_stream_from_template(source.streams.audio[0]))
                except Exception as exc:
                    note = f"audio not copied ({one_line(exc)})"
            for path in paths:
                rgb = np.asarray(Image.open(path).convert("RGB"))
                for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
            if audio is not None:
                _copy_audio(container, source, *audio, span)
        finally:
            if source is not None:
                source.close()
    return note


def _copy_audio(container, source, audio_in, audio_out, span) -> None:
    """Remux the packets of audio_in whose time falls in span = (start, end) seconds, shifted to 0."""
    start, end = span
    shift = int(round(start / audio_in.time_base))
    for packet in source.demux(audio_in):
        if packet.pts is None:
            continue  # the demuxer's final flush packet
        t = float(packet.pts * audio_in.time_base)
        if t < start or t >= end:
            continue
        packet.pts -= shift
        if packet.dts is not None:
            packet.dts -= shift
        packet.stream = audio_out
        container.mux(packet)
