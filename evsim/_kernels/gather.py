"""Output-stationary convolution: each output block gathers its incoming events, accumulates their
weight vectors in SIMD registers and is stored once.

The scatter kernel (:func:`evsim._kernels.scatter.scatter_conv_rows`) adds every event's weights
into the currents: per synaptic operation one weight load, one current load and one current
store.  Here the work item is a block of output channels of one output pixel: its accumulator
(``W`` lanes, e.g. 64 float32 = four AVX-512 registers, :mod:`evsim._kernels.simd`) starts from
the current (or from the constant current: the pre-load is fused), then every event in the
pixel's receptive field adds its weight vector (one load and one add per SOP), and the block is
stored once.  The events of a work item are located through ``seg``: the start of each source
pixel's events (events are sorted by neuron index, ``(y*W + x)*C + c``).

Exactness: an output element receives its contributions in increasing source-neuron order,
``((init + k1·w1) + k2·w2) + ...`` with ``k·w`` rounded before the addition (no fused
multiply-add) and ``1·w`` not multiplied, i.e. the same float operations in the same order as a
scalar loop over the events in order (the NumPy twin :func:`tests.reference.gather_conv_ref`).
The vector width only decides how many lanes run at once.

Convolutions with groups or dilation use :func:`evsim._kernels.scatter.scatter_conv`.
"""
import numba
import numpy as np

from ._flags import JIT, PJIT
from .factory import _bind
from .simd import vadd, vload, vscale, vstore

__all__ = ["event_segments", "gather_conv", "gather_layout", "chunk_width", "aligned", "CHUNK_BYTES"]

#: bytes of output channels one work item accumulates in registers (256: four AVX-512 registers,
#: eight AVX2 registers); measured, see docs/performance.md
CHUNK_BYTES = 256


def aligned(array: np.ndarray, alignment: int = 64) -> np.ndarray:
    """A C-contiguous copy of ``array`` whose data starts on an ``alignment``-byte boundary (a
    vector load that straddles two cache lines costs two: 20-45 % of this kernel's time with
    NumPy's 16-byte alignment, measured)."""
    array = np.asarray(array)
    raw = np.empty(array.nbytes + alignment, np.uint8)
    offset = (-raw.ctypes.data) % alignment
    out = raw[offset:offset + array.nbytes].view(array.dtype).reshape(array.shape)
    out[...] = array
    return out


@numba.njit(**JIT)
def _segments(idx, n_events, src_c, row):
    """:func:`event_segments` of one item."""
    n_pixels = row.shape[0] - 1
    row[0] = 0
    last = 0
    for e in range(n_events):
        pixel = np.int64(idx[e]) // src_c
        for q in range(last + 1, pixel + 1):
            row[q] = e
        if pixel > last:
            last = pixel
    for q in range(last + 1, n_pixels + 1):
        row[q] = n_events


@numba.njit(**PJIT)
def event_segments(ev_idx, nev, src_c, seg):
    """``seg[i, p]`` = index of the first event of source pixel ``p`` in item ``i`` (events sorted by
    neuron index ``p*src_c + c``); ``seg[i, n_pixels] = nev[i]``.  Pixel ``p``'s events are
    ``[seg[i, p], seg[i, p + 1])``.

    Parameters
    ----------
    ev_idx : ndarray, (items, E) int32
    nev : ndarray, (items,) int64
    src_c : int
        Channels per source pixel.
    seg : ndarray, (items, n_pixels + 1) int64
        Written.
    """
    for i in numba.prange(seg.shape[0]):
        _segments(ev_idx[i], nev[i], src_c, seg[i])


def _gather(ev_idx, ev_cnt, nev, seg, weight, init, per_row, current, src_w, src_c, crop_h, crop_w, pool_h, pool_w,
            grid_h, grid_w, out_h, out_w, out_c, k_h, k_w, stride_h, stride_w, pad_h, pad_w, c_start, n_chunks,
            n_bands):
    n_items = current.shape[0]
    n_init = init.shape[0]
    per_item = n_items * n_bands
    per_chunk = k_h * k_w * src_c * _WIDTH  # noqa: F821
    for work in numba.prange(n_chunks * per_item):
        chunk = work // per_item
        c_lo = c_start + chunk * _WIDTH  # noqa: F821
        w_chunk = c_start * k_h * k_w * src_c + chunk * per_chunk  # this chunk's weights, contiguous
        i = (work % per_item) // n_bands
        band = work % n_bands
        row_lo = band * out_h // n_bands
        row_hi = (band + 1) * out_h // n_bands
        idx = ev_idx[i]
        cnt = ev_cnt[i]
        if seg.shape[0] == n_items:
            sg = seg[i]
        else:  # located here: one parallel region less than event_segments first (batch-1 latency)
            sg = np.empty(seg.shape[1], np.int64)
            _segments(idx, nev[i], src_c, sg)
        cur = current[i]
        start = init[(i // per_row) % n_init]
        for oy in range(row_lo, row_hi):
            gy0 = oy * stride_h - pad_h
            for ox in range(out_w):
                gx0 = ox * stride_w - pad_w
                o = (oy * out_w + ox) * out_c + c_lo
                acc = vload(start, o, _WIDTH)  # noqa: F821
                # source pixels in increasing index: rows (tap, pooled row), then columns
                for ky in range(k_h):
                    gy = gy0 + ky
                    if gy < 0 or gy >= grid_h:
                        continue
                    for ry in range(pool_h if _POOLED else 1):  # noqa: F821
                        sy = gy * pool_h + ry if _POOLED else gy  # noqa: F821
                        if _POOLED and sy >= crop_h:  # noqa: F821
                            break
                        for kx in range(k_w):
                            gx = gx0 + kx
                            if gx < 0 or gx >= grid_w:
                                continue
                            w_tap = w_chunk + (ky * k_w + kx) * src_c * _WIDTH  # noqa: F821
                            for rx in range(pool_w if _POOLED else 1):  # noqa: F821
                                sx = gx * pool_w + rx if _POOLED else gx  # noqa: F821
                                if _POOLED and sx >= crop_w:  # noqa: F821
                                    break
                                p = sy * src_w + sx
                                first = p * src_c
                                for e in range(sg[p], sg[p + 1]):
                                    w = w_tap + (np.int64(idx[e]) - first) * _WIDTH  # noqa: F821
                                    k = cnt[e]
                                    if k == 1:
                                        acc = vadd(acc, vload(weight, w, _WIDTH))  # noqa: F821
                                    else:
                                        acc = vadd(acc, vscale(vload(weight, w, _WIDTH),  # noqa: F821
                                                               weight.dtype.type(k)))
                vstore(cur, o, acc)


_KERNELS: dict = {}


def _kernel(width: int, pooled: bool):
    """The kernel for ``width`` output channels per work item, with or without a composed sum pooling
    (without: the grid is the cropped source, no pooling loops)."""
    key = (width, pooled)
    kernel = _KERNELS.get(key)
    if kernel is None:
        name = f"gather_conv_w{width}{'_pooled' if pooled else ''}"
        kernel = _KERNELS[key] = numba.njit(**PJIT)(_bind(_gather, "_gather", name, _WIDTH=width, _POOLED=pooled))
    return kernel


def gather_layout(weight: np.ndarray) -> np.ndarray:
    """``(k_h, k_w, C_in, C_out)`` weights -> the flat, chunk-major layout :func:`gather_conv` reads:
    for each block of :func:`chunk_width` output channels (the last one possibly narrower), its
    ``(k_h, k_w, C_in, width)`` weights, contiguous and 64-byte aligned.

    A chunk's weights must be contiguous: in the ``(..., C_out)`` layout a 64-channel chunk of a
    512-channel layer is one 256-byte piece in every 2 KB, which uses 1/8 of the L2 cache's sets
    (512-channel layers ran at 5 instead of 12+ GSOP/s, measured).
    """
    out_c = weight.shape[3]
    width = chunk_width(out_c, weight.itemsize)
    parts = [weight[..., lo:lo + width].reshape(-1) for lo in range(0, out_c, width)]
    return aligned(np.concatenate(parts))


def chunk_width(out_c: int, itemsize: int) -> int:
    """Output channels per work item: :data:`CHUNK_BYTES` worth, or all of them if fewer."""
    return min(out_c, max(1, CHUNK_BYTES // itemsize))


def gather_conv(ev_idx, ev_cnt, nev, seg, weight, init, per_row, current, src_w, src_c, crop_h, crop_w,
                pool_h, pool_w, grid_h, grid_w, out_h, out_w, out_c, k_h, k_w, stride_h, stride_w, pad_h, pad_w,
                n_bands):
    """Output-stationary event-driven convolution (groups 1, dilation 1), optional composed sum pooling.

    ``current[i, (oy*out_w + ox)*out_c + o] = init[(i // per_row) % R, same] + sum over the events
    (n, k) of item i in increasing n of k * weight[ky, kx, c, o]`` for source neuron
    ``n = (sy*src_w + sx)*src_c + c`` with ``sy < crop_h``, ``sx < crop_w`` and pooled position
    ``(sy // pool_h, sx // pool_w) = (oy*stride_h - pad_h + ky, ox*stride_w - pad_w + kx)`` inside the
    pooled grid ``(grid_h, grid_w)``.  ``init`` may be ``current`` itself (``per_row = 1``: add to the
    currents) or the constant current ``(1 | B, N)`` (``per_row = T``: the pre-load fused).

    Parameters
    ----------
    ev_idx, ev_cnt, nev : ndarray
        Events of the items, ``(items, E)``, ``(items, E)``, ``(items,)``; sorted by neuron index.
    seg : ndarray, (items | 0, src_h*src_w + 1) int64
        From :func:`event_segments`, or with 0 rows: every work item locates its item's pixels itself
        (what the engine does: one parallel region less per projection).
    weight : ndarray, (k_h*k_w*src_c*out_c,) float
        The projection's (kH, kW, C_in, C_out) weights in :func:`gather_layout`.
    init : ndarray, (R, out_h*out_w*out_c) float
    per_row : int
        Items per row of ``init``.
    current : ndarray, (items, out_h*out_w*out_c) float
        Written (every element).
    n_bands : int
        Bands of output rows per item (work items: chunk x item x band).
    """
    width = chunk_width(out_c, weight.itemsize)
    n_full = out_c // width
    pooled = pool_h > 1 or pool_w > 1
    args = (src_w, src_c, crop_h, crop_w, pool_h, pool_w, grid_h, grid_w, out_h, out_w, out_c, k_h, k_w,
            stride_h, stride_w, pad_h, pad_w)
    if n_full:
        _kernel(width, pooled)(ev_idx, ev_cnt, nev, seg, weight, init, per_row, current, *args, 0, n_full, n_bands)
    tail = out_c - n_full * width
    if tail:  # the last channels when out_c is not a multiple of the width (their own init columns)
        _kernel(tail, pooled)(ev_idx, ev_cnt, nev, seg, weight, init, per_row, current, *args, n_full * width, 1, n_bands)
