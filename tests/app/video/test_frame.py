"""scratchnst.app.video.frame, one frame: its start (the warped previous output, continued across the
boundary where the motion is not reliable), the stopping rule of a frame started warm (stops a converged frame, not a
fresh one), and the sharpness the manifest records."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from scratchnst.app.picture.inputs import open_styles, style_list
from scratchnst.app.video import flow
from scratchnst.app.video.frame import FILL_GAPS, Painter, fill_gap, fill_new, frame_settings, held_to, reflected, settled, sharpness
from scratchnst.app.video.options import STOP_WINDOW, validated_settings, video_settings

pytest.importorskip("cv2")


def test_reflected_by_hand():
    """One row, the last three pixels new: each is mirrored in pixel 4 (the nearest not new) and set gap
    px further in; a point that leaves the frame is not found."""
    new = np.array([[False] * 5 + [True] * 3])
    for gap, columns, found in ((0, [4, 3, 2, 1], [True] * 4), (2, [4, 1, 0, 0], [True, True, True, False])):
        point, ok = reflected(new, gap)
        assert point[0, 4:, 1].tolist() == columns and point[0, 4:, 0].tolist() == [0] * 4
        assert ok[0, 4:].tolist() == found  # 2·4 − 7 − 2 = −1: outside
        assert point[0, :4, 1].tolist() == [0, 1, 2, 3]  # a pixel not new is its own point


def test_new_content_continues_the_painting_across_the_boundary():
    """Columns valued 10·x, the last two new: at gap 7 column 12 takes column 3's value (mirrored in
    column 11 to 10, then 7 further in), column 13 column 2's; a point that falls outside the frame,
    and a frame with no reliable pixel at all (a scene cut), start as the input frame."""
    warped = np.repeat(np.repeat((np.arange(14) * 10).astype(np.uint8)[None, :, None], 2, 0), 3, 2)
    frame = np.full_like(warped, 255)
    mask = np.ones((2, 14), np.float32)
    mask[:, 12:] = 0
    assert fill_new(warped, frame, mask, 7)[0, :, 0].tolist() == [10 * x for x in range(12)] + [30, 20]
    mask[:, 4:] = 0  # column 4's point: 2·3 − 4 − 7 < 0, and the others' further out
    assert fill_new(warped, frame, mask, 7)[0, :, 0].tolist() == [0, 10, 20, 30] + [255] * 10
    assert np.array_equal(fill_new(warped, frame, np.zeros((2, 14)), 7), frame)


def test_the_gap_changes_from_frame_to_frame_and_is_the_same_again_on_resume():
    gaps = [fill_gap(k) for k in range(1, 41)]
    assert gaps == [fill_gap(k) for k in range(1, 41)]
    assert all(FILL_GAPS[0] <= g <= FILL_GAPS[1] for g in gaps) and len(set(gaps)) == FILL_GAPS[1] - FILL_GAPS[0] + 1
    assert sum(a != b for a, b in zip(gaps, gaps[1:])) > 20


def test_new_content_at_a_pans_edge_starts_from_the_painting_inside(pan):
    """Frame 3 of the pan from frame 2: the columns and rows that came in at the edge start as reliable
    pixels of the warped output further inside, not as frame 2's border pixels stretched, nor as the
    input frame (which only the few whose point is unreliable too, or past the edge, start as)."""
    (W, H), (DX, DY) = pan.size, pan.motion
    pair = flow.pair_flow(pan[2], pan[3])
    warped = flow.warp_frame(pan[2], pair.backward)
    start = fill_new(warped, pan[3], pair.mask, fill_gap(3))
    new = pair.mask == 0
    assert new[:, W - DX:].all() and new[H - DY:, :].all()
    point, found = reflected(new, fill_gap(3))
    at = new & found
    assert found[:H - DY, W - DX:].mean() > 0.9 and not new[point[at][:, 0], point[at][:, 1]].any()  # but where the point is unreliable too
    assert np.array_equal(start[at], warped[point[at][:, 0], point[at][:, 1]]) and np.array_equal(start[~new], warped[~new])
    assert np.array_equal(start[new & ~found], pan[3][new & ~found])  # a point past the frame's edge: the input frame
    edge = at[:H - DY, W - DX:]
    assert (point[:H - DY, W - DX:, 1][edge] <= W - DX - 1 - fill_gap(3)).all()  # the right edge's: a gap inside the last reliable column
    assert not np.array_equal(start[:, W - DX:], pan[3][:, W - DX:])


def test_settled_asks_for_a_fall_of_the_loss_over_the_window():
    stop = settled(0.01, 3)
    history = [{"loss": v} for v in (100.0, 90.0, 89.5, 89.3, 89.2)]
    assert [stop(history[:n]) for n in range(1, 6)] == [None, None, None, None, "settled"]  # 100 → 89.3: 12%; 90 → 89.2: 0.9%
    assert stop([{"loss": v} for v in (100.0, 90.0, 89.0, 88.0, 88.0)]) is None  # 90 → 88 is 2.3%: not yet
    assert settled(0.0, 3) is None


def test_sharpness_is_the_mean_absolute_laplacian_of_the_luma():
    flat = np.full((6, 7, 3), 90, np.uint8)
    dot = flat.copy()
    dot[3, 3] = 190  # luma +100: |Laplacian| 400 there and 100 at its four neighbours, over 4·5 inner pixels
    assert sharpness(flat) == 0 and sharpness(dot) == pytest.approx(800 / 20)


@pytest.mark.weights
def test_the_stopping_rule_stops_a_converged_frame_and_not_a_fresh_one(tmp_path, pan, style, weights_env):
    """Capped at 12 iterations: a frame from noise is still falling fast at 12 and runs them all; the
    same frame restarted from its own result after 100 iterations (rounded to uint8, as every video
    frame is) settles first."""
    (W, H), cap = pan.size, 12
    settings = replace(validated_settings(video_settings(iterations=cap, scales=(1.0,), quiet=True), 1), size=max(W, H))
    painter = Painter(open_styles(style_list([str(style)])), settings, (W, H))
    warm = frame_settings(settings, cap, first=False, warm=True)
    rule = settled(0.01, STOP_WINDOW)
    fresh, _ = painter.paint(pan[0], tmp_path / "fresh.png", warm, stop_when=rule)  # from --init noise
    assert (fresh["iterations"], fresh["stopped"]) == (cap, "iterations"), fresh
    done, out = painter.paint(pan[0], tmp_path / "done.png", frame_settings(settings, 100, first=True, warm=False))
    again, _ = painter.paint(pan[0], tmp_path / "again.png", warm, start=out, stop_when=rule)
    assert again["stopped"] == "settled" and STOP_WINDOW < again["iterations"] < cap, again
    assert again["loss"] < 1.1 * done["loss"] and again["sharpness"] > 0


def test_held_to_is_the_sum_of_the_terms_under_disjoint_masks(rng):
    """Σ_j c_j (x − ω_j)² = C (x − m)² exactly when the c_j are binary and disjoint (long-term masks):
    m is the ω_j whose c_j is 1, and C their union."""
    warped = [rng.integers(0, 256, (4, 5, 3)).astype(np.uint8) for _ in range(3)]
    which = rng.integers(0, 4, (4, 5))  # 3: held to no earlier frame
    masks = [(which == n).astype(np.float32) for n in range(3)]
    m, total = held_to(warped, masks)
    assert m.dtype == np.uint8 and np.array_equal(total, which < 3)
    for n in range(3):
        assert np.array_equal(m[which == n], warped[n][which == n])
    x = rng.uniform(0, 255, (4, 5, 3))
    terms = sum(c[..., None] * (x - w) ** 2 for c, w in zip(masks, warped))
    assert np.allclose(total[..., None] * (x - m) ** 2, terms)
    none, c = held_to(warped[:1], [np.zeros((4, 5), np.float32)])  # a scene cut: nothing held
    assert none.shape == (4, 5, 3) and not c.any()
