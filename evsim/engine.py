"""The event-driven simulator.

At every time-step, in topological order, each population integrates its input
current, emits spike events (Numba neuron kernels, in place), and only those events
are scattered through its outgoing projections into the currents of later
populations and the output accumulator (Numba scatter kernels).  The constant part of
every current (bias, analog input: direct encoding) is computed once per batch and
pre-loaded by the neuron kernels for the next step.  Kernels run in parallel over
the samples of a batch.

:func:`simulate` is the public entry point; it validates everything once, then hands
contiguous arrays of the right dtype to the kernels.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import _kernels as K
from .compile import Network, compile_network
from .convert import ConversionOptions, convert
from .data_io import check_data
from .errors import ConversionError, DataError, describe
from .format import load
from .graph import Graph
from .results import EnergyModel, LayerStats, Results

__all__ = ["simulate", "Simulator", "PRECISIONS", "NEGATIVE_THRESHOLD"]

PRECISIONS = {"float32": np.float32, "float64": np.float64}
#: the signed IF neuron's negative threshold (methods.md 2.3, Fast-SNN)
NEGATIVE_THRESHOLD = -1e-3


@dataclass
class _PopState:
    """Per-batch state of one population (or the event buffers of one gate)."""

    current: np.ndarray | None
    base: np.ndarray | None
    v: np.ndarray | None
    net: np.ndarray | None
    ev_idx: np.ndarray
    ev_cnt: np.ndarray
    nev: np.ndarray
    cum: np.ndarray | None = None


def _step_if(pop, params, st):
    K.if_step(st.current, st.base, st.v, params, pop.reset == "zero", st.ev_idx, st.ev_cnt, st.nev)


def _step_gn(pop, params, st):
    K.gn_step(st.current, st.base, st.v, params, pop.tau, st.ev_idx, st.ev_cnt, st.nev)


def _step_signed_if(pop, params, st):
    K.signed_if_step(st.current, st.base, st.v, st.net, params, st.v.dtype.type(NEGATIVE_THRESHOLD),
                     st.ev_idx, st.ev_cnt, st.nev)


#: neuron model -> (kernel call, which per-channel parameter the kernel takes)
NEURON_STEPS: dict[str, tuple[Callable, str]] = {
    "if": (_step_if, "theta"),
    "gn": (_step_gn, "unit"),
    "signed_if": (_step_signed_if, "theta"),
}


def _scatter_conv(proj, arrays, src, current):
    K.scatter_conv(src.ev_idx, src.ev_cnt, src.nev, arrays[0], current, *proj.geometry)


def _scatter_dense(proj, arrays, src, current):
    K.scatter_dense(src.ev_idx, src.ev_cnt, src.nev, arrays[0], current)


def _scatter_csr(proj, arrays, src, current):
    K.scatter_csr(src.ev_idx, src.ev_cnt, src.nev, arrays[0], arrays[1], arrays[2], current)


#: projection kind -> scatter call
SCATTERS: dict[str, Callable] = {"conv": _scatter_conv, "dense": _scatter_dense, "csr": _scatter_csr}


class Simulator:
    """A compiled network made ready for the kernels in one precision.

    Parameters
    ----------
    network : Network
    dtype : numpy float dtype
        ``np.float32`` (default of :func:`simulate`) or ``np.float64``.
    """

    def __init__(self, network: Network, dtype=np.float32):
        self.network = network
        self.dtype = np.dtype(dtype)
        cast = lambda a: np.ascontiguousarray(a, dtype=self.dtype)  # noqa: E731
        self.params = {p.name: cast(getattr(p, NEURON_STEPS[p.model][1])) for p in network.populations}
        self.v0 = {p.name: cast(p.v0) for p in network.populations}
        self.weights = {}
        for i, proj in enumerate(network.projections):
            if proj.kind == "csr":
                self.weights[i] = (proj.indptr, proj.indices, cast(proj.data))
            else:
                self.weights[i] = (cast(proj.weight),)
        self.fanout = {name: network.fanout(name) for name in
                       [p.name for p in network.populations] + [g.name for g in network.gates]}
        self.outgoing = {name: [i for i, pr in enumerate(network.projections) if pr.source == name]
                         for name in self.fanout}
        self.gates_after = {name: [g for g in network.gates if g.parent == name] for name in self.fanout}
        self.sizes = {p.name: p.size for p in network.populations}
        self.sizes.update({g.name: int(np.prod(g.out_shape)) for g in network.gates})

    def run_batch(self, x: np.ndarray, T: int, record: tuple[str, ...] = ()):
        """Simulate one batch of raw inputs for T steps.

        ``record`` names populations whose per-neuron spike counts (signed, summed over
        the T steps) are returned as well, channels first ``(B, *shape)``; calibration
        uses them.

        Returns
        -------
        predictions : ndarray (B, T) int64
        stats : dict population -> ndarray (T, 3) int64, summed over the batch
            (spikes, events, SOPs) per step.
        logits : ndarray (B, F) float64, accumulated output after T steps
        counts : dict population -> ndarray (B, *shape) int64, only with ``record``
        """
        import numba

        threads = numba.get_num_threads()
        # parallel regions are over samples: more threads than samples only add overhead
        numba.set_num_threads(max(1, min(threads, len(x))))
        try:
            return self._run_batch(x, T, record)
        finally:
            numba.set_num_threads(threads)

    def _run_batch(self, x, T, record):
        net, dtype, b = self.network, self.dtype, len(x)
        base = net.constant_currents(x)
        states: dict[str, _PopState] = {}
        for p in net.populations:
            n = p.size
            states[p.name] = _PopState(
                # copies: broadcast views are read-only, and kernels write v and current
                current=np.array(base[p.name], dtype=dtype), base=np.array(base[p.name], dtype=dtype),
                v=np.array(np.broadcast_to(self.v0[p.name], (b, n))),
                net=np.zeros((b, n), np.int32) if p.model == "signed_if" else None,
                ev_idx=np.empty((b, n), np.int32), ev_cnt=np.empty((b, n), np.int32), nev=np.zeros(b, np.int64))
        for g in net.gates:
            n = self.sizes[g.name]
            states[g.name] = _PopState(None, None, None, None, np.empty((b, n), np.int32),
                                       np.empty((b, n), np.int32), np.zeros(b, np.int64),
                                       cum=np.zeros((b, int(np.prod(g.in_shape))), np.int32))
        out_base = np.array(base[net.output], dtype=dtype)
        out_current = out_base.copy()
        out_sum = np.zeros(out_current.shape, np.float64)
        currents = {name: st.current for name, st in states.items() if st.current is not None}
        currents[net.output] = out_current
        stats = {p.name: np.zeros((T, b, 3), np.int64) for p in net.populations}
        scratch = np.zeros((b, 3), np.int64)
        order = _chw_order(net.output_shape)
        predictions = np.empty((b, T), np.int64)
        counts = {name: np.zeros((b, self.sizes[name]), np.int64) for name in record}

        def emit(name, population, t):
            st = states[name]
            if name == population:
                K.event_stats(st.ev_idx, st.ev_cnt, st.nev, self.fanout[name], stats[population][t])
            else:  # a gate's SOPs belong to the population whose spikes it passes on
                scratch[:] = 0
                K.event_stats(st.ev_idx, st.ev_cnt, st.nev, self.fanout[name], scratch)
                stats[population][t][:, 2] += scratch[:, 2]
            for i in self.outgoing[name]:
                proj = net.projections[i]
                SCATTERS[proj.kind](proj, self.weights[i], st, currents[proj.target])
            for g in self.gates_after[name]:
                gs = states[g.name]
                (kh, kw), (sh, sw), (ph, pw) = g.kernel, g.stride, g.padding
                K.maxpool_gate(st.ev_idx, st.ev_cnt, st.nev, gs.cum, g.in_shape[1], g.in_shape[2], g.in_shape[0],
                               g.out_shape[1], g.out_shape[2], kh, kw, sh, sw, ph, pw, gs.ev_idx, gs.ev_cnt, gs.nev)
                emit(g.name, population, t)

        for t in range(T):
            for p in net.populations:
                NEURON_STEPS[p.model][0](p, self.params[p.name], states[p.name])
                emit(p.name, p.name, t)
                if p.name in counts:
                    st = states[p.name]
                    for i in range(b):
                        np.add.at(counts[p.name][i], st.ev_idx[i, :st.nev[i]], st.ev_cnt[i, :st.nev[i]])
            out_sum += out_current
            out_current[:] = out_base
            predictions[:, t] = out_sum[:, order].argmax(axis=1)
        del emit  # the closure refers to itself: break the cycle so batch buffers are freed at once
        stats = {k: v.sum(axis=1) for k, v in stats.items()}
        if record:
            shapes = {p.name: p.shape for p in net.populations}
            counts = {k: v[:, _chw_order(shapes[k])].reshape((b,) + tuple(net.graph.node(k).shape))
                      for k, v in counts.items()}
            return predictions, stats, out_sum[:, order], counts
        return predictions, stats, out_sum[:, order]


def _chw_order(shape) -> np.ndarray:
    """Engine-layout positions of the output in channels-first order (identity when flat)."""
    if len(shape) != 3:
        return np.arange(int(np.prod(shape)))
    c, h, w = shape
    return np.arange(c * h * w).reshape(h, w, c).transpose(2, 0, 1).ravel()


def _as_network(model, options: ConversionOptions | None) -> Network:
    if isinstance(model, Network):
        return model
    graph = load(model) if isinstance(model, (str, Path)) else model
    if not isinstance(graph, Graph):
        raise ConversionError(describe("simulate", "a model path, Graph or Network", type(model).__name__))
    if graph.kind == "ann":
        graph = convert(graph, options or ConversionOptions())
    elif options is not None:
        raise ConversionError(describe(graph.source, "no neuron options for an SNN file (it fixes them)",
                                  f"{options}", "convert the ANN again with the options you want"))
    return compile_network(graph)


def simulate(model, x, y=None, T: int = 32, batch_size: int = 64, precision: str = "float32",
             options: ConversionOptions | None = None, energy: EnergyModel | None = None,
             progress: Callable[[int], None] | None = None) -> Results:
    """Simulate a converted SNN on a batch of inputs, event by event.

    Parameters
    ----------
    model : str, Path, Graph or Network
        An evsim model file or graph (an ANN is converted with ``options``, default
        IF neurons with v0 = θ/2), or a compiled :class:`~evsim.compile.Network`.
    x : ndarray, (N, *input.shape)
        Raw inputs; the model's input preprocessing is applied.
    y : ndarray of int, (N,), optional
        Labels; accuracy per time-step is reported when given.
    T : int
        Time-steps.
    batch_size : int
        Samples simulated together (kernels run in parallel over them).
    precision : {"float32", "float64"}
    options : ConversionOptions, optional
        Neuron model, tau, v0, reset for an ANN model.
    energy : EnergyModel, optional
        Energy constants (default 45 nm fp32).
    progress : callable, optional
        Called with the number of samples finished after each batch.

    Returns
    -------
    Results
    """
    if not isinstance(T, (int, np.integer)) or T < 1:
        raise DataError(describe("simulate", "T an integer >= 1", repr(T)))
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise DataError(describe("simulate", "batch_size an integer >= 1", repr(batch_size)))
    if precision not in PRECISIONS:
        raise DataError(describe("simulate", "precision 'float32' or 'float64'", repr(precision)))
    t0 = time.perf_counter()
    network = _as_network(model, options)
    graph = network.graph
    n_classes = int(np.prod(network.output_shape))
    x, y = check_data(x, y, graph.input.shape, n_classes, source="simulate")
    sim = Simulator(network, PRECISIONS[precision])
    t1 = time.perf_counter()

    predictions, first_batch_seconds = [], None
    totals = {p.name: np.zeros((T, 3), np.int64) for p in network.populations}
    for start in range(0, len(x), batch_size):
        tb = time.perf_counter()
        pred, stats, _ = sim.run_batch(x[start:start + batch_size], T)
        if first_batch_seconds is None:
            first_batch_seconds = time.perf_counter() - tb
        predictions.append(pred)
        for name, s in stats.items():
            totals[name] += s
        if progress is not None:
            progress(len(pred))
    t2 = time.perf_counter()
    predictions = np.concatenate(predictions)
    n = len(x)
    layers = []
    for p in network.populations:
        s = totals[p.name] / n
        spikes = float(s[:, 0].sum())
        layers.append(LayerStats(p.name, p.size, spikes, float(s[:, 1].sum()), float(s[:, 2].sum()),
                                 spikes / (p.size * T), s[:, 0].tolist(), s[:, 2].tolist()))
    accuracy = None if y is None else (predictions == y[:, None]).mean(axis=0).tolist()
    conversion = graph.metadata.get("conversion", {})
    settings = {"model": graph.source, "T": int(T), "batch_size": int(batch_size), "precision": precision,
                "samples": n, "neuron": sorted({p.model for p in network.populations}),
                "conversion": conversion, "calibration": graph.metadata.get("calibration")}
    timing = {"compile_s": t1 - t0, "simulate_s": t2 - t1, "first_batch_s": first_batch_seconds}
    return Results(int(T), n, accuracy, predictions, layers, network.input_macs, network.ann_macs,
                   energy or EnergyModel(), settings, timing)
