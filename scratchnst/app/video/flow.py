"""Motion between video frames: optical flow (OpenCV's DIS, the only part not ours), warping along it
(bilinear for flows and masks; Lanczos for a stylized frame carried to the next, warp_frame), and the
forward–backward consistency mask of Ruder, Dosovitskiy & Brox (2016).

Flow convention: flow (H, W, 2) from frame a to frame b holds, for every pixel p = (x, y) of a, the
displacement (dx, dy) to where that point is in b: a(p) ≈ b(p + flow(p)). To bring the previous
output to frame t we sample it along the flow from t to t − 1 (the "backward" flow).

PyAV and OpenCV (the `video` extra) are lazy imports: loaded on first use, by video_libs.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

from scratchnst.errors import ScratchnstError

# Ruder et al., section 3.1: a pixel is disoccluded where the forward flow, followed from the
# backward flow's end, does not lead back: |w̃ + w|² > OCC_REL (|w̃|² + |w|²) + OCC_ABS; it is on a
# motion boundary where |∇u|² + |∇v|² > EDGE_REL |w|² + EDGE_ABS.
OCC_REL, OCC_ABS = 0.01, 0.5
EDGE_REL, EDGE_ABS = 0.01, 0.002


def video_libs():
    """(av, cv2), or ScratchnstError naming the extra that brings them."""
    try:
        import av
        import cv2
    except ImportError:
        raise ScratchnstError("video needs PyAV and OpenCV: pip install 'scratchnst[video]'") from None
    return av, cv2


def estimate_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """DIS optical flow (OpenCV, preset MEDIUM) from frame a to frame b.

    a, b: (H, W, 3) uint8 RGB. Returns (H, W, 2) float32 (dx, dy) with a(p) ≈ b(p + flow(p)).
    """
    _, cv2 = video_libs()
    grey = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in (a, b)]
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return dis.calc(grey[0], grey[1], None)


def sample_points(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(xs, ys), each (H, W): where each pixel lands, p + flow(p)."""
    H, W = flow.shape[:2]
    return np.arange(W)[None, :] + flow[..., 0], np.arange(H)[:, None] + flow[..., 1]


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Bilinear sample of `image` along `flow`: out(p) = image(p + flow(p)).

    image: (H, W) or (H, W, C); flow: (H, W, 2). Points outside the image take the nearest border
    value (inside_mask tells which they are). Returns float64, shaped like image.
    """
    H, W = flow.shape[:2]
    if image.shape[:2] != (H, W):
        raise ValueError(f"image is {image.shape[:2]} but the flow is {(H, W)}")
    xs, ys = sample_points(flow)
    xs, ys = np.clip(xs, 0, W - 1), np.clip(ys, 0, H - 1)
    x0, y0 = np.floor(xs).astype(np.intp), np.floor(ys).astype(np.intp)
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    wx, wy = xs - x0, ys - y0
    if image.ndim == 3:
        wx, wy = wx[..., None], wy[..., None]
    img = image.astype(np.float64)
    top = img[y0, x0] * (1 - wx) + img[y0, x1] * wx
    bottom = img[y1, x0] * (1 - wx) + img[y1, x1] * wx
    return top * (1 - wy) + bottom * wy


def warp_frame(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """A stylized frame carried along `flow`: out(p) = image(p + flow(p)), sampled with the Lanczos
    kernel over 8×8 pixels (OpenCV's remap, positions to 1/32 px), rounded to uint8.

    image: (H, W, 3) uint8; flow: (H, W, 2). Points outside the image take the nearest border value,
    as in warp. Bilinear sampling at a fractional offset f averages neighbours with weights f, 1 − f:
    carried from frame to frame, its blur adds up (a 1-px pan whose flow is off by a few hundredths
    of a pixel: 60 % of the strokes' |Laplacian| gone after 60 frames); Lanczos keeps it, and unlike
    OpenCV's bicubic (a = −0.75) does not ring more with every frame (docs/benchmarks.md, "Video
    crispness (issue #27)").
    """
    H, W = flow.shape[:2]
    if image.shape[:2] != (H, W):
        raise ValueError(f"image is {image.shape[:2]} but the flow is {(H, W)}")
    _, cv2 = video_libs()
    xs, ys = sample_points(flow)
    return cv2.remap(np.ascontiguousarray(image), xs.astype(np.float32), ys.astype(np.float32), cv2.INTER_LANCZOS4,
                     borderMode=cv2.BORDER_REPLICATE)


def inside_mask(flow: np.ndarray) -> np.ndarray:
    """(H, W) bool: p + flow(p) lies inside the image (sampling there needs no border value)."""
    H, W = flow.shape[:2]
    xs, ys = sample_points(flow)
    return (xs >= 0) & (xs <= W - 1) & (ys >= 0) & (ys <= H - 1)


def consistency_mask(backward: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """c (H, W) float32 for frame t: 1 where the motion to frame t − 1 is reliable, 0 where a pixel is
    disoccluded, on a motion boundary, or comes from outside frame t − 1.

    backward: flow from t to t − 1; forward: flow from t − 1 to t (both (H, W, 2)).
    """
    w = backward.astype(np.float64)
    w_tilde = warp(forward, backward)  # the forward flow at the point each pixel came from
    occluded = ((w_tilde + w) ** 2).sum(-1) > OCC_REL * ((w_tilde**2).sum(-1) + (w**2).sum(-1)) + OCC_ABS
    du_dy, du_dx = np.gradient(w[..., 0])
    dv_dy, dv_dx = np.gradient(w[..., 1])
    boundary = du_dx**2 + du_dy**2 + dv_dx**2 + dv_dy**2 > EDGE_REL * (w**2).sum(-1) + EDGE_ABS
    return (~occluded & ~boundary & inside_mask(backward)).astype(np.float32)


def long_term_masks(masks: dict) -> dict:
    """Ruder et al.'s long-term masks (section 3.2): frame t is held to frame t − j only where no
    closer frame of J is reliable, c_long_j = max(c_j − Σ_{j' < j} c_j', 0).

    masks: {j: c_j}, the (H, W) consistency mask of frame t against frame t − j for each offset j
    of J that the clip has. Returns {j: c_long_j} (float32), as many. Binary masks give binary,
    disjoint long-term masks whose sum is 1 wherever any c_j is.
    """
    out, closer = {}, 0.0
    for j in sorted(masks):
        c = masks[j].astype(np.float32)
        out[j] = np.maximum(c - closer, 0).astype(np.float32)
        closer = closer + c
    return out


class PairFlow(NamedTuple):
    """What frame t needs of the motion from an earlier frame (t − 1, or t − j for the long-term
    term): the backward flow, the mask, and the seconds spent."""

    backward: np.ndarray
    mask: np.ndarray
    seconds: float


def pair_flow(previous: np.ndarray, current: np.ndarray) -> PairFlow:
    """Both flows between an earlier frame and the current one ((H, W, 3) uint8), and the current
    one's mask. A frame j > 1 back is measured directly, not by chaining the consecutive flows: a
    chain breaks wherever a point was out of view in between, which is where the long-term term
    matters (docs/benchmarks.md, "Video crispness (issue #27)", "Long-term consistency").

    One independent task per frame pair: video submits them to Dask ahead of the frames.
    """
    start = time.perf_counter()
    backward = estimate_flow(current, previous)
    forward = estimate_flow(previous, current)
    return PairFlow(backward, consistency_mask(backward, forward), time.perf_counter() - start)


def temporal_error(frame: np.ndarray, warped_previous: np.ndarray, mask: np.ndarray) -> float:
    """Mean over the reliable pixel values of (frame − warped previous frame)², RGB in 0..255 units.

    frame, warped_previous: (H, W, 3); mask: (H, W) weights c. The flicker measure of docs/benchmarks.md.
    """
    diff = frame.astype(np.float64) - warped_previous
    weight = mask.astype(np.float64)[..., None]
    return float((weight * diff**2).sum() / max(3.0 * weight.sum(), 1.0))
