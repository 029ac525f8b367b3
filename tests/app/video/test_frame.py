"""scratchnst.app.video.frame, one frame: its start (the warped previous output, the input frame where
the motion is not reliable)."""

from __future__ import annotations

import numpy as np
import pytest

from scratchnst.app.video import flow
from scratchnst.app.video.frame import fill_new

pytest.importorskip("cv2")


def test_new_content_starts_from_the_input_frame(pan):
    """Frame 3 of the pan from frame 2: the columns and rows that came in at the edge (and any pixel
    the mask finds unreliable) start as frame 3 itself, not as frame 2's border pixels stretched."""
    (W, H), (DX, DY) = pan.size, pan.motion
    pair = flow.pair_flow(pan[2], pan[3])
    warped = flow.warp_frame(pan[2], pair.backward)
    start = fill_new(warped, pan[3], pair.mask)
    new = pair.mask == 0
    assert new[:, W - DX:].all() and new[H - DY:, :].all()
    assert np.array_equal(start[new], pan[3][new]) and np.array_equal(start[~new], warped[~new])
    assert not np.array_equal(warped[:, W - DX:], pan[3][:, W - DX:])  # what the warp alone put there
