"""The event-driven simulator.

Populations are simulated one at a time, in topological order, each through all T
time-steps at once (layer-major).  Without synaptic delays this is the same computation as
stepping the whole network: population ``l`` at step ``t`` depends only on its sources at
steps ``<= t``, and those have emitted the events of all T steps before ``l`` starts.
For each population:

1. its input currents of all T steps are pre-loaded with the constant current (bias and
   analog input: direct encoding), then the events of every source, all samples and steps
   at once, are scattered into them through the projections (Numba scatter kernels; only
   the events that occurred are touched);
2. the neurons run through the T steps and emit their events (Numba neuron kernels), with
   spike, event and synaptic-operation counts per step.

So there is one parallel region per projection and per population for a whole batch,
work items are (sample, step) pairs (two threads are busy even at batch 1), a layer's
weights stay in cache while all its events are scattered, and membrane potentials never
leave L1.  Event buffers live only until the last projection that reads them; every buffer
is kept across batches.

Long runs are cut into **blocks of time-steps** (:func:`time_block`): the whole network runs
layer-major through the first Tc steps, then through the next Tc, with every population's
state (v, and a signed IF neuron's net count), the max-pooling gates' accumulated counts and
the output's running sum carried from one block to the next.  Each step does exactly the same
arithmetic as in one block, so the spikes are identical, and the buffers hold Tc steps, not T:
memory does not grow with T.  Tc is the most steps that fit a budget tied to weights + state,
so short runs (T <= 32 on benchmark-sized networks at batch 1) stay in one block.

:func:`simulate` is the public entry point; it validates everything once, then hands
contiguous arrays of the right dtype to the kernels.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import _kernels as K
from ._kernels import tuning
from .compile import Network, compile_network, to_engine_layout
from .convert import ConversionOptions, convert
from .data_io import check_data, check_model_precision, check_preprocessed
from .energy import EnergyModel, network_costs, resolve_models
from .errors import ConversionError, DataError, ResourceLimitError, describe
from .format import load
from .graph import Graph, memory_limit
from .neurons import NEGATIVE_THRESHOLD, get_model
from .results import COUNTERS, BatchResult, Results, RunPlan
from ._omp import policy_in_force
from .threads import ThreadBudget, adapt_enabled

__all__ = ["simulate", "Simulator", "PRECISIONS", "as_network", "plan_run", "check_run_memory", "time_block"]

PRECISIONS = {"float32": np.float32, "float64": np.float64}


def _neuron_run(pop, cast) -> tuple[Callable, tuple]:
    """The layer kernel of a population as ``run(current, bounds, fanout, ev_idx, ev_cnt, nev, stats,
    state, resume)``, and the dtypes of the state it carries from one block of steps to the next
    (``None``: the simulation dtype).

    The kernel factory builds it around the model's step (state: v); a model with a hand-written
    kernel (signed IF, state: v and the net count) is called through :data:`HAND_WRITTEN`.
    """
    model = get_model(pop.model)
    if model.kernel is not None:
        return HAND_WRITTEN[model.kernel](pop, cast)
    from ._kernels.factory import layer_kernel

    step = model.step.resolve() if hasattr(model.step, "resolve") else model.step
    kernel = layer_kernel(model.name, step, len(model.params), bool(model.resets))
    lo, hi = pop.count_range
    leading = (cast(pop.v0), cast(pop.kernel_theta), cast(pop.param_values), lo, hi, pop.reset == "zero")

    def run(current, bounds, fanout, ev_idx, ev_cnt, nev, stats, state, resume):
        kernel(current, *leading, bounds, fanout, ev_idx, ev_cnt, nev, stats, state[0], resume)
    return run, (None,)


def _signed_if(pop, cast):
    theta = cast(pop.theta[:pop.shape[0]])  # per channel: signed IF thresholds are (validated) per channel
    v0 = cast(pop.v0)

    def run(current, bounds, fanout, ev_idx, ev_cnt, nev, stats, state, resume):
        K.signed_if_run(current, v0, theta, NEGATIVE_THRESHOLD, bounds, fanout, ev_idx, ev_cnt, nev, stats,
                        state[0], state[1], resume)
    return run, (None, np.dtype(np.int64))


#: hand-written layer kernels by name (NeuronModel.kernel): only where a step function cannot express
#: the model (signed IF keeps a net count per neuron)
HAND_WRITTEN = {"signed_if_run": _signed_if}


@dataclass
class _Stage:
    """One step of the plan: a population, a max-pooling gate, or the output."""

    kind: str  # "population", "gate" or "output"
    name: str
    size: int
    incoming: list[int] = field(default_factory=list)  # projection indices (populations, output)
    release: list[str] = field(default_factory=list)  # sources whose events are no longer needed after it
    slot: int = -1  # event buffer of what it emits


def _plan(net: Network) -> tuple[list[_Stage], list[int]]:
    """Stage order, the sources each stage releases, event-buffer slots by liveness, and the number of
    neurons each slot must hold."""
    sizes = {p.name: p.size for p in net.populations}
    sizes.update({g.name: int(np.prod(g.out_shape)) for g in net.gates})
    stages = []
    for p in net.populations:
        stages.append(_Stage("population", p.name, p.size,
                             [i for i, pr in enumerate(net.projections) if pr.target == p.name]))
        stages += [_Stage("gate", g.name, sizes[g.name]) for g in net.gates if g.population == p.name]
    stages.append(_Stage("output", net.output, int(np.prod(net.output_shape)),
                         [i for i, pr in enumerate(net.projections) if pr.target == net.output]))
    last_use = {}
    for j, stage in enumerate(stages):
        reads = [net.projections[i].source for i in stage.incoming]
        if stage.kind == "gate":
            reads.append(next(g.parent for g in net.gates if g.name == stage.name))
        for source in reads:
            last_use[source] = j
    free: list[int] = []
    slot_sizes: list[int] = []
    slot_of = {}
    for j, stage in enumerate(stages):
        stage.release = [s for s, last in last_use.items() if last == j]
        if stage.kind == "population":  # its sources are read before it writes: free them first
            free += [slot_of[s] for s in stage.release]
        if stage.kind != "output" and stage.name in last_use:  # events that somebody reads
            stage.slot = free.pop() if free else len(slot_sizes)
            if stage.slot == len(slot_sizes):
                slot_sizes.append(0)
            slot_sizes[stage.slot] = max(slot_sizes[stage.slot], stage.size)
            slot_of[stage.name] = stage.slot
        if stage.kind == "gate":
            free += [slot_of[s] for s in stage.release]
    return stages, slot_sizes


class _Threads:
    """Context: run the block on ``n`` Numba threads (None: leave the count alone), then restore the
    count.  :meth:`serial_below` gives one thread to a call whose estimated work is below
    :data:`~evsim._kernels.tuning.MIN_PARALLEL_NS` (a parallel region costs a barrier: tens of
    microseconds on an idle machine, a scheduler time slice when the other thread is descheduled
    on a busy one); ``EVSIM_MIN_PARALLEL_NS`` overrides the threshold (0: always parallel)."""

    __slots__ = ("n", "saved")

    def __init__(self, n: int | None):
        self.n, self.saved = n, 0

    @classmethod
    def serial_below(cls, est_ns: float) -> "_Threads":
        return cls(1 if est_ns < _min_parallel_ns() else None)

    def __enter__(self):
        if self.n is not None:
            import numba
            self.saved = numba.get_num_threads()
            numba.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        if self.n is not None:
            import numba
            numba.set_num_threads(self.saved)
        return False


def _min_parallel_ns() -> float:
    text = os.environ.get("EVSIM_MIN_PARALLEL_NS", "").strip()
    try:
        return float(text) if text else tuning.MIN_PARALLEL_NS
    except ValueError:
        return tuning.MIN_PARALLEL_NS


def _aligned_empty(size: int, dtype) -> np.ndarray:
    """An uninitialised 1-D array whose data starts on a 64-byte (cache line) boundary."""
    dtype = np.dtype(dtype)
    raw = np.empty(size * dtype.itemsize + 64, np.uint8)
    offset = (-raw.ctypes.data) % 64
    return raw[offset:offset + size * dtype.itemsize].view(dtype)


class _Buffers:
    """Flat arrays kept across batches; views of the requested shape are handed out."""

    def __init__(self):
        self._flat: dict[object, np.ndarray] = {}

    def get(self, key, shape, dtype) -> np.ndarray:
        size = math.prod(shape)
        flat = self._flat.get(key)
        if flat is None or flat.size < size or flat.dtype != dtype:
            flat = self._flat[key] = _aligned_empty(size, dtype)
        return flat[:size].reshape(shape)

    def drop(self, prefix) -> None:
        """Free every buffer whose key is a tuple starting with ``prefix``."""
        for key in [k for k in self._flat if isinstance(k, tuple) and k[0] == prefix]:
            del self._flat[key]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._flat.values())


class Simulator:
    """A compiled network made ready for the kernels in one precision.

    Weights are cast and re-laid for the kernels once; :meth:`run_batch` then simulates
    batches, re-using its buffers from one batch to the next.

    Time is processed in blocks of steps (layer-major inside a block, membrane state carried
    from one block to the next: the same spikes as one block), so that memory does not grow
    with T: see :func:`time_block`.

    Parameters
    ----------
    network : Network
    dtype : numpy float dtype
        ``np.float32`` (default of :func:`simulate`) or ``np.float64``.
    time_block : int, optional
        Time-steps per block; default automatic (:func:`time_block`; environment variable
        ``EVSIM_TIME_BLOCK``).
    """

    def __init__(self, network: Network, dtype=np.float32, *, time_block: int | None = None):
        self.network = network
        self.dtype = np.dtype(dtype)
        self.time_block = _check_time_block(time_block, "Simulator(time_block=...)")
        cast = lambda a: np.ascontiguousarray(a, dtype=self.dtype)  # noqa: E731
        self.neuron_runs, self.neuron_state = {}, {}
        for p in network.populations:
            self.neuron_runs[p.name], self.neuron_state[p.name] = _neuron_run(p, cast)
        self.scatters, self.weights = [], {}
        for i, proj in enumerate(network.projections):
            call, arrays = proj.prepare(cast)
            self.scatters.append(call)
            self.weights[i] = arrays
        self.input_scatters: dict[str, list[Callable]] = {}
        for i, proj in enumerate(network.input_projections):
            call, arrays = proj.prepare(cast)
            self.input_scatters.setdefault(proj.target, []).append(call)
            self.weights["input", i] = arrays
        self.input_size = int(np.prod(network.graph.input.shape))
        # event-frame inputs: the input is a spike source whose SOPs use its structural fan-out
        self.input_fanout = np.zeros(self.input_size, np.int64)
        for proj in network.input_projections:
            self.input_fanout += proj.fanout
        names = [p.name for p in network.populations] + [g.name for g in network.gates]
        self.fanout = {name: network.fanout(name) for name in names}
        self.sizes = {p.name: p.size for p in network.populations}
        self.sizes.update({g.name: int(np.prod(g.out_shape)) for g in network.gates})
        self.sizes[network.output] = int(np.prod(network.output_shape))
        self.static_current = {name: cast(value)[None, :] for name, value in network.static_current.items()}
        #: mean structural fan-out per projection: estimated SOPs of a call = events x this
        self.mean_fanout = [float(pr.fanout.mean()) if pr.fanout.size else 0.0 for pr in network.projections]
        # one count dtype for all events (buffers are shared): wide enough for every population
        self.count_dtype = _count_dtype(network)
        self.stages, _ = _plan(network)
        self.thread_budget = ThreadBudget()
        self.last_threads = None  # the Numba threads the last batch ran on
        self.memory = _MemoryModel(network, self.dtype)
        self.buffers = _Buffers()
        self._bounds: dict[tuple, np.ndarray] = {}
        #: set to a dict to collect seconds per (stage name, phase) over the next batches
        self.profile: dict[tuple[str, str], float] | None = None

    def _timed(self, stage: str, phase: str, t0: float) -> float:
        t1 = time.perf_counter()
        if self.profile is not None:
            self.profile[stage, phase] = self.profile.get((stage, phase), 0.0) + t1 - t0
        return t1

    def block_steps(self, n_batch: int, T: int) -> int:
        """Time-steps per block for a batch of ``n_batch`` samples and ``T`` steps (see :func:`time_block`)."""
        return self.memory.time_block(n_batch, T, self.time_block)

    def _parts(self, n_batch: int, size: int, channels: int, steps: int = 1) -> np.ndarray:
        """Neuron ranges (multiples of ``channels``) so that small batches still use every thread
        (one range when the layer's work is run serially: no join of parts needed)."""
        import numba

        serial = n_batch * steps * size * tuning.NS_PER_NEURON_STEP < _min_parallel_ns()
        key = (n_batch, size, channels, numba.get_num_threads(), serial)
        bounds = self._bounds.get(key)
        if bounds is None:
            pixels = size // channels
            n_parts = 1 if serial else max(1, min(tuning.splits(n_batch), pixels, size // tuning.MIN_PART))
            bounds = self._bounds[key] = np.linspace(0, pixels, n_parts + 1).astype(np.int64) * channels
        return bounds

    def run_batch(self, x: np.ndarray, T: int, y: np.ndarray | None = None, *, start: int = 0,
                  record: tuple[str, ...] = ()) -> BatchResult:
        """Simulate one batch of raw inputs for T steps.

        Parameters
        ----------
        x : ndarray (B, *input.shape), or (B, T_data, *input.shape) event frames
            Raw inputs (validated by the caller, e.g. :func:`simulate`).  Event frames are spike
            input: frame t is the input of step t (integer counts), steps past T_data get none;
            the input is then a spike source (its events and SOPs are the layer ``"input"``).
        T : int
        y : ndarray (B,) of int, optional
            Labels: the result then counts correct predictions per step.
        start : int
            Index of the batch's first sample in the data set (for merging).
        record : tuple of str
            Populations whose per-neuron spike counts (signed, summed over the T steps) are
            returned as well, channels first ``(B, *shape)`` in ``recorded`` (calibration).

        Returns
        -------
        BatchResult
        """
        import numba

        steps = self.block_steps(len(x), T)
        self.memory.check(len(x), T, steps)
        configured = numba.get_num_threads()
        # no more threads than idle cores: a thread waiting for a busy core stalls every region
        threads = self.thread_budget.threads(configured) if adapt_enabled() else configured
        # work items differ in size (steps, parts of a layer): hand them out one at a time
        with _Threads(threads), numba.parallel_chunksize(1):
            predictions, stats, logits, counts = self._run_batch(x, T, steps, record)
        self.last_threads = threads
        correct = None if y is None else (predictions == np.asarray(y)[:, None]).sum(axis=0).astype(np.int64)
        layers = {name: {c: np.ascontiguousarray(stat[:, i]) for i, c in enumerate(COUNTERS)}
                  for name, stat in stats.items()}
        return BatchResult(int(start), len(x), int(T), predictions, correct, layers, logits, counts)

    def _events(self, stage: _Stage, n_batch: int, T: int):
        shape = (n_batch, T, stage.size)
        return (self.buffers.get(("idx", stage.slot), shape, np.int32),
                self.buffers.get(("cnt", stage.slot), shape, self.count_dtype))

    def _input_events(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The preprocessed input as events of every input neuron, payload = value (direct encoding)."""
        n_batch = len(x)
        # preprocessed in float64, then rounded once to the simulation dtype (refused if it would overflow)
        values = self.network.graph.input.preprocess(x)
        check_preprocessed(values, self.dtype, "simulation input")
        values = to_engine_layout(values).astype(self.dtype)
        idx = self.buffers.get("input idx", (n_batch, self.input_size), np.int32)
        idx[:] = np.arange(self.input_size, dtype=np.int32)
        return idx, values, np.full(n_batch, self.input_size, np.int64)

    def _frame_events(self, x: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Event frames ``(B, T_data, *input.shape)`` as input events of every step ``(B, T, N_in)``:
        the non-zero counts of frame t in increasing neuron order, none past T_data."""
        n_batch, t_data = x.shape[:2]
        steps = min(T, t_data)
        frames = np.zeros((n_batch, T, self.input_size), np.int64)
        if steps > 0:  # a block past T_data has no frames
            frames[:, :steps] = to_engine_layout(x[:, :steps].reshape((n_batch * steps,) + x.shape[2:])).reshape(
                n_batch, steps, self.input_size)
        extreme = int(np.abs(frames).max(initial=0))
        dtype = next(d for d in (np.int8, np.int16, np.int32) if extreme <= np.iinfo(d).max)  # counts may exceed 1
        nonzero = frames != 0
        order = np.argsort(~nonzero, axis=2, kind="stable")  # non-zero neurons first, in increasing order
        idx = np.ascontiguousarray(order, dtype=np.int32)
        cnt = np.ascontiguousarray(np.take_along_axis(frames, order, axis=2), dtype=dtype)
        return idx, cnt, nonzero.sum(axis=2, dtype=np.int64)

    def _base(self, stage: _Stage, forward: dict, inputs: tuple) -> np.ndarray:
        """Constant current of a target: ``(1, N)`` (bias only) or ``(B, N)`` (with the input).

        Computed once per batch: every block of time-steps re-uses it.
        """
        if stage.name in forward:
            return forward[stage.name]
        static = self.static_current[stage.name]
        if stage.name not in self.input_scatters or inputs[0].ndim == 3:  # event input: scattered per step
            return static
        base = self.buffers.get(("base", stage.name), (len(inputs[0]), stage.size), self.dtype)
        base[:] = static
        for scatter in self.input_scatters[stage.name]:
            scatter(*inputs, base)
        return base

    def _currents(self, stage: _Stage, bases: dict, n_batch: int, T: int, events: dict, frames=None):
        """Constant current plus every incoming projection, for all samples and the block's steps
        (``frames``: the block's input events, with event-frame input)."""
        t0 = time.perf_counter()
        base = bases[stage.name]
        current = self.buffers.get("current", (n_batch, T, stage.size), self.dtype)
        flat = current.reshape(n_batch * T, stage.size)
        items = n_batch * T
        first = stage.incoming[0] if stage.incoming else None
        from_input = frames is not None and stage.name in self.input_scatters
        fused = first is not None and getattr(self.scatters[first], "fuses_init", False) and not from_input
        if not fused:  # pre-load the constant current (a gather kernel starts from it instead)
            with _Threads.serial_below(items * stage.size * tuning.NS_PER_FILL):
                K.fill_rows(current, base)
            t0 = self._timed(stage.name, "fill", t0)
        if from_input:  # event frames: the input's events of every step, like any source's
            for scatter in self.input_scatters[stage.name]:
                scatter(frames[0].reshape(items, -1), frames[1].reshape(items, -1), frames[2].reshape(items), flat)
            t0 = self._timed(stage.name, "scatter input events", t0)
        for i in stage.incoming:
            source = self.network.projections[i].source
            ev_idx, ev_cnt, nev = events[source]
            args = (ev_idx.reshape(items, -1), ev_cnt.reshape(items, -1), nev.reshape(items), flat)
            est = float(nev.sum()) * self.mean_fanout[i] * tuning.NS_PER_SOP + (
                items * stage.size * tuning.NS_PER_FILL if fused and i == first else 0.0)
            with _Threads.serial_below(est):
                if fused and i == first:
                    self.scatters[i](*args, init=base, per_row=T)
                else:
                    self.scatters[i](*args)
            path = getattr(self.scatters[i], "last", "scatter")  # "dense" when the projection went dense
            t0 = self._timed(stage.name, path + " " + self.network.projections[i].kind, t0)
        return current

    def _state(self, p, n_batch: int, blocked: bool) -> tuple:
        """Arrays that carry a population's state from one block of steps to the next (``(0, N)``: none)."""
        rows = n_batch if blocked else 0
        return tuple(self.buffers.get(("state", p.name, i), (rows, p.size), self.dtype if dt is None else dt)
                     for i, dt in enumerate(self.neuron_state[p.name]))

    def _run_batch(self, x, T, steps, record):
        net, b = self.network, len(x)
        blocked = steps < T
        t0 = time.perf_counter()
        stats = {}
        framed = x.ndim == len(net.graph.input.shape) + 2
        if framed:  # event frames: a spike input, turned into events block by block
            if net.forward_inputs:
                raise ConversionError(describe(
                    net.graph.source, "input paths composed into projections (event-frame input)",
                    f"targets {', '.join(net.forward_inputs)} left to the NumPy executor (over the memory limit)",
                    "raise EVSIM_MEMORY_LIMIT"))
            forward = {}
            inputs = (np.zeros((b, 1, 0), np.int32),)  # marks event input for _base
            stats["input"] = np.zeros((T, 3), np.int64)
        else:
            forward = {name: np.ascontiguousarray(value, dtype=self.dtype)
                       for name, value in net.constant_currents(x).items()}
            inputs = self._input_events(x)
        self._timed("input", "preprocess", t0)
        t0 = time.perf_counter()
        bases = {}
        for stage in self.stages:
            if stage.kind != "gate":
                bases[stage.name] = self._base(stage, forward, inputs)
                t0 = self._timed(stage.name, "input", t0)
        del forward, inputs
        pops = {p.name: p for p in net.populations}
        gates = {g.name: g for g in net.gates}
        states = {p.name: self._state(p, b, blocked) for p in net.populations}
        cums = {g.name: np.zeros((b, int(np.prod(g.in_shape))), np.int32) for g in net.gates}
        stats.update({p.name: np.zeros((T, 3), np.int64) for p in net.populations})
        counts = {name: np.zeros((b, pops[name].size), np.int64) for name in record}
        n_out = self.sizes[net.output]
        order = _chw_order(net.output_shape)
        predictions = np.empty((b, T), np.int64)
        running = np.zeros((b, n_out))  # the output accumulated over the steps so far, float64
        for t_lo in range(0, T, steps):
            tc = min(steps, T - t_lo)
            resume = t_lo > 0
            events: dict[str, tuple] = {}
            frames = None
            if framed:  # this block's frames (none past T_data) as input events, and their SOPs
                t0 = time.perf_counter()
                frames = self._frame_events(x[:, t_lo:t_lo + tc], tc)
                input_stats = np.zeros((b * tc, 3), np.int64)
                K.event_stats(frames[0].reshape(b * tc, -1), frames[1].reshape(b * tc, -1), frames[2].reshape(b * tc),
                              self.input_fanout, input_stats)
                stats["input"][t_lo:t_lo + tc] = input_stats.reshape(b, tc, 3).sum(axis=0)
                self._timed("input", "preprocess", t0)
            for stage in self.stages:
                if stage.kind == "gate":
                    g = gates[stage.name]
                    src_idx, src_cnt, src_nev = events[g.parent]
                    ev_idx, ev_cnt = self._events(stage, b, tc)
                    nev = np.empty((b, tc), np.int64)
                    (kh, kw), (sh, sw), (ph, pw) = g.kernel, g.stride, g.padding
                    K.maxpool_gate(src_idx, src_cnt, src_nev, cums[g.name], g.in_shape[1], g.in_shape[2],
                                   g.in_shape[0], g.out_shape[1], g.out_shape[2], kh, kw, sh, sw, ph, pw, ev_idx,
                                   ev_cnt, nev)
                    # a gate's SOPs belong to the population whose spikes it passes on
                    gate_stats = np.zeros((b * tc, 3), np.int64)
                    K.event_stats(ev_idx.reshape(b * tc, -1), ev_cnt.reshape(b * tc, -1), nev.reshape(b * tc),
                                  self.fanout[g.name], gate_stats)
                    stats[g.population][t_lo:t_lo + tc, 2] += gate_stats.reshape(b, tc, 3)[:, :, 2].sum(axis=0)
                    events[g.name] = (ev_idx, ev_cnt, nev)
                    for source in stage.release:
                        del events[source]
                elif stage.kind == "population":
                    p = pops[stage.name]
                    current = self._currents(stage, bases, b, tc, events, frames)
                    for source in stage.release:
                        del events[source]
                    if stage.slot >= 0:
                        ev_idx, ev_cnt = self._events(stage, b, tc)
                    else:  # nothing reads its events (the counts may still be recorded)
                        ev_idx = self.buffers.get(("unread idx",), (b, tc, stage.size), np.int32)
                        ev_cnt = self.buffers.get(("unread cnt",), (b, tc, stage.size), self.count_dtype)
                    bounds = self._parts(b, stage.size, p.shape[0], tc)
                    n_parts = len(bounds) - 1
                    nev_parts = np.empty((b, tc, n_parts), np.int64)
                    part_stats = np.empty((b, tc, n_parts, 3), np.int64)
                    t0 = time.perf_counter()
                    with _Threads.serial_below(b * tc * stage.size * tuning.NS_PER_NEURON_STEP):
                        self.neuron_runs[p.name](current, bounds, self.fanout[p.name], ev_idx, ev_cnt, nev_parts,
                                                 part_stats, states[p.name], resume)
                    if n_parts > 1:
                        nev = np.empty((b, tc), np.int64)
                        K.join_parts(ev_idx, ev_cnt, nev_parts, bounds, nev)
                    else:
                        nev = np.ascontiguousarray(nev_parts[:, :, 0])
                    self._timed(p.name, "neurons", t0)
                    stats[p.name][t_lo:t_lo + tc] += part_stats.sum(axis=(0, 2))
                    if p.name in record:
                        K.accumulate_counts(ev_idx, ev_cnt, nev, counts[p.name])
                    events[p.name] = (ev_idx, ev_cnt, nev)
                else:
                    current = self._currents(stage, bases, b, tc, events, frames)
                    # running sum over the steps in float64, as an accumulator would do it: the block's
                    # steps are added to the running sum one after the other (the same sums for any block)
                    acc = np.empty((b, tc + 1, n_out))
                    acc[:, 0] = running
                    acc[:, 1:] = current
                    np.cumsum(acc, axis=1, out=acc)
                    running = acc[:, -1].copy()
                    predictions[:, t_lo:t_lo + tc] = acc[:, 1:, order].argmax(axis=2)
        logits = running[:, order]
        shapes = {p.name: p.shape for p in net.populations}
        counts = {k: v[:, _chw_order(shapes[k])].reshape((b,) + tuple(net.graph.node(k).shape))
                  for k, v in counts.items()}
        return predictions, stats, logits, counts


def _count_dtype(network: Network) -> np.dtype:
    """The count dtype of all events: wide enough for every population."""
    return np.result_type(np.int8, *(get_model(p.model).count_dtype(p.params) for p in network.populations))


def _check_time_block(value, where: str) -> int | None:
    """A time-block setting: None (automatic) or an integer >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(describe(where, "time_block an integer >= 1 (time-steps per block) or None (automatic)",
                                 repr(value)))
    return int(value)


def _env_time_block() -> int | None:
    text = os.environ.get("EVSIM_TIME_BLOCK", "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = text
    return _check_time_block(value, "EVSIM_TIME_BLOCK")


#: the buffers of one block of time-steps may always use this much (so that small networks and batches
#: keep all T steps in one block)
MIN_BLOCK_BYTES = 64 * 2**20


class _MemoryModel:
    """What a batch allocates, per sample: once per batch, and per time-step of a block.

    *Per batch*: the preprocessed input as events, the constant current of the targets of the
    analog input, the max-pooling gates' accumulated counts, the state carried between blocks
    (v of every population, and the net count of signed IF neurons), the output's running sum
    and predictions.  *Per step of a block*: the currents of the largest target, every event
    buffer (slots shared by liveness), the events of a population nobody reads, the output.
    """

    def __init__(self, network: Network, dtype):
        self.network = network
        itemsize = np.dtype(dtype).itemsize
        stages, slot_sizes = _plan(network)
        count = _count_dtype(network).itemsize
        n_in = int(np.prod(network.graph.input.shape))
        n_out = int(np.prod(network.output_shape))
        unread = max([s.size for s in stages if s.kind == "population" and s.slot < 0], default=0)
        # (event-frame input: the block's frames as events, with their int64 and argsort temporaries)
        self.per_step = (max(s.size for s in stages) * itemsize + (sum(slot_sizes) + unread) * (4 + count)
                         + n_out * 8 * 2 + 64 * len(stages) + n_in * 32)
        input_targets = {pr.target for pr in network.input_projections} | set(network.forward_inputs)
        sizes = {s.name: s.size for s in stages}
        self.per_sample = (n_in * (4 + itemsize + 16) + sum(sizes[t] * (itemsize + 8) for t in input_targets)
                           + sum(int(np.prod(g.in_shape)) * 4 for g in network.gates) + n_out * 8 * 2)
        self.per_sample_state = 0
        for p in network.populations:
            model = get_model(p.model)
            self.per_sample_state += p.size * (itemsize + (8 if model.kernel is not None else 0))
        self.neurons = sum(p.size for p in network.populations)
        self.per_step_counters = 48 * (len(network.populations) + 1)
        self.weights = _weight_bytes(network, itemsize)

    def need(self, n_batch: int, T: int, steps: int) -> int:
        """Bytes a batch allocates with blocks of ``steps`` steps (what grows with T: the predictions,
        8 bytes per sample and step, and the counters, 3 x 8 bytes per population and step, twice)."""
        state = self.per_sample_state if steps < T else 0
        return n_batch * (self.per_sample + state + 16 * T + steps * self.per_step) + self.per_step_counters * T

    def time_block(self, n_batch: int, T: int, setting: int | None = None) -> int:
        """Steps per block: ``setting`` (or ``EVSIM_TIME_BLOCK``) if given, else the most steps whose
        buffers fit in the block budget: the larger of :data:`MIN_BLOCK_BYTES` and weights + state
        (batch x neurons x 8 bytes, what a step-by-step simulator holds), within ``EVSIM_MEMORY_LIMIT``.
        Blocks are then evened out (T = 10 in blocks of at most 4: 4, 3, 3 rather than 4, 4, 2)."""
        setting = setting if setting is not None else _env_time_block()
        if setting is not None:
            return max(1, min(setting, T))
        budget = max(MIN_BLOCK_BYTES, self.weights + n_batch * self.neurons * 8)
        room = memory_limit() - n_batch * (self.per_sample + self.per_sample_state + 16 * T) - self.per_step_counters * T
        budget = min(budget, room)
        steps = max(1, min(T, budget // max(1, n_batch * self.per_step)))
        n_blocks = -(-T // steps)
        return -(-T // n_blocks)

    def check(self, n_batch: int, T: int, steps: int) -> None:
        """Refuse a batch whose buffers would not fit in ``EVSIM_MEMORY_LIMIT``, before allocating."""
        need, limit = self.need(n_batch, T, steps), memory_limit()
        if need > limit:
            raise ResourceLimitError(describe(
                "simulation", f"at most {_gib(limit)} for one batch (EVSIM_MEMORY_LIMIT)",
                f"about {_gib(need)} for {n_batch} samples x {T} steps in blocks of {steps} step(s)",
                "lower the batch size (--batch-size) or the time block (--time-block), or raise EVSIM_MEMORY_LIMIT"))


def _weight_bytes(network: Network, itemsize: int) -> int:
    """Bytes of every projection's weights in the simulation dtype (index arrays included)."""
    total = 0
    for proj in list(network.projections) + list(network.input_projections):
        for name in ("weight", "data"):
            a = getattr(proj, name, None)
            if a is not None:
                total += a.size * itemsize
        for name in ("indptr", "indices"):
            a = getattr(proj, name, None)
            if a is not None:
                total += a.nbytes
    return total


def _chw_order(shape) -> np.ndarray:
    """Engine-layout positions of the output in channels-first order (identity when flat)."""
    if len(shape) != 3:
        return np.arange(int(np.prod(shape)))
    c, h, w = shape
    return np.arange(c * h * w).reshape(h, w, c).transpose(2, 0, 1).ravel()


def _jit_timer():
    """Context measuring the time Numba spends compiling kernels (cache loads are not compiles)."""
    from numba.core.event import TimingListener, install_listener

    return install_listener("numba:compile", TimingListener())


def _kernel_cache_stats() -> tuple[int, int]:
    """(specialisations loaded from Numba's cache, specialisations compiled) so far, all kernels."""
    from numba.core.registry import CPUDispatcher

    from ._kernels import factory, neurons, pooling, scatter, stats

    kernels = {id(obj): obj for module in (neurons, pooling, scatter, stats) for obj in vars(module).values()
               if isinstance(obj, CPUDispatcher)}
    kernels.update({id(k): k for k in factory._KERNELS.values()})
    hits = sum(sum(k.stats.cache_hits.values()) for k in kernels.values())
    misses = sum(sum(k.stats.cache_misses.values()) for k in kernels.values())
    return hits, misses


def as_network(model, options: ConversionOptions | None = None) -> Network:
    """A compiled :class:`~evsim.compile.Network` from a path, a Graph or a Network.

    An ANN is converted with ``options`` (default IF, v0 = θ/2); an SNN fixes its neurons,
    so options for it are refused rather than ignored.
    """
    if isinstance(model, Network):
        if options is not None:
            raise ConversionError(describe("simulate", "no neuron options for a compiled network (it fixes them)",
                                           ", ".join(f"{k}={v!r}" for k, v in options.applied().items()),
                                           "convert the ANN again with the options you want"))
        return model
    graph = load(model) if isinstance(model, (str, Path)) else model
    if not isinstance(graph, Graph):
        raise ConversionError(describe("simulate", "a model path, Graph or Network", type(model).__name__))
    if graph.kind == "ann":
        graph = convert(graph, options or ConversionOptions())
    elif options is not None:
        raise ConversionError(describe(graph.source, "no neuron options for an SNN file (it fixes them)",
                                       ", ".join(f"{k}={v!r}" for k, v in options.applied().items()),
                                       "convert the ANN again with the options you want"))
    return compile_network(graph)


def run_memory(network: Network, n_batch: int, T: int, dtype, time_block: int | None = None) -> int:
    """Bytes one batch of ``n_batch`` samples and ``T`` steps allocates, with the time block
    :func:`time_block` chooses (or ``time_block`` steps)."""
    model = _MemoryModel(network, dtype)
    return model.need(n_batch, T, model.time_block(n_batch, T, time_block))


def time_block(network: Network, n_batch: int, T: int, dtype=np.float32, setting: int | None = None) -> int:
    """Time-steps per block for a batch of ``n_batch`` samples and ``T`` steps.

    ``setting`` (or the environment variable ``EVSIM_TIME_BLOCK``) if given; otherwise the most
    steps whose per-block buffers (currents and events of one population at a time, for every
    sample and step of the block) fit in the larger of 64 MiB and weights + state (batch x
    neurons x 8 bytes, what a step-by-step simulator holds), within ``EVSIM_MEMORY_LIMIT``.
    Membrane state is carried from one block to the next, so the spikes do not depend on it.
    """
    return _MemoryModel(network, dtype).time_block(n_batch, T, _check_time_block(setting, "time_block"))


def check_run_memory(network: Network, n_batch: int, T: int, dtype, time_block: int | None = None) -> None:
    """Refuse a batch whose buffers would not fit in ``EVSIM_MEMORY_LIMIT``, before allocating."""
    model = _MemoryModel(network, dtype)
    model.check(n_batch, T, model.time_block(n_batch, T, time_block))


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def engine_settings() -> dict:
    """The engine's environment settings in force (recorded in every run's settings)."""
    from .compile import dense_enabled

    return {"time_block": _env_time_block() or "auto", "dense": dense_enabled(),
            "conv_kernel": os.environ.get("EVSIM_CONV_KERNEL", "auto").strip().lower() or "auto",
            "adapt_threads": adapt_enabled(), "omp_wait_policy": policy_in_force()}


def plan_run(network: Network, n_samples: int, T: int = 32, batch_size: int = 64, precision: str = "float32",
             energy=None, labels: bool = True, frames: int | None = None) -> RunPlan:
    """Check the run settings and describe the run (what every batch and the report need).

    ``energy``: an :class:`~evsim.energy.EnergyModel`, a registered name, ``"all"``, or a list
    of those (the first is the report's default; None: 45 nm fp32).  ``frames`` (T_data) marks
    event-frame input: the input is then a spike source, reported as the layer ``"input"`` (its
    SOPs replace the first layer's MACs).
    """
    energy_models = resolve_models(energy)
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise DataError(describe("simulate", "T an integer >= 1", repr(T)))
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise DataError(describe("simulate", "batch_size an integer >= 1", repr(batch_size)))
    if precision not in PRECISIONS:
        raise DataError(describe("simulate", "precision 'float32' or 'float64'", repr(precision)))
    check_run_memory(network, min(int(batch_size), max(int(n_samples), 1)), int(T), PRECISIONS[precision])
    graph = network.graph
    check_model_precision(graph, PRECISIONS[precision])
    settings = {"model": graph.source, "T": int(T), "batch_size": int(batch_size), "precision": precision,
                "samples": int(n_samples), "neuron": sorted({p.model for p in network.populations}),
                "conversion": graph.metadata.get("conversion", {}), "calibration": graph.metadata.get("calibration"),
                "engine": engine_settings()}
    layers = [(p.name, p.size) for p in network.populations]
    first_layer_macs = network.input_macs
    if frames is not None:  # spike input: the first layer does SOPs on its events, no MACs
        layers = [("input", int(np.prod(graph.input.shape)))] + layers
        first_layer_macs = 0
        settings["input"] = {"kind": "event frames", "frames": int(frames)}
    return RunPlan(int(T), int(batch_size), precision, int(n_samples), layers, first_layer_macs, network.ann_macs,
                   energy_models[0], settings, tuple(energy_models), network_costs(network))


def _check_frames(x, y, input_shape, n_classes, source: str = "simulate"):
    """Event frames ``(N, T_data, *input.shape)``: finite integer counts; labels as for static inputs."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise DataError(describe(f"{source}, 'x'", "numeric event counts", f"dtype {x.dtype}"))
    if x.shape[1] < 1:
        raise DataError(describe(f"{source}, 'x'", "at least one frame per sample", f"shape {x.shape}"))
    _, y = check_data(x[:, 0], y, input_shape, n_classes, source=source)
    if x.dtype.kind == "f" and not np.all(np.isfinite(x) & (x == np.round(x))):
        raise DataError(describe(f"{source}, 'x'", "event frames of integer counts", "non-integer values",
                                 "frames count the events of each pixel and bin"))
    if np.abs(x).max(initial=0) > np.iinfo(np.int32).max:
        raise DataError(describe(f"{source}, 'x'", "event counts below 2**31", f"{np.abs(x).max()}"))
    return x, y


def simulate(model, x, y=None, T: int | None = None, batch_size: int = 64, precision: str = "float32",
             options: ConversionOptions | None = None, energy: EnergyModel | str | list | None = None,
             progress: Callable[[int], None] | None = None, runner=None) -> Results:
    """Simulate a converted SNN on a data set, event by event.

    *Check → plan → run batches → reduce*: everything is validated first, the batches are
    then run by ``runner`` (in this process by default) and their exact counts merged.

    Parameters
    ----------
    model : str, Path, Graph or Network
        An evsim model file or graph (an ANN is converted with ``options``, default
        IF neurons with v0 = θ/2), or a compiled :class:`~evsim.compile.Network`.
    x : ndarray (N, *input.shape), or a data source
        Raw inputs (the model's input preprocessing is applied), or an object with ``n``,
        ``has_labels`` and ``read(start, stop)`` such as ``evsim.data_io.open_data(...)``.
        ``(N, T_data, *input.shape)`` (or a source with ``frames``) is event-frame input: frame t
        is the input of step t (integer counts, no preprocessing), steps past T_data get none.
    y : ndarray of int, (N,), optional
        Labels (with an array ``x``); accuracy per time-step is reported when given.
    T : int, optional
        Time-steps (default: T_data for event frames, else 32).
    batch_size : int
        Samples simulated together (kernels run in parallel over them).
    precision : {"float32", "float64"}
    options : ConversionOptions, optional
        Neuron model and its options, for an ANN model.
    energy : EnergyModel, str or list, optional
        Energy model(s) to report: models, registered names (:mod:`evsim.energy`) or ``"all"``;
        the first gives ``energy_snn_pj`` / ``energy_ann_pj`` (default ``"45nm-fp32"``).
    progress : callable, optional
        Called with the number of samples finished after each batch.
    runner : Runner, optional
        Executes the batches (default :class:`~evsim.runners.SerialRunner`; e.g.
        ``evsim.distributed.DaskRunner(client)``).

    Returns
    -------
    Results
    """
    from .runners import ArraySource, SerialRunner

    t0 = time.perf_counter()
    network = as_network(model, options)
    n_classes = int(np.prod(network.output_shape))
    if hasattr(x, "read"):
        if y is not None:
            raise DataError(describe("simulate", "labels inside the data source", "a separate y",
                                     "pass y only with an array x"))
        source = x
        frames = getattr(x, "frames", None)
    elif np.ndim(x) == len(network.graph.input.shape) + 2:  # event frames
        source = ArraySource(*_check_frames(x, y, network.graph.input.shape, n_classes))
        frames = np.shape(x)[1]
    else:
        source = ArraySource(*check_data(x, y, network.graph.input.shape, n_classes, source="simulate"))
        frames = None
    if frames is not None and (network.graph.input.scale is not None or network.graph.input.mean is not None
                               or network.graph.input.std is not None):
        raise DataError(describe(f"{network.graph.source}, input", "no input preprocessing with event frames "
                                 "(frames are spike counts, fed as they are)", "scale/mean/std",
                                 "use a model without preprocessing, or static inputs"))
    T = (frames or 32) if T is None else T
    plan = plan_run(network, source.n, T, batch_size, precision, energy, frames=frames)
    runner = runner or SerialRunner()
    t1 = time.perf_counter()

    hits, misses = _kernel_cache_stats()
    first_batch = []

    def on_batch(n):
        if not first_batch:
            first_batch.append(time.perf_counter() - t1)
        if progress is not None:
            progress(n)

    with _jit_timer() as jit:
        partials = list(runner.map(network, plan, source, plan.shards(), on_batch))
    t2 = time.perf_counter()
    results = Results.reduce(partials, plan)
    if getattr(runner, "shards", None) is not None:  # distributed and checkpointed runs say what they reused
        results.settings["shards"] = dict(runner.shards)
    hits_after, misses_after = _kernel_cache_stats()
    results.timing = {"compile_s": t1 - t0, "simulate_s": t2 - t1,
                      "first_batch_s": first_batch[0] if first_batch else None,
                      "jit_s": jit.duration if jit.done else 0.0, "kernels_compiled": misses_after - misses,
                      "kernels_from_cache": hits_after - hits}
    return results
