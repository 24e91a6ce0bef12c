"""Where evsim's time goes: per-kernel / per-layer timing of ``Simulator.run_batch``.

Nothing in evsim is modified: the engine's dispatch tables (``NEURON_STEPS``, ``SCATTERS``),
its kernel namespace ``K`` and ``Network.constant_currents`` are wrapped with timers for the
duration of a ``with Probe(sim):`` block.  Timer overhead is ~0.3 µs per call.

Also captures the events of one step per conv projection (for the isolated kernel benchmark).
"""
from __future__ import annotations

import time
import types
from collections import defaultdict

import numpy as np

import evsim.engine as E
from evsim.compile import Network


class Probe:
    def __init__(self, sim, capture_step: int | None = None):
        self.sim = sim
        self.times = defaultdict(float)     # (category, layer) -> seconds
        self.calls = defaultdict(int)
        self.capture_step = capture_step
        self.captured = []                  # (proj, ev_idx, ev_cnt, nev) at capture_step
        self._step_counter = defaultdict(int)

    def _add(self, key, dt):
        self.times[key] += dt
        self.calls[key] += 1

    def __enter__(self):
        pc = time.perf_counter
        self._saved = (dict(E.NEURON_STEPS), dict(E.SCATTERS), E.K, Network.constant_currents)
        probe = self

        def wrap_neuron(fn, kind):
            def w(pop, params, st):
                t = pc()
                fn(pop, params, st)
                probe._add(("neuron:" + kind, pop.name), pc() - t)
                probe._step_counter[pop.name] += 1
            return w

        for k, (fn, p) in list(E.NEURON_STEPS.items()):
            E.NEURON_STEPS[k] = (wrap_neuron(fn, k), p)

        def wrap_scatter(fn, kind):
            def w(proj, arrays, src, current):
                if (probe.capture_step is not None and kind == "conv"
                        and probe._step_counter[proj.source] == probe.capture_step + 1):
                    probe.captured.append((proj, arrays[0], src.ev_idx.copy(), src.ev_cnt.copy(), src.nev.copy(),
                                           current.shape))
                t = pc()
                fn(proj, arrays, src, current)
                probe._add(("scatter:" + kind, proj.target), pc() - t)
            return w

        for k, fn in list(E.SCATTERS.items()):
            E.SCATTERS[k] = wrap_scatter(fn, k)

        K = E.K
        ns = types.SimpleNamespace(**{n: getattr(K, n) for n in dir(K) if not n.startswith("_")})

        def event_stats(ev_idx, *a):
            t = pc()
            K.event_stats(ev_idx, *a)
            probe._add(("event_stats", "-"), pc() - t)

        def maxpool_gate(*a):
            t = pc()
            K.maxpool_gate(*a)
            probe._add(("maxpool_gate", "-"), pc() - t)

        ns.event_stats = event_stats
        ns.maxpool_gate = maxpool_gate
        E.K = ns
        orig_cc = Network.constant_currents

        def constant_currents(net, x):
            t = pc()
            out = orig_cc(net, x)
            probe._add(("constant_currents (NumPy)", "-"), pc() - t)
            return out

        Network.constant_currents = constant_currents
        return self

    def __exit__(self, *exc):
        ns, sc, K, cc = self._saved
        E.NEURON_STEPS.clear()
        E.NEURON_STEPS.update(ns)
        E.SCATTERS.clear()
        E.SCATTERS.update(sc)
        E.K = K
        Network.constant_currents = cc

    def by_category(self):
        out = defaultdict(float)
        for (cat, _), t in self.times.items():
            out[cat] += t
        return dict(out)

    def by_layer(self, category_prefix):
        out = defaultdict(float)
        for (cat, layer), t in self.times.items():
            if cat.startswith(category_prefix):
                out[layer] += t
        return dict(out)


def breakdown(sim, x, T, runs=3):
    """Median-of-``runs`` profile; returns (total seconds, {category: s}, {layer: s} for scatter,
    {layer: s} for neurons), per run."""
    sim.run_batch(x, T)  # warm
    totals, cats, scat, neur = [], [], [], []
    for _ in range(runs):
        with Probe(sim) as p:
            t = time.perf_counter()
            sim.run_batch(x, T)
            totals.append(time.perf_counter() - t)
        cats.append(p.by_category())
        scat.append(p.by_layer("scatter"))
        neur.append(p.by_layer("neuron"))
    i = int(np.argsort(totals)[len(totals) // 2])
    return totals[i], cats[i], scat[i], neur[i]


def capture_conv_events(sim, x, T, step):
    """Events entering every conv projection at time-step ``step`` (0-based)."""
    with Probe(sim, capture_step=step) as p:
        sim.run_batch(x, T)
    return p.captured


def cycle_check(sim, x, T):
    """NumPy bytes still allocated (tracemalloc) after ``run_batch`` returned, and after gc.collect().

    A non-zero first figure means the per-batch arrays outlive the call until the cyclic GC runs.
    """
    import gc
    import tracemalloc
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        sim.run_batch(x, T)
        held = tracemalloc.get_traced_memory()[0] - base
        collected = gc.collect()
        after = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    return {"held": held, "collected": collected, "after_gc": after}
