#!/usr/bin/env python
"""The scatter kernels alone: GSOP/s per core on the real events of a benchmark network.

    python benchmarks/kernels.py [--net vgg16] [--rate 0.1] [--batch 16] [--T 4] [--threads 1]

Runs the network once through ``Simulator.run_batch`` with every spike projection's scatter
call wrapped so that its input events are captured, then times each projection's scatter
kernel alone on those events (fresh current buffers, median of ``--rounds``), with
``--threads`` Numba threads.  A synaptic operation is one weight added into one current per
spike (methods.md 5), counted from the events and the structural fan-out, exactly as the
engine reports SOPs; composed pooling is counted per source spike.  The analog-input
projections (direct encoding) carry values, not spikes, and are not timed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def capture(sim, x, T):
    """Run one batch, recording what every spike projection's scatter call receives.

    Returns
    -------
    list of dict
        Per call: projection ``index``, ``source``, ``target``, ``kind``, ``pool``, ``events``
        (copies of ``(ev_idx, ev_cnt, nev)`` over work items), current ``shape`` and ``dtype``,
        ``sops`` and ``n_events``.
    """
    import numpy as np

    captured = []
    originals = list(sim.scatters)

    def wrap(i, call):
        proj = sim.network.projections[i]

        def recording(ev_idx, ev_cnt, nev, current):
            sops = sum(int((np.abs(ev_cnt[item, :n].astype(np.int64)) * proj.fanout[ev_idx[item, :n]]).sum())
                       for item, n in enumerate(nev))
            captured.append(dict(index=i, source=proj.source, target=proj.target, kind=proj.kind, pool=list(proj.pool),
                                 events=(ev_idx.copy(), ev_cnt.copy(), nev.copy()), shape=current.shape,
                                 dtype=current.dtype, sops=sops, n_events=int(nev.sum())))
            call(ev_idx, ev_cnt, nev, current)
        return recording

    # the engine looks its scatter calls up in this list at every use
    sim.scatters[:] = [wrap(i, c) for i, c in enumerate(originals)]
    try:
        sim.run_batch(x, T)
    finally:
        sim.scatters[:] = originals
    return captured


def time_kernels(sim, captured, rounds=5):
    """Median seconds of each captured scatter call, replayed alone into a zeroed current.

    Returns
    -------
    list of dict
        ``source``, ``target``, ``kind``, ``pool``, ``n_events``, ``sops``, ``seconds``, ``gsops`` per call.
    """
    import numpy as np

    rows = []
    for c in captured:
        call = sim.scatters[c["index"]]
        current = np.zeros(c["shape"], c["dtype"])
        call(*c["events"], current)  # compile / warm caches
        times = []
        for _ in range(rounds):
            current[:] = 0
            t0 = time.perf_counter()
            call(*c["events"], current)
            times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        rows.append(dict(source=c["source"], target=c["target"], kind=c["kind"], pool=c["pool"], n_events=c["n_events"],
                         sops=c["sops"], seconds=t, gsops=c["sops"] / t / 1e9))
    return rows


def measure(net="vgg16", T=4, rate=0.1, batch=16, threads=1, rounds=5):
    """Capture the events of one batch of benchmark network ``net`` and time its scatter kernels
    with ``threads`` Numba threads; returns the rows of :func:`time_kernels`."""
    import numba

    import bench

    numba.set_num_threads(threads)
    sim = bench.simulator(net, T, rate)
    return time_kernels(sim, capture(sim, bench.inputs(batch), T), rounds)


def table(rows, net, T, batch, rate, threads) -> str:
    """The rows of :func:`measure` as a text table, with a total over the conv projections."""
    head = ("source", "target", "kind", "pool", "events", "MSOP", "ms", "GSOP/s/core")
    widths = (12, 12, 5, 5, 9, 8, 8, 12)
    lines = [f"{net}, T={T}, batch {batch}, firing {100 * rate:g} %, {threads} thread(s), float32; "
             "GSOP/s per core = SOPs / kernel time / threads",
             " ".join(f"{h:>{w}s}" for h, w in zip(head, widths))]
    for r in rows:
        lines.append(f"{r['source']:>12s} {r['target']:>12s} {r['kind']:>5s} {'x'.join(map(str, r['pool'])):>5s} "
                     f"{r['n_events']:9d} {r['sops'] / 1e6:8.1f} {r['seconds'] * 1e3:8.2f} "
                     f"{r['gsops'] / threads:12.2f}")
    conv = [r for r in rows if r["kind"] == "conv"]
    if conv:
        sops = sum(r["sops"] for r in conv)
        secs = sum(r["seconds"] for r in conv)
        lines.append(f"{'all conv':>25s} {'':>5s} {'':>5s} {sum(r['n_events'] for r in conv):9d} "
                     f"{sops / 1e6:8.1f} {secs * 1e3:8.2f} {sops / secs / 1e9 / threads:12.2f}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="vgg16")
    ap.add_argument("--rate", type=float, default=0.10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--T", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    rows = measure(args.net, args.T, args.rate, args.batch, args.threads, args.rounds)
    print(table(rows, args.net, args.T, args.batch, args.rate, args.threads))


if __name__ == "__main__":
    main()
