"""Dense kernels: the ANN executor's (:mod:`evsim.ann`: im2col for convolutions done as BLAS GEMMs,
QCFS, BatchNorm and sum pooling fused into one pass each) and the dense path of the simulation
(:func:`events_to_cols`, :func:`events_to_dense`: event lists to GEMM operands).

They are sequential (``nogil``, not ``parallel``): the executor runs several batches at once in
Python threads, each kernel and each single-threaded BLAS call releasing the GIL, so no OpenMP
or BLAS thread pool is ever started beside Numba's (they would spin against each other).
Arithmetic stays in the dtype of the arrays passed in (float32 or float64).
"""
import numba
import numpy as np

from ._flags import JIT
from .simd import vfma, vload, vstore, vzeros

__all__ = ["im2col", "qcfs_forward", "pool_sum", "channel_affine", "events_to_cols", "events_to_dense", "direct_conv",
           "direct_layout"]


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


@numba.njit(**JIT)
def events_to_cols(ev_idx, ev_cnt, nev, first, cols, src_w, src_c, crop_h, crop_w, pool_h, pool_w, grid_h, grid_w,
                   out_h, out_w, k_h, k_w, stride_h, stride_w, pad_h, pad_w):
    """The im2col matrix of a convolution straight from event lists (the dense path of a projection).

    For items ``first .. first + len(cols) - 1``: ``cols[j, oy*out_w + ox, (ky*k_w + kx)*src_c + c]`` =
    the (sum-pooled) count of channel ``c`` at pooled position ``(oy*stride_h - pad_h + ky,
    ox*stride_w - pad_w + kx)``, so that ``cols[j] @ weight.reshape(k_h*k_w*src_c, out_c)`` is the
    item's convolution in the engine's (pixel, channel) layout.  Zeroed first; every event adds its
    count to the entries of the outputs it reaches.

    Parameters
    ----------
    ev_idx, ev_cnt, nev : ndarray
        Events of all items (sorted neuron indices, counts, numbers).
    first : int
        First item.
    cols : ndarray, (n, out_h*out_w, k_h*k_w*src_c) float
        Written.
    """
    zero = cols.dtype.type(0)
    for j in range(cols.shape[0]):
        i = first + j
        block = cols[j]
        for r in range(block.shape[0]):
            row = block[r]
            for q in range(row.shape[0]):
                row[q] = zero
        for e in range(nev[i]):
            n = np.int64(ev_idx[i, e])
            c = n % src_c
            pixel = n // src_c
            sy = pixel // src_w
            sx = pixel - sy * src_w
            if sy >= crop_h or sx >= crop_w:
                continue
            gy = sy // pool_h
            gx = sx // pool_w
            k = cols.dtype.type(ev_cnt[i, e])
            for ky in range(k_h):
                ty = gy + pad_h - ky
                if ty < 0:
                    break
                oy = ty // stride_h
                if oy * stride_h != ty or oy >= out_h:
                    continue
                for kx in range(k_w):
                    tx = gx + pad_w - kx
                    if tx < 0:
                        break
                    ox = tx // stride_w
                    if ox * stride_w != tx or ox >= out_w:
                        continue
                    block[oy * out_w + ox, (ky * k_w + kx) * src_c + c] += k


@numba.njit(**JIT)
def events_to_dense(ev_idx, ev_cnt, nev, first, out):
    """``out[j, n]`` = count of neuron ``n`` in item ``first + j`` (0 where it has no event).

    Parameters
    ----------
    out : ndarray, (n, N) float
        Written.
    """
    zero = out.dtype.type(0)
    for j in range(out.shape[0]):
        i = first + j
        row = out[j]
        for q in range(row.shape[0]):
            row[q] = zero
        for e in range(nev[i]):
            row[ev_idx[i, e]] = out.dtype.type(ev_cnt[i, e])


def _direct(x, w, scale, shift, pad_h, pad_w, out_h, out_w, out):
    # one output row segment of _LANES pixels x 8 output channels in registers (8 accumulators)
    n_batch, n_channels, height, width = x.shape
    n_blocks, _, k_h, k_w, _ = w.shape
    n_out = out.shape[1]
    n_vec = (out_w + _LANES - 1) // _LANES  # noqa: F821
    padded = np.zeros((n_channels, height + 2 * pad_h, n_vec * _LANES + k_w - 1), x.dtype)  # noqa: F821
    row = np.empty(n_vec * _LANES, x.dtype)  # noqa: F821
    zero = x.dtype.type(0)
    for b in range(n_batch):
        for c in range(n_channels):
            for y in range(height):
                src = x[b, c, y]
                dst = padded[c, y + pad_h, pad_w:pad_w + width]
                for j in range(width):
                    dst[j] = src[j]
        for blk in range(n_blocks):
            wb = w[blk]
            for oy in range(out_h):
                for v in range(n_vec):
                    x0 = v * _LANES  # noqa: F821
                    a0 = vzeros(zero, _LANES)  # noqa: F821
                    a1 = a0
                    a2 = a0
                    a3 = a0
                    a4 = a0
                    a5 = a0
                    a6 = a0
                    a7 = a0
                    for c in range(n_channels):
                        for ky in range(k_h):
                            plane_row = padded[c, oy + ky]
                            for kx in range(k_w):
                                xv = vload(plane_row, x0 + kx, _LANES)  # noqa: F821
                                t = wb[c, ky, kx]
                                a0 = vfma(xv, t[0], a0)
                                a1 = vfma(xv, t[1], a1)
                                a2 = vfma(xv, t[2], a2)
                                a3 = vfma(xv, t[3], a3)
                                a4 = vfma(xv, t[4], a4)
                                a5 = vfma(xv, t[5], a5)
                                a6 = vfma(xv, t[6], a6)
                                a7 = vfma(xv, t[7], a7)
                    o = blk * 8
                    n_valid = min(_LANES, out_w - x0)  # noqa: F821
                    _emit(a0, row, out, b, o, oy, x0, n_valid, n_out, scale, shift)
                    _emit(a1, row, out, b, o + 1, oy, x0, n_valid, n_out, scale, shift)
                    _emit(a2, row, out, b, o + 2, oy, x0, n_valid, n_out, scale, shift)
                    _emit(a3, row, out, b, o + 3, oy, x0, n_valid, n_out, scale, shift)
                    _emit(a4, row, out, b, o + 4, oy, x0, n_valid, n_out, scale, shift)
                    _emit(a5, row, out, b, o + 5, oy, x0, n_valid, n_out, scale, shift)
                    _emit(a6, row, out, b, o + 6, oy, x0, n_valid, n_out, scale, shift)
                    _emit(a7, row, out, b, o + 7, oy, x0, n_valid, n_out, scale, shift)


@numba.njit(inline="always", **JIT)
def _emit(acc, row, out, b, o, oy, x0, n_valid, n_out, scale, shift):
    """``out[b, o, oy, x0:x0 + n_valid] = acc * scale[o] + shift[o]`` (skipped for padding channels)."""
    if o < n_out:
        vstore(row, 0, acc)
        dst = out[b, o, oy]
        s = scale[o]
        t = shift[o]
        for j in range(n_valid):
            dst[x0 + j] = row[j] * s + t


_DIRECT: dict = {}


def direct_layout(weight: np.ndarray) -> np.ndarray:
    """(C_out, C_in, kH, kW) -> (ceil(C_out/8), C_in, kH, kW, 8): eight output channels' weights of one
    tap side by side (zeros for the padding channels), the layout :func:`direct_conv` reads."""
    c_out = weight.shape[0]
    n_blocks = -(-c_out // 8)
    padded = np.zeros((n_blocks * 8,) + weight.shape[1:], weight.dtype)
    padded[:c_out] = weight
    return np.ascontiguousarray(padded.reshape(n_blocks, 8, *weight.shape[1:]).transpose(0, 2, 3, 4, 1))


def direct_conv(x, w, scale, shift, pad_h, pad_w, out_h, out_w, out):
    """Stride-1, dilation-1, groups-1 convolution, NCHW, without im2col: ``out[b, o] = conv(x[b], w)[o] *
    scale[o] + shift[o]`` (the bias, or a BatchNorm folded in).

    Sixteen (float32; eight float64) neighbouring output pixels of one row times eight output
    channels accumulate in eight vector registers with fused multiply-adds, reading the input row
    from a zero-padded copy of the sample (:mod:`evsim._kernels.simd`).  Rounded as fused
    multiply-adds do (within float rounding of the NumPy definition); only the ANN executor uses it.

    Parameters
    ----------
    x : ndarray, (B, C, H, W) float
    w : ndarray
        :func:`direct_layout` of the (C_out, C, kH, kW) weights, in the dtype of ``x``.
    scale, shift : ndarray, (C_out,) float
    out : ndarray, (B, C_out, out_h, out_w) float
        Written.
    """
    lanes = max(1, 64 // x.itemsize)
    if out_w <= lanes // 2:
        lanes //= 2
    kernel = _DIRECT.get(lanes)
    if kernel is None:
        from .factory import _bind
        kernel = _DIRECT[lanes] = numba.njit(**JIT)(_bind(_direct, "_direct", f"direct_conv_l{lanes}", _LANES=lanes))
    kernel(x, w, scale, shift, pad_h, pad_w, out_h, out_w, out)
