"""A NumPy executor for the ANN graph (no deep-learning framework).

Used for the ANN's own accuracy, for calibration (it records activations), and by
the SNN compiler for the constant per-step currents (bias and analog input).  Each op's
forward function sits in its entry of the op registry (:data:`evsim.ops.OPS`); it takes
the node and its input values (batch first) and returns the node's value.

Speed: convolutions with stride 1 run as a direct Numba kernel with SIMD registers
(:func:`evsim._kernels.dense.direct_conv`), the others as im2col + BLAS ``gemm``, in the dtype asked
for (:func:`predict` and :func:`accuracy` default to float32, :func:`forward` to float64).  A
convolution's BatchNorm, residual add, ReLU/QCFS and non-overlapping pooling (when nothing else reads
the values in between) run in the kernel's epilogue, planned once per graph and query
(:func:`_plan`): one pass instead of five over the activations, with the same values as the separate
passes.  :func:`predict` / :func:`accuracy` push chunks of :data:`COMPUTE_CHUNK` samples through the
graph (activations stay in the core's L2), into buffers reused across chunks, and run batches in
parallel Python threads with BLAS held at one thread (:class:`blas_threads`): the only thread pools
are Python's and, in the simulation afterwards, Numba's, never an OpenBLAS pool spinning against
Numba's workers.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .errors import ConversionError, describe
from .graph import Graph, Node, relu_caps

__all__ = ["forward", "predict", "accuracy", "conv2d", "qcfs", "qcfs_numpy", "windows", "pool_sum", "channel_affine", "blas_threads"]


def _channel(param: np.ndarray, ndim: int) -> np.ndarray:
    """Broadcast a scalar or per-channel parameter along axis 1 of a batch of ``ndim`` dims."""
    return param.reshape((1, -1) + (1,) * (ndim - 2)) if param.ndim == 1 else param


def windows(x: np.ndarray, kernel, stride, padding, dilation=(1, 1), fill=0.0) -> np.ndarray:
    """View of shape (B, C, H_out, W_out, kH, kW) over the padded input."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    view = sliding_window_view(x, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
    return view[:, :, ::sh, ::sw, ::dh, ::dw]


def conv2d(x: np.ndarray, weight: np.ndarray, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
           groups: int = 1, scale=None, shift=None) -> np.ndarray:
    """2-D cross-correlation with zero padding, PyTorch semantics, on a batch (B, C, H, W), in the
    dtype of ``x``; optionally followed by a per-channel affine map (``scale``, ``shift``: a
    BatchNorm folded in by :func:`forward`).

    Stride-1, dilation-1, groups-1 convolutions (float32/64) run in a Numba kernel with SIMD
    registers and fused multiply-adds, without im2col (:func:`evsim._kernels.dense.direct_conv`,
    2x faster than im2col + GEMM on the shipped model's layers, measured); the others as im2col
    (a Numba kernel; nothing to copy for a 1x1 stride-1 convolution) and one BLAS ``gemm`` per
    sample and group, output channels first: no transpose of the result.
    """
    from ._kernels.dense import direct_conv, direct_layout, im2col

    x = np.ascontiguousarray(x)
    b, c, h, w_in = x.shape
    c_out, c_in_g, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w_in + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if (sh, sw, dh, dw, groups) == (1, 1, 1, 1, 1) and x.dtype in (np.float32, np.float64) and ho > 0 and wo > 0:
        s = np.ones(c_out) if scale is None else np.broadcast_to(np.asarray(scale, np.float64), (c_out,))
        t = (np.zeros(c_out) if bias is None else np.asarray(bias, np.float64)) * s
        if shift is not None:
            t = t + shift
        out = np.empty((b, c_out, ho, wo), x.dtype)
        direct_conv(x, direct_layout(np.asarray(weight, x.dtype)), np.ascontiguousarray(s, x.dtype),
                    np.ascontiguousarray(t, x.dtype), ph, pw, ho, wo, out)
        return out
    k = c_in_g * kh * kw
    w = np.ascontiguousarray(weight.reshape(groups, c_out // groups, k), dtype=x.dtype)
    out = np.empty((b, groups, c_out // groups, ho * wo), x.dtype)
    if kh == kw == 1 and (sh, sw, ph, pw) == (1, 1, 0, 0):
        np.matmul(w[None], x.reshape(b, groups, k, h * w_in), out=out)
    else:  # a few samples at a time: their columns stay in cache between im2col and gemm
        step = max(1, min(b, (256 * 1024) // max(1, c * kh * kw * ho * wo * x.itemsize)))
        cols = np.empty((step, c * kh * kw, ho * wo), x.dtype)
        for lo in range(0, b, step):
            hi = min(b, lo + step)
            im2col(x[lo:hi], kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, cols[:hi - lo])
            np.matmul(w[None], cols[:hi - lo].reshape(hi - lo, groups, k, ho * wo), out=out[lo:hi])
    out = out.reshape(b, c_out, ho, wo)
    if bias is not None:
        out += bias.astype(x.dtype, copy=False).reshape(1, -1, 1, 1)
    if scale is not None:
        out = channel_affine(out, np.broadcast_to(scale, (c_out,)), np.broadcast_to(shift, (c_out,)))
    return out


def pool_sum(x: np.ndarray, kernel, stride, padding) -> np.ndarray:
    """Sum over pooling windows with zero padding (the numerator of PyTorch's average pooling with
    ``count_include_pad=True``), in the dtype of ``x``; one Numba pass."""
    from ._kernels.dense import pool_sum as kernel_sum

    if x.dtype not in (np.float32, np.float64):
        return windows(x, kernel, stride, padding).sum(axis=(4, 5))
    x = np.ascontiguousarray(x)
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    b, c, h, w = x.shape
    out = np.empty((b, c, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1), x.dtype)
    kernel_sum(x, kh, kw, sh, sw, ph, pw, out)
    return out


def channel_affine(x: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``x * scale + shift`` with per-channel (axis 1) ``scale`` and ``shift``, in the dtype of ``x``
    (a multiplication then an addition, as the NumPy expression); one Numba pass."""
    from ._kernels.dense import channel_affine as kernel_affine

    if x.dtype not in (np.float32, np.float64) or x.ndim < 2:
        return x * _channel(scale.astype(x.dtype), x.ndim) + _channel(shift.astype(x.dtype), x.ndim)
    x = np.ascontiguousarray(x)
    channels = x.shape[1]
    out = np.empty_like(x)
    kernel_affine(x.reshape(len(x), channels, -1), np.ascontiguousarray(np.broadcast_to(scale.astype(x.dtype),
                                                                                      (channels,))),
                  np.ascontiguousarray(np.broadcast_to(shift.astype(x.dtype), (channels,))),
                  out.reshape(len(x), channels, -1))
    return out


def qcfs(z: np.ndarray, threshold: np.ndarray, levels: int) -> np.ndarray:
    """QCFS activation ``λ·clip(floor(z·L/λ + 1/2)/L, 0, 1)`` (λ scalar or per channel).

    One fused pass (a Numba kernel) in the dtype of ``z``, the same operations in the same order
    as the NumPy expression (:func:`qcfs_numpy`).
    """
    from ._kernels.dense import qcfs_forward

    if z.dtype not in (np.float32, np.float64):
        return qcfs_numpy(z, threshold, levels)
    z = np.ascontiguousarray(z)
    channels = z.shape[1] if z.ndim > 1 else 1
    lam = np.ascontiguousarray(np.broadcast_to(threshold.astype(z.dtype), (channels,)))
    out = np.empty_like(z)
    qcfs_forward(z.reshape(len(z), channels, -1), lam, int(levels), out.reshape(len(z), channels, -1))
    return out


def qcfs_numpy(z: np.ndarray, threshold: np.ndarray, levels: int) -> np.ndarray:
    """:func:`qcfs` as a NumPy expression (the definition; also the fallback for other dtypes)."""
    lam = _channel(threshold.astype(z.dtype, copy=False), z.ndim)
    return lam * np.clip(np.floor(z * levels / lam + 0.5) / levels, 0, 1)


def forward(graph: Graph, x: np.ndarray | None, wanted: Iterable[str] | None = None,
            fixed: Mapping[str, np.ndarray] | None = None, dtype=np.float64,
            preprocessed: bool = False) -> dict[str, np.ndarray]:
    """Evaluate the graph on a batch.

    Parameters
    ----------
    graph : Graph
        A validated graph.
    x : ndarray or None
        Raw input batch ``(B, *input.shape)``; preprocessing of ``graph.input`` is
        applied unless ``preprocessed``.  ``None`` when only ``fixed`` values are needed.
    wanted : iterable of str, optional
        Node names to return; only what they depend on is computed (default: output).
    fixed : mapping, optional
        Values to use for some nodes instead of computing them (e.g. zeros for neuron
        populations, or cached sample-independent values).
    dtype : numpy dtype
        Arithmetic precision.

    Returns
    -------
    dict
        Node name -> value for every node in ``wanted``.
    """
    wanted = [graph.output] if wanted is None else list(wanted)
    values: dict[str, np.ndarray] = dict(fixed or {})
    if x is not None and "input" not in values:
        values["input"] = np.asarray(x, dtype=dtype) if preprocessed else graph.input.preprocess(x, dtype)
    _run(_plan(graph, wanted, frozenset(values)), values)
    return {name: values[name] for name in wanted}


# --------------------------------------------------------------------------- planned, fused execution
#: activations a convolution's epilogue applies (the ``act`` code of :func:`evsim._kernels.dense.direct_conv`)
_FUSED_ACTIVATIONS = {"relu": 1, "qcfs": 2}
#: poolings a convolution's epilogue applies (value: divide by the window's area)
_FUSED_POOLS = {"avgpool2d": True, "sumpool2d": False}


class _Fused:
    """A planned step: a conv2d, then optionally its BatchNorm, a residual add, an activation and a
    pooling (each the only reader of the one before), computed in one pass; the value of the chain's
    last node is stored.  Only the BatchNorm is folded into a convolution the direct kernel cannot run
    (stride, dilation or groups not 1)."""

    def __init__(self, conv: Node, direct: bool):
        self.conv, self.direct = conv, direct
        self.nodes = [conv]
        self.batchnorm = self.residual = self.activation = self.pool = None
        self._arrays: dict = {}

    @property
    def name(self) -> str:
        return self.nodes[-1].name

    def arrays(self, dtype):
        """(weights in the direct kernel's layout, scale, shift, λ) in ``dtype``, prepared once per dtype."""
        key = np.dtype(dtype)
        found = self._arrays.get(key)
        if found is None:
            from ._kernels.dense import direct_layout

            weight, bias = self.conv.arrays["weight"], self.conv.arrays.get("bias")
            c_out = weight.shape[0]
            s, shift = np.ones(c_out), np.zeros(c_out)
            if self.batchnorm is not None:
                p = self.batchnorm.arrays
                scale = p["gamma"] / np.sqrt(p["var"] + self.batchnorm.attrs["eps"])
                s = np.broadcast_to(np.asarray(scale, np.float64), (c_out,))
                shift = p["beta"] - p["mean"] * scale
            t = (np.zeros(c_out) if bias is None else np.asarray(bias, np.float64)) * s + shift
            lam = s
            if self.activation is not None and self.activation.op == "qcfs":
                lam = np.broadcast_to(self.activation.arrays["threshold"].astype(key), (c_out,))
            found = self._arrays[key] = (direct_layout(np.asarray(weight, key)), np.ascontiguousarray(s, key),
                                         np.ascontiguousarray(t, key), np.ascontiguousarray(lam, key))
        return found

    def run(self, values: dict, buffers: dict | None = None) -> np.ndarray:
        """The chain's value; written into ``buffers[self]`` (reused across batches) if ``buffers`` is given."""
        from .ops import OPS

        x = values[self.conv.inputs[0]]
        a = self.conv.attrs
        if x.dtype not in (np.float32, np.float64):  # a dtype the kernels do not take: op by op
            value = x
            for prev, node in zip([self.conv.inputs[0]] + [n.name for n in self.nodes], self.nodes):
                value = OPS[node.op].forward(node, [value if n == prev else values[n] for n in node.inputs])
            return value
        if not self.direct:  # conv2d -> batchnorm only
            p = self.batchnorm.arrays
            scale = p["gamma"] / np.sqrt(p["var"] + self.batchnorm.attrs["eps"])
            return conv2d(x, self.conv.arrays["weight"], self.conv.arrays.get("bias"), a["stride"], a["padding"],
                          a["dilation"], a["groups"], scale, p["beta"] - p["mean"] * scale)
        from ._kernels.dense import direct_conv

        x = np.ascontiguousarray(x)
        weight, scale, shift, lam = self.arrays(x.dtype)
        c_out, ho, wo = self.conv.shape
        residual = None
        if self.residual is not None:
            residual = np.ascontiguousarray(values[self.residual], x.dtype)
            if residual.shape != (len(x), c_out, ho, wo):  # the graph's shapes guarantee it
                raise ConversionError(describe(f"node '{self.nodes[-1].name}'", f"inputs of shape {(c_out, ho, wo)}",
                                               str(residual.shape[1:])))
        pool, divide = (1, 1), False
        if self.pool is not None:
            pool, divide = tuple(self.pool.attrs["kernel"]), _FUSED_POOLS[self.pool.op]
        shape = (len(x), c_out, ho // pool[0], wo // pool[1])
        out = None if buffers is None else buffers.get(self)
        if out is None or out.shape != shape or out.dtype != x.dtype:
            out = np.empty(shape, x.dtype)
            if buffers is not None:
                buffers[self] = out
        act = 0 if self.activation is None else _FUSED_ACTIVATIONS[self.activation.op]
        levels = self.activation.attrs["levels"] if act == 2 else 1
        direct_conv(x, weight, scale, shift, a["padding"][0], a["padding"][1], ho, wo, out, residual, act, levels,
                    lam, pool, divide)
        return out


def _plan(graph: Graph, wanted: list, given: frozenset) -> list:
    """The steps computing ``wanted`` from the ``given`` values: graph nodes (in order) and
    :class:`_Fused` chains, each placed at its last node.  Planned once per graph and query:
    :func:`predict` and :func:`accuracy` run the same plan on every batch."""
    from .ops import OPS

    needed = set(wanted)
    for node in reversed(graph.nodes):
        if node.name in needed and node.name not in given:
            needed.update(node.inputs)
    readers: dict[str, list] = {}
    for node in graph.nodes:
        for name in node.inputs:
            readers.setdefault(name, []).append(node)

    def next_private(name):  # the only reader of an intermediate value nobody else asks for
        found = readers.get(name, [])
        if len(found) != 1 or name in wanted or name in given or name == graph.output:
            return None
        reader = found[0]
        return reader if reader.name in needed and reader.name not in given and reader.name not in absorbed else None

    caps = relu_caps(graph)  # ReLUs with a maximum λ
    chains: dict[str, _Fused] = {}
    absorbed: set = set()  # nodes inside a chain (read by next_private: an add joins one chain only)
    for node in graph.nodes:
        if node.op != "conv2d" or node.name not in needed or node.name in given or node.name in absorbed:
            continue
        a = node.attrs
        _, ho, wo = node.shape
        direct = (tuple(a["stride"]), tuple(a["dilation"]), a["groups"]) == ((1, 1), (1, 1), 1) and ho > 0 and wo > 0
        step = _Fused(node, direct)
        nxt = next_private(node.name)
        if nxt is not None and nxt.op == "batchnorm":
            step.batchnorm = nxt
            step.nodes.append(nxt)
            nxt = next_private(nxt.name)
        if direct:
            if nxt is not None and nxt.op == "add" and len(nxt.inputs) == 2:
                other = nxt.inputs[1] if nxt.inputs[0] == step.name else nxt.inputs[0]
                step.residual = other
                step.nodes.append(nxt)
                nxt = next_private(nxt.name)
            if nxt is not None and nxt.op in _FUSED_ACTIVATIONS and nxt.name not in caps:  # a clip: unfused
                step.activation = nxt
                step.nodes.append(nxt)
                nxt = next_private(nxt.name)
            pa = nxt.attrs if nxt is not None and nxt.op in _FUSED_POOLS else None
            if (pa is not None and tuple(pa["kernel"]) == tuple(pa["stride"]) and tuple(pa["padding"]) == (0, 0)
                    and pa["kernel"][0] <= 2):  # windows of one or two rows (the kernel's two-row blocks)
                step.pool = nxt
                step.nodes.append(nxt)
        if len(step.nodes) > 1:
            chains[step.name] = step
            absorbed.update(n.name for n in step.nodes)
    steps = []
    for node in graph.nodes:
        if node.name not in needed or node.name in given:
            continue
        if node.name in chains:
            steps.append(chains[node.name])
        elif node.name not in absorbed:
            if OPS[node.op].forward is None:
                raise ConversionError(describe(f"node '{node.name}'", "an op the ANN executor can evaluate",
                                               repr(node.op), "evaluate the ANN model, not the SNN file"))
            steps.append(_Clipped(node, caps[node.name]) if node.name in caps else node)
    return steps


class _Clipped:
    """A planned step: a ReLU with a maximum λ, ``min(max(z, 0), λ)`` (``metadata["relu_max"]``)."""

    def __init__(self, node: Node, lam: np.ndarray):
        self.node, self.lam, self.name = node, lam, node.name

    def run(self, values: dict, buffers: dict | None = None) -> np.ndarray:
        z = values[self.node.inputs[0]]
        return np.clip(z, 0, _channel(self.lam.astype(z.dtype), z.ndim))


def _run(steps: list, values: dict, buffers: dict | None = None) -> None:
    """Execute a :func:`_plan` into ``values``; with ``buffers`` (one dict per thread, kept across
    batches), fused steps write into the same arrays batch after batch: fresh arrays of megabytes
    cost page faults (~2,400 per 256-sample batch of the shipped model, 10-20 % of the time, measured)."""
    from .ops import OPS

    for step in steps:
        if isinstance(step, (_Fused, _Clipped)):
            values[step.name] = step.run(values, buffers)
        else:
            values[step.name] = OPS[step.op].forward(step, [values[name] for name in step.inputs])


def predict(graph: Graph, x, batch_size: int = 256, dtype=np.float32, threads: int | None = None) -> np.ndarray:
    """Class predictions (argmax of the flattened output) of the ANN for raw inputs ``x``.

    ``x`` is an array ``(N, *input.shape)`` or a data source (``n``, ``read(start, stop)``, e.g.
    ``evsim.data_io.open_data``), read one batch at a time.  Batches run ``threads`` at a time
    (default: Numba's thread count) in Python threads, each with single-threaded BLAS, in
    ``dtype`` (float32 by default; ``np.float64`` for the exact-arithmetic reference).
    """
    return _map_batches(graph, _as_source(x), batch_size, dtype, threads)[0]


def accuracy(graph: Graph, x, y=None, batch_size: int = 256, dtype=np.float32, threads: int | None = None) -> float:
    """The ANN's accuracy on inputs ``x`` with labels ``y``, or on a labelled data source ``x``
    (read batch by batch: memory does not grow with the number of samples).  See :func:`predict`."""
    source = _as_source(x, y)
    if not source.has_labels:
        raise ConversionError(describe("ANN accuracy", "labels (y, or a data source with labels)", "none"))
    predictions, labels = _map_batches(graph, source, batch_size, dtype, threads)
    return float((predictions == labels).mean()) if len(labels) else float("nan")


class _Arrays:
    """Arrays as a data source."""

    def __init__(self, x, y=None):
        self.x, self.y = x, y
        self.n, self.has_labels = len(x), y is not None

    def read(self, start, stop):
        return self.x[start:stop], None if self.y is None else self.y[start:stop]


def _as_source(x, y=None):
    return x if hasattr(x, "read") else _Arrays(np.asarray(x), None if y is None else np.asarray(y))


#: samples :func:`predict` / :func:`accuracy` push through the graph at once (a read batch is split into
#: chunks of this size): the activations of a chunk stay in the core's L2 cache from one layer to the
#: next.  Shipped model, float32, one thread: 137 us per sample at 20-48 samples, 220-310 at 256 (measured).
COMPUTE_CHUNK = 32


def _map_batches(graph: Graph, source, batch_size: int, dtype, threads: int | None):
    """(predictions, labels or None) over all samples of ``source``, batches run ``threads`` at a time."""
    from concurrent.futures import ThreadPoolExecutor

    if threads is None:
        import numba
        threads = numba.get_num_threads()

    import threading

    steps = _plan(graph, [graph.output], frozenset({"input"}))
    local = threading.local()

    def one(bounds):  # only the argmax leaves: the thread's buffers are free again for its next chunk
        xb, yb = source.read(*bounds)
        if not hasattr(local, "buffers"):
            local.buffers = {}
        predictions = []
        for lo in range(0, len(xb), COMPUTE_CHUNK):
            values = {"input": graph.input.preprocess(xb[lo:lo + COMPUTE_CHUNK], dtype)}
            _run(steps, values, local.buffers)
            logits = values[graph.output]
            predictions.append(logits.reshape(len(logits), -1).argmax(axis=1))
        return np.concatenate(predictions), yb

    ranges = [(lo, min(lo + batch_size, source.n)) for lo in range(0, source.n, batch_size)]
    if not ranges:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    with blas_threads(1):
        if threads <= 1 or len(ranges) == 1:
            parts = [one(r) for r in ranges]
        else:
            with ThreadPoolExecutor(min(threads, len(ranges))) as pool:
                parts = list(pool.map(one, ranges))
    predictions = np.concatenate([p for p, _ in parts])
    labels = np.concatenate([np.asarray(y) for _, y in parts]) if parts[0][1] is not None else None
    return predictions, labels


# --------------------------------------------------------------------------- BLAS threads
#: (set, get) symbol pairs of the BLAS libraries NumPy links: scipy-openblas (NumPy >= 2 wheels),
#: OpenBLAS, MKL, BLIS
_BLAS_SYMBOLS = (("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
                 ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
                 ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
                 ("openblas_set_num_threads", "openblas_get_num_threads"),
                 ("MKL_Set_Num_Threads", "MKL_Get_Max_Threads"),
                 ("bli_thread_set_num_threads", "bli_thread_get_num_threads"))
_BLAS: list | None = None


def _blas_libraries() -> list:
    """(set, get) thread-count functions of every BLAS library loaded in this process (Linux: read
    from /proc/self/maps, opened with RTLD_NOLOAD so that nothing new is loaded); [] elsewhere."""
    import ctypes
    import os

    paths = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if "/" in line else ""
                name = os.path.basename(path).lower()
                if any(key in name for key in ("blas", "mkl_rt", "blis")) and path not in paths:
                    paths.append(path)
    except OSError:
        return []
    found = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | getattr(os, "RTLD_LAZY", 1))
        except OSError:
            continue
        for set_name, get_name in _BLAS_SYMBOLS:
            if hasattr(lib, set_name) and hasattr(lib, get_name):
                setter, getter = getattr(lib, set_name), getattr(lib, get_name)
                setter.argtypes, setter.restype, getter.restype = [ctypes.c_int], None, ctypes.c_int
                found.append((setter, getter))
                break
    return found


class blas_threads:
    """Context manager: BLAS libraries in this process use ``n`` threads inside, their previous
    count after.  A no-op where the library cannot be found (then limit BLAS with
    ``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` before NumPy is imported)."""

    def __init__(self, n: int):
        self.n = int(n)
        self.saved = []

    def __enter__(self):
        global _BLAS
        if _BLAS is None:
            _BLAS = _blas_libraries()
        self.saved = [(setter, getter()) for setter, getter in _BLAS]
        for setter, _ in self.saved:
            setter(self.n)
        return self

    def __exit__(self, *exc):
        for setter, previous in self.saved:
            setter(previous)
        return False
