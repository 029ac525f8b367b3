"""2-D convolution as im2col + one GEMM per band of output rows, and its input gradient.

Layout: x (N, C, H, W), w (F, C, KH, KW), b (F,), y (N, F, out_h, out_w). Like every deep-learning
"convolution" this is a cross-correlation: y[n, f, i, j] = b[f] + Σ_{c,p,q} w[f, c, p, q] x[n, c, i·s+p, j·s+q]
(x zero-padded by `pad` on every side).
"""

from __future__ import annotations

from typing import NamedTuple

from scratchnst.core import host
from scratchnst.core.backend import get_array_module, is_cupy

# Bound on one band: its im2col rows plus its GEMM output rows, in bytes. The full 9·C × H·W im2col
# matrix of a 512² image is 600 MB at conv1_2; bands of output rows keep the working set small while
# leaving each GEMM big enough to run at full speed. On the host each worker thread (host.split_map)
# fills a band and multiplies it straight away, single-threaded, so a band stays in cache between
# the two; on a GPU each band costs about a dozen kernel launches, so bands are as large as memory
# allows. Never fewer than MIN_BAND_COLS output columns, below which a GEMM call is mostly overhead.
# The sizes were measured per VGG conv: docs/benchmarks.md ("Band sizes"), docs/gpu.md.
TILE_BYTES = 4 * 2**20
DEVICE_TILE_BYTES = 2**30
MIN_BAND_COLS = 1024
# The band count is rounded up to a multiple of this (times per_worker), so that 1, 2 or 4 threads
# get equal shares; it must not depend on the thread count, or the bands (and so the bits of the
# result) would.
BAND_GROUP = 4


class ConvCache(NamedTuple):
    x_shape: tuple
    w: object
    stride: int
    pad: int


def conv_output_size(size: int, k: int, stride: int, pad: int, what: str = "conv") -> int:
    """Output length along one axis: (size + 2·pad − k) // stride + 1; ValueError when not positive."""
    if stride < 1 or pad < 0 or k < 1:
        raise ValueError(f"{what}: need kernel ≥ 1, stride ≥ 1, pad ≥ 0 (got k={k}, stride={stride}, pad={pad})")
    out = (size + 2 * pad - k) // stride + 1
    if out <= 0:
        raise ValueError(f"{what}: input size {size} with kernel {k}, stride {stride}, pad {pad} gives no output")
    return out


def conv2d_forward(x, w, b, stride: int = 1, pad: int = 0):
    """Convolve x with frozen weights.

    x: (N, C, H, W), w: (F, C, KH, KW), b: (F,) or None; stride ≥ 1, pad ≥ 0.
    Returns (y, cache), y: (N, F, (H + 2·pad − KH) // stride + 1, (W + 2·pad − KW) // stride + 1).
    """
    if x.ndim != 4 or w.ndim != 4 or x.shape[1] != w.shape[1]:
        raise ValueError(f"conv2d: x {tuple(x.shape)} and w {tuple(w.shape)} do not fit (need (N,C,H,W), (F,C,KH,KW))")
    y = _conv_gemm(x, w, b, stride, pad)
    return y, ConvCache(tuple(x.shape), w, stride, pad)


def conv2d_backward(dout, cache: ConvCache):
    """Input gradient dx: (N, C, H, W) from dout: (N, F, out_h, out_w). No weight gradients (frozen).

    Stride 1 with pad ≤ K − 1 and C > F/2: the gradient of a correlation is a "full" correlation of
    dout with the kernel flipped in space and transposed in channels, w'[c, f, p, q] =
    w[f, c, KH−1−p, KW−1−q], padded by K−1−pad; it runs through the same fast flat im2col+GEMM path as
    the forward. Otherwise (other strides, or few input channels such as the RGB layer, where
    im2col of dout would copy 9·F rows to produce C): col2im.
    """
    N, C, H, W = cache.x_shape
    F, _, KH, KW = cache.w.shape
    if cache.stride == 1 and cache.pad <= min(KH, KW) - 1 and KH == KW and 2 * C > F:
        w_t = cache.w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
        xp = get_array_module(dout)
        return _conv_gemm(dout, xp.ascontiguousarray(w_t), None, 1, KH - 1 - cache.pad)
    return _col2im_backward(dout, cache)


def _conv_gemm(x, w, b, stride: int, pad: int):
    """The forward computation, shared by conv2d_forward and the stride-1 backward pass."""
    if stride == 1:
        return _conv_gemm_flat(x, w, b, pad)
    xp = get_array_module(x, w)
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    out_h = conv_output_size(H, KH, stride, pad)
    out_w = conv_output_size(W, KW, stride, pad)
    K = C * KH * KW
    w2 = w.reshape(F, K)
    xpad = _pad(x, pad)
    y = host.empty(xp, (N, F, out_h, out_w), x.dtype)
    rows = _band_rows(xp, K, F, out_w, out_h, x.dtype.itemsize)

    def run(n, starts):
        img, buf = xpad[n], host.empty(xp, K * rows * out_w, x.dtype)
        for r0 in starts:
            R = min(rows, out_h - r0)
            # col[c, p, q, i, j] = img[c, (r0+i)·s + p, j·s + q]: one strided slice copy per kernel
            # offset (p, q), so no fancy indexing and no duplicate-index hazards.
            col = buf[: K * R * out_w].reshape(C, KH, KW, R, out_w)
            for p in range(KH):
                top = r0 * stride + p
                for q in range(KW):
                    col[:, p, q] = img[:, top : top + stride * (R - 1) + 1 : stride, q : q + stride * (out_w - 1) + 1 : stride]
            xp.matmul(w2, col.reshape(K, R * out_w), out=y[n, :, r0 : r0 + R].reshape(F, R * out_w))

    for n in range(N):
        host.split_map(xp, list(range(0, out_h, rows)), lambda starts: run(n, starts))
    if b is not None:
        y += b.reshape(1, F, 1, 1)
    return y


def _conv_gemm_flat(x, w, b, pad: int):
    """Stride 1 on the "flat padded" image: every im2col row is one contiguous slice.

    Pad each image once to (C, Hp, Wp) and flatten it to (C, Hp·Wp). Computing the output on a
    (out_h, Wp) grid instead of (out_h, out_w), output position o = i·Wp + j reads input
    (i + p)·Wp + (j + q) = o + (p·Wp + q) for kernel offset (p, q): a band of output rows needs,
    per offset, the contiguous run flat[:, r0·Wp + p·Wp + q :][: R·Wp]. The last KW − 1 grid
    columns of each row wrap into the next row; they are garbage and dropped when the band is
    copied out (with the bias added in the same pass). KW − 1 zeros after the image keep the last
    band's slices in bounds.
    """
    xp = get_array_module(x, w)
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    out_h = conv_output_size(H, KH, 1, pad)
    out_w = conv_output_size(W, KW, 1, pad)
    Hp, Wp = H + 2 * pad, W + 2 * pad
    K = C * KH * KW
    w2 = w.reshape(F, K)
    flat = host.zeros(xp, (C, Hp * Wp + KW - 1), x.dtype)
    y = host.empty(xp, (N, F, out_h, out_w), x.dtype)
    rows = _band_rows(xp, K, F, Wp, out_h, x.dtype.itemsize)
    bias = None if b is None else b.reshape(F, 1, 1)

    def run(n, starts):
        colbuf = host.empty(xp, K * rows * Wp, x.dtype)
        outbuf = host.empty(xp, F * rows * Wp, x.dtype)
        for r0 in starts:
            R = min(rows, out_h - r0)
            L = R * Wp
            col = colbuf[: K * L].reshape(C, KH * KW, L)
            for p in range(KH):
                for q in range(KW):
                    start = (r0 + p) * Wp + q
                    col[:, p * KW + q] = flat[:, start : start + L]
            out = outbuf[: F * L].reshape(F, L)
            xp.matmul(w2, col.reshape(K, L), out=out)
            band = out.reshape(F, R, Wp)[:, :, :out_w]
            if bias is None:
                y[n, :, r0 : r0 + R] = band
            else:
                xp.add(band, bias, out=y[n, :, r0 : r0 + R])

    for n in range(N):
        # Borders stay zero from the allocation; only the interior is rewritten per image.
        flat[:, : Hp * Wp].reshape(C, Hp, Wp)[:, pad : pad + H, pad : pad + W] = x[n]
        host.split_map(xp, list(range(0, out_h, rows)), lambda starts: run(n, starts))
    return y


def _col2im_backward(dout, cache: ConvCache):
    """General stride/pad: dcol = wᵀ dout per band, scattered back with += on strided slices."""
    xp = get_array_module(dout)
    N, C, H, W = cache.x_shape
    w, s, pad = cache.w, cache.stride, cache.pad
    F, _, KH, KW = w.shape
    out_h, out_w = dout.shape[2], dout.shape[3]
    K = C * KH * KW
    w2t = w.reshape(F, K).T
    dxpad = host.zeros(xp, (N, C, H + 2 * pad, W + 2 * pad), dout.dtype)
    # Band r0 adds into input rows [r0·s, (r0 + rows − 1)·s + KH): with rows ≥ KH, bands two apart
    # never share a row, so the even bands can run at once, then the odd ones.
    rows = max(KH, _band_rows(xp, K, F, out_w, out_h, dout.dtype.itemsize, per_worker=2))

    def run(n, starts):
        img, buf = dxpad[n], host.empty(xp, K * rows * out_w, dout.dtype)
        for r0 in starts:
            R = min(rows, out_h - r0)
            dcol = buf[: K * R * out_w].reshape(K, R * out_w)
            xp.matmul(w2t, dout[n, :, r0 : r0 + R].reshape(F, R * out_w), out=dcol)
            dcol = dcol.reshape(C, KH, KW, R, out_w)
            # Within one (p, q) the slice has no repeated positions, so += is a plain scatter;
            # overlaps between kernel offsets are summed by running the offsets one after another.
            for p in range(KH):
                top = r0 * s + p
                for q in range(KW):
                    img[:, top : top + s * (R - 1) + 1 : s, q : q + s * (out_w - 1) + 1 : s] += dcol[:, p, q]

    for n in range(N):
        starts = list(range(0, out_h, rows))
        for phase in (starts[0::2], starts[1::2]):
            host.split_map(xp, phase, lambda subset: run(n, subset))
    return dxpad[:, :, pad : pad + H, pad : pad + W]


def _pad(x, pad: int):
    if pad == 0:
        return x
    N, C, H, W = x.shape
    out = host.zeros(get_array_module(x), (N, C, H + 2 * pad, W + 2 * pad), x.dtype)
    out[:, :, pad : pad + H, pad : pad + W] = x
    return out


def tile_bytes(on_device: bool) -> int:
    """The bound on one band: DEVICE_TILE_BYTES on a GPU (CuPy), else TILE_BYTES (per worker thread)."""
    return DEVICE_TILE_BYTES if on_device else TILE_BYTES


def band_bytes(c_in: int, c_out: int, positions: float, itemsize: int, *, on_device: bool = False, workers: int = 1) -> float:
    """The bytes of the bands one 3×3 stride-1 conv call holds at once, forward or input gradient, as
    a memory estimate counts them; positions: out_h·out_w (a model may pass a fractional one).

    A band holds K im2col rows and F output rows per output position: K = 9·c_in, F = c_out forward;
    the input gradient's flipped-kernel GEMM swaps the roles (9·c_out + c_in). Each of `workers`
    host threads (1 on a GPU) holds one band of about tile_bytes, all of them together no more than
    the whole image's band, +10% for the flat grid's KW − 1 extra columns per row. (A real band
    can pass tile_bytes: it keeps MIN_BAND_COLS columns and the band count is rounded up.)
    """
    per_position = max(9 * c_in + c_out, 9 * c_out + c_in)
    return min(tile_bytes(on_device) * workers, 1.1 * per_position * positions * itemsize)


def _band_rows(xp, K: int, F: int, row_len: int, out_h: int, itemsize: int, per_worker: int = 1) -> int:
    """Output rows per band: im2col (K rows) + output (F rows), `row_len` columns per output row.

    The band count is rounded up to a multiple of per_worker × BAND_GROUP (before the rows are
    rounded up again), so that the threads get equal shares, give or take one band.
    """
    rows = max(1, tile_bytes(is_cupy(xp)) // ((K + F) * row_len * itemsize), -(-MIN_BAND_COLS // row_len))
    parts = per_worker * (BAND_GROUP if not is_cupy(xp) else 1)
    bands = -(-out_h // rows)  # -(-a // b) is a ceiling division
    bands = min(out_h, -(-bands // parts) * parts)
    return -(-out_h // bands)
