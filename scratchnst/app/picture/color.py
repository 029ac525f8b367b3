"""Colour control (Gatys et al. 2017, §5): whose palette the output wears.

    none       the style's colours, as the optimisation makes them
    luminance  luminance-only transfer: optimise on luma, put the content's chroma back
               (scratchnst.app.files.images.match_luminance / preserve_colors; --preserve-colors)
    linear     before the optimisation, the style image's RGB mean and covariance are matched to the
               content's by an affine map (the Cholesky variant), so the strokes arrive in the
               content's palette
    histogram  after the optimisation, each RGB channel of the output is histogram-matched to the
               content's (a monotone map per channel: the output's value ranks are kept)

All functions take and return uint8 RGB (H, W, 3) host arrays (or PIL images in) and run once per
scale, never per evaluation.
"""

from __future__ import annotations

import numpy as np

from scratchnst.core.preprocess import rgb_array

COLORS = ("none", "luminance", "linear", "histogram")
COVARIANCE_FLOOR = 1e-2  # added to each covariance's diagonal (0..255 units²): a flat image still factors


def mean_cov(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(μ (3,), Σ (3, 3)) of (n, 3) pixel values (the population covariance, divided by n)."""
    mu = pixels.mean(axis=0)
    d = pixels - mu
    return mu, d.T @ d / len(pixels)


def linear_map(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(A (3, 3), b (3,)) with x ↦ A x + b taking the mean and covariance of `source` (n, 3) to
    those of `target` (m, 3): A = L_t L_s⁻¹ with L L ᵀ = Σ the Cholesky factors, b = μ_t − A μ_s.

    Then A Σ_s Aᵀ = L_t L_s⁻¹ L_s L_sᵀ L_s⁻ᵀ L_tᵀ = Σ_t. (The PCA/eigen variant uses symmetric square
    roots instead; both match the first two moments, Cholesky is the one Gatys et al. 2017 show first.)
    """
    mu_s, cov_s = mean_cov(source)
    mu_t, cov_t = mean_cov(target)
    floor = COVARIANCE_FLOOR * np.eye(3)
    l_s, l_t = np.linalg.cholesky(cov_s + floor), np.linalg.cholesky(cov_t + floor)
    a = l_t @ np.linalg.inv(l_s)
    return a, mu_t - a @ mu_s


def linear_transfer(style, content) -> np.ndarray:
    """The style image, its RGB mean and covariance matched to the content's (linear_map), as
    uint8 RGB (H, W, 3) of the style's size. Values outside 0..255 are clipped."""
    s = rgb_array(style).astype(np.float64)
    c = rgb_array(content).astype(np.float64).reshape(-1, 3)
    a, b = linear_map(s.reshape(-1, 3), c)
    return np.clip(np.rint(s @ a.T + b), 0, 255).astype(np.uint8)


def match_histograms(image, reference) -> np.ndarray:
    """`image` with each RGB channel's histogram matched to `reference`'s, as uint8 RGB (H, W, 3).

    Per channel, a value at cumulative fraction q of the image is mapped to the reference's value at
    the same fraction (linear interpolation between the reference's levels); the map is monotone.
    The images may differ in size.
    """
    img, ref = rgb_array(image), rgb_array(reference)
    out = np.empty_like(img)
    for c in range(3):
        src_values, src_index, src_counts = np.unique(img[..., c], return_inverse=True, return_counts=True)
        ref_values, ref_counts = np.unique(ref[..., c], return_counts=True)
        # Each level's quantile: the midpoint of its step in the cumulative distribution.
        src_q = (np.cumsum(src_counts) - 0.5 * src_counts) / img[..., c].size
        ref_q = (np.cumsum(ref_counts) - 0.5 * ref_counts) / ref[..., c].size
        mapped = np.interp(src_q, ref_q, ref_values.astype(np.float64))
        out[..., c] = np.clip(np.rint(mapped), 0, 255).astype(np.uint8)[src_index.reshape(img.shape[:2])]
    return out

