#!/usr/bin/env python
"""Dask scaling on one machine: throughput with 1 and 2 workers against the single-process path.

    python benchmarks/distributed.py                    # 512 shipped MNIST digits, T = 8, 5 rounds
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
   read from the file batch by batch, in a plain process of its own like ``evsim run``
   without cluster flags), then each cluster with small shards (one batch per task) and with
   large shards.  Each cluster's first run (workers import evsim and load the kernels) is
   timed separately, before the rounds.  A Dask measurement is a whole ``simulate`` call: handing the
   network to the workers (worker plugin), their kernel warm-up (from the Numba cache), the
   tasks, and the merge.  Every run's report must equal the single-process one (checked).
4. Prints samples/s (best and median over the rounds: on a shared machine the best run is
   the least disturbed one), the ratio to the single-process path, the CPU seconds per
   sample of every process involved (client, scheduler, nannies, workers: less sensitive
   to other load than wall time), and the cost of the Dask path on top of the same work,
   fitted per run (plugin, warm-up, merge) and per shard (task round trip) from the
   one-worker runs with small and large shards against the single-process runs, on the
   best wall times and on the CPU seconds.  Also the host's CPU steal during the runs.
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
HERE = os.path.dirname(os.path.abspath(__file__))  # noqa: E305
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


def steal_seconds() -> float:
    """CPU time stolen from this VM by its host so far (all CPUs, /proc/stat), in seconds."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def cpu_seconds(client) -> float:
    """CPU seconds used so far by this process (its threads, a local cluster's scheduler and nannies)
    and by the client's worker processes."""
    total = time.process_time()
    if client is not None:
        total += sum(client.run(time.process_time).values())
    return total


class SerialProcess:
    """The single-process path in a plain process of its own (as ``evsim run`` without cluster flags):
    a process that hosts a local cluster's scheduler and nannies would slow it down."""

    def __init__(self, samples: int, T: int, batch: int, env: dict | None = None):
        import subprocess

        code = (f"import sys, time; sys.path[:] = [p for p in sys.path if p != {HERE!r}]\n"
                "import evsim\nfrom importlib.resources import files\nfrom evsim.data_io import open_data\n"
                f"model = str(files('evsim.data') / {MODEL!r})\n"
                f"data = open_data(files('evsim.data') / {DATA!r}, evsim.load(model).input.shape, 10, samples={samples})\n"
                "for line in sys.stdin:\n"
                "    t0, c0 = time.perf_counter(), time.process_time()\n"
                f"    evsim.simulate(model, data, T={T}, batch_size={batch})\n"
                "    print(time.perf_counter() - t0, time.process_time() - c0, flush=True)\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env={**os.environ, **(env or {})})

    def run(self) -> tuple[float, float]:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        wall, cpu = self.proc.stdout.readline().split()
        return float(wall), float(cpu)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="256 samples, one round")
    ap.add_argument("--samples", type=int, default=None, help="samples (default 512, quick 256)")
    ap.add_argument("-T", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--large-shard", type=int, default=None, help="samples per large shard (default: samples / 2)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 3, quick 1)")
    ap.add_argument("--json", default=None, help="also write all results to this JSON file")
    args = ap.parse_args(argv)

    import evsim
    from evsim.data_io import open_data
    from evsim.distributed import DaskRunner, open_client

    samples = args.samples or (256 if args.quick else 512)
    rounds = args.rounds or (1 if args.quick else 5)
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
    cpu: dict[str, list[float]] = {}
    shards: dict[str, int] = {}
    clusters = {}
    steal0 = steal_seconds()
    # as `evsim run` runs, and with OpenMP's idle threads sleeping instead of spinning (see docs/distributed.md:
    # on this shared VM the spinning costs the main thread's parallel regions; Dask runs tasks on other threads)
    serials = {"serial": SerialProcess(samples, T, batch),
               "serial_passive": SerialProcess(samples, T, batch, {"OMP_WAIT_POLICY": "passive"})}
    for serial in serials.values():
        serial.run()  # its kernels from the cache
    try:
        for n in (1, 2):
            t0 = time.perf_counter()
            ctx = open_client(workers=n)
            clusters[n] = (ctx, ctx.__enter__())
            out.setdefault("cluster_start_s", {})[n] = time.perf_counter() - t0
            print(f"local cluster of {n} worker(s) up in {out['cluster_start_s'][n]:.1f} s", flush=True)

        for n in (1, 2):  # a fresh worker imports evsim and loads the kernels on its first run: a command pays it once
            t0 = time.perf_counter()
            evsim.simulate(model, data, T=T, batch_size=batch, runner=DaskRunner(clusters[n][1]))
            out.setdefault("first_run_s", {})[n] = time.perf_counter() - t0

        def measure(key, client, runner):
            before = cpu_seconds(client)
            t0 = time.perf_counter()
            result = evsim.simulate(model, data, T=T, batch_size=batch, runner=runner)
            times.setdefault(key, []).append(time.perf_counter() - t0)
            cpu.setdefault(key, []).append(cpu_seconds(client) - before)
            assert report_core(result) == expected, f"{key}: report differs from the single-process run"

        for r in range(rounds):
            for key, serial in serials.items():
                wall, cpu_s = serial.run()
                times.setdefault(key, []).append(wall)
                cpu.setdefault(key, []).append(cpu_s)
            for n in (1, 2):
                for size in (small, large):
                    key = f"dask{n}_shard{size}"
                    runner = DaskRunner(clusters[n][1], shard_size=size)
                    measure(key, clusters[n][1], runner)
                    shards[key] = runner.shards["total"]
            print(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
                  flush=True)
    finally:
        for serial in serials.values():
            serial.close()
        for ctx, _ in clusters.values():
            ctx.__exit__(None, None, None)
    out["machine"]["load_after"] = load()
    out["machine"]["steal_share"] = (steal_seconds() - steal0) / max(1e-9, cores * sum(map(sum, times.values())))

    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    rows = []
    for key, values in times.items():
        rows.append({"path": key, "shards": shards.get(key, 1), "seconds": values, "cpu_seconds": cpu[key],
                     "samples_per_s_best": samples / best[key], "samples_per_s_median": samples / med[key],
                     "vs_single_process_best": best["serial"] / best[key],
                     "vs_single_process_median": med["serial"] / med[key],
                     "cpu_ms_per_sample": 1000 * cpu_med[key] / samples})
    out["runs"] = rows
    # one worker does the same work as the single process with the same threads: the difference is
    # the Dask path's cost, fixed per run (plugin, warm-up, merge) + per shard (task round trip);
    # fitted on the least-disturbed wall times and on the CPU seconds of every process involved
    s1, l1 = f"dask1_shard{small}", f"dask1_shard{large}"

    def fit(values, base="serial_passive"):  # the same kernel speed as on a worker's task thread
        extra_small, extra_large = values[s1] - values[base], values[l1] - values[base]
        per_shard = (extra_small - extra_large) / (shards[s1] - shards[l1])
        return extra_large - per_shard * shards[l1], per_shard

    (run_wall, shard_wall), (run_cpu, shard_cpu) = fit(best), fit(cpu_med)
    out["overhead"] = {"wall_per_run_s": run_wall, "wall_per_shard_s": shard_wall, "cpu_per_run_s": run_cpu,
                       "cpu_per_shard_s": shard_cpu, "serial_wall_per_sample_s": best["serial_passive"] / samples,
                       "serial_cpu_per_sample_s": cpu_med["serial_passive"] / samples}
    out["identical_reports"] = True

    print()
    print(f"{'path':<16} {'shards':>6} {'samples/s best':>15} {'median':>8} {'vs 1 process':>13} {'CPU ms/sample':>14}")
    for row in rows:
        print(f"{row['path']:<16} {row['shards']:>6} {row['samples_per_s_best']:>15.1f} "
              f"{row['samples_per_s_median']:>8.1f} {row['vs_single_process_best']:>6.2f} / "
              f"{row['vs_single_process_median']:<4.2f} {row['cpu_ms_per_sample']:>14.2f}")
    print(f"\nstart-up a command pays once: local cluster {out['cluster_start_s'][1]:.1f} s (1 worker), "
          f"{out['cluster_start_s'][2]:.1f} s (2 workers); first run on it {out['first_run_s'][1]:.1f} s / "
          f"{out['first_run_s'][2]:.1f} s")
    o = out["overhead"]
    print(f"\nDask cost on top of the same work (1 worker vs 1 process, passive OpenMP): per run {o['wall_per_run_s']:.2f} s wall, "
          f"{o['cpu_per_run_s']:.2f} s CPU; per shard {1000 * o['wall_per_shard_s']:.0f} ms wall, "
          f"{1000 * o['cpu_per_shard_s']:.0f} ms CPU; single process {1000 * o['serial_wall_per_sample_s']:.2f} ms "
          f"per sample (best)")
    print(f"load average {out['machine']['load_before'][0]:.1f} -> {out['machine']['load_after'][0]:.1f}; "
          f"CPU steal {100 * out['machine']['steal_share']:.0f} % of the measured time")
    print("every distributed report was identical to the single-process report")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"written to {args.json}")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
