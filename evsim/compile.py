"""SNN graph -> :class:`Network` of neuron populations and sparse projections.

Every ``neuron`` node becomes a :class:`Population`.  The neuron-free nodes between
populations (conv2d, linear, batchnorm, avgpool2d, global_avgpool, flatten, add) are
*composed* into projections, so a spike is scattered straight into the membrane
currents of the next populations (or the output accumulator):

* a chain of convolution-like ops (conv2d, average pooling, unfolded BatchNorm)
  composes into **one implicit convolution** when that is exact at the borders
  (checked, :func:`_compose_convs`), e.g. ``avgpool → conv``;
* anything else (flatten, linear, a composition that would not be exact) becomes a
  dense or CSR matrix, materialised only under the memory limit;
* each path ``source → … → target`` is one :class:`Projection`; ``add`` sums paths.

What does not depend on spikes is the *constant current* of each target: the bias part
(``static_current``, evaluated once here by the NumPy executor with input and
populations held at zero) plus the analog input (direct encoding), which is treated as
one more source: its paths are composed into ``input_projections`` exactly like spike
paths, and the engine scatters the preprocessed input values through them once per batch.

A ``maxpool2d`` right after a population becomes a :class:`Gate`: a derived spike
source that passes, per window, the spikes of the input with the largest accumulated
spike count (approximate by nature, see docs).

Layouts: populations are (C, H, W), a flat layer of F neurons is (F, 1, 1); the
engine indexes neuron (c, y, x) as ``(y*W + x)*C + c`` (channels last, so one event
of a convolution touches contiguous rows of C_out weights).  Matrices here are built
in channels-first flat order (as in the file format) and permuted at the end.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np
import scipy.sparse as sp

from .ann import forward
from .errors import ConversionError, describe
from .graph import Graph, node_macs
from .neurons import get_model
from .operators import ConvOp, MatrixOp, conv_matrix, identity, is_diagonal, shape3 as _shape3
from .ops import OPS

__all__ = ["Population", "Gate", "Projection", "ConvProjection", "DiagonalProjection", "DenseProjection",
           "CSRProjection", "ConvGeometry", "Network", "compile_network", "ConvOp", "MatrixOp",
           "compose_path", "conv_matrix", "hwc_order", "to_engine_layout"]

Shape3 = tuple[int, int, int]


def hwc_order(shape) -> np.ndarray:
    """``order[n]`` = channels-first flat index of engine (channels-last) index ``n``."""
    c, h, w = _shape3(shape)
    return np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).ravel()


def to_engine_layout(values: np.ndarray) -> np.ndarray:
    """(B, C, H, W) or (B, F) batch -> (B, N) channels-last flat (C-contiguous)."""
    if values.ndim == 4:
        values = values.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(values.reshape(values.shape[0], -1))


def compose_path(chain, source_shape, structural: bool = False):
    """Compose the nodes of one path into a :class:`ConvOp` or :class:`MatrixOp`.

    ``chain`` holds nodes, or ``(node, input index)`` pairs (the input through which the
    path enters each node).  With ``structural=True`` every weight is replaced by one, so
    the result's non-zero pattern is the structural connectivity (no cancellation can hide
    a synapse).
    """
    op = identity(source_shape)
    for item in chain:
        node, index = item if isinstance(item, tuple) else (item, 0)
        compose = OPS[node.op].compose
        if compose is None:  # e.g. max pooling of the analog input: not linear, the executor evaluates it
            raise ConversionError(describe(f"node '{node.name}'", "an op that composes into a projection",
                                           repr(node.op)))
        op = compose(op, node, structural, index)
    return op


# --------------------------------------------------------------------------- network pieces
@dataclass
class Population:
    """Neurons that replaced one activation node (same name).

    Attributes
    ----------
    model : str
        Registered neuron model (:mod:`evsim.neurons`); ``params`` its scalar parameters,
        ``reset`` its reset rule (None for models without one).
    theta : ndarray (N,)
        Threshold per neuron, engine layout.
    unit : ndarray (C,)
        Payload of one spike count per channel (θ, θ/τ for Group Neurons, 1 for
        payload-one models), folded into the outgoing weights.
    kernel_theta : ndarray (N,)
        What the kernel receives as threshold (θ, or the payload unit for GN).
    param_values : ndarray (P, N)
        Every declared parameter per neuron, in declaration order.
    v0 : ndarray (N,)
        Initial potential per neuron, engine layout.
    count_range : (int, int)
        Smallest and largest count one neuron emits per step.
    """

    name: str
    model: str
    params: dict
    reset: str | None
    shape: Shape3
    theta: np.ndarray
    unit: np.ndarray
    kernel_theta: np.ndarray
    param_values: np.ndarray
    v0: np.ndarray
    input_node: str
    count_range: tuple[int, int] = (0, 1)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def tau(self) -> int:
        """Group Neuron members (1 for other models)."""
        return int(self.params.get("tau", 1))


@dataclass
class Gate:
    """Spiking max pooling after a population: a derived source of spike counts."""

    name: str
    parent: str
    population: str
    in_shape: Shape3
    out_shape: Shape3
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    unit: np.ndarray


class ConvGeometry(NamedTuple):
    """Where an implicit convolution reads and writes (engine layout, channels last)."""

    src_h: int
    src_w: int
    src_c: int
    crop_h: int
    crop_w: int
    out_h: int
    out_w: int
    out_c: int
    k_h: int
    k_w: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dil_h: int
    dil_w: int
    groups: int


@dataclass
class Projection:
    """Composed connectivity from one source (population, gate or the analog input) to one target.

    Weights are in engine layout with the source's payload unit folded in; ``fanout``
    counts structural synapses per source neuron.  Each kind is a subclass with its own
    :meth:`prepare`, which lays the weights out for its scatter kernel.
    """

    source: str
    target: str
    path: tuple[str, ...]
    fanout: np.ndarray

    kind = "abstract"

    def prepare(self, cast) -> tuple[Callable, tuple]:
        """``(scatter(ev_idx, ev_cnt, nev, current), weight arrays)`` in the dtype ``cast`` gives."""
        raise NotImplementedError


@dataclass
class ConvProjection(Projection):
    """An implicit convolution; ``weight`` (kH, kW, C_src, C_out/groups).

    With ``pool != (1, 1)`` the source is first summed over non-overlapping ``pool`` blocks (a
    composed average pooling, its ``1/k²`` folded into ``weight``), then convolved; ``geometry``
    then describes the convolution on the pooled grid (source shape and crop stay the source's).
    """

    weight: np.ndarray = None
    geometry: ConvGeometry = None
    pool: tuple[int, int] = (1, 1)

    kind = "conv"

    def prepare(self, cast):
        from . import _kernels as K
        from ._kernels import tuning

        g = self.geometry
        if g.groups == 1 and g.dil_h == g.dil_w == 1 and conv_kernel(g.src_c) == "gather":
            return self._prepare_gather(cast)
        if g.groups == 1 and g.dil_h == g.dil_w == 1:
            rows, taps_y, taps_x = K.conv_rows_layout(cast(self.weight), g.stride_h, g.stride_w)
            pool_h, pool_w = self.pool
            # weights larger than a core's L2 are scattered by blocks of source channels that fit
            c_block = g.src_c if rows.nbytes <= tuning.L2_BUDGET else max(1, tuning.L2_BUDGET * g.src_c // rows.nbytes)

            dense = _DensePath("conv", self.source, g.src_h * g.src_w * g.src_c)
            n_cols = g.k_h * g.k_w * g.src_c
            matrix = np.ascontiguousarray(cast(self.weight).reshape(n_cols, g.out_c))
            dense_rows = _conv_dense_rows(g, self.pool, [(0, matrix)])

            def scatter(ev_idx, ev_cnt, nev, current):
                items = len(nev)
                if dense.use(nev):
                    scatter.last = "dense"
                    dense.run(dense_rows, ev_idx, ev_cnt, nev, current, current, 1, g.out_h * g.out_w * n_cols)
                    return
                scatter.last = "scatter"
                bands = min(g.out_h, tuning.splits(items))  # few items (batch 1): split their output rows too
                block = c_block if items >= tuning.MIN_BLOCK_ITEMS else g.src_c
                K.scatter_conv_rows(ev_idx, ev_cnt, nev, rows, taps_y, taps_x, current, g.src_w, g.src_c, g.crop_h,
                                    g.crop_w, pool_h, pool_w, g.out_h, g.out_w, g.out_c, g.stride_h, g.stride_w,
                                    g.pad_h, g.pad_w, bands, block)
            scatter.last = "scatter"
            return scatter, (rows, matrix)
        # factor_pooling only pools groups-1, dilation-1 convolutions
        weight = cast(self.weight)

        def scatter(ev_idx, ev_cnt, nev, current):
            K.scatter_conv(ev_idx, ev_cnt, nev, weight, current, *g)
        return scatter, (weight,)

    def _prepare_gather(self, cast):
        """The output-stationary kernel (:mod:`evsim._kernels.gather`); it can also start from the
        constant current (``init``), which saves the engine's pre-load of the currents."""
        from . import _kernels as K
        from ._kernels import tuning

        g = self.geometry
        pool_h, pool_w = self.pool
        weight = K.gather_layout(cast(self.weight))
        grid_h, grid_w = -(-g.crop_h // pool_h), -(-g.crop_w // pool_w)
        seg = np.empty((0, g.src_h * g.src_w + 1), np.int64)  # each work item locates its events

        dense = _DensePath("conv", self.source, g.src_h * g.src_w * g.src_c)
        n_out, n_cols = g.out_h * g.out_w, g.k_h * g.k_w * g.src_c
        dense_rows = _conv_dense_rows(g, self.pool, _chunks(g.out_c, weight, n_cols))

        def gather(ev_idx, ev_cnt, nev, current, init=None, per_row=1):
            items = len(nev)
            if init is None:
                init, per_row = current, 1
            if dense.use(nev):
                gather.last = "dense"
                dense.run(dense_rows, ev_idx, ev_cnt, nev, current, init, per_row, n_out * n_cols)
                return
            gather.last = "scatter"
            bands = min(g.out_h, tuning.splits(items))  # few items (batch 1): split their output rows too
            K.gather_conv(ev_idx, ev_cnt, nev, seg, weight, init, per_row, current, g.src_w, g.src_c, g.crop_h,
                          g.crop_w, pool_h, pool_w, grid_h, grid_w, g.out_h, g.out_w, g.out_c, g.k_h, g.k_w,
                          g.stride_h, g.stride_w, g.pad_h, g.pad_w, bands)
        gather.fuses_init = True
        gather.last = "scatter"
        return gather, (weight,)


#: convolution kernels for groups-1, dilation-1 projections (``EVSIM_CONV_KERNEL``)
CONV_KERNELS = ("auto", "gather", "scatter")
#: "auto" gathers from sources with at least this many channels: an output pixel's visit of a
#: source pixel costs about as much as a dozen events, so the gather pays when a pixel holds
#: several events (measured, docs/performance.md: 16- and 32-channel sources are 1.5-2x faster
#: scattered, 64 and more 1.5-2.5x faster gathered, at 10 % firing)
GATHER_MIN_CHANNELS = 48


def conv_kernel(src_c: int) -> str:
    """The kernel of a groups-1, dilation-1 convolution from a source with ``src_c`` channels:
    ``"gather"`` (output-stationary, SIMD accumulators) or ``"scatter"`` (event-major, the scalar
    reference).  ``EVSIM_CONV_KERNEL=auto`` (default) chooses by :data:`GATHER_MIN_CHANNELS`."""
    import os

    name = os.environ.get("EVSIM_CONV_KERNEL", "auto").strip().lower() or "auto"
    if name not in CONV_KERNELS:
        raise ConversionError(describe("EVSIM_CONV_KERNEL", " or ".join(map(repr, CONV_KERNELS)), repr(name)))
    if name == "auto":
        return "gather" if src_c >= GATHER_MIN_CHANNELS else "scatter"
    return name


@dataclass
class _WeightProjection(Projection):
    """A projection whose kernel takes one weight array: ``K.<scatter>(events, weight, current)``."""

    weight: np.ndarray = None

    scatter = ""

    def prepare(self, cast):
        from . import _kernels as K

        kernel, weight = getattr(K, self.scatter), cast(self.weight)

        def scatter(ev_idx, ev_cnt, nev, current):
            kernel(ev_idx, ev_cnt, nev, weight, current)
        return scatter, (weight,)


@dataclass
class DiagonalProjection(_WeightProjection):
    """Same shape, neuron n feeds neuron n with ``weight[n]`` (e.g. a residual shortcut)."""

    kind = "diagonal"
    scatter = "scatter_diagonal"


@dataclass
class DenseProjection(_WeightProjection):
    """A dense matrix ``weight`` (N_src, N_dst)."""

    kind = "dense"
    scatter = "scatter_dense"

    def prepare(self, cast):
        from . import _kernels as K

        weight = cast(self.weight)
        dense = _DensePath("dense", self.source, weight.shape[0])

        def dense_rows(ev_idx, ev_cnt, nev, lo, hi, start, out):
            x = np.empty((hi - lo, weight.shape[0]), weight.dtype)
            K.events_to_dense(ev_idx, ev_cnt, nev, lo, x)
            np.add(start, x @ weight, out=out)

        def scatter(ev_idx, ev_cnt, nev, current):
            if dense.use(nev):
                scatter.last = "dense"
                dense.run(dense_rows, ev_idx, ev_cnt, nev, current, current, 1, weight.shape[0])
                return
            scatter.last = "scatter"
            K.scatter_dense(ev_idx, ev_cnt, nev, weight, current)
        scatter.last = "scatter"
        return scatter, (weight,)


@dataclass
class CSRProjection(Projection):
    """A sparse matrix in CSR form (rows: source neurons)."""

    indptr: np.ndarray = None
    indices: np.ndarray = None
    data: np.ndarray = None

    kind = "csr"

    def prepare(self, cast):
        from . import _kernels as K

        indptr, indices, data = self.indptr, self.indices, cast(self.data)

        def scatter(ev_idx, ev_cnt, nev, current):
            K.scatter_csr(ev_idx, ev_cnt, nev, indptr, indices, data, current)
        return scatter, (indptr, indices, data)


def _conv_dense_rows(g: ConvGeometry, pool, chunks):
    """The dense path of a convolution: ``rows(ev_idx, ev_cnt, nev, lo, hi, start, out)`` writes
    ``out = start + conv(items lo..hi-1)`` as im2col straight from the events, then one GEMM per
    chunk of output channels (``chunks``: ``(first channel, (k_h*k_w*src_c, width) matrix)``)."""
    from . import _kernels as K

    pool_h, pool_w = pool
    grid_h, grid_w = -(-g.crop_h // pool_h), -(-g.crop_w // pool_w)
    n_out, n_cols = g.out_h * g.out_w, g.k_h * g.k_w * g.src_c
    dtype = chunks[0][1].dtype

    def rows(ev_idx, ev_cnt, nev, lo, hi, start, out):
        cols = np.empty((hi - lo, n_out, n_cols), dtype)
        K.events_to_cols(ev_idx, ev_cnt, nev, lo, cols, g.src_w, g.src_c, g.crop_h, g.crop_w, pool_h, pool_w,
                         grid_h, grid_w, g.out_h, g.out_w, g.k_h, g.k_w, g.stride_h, g.stride_w, g.pad_h, g.pad_w)
        out = out.reshape(hi - lo, n_out, g.out_c)
        start = start.reshape(len(start), n_out, g.out_c)
        for c_lo, w in chunks:
            width = w.shape[1]
            np.add(start[..., c_lo:c_lo + width], np.matmul(cols, w), out=out[..., c_lo:c_lo + width])
    return rows


def _chunks(out_c: int, flat: np.ndarray, n_cols: int) -> list:
    """``(first channel, (n_cols, width) matrix view)`` of every chunk of a :func:`gather_layout` array."""
    from ._kernels.gather import chunk_width

    width = chunk_width(out_c, flat.itemsize)
    out, offset = [], 0
    for c_lo in range(0, out_c, width):
        w = min(width, out_c - c_lo)
        out.append((c_lo, flat[offset:offset + n_cols * w].reshape(n_cols, w)))
        offset += n_cols * w
    return out


def dense_enabled() -> bool:
    """Whether projections may switch to their dense path (``EVSIM_DENSE=0`` or ``--no-dense``: never)."""
    import os

    return os.environ.get("EVSIM_DENSE", "1").strip().lower() not in ("0", "no", "off", "false")


#: event density (events / (items x source neurons)) from which a projection computes its currents
#: densely (GEMM), per projection kind; measured with benchmarks/dense.py (docs/performance.md): on
#: the 2-vCPU AVX-512 machine the event path of a convolution stays faster up to 80 % (the
#: output-stationary kernel runs at ~18 GSOP/s per core, OpenBLAS sgemm at ~22 GMAC/s plus the
#: im2col), so convolutions go dense only when (nearly) every neuron has an event: the analog
#: input, whose every value is an event; a linear layer breaks even at 60-80 %
DENSE_BREAK_EVEN = {"conv": 0.9, "dense": 0.7}


class _DensePath:
    """The adaptive dense path of one projection: the choice per call, and the parallel GEMM run.

    A call whose event density reaches :data:`DENSE_BREAK_EVEN` is computed as GEMMs: items are
    split over Numba's thread count of Python threads, each turning its events into a dense
    operand (a Numba kernel, GIL released) and calling single-threaded BLAS (GIL released), so no
    BLAS thread pool ever spins against Numba's workers.  Results equal the event path within
    float rounding (a GEMM sums in its own order); exact-spike guarantees are the event path's.
    """

    def __init__(self, kind: str, source: str, n_src: int):
        self.kind, self.source, self.n_src = kind, source, n_src

    def use(self, nev) -> bool:
        if not dense_enabled():
            return False
        items = len(nev)
        return items > 0 and float(nev.sum()) >= DENSE_BREAK_EVEN[self.kind] * items * self.n_src

    def run(self, rows, ev_idx, ev_cnt, nev, current, init, per_row, per_item_elements):
        """``rows(ev_idx, ev_cnt, nev, lo, hi, start, out)`` over slices of items, in parallel threads;
        ``start`` holds the init rows of items lo..hi-1."""
        from .ann import blas_threads

        items = len(nev)
        # slices of at most ~2 MB of dense operand (it stays in L2 for its GEMM), at least one per thread
        step = max(1, min(-(-items // _pool_threads()), (2 << 20) // max(1, per_item_elements * current.itemsize)))

        def one(lo):
            hi = min(items, lo + step)
            if init is current:
                start = current[lo:hi]
            elif len(init) == 1:
                start = init  # broadcast
            else:
                start = init[(np.arange(lo, hi) // per_row) % len(init)]
            rows(ev_idx, ev_cnt, nev, lo, hi, start, current[lo:hi])

        with blas_threads(1):
            list(_pool().map(one, range(0, items, step)))


_POOL = None


def _pool_threads() -> int:
    import numba

    return numba.get_num_threads()


def _pool():
    """A thread pool for the dense path (created once; as many threads as Numba's)."""
    global _POOL
    from concurrent.futures import ThreadPoolExecutor

    if _POOL is None or _POOL._max_workers != _pool_threads():
        _POOL = ThreadPoolExecutor(_pool_threads(), thread_name_prefix="evsim-dense")
    return _POOL


@dataclass
class Network:
    """A compiled SNN: populations, gates, projections, and what stays constant."""

    graph: Graph
    populations: list[Population]
    gates: list[Gate]
    projections: list[Projection]
    output: str
    output_shape: tuple[int, ...]
    input_macs: int
    ann_macs: int
    input_projections: list[Projection] = field(default_factory=list)
    static_current: dict[str, np.ndarray] = field(default_factory=dict)
    forward_inputs: tuple[str, ...] = ()

    def population(self, name: str) -> Population:
        return next(p for p in self.populations if p.name == name)

    def targets(self) -> list[tuple[str, str, Shape3]]:
        """(target name, node whose value is its input current, shape) in processing order."""
        out = [(p.name, p.input_node, p.shape) for p in self.populations]
        return out + [(self.output, self.output, _shape3(self.output_shape))]

    def fanout(self, source: str) -> np.ndarray:
        """Total structural fan-out per neuron of a source over all its projections."""
        shape = self._source_shape(source)
        total = np.zeros(int(np.prod(shape)), dtype=np.int64)
        for proj in self.projections:
            if proj.source == source:
                total += proj.fanout
        return total

    def _source_shape(self, name: str) -> Shape3:
        for p in self.populations:
            if p.name == name:
                return p.shape
        return next(g.out_shape for g in self.gates if g.name == name)

    def constant_currents(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Constant current of the targets in ``forward_inputs`` for raw inputs ``x``.

        Those are the targets whose input path could not be composed into projections
        under the memory limit; the NumPy executor evaluates them (bias included), with all
        populations silent.  Returns target -> ``(B, N)`` float64 in engine layout.
        """
        if not self.forward_inputs:
            return {}
        zeros = {p.name: np.zeros((1,) + self.graph.node(p.name).shape) for p in self.populations}
        zeros.update({g.name: np.zeros((1,) + self.graph.node(g.name).shape) for g in self.gates})
        nodes = {target: node for target, node, _ in self.targets() if target in self.forward_inputs}
        values = forward(self.graph, x, wanted=list(nodes.values()), fixed=zeros)
        out = {}
        for target, node in nodes.items():
            value = np.broadcast_to(values[node], (len(x),) + values[node].shape[1:])
            out[target] = to_engine_layout(value.reshape((len(x),) + self.graph.shape_of(node)))
        return out


# --------------------------------------------------------------------------- compilation
def _classify(graph: Graph) -> dict[str, str]:
    """'const' (depends on the input only), 'population', 'gate' or 'linear' per node."""
    kind = {"input": "const"}
    for node in graph.nodes:
        where = f"{graph.source}, node '{node.name}'"
        if node.op == "neuron":
            kind[node.name] = "population"
        elif OPS[node.op].gate and kind[node.inputs[0]] in ("population", "gate"):
            kind[node.name] = "gate"
        elif all(kind[s] == "const" for s in node.inputs):
            kind[node.name] = "const"
        elif OPS[node.op].gate:
            raise ConversionError(describe(
                where, "max pooling directly after an activation (or on the analog input)",
                f"max pooling of '{node.inputs[0]}' ({graph.node(node.inputs[0]).op})",
                "for monotone activations pool after the activation instead: act(maxpool(x)) = maxpool(act(x))"))
        elif OPS[node.op].compose is None:
            carried = sorted(name for name, spec in OPS.items() if spec.compose is not None)
            raise ConversionError(describe(where, "an op the SNN can carry (" + ", ".join(carried) + ")",
                                           repr(node.op)))
        else:
            kind[node.name] = "linear"
    return kind


def _paths(graph: Graph, kind: dict, name: str) -> list[tuple[str, list]]:
    """Every (source, chain of (node, input index)) that carries spikes into node ``name``, and the
    paths from the analog input (source ``"input"``) through the nodes that depend on it alone."""
    if name == "input" or kind[name] in ("population", "gate"):
        return [(name, [])]
    node = graph.node(name)
    return [(src, chain + [(node, index)]) for index, inp in enumerate(node.inputs)
            for src, chain in _paths(graph, kind, inp)]


def _fanout(structural, shape: Shape3) -> np.ndarray:
    """Structural fan-out per source neuron (engine layout) of a composed operator."""
    if isinstance(structural, MatrixOp):
        m = structural.matrix
        counts = np.diff(sp.csr_matrix(m).indptr) if sp.issparse(m) else np.count_nonzero(m, axis=1)
        return np.asarray(counts, dtype=np.int64)[hwc_order(shape)]
    op = structural
    c, h, w = op.in_shape
    c_out, cig, kh, kw = op.weight.shape
    cog = c_out // op.groups
    support = (op.weight != 0).astype(np.int64)
    # per[c, ky, kx]: synapses of channel c per valid tap, summed over its group's outputs
    per = support.reshape(op.groups, cog, cig, kh, kw).sum(axis=1).reshape(c, kh, kw)

    def valid(size, crop, k, s, p, d, out):
        pos = np.arange(size)[None, :] + p - np.arange(k)[:, None] * d
        ok = (pos % s == 0) & (pos // s >= 0) & (pos // s < out) & (np.arange(size)[None, :] < crop)
        return ok.astype(np.int64)  # (k, size)

    vy = valid(h, op.crop[0], kh, op.stride[0], op.padding[0], op.dilation[0], op.out_shape[1])
    vx = valid(w, op.crop[1], kw, op.stride[1], op.padding[1], op.dilation[1], op.out_shape[2])
    fan = np.einsum("ckl,ky,lx->yxc", per, vy, vx)
    return np.ascontiguousarray(fan.reshape(-1), dtype=np.int64)


def _block_factor(weight: np.ndarray, axis: int, k: int, s: int, p: int) -> int:
    """Largest q > 1 dividing kernel size, stride and padding along ``axis`` (2: y, 3: x)
    such that the kernel is constant over aligned blocks of q taps; 1 if there is none."""
    for q in range(min(k, s), 1, -1):
        if k % q or s % q or p % q:
            continue
        shape = weight.shape[:axis] + (k // q, q) + weight.shape[axis + 1:]
        blocks = weight.reshape(shape)
        if np.array_equal(blocks, np.broadcast_to(np.take(blocks, [0], axis=axis + 1), shape)):
            return q
    return 1


def factor_pooling(op: ConvOp) -> tuple[tuple[int, int], ConvOp]:
    """Split a convolution whose kernel is constant over aligned q×q blocks into a sum pooling
    over q×q blocks followed by a convolution with the q-times smaller kernel, stride and padding.

    This undoes the weight blow-up of composing an average pooling (kernel = stride = q) into
    the next convolution: ``avgpool 2×2 → conv 3×3`` composes into a 6×6 stride-2 kernel with
    4× the weights, but equals "sum the 2×2 block, then the 3×3 conv with weights w/4".  Exact:
    the composed kernel reads source position ``(oy·s' − p' + j)·q + r`` with weight ``w[j]`` for
    every ``r < q``, which is the block sum at pooled position ``oy·s' − p' + j``; positions past
    ``crop`` are zero in both forms, and the pooled grid has ``ceil(crop/q)`` positions.

    Returns ``((q_h, q_w), op)``, with ``(1, 1)`` and the op unchanged when nothing factors.
    """
    if op.groups != 1 or op.dilation != (1, 1):
        return (1, 1), op
    kh, kw = op.weight.shape[2:]
    qh = _block_factor(op.weight, 2, kh, op.stride[0], op.padding[0])
    qw = _block_factor(op.weight, 3, kw, op.stride[1], op.padding[1])
    if qh == qw == 1:
        return (1, 1), op
    grid = (op.in_shape[0], -(-op.crop[0] // qh), -(-op.crop[1] // qw))
    reduced = ConvOp(np.ascontiguousarray(op.weight[:, :, ::qh, ::qw]), 1,
                     (op.stride[0] // qh, op.stride[1] // qw), (op.padding[0] // qh, op.padding[1] // qw),
                     (1, 1), grid, grid[1:], op.out_shape)
    return (qh, qw), reduced


def _projection(source: str, target: str, chain, src_shape: Shape3, unit: np.ndarray) -> Projection:
    op = compose_path(chain, src_shape)
    structural = compose_path(chain, src_shape, structural=True)
    fanout = _fanout(structural, src_shape)
    path = tuple(n.name for n, _ in chain)
    if is_diagonal(op):  # a residual shortcut: current[n] += k * w[n]
        weight = np.tile(op.weight.reshape(-1) * unit, op.in_shape[1] * op.in_shape[2])
        return DiagonalProjection(source, target, path, fanout, weight)
    if isinstance(op, ConvOp):
        pool, reduced = factor_pooling(op)
        crop = op.crop
        op = reduced
        c_out, cig, kh, kw = op.weight.shape
        c_in, g = op.in_shape[0], op.groups
        # (C_out, cig, kh, kw) -> (kh, kw, C_in, C_out/g): row [ky, kx, c] feeds one group's outputs
        w = op.weight.reshape(g, c_out // g, cig, kh, kw).transpose(3, 4, 0, 2, 1).reshape(kh, kw, c_in, c_out // g)
        w = w * unit[None, None, :, None]
        geometry = ConvGeometry(*src_shape[1:], c_in, *crop, *op.out_shape[1:], c_out, kh, kw,
                                *op.stride, *op.padding, *op.dilation, g)
        return ConvProjection(source, target, path, fanout, np.ascontiguousarray(w), geometry, pool)
    rows, cols = hwc_order(op.in_shape), hwc_order(op.out_shape)
    scale = np.tile(unit, op.in_shape[1] * op.in_shape[2])  # engine layout: channel = n % C
    if sp.issparse(op.matrix):
        m = sp.csr_matrix(op.matrix)[rows][:, cols]
        m = sp.csr_matrix(sp.diags(scale) @ m)
        m.sort_indices()
        return CSRProjection(source, target, path, fanout, m.indptr.astype(np.int64), m.indices.astype(np.int64),
                             m.data)
    m = np.asarray(op.matrix)[rows][:, cols] * scale[:, None]
    return DenseProjection(source, target, path, fanout, np.ascontiguousarray(m))


def _per_neuron(value: np.ndarray, shape: Shape3) -> np.ndarray:
    """A scalar, per-channel or full-shape (channels-first) parameter -> per neuron, engine layout."""
    c, h, w = shape
    value = np.asarray(value, dtype=np.float64)
    if value.ndim <= 1:
        full = np.broadcast_to(value.reshape(-1, 1, 1) if value.ndim else value, (c, h, w))
    else:
        full = value.reshape(c, h, w)
    return np.ascontiguousarray(full.transpose(1, 2, 0).reshape(-1))


def _population(node) -> Population:
    """A neuron node as a population: parameters per neuron, in engine layout."""
    model = get_model(node.attrs["model"], f"node '{node.name}'")
    shape = _shape3(node.shape)
    params = {k: node.attrs[k] for k in model.params if k in node.attrs}
    threshold = node.arrays["threshold"].astype(np.float64)
    theta = _per_neuron(threshold, shape)
    if model.payload == "one":
        unit = np.ones(shape[0])
        kernel_theta = theta
    else:  # θ is scalar or per channel here (validation): the payload folds into the weights per channel
        unit = model.unit(np.broadcast_to(threshold, (shape[0],)).copy(), params)
        kernel_theta = _per_neuron(unit, shape) if model.step_threshold == "unit" else theta
    values = np.zeros((len(model.params), int(np.prod(shape))))
    for i, (name, param) in enumerate(model.params.items()):
        value = node.arrays[name] if name in node.arrays else np.asarray(float(node.attrs.get(name, param.default)))
        values[i] = _per_neuron(value, shape)
    return Population(node.name, model.name, params, node.attrs.get("reset"), shape, theta, unit, kernel_theta,
                      values, _per_neuron(node.arrays["v0"], shape), node.inputs[0], model.count_range(params))


def compile_network(graph: Graph) -> Network:
    """Compile a validated SNN graph (kind "snn") into a :class:`Network`.

    Raises
    ------
    ConversionError
        An ANN graph (convert it first), a max pooling that is not right after an
        activation, or a composition too large for the memory limit.
    """
    if graph.kind != "snn":
        raise ConversionError(describe(graph.source, "an SNN graph (kind 'snn')", f"kind {graph.kind!r}",
                                       "convert it first with evsim.convert(graph)"))
    kind = _classify(graph)
    if kind[graph.output] == "gate":
        raise ConversionError(describe(f"{graph.source}, output '{graph.output}'", "a linear output node",
                                       "a max pooling of spikes"))
    populations: list[Population] = []
    units: dict[str, np.ndarray] = {}
    gates: list[Gate] = []
    for node in graph.nodes:
        if kind[node.name] == "population":
            population = _population(node)
            populations.append(population)
            units[node.name] = population.unit
        elif kind[node.name] == "gate":
            parent = node.inputs[0]
            root = next((g.population for g in gates if g.name == parent), parent)
            a = node.attrs
            gates.append(Gate(node.name, parent, root, _shape3(graph.shape_of(parent)), _shape3(node.shape),
                              tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"]), units[parent]))
            units[node.name] = units[parent]

    network = Network(graph, populations, gates, [], graph.output, tuple(graph.node(graph.output).shape),
                      input_macs=0, ann_macs=0)
    shapes = {p.name: p.shape for p in populations} | {g.name: g.out_shape for g in gates}
    input_shape = _shape3(graph.input.shape)
    forward_inputs = []
    for target, input_node, _ in network.targets():
        from_input = []
        for source, chain in _paths(graph, kind, input_node):
            if source != "input":
                network.projections.append(_projection(source, target, chain, shapes[source], units[source]))
            elif target not in forward_inputs:
                try:  # the analog input is a source whose payload is the (preprocessed) value
                    from_input.append(_projection(source, target, chain, input_shape, np.ones(input_shape[0])))
                except ConversionError:  # over the memory limit, or not linear (max pooling): the executor does it
                    forward_inputs.append(target)
        if target not in forward_inputs:
            network.input_projections += from_input
    network.forward_inputs = tuple(forward_inputs)

    for node in graph.nodes:
        macs = node_macs(node, [graph.shape_of(s) for s in node.inputs])
        network.ann_macs += macs
        if kind[node.name] == "const":
            network.input_macs += macs
    # bias and everything else that depends on neither input nor spikes: computed once
    zeros = {s: np.zeros((1,) + graph.node(s).shape) for s in shapes}
    values = forward(graph, np.zeros((1,) + tuple(graph.input.shape)), preprocessed=True,
                     wanted=sorted({node for _, node, _ in network.targets()}), fixed=zeros)
    for target, node, _ in network.targets():
        network.static_current[target] = to_engine_layout(values[node].reshape((1,) + graph.shape_of(node)))[0]
    return network
