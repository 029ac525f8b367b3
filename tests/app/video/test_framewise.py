"""scratchnst.app.video.framewise: a frame-by-frame run of conftest's pan, with the temporal term (its
flows on a Dask worker) and without: the temporal term lowers the flicker, and the manifest says so; the
pan out and back with --long-term: the content that returns looks as it did."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scratchnst.app.video import clip
from scratchnst.app.video.frame import read_frame

pytest.importorskip("av")
pytest.importorskip("cv2")


@pytest.mark.weights
def test_temporal_term_lowers_flicker_and_the_manifest_says_so(tmp_path, pan_mp4, pan, style, video_tiny, weights_env, run_cli):
    (W, H), frames = pan.size, len(pan)
    runs = {}
    for name, extra in (("warm", ["--temporal-weight", "0", "--workers", "0"]), ("ours", ["--temporal-weight", "3000"])):
        out = tmp_path / f"{name}.mp4"
        r = run_cli("video", str(pan_mp4), str(style), "-o", str(out), *video_tiny.argv, *extra, cwd=tmp_path)  # ours: flows on a Dask worker
        assert r.returncode == 0, r.stderr
        runs[name] = json.loads(out.with_suffix(".json").read_text())
        assert not (tmp_path / f"{name}.mp4.work").exists()
        decoded = clip.read_clip(out)
        assert (len(decoded.frames), decoded.fps, decoded.source_size) == (frames, 12, (W, H))
    m = runs["ours"]
    assert m["status"] == "done" and m["frames_done"] == frames and m["size"] == [W, H] and m["fps"] == "12"
    assert [f["iterations"] for f in m["frames"]] == [4] + [3] * (frames - 1)
    assert all(f["stopped"] == "iterations" and f["sharpness"] > 0 for f in m["frames"])  # 3 iterations: --stop-change's window of 3 never closes
    for f in m["frames"][1:]:
        total = sum(m["args"][f"{k}_weight"] * f[k] for k in ("content", "style", "tv")) + m["video"]["temporal_weight"] * f["temporal"]
        assert f["loss"] == pytest.approx(total, rel=1e-4)
        assert f["temporal_error"] >= 0 and 0.8 < f["reliable"] <= 1 and f["flow_s"] > 0
    assert m["temporal_error"] < 0.7 * runs["warm"]["temporal_error"]


@pytest.mark.weights
def test_long_term_term_paints_returning_content_as_it_was(tmp_path, there_and_back_mp4, pan, style, video_tiny, weights_env, run_cli):
    """Frame 6 is frame 0 again. The strip that was out of view at frame 3 (x < 3·DX or y < 3·DY)
    comes back at the edge; with --long-term 1,2,4,6 each returning piece starts from, and is held to,
    the frame that last showed it (frames 2, 1 and 0 for frames 4, 5, 6), so frame 6 repeats frame 0
    there; with the previous frame only, it is painted afresh from the input."""
    (W, H), (DX, DY) = pan.size, pan.motion
    frames, manifests = {}, {}
    for name, extra in (("short", []), ("long", ["--long-term", "1,2,4,6"])):
        out = tmp_path / name
        r = run_cli("video", str(there_and_back_mp4), str(style), "-o", f"{out}/", *video_tiny.argv, "--workers", "0", *extra, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        frames[name] = [read_frame(p).astype(np.float64) for p in sorted(out.glob("*.png"))]
        manifests[name] = json.loads((tmp_path / f"{name}.json").read_text())
    yy, xx = np.mgrid[0:H, 0:W]
    returned = (xx < 3 * DX) | (yy < 3 * DY)
    mse = {name: float(((f[6] - f[0]) ** 2)[returned].mean()) for name, f in frames.items()}
    assert mse["long"] < 0.25 * mse["short"], mse
    long = manifests["long"]
    assert long["video"]["long_term"] == [1, 2, 4, 6] and not any("long_term" in f for f in manifests["short"]["frames"])
    held = [f.get("long_term", {}) for f in long["frames"]]
    assert held[0] == {} and set(held[1]) == {"1"} and set(held[6]) == {"1", "2", "4", "6"}
    for k, j in ((4, "2"), (5, "4"), (6, "6")):  # the strip that came back in frame k, last seen in frame k − j
        assert 0.5 * returned.mean() / 3 < held[k][j] < returned.mean(), (k, held[k])
