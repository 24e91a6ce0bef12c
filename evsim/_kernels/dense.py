"""Kernels of the ANN executor (:mod:`evsim.ann`): im2col for convolutions done as one BLAS GEMM,
and the QCFS activation fused into one pass.

They are sequential (``nogil``, not ``parallel``): the executor runs several batches at once in
Python threads, each kernel and each single-threaded BLAS call releasing the GIL, so no OpenMP
or BLAS thread pool is ever started beside Numba's (they would spin against each other).
Arithmetic stays in the dtype of the arrays passed in (float32 or float64).
"""
import numba
import numpy as np

from ._flags import JIT

__all__ = ["im2col", "qcfs_forward"]


@numba.njit(**JIT)
def im2col(x, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, out_h, out_w, cols):
    """Patches of a zero-padded batch as GEMM columns.

    ``cols[b, (c*k_h + ky)*k_w + kx, oy*out_w + ox] = x[b, c, oy*stride_h - pad_h + ky*dil_h,
    ox*stride_w - pad_w + kx*dil_w]``, 0 outside the input.  Each sample is first copied into a
    zero-bordered plane, so that every column row is a branch-free strided copy (4x faster
    than clipping at the borders in the copy loop, measured).

    Parameters
    ----------
    x : ndarray, (B, C, H, W) float
    cols : ndarray, (B, C*k_h*k_w, out_h*out_w) float
        Written.
    """
    n_batch, n_channels, height, width = x.shape
    padded = np.zeros((n_channels, height + 2 * pad_h, width + 2 * pad_w), x.dtype)
    for b in range(n_batch):
        for c in range(n_channels):
            for y in range(height):
                src = x[b, c, y]
                dst = padded[c, y + pad_h, pad_w:pad_w + width]
                for j in range(width):
                    dst[j] = src[j]
        cb = cols[b]
        for c in range(n_channels):
            plane = padded[c]
            for ky in range(k_h):
                for kx in range(k_w):
                    row = cb[(c * k_h + ky) * k_w + kx]
                    x0 = kx * dil_w
                    for oy in range(out_h):
                        src = plane[oy * stride_h + ky * dil_h]
                        o = oy * out_w
                        if stride_w == 1:
                            for ox in range(out_w):
                                row[o + ox] = src[x0 + ox]
                        else:
                            for ox in range(out_w):
                                row[o + ox] = src[x0 + ox * stride_w]


@numba.njit(**JIT)
def qcfs_forward(z, lam, levels, out):
    """QCFS ``λ·clip(floor(z·L/λ + 1/2)/L, 0, 1)`` in the dtype of ``z``, the same operations in the
    same order as the NumPy expression of :func:`evsim.ann.qcfs` (so the same values).

    Parameters
    ----------
    z : ndarray, (B, C, S) float
        Pre-activations, channels on axis 1 (S: pixels, 1 for a flat layer).
    lam : ndarray, (C,) float
        λ per channel (a scalar λ repeated), in the dtype of ``z``.
    levels : int
        L.
    out : ndarray, (B, C, S) float
        Written (may be ``z``).
    """
    n_batch, n_channels, n_pix = z.shape
    big_l = z.dtype.type(levels)
    half = z.dtype.type(0.5)
    zero = z.dtype.type(0)
    one = z.dtype.type(1)
    for b in range(n_batch):
        for c in range(n_channels):
            lc = lam[c]
            src = z[b, c]
            dst = out[b, c]
            for j in range(n_pix):
                q = np.floor(src[j] * big_l / lc + half) / big_l
                if q < zero:
                    q = zero
                elif q > one:
                    q = one
                dst[j] = lc * q


@numba.njit(**JIT)
def pool_sum(x, k_h, k_w, stride_h, stride_w, pad_h, pad_w, out):
    """Sum over pooling windows, zero padding: ``out[b, c, oy, ox] = sum x[b, c, oy*s_h - p_h + ky,
    ox*s_w - p_w + kx]`` over the window's positions inside the input (row-major order).

    Parameters
    ----------
    x : ndarray, (B, C, H, W) float
    out : ndarray, (B, C, out_h, out_w) float
        Written.
    """
    n_batch, n_channels, height, width = x.shape
    out_h, out_w = out.shape[2], out.shape[3]
    for b in range(n_batch):
        for c in range(n_channels):
            src = x[b, c]
            dst = out[b, c]
            for oy in range(out_h):
                for ox in range(out_w):
                    s = dst.dtype.type(0)
                    for ky in range(k_h):
                        iy = oy * stride_h - pad_h + ky
                        if iy < 0 or iy >= height:
                            continue
                        for kx in range(k_w):
                            ix = ox * stride_w - pad_w + kx
                            if 0 <= ix < width:
                                s += src[iy, ix]
                    dst[oy, ox] = s


@numba.njit(**JIT)
def channel_affine(x, scale, shift, out):
    """``out[b, c, j] = x[b, c, j] * scale[c] + shift[c]`` (a multiplication, then an addition: no
    fused multiply-add), in the dtype of the arrays.

    Parameters
    ----------
    x, out : ndarray, (B, C, S) float
    scale, shift : ndarray, (C,) float
    """
    n_batch, n_channels, n_pix = x.shape
    for b in range(n_batch):
        for c in range(n_channels):
            a = scale[c]
            d = shift[c]
            src = x[b, c]
            dst = out[b, c]
            for j in range(n_pix):
                dst[j] = src[j] * a + d
