"""3×3, stride-1 convolution by Winograd's minimal filtering F(4×4, 3×3), and its input gradient.

Layout as in ops.conv: x (N, C, H, W), w (F, C, 3, 3), b (F,), y (N, F, out_h, out_w), and the same
cross-correlation y[n, f, i, j] = b[f] + Σ_{c,p,q} w[f, c, p, q] xpad[n, c, i + p, j + q].

The method (Lavin & Gray 2016, "Fast algorithms for convolutional neural networks"), in 1-D first.
Four outputs of a 3-tap correlation, y_i = Σ_p g_p d_{i+p} (i < 4), read six inputs d_0..d_5. They
are the transpose of a polynomial product: for h of degree 3, s = g·h has degree 5 and coefficients
s = T_g h with T_g[i, k] = g_{i−k}, and y = T_gᵀ d. The product s is fixed by its values at six
points, s(a) = g(a)·h(a): five finite points a and "∞" (the leading coefficient, g_2·h_3). With
    Vm (6×4), Vr (6×3): rows (1, a, a², ...) per finite point, (0, ..., 0, 1) for ∞,
    Vn (6×6) the same with six columns, so that s = Vn⁻¹ (Vr g ⊙ Vm h),
T_g = Vn⁻¹ diag(Vr g) Vm, and therefore
    y = Aᵀ [(G g) ⊙ (Bᵀ d)],   Aᵀ = Vmᵀ (4×6), G = Vr (6×3), Bᵀ = Vn⁻ᵀ (6×6):
6 multiplications instead of 12. Any row i of G may be scaled by t_i if row i of Bᵀ (or column i
of Aᵀ) is scaled by 1/t_i; that freedom gives the integer Aᵀ and the small Bᵀ below. Nested over
both axes of a 6×6 input tile d and the 3×3 filter g (tiles overlap by 2, their 4×4 outputs do not):
    Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A.
Over channels the element-wise product becomes, for each of the 36 positions (ξ, ν) of a tile,
one GEMM: with U[ξν] = (G g Gᵀ)[ξν] (F × C, made once: the weights are frozen) and
V[ξν] = (Bᵀ d B)[ξν] (C × tiles), M[ξν] = U[ξν] V[ξν], and Y = Aᵀ M A per tile and filter.
That is 36 multiply-adds per 16 outputs per (f, c) instead of 144: the GEMMs do 4× fewer FLOPs
than im2col's; the transforms are extra passes over the input and output.

Points. The error grows with the spread of the points' powers (Barabasz et al. 2018, "Error
analysis and improving the accuracy of Winograd convolution"). On the VGG layers, 0, 1, −1, −2,
−½ (+∞) gave about half the float32 error of Lavin's 0, ±1, ±2 and of 0, ±1, ±½
(docs/winograd.md, "The points"). The set is also closed under a → 1/a (0 ↔ ∞, −2 ↔ −½), which
makes the input gradient free of a second filter transform: a kernel flipped in space,
g'(a) = g_2 + g_1 a + g_0 a², equals a² g(1/a), so with the rows of G scaled to be each other's
reverses for reciprocal points, G J = P G (J reverses the 3 taps, P swaps the rows 0 ↔ ∞ and
−2 ↔ −½): the flipped kernel's transform is U[P ξ, P ν], no new array (see FLIP).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from scratchnst.core import host
from scratchnst.core.backend import get_array_module, is_cupy
from scratchnst.core.ops.conv import conv_output_size

# Interpolation points, in the order of the rows of G and Bᵀ and the columns of Aᵀ; the sixth is ∞.
POINTS = (0, 1, -1, -2, -0.5)

# Aᵀ: columns (1, a, a², a³) per point, the ∞ column (0, 0, 0, 1); the −½ column scaled by 8.
AT = np.array(
    [
        [1, 1, 1, 1, 8, 0],
        [0, 1, -1, -2, -4, 0],
        [0, 1, 1, 4, 2, 0],
        [0, 1, -1, -8, -1, 1],
    ],
    dtype=np.float64,
)
# G: rows (1, a, a²) per point times the scale that Vn⁻¹'s column took, (0, 0, 1) for ∞.
# Reciprocal points have reversed rows: row −½ = row −2 reversed, row ∞ = row 0 reversed.
G = np.array(
    [
        [1, 0, 0],
        [1 / 9, 1 / 9, 1 / 9],
        [1, -1, 1],
        [1 / 18, -1 / 9, 2 / 9],
        [2 / 9, -1 / 9, 1 / 18],
        [0, 0, 1],
    ],
    dtype=np.float64,
)
# Bᵀ = Vn⁻ᵀ with each row scaled so that its smallest entry is ±1 (G took the inverse scales).
BT = np.array(
    [
        [1, 2.5, 0, -2.5, -1, 0],
        [0, 1, 3.5, 3.5, 1, 0],
        [0, 1, 1.5, -1.5, -1, 0],
        [0, -1, -2, 1, 2, 0],
        [0, -2, -1, 2, 1, 0],
        [0, -1, -2.5, 0, 2.5, 1],
    ],
    dtype=np.float64,
)
# G[:, ::-1] == G[FLIP]: the rows of the reciprocal points. Transform position ξ·6 + ν of the
# flipped kernel is position FLIP36[ξ·6 + ν] of the kernel's own transform.
FLIP = (5, 1, 2, 4, 3, 0)
FLIP36 = tuple(6 * FLIP[i // 6] + FLIP[i % 6] for i in range(36))

# Bounds that size the work. A band (whole tile rows, all channels) is what one thread takes at a
# time: its transformed input V (36 × C × tiles) and GEMM output M (36 × F × tiles), BAND_BYTES
# together, stay in cache from the input transform through the 36 GEMMs to the inverse transform.
# Bands have at least MIN_BAND_TILES tiles (below that each GEMM re-reads its filter matrix for
# too few columns), and their count is rounded up to a multiple of BAND_MULTIPLE so that two host
# threads get equal shares. None of these depends on the thread count, so neither does any bit of
# the result. The values are the best of a sweep (docs/winograd.md); transforming the input one
# tile row at a time, to stay in the per-core cache, measured slower than a whole band at once.
# On a GPU a band is as big as DEVICE_BAND_BYTES allows: every band costs kernel launches.
BAND_BYTES = 32 * 2**20
DEVICE_BAND_BYTES = 2**30
MIN_BAND_TILES = 128
BAND_MULTIPLE = 2


class WinogradCache(NamedTuple):
    x_shape: tuple
    pad: int
    u: object  # (36, F, C) transform of the forward kernel; the backward reads it flipped


def winograd_filter_transform(w):
    """U = G g Gᵀ for every (f, c) of a frozen 3×3 kernel, made once per weight.

    w: (F, C, 3, 3). Returns u: (36, F, C) in w's dtype, u[ξ·6 + ν] = (G w[f, c] Gᵀ)[ξ, ν],
    computed in float64.
    """
    if w.ndim != 4 or w.shape[2:] != (3, 3):
        raise ValueError(f"winograd: kernel must be (F, C, 3, 3), got {tuple(w.shape)}")
    xp = get_array_module(w)
    F, C = w.shape[:2]
    g, w64 = xp.asarray(G), w.astype(xp.float64)
    u = xp.empty((6, 6, F, C), dtype=w.dtype)
    for xi in range(6):  # one row of G at a time: the float64 intermediates stay 1/6 of the result
        gw = xp.einsum("p,fcpq->fcq", g[xi], w64)
        u[xi] = xp.einsum("fcq,bq->bfc", gw, g)
    return u.reshape(36, F, C)


def winograd_conv2d_forward(x, w, b, pad: int = 1, *, u=None):
    """3×3 stride-1 convolution of x with frozen weights, as conv2d_forward(x, w, b, 1, pad) computes.

    x: (N, C, H, W), any H, W; w: (F, C, 3, 3); b: (F,) or None; pad 0 or 1; u: w's
    winograd_filter_transform when already made (else made here).
    Returns (y, cache), y: (N, F, H + 2·pad − 2, W + 2·pad − 2).
    """
    if x.ndim != 4 or w.ndim != 4 or x.shape[1] != w.shape[1] or w.shape[2:] != (3, 3):
        raise ValueError(f"winograd conv2d: x {tuple(x.shape)} and w {tuple(w.shape)} do not fit (need (N,C,H,W), (F,C,3,3))")
    if pad not in (0, 1):
        raise ValueError(f"winograd conv2d: pad must be 0 or 1, got {pad}")
    if u is None:
        u = winograd_filter_transform(w)
    y = _winograd_conv(x, [u[k] for k in range(36)], b, pad)
    return y, WinogradCache(tuple(x.shape), pad, u)


def winograd_conv2d_backward(dout, cache: WinogradCache):
    """Input gradient dx: (N, C, H, W) from dout: (N, F, out_h, out_w). No weight gradients (frozen).

    The gradient of a correlation is the correlation of dout with the kernel flipped in space and
    transposed in channels, w'[c, f, p, q] = w[f, c, 2 − p, 2 − q], padded by 2 − pad: the same
    Winograd convolution, whose filter transform is the forward one read at the flipped positions
    (G J = P G, module docstring), each of its (F × C) matrices transposed to (C × F).
    """
    u = cache.u
    return _winograd_conv(dout, [u[FLIP36[k]].T for k in range(36)], None, 2 - cache.pad)


def _winograd_conv(x, kernels, b, pad: int):
    """y = conv(x) given the 36 (C_out × C_in) transformed kernel matrices; pad 0, 1 or 2.

    Tiles: 4×4 output tiles on a th × tw grid covering out_h × out_w (the last row and column of
    tiles may reach past it: their inputs are zeros beyond the image, their outputs are cropped).
    Tile (t, s) reads padded input rows 4t .. 4t + 5, columns 4s .. 4s + 5.
    """
    xp = get_array_module(x)
    N, C, H, W = x.shape
    F = kernels[0].shape[0]
    out_h = conv_output_size(H, 3, 1, pad, "winograd conv2d")
    out_w = conv_output_size(W, 3, 1, pad, "winograd conv2d")
    th, tw = -(-out_h // 4), -(-out_w // 4)
    tb = _band_rows(xp, C, F, th, tw, x.dtype.itemsize)
    y = host.empty(xp, (N, F, out_h, out_w), x.dtype)
    bias = None if b is None else b.reshape(F, 1, 1)
    geometry = (pad, th, tw, tb)

    starts = list(range(0, th, tb))
    # One set of band buffers per worker, made once per call and reused for all of its bands.
    workspaces = [_band_buffers(xp, C, F, tb, tw, x.dtype) for _ in range(host.split_count(xp, len(starts)))]
    for n in range(N):
        host.split_map_by_worker(xp, starts, lambda worker, mine: _run_bands(x[n], kernels, bias, y[n], mine, geometry, workspaces[worker]))
    return y


def band_bytes(c_in: int, c_out: int, positions: float, itemsize: int, *, on_device: bool = False, workers: int = 1) -> int:
    """The bytes of the band buffers one Winograd conv call holds at once, as a memory estimate
    counts them; positions: out_h·out_w (a model may pass a fractional one).

    A band's V and M take 36·(c_in + c_out) values per 4×4 tile; each of `workers` host threads
    (1 on a GPU) holds one band of about BAND_BYTES (DEVICE_BAND_BYTES on a GPU), all together no
    more than the whole image's; the transforms' scratch beside them counts as half a band more.
    """
    whole = int(36 * (c_in + c_out) * positions / 16 * itemsize)
    return int(1.5 * min(_band_bound(on_device) * workers, whole))


def filter_transform_bytes(c_in: int, c_out: int, itemsize: int) -> tuple[int, int]:
    """(bytes of the transform u (36, F, C) kept for a 3×3 kernel (F, C, 3, 3), bytes held in float64
    while making it: the kernel, one G row's product and one result row, 18 values per (f, c))."""
    return 36 * c_out * c_in * itemsize, 18 * 8 * c_out * c_in


def _band_bound(on_device: bool) -> int:
    return DEVICE_BAND_BYTES if on_device else BAND_BYTES


def _band_rows(xp, C: int, F: int, th: int, tw: int, itemsize: int) -> int:
    """Tile rows per band, from the bounds above and the shapes only."""
    on_device = is_cupy(xp)
    per_row = 36 * tw * (C + F) * itemsize
    tb = max(1, _band_bound(on_device) // per_row, -(-MIN_BAND_TILES // tw))
    bands = -(-th // tb)  # -(-a // b) is a ceiling division
    if not on_device:
        bands = min(th, -(-bands // BAND_MULTIPLE) * BAND_MULTIPLE)
    return -(-th // bands)  # equal bands


def _band_buffers(xp, C: int, F: int, tb: int, tw: int, dt) -> dict:
    """The buffers one worker reuses for all its bands (see _run_bands)."""
    R, Wp = 4 * tb + 2, 4 * tw + 2
    return {
        "x": host.empty(xp, C * R * Wp, dt),  # padded input rows of one band
        "ph": host.empty(xp, 6 * C * R * tw, dt),  # its column taps 4·s + q, one array per q
        "s": host.empty(xp, 2 * C * R * tw, dt),  # scratch of the input's 1-D transforms
        # V, and once the GEMMs have consumed it, the inverse transform's pass along W (6 × 4 × F).
        "v": host.empty(xp, max(36 * C, 24 * F) * tb * tw, dt),
        # M, and before the GEMMs write it, the input transform's pass along W (6 × R × C × tw).
        "m": host.empty(xp, max(36 * F * tb, 6 * C * R) * tw, dt),
        "y": host.empty(xp, 4 * F * tb * tw, dt),  # one column j of output positions
        "pq": host.empty(xp, 2 * F * tb * tw, dt),
    }


def _run_bands(xn, kernels, bias, yn, starts, geometry, bufs):
    """One worker's bands of one image: xn (C, H, W) → yn (F, out_h, out_w), buffers reused.

    Everything stays channel-major, as x and y are: V[ξν] is (C, tiles), the GEMMs make
    M[ξν] = K[ξν] V[ξν] (F, tiles), and the inverse transform scatters its 16 outputs per tile
    straight into y. (A channel-last layout would give the 1-D transforms longer contiguous runs
    on the deep layers, but the transposing copies in and out cost more than that saves.)
    """
    xp = get_array_module(xn)
    pad, th, tw, tb = geometry
    C, F = xn.shape[0], yn.shape[0]
    for t0 in starts:
        rows = min(tb, th - t0)
        nt = rows * tw
        v = _carve(bufs["v"], (36, C, nt))
        _input_transform(xn, pad, t0, rows, tw, bufs, v)
        m = _carve(bufs["m"], (36, F, nt))
        for i in range(36):
            xp.matmul(kernels[i], v[i], out=m[i])
        _inverse_transform(m, bias, yn, t0, rows, tw, bufs)


def _input_transform(xn, pad, t0, rows, tw, bufs, v):
    """V = Bᵀ d B for tile rows t0 .. t0 + rows − 1, into v[ξ·6 + ν] (C, rows·tw)."""
    C, H, W = xn.shape
    R, Wp = 4 * rows + 2, 4 * tw + 2
    # Padded rows 4·t0 .. 4·t0 + R − 1: zeros outside the image.
    xb = _carve(bufs["x"], (C, R, Wp))
    top = 4 * t0 - pad  # image row of the band's first padded row
    lo, hi = max(0, top), min(H, top + R)
    xb[:, : lo - top] = 0
    xb[:, hi - top :] = 0
    xb[:, :, :pad] = 0
    xb[:, :, pad + W :] = 0
    xb[:, lo - top : hi - top, pad : pad + W] = xn[:, lo:hi]
    # Along W: tap q of tile column s is column 4·s + q. One strided copy per tap makes the six
    # operands contiguous, rows outermost, (R, C, tw), so that both passes run on flat arrays.
    ph = _carve(bufs["ph"], (6, R, C, tw))
    for q in range(6):
        ph[q] = xb[:, :, q : q + 4 * (tw - 1) + 1 : 4].transpose(1, 0, 2)
    t = _carve(bufs["m"], (6, R * C * tw))
    e, f = _carve(bufs["s"], (2, R * C * tw))
    _bt_1d(ph.reshape(6, -1), t, e, f)
    # Along H: tap r of tile row t is row 4·t + r of the band; the six results of one ν go to
    # contiguous scratch first (each is written several times), then once into v.
    t = t.reshape(6, R, C, tw)
    e, f = _carve(bufs["s"], (2, rows, C, tw))
    out = _carve(bufs["ph"], (6, rows, C, tw))  # the taps are consumed by now
    v = v.reshape(6, 6, C, rows, tw)
    for nu in range(6):
        _bt_1d([t[nu, r : r + 4 * (rows - 1) + 1 : 4] for r in range(6)], out, e, f)
        v[:, nu] = out.transpose(0, 2, 1, 3)


def _inverse_transform(m, bias, yn, t0, rows, tw, bufs):
    """Y = Aᵀ M A for the band's tiles, m (36, F, rows·tw), cropped into yn's rows 4·t0 .. (+ bias)."""
    xp = get_array_module(m)
    F, nt = m.shape[1], m.shape[2]
    m = m.reshape(6, 6, F, nt)
    z = _carve(bufs["v"], (6, 4, F, nt))
    yt = _carve(bufs["y"], (4, F, nt))
    p, q = _carve(bufs["pq"], (2, F, nt))
    for xi in range(6):  # along W: Z[ξ, j] = Σ_ν Aᵀ[j, ν] M[ξ, ν]
        _at_1d(m[xi], z[xi], p, q)
    for j in range(4):  # along H: Y[i, j] = Σ_ξ Aᵀ[i, ξ] Z[ξ, j]
        _at_1d(z[:, j], yt, p, q)
        for i in range(4):
            # Output (4·t + i, 4·s + j) of tile (t, s); tiles past the edge are cut off.
            dst = yn[:, 4 * t0 + i : 4 * (t0 + rows) : 4, j::4]
            src = yt[i].reshape(F, rows, tw)[:, : dst.shape[1], : dst.shape[2]]
            if bias is None:
                dst[...] = src
            else:
                xp.add(src, bias, out=dst)


def _carve(buf, shape):
    """A contiguous array of `shape` at the start of buf's memory."""
    return buf.reshape(-1)[: int(np.prod(shape))].reshape(shape)


def _bt_1d(d, out, e, f):
    """out[i] = Σ_k BT[i, k] d[k] for the six rows of BT, with shared partial sums; e, f scratch.

    With E = d3 − d1 and F = d4 − d2 (the rows of BT read off):
        out0 = d0 − d4 − 2.5 E        out3 = E + 2 F
        out1 = d1 + d4 + 3.5 (d2 + d3)   out4 = 2 E + F
        out2 = d1 − d4 + 1.5 (d2 − d3)   out5 = d5 − d1 + 2.5 F
    """
    xp = get_array_module(e)
    d0, d1, d2, d3, d4, d5 = d
    o0, o1, o2, o3, o4, o5 = out
    xp.subtract(d3, d1, out=e)
    xp.subtract(d4, d2, out=f)
    xp.multiply(f, 2, out=o3)
    o3 += e
    xp.multiply(e, 2, out=o4)
    o4 += f
    xp.multiply(e, -2.5, out=o0)
    o0 += d0
    o0 -= d4
    xp.multiply(f, 2.5, out=o5)
    o5 += d5
    o5 -= d1
    xp.add(d2, d3, out=e)
    xp.multiply(e, 3.5, out=o1)
    o1 += d1
    o1 += d4
    xp.subtract(d2, d3, out=e)
    xp.multiply(e, 1.5, out=o2)
    o2 += d1
    o2 -= d4


def _at_1d(m, out, p, q):
    """out[i] = Σ_k AT[i, k] m[k] for the four rows of AT; p, q scratch.

    With P = m1 + m2 and Q = m1 − m2:
        out0 = m0 + P + m3 + 8 m4       out2 = P + 2 (2 m3 + m4)
        out1 = Q − 2 (m3 + 2 m4)        out3 = Q + m5 − (8 m3 + m4)
    """
    xp = get_array_module(p)
    m0, m1, m2, m3, m4, m5 = m
    o0, o1, o2, o3 = out
    xp.add(m1, m2, out=p)
    xp.subtract(m1, m2, out=q)
    xp.multiply(m4, 2, out=o1)
    o1 += m3
    o1 *= -2
    o1 += q
    xp.multiply(m3, 2, out=o2)
    o2 += m4
    o2 *= 2
    o2 += p
    xp.multiply(m4, 8, out=o0)
    o0 += m3
    o0 += m0
    o0 += p
    xp.multiply(m3, -8, out=o3)
    o3 -= m4
    o3 += m5
    o3 += q
