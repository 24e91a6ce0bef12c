"""Slow, obviously-correct NumPy reference implementations used by the tests.

Everything in this file favours clarity over speed: dense arrays, plain loops or simple
vectorised expressions, no numba, and no code shared with the ``evsim`` package. The tests check
the fast implementations against these references.

Conventions shared with the engine: a population of shape (C, H, W) is stored in HWC order,
neuron index ``n = (y*W + x)*C + c``; batch arrays are (B, N), layer-major neuron arrays
(B, T, N). Functions here never modify their inputs; they return new arrays.
"""
import numpy as np

# ============================================================================================
# Kernel twins
# ============================================================================================
# One twin per kernel of ``evsim._kernels``. Events are represented densely: ``counts`` is an
# array (..., N) of signed spike counts (0 = no event) whose leading axes are the kernel's
# items, e.g. (B, T) for neuron outputs or (B*T,) for a scatter. ``events_to_dense`` and
# ``dense_to_events`` convert between that and the kernels' event lists. Arithmetic is done in
# the dtype of the float arrays passed in, exactly as the kernels must do it.

# --- event lists ----------------------------------------------------------------------------

def _check_segment(idx, cnt, low, high):
    """One item's (or one part's) events: strictly increasing indices in [low, high), no 0."""
    assert np.all(np.diff(idx) > 0), "event indices must be strictly increasing"
    assert idx.size == 0 or (idx[0] >= low and idx[-1] < high), "event index out of range"
    assert np.all(cnt != 0), "event counts must be non-zero"


def events_to_dense(ev_idx, ev_cnt, nev, n_neurons):
    """Event lists ``(..., E)`` with ``nev`` ``(...)`` -> dense int64 counts ``(..., n_neurons)``.

    Checks the event-list invariants of every item (see ``_check_segment``).
    """
    nev = np.asarray(nev)
    idx_items = np.asarray(ev_idx).reshape(nev.size, np.shape(ev_idx)[-1])
    cnt_items = np.asarray(ev_cnt).reshape(nev.size, np.shape(ev_cnt)[-1])
    counts = np.zeros((nev.size, n_neurons), dtype=np.int64)
    for i, m in enumerate(nev.reshape(-1)):
        assert 0 <= m <= idx_items.shape[1], "event count out of range"
        idx, cnt = idx_items[i, :m], cnt_items[i, :m]
        _check_segment(idx, cnt, 0, n_neurons)
        counts[i, idx] = cnt
    return counts.reshape(nev.shape + (n_neurons,))


def part_events_to_dense(ev_idx, ev_cnt, nev_parts, bounds, n_neurons):
    """Unjoined neuron-kernel output -> dense int64 counts (B, T, n_neurons).

    Part ``k`` of item (b, t) holds ``nev_parts[b, t, k]`` events starting at slot ``bounds[k]``,
    all of them neurons of its own range ``[bounds[k], bounds[k+1])``.
    """
    n_batch, n_steps, n_parts = nev_parts.shape
    counts = np.zeros((n_batch, n_steps, n_neurons), dtype=np.int64)
    for b in range(n_batch):
        for t in range(n_steps):
            for k in range(n_parts):
                lo, hi, m = bounds[k], bounds[k + 1], nev_parts[b, t, k]
                assert 0 <= m <= hi - lo, "more events than neurons in a part"
                idx, cnt = ev_idx[b, t, lo:lo + m], ev_cnt[b, t, lo:lo + m]
                _check_segment(idx, cnt, lo, hi)
                counts[b, t, idx] = cnt
    return counts


def dense_to_events(counts, capacity=None, count_dtype=None, every_neuron=False):
    """Dense counts ``(..., N)`` -> ``(ev_idx, ev_cnt, nev)`` event lists with room for ``capacity``.

    ``every_neuron`` makes an event of every neuron, zeros included: the engine's analog input
    (one float payload per input neuron). Unused slots are poisoned with the event (0, 1), so a
    kernel that reads past ``nev`` changes its result.
    """
    counts = np.asarray(counts)
    lead, n_neurons = counts.shape[:-1], counts.shape[-1]
    capacity = n_neurons if capacity is None else capacity
    flat = counts.reshape(-1, n_neurons)
    ev_idx = np.zeros((flat.shape[0], capacity), dtype=np.int32)
    ev_cnt = np.ones((flat.shape[0], capacity), dtype=count_dtype or counts.dtype)
    nev = np.zeros(flat.shape[0], dtype=np.int64)
    for i, row in enumerate(flat):
        idx = np.arange(n_neurons) if every_neuron else np.flatnonzero(row)
        ev_idx[i, : idx.size] = idx
        ev_cnt[i, : idx.size] = row[idx]
        nev[i] = idx.size
    return ev_idx.reshape(lead + (capacity,)), ev_cnt.reshape(lead + (capacity,)), nev.reshape(lead)


def join_parts_ref(ev_idx, ev_cnt, nev_parts, bounds):
    """Concatenate the part segments of every (b, t) in part order.

    Returns ``(ev_idx, ev_cnt, nev)``: only the first ``nev[b, t]`` entries are meaningful.
    """
    n_batch, n_steps, n_parts = nev_parts.shape
    out_idx, out_cnt = np.zeros_like(ev_idx), np.zeros_like(ev_cnt)
    nev = np.zeros((n_batch, n_steps), dtype=np.int64)
    for b in range(n_batch):
        for t in range(n_steps):
            segments = [slice(bounds[k], bounds[k] + nev_parts[b, t, k]) for k in range(n_parts)]
            idx = np.concatenate([ev_idx[b, t, s] for s in segments])
            cnt = np.concatenate([ev_cnt[b, t, s] for s in segments])
            out_idx[b, t, : idx.size], out_cnt[b, t, : idx.size], nev[b, t] = idx, cnt, idx.size
    return out_idx, out_cnt, nev


# --- neurons (layer-major: all T steps of one population) -----------------------------------

def per_neuron(channel_values, n_neurons):
    """Expand a per-channel (C,) array to (N,) in HWC order: neuron n has channel n % C."""
    channel_values = np.asarray(channel_values)
    return channel_values[np.arange(n_neurons) % channel_values.shape[0]]


def if_run_ref(current, v0, theta, reset_zero):
    """IF neurons over T steps. ``current`` (B, T, N), ``v0`` (N,), ``theta`` (C,).

    Returns ``(counts (B, T, N) int64, v(T) (B, N))``.
    """
    n_batch, n_steps, n_neurons = current.shape
    theta_n = per_neuron(theta, n_neurons)
    v = np.tile(v0, (n_batch, 1))
    counts = np.zeros(current.shape, dtype=np.int64)
    for t in range(n_steps):
        h = v + current[:, t]
        spike = h >= theta_n
        v = np.where(spike, np.zeros_like(h) if reset_zero else h - theta_n, h)
        counts[:, t] = spike
    return counts, v


def lif_run_ref(current, v0, theta, beta):
    """Leaky IF over T steps (the plugin example of docs/usage.md): ``h = beta*v + x``; spike when
    ``h >= θ``; ``v = h - s·θ``.  Arithmetic in the dtype of ``current``."""
    n_batch, n_steps, n_neurons = current.shape
    theta_n = per_neuron(theta, n_neurons)
    beta = current.dtype.type(beta)
    v = np.tile(v0, (n_batch, 1))
    counts = np.zeros(current.shape, dtype=np.int64)
    for t in range(n_steps):
        h = beta * v + current[:, t]
        spike = h >= theta_n
        v = h - spike.astype(current.dtype) * theta_n
        counts[:, t] = spike
    return counts, v


def gn_run_ref(current, v0, theta_unit, tau):
    """Group Neurons over T steps: count the members i = 1..tau with ``h >= i*theta_unit`` literally.

    Member thresholds ``i*theta_unit`` are products in the array dtype. Returns
    ``(counts (B, T, N) int64, v(T) (B, N))``.
    """
    n_batch, n_steps, n_neurons = current.shape
    dtype = current.dtype
    unit_n = per_neuron(theta_unit, n_neurons)
    member_thresholds = np.arange(1, tau + 1).astype(dtype)[:, None, None] * unit_n[None, None, :]
    v = np.tile(v0, (n_batch, 1))
    counts = np.zeros(current.shape, dtype=np.int64)
    for t in range(n_steps):
        h = v + current[:, t]
        s = (h[None] >= member_thresholds).sum(axis=0)
        v = np.where(s > 0, h - s.astype(dtype) * unit_n, h)
        counts[:, t] = s
    return counts, v


def signed_if_run_ref(current, v0, theta, neg_threshold):
    """Fast-SNN signed IF neurons over T steps, net count N(0) = 0.

    Returns ``(counts (B, T, N) int64 in {-1, 0, 1}, v(T) (B, N))``.
    """
    n_batch, n_steps, n_neurons = current.shape
    theta_n = per_neuron(theta, n_neurons)
    negative_threshold = current.dtype.type(neg_threshold)
    v = np.tile(v0, (n_batch, 1))
    net = np.zeros((n_batch, n_neurons), dtype=np.int64)
    counts = np.zeros(current.shape, dtype=np.int64)
    for t in range(n_steps):
        h = v + current[:, t]
        positive = h >= theta_n
        negative = ~positive & (h <= negative_threshold) & (net > 0)
        v = np.where(positive, h - theta_n, np.where(negative, h + theta_n, h))
        counts[:, t] = positive.astype(np.int64) - negative.astype(np.int64)
        net += counts[:, t]
    return counts, v


def neuron_stats_ref(counts, fanout, bounds):
    """Per (b, t, part): [spikes = sum |k|, events, SOPs = sum |k| * fanout[n]] -> (B, T, P, 3)."""
    n_parts = len(bounds) - 1
    magnitude = np.abs(counts)
    stats = np.zeros(counts.shape[:2] + (n_parts, 3), dtype=np.int64)
    for k in range(n_parts):
        part = slice(bounds[k], bounds[k + 1])
        stats[:, :, k, 0] = magnitude[:, :, part].sum(axis=2)
        stats[:, :, k, 1] = (counts[:, :, part] != 0).sum(axis=2)
        stats[:, :, k, 2] = magnitude[:, :, part] @ fanout[part]
    return stats


def fill_rows_ref(base, n_batch, n_steps):
    """(B, T, N) currents with row ``base[b % R]`` at every step of sample b."""
    rows = base[np.arange(n_batch) % base.shape[0]]
    return np.repeat(rows[:, None, :], n_steps, axis=1)


# --- scatter (items: one row of counts per (sample, step)) ----------------------------------

def conv_weight_to_kernel_layout(weight_oihw, groups):
    """PyTorch OIHW conv weight -> (k_h, k_w, src_c, out_c // groups) scatter layout (loops)."""
    out_c, in_per_group, k_h, k_w = weight_oihw.shape
    out_per_group = out_c // groups
    src_c = in_per_group * groups
    weight = np.zeros((k_h, k_w, src_c, out_per_group), dtype=weight_oihw.dtype)
    for ky in range(k_h):
        for kx in range(k_w):
            for c in range(src_c):
                g = c // in_per_group
                for j in range(out_per_group):
                    weight[ky, kx, c, j] = weight_oihw[g * out_per_group + j, c - g * in_per_group, ky, kx]
    return weight


def scatter_conv_ref(counts, weight, current, src_h, src_w, src_c, crop_h, crop_w,
                     out_h, out_w, out_c, k_h, k_w, stride_h, stride_w, pad_h, pad_w,
                     dil_h, dil_w, groups):
    """Scatter-form convolution, literally as specified, with plain loops over the events.

    ``counts`` (items, N_src) may hold integer counts or float payloads.
    """
    current = current.copy()
    dtype = weight.dtype
    in_per_group = src_c // groups
    out_per_group = out_c // groups
    for b in range(counts.shape[0]):
        for n in np.flatnonzero(counts[b]):
            k = dtype.type(counts[b, n])
            y, x, c = n // (src_w * src_c), (n // src_c) % src_w, n % src_c
            if y >= crop_h or x >= crop_w:
                continue
            g = c // in_per_group
            for ky in range(k_h):
                for kx in range(k_w):
                    ty = y + pad_h - ky * dil_h
                    tx = x + pad_w - kx * dil_w
                    if ty % stride_h or tx % stride_w:
                        continue
                    oy, ox = ty // stride_h, tx // stride_w
                    if not (0 <= oy < out_h and 0 <= ox < out_w):
                        continue
                    start = (oy * out_w + ox) * out_c + g * out_per_group
                    current[b, start:start + out_per_group] += k * weight[ky, kx, c, :]
    return current


def conv2d_direct_ref(counts, weight_oihw, src_h, src_w, src_c, crop_h, crop_w, out_h, out_w,
                      stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups):
    """Direct (gather) convolution in float64: PyTorch ``conv2d`` of the cropped input.

    Independent of the scatter formulation: loops over output positions and kernel taps and
    reads the zero-padded input. Input ``counts`` (B, src_h*src_w*src_c) HWC; returns
    (B, out_h*out_w*out_c) HWC float64.
    """
    n_batch = counts.shape[0]
    out_c, in_per_group, k_h, k_w = weight_oihw.shape
    out_per_group = out_c // groups
    image = counts.astype(np.float64).reshape(n_batch, src_h, src_w, src_c)[:, :crop_h, :crop_w, :]
    w = weight_oihw.astype(np.float64)
    out = np.zeros((n_batch, out_h, out_w, out_c))
    for oy in range(out_h):
        for ox in range(out_w):
            for ky in range(k_h):
                for kx in range(k_w):
                    iy = oy * stride_h - pad_h + ky * dil_h
                    ix = ox * stride_w - pad_w + kx * dil_w
                    if not (0 <= iy < crop_h and 0 <= ix < crop_w):
                        continue  # zero padding
                    for g in range(groups):
                        patch = image[:, iy, ix, g * in_per_group:(g + 1) * in_per_group]
                        taps = w[g * out_per_group:(g + 1) * out_per_group, :, ky, kx]
                        out[:, oy, ox, g * out_per_group:(g + 1) * out_per_group] += patch @ taps.T
    return out.reshape(n_batch, -1)


def sum_pool_ref(counts, src_h, src_w, src_c, crop_h, crop_w, pool_h, pool_w):
    """Sum the cropped source over non-overlapping pool_h x pool_w blocks (HWC, loops).

    Blocks cut by the crop edge sum what they hold, so the pooled grid has
    ``ceil(crop/pool)`` positions per axis. Returns ``(pooled (items, gh*gw*C), gh, gw)``,
    summed in int64 (integer counts) or float64 (float payloads).
    """
    n_items = counts.shape[0]
    grid_h, grid_w = -(-crop_h // pool_h), -(-crop_w // pool_w)
    acc = np.int64 if np.issubdtype(counts.dtype, np.integer) else np.float64
    image = counts.reshape(n_items, src_h, src_w, src_c).astype(acc)
    pooled = np.zeros((n_items, grid_h, grid_w, src_c), dtype=acc)
    for y in range(crop_h):
        for x in range(crop_w):
            pooled[:, y // pool_h, x // pool_w, :] += image[:, y, x, :]
    return pooled.reshape(n_items, -1), grid_h, grid_w


def scatter_diagonal_ref(counts, weight, current):
    """One-to-one projection: ``current + counts * weight`` elementwise (counts in the weight dtype)."""
    return current + counts.astype(weight.dtype) * weight


def scatter_dense_ref(counts, weight, current):
    """Dense projection: ``current + counts @ weight`` (counts converted to the weight dtype)."""
    return current + counts.astype(weight.dtype) @ weight


def csr_to_dense(indptr, indices, data, n_dst):
    """CSR (rows = sources) -> dense (N_src, n_dst) matrix; duplicate entries are summed."""
    dense = np.zeros((indptr.shape[0] - 1, n_dst), dtype=data.dtype)
    for row in range(indptr.shape[0] - 1):
        for p in range(indptr[row], indptr[row + 1]):
            dense[row, indices[p]] += data[p]
    return dense


def scatter_csr_ref(counts, indptr, indices, data, current):
    """Sparse projection through the dense equivalent of the CSR matrix."""
    return scatter_dense_ref(counts, csr_to_dense(indptr, indices, data, current.shape[1]), current)


# --- max-pooling gate and statistics --------------------------------------------------------

def maxpool_gate_ref(counts, cum, src_h, src_w, src_c, out_h, out_w, k_h, k_w,
                     stride_h, stride_w, pad_h, pad_w):
    """Gated spiking max pooling in gather form over T steps. Returns ``(out_counts, cum_new)``.

    ``counts`` (B, T, N_src); per step ``cum += counts[:, t]``, then every output window takes
    this step's count at its winner, the in-bounds position with the largest ``cum``
    (``np.argmax``: first in row-major order on ties). ``out_counts`` is (B, T, N_out) int64.
    """
    n_batch, n_steps, _ = counts.shape
    cum = cum.astype(np.int64)
    out = np.zeros((n_batch, n_steps, out_h * out_w * src_c), dtype=np.int64)
    for t in range(n_steps):
        cum = cum + counts[:, t]
        for b in range(n_batch):
            for oy in range(out_h):
                for ox in range(out_w):
                    for c in range(src_c):
                        members = [
                            (y * src_w + x) * src_c + c
                            for y in range(oy * stride_h - pad_h, oy * stride_h - pad_h + k_h)
                            for x in range(ox * stride_w - pad_w, ox * stride_w - pad_w + k_w)
                            if 0 <= y < src_h and 0 <= x < src_w
                        ]
                        if members:
                            winner = members[int(np.argmax(cum[b, members]))]
                            out[b, t, (oy * out_w + ox) * src_c + c] = counts[b, t, winner]
    return out, cum


def event_stats_ref(counts, fanout, out):
    """``out + [spikes, events, SOPs]`` per item (SOPs = sum |k| * fanout[n])."""
    magnitude = np.abs(counts.astype(np.int64))
    step = np.stack([magnitude.sum(axis=1), (counts != 0).sum(axis=1), magnitude @ fanout], axis=1)
    return out + step


def accumulate_counts_ref(counts, totals):
    """``totals + sum over steps of counts``: (B, T, N) counts, (B, N) totals."""
    return totals + counts.astype(np.int64).sum(axis=1)


# ============================================================================================
# Whole-network reference simulator
# ============================================================================================
# A dense, step-by-step simulation of an SNN graph written from methods.md alone: every node is
# re-evaluated on the full payload maps at every time-step with plain loops, BatchNorm is applied
# as written (not folded), nothing is composed. It shares no code with evsim's compiler or engine.

def _conv_naive(x, weight, bias, stride, padding, dilation, groups):
    """Direct 2-D cross-correlation with zero padding: loops over output pixels and taps."""
    b, c, h, w = x.shape
    c_out, cig, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((b, c_out, ho, wo))
    cog = c_out // groups
    for co in range(c_out):
        g = co // cog
        for oy in range(ho):
            for ox in range(wo):
                acc = np.zeros(b)
                for ci in range(cig):
                    for ky in range(kh):
                        for kx in range(kw):
                            y, xx = oy * sh - ph + ky * dh, ox * sw - pw + kx * dw
                            if 0 <= y < h and 0 <= xx < w:
                                acc += weight[co, ci, ky, kx] * x[:, g * cig + ci, y, xx]
                out[:, co, oy, ox] = acc
    if bias is not None:
        out += bias[None, :, None, None]
    return out


def _pool_windows(h, w, kernel, stride, padding):
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    for oy in range(ho):
        for ox in range(wo):
            yield oy, ox, [(oy * sh - ph + ky, ox * sw - pw + kx) for ky in range(kh) for kx in range(kw)
                           if 0 <= oy * sh - ph + ky < h and 0 <= ox * sw - pw + kx < w]


def _avgpool_naive(x, kernel, stride, padding):
    b, c, h, w = x.shape
    (kh, kw) = kernel
    ho, wo = (h + 2 * padding[0] - kh) // stride[0] + 1, (w + 2 * padding[1] - kw) // stride[1] + 1
    out = np.zeros((b, c, ho, wo))
    for oy, ox, cells in _pool_windows(h, w, kernel, stride, padding):
        for y, xx in cells:
            out[:, :, oy, ox] += x[:, :, y, xx]
    return out / (kh * kw)  # PyTorch count_include_pad=True


def _linear_op(node, x, ones=False):
    """Evaluate one neuron-free op; ``ones`` replaces weights by 1 and drops biases/shifts."""
    a, p = node.attrs, node.arrays
    if node.op == "conv2d":
        wgt = np.ones_like(p["weight"]) if ones else p["weight"]
        bias = None if ones else p.get("bias")
        return _conv_naive(x[0], wgt, bias, a["stride"], a["padding"], a["dilation"], a["groups"])
    if node.op == "linear":
        wgt = np.ones_like(p["weight"]) if ones else p["weight"]
        out = x[0].reshape(len(x[0]), -1) @ wgt.T
        return out if ones or "bias" not in p else out + p["bias"]
    if node.op == "batchnorm":
        if ones:
            return x[0]
        shape = (1, -1) + (1,) * (x[0].ndim - 2)
        z = (x[0] - p["mean"].reshape(shape)) / np.sqrt(p["var"].reshape(shape) + a["eps"])
        return z * p["gamma"].reshape(shape) + p["beta"].reshape(shape)
    if node.op == "avgpool2d":
        out = _avgpool_naive(x[0], a["kernel"], a["stride"], a["padding"])
        return out * (a["kernel"][0] * a["kernel"][1]) if ones else out
    if node.op == "sumpool2d":
        out = _avgpool_naive(x[0], a["kernel"], a["stride"], a["padding"])
        return out * (a["kernel"][0] * a["kernel"][1])
    if node.op == "scale":
        return x[0] if ones else x[0] * _broadcast_channel(p["scale"], x[0].shape)
    if node.op == "pad2d":
        top, bottom, left, right = a["pads"]
        b_, c_, h_, w_ = x[0].shape
        out = np.zeros((b_, c_, h_ + top + bottom, w_ + left + right))
        out[:, :, top:top + h_, left:left + w_] = x[0]
        return out
    if node.op == "global_avgpool":
        return x[0].sum(axis=(2, 3)) if ones else x[0].mean(axis=(2, 3))
    if node.op == "flatten":
        return x[0].reshape(len(x[0]), -1)
    if node.op == "add":
        return sum(x[1:], x[0])
    raise ValueError(node.op)


def _neuron_ref(node, h, state, x=None):
    """One dense neuron update (methods.md 2.1-2.3) on h = v(t-1) + x(t); returns counts."""
    a = node.attrs
    theta = _broadcast_channel(node.arrays["threshold"], h.shape)
    model = a["model"]
    if model == "if":
        s = (h >= theta).astype(np.int64)
        state["v"] = np.where(s > 0, 0.0, h) if a.get("reset") == "zero" else h - s * theta
    elif model == "gn":
        unit = theta / a["tau"]
        s = sum((h >= i * unit).astype(np.int64) for i in range(1, a["tau"] + 1))
        state["v"] = h - s * unit
    elif model == "lif":  # the plugin of the plugin tests: h = beta*v(t-1) + x(t), spike when h >= θ
        h = a["beta"] * state["v"] + x  # leaks v before adding this step's input
        s = (h >= theta).astype(np.int64)
        state["v"] = h - s * theta
    elif model == "ternary":  # the signed plugin: +1 above θ, -1 below -θ, v -= s·θ
        s = (h >= theta).astype(np.int64) - (h <= -theta).astype(np.int64)
        state["v"] = h - s * theta
    else:  # signed_if
        pos = h >= theta
        neg = ~pos & (h <= -1e-3) & (state["net"] > 0)
        s = pos.astype(np.int64) - neg.astype(np.int64)
        state["net"] = state["net"] + s
        state["v"] = h - s * theta
    return s


def _broadcast_channel(param, shape):
    param = np.asarray(param, dtype=np.float64)
    if param.ndim == 1 and len(shape) == 4:
        return param.reshape(1, -1, 1, 1)
    if param.ndim == 3:
        return param[None]
    return param


def _unit(node):
    return np.asarray(node.arrays["threshold"], np.float64) / node.attrs.get("tau", 1)


def simulate_reference(graph, x, T):
    """Dense reference simulation of an SNN graph (kind "snn") in float64.

    Returns
    -------
    dict with
        ``predictions`` (B, T): argmax of the output accumulated over steps 1..t;
        ``counts``: population/gate name -> (T, B, *shape) signed spike counts;
        ``output``: (B, F) accumulated output after T steps.
    """
    spec = graph.input
    xin = np.asarray(x, np.float64)
    if spec.scale is not None:
        xin = xin * spec.scale
    bshape = (1, -1) + (1,) * (len(spec.shape) - 1)
    if spec.mean is not None:
        xin = xin - np.asarray(spec.mean).reshape(bshape)
    if spec.std is not None:
        xin = xin / np.asarray(spec.std).reshape(bshape)
    b = len(xin)
    nodes = {n.name: n for n in graph.nodes}
    state = {}
    for n in graph.nodes:
        if n.op == "neuron":
            v0 = np.asarray(n.arrays["v0"], np.float64)
            v0 = _broadcast_channel(v0, (b,) + n.shape)
            state[n.name] = {"v": np.broadcast_to(v0, (b,) + n.shape).astype(np.float64),
                             "net": np.zeros((b,) + n.shape, np.int64)}
    counts = {n.name: np.zeros((T, b) + n.shape, np.int64) for n in graph.nodes
              if n.op == "neuron" or (n.op == "maxpool2d" and _is_spiking(nodes, n.inputs[0]))}
    cum = {name: np.zeros((b,) + nodes[nodes[name].inputs[0]].shape, np.int64)
           for name in counts if nodes[name].op == "maxpool2d"}
    acc = np.zeros((b, int(np.prod(nodes[graph.output].shape))))
    predictions = np.zeros((b, T), np.int64)
    for t in range(T):
        values = {"input": xin}
        for n in graph.nodes:
            ins = [values[i] for i in n.inputs]
            if n.op == "neuron":
                s = _neuron_ref(n, state[n.name]["v"] + ins[0], state[n.name], ins[0])
                counts[n.name][t] = s
                values[n.name] = s * _broadcast_channel(_unit(n), s.shape)
            elif n.op == "maxpool2d" and n.name in counts:
                src = n.inputs[0]
                s_in = counts[src][t]
                cum[n.name] += s_in
                out = np.zeros((b,) + n.shape, np.int64)
                h, w = nodes[src].shape[1:]
                for oy, ox, cells in _pool_windows(h, w, n.attrs["kernel"], n.attrs["stride"], n.attrs["padding"]):
                    for bi in range(b):
                        for c in range(n.shape[0]):
                            best = max(cells, key=lambda yx: (cum[n.name][bi, c, yx[0], yx[1]], -cells.index(yx)))
                            out[bi, c, oy, ox] = s_in[bi, c, best[0], best[1]]
                counts[n.name][t] = out
                values[n.name] = out * _broadcast_channel(_payload_unit(nodes, n.name), out.shape)
            elif n.op == "maxpool2d":
                a = n.attrs
                vals = np.full((b, n.shape[0]) + n.shape[1:], -np.inf)
                h, w = ins[0].shape[2:]
                for oy, ox, cells in _pool_windows(h, w, a["kernel"], a["stride"], a["padding"]):
                    for y, xx in cells:
                        vals[:, :, oy, ox] = np.maximum(vals[:, :, oy, ox], ins[0][:, :, y, xx])
                values[n.name] = vals
            else:
                values[n.name] = _linear_op(n, ins)
        acc += values[graph.output].reshape(b, -1)
        predictions[:, t] = acc.argmax(axis=1)
    return {"predictions": predictions, "counts": counts, "output": acc}


def _is_spiking(nodes, name):
    return name != "input" and (nodes[name].op == "neuron" or
                                (nodes[name].op == "maxpool2d" and _is_spiking(nodes, nodes[name].inputs[0])))


def _payload_unit(nodes, name):
    node = nodes[name]
    return _unit(node) if node.op == "neuron" else _payload_unit(nodes, node.inputs[0])


def reference_fanout(graph, source):
    """Structural fan-out of every neuron of ``source`` (population or gate), channels first.

    Propagates one-hot impulses through the neuron-free nodes with every weight set to one
    (so nothing cancels) until they reach a neuron's input or the output, and counts the
    non-zero entries there.
    """
    nodes = {n.name: n for n in graph.nodes}
    shape = nodes[source].shape
    n_src = int(np.prod(shape))
    values = {source: np.eye(n_src).reshape((n_src,) + shape)}
    fan = np.zeros(n_src, np.int64)
    for n in graph.nodes:
        if n.name == source or not any(i in values for i in n.inputs):
            continue
        if n.op in ("neuron", "maxpool2d"):
            continue  # spikes stop at the next neuron / gate
        ins = [values.get(i, np.zeros((n_src,) + (nodes[i].shape if i != "input" else graph.input.shape)))
               for i in n.inputs]
        values[n.name] = _linear_op(n, ins, ones=True)
    for n in graph.nodes:
        targets = [i for i in n.inputs if i in values and i != source] if n.op in ("neuron",) else []
        for name in targets:
            fan += (values[name].reshape(n_src, -1) != 0).sum(axis=1)
        if n.op == "neuron" and source in n.inputs:
            fan += 1  # directly into the next neuron: one synapse per neuron
    if graph.output in values:
        fan += (values[graph.output].reshape(n_src, -1) != 0).sum(axis=1)
    return fan


# =====================================================================================

# NIR reference (issue 13)
# ============================================================================================
# A float64 simulation of a NIR graph, written from NIR's node definitions and the
# discretisation of issue 13 alone (dt = 1): every node is evaluated on dense arrays at every
# step, in an order found from the edges; several edges into one node are summed. Sample
# shapes have no batch dimension, as in NIR. IF: ``v += r * I``; a spike (1) when
# ``v > v_threshold`` (strictly); then ``v -= v_threshold`` (reset by subtraction) or
# ``v = v_reset`` (reset to v_reset); ``v`` starts at 0. Reads nir objects, shares nothing with
# evsim. Flat graphs only (no nested NIRGraph nodes).

def _nir_pair(value):
    value = np.asarray(value).reshape(-1)
    return (int(value[0]), int(value[-1]))


def _nir_windows(x, kh, kw, sh, sw, dh=1, dw=1):
    """(B, C, H, W) already padded -> (B, C, Ho, Wo, kh, kw) windows."""
    from numpy.lib.stride_tricks import sliding_window_view

    view = sliding_window_view(x, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
    return view[:, :, ::sh, ::sw, ::dh, ::dw]


def _nir_conv(node, x):
    weight = np.asarray(node.weight, np.float64)
    c_out, cig, kh, kw = weight.shape
    (sh, sw), (dh, dw) = _nir_pair(node.stride), _nir_pair(node.dilation)
    groups = int(np.asarray(node.groups))
    if isinstance(node.padding, str):
        if node.padding == "valid":
            pads = (0, 0, 0, 0)
        else:  # 'same' (stride 1): PyTorch puts the odd pixel at the bottom / right
            th, tw = dh * (kh - 1), dw * (kw - 1)
            pads = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    else:
        ph, pw = _nir_pair(node.padding)
        pads = (ph, ph, pw, pw)
    x = np.pad(x, ((0, 0), (0, 0), pads[:2], pads[2:]))
    win = _nir_windows(x, kh, kw, sh, sw, dh, dw)
    b, c, ho, wo = win.shape[:4]
    win = win.reshape(b, groups, cig, ho, wo, kh, kw)
    w = weight.reshape(groups, c_out // groups, cig, kh, kw)
    out = np.einsum("bgihwkl,goikl->bgohw", win, w).reshape(b, c_out, ho, wo)
    return out + np.asarray(node.bias, np.float64).reshape(1, -1, 1, 1)


def _nir_pool(node, x, average):
    (kh, kw), (sh, sw), (ph, pw) = _nir_pair(node.kernel_size), _nir_pair(node.stride), _nir_pair(node.padding)
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out = _nir_windows(x, kh, kw, sh, sw).sum(axis=(4, 5))
    return out / (kh * kw) if average else out


def _nir_flatten(node, x):
    shape = x.shape[1:]  # no batch dimension in NIR
    start = int(node.start_dim) % len(shape)
    end = int(node.end_dim) % len(shape)
    new = shape[:start] + (int(np.prod(shape[start:end + 1])),) + shape[end + 1:]
    return x.reshape((len(x),) + new)


def _nir_affine(node, x, bias):
    out = x @ np.asarray(node.weight, np.float64).T
    return out + np.asarray(node.bias, np.float64) if bias else out


_NIR_OPS = {
    "Conv2d": _nir_conv,
    "SumPool2d": lambda node, x: _nir_pool(node, x, average=False),
    "AvgPool2d": lambda node, x: _nir_pool(node, x, average=True),
    "Flatten": _nir_flatten,
    "Affine": lambda node, x: _nir_affine(node, x, bias=True),
    "Linear": lambda node, x: _nir_affine(node, x, bias=False),
    "Scale": lambda node, x: x * np.asarray(node.scale, np.float64),
}


def _nir_order(graph):
    """Node names in an order where every node comes after all its sources (Kahn)."""
    sources = {name: [a for a, b in graph.edges if b == name] for name in graph.nodes}
    order, done = [], set()
    while len(order) < len(graph.nodes):
        ready = [n for n in graph.nodes if n not in done and all(s in done for s in sources[n])]
        assert ready, "the NIR graph has a cycle"
        order += ready
        done.update(ready)
    return order, sources


def nir_reference(graph, frames, reset="subtract", v0_half=False, T=None):
    """Simulate a flat ``nir.NIRGraph`` on event frames in float64.

    Parameters
    ----------
    graph : nir.NIRGraph
        One Input node, one Output node, nodes among Conv2d, SumPool2d, AvgPool2d, Flatten,
        Affine, Linear, Scale, IF.
    frames : ndarray (B, T_data, *input shape)
        Frame t is the input of step t; steps past T_data get no input.
    reset : {"subtract", "zero"}
        After a spike: ``v -= v_threshold``, or ``v = v_reset``.
    v0_half : bool
        Start at ``v_threshold / 2`` instead of 0.
    T : int, optional
        Steps (default T_data).

    Returns
    -------
    dict with ``counts``: IF node name -> (T, B, *shape) int64 spikes; ``output`` (B, F): the
    Output's input summed over the T steps; ``predictions`` (B, T): argmax of that running sum
    (lowest index on ties).
    """
    frames = np.asarray(frames, np.float64)
    n, t_data = frames.shape[:2]
    T = t_data if T is None else T
    order, sources = _nir_order(graph)
    kinds = {name: type(node).__name__ for name, node in graph.nodes.items()}
    (inp,) = [k for k, v in kinds.items() if v == "Input"]
    (out,) = [k for k, v in kinds.items() if v == "Output"]
    state, counts = {}, {}
    for name, node in graph.nodes.items():
        if kinds[name] == "IF":
            thr = np.asarray(node.v_threshold, np.float64)
            state[name] = None if not v0_half else thr / 2
            counts[name] = []
    acc, predictions = None, np.zeros((n, T), np.int64)
    for t in range(T):
        values = {inp: frames[:, t] if t < t_data else np.zeros_like(frames[:, 0])}
        for name in order:
            if name == inp:
                continue
            x = sum(values[s] for s in sources[name][1:]) + values[sources[name][0]]
            node = graph.nodes[name]
            if kinds[name] == "IF":
                r, thr = np.asarray(node.r, np.float64), np.asarray(node.v_threshold, np.float64)
                v = np.zeros_like(x) if state[name] is None else np.broadcast_to(state[name], x.shape)
                v = v + r * x
                spike = v > thr
                after = v - thr if reset == "subtract" else np.asarray(node.v_reset, np.float64)
                state[name] = np.where(spike, after, v)
                counts[name].append(spike.astype(np.int64))
                values[name] = spike.astype(np.float64)
            elif kinds[name] == "Output":
                values[name] = x
            else:
                values[name] = _NIR_OPS[kinds[name]](node, x)
        step = values[out].reshape(n, -1)
        acc = step.copy() if acc is None else acc + step
        predictions[:, t] = acc.argmax(axis=1)
    return {"counts": {k: np.stack(v) for k, v in counts.items()}, "output": acc, "predictions": predictions}


def simulate_reference_frames(graph, frames, T):
    """Dense reference of an evsim SNN graph driven by event frames, in float64.

    ``frames`` (B, T_data, *input.shape): frame t is the input value of step t (spike counts, no
    preprocessing); steps t >= T_data get zeros. Returns the same dict as
    :func:`simulate_reference` (no max-pooling gates here).
    """
    frames = np.asarray(frames, np.float64)
    b, t_data = frames.shape[:2]
    assert graph.input.scale is None and graph.input.mean is None and graph.input.std is None
    state = {}
    for n in graph.nodes:
        assert n.op != "maxpool2d", "no gates in this reference"
        if n.op == "neuron":
            v0 = _broadcast_channel(np.asarray(n.arrays["v0"], np.float64), (b,) + n.shape)
            state[n.name] = {"v": np.broadcast_to(v0, (b,) + n.shape).astype(np.float64),
                             "net": np.zeros((b,) + n.shape, np.int64)}
    counts = {n.name: np.zeros((T, b) + n.shape, np.int64) for n in graph.nodes if n.op == "neuron"}
    acc = np.zeros((b, int(np.prod(graph.node(graph.output).shape))))
    predictions = np.zeros((b, T), np.int64)
    for t in range(T):
        values = {"input": frames[:, t] if t < t_data else np.zeros_like(frames[:, 0])}
        for n in graph.nodes:
            ins = [values[i] for i in n.inputs]
            if n.op == "neuron":
                s = _neuron_ref(n, state[n.name]["v"] + ins[0], state[n.name])
                counts[n.name][t] = s
                values[n.name] = s * _broadcast_channel(_unit(n), s.shape)
            else:
                values[n.name] = _linear_op(n, ins)
        acc += values[graph.output].reshape(b, -1)
        predictions[:, t] = acc.argmax(axis=1)
    return {"predictions": predictions, "counts": counts, "output": acc}

def reference_counts(graph, ref, T):
    """Operation counts of a dense reference run, straight from the definitions (docs/usage.md, "Energy").

    Returns ``(layers, analog_macs, ann_macs)``: population -> {"spikes", "events", "sops",
    "neuron_updates"} as (T,) totals over the batch (SOPs through max-pooling gates included;
    neuron updates = members × neurons × samples at every step, members = τ for GN); the
    MACs per sample of the conv/linear nodes that depend on the input only (the analog layer,
    evaluated at every step); and the MACs per sample of every conv/linear node (the ANN).
    A MAC count is output elements × fan-in, padded taps included (the frameworks' convention).
    """
    nodes = {n.name: n for n in graph.nodes}
    spiking = {n.name for n in graph.nodes if n.op == "neuron"}

    def depends_on_spikes(name):
        return name in spiking or (name != "input" and any(depends_on_spikes(i) for i in nodes[name].inputs))

    def macs(node):
        weight = node.arrays["weight"]
        fan_in = int(np.prod(weight.shape[1:]))
        return int(np.prod(node.shape)) * fan_in if node.op == "conv2d" else int(weight.size)

    analog = sum(macs(n) for n in graph.nodes if n.op in ("conv2d", "linear") and not depends_on_spikes(n.name))
    ann = sum(macs(n) for n in graph.nodes if n.op in ("conv2d", "linear"))
    layers = {}
    for n in graph.nodes:
        if n.op != "neuron":
            continue
        counts = ref["counts"][n.name]
        b = counts.shape[1]
        gates = [g.name for g in graph.nodes if g.op == "maxpool2d" and g.name in ref["counts"] and g.inputs[0] == n.name]
        sops = np.zeros(T, np.int64)
        for name in [n.name] + gates:
            c = np.abs(ref["counts"][name]).reshape(T, b, -1)
            sops += (c * reference_fanout(graph, name)).sum(axis=(1, 2))
        layers[n.name] = {
            "spikes": np.abs(counts).reshape(T, -1).sum(axis=1),
            "events": (counts != 0).reshape(T, -1).sum(axis=1),
            "sops": sops,
            "neuron_updates": np.full(T, n.attrs.get("tau", 1) * int(np.prod(n.shape)) * b, np.int64),
        }
    return layers, analog, ann


# ============================================================================================
# Performance kernels (issue 19): output-stationary convolution, dense path, time blocks
# ============================================================================================

def gather_conv_ref(counts, weight, init, per_row, src_h, src_w, src_c, crop_h, crop_w, pool_h, pool_w,
                    out_h, out_w, out_c, k_h, k_w, stride_h, stride_w, pad_h, pad_w):
    """Twin of ``evsim._kernels.gather.gather_conv``: every item's currents start from its row of
    ``init`` (row ``(i // per_row) % R``), then every event ``(n, k)`` in increasing ``n`` adds
    ``k * weight[ky, kx, c, :]`` (rounded, then added, in the weight dtype) to every output its
    pooled position reaches.  ``weight`` is (k_h, k_w, src_c, out_c); the sum pooling over
    ``pool_h x pool_w`` blocks (cut at the crop) is applied position by position, not by summing
    counts first."""
    dtype = weight.dtype
    items = counts.shape[0]
    grid_h, grid_w = -(-crop_h // pool_h), -(-crop_w // pool_w)
    current = np.array(init[(np.arange(items) // per_row) % init.shape[0]], dtype=dtype)
    for i in range(items):
        for n in np.flatnonzero(counts[i]):
            k = dtype.type(counts[i, n])
            y, x, c = n // (src_w * src_c), (n // src_c) % src_w, n % src_c
            if y >= crop_h or x >= crop_w:
                continue
            gy, gx = y // pool_h, x // pool_w
            for ky in range(k_h):
                for kx in range(k_w):
                    ty, tx = gy + pad_h - ky, gx + pad_w - kx
                    if ty % stride_h or tx % stride_w:
                        continue
                    oy, ox = ty // stride_h, tx // stride_w
                    if not (0 <= oy < out_h and 0 <= ox < out_w) or gy >= grid_h or gx >= grid_w:
                        continue
                    start = (oy * out_w + ox) * out_c
                    current[i, start:start + out_c] += k * weight[ky, kx, c, :]
    return current
