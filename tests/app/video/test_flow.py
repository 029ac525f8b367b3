"""scratchnst.app.video.flow on conftest's pan, whose true motion is known: bilinear warping against a
naive reference and along the known motion, a stylized frame carried 60 times and as sharp as before, the flow and its consistency mask recovering that
motion, occlusions and motion boundaries in the mask; the missing `video` extra named."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from scratchnst.app.video import flow
from scratchnst.errors import ScratchnstError

pytest.importorskip("av")
pytest.importorskip("cv2")


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
    (W, H), (DX, DY) = pan.size, pan.motion
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
    (W, H), (DX, DY) = pan.size, pan.motion
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


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 now raises ImportError
    with pytest.raises(ScratchnstError, match=r"scratchnst\[video\]"):
        flow.video_libs()


def test_warp_frame_keeps_a_sharp_pattern_sharp_over_many_frames(rng):
    """A frame carried 60 times along flows a few hundredths of a pixel off (there and back, so the
    true result is the pattern itself), as a 1-px pan's estimated flow is: warp_frame keeps the
    strokes' |Laplacian| and the pixels; bilinear sampling (flow.warp) loses most of both."""
    small = rng.integers(0, 256, (24, 30, 3)).astype(np.uint8)
    pattern = np.asarray(Image.fromarray(small).resize((60, 48), Image.Resampling.BICUBIC))  # strokes 2-3 px wide
    lap = lambda x: np.abs(np.diff(x.astype(np.float64), 2, axis=0)[:, 1:-1] + np.diff(x.astype(np.float64), 2, axis=1)[1:-1])[4:-4, 4:-4].mean()  # noqa: E731
    ours, bilinear = pattern, pattern
    for t in range(60):
        off = np.full((48, 60, 2), 0.06 if t % 2 == 0 else -0.06)
        ours = flow.warp_frame(ours, off)
        bilinear = np.clip(np.rint(flow.warp(bilinear, off)), 0, 255).astype(np.uint8)
    assert ours.dtype == np.uint8 and ours.shape == pattern.shape
    assert 0.95 < lap(ours) / lap(pattern) < 1.05 and lap(bilinear) / lap(pattern) < 0.3
    assert np.abs(ours.astype(int) - pattern)[4:-4, 4:-4].mean() < 1.0


def test_warp_frame_follows_the_known_motion(pan):
    (W, H), (DX, DY) = pan.size, pan.motion
    backward = np.tile(np.array([DX, DY], np.float32), (H, W, 1))
    inside = flow.inside_mask(backward)
    assert np.array_equal(flow.warp_frame(pan[2], backward)[inside], pan[3][inside])
    assert np.array_equal(flow.warp_frame(pan[2], np.zeros((H, W, 2), np.float32)), pan[2])


def test_long_term_masks_by_hand():
    """A 2×6-pixel clip whose window sits at x = 0, 1, 2, 0 in frames 0 to 3 (it pans right, then jumps
    back). Frame 3 against frame 3 − j sees the motion p(3 − j) − p(3) = 2, 1, 0 px: a pixel x is
    reliable against frame 3 − j where x + that shift is still inside, and the long-term mask keeps
    each only where no closer frame of J is."""
    H_, W_ = 2, 6
    shift = {1: 2.0, 2: 1.0, 3: 0.0}
    masks = {}
    for j, dx in shift.items():
        backward = np.tile(np.array([dx, 0.0]), (H_, W_, 1))
        masks[j] = flow.consistency_mask(backward, -backward)
    rows = lambda *row: np.tile(np.array(row, np.float32), (H_, 1))  # noqa: E731
    assert np.array_equal(masks[1], rows(1, 1, 1, 1, 0, 0)) and np.array_equal(masks[2], rows(1, 1, 1, 1, 1, 0))
    assert np.array_equal(masks[3], rows(1, 1, 1, 1, 1, 1))
    J_1_2_3 = flow.long_term_masks(masks)
    assert list(J_1_2_3) == [1, 2, 3] and all(c.dtype == np.float32 for c in J_1_2_3.values())
    assert np.array_equal(J_1_2_3[1], rows(1, 1, 1, 1, 0, 0))
    assert np.array_equal(J_1_2_3[2], rows(0, 0, 0, 0, 1, 0))  # seen in frame 1, not in frame 2
    assert np.array_equal(J_1_2_3[3], rows(0, 0, 0, 0, 0, 1))  # seen only in frame 0
    J_1_3 = flow.long_term_masks({1: masks[1], 3: masks[3]})  # without frame 1 in J, frame 0 holds both
    assert np.array_equal(J_1_3[3], rows(0, 0, 0, 0, 1, 1))
    assert np.array_equal(flow.long_term_masks({1: masks[1]})[1], masks[1])  # J = {1}: today's mask
    # weights in between: c_long_j = max(c_j − Σ_{j' < j} c_j', 0)
    soft = flow.long_term_masks({10: np.float32([[0.5, 0.6]]), 1: np.float32([[0.25, 0.6]]), 20: np.float32([[1.0, 0.5]])})
    assert np.allclose(soft[1], [[0.25, 0.6]]) and np.allclose(soft[10], [[0.25, 0.0]]) and np.allclose(soft[20], [[0.25, 0.0]])
