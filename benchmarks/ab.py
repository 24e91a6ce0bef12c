#!/usr/bin/env python
"""Two evsim versions timed against each other in one run, interleaved (before/after a change).

    python benchmarks/ab.py --a before=/path/to/venv-a/bin/python --b after=/path/to/venv-b/bin/python
                            [--rounds 7] [--json ab.json]

Each version runs in worker processes started with its own Python (a virtual environment with
that version of evsim installed, editable); every worker reports the ``evsim`` package it imported,
so the comparison cannot silently time the same code twice.  Per configuration both workers are
started and warmed up, then driven alternately (A, B, B, A, ...) for ``--rounds`` rounds of at
least ``--min-seconds`` each; the machine's load drift hits both alike.  Reported: seconds per
batch (median [min, max]) and the ratio B/A of the medians (< 1: B is faster).

Configurations: VGG-16 and ResNet-20 of ``benchmarks/nets.py`` (10 % firing, T = 4) at batch 1 and
64 through ``Simulator.run_batch``, and the shipped model (``mnist_qcfs.npz`` converted with the
default options, the 1,000 shipped test images, T = 8, batch 64) through ``evsim.simulate`` (with
a network compiled once per worker).  The networks are built by this directory's ``nets.py``
against whichever evsim the worker imports (both versions share the graph API).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

CONFIGS = [("vgg16", 4, 1), ("vgg16", 4, 64), ("resnet20", 4, 1), ("resnet20", 4, 64), ("shipped", 8, 64)]


def worker(args):
    """Serve ``run`` requests (JSON lines on stdin) for one configuration in this interpreter's evsim."""
    import numba
    import numpy as np

    import evsim
    import bench

    numba.set_num_threads(args.threads)
    T, batch = args.T, args.batch
    if args.net == "shipped":
        import importlib.resources as res
        from evsim.compile import compile_network
        from evsim.convert import convert
        from evsim.format import load

        data = res.files("evsim.data")
        with np.load(data / "mnist_test.npz") as f:
            x, y = f["x"], f["y"]
        network = compile_network(convert(load(str(data / "mnist_qcfs.npz"))))

        def run():
            return evsim.simulate(network, x, y, T=T, batch_size=batch)
    else:
        from evsim.compile import compile_network
        from evsim.engine import Simulator

        sim = Simulator(compile_network(bench.build(args.net, T, 0.1)), np.float32)
        x = bench.inputs(batch)

        def run():
            return sim.run_batch(x, T)
    run()
    run()
    bench.emit({"ready": True, "evsim": os.path.dirname(evsim.__file__), "python": sys.executable})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] != "run":
            break
        t0 = time.perf_counter()
        for _ in range(cmd["reps"]):
            run()
        bench.emit({"t": (time.perf_counter() - t0) / cmd["reps"]})


class Worker:
    """Driver side of one worker process."""

    def __init__(self, python, net, T, batch, threads, cache_dir, extra_env=None):
        import bench

        self.err = tempfile.TemporaryFile("w+")
        cmd = [python, os.path.abspath(__file__), "--worker", "--net", net, "--T", str(T), "--batch", str(batch),
               "--threads", str(threads)]
        env = dict(os.environ, **bench.thread_vars(threads), NUMBA_CACHE_DIR=cache_dir, **(extra_env or {}))
        env.pop("PYTHONPATH", None)  # the interpreter's own environment decides which evsim is imported
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True,
                                  env=env, cwd=tempfile.gettempdir())
        self.info = None

    def read(self):
        line = self.p.stdout.readline()
        if not line:
            self.err.seek(0)
            raise RuntimeError("worker died:\n" + self.err.read()[-3000:])
        return json.loads(line)

    def ask(self, **cmd):
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        return self.read()

    def close(self):
        try:
            self.p.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.p.stdin.flush()
        except BrokenPipeError:
            pass
        self.p.wait(timeout=120)
        self.err.close()


def compare(versions, net, T, batch, rounds, min_seconds, threads, extra_env=None):
    """Time every version on one configuration, interleaved; per version its times and the evsim it ran."""
    ws = {name: Worker(python, net, T, batch, threads, cache, extra_env) for name, (python, cache) in versions.items()}
    try:
        for w in ws.values():
            w.info = w.read()
        reps = {k: max(1, int(min_seconds / max(w.ask(op="run", reps=1)["t"], 1e-6))) for k, w in ws.items()}
        times = {k: [] for k in ws}
        for r in range(rounds):
            for k in (list(ws) if r % 2 == 0 else list(ws)[::-1]):
                times[k].append(ws[k].ask(op="run", reps=reps[k])["t"])
    finally:
        for w in ws.values():
            w.close()
    return {k: dict(evsim=ws[k].info["evsim"], reps=reps[k], times=ts, median=statistics.median(ts))
            for k, ts in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", help="NAME=PYTHON of the reference version")
    ap.add_argument("--b", help="NAME=PYTHON of the version compared with it")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--min-seconds", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", default=None, help="comma list of net:T:batch (default: all)")
    ap.add_argument("--env", action="append", default=[],
                    help="KEY=VALUE for both workers, e.g. OMP_WAIT_POLICY=passive (repeatable)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--net", default="vgg16", help=argparse.SUPPRESS)
    ap.add_argument("--T", type=int, default=4, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    import bench

    versions = {}
    for spec in (args.a, args.b):
        name, python = spec.split("=", 1)
        cache = os.path.join(os.path.dirname(os.path.dirname(python)), "numba-cache")
        versions[name] = (python, cache)
    configs = CONFIGS if not args.configs else [
        (c.split(":")[0], int(c.split(":")[1]), int(c.split(":")[2])) for c in args.configs.split(",")]
    for net, T, _ in configs:  # calibrate in the driver, never inside a timed worker
        if net != "shipped":
            bench.thresholds(net, T, 0.1)
    extra_env = dict(e.split("=", 1) for e in args.env)
    a, b = list(versions)
    print(f"load average at start: {'%.2f %.2f %.2f' % os.getloadavg()}; {args.rounds} interleaved rounds, "
          f"{args.threads} threads, extra environment {extra_env or 'none'}")
    print(f"{'config':18s} | {a + ' s/batch':>28s} | {b + ' s/batch':>28s} | {b}/{a}")
    rows = []
    for net, T, batch in configs:
        r = compare(versions, net, T, batch, args.rounds, args.min_seconds, args.threads, extra_env)
        ra, rb = r[a], r[b]
        ratio = rb["median"] / ra["median"]
        rows.append(dict(net=net, T=T, batch=batch, ratio=ratio, **{a: ra, b: rb}))
        cell = lambda v: f"{v['median']:.4f} [{min(v['times']):.4f}, {max(v['times']):.4f}]"  # noqa: E731
        print(f"{net + f' T={T} b={batch}':18s} | {cell(ra):>28s} | {cell(rb):>28s} | {ratio:.3f}", flush=True)
    print("evsim imported: " + "; ".join(f"{k}: {rows[0][k]['evsim']}" for k in versions))
    print(f"load average at end: {'%.2f %.2f %.2f' % os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
