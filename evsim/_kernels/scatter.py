"""Synaptic scatter kernels: add the weighted spike events of one work item into its currents.

A work item is one (sample, step) pair; the engine passes ``(B*T, ...)`` views.  Events of item
``i`` are the first ``nev[i]`` entries of ``ev_idx[i]`` (int32 source neuron index, increasing)
and ``ev_cnt[i]`` (signed spike count ``k``); each event adds ``k`` times a row of weights to
``current[i]`` (``(items, N_dst)``, float, updated in place).  The count is converted to the
weight dtype before multiplying, so float32 weights give float32 arithmetic; a count of 1 skips
the multiplication (``1*w == w`` exactly).  Work is proportional to the number of events times
their fan-out; no neurons x neurons matrix is ever formed for convolutions.  Kernels never raise
and do no bounds checks: callers validate their inputs.
"""
import numba
import numpy as np

from ._flags import PJIT


def conv_rows_layout(weight: np.ndarray, stride_h: int, stride_w: int):
    """Re-lay a ``(k_h, k_w, C_in, C_out)`` kernel for :func:`scatter_conv_rows`.

    The kernel is split into stride phases: an event whose padded position ``ty`` has phase
    ``py = ty % stride_h`` reaches output rows ``oy0 - jy`` (``oy0 = ty // stride_h``) through taps
    ``ky = py + stride_h*jy``, ``jy < taps_y[py]``; the same holds for x.  Within a phase the taps
    of one kernel row are stored in *reversed* x order next to each other, ``[r, C_out]`` with
    ``r = taps_x[px] - 1 - jx``, so that one event adds one contiguous ``(taps * C_out)`` block of
    weights to one contiguous block of the HWC output row.

    Returns
    -------
    rows : ndarray, (stride_h*stride_w*kpy*C_in*kpx*C_out,)
        ``rows[py, px, jy, c, r, o]`` flattened, with ``kpy = max(taps_y)``, ``kpx = max(taps_x)``
        (entries past a phase's own tap count are zero and never read).
    taps_y, taps_x : ndarray of int64, (stride_h,) and (stride_w,)
        Taps per phase.
    """
    k_h, k_w, c_in, c_out = weight.shape
    taps_y = np.array([len(range(p, k_h, stride_h)) for p in range(stride_h)], dtype=np.int64)
    taps_x = np.array([len(range(p, k_w, stride_w)) for p in range(stride_w)], dtype=np.int64)
    rows = np.zeros((stride_h, stride_w, max(taps_y.max(), 1), c_in, max(taps_x.max(), 1), c_out), weight.dtype)
    for py in range(stride_h):
        for px in range(stride_w):
            for jy in range(taps_y[py]):
                for jx in range(taps_x[px]):
                    rows[py, px, jy, :, taps_x[px] - 1 - jx, :] = weight[py + stride_h * jy, px + stride_w * jx]
    return rows.reshape(-1), taps_y, taps_x


@numba.njit(**PJIT)
def scatter_conv_rows(ev_idx, ev_cnt, nev, rows, taps_y, taps_x, current,
                      src_w, src_c, crop_h, crop_w, pool_h, pool_w,
                      out_h, out_w, out_c, stride_h, stride_w, pad_h, pad_w, n_bands, c_block):
    """Event-driven 2-D convolution (groups 1, dilation 1) on phase-decomposed weight rows.

    An event at source position ``(y, x, c)`` with ``y < crop_h`` and ``x < crop_w`` is first
    mapped to the pooled grid, ``(y // pool_h, x // pool_w)`` (a sum pooling composed into the
    projection; ``pool = 1`` for none), then scattered as in PyTorch ``conv2d``: it reaches output
    ``(oy, ox)`` through tap ``(ky, kx)`` when ``oy = (y + pad_h - ky) / stride_h`` is an exact
    integer in ``[0, out_h)`` (same for x).  Per kernel row this is one contiguous span of the
    re-laid weights (:func:`conv_rows_layout`) added to one contiguous span of the output row,
    clipped at the borders once.  Events arrive sorted, so the geometry of a pixel is computed
    once for all its events (integer division is the expensive part of an event).

    Work items are (item, band) pairs: band ``k`` of ``n_bands`` writes only output rows
    ``[k*out_h // n_bands, (k+1)*out_h // n_bands)``, so a few large items (batch 1) still
    spread evenly over the threads; every band reads all events of its item.

    Source channels are taken in blocks of ``c_block``: all work items scatter the events of
    one block before the next block starts, so when the weights do not fit in a core's L2 cache
    a block's weights are read from memory once for all items instead of once per item.

    Parameters
    ----------
    ev_idx, ev_cnt : ndarray, (items, E)
        Source events (HWC neuron index ``(y*src_w + x)*src_c + c``, signed count).
    nev : ndarray, (items,) int64
        Number of events per item.
    rows, taps_y, taps_x : ndarray
        Weights and taps per phase from :func:`conv_rows_layout`.
    current : ndarray, (items, out_h*out_w*out_c) float
        Target currents in HWC order, updated in place.
    src_w, src_c : int
        Source width and channels.
    crop_h, crop_w : int
        Source region read by the projection (positions beyond are never read).
    pool_h, pool_w : int
        Sum-pooling factor composed in front of the convolution (1 for none).
    out_h, out_w, out_c : int
        Target shape.
    stride_h, stride_w, pad_h, pad_w : int
        Stride and zero padding of the convolution on the pooled grid.
    n_bands : int
        Bands of output rows per item (1 to out_h).
    c_block : int
        Source channels per block (``src_c`` for one block).
    """
    n_items = current.shape[0]
    kpy = 1
    for p in range(stride_h):
        kpy = max(kpy, taps_y[p])
    kpx = 1
    for p in range(stride_w):
        kpx = max(kpx, taps_x[p])
    per_c = kpx * out_c
    per_jy = src_c * per_c
    per_px = kpy * per_jy
    per_py = stride_w * per_px
    out_row = out_w * out_c
    for c_lo in range(0, src_c, c_block):
        c_hi = c_lo + c_block
        for work in numba.prange(n_items * n_bands):
            i = work // n_bands
            band = work % n_bands
            row_lo = band * out_h // n_bands
            row_hi = (band + 1) * out_h // n_bands
            cur = current[i]
            pixel_start = 0
            pixel_end = -1
            usable = False
            span = 0
            jy_lo = 0
            jy_hi = 0
            w_pixel = 0
            o_pixel = 0
            for e in range(nev[i]):
                n = np.int64(ev_idx[i, e])
                if n >= pixel_end:  # first event of a new pixel: its geometry
                    pixel = n // src_c
                    pixel_start = pixel * src_c
                    pixel_end = pixel_start + src_c
                    y = pixel // src_w
                    x = pixel - y * src_w
                    usable = y < crop_h and x < crop_w
                    if pool_h > 1:
                        y //= pool_h
                    if pool_w > 1:
                        x //= pool_w
                    ty = y + pad_h
                    tx = x + pad_w
                    py = 0
                    oy0 = ty
                    if stride_h > 1:
                        oy0 = ty // stride_h
                        py = ty - oy0 * stride_h
                    px = 0
                    ox0 = tx
                    if stride_w > 1:
                        ox0 = tx // stride_w
                        px = tx - ox0 * stride_w
                    n_y = taps_y[py]
                    n_x = taps_x[px]
                    # taps r in [lo, hi) land on outputs ox = ox0 - (n_x - 1) + r within [0, out_w)
                    lo = max(0, n_x - 1 - ox0)
                    hi = min(n_x, out_w - ox0 + n_x - 1)
                    span = (hi - lo) * out_c
                    # kernel rows jy land on output rows oy = oy0 - jy within this band
                    jy_lo = max(0, oy0 - row_hi + 1)
                    jy_hi = min(n_y, oy0 - row_lo + 1)
                    usable = usable and span > 0 and jy_hi > jy_lo
                    w_pixel = py * per_py + px * per_px + lo * out_c
                    o_pixel = (oy0 * out_w + ox0 - (n_x - 1) + lo) * out_c
                c = n - pixel_start
                if not usable or c < c_lo or c >= c_hi:
                    continue
                count = ev_cnt[i, e]
                w_c = w_pixel + c * per_c
                for jy in range(jy_lo, jy_hi):
                    o = o_pixel - jy * out_row
                    w = w_c + jy * per_jy
                    # 1-D views with non-negative offsets: LLVM vectorises the loop
                    out = cur[o:o + span]
                    wr = rows[w:w + span]
                    if count == 1:
                        for j in range(span):
                            out[j] += wr[j]
                    else:
                        k = rows.dtype.type(count)
                        for j in range(span):
                            out[j] += k * wr[j]


@numba.njit(**PJIT)
def scatter_conv(ev_idx, ev_cnt, nev, weight, current,
                 src_h, src_w, src_c, crop_h, crop_w,
                 out_h, out_w, out_c,
                 k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups):
    """Event-driven 2-D convolution, general form (groups, dilation): PyTorch ``conv2d``.

    An event at source position ``(y, x, c)`` with count ``k`` reaches output ``(oy, ox)``
    through kernel tap ``(ky, kx)`` when ``oy = (y + pad_h - ky*dil_h) / stride_h`` is an exact
    integer in ``[0, out_h)`` (same for x); it then adds ``k * weight[ky, kx, c, :]`` to the
    contiguous output-channel block of its group at ``(oy, ox)``.  Events with ``y >= crop_h`` or
    ``x >= crop_w`` lie outside the region the projection reads and are skipped.
    :func:`scatter_conv_rows` is the fast path for groups 1 and dilation 1.

    Parameters
    ----------
    ev_idx, ev_cnt : ndarray, (items, E)
        Source events (HWC neuron index ``(y*src_w + x)*src_c + c``, signed count).
    nev : ndarray, (items,) int64
        Number of events per item.
    weight : ndarray, (k_h, k_w, src_c, out_c // groups) float
        ``weight[ky, kx, c, j] = w[g*cog + j, c - g*cig, ky, kx]`` for the PyTorch OIHW weight
        ``w``, with ``g = c // cig``, ``cig = src_c // groups``, ``cog = out_c // groups``.
    current : ndarray, (items, out_h*out_w*out_c) float
        Target currents in HWC order, updated in place.
    src_h, src_w, src_c : int
        Source population shape.
    crop_h, crop_w : int
        Height/width of the source region read by the projection (<= src_h, src_w).
    out_h, out_w, out_c : int
        Target population shape.
    k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w : int
        Kernel size, stride, zero padding and dilation.
    groups : int
        Number of channel groups.
    """
    n_items = current.shape[0]
    in_per_group = src_c // groups
    out_per_group = out_c // groups
    for i in numba.prange(n_items):
        for e in range(nev[i]):
            n = ev_idx[i, e]
            c = n % src_c
            pixel = n // src_c
            x = pixel % src_w
            y = pixel // src_w
            if y >= crop_h or x >= crop_w:
                continue
            count = weight.dtype.type(ev_cnt[i, e])
            out_channel_start = (c // in_per_group) * out_per_group
            for ky in range(k_h):
                ty = y + pad_h - ky * dil_h
                if ty < 0:
                    break  # ty decreases with ky: no later tap reaches a valid row
                oy = ty // stride_h
                if oy * stride_h != ty or oy >= out_h:
                    continue
                for kx in range(k_w):
                    tx = x + pad_w - kx * dil_w
                    if tx < 0:
                        break
                    ox = tx // stride_w
                    if ox * stride_w != tx or ox >= out_w:
                        continue
                    start = (oy * out_w + ox) * out_c + out_channel_start
                    # 1-D row views: their indices are provably non-negative, so LLVM
                    # vectorises the axpy (2-D signed indexing keeps a wraparound select)
                    out = current[i, start:start + out_per_group]
                    wrow = weight[ky, kx, c]
                    for j in range(out_per_group):
                        out[j] += count * wrow[j]


@numba.njit(**PJIT)
def scatter_diagonal(ev_idx, ev_cnt, nev, weight, current):
    """Event-driven one-to-one projection (a residual shortcut): ``current[i, n] += k * weight[n]``.

    Parameters
    ----------
    ev_idx, ev_cnt : ndarray, (items, E)
        Source events (neuron index, signed count).
    nev : ndarray, (items,) int64
        Number of events per item.
    weight : ndarray, (N,) float
        Weight of each neuron's one synapse.
    current : ndarray, (items, N) float
        Target currents (same shape as the source), updated in place.
    """
    n_items = current.shape[0]
    for i in numba.prange(n_items):
        out = current[i]
        for e in range(nev[i]):
            n = ev_idx[i, e]
            out[n] += weight.dtype.type(ev_cnt[i, e]) * weight[n]


@numba.njit(**PJIT)
def scatter_dense(ev_idx, ev_cnt, nev, weight, current):
    """Event-driven dense (all-to-all) projection: ``current[i] += k * weight[n]`` per event.

    Parameters
    ----------
    ev_idx, ev_cnt : ndarray, (items, E)
        Source events (neuron index, signed count).
    nev : ndarray, (items,) int64
        Number of events per item.
    weight : ndarray, (N_src, N_dst) float
        Row ``n`` holds the weights from source neuron ``n``.
    current : ndarray, (items, N_dst) float
        Target currents, updated in place.
    """
    n_items, n_dst = current.shape
    for i in numba.prange(n_items):
        out = current[i]
        for e in range(nev[i]):
            count = ev_cnt[i, e]
            wrow = weight[ev_idx[i, e]]  # row views vectorise (see scatter_conv)
            if count == 1:
                for j in range(n_dst):
                    out[j] += wrow[j]
            else:
                k = weight.dtype.type(count)
                for j in range(n_dst):
                    out[j] += k * wrow[j]


@numba.njit(**PJIT)
def scatter_csr(ev_idx, ev_cnt, nev, indptr, indices, data, current):
    """Event-driven sparse projection with a CSR matrix whose rows are source neurons.

    For each event ``(n, k)``: ``current[i, indices[p]] += k * data[p]`` for
    ``p in indptr[n]:indptr[n+1]`` (duplicate column indices are summed, as in scipy).

    Parameters
    ----------
    ev_idx, ev_cnt : ndarray, (items, E)
        Source events (neuron index, signed count).
    nev : ndarray, (items,) int64
        Number of events per item.
    indptr : ndarray, (N_src + 1,) int32 or int64
        Row pointers (scipy ``csr_matrix.indptr``).
    indices : ndarray, (nnz,) int32 or int64
        Target neuron of each stored weight.
    data : ndarray, (nnz,) float
        Stored weights.
    current : ndarray, (items, N_dst) float
        Target currents, updated in place.
    """
    n_items = current.shape[0]
    for i in numba.prange(n_items):
        out = current[i]
        for e in range(nev[i]):
            n = ev_idx[i, e]
            count = data.dtype.type(ev_cnt[i, e])
            for p in range(indptr[n], indptr[n + 1]):
                out[indices[p]] += count * data[p]


@numba.njit(**PJIT)
def fill_rows(current, base):
    """``current[b, t] = base[b % R]`` for every (sample, step): pre-load the constant current.

    Parameters
    ----------
    current : ndarray, (B, T, N) float
        Written.
    base : ndarray, (R, N) float
        ``R = 1`` (the same for every sample) or ``R = B``.
    """
    n_batch, n_steps, n_neurons = current.shape
    n_rows = base.shape[0]
    for item in numba.prange(n_batch * n_steps):
        b = item // n_steps
        t = item % n_steps
        out = current[b, t]
        src = base[b % n_rows]
        for j in range(n_neurons):
            out[j] = src[j]
