#!/usr/bin/env python
"""Dask scaling on one machine: throughput with 1 and 2 workers against the single-process path.

    python benchmarks/distributed.py                    # 1,000 shipped MNIST digits, T = 8, 3 rounds
    python benchmarks/distributed.py --quick            # 256 digits, 1 round
    python benchmarks/distributed.py --json dist.json   # also write every figure to a JSON file

Needs the [dask] extra.  What it does:

1. Warms the Numba cache up (one serial run) so that no measurement pays a compilation.
2. Starts two local clusters (``evsim.distributed.open_client``): one worker process with all
   the cores as Numba threads, and one worker process per core with one Numba thread each,
   exactly what ``evsim run --workers 1`` / ``--workers 2`` do; cluster start-up time is
   reported separately (a command pays it once).
3. Each round runs, one after the other so that load drift on a shared machine hits every
   path alike: the single-process path (``evsim.simulate`` with the serial runner, the data
   read from the file batch by batch), then each cluster with small shards (one batch per
   task) and with large shards.  A Dask measurement is a whole ``simulate`` call: handing the
   network to the workers (worker plugin), their kernel warm-up (from the Numba cache), the
   tasks, and the merge.  Every run's report must equal the single-process one (checked).
4. Prints samples/s (median, min, max over the rounds), the ratio to the single-process path,
   and the cost of the Dask path on top of the same work: fitted per run (plugin and
   warm-up) and per shard (task round trip), from the one-worker runs with small and large
   shards against the single-process runs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from importlib.resources import files

# this file's name would shadow the ``distributed`` package for everything imported after it
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]

MODEL = "mnist_qcfs.npz"
DATA = "mnist_test.npz"


def report_core(results) -> str:
    d = results.to_dict()
    d.pop("timing")
    d["settings"] = {k: v for k, v in d["settings"].items() if k not in ("shards", "runner")}
    return json.dumps(d, sort_keys=True, default=str)


def load() -> tuple[float, float, float]:
    return os.getloadavg()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="256 samples, one round")
    ap.add_argument("--samples", type=int, default=None, help="samples (default 1000, quick 256)")
    ap.add_argument("-T", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--large-shard", type=int, default=None, help="samples per large shard (default: samples / 2)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 3, quick 1)")
    ap.add_argument("--json", default=None, help="also write all results to this JSON file")
    args = ap.parse_args(argv)

    import evsim
    from evsim.data_io import open_data
    from evsim.distributed import DaskRunner, open_client

    samples = args.samples or (256 if args.quick else 1000)
    rounds = args.rounds or (1 if args.quick else 3)
    T, batch = args.T, args.batch_size
    model = str(files("evsim.data") / MODEL)
    graph = evsim.load(model)
    data = open_data(files("evsim.data") / DATA, graph.input.shape, 10, samples=samples)
    small = batch
    large = args.large_shard or max(batch, (samples // 2 + batch - 1) // batch * batch)
    cores = len(os.sched_getaffinity(0))
    out = {"machine": {"cores": cores, "python": platform.python_version(), "cpu": platform.processor() or "?",
                       "load_before": load()},
           "config": {"model": MODEL, "data": DATA, "samples": samples, "T": T, "batch_size": batch,
                      "small_shard": small, "large_shard": large, "rounds": rounds}}
    print(f"{samples} samples of {DATA}, {MODEL}, T = {T}, batch {batch}; {cores} cores; "
          f"load average {out['machine']['load_before'][0]:.1f}", flush=True)

    t0 = time.perf_counter()
    reference = evsim.simulate(model, data, T=T, batch_size=batch)  # also fills the Numba cache
    print(f"warm-up serial run {time.perf_counter() - t0:.1f} s", flush=True)
    expected = report_core(reference)

    times: dict[str, list[float]] = {}
    shards: dict[str, int] = {}
    clusters = {}
    try:
        for n in (1, 2):
            t0 = time.perf_counter()
            ctx = open_client(workers=n)
            clusters[n] = (ctx, ctx.__enter__())
            out.setdefault("cluster_start_s", {})[n] = time.perf_counter() - t0
            print(f"local cluster of {n} worker(s) up in {out['cluster_start_s'][n]:.1f} s", flush=True)
        for r in range(rounds):
            t0 = time.perf_counter()
            result = evsim.simulate(model, data, T=T, batch_size=batch)
            times.setdefault("serial", []).append(time.perf_counter() - t0)
            assert report_core(result) == expected
            for n in (1, 2):
                for size in (small, large):
                    key = f"dask{n}_shard{size}"
                    runner = DaskRunner(clusters[n][1], shard_size=size)
                    t0 = time.perf_counter()
                    result = evsim.simulate(model, data, T=T, batch_size=batch, runner=runner)
                    times.setdefault(key, []).append(time.perf_counter() - t0)
                    shards[key] = runner.shards["total"]
                    assert report_core(result) == expected, f"{key}: report differs from the serial run"
            print(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
                  flush=True)
    finally:
        for ctx, _ in clusters.values():
            ctx.__exit__(None, None, None)
    out["machine"]["load_after"] = load()

    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for key, values in times.items():
        rate = [samples / t for t in values]
        rows.append({"path": key, "shards": shards.get(key, 1), "seconds": values,
                     "samples_per_s": statistics.median(rate), "min": min(rate), "max": max(rate),
                     "vs_single_process": med["serial"] / med[key]})
    out["runs"] = rows
    # one worker does the same work as the single process with the same threads: the difference is
    # the Dask path's cost, fixed per run (plugin, warm-up, merge) + per shard (task round trip)
    s1, l1 = f"dask1_shard{small}", f"dask1_shard{large}"
    extra_small, extra_large = med[s1] - med["serial"], med[l1] - med["serial"]
    per_shard = (extra_small - extra_large) / (shards[s1] - shards[l1]) if shards[s1] != shards[l1] else float("nan")
    per_run = extra_large - per_shard * shards[l1]
    out["overhead"] = {"per_shard_s": per_shard, "per_run_s": per_run,
                       "serial_per_sample_s": med["serial"] / samples}
    out["identical_reports"] = True

    print()
    print(f"{'path':<18} {'shards':>6} {'samples/s':>10} {'[min, max]':>16} {'vs 1 process':>12}")
    for row in rows:
        print(f"{row['path']:<18} {row['shards']:>6} {row['samples_per_s']:>10.1f} "
              f"{'[%.1f, %.1f]' % (row['min'], row['max']):>16} {row['vs_single_process']:>12.2f}")
    print(f"\nDask cost on top of the same work (1 worker vs 1 process): {per_run:.2f} s per run, "
          f"{1000 * per_shard:.0f} ms per shard; single process {1000 * out['overhead']['serial_per_sample_s']:.2f} "
          f"ms per sample; load average {out['machine']['load_before'][0]:.1f} -> "
          f"{out['machine']['load_after'][0]:.1f}")
    print("every distributed report was identical to the single-process report")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"written to {args.json}")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
