#!/usr/bin/env python
"""The scatter kernels alone: GSOP/s per core on the real events of a benchmark network.

    python benchmarks/kernels.py [--net vgg16] [--rate 0.1] [--batch 16] [--T 4] [--threads 1]
                                 [--kernels gather,scatter]

Runs the network once through ``Simulator.run_batch`` with every spike projection's scatter
call wrapped so that its input events are captured, then times each projection's scatter
kernel alone on those events (fresh current buffers, median of ``--rounds``), with
``--threads`` Numba threads, once per convolution kernel (``EVSIM_CONV_KERNEL``: the
output-stationary ``gather`` and the event-major ``scatter``), interleaved.  A synaptic operation is one weight added into one current per
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
            captured.append(dict(index=i, source=proj.source, target=proj.target, kind=proj.kind, pool=list(getattr(proj, "pool", (1, 1))),
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
    """Median CPU seconds of each captured scatter call, replayed alone into a zeroed current.

    CPU time of the process (``time.process_time``), not wall time: on a shared machine a
    descheduled thread does not count, so GSOP/s per core = SOPs / CPU seconds is the kernel's
    own rate (with several threads, spinning workers would count too: use one thread).

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
            t0 = time.process_time()
            call(*c["events"], current)
            times.append(time.process_time() - t0)
        t = statistics.median(times)
        rows.append(dict(source=c["source"], target=c["target"], kind=c["kind"], pool=c["pool"], n_events=c["n_events"],
                         sops=c["sops"], seconds=t, gsops=c["sops"] / t / 1e9))
    return rows


def simulator(net, T, rate, kernel):
    """The benchmark simulator with conv projections prepared for ``kernel`` (gather or scatter)."""
    import bench

    saved = os.environ.get("EVSIM_CONV_KERNEL")
    os.environ["EVSIM_CONV_KERNEL"] = kernel
    try:
        return bench.simulator(net, T, rate)
    finally:
        if saved is None:
            del os.environ["EVSIM_CONV_KERNEL"]
        else:
            os.environ["EVSIM_CONV_KERNEL"] = saved


def measure(net="vgg16", T=4, rate=0.1, batch=16, threads=1, rounds=5, kernels=("gather", "scatter")):
    """Capture the events of one batch of benchmark network ``net`` and time its scatter kernels
    with ``threads`` Numba threads, for each conv kernel of ``kernels`` on the same events; returns
    ``{kernel: rows of time_kernels}``."""
    import numba

    import bench

    numba.set_num_threads(threads)
    sims = {k: simulator(net, T, rate, k) for k in kernels}
    captured = capture(sims[kernels[0]], bench.inputs(batch), T)
    out = {k: [] for k in kernels}
    for _ in range(rounds):  # kernels interleaved, rows re-timed per round; medians per projection
        for k in kernels:
            out[k].append(time_kernels(sims[k], captured, 1))
    return {k: [dict(runs[0][j], seconds=statistics.median(r[j]["seconds"] for r in runs),
                     gsops=runs[0][j]["sops"] / statistics.median(r[j]["seconds"] for r in runs) / 1e9)
                for j in range(len(runs[0]))] for k, runs in out.items()}


def table(results, net, T, batch, rate, threads) -> str:
    """The rows of :func:`measure` as a text table (one GSOP/s column per kernel), with a total over the
    conv projections."""
    kernels = list(results)
    first = results[kernels[0]]
    head = ("source", "target", "kind", "pool", "events", "MSOP") + tuple(f"{k} ms" for k in kernels) + tuple(
        f"{k} GSOP/s" for k in kernels)
    widths = (12, 12, 8, 5, 9, 8) + (10,) * len(kernels) + (14,) * len(kernels)
    lines = [f"{net}, T={T}, batch {batch}, firing {100 * rate:g} %, {threads} thread(s), float32; "
             "GSOP/s per core = SOPs / kernel time / threads",
             " ".join(f"{h:>{w}s}" for h, w in zip(head, widths))]
    for j, r in enumerate(first):
        cells = [f"{results[k][j]['seconds'] * 1e3:10.2f}" for k in kernels]
        cells += [f"{results[k][j]['gsops'] / threads:14.2f}" for k in kernels]
        lines.append(f"{r['source']:>12s} {r['target']:>12s} {r['kind']:>8s} {'x'.join(map(str, r['pool'])):>5s} "
                     f"{r['n_events']:9d} {r['sops'] / 1e6:8.1f} " + " ".join(cells))
    conv = [j for j, r in enumerate(first) if r["kind"] == "conv"]
    if conv:
        sops = sum(first[j]["sops"] for j in conv)
        secs = {k: sum(results[k][j]["seconds"] for j in conv) for k in kernels}
        lines.append(f"{'all conv':>25s} {'':>8s} {'':>5s} {sum(first[j]['n_events'] for j in conv):9d} "
                     f"{sops / 1e6:8.1f} " + " ".join(f"{secs[k] * 1e3:10.2f}" for k in kernels) + " "
                     + " ".join(f"{sops / secs[k] / 1e9 / threads:14.2f}" for k in kernels))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="vgg16")
    ap.add_argument("--rate", type=float, default=0.10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--T", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--kernels", default="gather,scatter", help="conv kernels to time (EVSIM_CONV_KERNEL values)")
    args = ap.parse_args(argv)
    kernels = tuple(args.kernels.split(","))
    results = measure(args.net, args.T, args.rate, args.batch, args.threads, args.rounds, kernels)
    print(table(results, args.net, args.T, args.batch, args.rate, args.threads))


if __name__ == "__main__":
    main()
