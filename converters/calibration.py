"""Calibration of an ANN -> SNN conversion from data (methods.md section 4).

Three independent steps, all driven by :func:`calibrate`:

1. **Thresholds** (Rueckauer et al. 2017, SNN Toolbox): θ = a statistic (``max`` or a
   percentile ``pXX.X``) of each activation's ANN values over a calibration set,
   per layer or per channel, streamed in batches with bounded memory
   (:func:`threshold_statistics`).  Percentiles are taken over the **non-zero**
   values only, as the SNN Toolbox does (``include_zeros=False``).
2. **Initial potentials**: ``half`` (OPI, v0 = one payload unit / 2), ``zero``, or
   ``data`` (Li et al. 2021, SNNC-AP): per neuron, layer by layer,
   ``v0 <- v0 + T·(mean_n a - mean_n r/T)``.
3. **Bias calibration** (same paper): per channel,
   ``b_c <- b_c - (mean_{n,h,w} r/T - mean_{n,h,w} a)``.

Here ``a`` is the ANN activation and ``r`` the SNN's spike payload summed over the T
steps.  Everything chosen is recorded in ``metadata["calibration"]`` of the SNN graph.
See ``docs/calibration.md`` for the equations and the estimator's error bound.
"""
from __future__ import annotations

import copy
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from evsim.ann import forward
from evsim.convert import ConversionOptions, convert
from evsim.ops import OPS
from evsim.data_io import check_data
from evsim.errors import CalibrationError, describe
from evsim.graph import Graph, Node, relu_caps, validate

__all__ = [
    "calibrate",
    "threshold_statistics",
    "ThresholdStatistics",
    "Statistic",
    "parse_statistic",
    "percentile_error_bound",
    "CalibrationWarning",
    "STATISTICS",
    "POTENTIALS",
    "BINS_PER_OCTAVE",
    "OCTAVES",
    "EXACT_BUDGET",
    "DATA_SAMPLES",
]

#: histogram resolution: bins per factor of 2 (relative bin width 2**(1/B) - 1)
BINS_PER_OCTAVE = 128
#: histogram range below the running maximum, in factors of 2; smaller values share one underflow bin
OCTAVES = 32
#: non-zero values kept exactly (float64) over all layers before a layer switches to its histogram
EXACT_BUDGET = 2**24
#: samples of the one batch used by data-driven potential and bias calibration
DATA_SAMPLES = 128
#: at most this many layers are listed one by one in metadata["calibration"]["layers"]
_LAYERS_IN_METADATA = 64
_PROBE = "__calibration_probe__"


class CalibrationWarning(UserWarning):
    """Something calibration worked around (e.g. a channel that never activates)."""


def percentile_error_bound(bins_per_octave: int = BINS_PER_OCTAVE) -> float:
    """Largest relative error of a percentile estimated from the histogram.

    Every order statistic is replaced by the geometric centre of its log-spaced bin
    (width ratio ``2**(1/B)``), so it is off by at most a factor ``2**(1/(2B))``;
    linear interpolation between two such estimates keeps that factor.  Values in the
    underflow bin (below ``max·2**-OCTAVES``) are the exception: there the error is
    absolute, below ``2**(1/B - OCTAVES)·max``.

    Returns
    -------
    float
        ``2**(1/(2B)) - 1`` (0.27 % for B = 128).
    """
    return 2.0 ** (0.5 / bins_per_octave) - 1.0


# --------------------------------------------------------------------------- statistic names
@dataclass(frozen=True)
class Statistic:
    """A threshold statistic: ``method`` is a key of :data:`STATISTICS`."""

    name: str
    method: str
    q: float | None = None


_PERCENTILE = re.compile(r"p([0-9]{1,20}(?:\.[0-9]{0,20})?|\.[0-9]{1,20})", re.ASCII)  # ASCII digits only


def parse_statistic(text: str) -> Statistic:
    """``"max"`` or ``"pXX.X"`` (a percentile in (0, 100]) -> :class:`Statistic`.

    Raises
    ------
    CalibrationError
        Anything else, with the accepted forms in the message.
    """
    expected = "'max' or a percentile 'pXX.X' with 0 < XX.X <= 100, e.g. 'p99.9' or 'p99.99'"
    if not isinstance(text, str):
        raise CalibrationError(describe("threshold", expected, repr(text)))
    key = text.strip().lower()
    if key == "max":
        return Statistic("max", "max")
    match = _PERCENTILE.fullmatch(key)
    if match is None or not 0 < float(match.group(1)) <= 100:
        raise CalibrationError(describe("threshold", expected, repr(text)))
    return Statistic(key, "percentile", float(match.group(1)))


# --------------------------------------------------------------------------- streaming collector
def _lerp(a, b, t):
    """NumPy's own linear interpolation (``np.percentile(method="linear")``), for equal results."""
    return np.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t)


class _Collector:
    """The values of one activation, streamed batch by batch, in ``G`` groups.

    ``G`` is 1 (layer-wise) or the number of channels.  Only counts, extremes and the
    positive values are kept: exactly (float64) while ``stored <= budget``, then in a
    fixed-size log-spaced histogram per group: ``G × (bins + 1)`` int64 counts, bin
    ``k`` of the absolute grid holding ``[2**(k/B), 2**((k+1)/B))``.  Each group's
    window covers the top ``OCTAVES`` octaves below its running maximum plus one
    underflow bin (column 0); a new maximum slides the window, which is exact because
    bins lie on one absolute grid (no re-distribution of counts).
    """

    def __init__(self, groups: int, budget: int, bins_per_octave: int, octaves: int):
        self.groups, self.budget = groups, budget
        self.b, self.nbins = bins_per_octave, bins_per_octave * octaves
        self.count = np.zeros(groups, np.int64)
        self.positive = np.zeros(groups, np.int64)
        self.max = np.zeros(groups)
        self.min = np.full(groups, np.inf)  # smallest positive value
        # exact storage: (positive values grouped by g, per-group count, per-group start)
        self.chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.stored = 0
        self.hist: np.ndarray | None = None
        self.top: np.ndarray | None = None  # absolute bin index of each window's highest bin

    @property
    def estimator(self) -> str:
        return "exact" if self.hist is None else "histogram"

    def add(self, values: np.ndarray) -> None:
        """Add a ``(G, M)`` block of non-negative values."""
        if values.shape[1] == 0:
            return
        mask = values > 0
        pos = mask.sum(axis=1)
        self.count += values.shape[1]
        self.positive += pos
        np.maximum(self.max, values.max(axis=1), out=self.max)
        np.minimum(self.min, np.where(mask, values, np.inf).min(axis=1), out=self.min)
        vals = values[mask]  # row-major: grouped by g
        if self.hist is None:
            self.chunks.append((vals, pos, np.cumsum(pos) - pos))
            self.stored += vals.size
            if self.stored > self.budget:
                self._to_histogram()
        else:
            self._slide()
            self._bin(vals, pos)

    # -- histogram
    def _bin_index(self, v: np.ndarray) -> np.ndarray:
        return np.floor(np.log2(v) * self.b).astype(np.int64)

    def _to_histogram(self) -> None:
        self.hist = np.zeros((self.groups, self.nbins + 1), np.int64)
        self.top = np.full(self.groups, np.iinfo(np.int64).min)
        self._slide()
        for vals, pos, _ in self.chunks:
            self._bin(vals, pos)
        self.chunks, self.stored = [], 0

    def _slide(self) -> None:
        """Move each group's window up to its running maximum; what drops out joins the underflow."""
        seen = self.max > 0
        new_top = np.where(seen, self._bin_index(np.where(seen, self.max, 1.0)), self.top)
        for g in np.flatnonzero(new_top > self.top):
            shift = int(new_top[g] - self.top[g]) if self.top[g] != np.iinfo(np.int64).min else 0
            row = self.hist[g]
            if shift >= self.nbins:
                row[0] += row[1:].sum()
                row[1:] = 0
            elif shift:
                row[0] += row[1:1 + shift].sum()
                row[1:-shift] = row[1 + shift:].copy()
                row[-shift:] = 0
        self.top = new_top

    def _bin(self, vals: np.ndarray, pos: np.ndarray) -> None:
        if vals.size == 0:
            return
        g = np.repeat(np.arange(self.groups), pos)
        low = self.top - self.nbins + 1
        local = self._bin_index(vals) - low[g] + 1  # column 1.. in the window, <= 0: underflow
        np.maximum(local, 0, out=local)
        flat = g * (self.nbins + 1) + np.minimum(local, self.nbins)  # min(): guards a rounding tie at the top
        self.hist += np.bincount(flat, minlength=self.hist.size).reshape(self.hist.shape)

    # -- order statistics and percentiles
    def _positive_order_stats(self, g: int, ranks: np.ndarray) -> np.ndarray:
        """Values of the given 0-based ranks among the positive values of group ``g``."""
        n = int(self.positive[g])
        if self.hist is None:
            values = np.concatenate([vals[start[g]:start[g] + pos[g]] for vals, pos, start in self.chunks])
            return np.partition(values, np.unique(ranks))[ranks]
        cum = np.cumsum(self.hist[g])
        col = np.searchsorted(cum, ranks, side="right")
        low = self.top[g] - self.nbins + 1
        centre = 2.0 ** ((low + col - 1 + 0.5) / self.b)
        underflow = np.sqrt(self.min[g] * 2.0 ** (low / self.b))  # geometric middle of [min, window floor)
        est = np.clip(np.where(col == 0, underflow, centre), self.min[g], self.max[g])
        # the extremes are tracked exactly
        est = np.where(ranks == n - 1, self.max[g], est)
        return np.where(ranks == 0, self.min[g], est)

    def percentile(self, q: float, include_zeros: bool) -> np.ndarray:
        """Per-group percentile ``q`` (NumPy's ``linear`` method); 0 for an empty group."""
        out = np.zeros(self.groups)
        zeros = self.count - self.positive
        for g in range(self.groups):
            n_zero = int(zeros[g]) if include_zeros else 0
            n = n_zero + int(self.positive[g])
            if self.positive[g] == 0:
                continue
            h = (n - 1) * (q / 100.0)
            lo = int(math.floor(h))
            ranks = np.array([lo, min(lo + 1, n - 1)])
            vals = np.zeros(2)
            mine = ranks >= n_zero  # the first n_zero ranks are the zeros
            if mine.any():
                vals[mine] = self._positive_order_stats(g, ranks[mine] - n_zero)
            out[g] = _lerp(vals[0], vals[1], h - lo)
        return out

    def merged(self) -> "_Collector":
        """All groups as one (the layer statistic of a channel-wise collector), same estimator."""
        one = _Collector(1, self.budget, self.b, self.nbins // self.b)
        one.count, one.positive = self.count.sum(keepdims=True), self.positive.sum(keepdims=True)
        one.max, one.min = self.max.max(keepdims=True), self.min.min(keepdims=True)
        if self.hist is None:
            vals = [v for v, _, _ in self.chunks]
            one.chunks = [(np.concatenate(vals) if vals else np.zeros(0), one.positive.copy(), np.zeros(1, np.int64))]
            return one
        # windows share the absolute grid: align each group's window to the highest one
        one.hist = np.zeros((1, self.nbins + 1), np.int64)
        one.top = np.array([self.top.max()])
        for g in np.flatnonzero(self.positive):
            shift = int(one.top[0] - self.top[g])
            row = self.hist[g]
            one.hist[0, 0] += row[0] + row[1:1 + min(shift, self.nbins)].sum()
            if shift < self.nbins:
                one.hist[0, 1:self.nbins + 1 - shift] += row[1 + shift:]
        return one


def _max(collector: _Collector, stat: Statistic, include_zeros: bool) -> np.ndarray:
    return collector.max.copy()


def _percentile(collector: _Collector, stat: Statistic, include_zeros: bool) -> np.ndarray:
    return collector.percentile(stat.q, include_zeros)


#: statistic method -> per-group value of a collector
STATISTICS: dict[str, Callable[[_Collector, Statistic, bool], np.ndarray]] = {
    "max": _max,
    "percentile": _percentile,
}


# --------------------------------------------------------------------------- what is recorded
def _relu_source(node: Node) -> tuple[str, Callable]:
    return node.name, lambda v: v  # the ReLU output max(z, 0)


def _qcfs_source(node: Node) -> tuple[str, Callable]:
    return node.inputs[0], lambda v: np.maximum(v, 0)  # pre-activation clipped at 0: λ is being replaced


#: ANN op -> (node whose value is recorded, transform) for threshold statistics
RECORDED: dict[str, Callable[[Node], tuple[str, Callable]]] = {"relu": _relu_source, "qcfs": _qcfs_source}


def _calibrated_nodes(graph: Graph, override_qcfs: bool) -> list[Node]:
    ops = {"relu", "qcfs"} if override_qcfs else {"relu"}
    return [n for n in graph.nodes if n.op in ops]


def _groups(value: np.ndarray, channelwise: bool) -> np.ndarray:
    """A batch ``(B, C, ...)`` -> ``(G, M)``: one row per channel, or a single row."""
    if not channelwise:
        return value.reshape(1, -1)
    return np.moveaxis(value, 1, 0).reshape(value.shape[1], -1)


@dataclass
class ThresholdStatistics:
    """What :func:`threshold_statistics` measured.

    Attributes
    ----------
    statistic : Statistic
    values : dict of str to ndarray
        The raw statistic by activation name: shape ``()`` layer-wise or ``(C,)``
        channel-wise; 0 where a group had nothing to measure.
    thresholds : dict of str to ndarray
        ``values`` with every non-positive entry replaced by a safe positive one.
    estimator : dict of str to str
        ``"exact"`` or ``"histogram"`` per activation.
    warnings : list of str
        One line per replacement made.
    samples : int
    """

    statistic: Statistic
    values: dict[str, np.ndarray]
    thresholds: dict[str, np.ndarray]
    estimator: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    samples: int = 0


def threshold_statistics(graph: Graph, x: np.ndarray, statistic: str | Statistic = "p99.9", *,
                         channelwise: bool = False, include_zeros: bool = False, override_qcfs: bool = False,
                         batch_size: int = 256, exact_budget: int = EXACT_BUDGET,
                         bins_per_octave: int = BINS_PER_OCTAVE, octaves: int = OCTAVES,
                         progress: Callable[[str], None] | None = None) -> ThresholdStatistics:
    """Stream a calibration set through the ANN and take a threshold statistic per activation.

    Recorded: the output ``max(z, 0)`` of every ``relu``, and with ``override_qcfs``
    the pre-activation of every ``qcfs`` clipped at 0 (its λ is being replaced, so the
    quantised output would only reproduce λ).

    Parameters
    ----------
    graph : Graph
        A validated ANN graph.
    x : ndarray, (N, *input.shape)
        Raw calibration inputs (the graph's preprocessing is applied).
    statistic : str or Statistic
        ``"max"`` or ``"pXX.X"`` (see :func:`parse_statistic`).
    channelwise : bool
        One statistic per output channel (feature, for flat layers) instead of per layer.
    include_zeros : bool
        Count zeros in the percentile.  Default False: only the non-zero values, as the
        SNN Toolbox does (a ReLU layer is often mostly zeros, which would drag every
        percentile towards 0).
    override_qcfs : bool
        Also calibrate ``qcfs`` nodes (replacing their trained λ).
    batch_size : int
        Samples per forward pass; peak memory is about ``batch_size`` times every
        node's values of one sample, 8 bytes each.
    exact_budget : int
        Non-zero values kept exactly, over all layers, split in proportion to layer
        size; past its share a layer switches to a fixed-size log-spaced histogram.
    bins_per_octave, octaves : int
        Histogram resolution and range; relative error bound
        :func:`percentile_error_bound` ``(bins_per_octave)``.

    Returns
    -------
    ThresholdStatistics
    """
    stat = statistic if isinstance(statistic, Statistic) else parse_statistic(statistic)
    _check_int("batch_size", batch_size, 1)
    _check_int("exact_budget", exact_budget, 0)
    _check_int("bins_per_octave", bins_per_octave, 1)
    _check_int("octaves", octaves, 1)
    nodes = _calibrated_nodes(graph, override_qcfs)
    sources = {n.name: RECORDED[n.op](n) for n in nodes}
    sizes = {n.name: int(np.prod(n.shape)) for n in nodes}
    total = sum(sizes.values()) or 1
    collectors = {
        n.name: _Collector(n.shape[0] if channelwise else 1, int(exact_budget * sizes[n.name] / total),
                           bins_per_octave, octaves)
        for n in nodes
    }
    wanted = sorted({src for src, _ in sources.values()})
    for start in range(0, len(x), batch_size):
        values = forward(graph, x[start:start + batch_size], wanted=wanted) if wanted else {}
        for name, (src, transform) in sources.items():
            collectors[name].add(_groups(transform(values[src]), channelwise))
        del values
        if progress is not None:
            progress(f"threshold statistics: {min(start + batch_size, len(x)):,}/{len(x):,} samples")

    result = ThresholdStatistics(stat, {}, {}, {}, samples=len(x))
    for name, col in collectors.items():
        raw = STATISTICS[stat.method](col, stat, include_zeros)
        theta = _safe_thresholds(name, raw, col, stat, include_zeros, result.warnings)
        shape = () if not channelwise else raw.shape
        result.values[name] = raw.reshape(shape)
        result.thresholds[name] = theta.reshape(shape)
        result.estimator[name] = col.estimator
    for line in result.warnings:
        warnings.warn(line, CalibrationWarning, stacklevel=2)
    return result


def _safe_thresholds(name: str, raw: np.ndarray, col: _Collector, stat: Statistic, include_zeros: bool,
                     notes: list[str]) -> np.ndarray:
    """Replace every threshold <= 0 (never 0: a neuron with θ = 0 fires at every step).

    Fallbacks, in order: the group's own maximum (the percentile landed on zeros,
    ``include_zeros`` only); the layer statistic; the layer maximum; 1.0.
    """
    theta = raw.astype(np.float64).copy()
    bad = ~(theta > 0)
    if not bad.any():
        return theta
    own = bad & (col.max > 0)
    theta[own] = col.max[own]
    if own.any():
        notes.append(f"node '{name}': {_which(own, col.groups)} {stat.name} of 0 (mostly zeros, include_zeros): "
                     "threshold set to its maximum")
    dead = bad & ~own
    if dead.any():
        layer = col.merged() if col.groups > 1 else col
        fallbacks = [(float(STATISTICS[stat.method](layer, stat, include_zeros)[0]), f"the layer's {stat.name}")]
        fallbacks += [(float(layer.max[0]), "the layer maximum"), (1.0, "1.0")]
        value, label = next((v, lab) for v, lab in fallbacks if v > 0)
        theta[dead] = value
        notes.append(f"node '{name}': {_which(dead, col.groups)} no positive activation on the calibration data: "
                     f"threshold set to {label} ({value:.6g})")
    return theta


def _which(mask: np.ndarray, groups: int) -> str:
    if groups == 1:
        return "layer with"
    idx = np.flatnonzero(mask)
    shown = ", ".join(map(str, idx[:8])) + (", ..." if len(idx) > 8 else "")
    return f"{len(idx)} channel(s) ({shown}) with"


# --------------------------------------------------------------------------- potentials and bias
@dataclass(frozen=True)
class PotentialMethod:
    """``v0`` is the :class:`~evsim.convert.ConversionOptions` start; ``data`` adds the per-neuron correction."""

    v0: str
    data: bool


#: potential name -> how it is obtained
POTENTIALS: dict[str, PotentialMethod] = {
    "half": PotentialMethod("half", False),  # OPI: half a payload unit (θ/2, GN: θ/(2τ))
    "zero": PotentialMethod("zero", False),
    "data": PotentialMethod("half", True),  # SNNC-AP, starting from OPI
}


def _ann_targets(ann: Graph, x: np.ndarray, names: list[str], thresholds: Mapping[str, np.ndarray],
                 overridden: set[str]) -> dict[str, np.ndarray]:
    """The ANN value each population should reproduce, by population name.

    relu: its output max(z, 0); qcfs: its output with the trained λ, or clip(z, 0, θ)
    when its threshold was recalibrated.
    """
    nodes = {n: ann.node(n) for n in names}
    src = {n: node.inputs[0] if n in overridden else n for n, node in nodes.items()}
    values = forward(ann, x, wanted=sorted(set(src.values())))
    out = {}
    for name in names:
        v = values[src[name]]
        if name in overridden:
            theta = np.asarray(thresholds[name], dtype=np.float64)
            v = np.clip(v, 0, _channel(theta, v.ndim))
        out[name] = v
    return out


def _channel(param: np.ndarray, ndim: int) -> np.ndarray:
    """Broadcast a scalar or per-channel parameter along axis 1 of a batch of ``ndim`` dims."""
    param = np.asarray(param)
    return param.reshape((1, -1) + (1,) * (ndim - 2)) if param.ndim == 1 else param


def _bias_target(snn: Graph, name: str) -> tuple[Node, str]:
    """The node (and array role) whose per-channel shift moves population ``name``'s input.

    The closest conv2d/linear/batchnorm upstream through shift-transparent ops, every
    node on the way used by this path only; a tie at the closest distance is ambiguous.
    """
    users = snn.consumers()
    level, seen = [snn.node(name).inputs[0]], set()
    where = f"{snn.source}, node '{name}'"
    while level:
        found, following = [], []
        for src in level:
            if src == "input" or src in seen:
                continue
            seen.add(src)
            node = snn.node(src)
            if len(users[src]) != 1:
                continue  # shifting it would also move its other consumers
            spec = OPS[node.op]
            if spec.bias_role is not None:
                found.append(node)
            elif spec.shift is not None and spec.shift(node):  # output moves by exactly δ_c with its input
                following.extend(node.inputs)
        if len(found) == 1:
            return found[0], OPS[found[0].op].bias_role
        if found:
            raise CalibrationError(describe(
                where, "one closest conv2d/linear/batchnorm feeding it, for bias calibration",
                "several at the same distance: " + ", ".join(f"'{n.name}'" for n in found),
                "turn bias calibration off (CLI: drop --bias-calibration); --potential data corrects per neuron"))
        level = following
    raise CalibrationError(describe(
        where, "a conv2d/linear/batchnorm (used by this path only) feeding it, for bias calibration",
        f"none upstream of '{snn.node(name).inputs[0]}'",
        "turn bias calibration off (CLI: drop --bias-calibration)"))


def _probe(snn: Graph, name: str) -> Graph:
    """The part of ``snn`` that population ``name`` depends on, with its spikes as output."""
    needed = {name}
    for node in reversed(snn.nodes):
        if node.name in needed:
            needed.update(node.inputs)
    nodes = [copy.copy(n) for n in snn.nodes if n.name in needed]  # arrays are shared, not copied
    nodes.append(Node(_PROBE, "flatten", (name,)))
    return validate(Graph(snn.input, nodes, _PROBE, kind="snn", source=snn.source))


def _snn_rate(snn: Graph, name: str, x: np.ndarray, T: int) -> np.ndarray:
    """Mean payload per step ``r/T`` of each neuron of population ``name``, ``(B, *shape)``, float64."""
    from evsim.compile import compile_network  # the engine needs Numba: import only when simulating
    from evsim.engine import Simulator

    network = compile_network(_probe(snn, name))
    counts = Simulator(network, np.float64).run_batch(x, T, record=(name,)).recorded[name]
    unit = network.population(name).unit
    return counts * _channel(unit, counts.ndim) / T


def _channel_mean(v: np.ndarray) -> np.ndarray:
    return v.mean(axis=(0,) + tuple(range(2, v.ndim)))


def _data_calibration(ann: Graph, snn: Graph, x: np.ndarray, T: int, *, potential: bool, bias: bool,
                      overridden: set[str], progress: Callable[[str], None] | None = None) -> None:
    """Bias then potential calibration, population by population in topological order, in place."""
    pops = [n for n in snn.nodes if n.op == "neuron"]
    targets_of = {p.name: _bias_target(snn, p.name) for p in pops} if bias else {}  # fail before simulating
    thresholds = {p.name: p.arrays["threshold"] for p in pops}
    ann_values = _ann_targets(ann, x, [p.name for p in pops], thresholds, overridden)
    for i, pop in enumerate(pops):
        if progress is not None:
            what = " and ".join(w for w, on in (("bias", bias), ("potential", potential)) if on)
            progress(f"{what} calibration at T={T}: layer {pop.name} ({i + 1}/{len(pops)})")
        a = ann_values[pop.name]
        if bias:
            node, role = targets_of[pop.name]
            delta = _channel_mean(_snn_rate(snn, pop.name, x, T) - a)
            old = node.arrays.get(role, np.zeros(len(delta)))
            node.arrays[role] = old.astype(np.float64) - delta
        if potential:
            rate = _snn_rate(snn, pop.name, x, T)  # again: it sees the bias just calibrated
            shape = tuple(pop.shape)
            v0 = np.asarray(pop.arrays["v0"], dtype=np.float64)
            v0 = v0.reshape((-1,) + (1,) * (len(shape) - 1)) if v0.ndim == 1 and len(shape) > 1 else v0
            pop.arrays["v0"] = np.broadcast_to(v0, shape) + T * (a - rate).mean(axis=0)


# --------------------------------------------------------------------------- entry point
def _check_int(name: str, value, minimum: int, fix: str | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise CalibrationError(describe(f"calibration option {name}", f"an integer >= {minimum}", repr(value), fix))


def _check_bool(name: str, value) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise CalibrationError(describe(f"calibration option {name}", "True or False", repr(value)))


def calibrate(graph: Graph, x_calib: np.ndarray | None = None, options: ConversionOptions | None = None, *,
              threshold: str | None = None, channelwise: bool = False,
              potential: str = "half", bias_calibration: bool = False, T: int | None = None,
              calib_samples: int | None = None, batch_size: int = 256, include_zeros: bool = False,
              override_qcfs: bool | None = None, data_samples: int = DATA_SAMPLES,
              progress: Callable[[str], None] | None = None) -> Graph:
    """Convert an ANN to an SNN graph, with thresholds, potentials and biases calibrated from data.

    Parameters
    ----------
    graph : Graph
        A validated ANN graph (kind "ann"); it is not modified.
    x_calib : ndarray, (N, *input.shape), optional
        Raw calibration inputs (the model's preprocessing is applied).  Needed for
        ``relu`` nodes, ``override_qcfs``, ``potential="data"`` and ``bias_calibration``.
    options : ConversionOptions, optional
        Neuron model and its options (default IF).  Its ``v0`` must agree with
        ``potential`` ("half"/"zero"); ``potential="data"`` starts from its v0 rule.
    threshold : str, optional
        ``"max"`` or ``"pXX.X"``: the statistic of each relu's ANN output over
        ``x_calib`` (required when the model has relu nodes); see ``override_qcfs``
        for ``qcfs`` nodes.
    channelwise : bool
        One threshold per channel instead of per layer.
    potential : {"half", "zero", "data"}
        Initial membrane potential: half a payload unit (OPI), zero, or data-driven per
        neuron (starting from half) at the given ``T``.
    bias_calibration : bool
        Per-channel correction of the bias feeding each population, at the given ``T``.
    T : int, optional
        Time-steps the SNN will be run for; required by ``potential="data"`` and
        ``bias_calibration``, ignored (recorded as None) otherwise.
    calib_samples : int, optional
        Use only the first ``calib_samples`` samples of ``x_calib`` (default all).
    batch_size : int
        Samples per ANN forward pass while collecting threshold statistics.
    include_zeros : bool
        Count zero activations in percentiles (default False: non-zero only, as the
        SNN Toolbox).
    override_qcfs : bool, optional
        Calibrate the thresholds of ``qcfs`` nodes too, from their pre-activation
        clipped at 0, replacing λ.  Default (None): exactly when ``threshold`` is
        given (the CLI's ``--threshold`` overrides a trained λ); False keeps λ and
        applies ``threshold`` to relu nodes only.
    data_samples : int
        Size of the one batch (the first samples) used by data-driven potential and
        bias calibration.
    progress : callable, optional
        Called with one line saying what is being done (per batch of threshold
        statistics, per layer of potential/bias calibration).

    Returns
    -------
    Graph
        Kind "snn", with ``metadata["calibration"]`` recording every choice.

    Raises
    ------
    CalibrationError
        Missing calibration data, threshold or T (the message names the argument and
        the CLI flag), a bad option, or a population whose bias cannot be calibrated.
    evsim.errors.DataError
        ``x_calib`` of the wrong shape or with non-finite values.
    """
    # ---- validate everything before any work
    if not isinstance(graph, Graph) or graph.kind != "ann":
        found = f"kind {graph.kind!r}" if isinstance(graph, Graph) else type(graph).__name__
        raise CalibrationError(describe(getattr(graph, "source", "calibrate"), "an ANN graph (kind 'ann')", found,
                                        "calibrate the ANN model; an SNN file is already converted"))
    validate(graph)
    if override_qcfs is None:
        override_qcfs = threshold is not None
    for name, value in [("channelwise", channelwise), ("bias_calibration", bias_calibration),
                        ("include_zeros", include_zeros), ("override_qcfs", override_qcfs)]:
        _check_bool(name, value)
    if potential not in POTENTIALS:
        raise CalibrationError(describe("calibration option potential", "one of " + ", ".join(POTENTIALS),
                                        repr(potential)))
    method = POTENTIALS[potential]
    options = options or ConversionOptions()
    if not isinstance(options, ConversionOptions):
        raise CalibrationError(describe("calibration option options", "a ConversionOptions", type(options).__name__))
    if method.data:
        start = options.v0_rule
    elif options.v0 is not None and options.v0 != method.v0:
        raise CalibrationError(describe("calibration options", "one initial potential",
                                        f"v0={options.v0!r} and potential={potential!r}",
                                        "give one of them (CLI: --potential half|zero|data; --v0 is for run)"))
    else:
        start = method.v0
    _check_int("batch_size", batch_size, 1)
    _check_int("data_samples", data_samples, 1)
    if calib_samples is not None:
        _check_int("calib_samples", calib_samples, 1, "CLI: --calib-samples N with N >= 1")
    if T is not None:
        _check_int("T", T, 1, "CLI: -T with at least 1 step")
    options = ConversionOptions(options.neuron, v0=start, reset=options.reset, params=options.params)
    stat = parse_statistic(threshold) if threshold is not None else None

    where = graph.source
    caps = relu_caps(graph)  # clipped ReLUs have their λ; a statistic, when given, calibrates them too
    relus = [n.name for n in graph.nodes if n.op == "relu" and n.name not in caps]
    calibrated = _calibrated_nodes(graph, override_qcfs) if stat is not None else []
    if relus and stat is None:
        raise CalibrationError(describe(
            where, "a threshold statistic for its relu nodes", f"none ({len(relus)} relu, e.g. '{relus[0]}')",
            "pass threshold='p99.9' and x_calib (CLI: --threshold p99.9 --calib-data FILE)"))
    if stat is not None and not calibrated:
        qcfs = any(n.op == "qcfs" for n in graph.nodes)
        fix = "pass override_qcfs=True (or None) to replace the trained λ" if qcfs else "drop the threshold option"
        raise CalibrationError(describe(where, f"activations to calibrate with threshold {stat.name!r}",
                                        "none" + (" (override_qcfs=False: qcfs keep their trained λ)" if qcfs else ""),
                                        fix))
    data_steps = [s for s, on in [("potential='data'", method.data), ("bias_calibration", bias_calibration)] if on]
    if x_calib is None and (calibrated or data_steps):
        need = (f"threshold statistics of {len(calibrated)} activation(s)" if calibrated else " and ".join(data_steps))
        raise CalibrationError(describe(where, f"calibration data for {need}", "none",
                                        "pass x_calib (CLI: --calib-data FILE with inputs under 'x')"))
    if data_steps and T is None:
        raise CalibrationError(describe(
            where, f"the number of time-steps T for {' and '.join(data_steps)}", "none",
            "pass T, the T you will simulate (CLI: -T 8); calibration holds for that T only"))

    x = None
    if x_calib is not None and (calibrated or data_steps):
        x, _ = check_data(x_calib, None, graph.input.shape, source="calibration data")
        if calib_samples is not None:
            x = x[:calib_samples]

    # ---- thresholds, conversion, data-driven corrections
    notes: list[str] = []
    stats = None
    if calibrated:
        stats = threshold_statistics(graph, x, stat, channelwise=channelwise, include_zeros=include_zeros,
                                     override_qcfs=override_qcfs, batch_size=batch_size, progress=progress)
        notes += stats.warnings
    snn = convert(graph, options, thresholds=stats.thresholds if stats else None)
    n_data = 0
    if data_steps:
        n_data = min(int(data_samples), len(x))
        _data_calibration(graph, snn, x[:n_data], int(T), potential=method.data, bias=bias_calibration,
                          overridden={n.name for n in calibrated if n.op == "qcfs"}, progress=progress)
    has_qcfs = any(n.op == "qcfs" for n in graph.nodes)
    snn.metadata["calibration"] = _record(snn, stats, stat, channelwise, include_zeros,
                                          bool(override_qcfs) if has_qcfs else None, potential,
                                          bias_calibration, x, n_data, T if data_steps else None, notes)
    return validate(snn)


def _summary(theta: np.ndarray):
    theta = np.asarray(theta, dtype=np.float64)
    if theta.ndim == 0:
        return float(theta)
    return {"min": float(theta.min()), "mean": float(theta.mean()), "max": float(theta.max())}


def _lambda_source(snn, name: str | None = None) -> str:
    """Where an uncalibrated threshold came from: a clip's λ (``metadata.relu_max``) or QCFS λ
    (for the whole model: "qcfs_lambda" as soon as one layer has a QCFS λ)."""
    clipped = snn.metadata.get("relu_max") or {}
    if name is not None:
        return "clip_lambda" if name in clipped else "qcfs_lambda"
    pops = [n.name for n in snn.nodes if n.op == "neuron"]
    return "clip_lambda" if pops and all(p in clipped for p in pops) else "qcfs_lambda"


def _record(snn, stats, stat, channelwise, include_zeros, override_qcfs, potential, bias, x, n_data, T,
            notes) -> dict:
    """The JSON-ready ``metadata["calibration"]`` entry (None where a choice does not apply)."""
    pops = [n for n in snn.nodes if n.op == "neuron"]
    record = {
        "threshold_method": stat.method if stat else _lambda_source(snn) if pops else None,
        "threshold_statistic": stat.name if stat else None,
        "channelwise": bool(channelwise) if stat else None,
        "include_zeros": bool(include_zeros) if stat and stat.method == "percentile" else None,
        "override_qcfs": override_qcfs,  # None: the model has no qcfs node
        "percentile_estimator": None,
        "potential": potential,
        "bias_calibration": bool(bias),
        "samples": stats.samples if stats else (len(x) if x is not None else 0),
        "data_samples": n_data or None,
        "T": int(T) if T is not None else None,
        "warnings": list(notes),
    }
    if stats and stat.method == "percentile":
        kinds = sorted(set(stats.estimator.values()))
        record["percentile_estimator"] = {
            "method": "linear interpolation between order statistics (numpy 'linear')",
            "storage": kinds[0] if len(kinds) == 1 else "mixed",
            "histogram_relative_error": percentile_error_bound() if "histogram" in kinds else None,
        }
    if len(pops) <= _LAYERS_IN_METADATA:
        record["layers"] = {
            p.name: {"threshold": _summary(p.arrays["threshold"]),
                     "source": "calibration" if stats and p.name in stats.thresholds else _lambda_source(snn, p.name),
                     **({"estimator": stats.estimator[p.name]} if stats and p.name in stats.estimator else {})}
            for p in pops
        }
    return record
