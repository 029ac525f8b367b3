"""scratchnst.app.video.framewise: a frame-by-frame run of conftest's pan, with the temporal term (its
flows on a Dask worker) and without: the temporal term lowers the flicker, and the manifest says so."""

from __future__ import annotations

import json

import pytest

from scratchnst.app.video import clip

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
    assert all(f["stopped"] == "iterations" and f["sharpness"] > 0 for f in m["frames"])  # --stop-change is off by default
    for f in m["frames"][1:]:
        total = sum(m["args"][f"{k}_weight"] * f[k] for k in ("content", "style", "tv")) + m["video"]["temporal_weight"] * f["temporal"]
        assert f["loss"] == pytest.approx(total, rel=1e-4)
        assert f["temporal_error"] >= 0 and 0.8 < f["reliable"] <= 1 and f["flow_s"] > 0
    assert m["temporal_error"] < 0.7 * runs["warm"]["temporal_error"]
