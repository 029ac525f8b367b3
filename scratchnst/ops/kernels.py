"""CUDA kernels for the two row-copy passes of the flat conv path, where chains of CuPy slice copies
were the slow part of a GPU evaluation (docs/benchmarks.md, "GPU").

Each function takes the array module as `xp`, compiles its kernel on first use for the dtype, and
is only ever called next to its xp fallback in ops.conv (`_im2col_flat`, `_copy_out`); the gpu
tests compare the two. RawKernel ignores strides, so every array passed in must be C-contiguous
(the callers' buffers are) and offsets are computed here in elements.
"""

from __future__ import annotations

import functools

import numpy as np

# Set False to run the xp fallbacks on CuPy too (the parity tests and the benchmark do).
USE_KERNELS = True
_BLOCK = 256
_MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y

_SOURCE = r"""
// Both kernels copy `rows` runs of contiguous elements; block row y (striding by gridDim.y, which
// CUDA caps at 65535) takes whole runs, its threads stride along one run.
extern "C" __global__ void im2col_flat_{T}(const {T}* flat, {T}* col, const long long rows,
        const long long flat_stride, const long long start, const long long L, const int KK,
        const int KW, const long long Wp) {
    // Run y is col row (c, p, q) = (y / KK, (y % KK) / KW, (y % KK) % KW): the contiguous slice
    // flat[c, start + p·Wp + q :][: L] (ops.conv._conv_gemm_flat says why it is contiguous).
    for (long long y = blockIdx.y; y < rows; y += gridDim.y) {
        const long long c = y / KK;
        const int pq = (int)(y - c * KK);
        const {T}* src = flat + c * flat_stride + start + (pq / KW) * Wp + (pq % KW);
        {T}* dst = col + y * L;
        for (long long l = (long long)blockIdx.x * blockDim.x + threadIdx.x; l < L; l += (long long)gridDim.x * blockDim.x)
            dst[l] = src[l];
    }
}

extern "C" __global__ void copy_out_{T}(const {T}* out, const {T}* bias, {T}* y, const long long rows,
        const int R, const long long Wp, const long long out_w, const long long plane,
        const long long y_offset) {
    // Run k is output row (f, r) = (k / R, k % R): out[f, r, :out_w] (+ bias[f]) goes to
    // y[f, r0 + r, :] (y_offset = r0·out_w); the last Wp − out_w columns of out are wrap garbage.
    for (long long k = blockIdx.y; k < rows; k += gridDim.y) {
        const long long f = k / R, r = k - f * R;
        const {T}* src = out + k * Wp;
        {T}* dst = y + f * plane + y_offset + r * out_w;
        const {T} add = bias ? bias[f] : ({T})0;
        for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < out_w; j += (long long)gridDim.x * blockDim.x)
            dst[j] = src[j] + add;
    }
}
"""
_CTYPES = {"float32": "float", "float64": "double"}


def usable(xp, dtype) -> bool:
    """Whether the kernels run here: CuPy (and not switched off), and a dtype they are built for."""
    return USE_KERNELS and xp.__name__ == "cupy" and str(dtype) in _CTYPES


@functools.cache
def _kernel(xp, name: str, dtype: str):
    ctype = _CTYPES[dtype]
    return xp.RawKernel(_SOURCE.replace("{T}", ctype), f"{name}_{ctype}")


def _grid(n: int, rows: int) -> tuple[int, int]:
    """Blocks along a run of n elements (capped; threads stride), and block rows (capped by CUDA)."""
    return (max(1, min(-(-n // _BLOCK), 1024)), max(1, min(rows, _MAX_GRID_Y)))


def im2col_flat(xp, flat, col, start: int, Wp: int, KW: int) -> None:
    """col[c, p·KW + q, l] = flat[c, start + p·Wp + q + l]. flat: (C, S), col: (C, KH·KW, L), both contiguous."""
    C, KK, L = col.shape
    _kernel(xp, "im2col_flat", str(col.dtype))(
        _grid(L, C * KK), (_BLOCK,),
        (flat, col, np.int64(C * KK), np.int64(flat.shape[1]), np.int64(start), np.int64(L), np.int32(KK), np.int32(KW), np.int64(Wp)),
    )


def copy_out(xp, out, bias, y, r0: int) -> None:
    """y[f, r0 + r, j] = out[f, r, j] + bias[f] for j < out_w. out: (F, R, Wp), y: (F, out_h, out_w), bias: (F,) or None."""
    F, R, Wp = out.shape
    _, out_h, out_w = y.shape
    _kernel(xp, "copy_out", str(y.dtype))(
        _grid(out_w, F * R), (_BLOCK,),
        (out, bias, y, np.int64(F * R), np.int32(R), np.int64(Wp), np.int64(out_w), np.int64(out_h * out_w), np.int64(r0 * out_w)),
    )
