#!/usr/bin/env python
"""Memory against T (and against the number of samples): does evsim's memory stay flat?

    python benchmarks/memory.py                 # shipped model T = 32 ... 4096, VGG-16 T = 32 and 1024
    python benchmarks/memory.py --quick         # shipped model only, T up to 1024
    python benchmarks/memory.py --json out.json

Each measurement runs in a fresh worker process: it builds the simulator, runs one short batch
(kernels compiled or loaded from the cache, which itself takes RSS), resets the kernel's peak-RSS
mark (``/proc/self/clear_refs``), then runs the measured batch and reports:

* ``peak RSS``: VmHWM during the measured batch, and its growth over the RSS before it;
* evsim's own figure as in ``bench.py``: weights + persistent buffers (``sim.buffers``) +
  the tracemalloc peak of the batch's transient arrays, against the yardstick weights + state
  (state = batch x neurons x 8 bytes: v and the current in float32, what a step-by-step
  simulator must hold);
* the time block the engine chose and the time per step.

``--whole`` rows force one block of T steps (``EVSIM_TIME_BLOCK=T``: the engine before time
blocks) for comparison.

The data-set part (``--samples``) drives :func:`evsim.simulate` and the ANN accuracy
(:func:`evsim.ann.accuracy`) from a lazily read HDF5 file of N MNIST-shaped samples (uint8),
through the engine's data-source interface (``evsim.data_io.open_data`` when it exists,
else a minimal h5py slice reader defined here), and reports peak RSS against N.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def shipped_network():
    import importlib.resources as res

    import numpy as np

    from evsim.compile import compile_network
    from evsim.convert import convert
    from evsim.format import load

    data = res.files("evsim.data")
    with np.load(data / "mnist_test.npz") as f:
        x = f["x"]
    return compile_network(convert(load(str(data / "mnist_qcfs.npz")))), x


def t_worker(args):
    """One (network, T, batch) measurement in this fresh process."""
    import numba
    import numpy as np

    import bench
    from evsim.engine import Simulator

    numba.set_num_threads(args.threads)
    if args.net == "shipped":
        network, x = shipped_network()
        x = np.resize(x, (args.batch,) + x.shape[1:])
    else:
        from evsim.compile import compile_network
        network = compile_network(bench.build(args.net, 4, 0.1))
        x = bench.inputs(args.batch)
    sim = Simulator(network, np.float32, time_block=args.block or None)
    sim.run_batch(x[:1], 2)  # compile / load the kernels
    weights = sum(a.nbytes for w in sim.weights.values() for a in w)
    neurons = sum(p.size for p in network.populations)
    steps = sim.block_steps(len(x), args.T)
    bench.reset_hwm()
    rss_before = bench.proc_status("VmRSS")
    t0 = time.perf_counter()
    sim.run_batch(x, args.T)
    seconds = time.perf_counter() - t0
    peak = bench.proc_status("VmHWM")
    import tracemalloc
    tracemalloc.start()
    sim.run_batch(x, min(args.T, steps))  # one block's transient arrays (the buffers exist already)
    transient = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    bench.emit(dict(net=args.net, T=args.T, batch=len(x), block=steps, seconds=seconds, per_step=seconds / args.T,
                    rss_before=rss_before, peak_rss=peak, weights=weights, state=len(x) * neurons * 8,
                    buffers=sim.buffers.nbytes, transient=transient))


class _H5Source:
    """Minimal lazily read HDF5 data source (h5py slices), used when evsim.data_io has no open_data."""

    def __init__(self, path):
        import h5py
        self.path = path
        with h5py.File(path, "r") as f:
            self.n = len(f["x"])
            self.has_labels = "y" in f

    def read(self, start, stop):
        import h5py
        with h5py.File(self.path, "r") as f:
            return f["x"][start:stop], (f["y"][start:stop] if self.has_labels else None)


def samples_worker(args):
    """simulate() and the ANN accuracy on the first N samples of an HDF5 file, read batch by batch."""
    import importlib.resources as res

    import numba
    import numpy as np

    import bench
    import evsim
    import evsim.engine
    from evsim import data_io
    from evsim.ann import accuracy
    from evsim.format import load

    numba.set_num_threads(args.threads)
    ann = load(str(res.files("evsim.data") / "mnist_qcfs.npz"))
    if hasattr(data_io, "open_data"):
        source = data_io.open_data(args.path, ann.input.shape, 10, samples=args.samples)
        how = "evsim.data_io.open_data"
    else:
        source = _H5Source(args.path)
        how = "h5py slices (benchmarks/memory.py)"
    network = evsim.engine.as_network(ann)
    x, y = source.read(0, 8)
    evsim.simulate(network, x, y, T=2)  # compile / load the kernels
    accuracy(ann, x, y)
    bench.reset_hwm()
    rss_before = bench.proc_status("VmRSS")
    t0 = time.perf_counter()

    class First:  # the first N samples of the source
        n = min(args.samples, source.n)
        has_labels = source.has_labels
        read = staticmethod(source.read)

    res_ = evsim.simulate(network, First, T=args.T, batch_size=64)
    t_snn = time.perf_counter() - t0
    t0 = time.perf_counter()
    acc = accuracy(ann, First, batch_size=256)
    t_ann = time.perf_counter() - t0
    bench.emit(dict(samples=First.n, reader=how, rss_before=rss_before, peak_rss=bench.proc_status("VmHWM"),
                    snn_s=t_snn, ann_s=t_ann, snn_accuracy=res_.accuracy[-1], ann_accuracy=acc))


def run(kind, threads, env=None, **opts):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--threads", str(threads)]
    cmd += [a for k, v in opts.items() for a in (f"--{k}", str(v))]
    import bench
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **bench.thread_vars(threads),
                                                                       **(env or {})))
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.splitlines()[-1])


def mb(n):
    return n / 2**20


def make_h5(path, n):
    """N MNIST-shaped uint8 samples (the shipped test images repeated) and labels."""
    import h5py
    import numpy as np
    _, x = shipped_network()
    import importlib.resources as res
    with np.load(res.files("evsim.data") / "mnist_test.npz") as f:
        y = f["y"]
    with h5py.File(path, "w") as f:
        dx = f.create_dataset("x", (n,) + x.shape[1:], np.uint8, chunks=(256,) + x.shape[1:])
        dy = f.create_dataset("y", (n,), np.int64)
        for lo in range(0, n, len(x)):
            hi = min(n, lo + len(x))
            dx[lo:hi] = x[:hi - lo]
            dy[lo:hi] = y[:hi - lo]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--net", default="shipped", help=argparse.SUPPRESS)
    ap.add_argument("--T", type=int, default=32, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=64, help=argparse.SUPPRESS)
    ap.add_argument("--block", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--path", default="", help=argparse.SUPPRESS)
    ap.add_argument("--samples", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return {"t": t_worker, "samples": samples_worker}[args.worker](args)
    import bench

    out = {"machine": bench.machine(), "t": [], "samples": []}
    Ts = (32, 128, 256, 1024) if args.quick else (32, 128, 256, 1024, 4096)
    configs = [("shipped", T, 64, 0) for T in Ts] + [("shipped", T, 64, T) for T in Ts if T <= 256]
    if not args.quick:
        bench.thresholds("vgg16", 4, 0.1)
        configs += [("vgg16", 32, 64, 32), ("vgg16", 32, 64, 0), ("vgg16", 1024, 64, 0)]
    print(f"{'network':8s} {'T':>5s} {'batch':>5s} {'block':>5s} | {'weights':>7s} {'state':>7s} {'w+s':>7s} | "
          f"{'buffers':>7s} {'transient':>9s} {'evsim/(w+s)':>11s} | {'RSS before':>10s} {'peak RSS':>8s} "
          f"{'growth':>6s} | {'ms/step':>7s}")
    for net, T, batch, block in configs:
        r = run("t", args.threads, net=net, T=T, batch=batch, block=block)
        r["forced_block"] = block
        out["t"].append(r)
        ws = r["weights"] + r["state"]
        ev = r["weights"] + r["buffers"] + r["transient"]
        tag = f"{r['block']}" + ("*" if block else "")
        print(f"{net:8s} {T:5d} {batch:5d} {tag:>5s} | {mb(r['weights']):7.1f} {mb(r['state']):7.1f} {mb(ws):7.1f} | "
              f"{mb(r['buffers']):7.1f} {mb(r['transient']):9.1f} {ev / ws:11.2f} | {mb(r['rss_before']):10.0f} "
              f"{mb(r['peak_rss']):8.0f} {mb(r['peak_rss'] - r['rss_before']):6.0f} | {1e3 * r['per_step']:7.2f}",
              flush=True)
    print("MB; block* = forced to T (one block: the engine before time blocks); evsim = weights + buffers + "
          "transient.")

    print(f"\n{'samples':>8s} | {'RSS before':>10s} {'peak RSS':>8s} | {'SNN s':>6s} {'ANN s':>6s} | reader")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "mnist_large.h5")
        counts = (128, 10000) if args.quick else (128, 10000, 50000)
        make_h5(path, max(counts))
        for n in counts:
            r = run("samples", args.threads, path=path, samples=n, T=8)
            out["samples"].append(r)
            print(f"{r['samples']:8d} | {mb(r['rss_before']):10.0f} {mb(r['peak_rss']):8.0f} | {r['snn_s']:6.2f} "
                  f"{r['ann_s']:6.2f} | {r['reader']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
