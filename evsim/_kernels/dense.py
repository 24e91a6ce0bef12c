"""Dense kernels: the ANN executor's (:mod:`evsim.ann`: the direct convolution with its fused epilogue
— BatchNorm, residual add, ReLU/QCFS, pooling —, im2col for the convolutions done as BLAS GEMMs,
and QCFS, BatchNorm and sum pooling as one pass each where nothing can be fused) and the dense path of the simulation
(:func:`events_to_cols`, :func:`events_to_dense`: event lists to GEMM operands).

They are sequential (``nogil``, not ``parallel``): the executor runs several batches at once in
Python threads, each kernel and each single-threaded BLAS call releasing the GIL, so no OpenMP
or BLAS thread pool is ever started beside Numba's (they would spin against each other).
Arithmetic stays in the dtype of the arrays passed in (float32 or float64).
"""
import numba
import numpy as np

from ._flags import JIT
from .ann_simd import vaffine, vqcfs, vrelu
from .simd import vadd, vfma, vload, vstore, vzeros

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


def _direct(x, w, scale, shift, pad_h, pad_w, out_h, out_w, residual, levels, lam, out):
    # Two output rows x _LANES pixels x 8 output channels in registers (16 accumulators: each weight
    # broadcast serves two rows); the kernel's taps (_K_H x _K_W) are compile-time constants (unrolled) for
    # 3x3 kernels, runtime loops for the others (_K_H = _K_W = 0).
    # The epilogue (affine, residual _RES, activation _ACT: compile-time constants) runs on vectors of
    # the two rows of 8 channels (tile), which are then written out, or pooled (windows _POOL_H x
    # _POOL_W with _POOL_H 1 or 2, summed; averaged if _POOL_DIV).  An odd last row pairs with a
    # row of zeros below the input (computed, not written).  No array views and no inlined helpers
    # taking arrays in the loops: each costs reference-count calls, which made the kernel several
    # times slower (measured).
    n_batch, n_channels, height, width = x.shape
    n_blocks = w.shape[0]
    k_h = _K_H if _K_H > 0 else w.shape[2]  # noqa: F821  (a constant: loops unrolled; 0: runtime)
    k_w = _K_W if _K_W > 0 else w.shape[3]  # noqa: F821
    n_out = out.shape[1]
    n_vec = (out_w + _LANES - 1) // _LANES  # noqa: F821
    p_h = height + 2 * pad_h + 1
    n_cv = (width + _LANES - 1) // _LANES  # vectors per input row (copied as vectors)  # noqa: F821
    p_w = max(n_vec * _LANES + k_w - 1, pad_w + n_cv * _LANES)  # noqa: F821
    padded = np.zeros((n_channels, p_h, p_w), x.dtype)
    x_flat = x.reshape(-1)
    n_x = x_flat.shape[0]
    plane = padded.reshape(-1)
    t_w = n_vec * _LANES  # noqa: F821
    tile = np.empty((8, 2, t_w), x.dtype)
    tile_flat = tile.reshape(-1)
    t_k = 2 * t_w
    rbuf = np.zeros(_LANES, x.dtype)  # noqa: F821
    res_flat = residual.reshape(-1)
    n_res = res_flat.shape[0]
    n_rows = (out_h // _POOL_H) * _POOL_H  # the rows pooling windows read (all without pooling)  # noqa: F821
    zero = x.dtype.type(0)
    big_l = x.dtype.type(levels)
    area = x.dtype.type(_POOL_H * _POOL_W)  # noqa: F821
    for b in range(n_batch):
        for c in range(n_channels):
            for y in range(height):
                src = ((b * n_channels + c) * height + y) * width
                dst = (c * p_h + y + pad_h) * p_w + pad_w
                for j0 in range(0, width, _LANES):  # noqa: F821
                    if src + j0 + _LANES <= n_x:  # noqa: F821  (lanes past the row: zeroed below)
                        vstore(plane, dst + j0, vload(x_flat, src + j0, _LANES))  # noqa: F821
                    else:  # the array's last vector: never read past the array
                        for j in range(j0, width):
                            plane[dst + j] = x_flat[src + j]
                for j in range(width, n_cv * _LANES):  # noqa: F821
                    plane[dst + j] = zero
        for blk in range(n_blocks):
            o = blk * 8
            n_k = min(8, n_out - o)
            for oy in range(0, n_rows, 2):
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
                    b0 = a0
                    b1 = a0
                    b2 = a0
                    b3 = a0
                    b4 = a0
                    b5 = a0
                    b6 = a0
                    b7 = a0
                    for c in range(n_channels):
                        for ky in range(k_h):
                            base = (c * p_h + oy + ky) * p_w + x0
                            for kx in range(k_w):
                                xv = vload(plane, base + kx, _LANES)  # noqa: F821
                                yv = vload(plane, base + p_w + kx, _LANES)  # noqa: F821
                                t = w[blk, c, ky, kx, 0]
                                a0 = vfma(xv, t, a0)
                                b0 = vfma(yv, t, b0)
                                t = w[blk, c, ky, kx, 1]
                                a1 = vfma(xv, t, a1)
                                b1 = vfma(yv, t, b1)
                                t = w[blk, c, ky, kx, 2]
                                a2 = vfma(xv, t, a2)
                                b2 = vfma(yv, t, b2)
                                t = w[blk, c, ky, kx, 3]
                                a3 = vfma(xv, t, a3)
                                b3 = vfma(yv, t, b3)
                                t = w[blk, c, ky, kx, 4]
                                a4 = vfma(xv, t, a4)
                                b4 = vfma(yv, t, b4)
                                t = w[blk, c, ky, kx, 5]
                                a5 = vfma(xv, t, a5)
                                b5 = vfma(yv, t, b5)
                                t = w[blk, c, ky, kx, 6]
                                a6 = vfma(xv, t, a6)
                                b6 = vfma(yv, t, b6)
                                t = w[blk, c, ky, kx, 7]
                                a7 = vfma(xv, t, a7)
                                b7 = vfma(yv, t, b7)
                    vstore(tile_flat, 0 * t_k + x0, a0)
                    vstore(tile_flat, 0 * t_k + t_w + x0, b0)
                    vstore(tile_flat, 1 * t_k + x0, a1)
                    vstore(tile_flat, 1 * t_k + t_w + x0, b1)
                    vstore(tile_flat, 2 * t_k + x0, a2)
                    vstore(tile_flat, 2 * t_k + t_w + x0, b2)
                    vstore(tile_flat, 3 * t_k + x0, a3)
                    vstore(tile_flat, 3 * t_k + t_w + x0, b3)
                    vstore(tile_flat, 4 * t_k + x0, a4)
                    vstore(tile_flat, 4 * t_k + t_w + x0, b4)
                    vstore(tile_flat, 5 * t_k + x0, a5)
                    vstore(tile_flat, 5 * t_k + t_w + x0, b5)
                    vstore(tile_flat, 6 * t_k + x0, a6)
                    vstore(tile_flat, 6 * t_k + t_w + x0, b6)
                    vstore(tile_flat, 7 * t_k + x0, a7)
                    vstore(tile_flat, 7 * t_k + t_w + x0, b7)
                    for r in range(min(2, n_rows - oy)):  # epilogue, on vectors
                        for k in range(n_k):
                            t0 = k * t_k + r * t_w + x0
                            acc = vaffine(vload(tile_flat, t0, _LANES), scale[o + k], shift[o + k])  # noqa: F821
                            if _RES:  # noqa: F821
                                r0 = ((b * n_out + o + k) * out_h + oy + r) * out_w + x0  # residual[b, o+k, oy+r, x0]
                                if r0 + _LANES <= n_res:  # noqa: F821  (lanes past the row: unused)
                                    acc = vadd(acc, vload(res_flat, r0, _LANES))  # noqa: F821
                                else:  # the array's last vector: never read past the array
                                    for j in range(min(_LANES, out_w - x0)):  # noqa: F821
                                        rbuf[j] = res_flat[r0 + j]
                                    acc = vadd(acc, vload(rbuf, 0, _LANES))  # noqa: F821
                            if _ACT == 1:  # noqa: F821
                                acc = vrelu(acc)
                            elif _ACT == 2:  # noqa: F821
                                acc = vqcfs(acc, big_l, lam[o + k])
                            vstore(tile_flat, t0, acc)
                if _POOL_H * _POOL_W == 1:  # noqa: F821
                    for r in range(min(2, n_rows - oy)):
                        for k in range(n_k):
                            for j in range(out_w):
                                out[b, o + k, oy + r, j] = tile[k, r, j]
                else:  # rows of windows, each summed in the order of pool_sum
                    for r in range(0, min(2, n_rows - oy), _POOL_H):  # noqa: F821
                        py = (oy + r) // _POOL_H  # noqa: F821
                        for k in range(n_k):
                            for px in range(out_w // _POOL_W):  # noqa: F821
                                acc = zero
                                for ky in range(_POOL_H):  # noqa: F821
                                    for kx in range(_POOL_W):  # noqa: F821
                                        acc += tile[k, r + ky, px * _POOL_W + kx]  # noqa: F821
                                out[b, o + k, py, px] = acc / area if _POOL_DIV else acc  # noqa: F821


_DIRECT: dict = {}


def direct_layout(weight: np.ndarray) -> np.ndarray:
    """(C_out, C_in, kH, kW) -> (ceil(C_out/8), C_in, kH, kW, 8): eight output channels' weights of one
    tap side by side (zeros for the padding channels), the layout :func:`direct_conv` reads."""
    c_out = weight.shape[0]
    n_blocks = -(-c_out // 8)
    padded = np.zeros((n_blocks * 8,) + weight.shape[1:], weight.dtype)
    padded[:c_out] = weight
    return np.ascontiguousarray(padded.reshape(n_blocks, 8, *weight.shape[1:]).transpose(0, 2, 3, 4, 1))


def direct_conv(x, w, scale, shift, pad_h, pad_w, out_h, out_w, out, residual=None, act=0, levels=1, lam=None,
                pool=(1, 1), pool_div=False):
    """Stride-1, dilation-1, groups-1 convolution, NCHW, without im2col, with an optional fused epilogue:
    ``z[b, o] = conv(x[b], w)[o] * scale[o] + shift[o]`` (the bias, or a BatchNorm folded in), then
    ``z += residual`` (a residual add), then the activation ``act`` (0 none, 1 ReLU ``max(z, 0)``,
    2 QCFS with ``levels`` and ``lam``, as :func:`qcfs_forward`), then a sum (``pool_div``: average)
    pooling over non-overlapping ``pool`` windows (stride = window, no padding, as :func:`pool_sum`):
    each in the dtype of ``x``, in the order of the separate passes (the same values).  Pooling windows
    of one or two rows only (``pool[0]`` 1 or 2).

    Sixteen (float32; eight float64) neighbouring output pixels of two rows times eight output
    channels accumulate in sixteen vector registers with fused multiply-adds, reading the input row
    from a zero-padded copy of the sample (:mod:`evsim._kernels.simd`).  Rounded as fused
    multiply-adds do (within float rounding of the NumPy definition); only the ANN executor uses it.
    One compiled kernel per (vector width, kernel size, activation, residual or not, pooling).

    Parameters
    ----------
    x : ndarray, (B, C, H, W) float
    w : ndarray
        :func:`direct_layout` of the (C_out, C, kH, kW) weights, in the dtype of ``x``.
    scale, shift : ndarray, (C_out,) float
    out : ndarray, (B, C_out, out_h // pool[0], out_w // pool[1]) float
        Written.
    residual : ndarray, (B, C_out, out_h, out_w) float, optional
    lam : ndarray, (C_out,) float, optional
        QCFS thresholds (``act`` 2).
    """
    if pool[0] not in (1, 2):
        raise ValueError(f"direct_conv: pooling windows of 1 or 2 rows, not {pool[0]}")
    if not out.flags.c_contiguous or (residual is not None and not residual.flags.c_contiguous):
        raise ValueError("direct_conv: out and residual must be C-contiguous")
    x = np.ascontiguousarray(x)
    lanes = max(1, 64 // x.itemsize)
    if out_w <= lanes // 2:
        lanes //= 2
    k_h, k_w = w.shape[2], w.shape[3]
    if (k_h, k_w) != (3, 3):  # other kernel sizes: one variant with runtime loops (fewer compilations)
        k_h = k_w = 0
    consts = dict(_LANES=lanes, _K_H=k_h, _K_W=k_w, _ACT=int(act), _RES=residual is not None, _POOL_H=int(pool[0]),
                  _POOL_W=int(pool[1]), _POOL_DIV=bool(pool_div) and pool[0] * pool[1] > 1)
    key = tuple(consts.values())
    kernel = _DIRECT.get(key)
    if kernel is None:
        from .factory import _bind
        tag = "_".join(str(int(v)) for v in key)
        kernel = _DIRECT[key] = numba.njit(**JIT)(_bind(_direct, "_direct", f"direct_conv_{tag}", **consts))
    if residual is None:
        residual = np.empty((0, 0, 0, 0), x.dtype)
    if lam is None:
        lam = scale
    kernel(x, w, scale, shift, pad_h, pad_w, out_h, out_w, residual, int(levels), lam, out)
