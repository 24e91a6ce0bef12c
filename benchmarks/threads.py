"""Adaptive thread count (evsim/threads.py) against a fixed one, with and without a competing process.

One process, the simulator built once; rounds alternate ``EVSIM_ADAPT_THREADS=1`` and ``0`` (read per
batch), so the machine's drift hits both.  "Competing": one other process spinning on a core, as a
second job, a browser tab or another Dask worker would.  ``--spin`` starts Numba's threads before
evsim is imported (as a program calling ``numba.set_num_threads`` first does): the OpenMP workers
then spin at barriers, the case ``EVSIM_ADAPT_THREADS=auto`` adapts for.

    python benchmarks/threads.py [--net vgg16|resnet20] [--batch 1] [--rounds 9] [--spin]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", default="vgg16", choices=("vgg16", "resnet20"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--T", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--min-seconds", type=float, default=0.5)
    ap.add_argument("--spin", action="store_true", help="start Numba's OpenMP threads before importing evsim")
    args = ap.parse_args(argv)

    import numba

    if args.spin:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)

    import bench
    from evsim._omp import policy_in_force

    sim = bench.simulator(args.net, args.T, 0.1)
    x = bench.inputs(args.batch)
    sim.run_batch(x, args.T)  # compile / load kernels, allocate

    def timed(adapt: str):
        os.environ["EVSIM_ADAPT_THREADS"] = adapt
        sim.run_batch(x, args.T)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < args.min_seconds:
            sim.run_batch(x, args.T)
            n += 1
        return (time.perf_counter() - t0) / n, sim.last_threads

    print(f"{args.net} T={args.T} batch {args.batch}, {numba.get_num_threads()} Numba threads configured, "
          f"layer {numba.threading_layer()}, wait policy {policy_in_force()}; "
          f"load {open('/proc/loadavg').read().split()[:3]}")
    for label, competing in (("idle", False), ("one competing process", True)):
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if competing else None
        try:
            time.sleep(0.5)
            rows = {"0": [], "1": []}
            threads = {"0": set(), "1": set()}
            for _ in range(args.rounds):
                for adapt in ("0", "1"):
                    seconds, used = timed(adapt)
                    rows[adapt].append(seconds)
                    threads[adapt].add(used)
            fixed, adapted = statistics.median(rows["0"]), statistics.median(rows["1"])
            print(f"{label:24s} fixed {fixed * 1e3:8.2f} ms [{min(rows['0']) * 1e3:.2f}, {max(rows['0']) * 1e3:.2f}] "
                  f"threads {sorted(threads['0'])} | adaptive {adapted * 1e3:8.2f} ms "
                  f"[{min(rows['1']) * 1e3:.2f}, {max(rows['1']) * 1e3:.2f}] threads {sorted(threads['1'])} | "
                  f"adaptive/fixed {adapted / fixed:.2f}")
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()


if __name__ == "__main__":
    main()
