#!/usr/bin/env python
"""evsim vs a dense PyTorch + SpikingJelly 2.0 simulation of the same converted SNNs (issue 7).

    python benchmarks/bench.py                       # full run (~20-30 min on 2 cores)
    python benchmarks/bench.py --quick               # T=4 only, fewer rounds (a few minutes)
    python benchmarks/bench.py --json results.json   # also write every figure to a JSON file

Needs the [bench] extra (torch==2.13.0) and ``pip install --no-deps spikingjelly==2.0.0 loguru``.

What it does
1. Builds VGG-16 and ResNet-20 (CIFAR shapes, seeded random weights, ``benchmarks/nets.py``) and
   calibrates one threshold per layer so that every layer fires ``--rate`` (default 10 %) spikes per
   neuron per step on a calibration batch (bisection on the exact simulated IF rate); thresholds
   are cached in ``benchmarks/.cache`` (``EVSIM_BENCH_CACHE``).
2. Checks, in float64, that evsim and the dense SpikingJelly simulation emit identical spike
   counts in every layer at every step (and the same logits to ~1e-12).
3. Times both in float32, each in its own worker process with the same 2 threads (Numba / torch,
   and the OpenMP / BLAS thread variables of both), the two workers driven alternately so that
   load drift on a shared machine hits both alike.  Prints images/s (median, min, max of >= 5
   measurements), the ratio evsim/SpikingJelly, and memory: evsim's weights + persistent buffers
   + transient peak of one ``run_batch`` against weights + state, and peak RSS of both workers.
4. Scaling run: VGG-16 driven to 1-30 % firing; time against SOPs, linear fit, R² and the fixed
   per-batch overhead (intercept) as a share of the time at 10 % firing.
5. Full mode also: evsim JIT cost (cold compile, cached first call, warm call), the time
   breakdown per phase and per layer from the engine's profiler (``Simulator.profile``), and the
   scatter kernels alone in GSOP/s per core (``benchmarks/kernels.py``).
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
CACHE = os.environ.get("EVSIM_BENCH_CACHE", os.path.join(HERE, ".cache"))
THREADS = 2
N_CALIB = 16
CALIB_SEED, DATA_SEED = 1, 2
#: the engine profiler's phases, in the order of a population's work
PHASES = ("preprocess", "input", "fill", "scatter conv", "scatter dense", "scatter csr", "neurons")


# --------------------------------------------------------------------------- shared helpers
#: OpenMP wait policy of both workers (``--omp-wait``): "passive" threads sleep at a barrier instead of
#: spinning, which on a shared, oversubscribed machine keeps a descheduled spinning thread from holding
#: up its team (evsim sets the same default itself, see docs/performance.md)
OMP_WAIT = "passive"


def thread_vars(n: int) -> dict[str, str]:
    """Environment that gives a process ``n`` threads whichever runtime it uses.

    Both workers get the same variables, so neither engine gets a bigger pool from a library
    neither of them controls directly (OpenMP under Numba's ``omp`` layer and torch, BLAS), and the
    same OpenMP wait policy.
    """
    env = {name: str(n) for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                     "MKL_NUM_THREADS")}
    if OMP_WAIT != "default":
        env["OMP_WAIT_POLICY"] = OMP_WAIT
    return env


def thresholds(net: str, T: int, rate: float) -> dict:
    """Calibrated per-layer thresholds of ``net`` for ``T`` steps and a firing ``rate`` (cached as JSON)."""
    os.makedirs(CACHE, exist_ok=True)
    ignore = os.path.join(CACHE, ".gitignore")
    if not os.path.exists(ignore):
        with open(ignore, "w") as f:
            f.write("*\n")
    path = os.path.join(CACHE, f"{net}_T{T}_rate{rate:g}.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    from nets import NETWORKS, calibrate, random_inputs
    th = calibrate(NETWORKS[net](), random_inputs(N_CALIB, CALIB_SEED), T, rate)
    with open(path, "w") as f:
        json.dump(th, f, indent=1)
    return th


def build(net: str, T: int, rate: float):
    """The benchmark graph ``net`` with thresholds calibrated for ``T`` and ``rate``."""
    from nets import NETWORKS
    return NETWORKS[net](thresholds=thresholds(net, T, rate))


def simulator(net: str, T: int, rate: float):
    """A float32 evsim ``Simulator`` of the benchmark graph."""
    import numpy as np
    from evsim.compile import compile_network
    from evsim.engine import Simulator
    return Simulator(compile_network(build(net, T, rate)), np.float32)


def inputs(batch: int):
    """The first ``batch`` of the 64 timing images (the same images for every batch size)."""
    from nets import random_inputs
    return random_inputs(64, DATA_SEED)[:batch]


def proc_status(key: str) -> int:
    """VmRSS / VmHWM of this process in bytes (VmHWM, unlike ru_maxrss, is not inherited across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_hwm():
    """Reset VmHWM to the current RSS (Linux >= 4.0); silently a no-op where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def emit(obj):
    """Send one JSON message from a worker to the driver."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def worker_command(kind: str, **opts) -> list[str]:
    """Command line that runs this file as a ``kind`` worker with ``--key value`` options."""
    return [sys.executable, os.path.abspath(__file__), "--worker", kind] + [
        a for k, v in opts.items() for a in (f"--{k}", str(v))]


def run_worker(kind: str, threads: int = THREADS, env: dict | None = None, **opts):
    """Run a one-shot worker process; return its last JSON message."""
    out = subprocess.run(worker_command(kind, threads=threads, **opts), capture_output=True, text=True,
                         env=dict(os.environ, **thread_vars(threads), **(env or {})))
    if out.returncode:
        raise RuntimeError(f"{kind} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.splitlines()[-1])


# --------------------------------------------------------------------------- throughput worker: one engine, one config
def engine_worker(args):
    """Serve timing and memory requests (JSON lines on stdin) for one engine and configuration."""
    x = inputs(args.batch)
    T = args.T
    info = {}
    if args.worker == "evsim":
        import numba
        import numpy as np
        numba.set_num_threads(args.threads)
        sim = simulator(args.net, T, args.rate)
        neurons = sum(p.size for p in sim.network.populations)
        # per-neuron arrays the simulator holds besides the weights: v0 and threshold, the constant
        # current of bias-only targets, the fan-out for SOP counts
        per_neuron = ([np.asarray(a, np.float32) for p in sim.network.populations
                       for a in (p.v0, p.kernel_theta, p.param_values)]
                      + list(sim.static_current.values()) + list(sim.fanout.values()))
        info.update(weights_bytes=sum(a.nbytes for w in sim.weights.values() for a in w),
                    per_neuron_bytes=sum(a.nbytes for a in per_neuron), state_bytes=len(x) * neurons * 8,
                    neurons=neurons, numba_threads=numba.get_num_threads())

        def run():
            return sim.run_batch(x, T)
    else:
        import torch
        from nets import DenseSNN
        torch.set_num_threads(args.threads)
        dense = DenseSNN(build(args.net, T, args.rate), "float32")
        info.update(weights_bytes=sum(p.numel() * p.element_size() for _, kind, _, m in dense.plan
                                      if kind == "layer" for p in m.parameters()),
                    torch_threads=torch.get_num_threads())

        if args.worker == "ann":  # the moonshot's yardstick: torch running the ANN (one pass, ReLU)
            def run():
                return dense.run_ann(x)
        else:
            def run():
                return dense.run(x, T)
    t0 = time.perf_counter()
    out = run()
    info["first_call_s"] = time.perf_counter() - t0
    if args.worker == "evsim":
        import numba
        info["threading_layer"] = numba.threading_layer()
        stats = out.stats
        info["sops_per_image"] = float(sum(s[:, 2].sum() for s in stats.values())) / len(x)
        info["rate"] = float(sum(s[:, 0].sum() for s in stats.values())) / (len(x) * T * info["neurons"])
    run()
    emit(dict(ready=True, **info))
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "run":
            t0 = time.perf_counter()
            for _ in range(cmd["reps"]):
                run()
            emit({"t": (time.perf_counter() - t0) / cmd["reps"]})
        elif cmd["op"] == "mem":
            reset_hwm()
            rss_before = proc_status("VmRSS")
            run()
            res = {"peak_rss": proc_status("VmHWM"), "rss_before_run": rss_before}
            if args.worker == "evsim":
                import tracemalloc
                # buffers already exist (warm): what tracemalloc sees is one run's transient arrays
                tracemalloc.start()
                run()
                res["transient_peak"] = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                res["buffers_bytes"] = sim.buffers.nbytes
            emit(res)
        else:
            break


class EngineWorker:
    """Driver side of :func:`engine_worker`; the worker's stderr is kept for error messages."""

    def __init__(self, engine, net, T, batch, rate):
        self.err = tempfile.TemporaryFile("w+")
        self.p = subprocess.Popen(worker_command(engine, net=net, T=T, batch=batch, rate=rate, threads=THREADS),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True,
                                  env=dict(os.environ, **thread_vars(THREADS)))
        self.info = None

    def read(self):
        """The worker's next JSON message."""
        line = self.p.stdout.readline()
        if not line:
            self.err.seek(0)
            raise RuntimeError("benchmark worker died:\n" + self.err.read()[-3000:])
        return json.loads(line)

    def ask(self, **cmd):
        """Send one command; return the answer."""
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        return self.read()

    def close(self):
        """Ask the worker to quit and wait for it."""
        try:
            self.p.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.p.stdin.flush()
        except BrokenPipeError:
            pass
        self.p.wait(timeout=60)
        self.err.close()


def timed_pair(net, T, batch, rate, rounds, min_seconds):
    """Time evsim and SpikingJelly alternately on one configuration.

    Returns
    -------
    dict engine -> {info, mem, times (s per batch), reps, median, ips, ips_min, ips_max}
    """
    ws = {"evsim": EngineWorker("evsim", net, T, batch, rate), "sj": EngineWorker("sj", net, T, batch, rate),
          "ann": EngineWorker("ann", net, T, batch, rate)}
    try:
        for w in ws.values():  # both start (import, build, warm up) concurrently, before any timing
            w.info = w.read()
        # each measurement lasts >= min_seconds: small batches are repeated inside one
        reps = {k: max(1, int(min_seconds / max(w.ask(op="run", reps=1)["t"], 1e-6))) for k, w in ws.items()}
        times = {k: [] for k in ws}
        for r in range(rounds):
            for k in (list(ws) if r % 2 == 0 else list(ws)[::-1]):
                times[k].append(ws[k].ask(op="run", reps=reps[k])["t"])
        mem = {k: w.ask(op="mem") for k, w in ws.items()}
    finally:
        for w in ws.values():
            w.close()
    return {k: dict(info=ws[k].info, mem=mem[k], times=ts, reps=reps[k], median=statistics.median(ts),
                    ips=batch / statistics.median(ts), ips_min=batch / max(ts), ips_max=batch / min(ts))
            for k, ts in times.items()}


# --------------------------------------------------------------------------- float64 spike check
def check_spikes(net, T, rate, n):
    """Compare float64 evsim and dense SpikingJelly on ``n`` images.

    Returns
    -------
    (layers with identical spike counts at every step, layers, max |Δ logits|, total spikes)
    """
    import numpy as np
    from evsim.compile import compile_network
    from evsim.engine import Simulator
    from nets import DenseSNN, neuron_names
    graph = build(net, T, rate)
    x = inputs(n)
    r = Simulator(compile_network(graph), np.float64).run_batch(x, T)
    stats, logits = r.stats, r.logits
    out, spikes = DenseSNN(graph, "float64").run(x, T, record=True)
    names = neuron_names(graph)
    same = [np.array_equal(stats[k][:, 0], spikes[k].astype(np.int64)) for k in names]
    return sum(same), len(names), float(np.abs(out - logits).max()), int(sum(stats[k][:, 0].sum() for k in names))


# --------------------------------------------------------------------------- scaling
def scaling_worker(args):
    """Time one network at several firing rates (rounds interleaved over the rates)."""
    import numba
    numba.set_num_threads(args.threads)
    rates = [float(r) for r in args.rates.split(",")]
    x = inputs(args.batch)
    sims = [simulator(args.net, args.T, r) for r in rates]
    sops, fired = [], []
    for sim in sims:
        stats = sim.run_batch(x, args.T).stats
        sops.append(float(sum(s[:, 2].sum() for s in stats.values())))
        n = sum(p.size for p in sim.network.populations)
        fired.append(float(sum(s[:, 0].sum() for s in stats.values())) / (len(x) * args.T * n))
    times = [[] for _ in rates]
    for _ in range(args.rounds):
        for ts, sim in zip(times, sims):
            t0 = time.perf_counter()
            sim.run_batch(x, args.T)
            ts.append(time.perf_counter() - t0)
    emit({"rates": rates, "sops": sops, "fired": fired, "times": times})


def linear_fit(xs, ys):
    """Least-squares ``y = a + b x``; returns (a, b, R²)."""
    import numpy as np
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    b, a = np.polyfit(xs, ys, 1)
    r2 = 1 - ((ys - a - b * xs) ** 2).sum() / ((ys - ys.mean()) ** 2).sum()
    return float(a), float(b), float(r2)


def scaling(net, T, batch, rates, rounds):
    """Run the scaling worker and fit time against SOPs (medians of ``rounds``)."""
    for r in rates:  # calibrate here, not inside the timed worker
        thresholds(net, T, r)
    sc = run_worker("scaling", net=net, T=T, batch=batch, rates=",".join(map(str, rates)), rounds=rounds)
    times = [statistics.median(ts) for ts in sc["times"]]
    a, slope, r2 = linear_fit(sc["sops"], times)
    t10 = a + slope * sc["sops"][rates.index(0.1)] if 0.1 in rates else float("nan")
    return dict(batch=batch, rates=rates, fired=sc["fired"], sops=sc["sops"], times=times, all_times=sc["times"],
                intercept_s=a, gsops=1 / slope / 1e9, r2=r2, overhead_at_10=a / t10)


def print_scaling(sc):
    """Table of the scaling run: measured and fitted time per firing rate, then the fit."""
    print(f"{'target':>6s} {'fired':>6s} {'GSOP/batch':>10s} {'time s':>8s} {'fit s':>8s} {'GSOP/s':>7s}")
    for r, f, s, t in zip(sc["rates"], sc["fired"], sc["sops"], sc["times"]):
        fit = sc["intercept_s"] + s / (sc["gsops"] * 1e9)
        print(f"{100 * r:5.0f}% {100 * f:5.1f}% {s / 1e9:10.3f} {t:8.3f} {fit:8.3f} {s / t / 1e9:7.2f}")
    print(f"fit: time = {sc['intercept_s'] * 1e3:.1f} ms + SOPs / {sc['gsops']:.2f} GSOP/s;  R² = {sc['r2']:.4f};  "
          f"fixed overhead = {100 * sc['overhead_at_10']:.1f} % of the time at 10 % firing")


# --------------------------------------------------------------------------- JIT cost
def jit_worker(args):
    """Time importing evsim, the first (compiling or cache-loading) and warm ``run_batch``."""
    import numba
    t0 = time.perf_counter()
    import evsim.engine  # noqa: F401
    t_import = time.perf_counter() - t0
    numba.set_num_threads(args.threads)
    sim = simulator(args.net, args.T, args.rate)
    x = inputs(args.batch)
    t0 = time.perf_counter()
    sim.run_batch(x, args.T)
    first = time.perf_counter() - t0
    warm = []
    for _ in range(3):
        t0 = time.perf_counter()
        sim.run_batch(x, args.T)
        warm.append(time.perf_counter() - t0)
    emit({"import_s": t_import, "first_s": first, "warm_s": statistics.median(warm)})


def jit_cost(net, T, batch, rate):
    """(cold, cached): two processes sharing one fresh ``NUMBA_CACHE_DIR``."""
    with tempfile.TemporaryDirectory() as d:
        return tuple(run_worker("jit", env={"NUMBA_CACHE_DIR": d}, net=net, T=T, batch=batch, rate=rate)
                     for _ in range(2))


# --------------------------------------------------------------------------- time breakdown
def breakdown_worker(args):
    """Profile ``run_batch`` of both networks at batch 1 and 64; emit, per config, the profile of the
    run with the median total time (so that its phases add up to that total)."""
    import numba
    numba.set_num_threads(args.threads)
    res = {}
    for net in ("vgg16", "resnet20"):
        sim = simulator(net, args.T, args.rate)
        for b in (1, 64):
            x = inputs(b)
            sim.run_batch(x, args.T)  # compile, allocate the buffers
            runs = []
            for _ in range(args.rounds):
                sim.profile = {}
                t0 = time.perf_counter()
                sim.run_batch(x, args.T)
                runs.append((time.perf_counter() - t0, sim.profile))
            sim.profile = None
            total, profile = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
            res[f"{net}/b{b}"] = {"total": total, "profile": [[s, p, t] for (s, p), t in profile.items()]}
    emit(res)


def ordered(names, order):
    """``names`` in the order of ``order``, names it does not list last (a phase added to the engine
    still shows up)."""
    return [n for n in order if n in names] + sorted(set(names) - set(order))


def print_breakdown(bd):
    """Per-phase shares of every config, then ms per layer and phase per network."""
    phases = ordered({phase for r in bd.values() for _, phase, _ in r["profile"]}, PHASES)
    print(f"{'config':13s} {'total ms':>9s} | " + " ".join(f"{p:>13s}" for p in phases) + f" | {'other':>6s}")
    for key, r in bd.items():
        per = dict.fromkeys(phases, 0.0)
        for _, phase, t in r["profile"]:
            per[phase] += t
        print(f"{key:13s} {r['total'] * 1e3:9.1f} | " + " ".join(f"{100 * per[p] / r['total']:12.1f}%" for p in phases)
              + f" | {100 * (r['total'] - sum(per.values())) / r['total']:5.1f}%")
    print("preprocess = input preprocessing; input = constant current of the targets of the analog input;"
          " fill = pre-loading\nthe currents of all steps with it; other = untimed: Python dispatch, small"
          " per-batch arrays, stats, output.")

    def column(phase):  # per layer: preprocessing under "input", all scatter kinds together
        return "input" if phase == "preprocess" else phase.split()[0]

    cols = ordered({column(phase) for r in bd.values() for _, phase, _ in r["profile"]},
                   ("input", "fill", "scatter", "neurons"))
    for net in ("vgg16", "resnet20"):
        keys = [k for k in bd if k.startswith(net + "/")]
        tables = {}
        for k in keys:
            per_layer = tables[k] = {}
            for stage, phase, t in bd[k]["profile"]:
                row = per_layer.setdefault(stage, dict.fromkeys(cols, 0.0))
                row[column(phase)] += t
        head = " | ".join(f"batch {k.split('/b')[1]:<3s}{'total':>6s} " + " ".join(f"{c:>7s}" for c in cols)
                          for k in keys)
        print(f"\n{net}: ms per layer and phase\n{'layer':>16s} | {head}")
        for layer in tables[keys[0]]:
            cells = []
            for k in keys:
                row = tables[k].get(layer, dict.fromkeys(cols, 0.0))
                cells.append(f"{'':9s}{sum(row.values()) * 1e3:6.2f} " + " ".join(f"{row[c] * 1e3:7.2f}" for c in cols))
            print(f"{layer:>16s} | " + " | ".join(cells))
    print("layer 'input': preprocessing; scatter: all incoming spike projections of the layer.")


# --------------------------------------------------------------------------- scatter kernels alone
def kernels_worker(args):
    """The scatter kernels alone (``benchmarks/kernels.py``) in a process of its own."""
    import kernels
    emit(kernels.measure(args.net, args.T, args.rate, args.batch, args.threads))


# --------------------------------------------------------------------------- report
def machine():
    """CPU, SIMD flags, library versions and load average."""
    info = {}
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        kv = dict(line.split(":", 1) for line in lines if ":" in line)
        info["cpu"] = kv.get("Model name", "?").strip()
        info["cpus"] = kv.get("CPU(s)", "?").strip()
        flags = kv.get("Flags", "").split()
        info["simd"] = " ".join(f for f in flags if f in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl"))
    except OSError:
        pass
    from importlib.metadata import version
    import numba
    import numpy
    info["versions"] = f"python {sys.version.split()[0]}, numpy {numpy.__version__}, numba {numba.__version__}"
    try:
        info["versions"] += f", torch {version('torch')}, spikingjelly {version('spikingjelly')}"
    except Exception:  # noqa: BLE001 - the report still runs up to the SJ import error
        pass
    info["load"] = "%.2f %.2f %.2f" % os.getloadavg()
    return info


def mb(n):
    """Bytes to MiB."""
    return n / 2**20


def memory_row(ev, sj):
    """Memory of one config in bytes: evsim's parts and their ratio to the yardstick, RSS of both workers."""
    wi, wm = ev["info"], ev["mem"]

    def run_rss(mem):  # the kernel updates VmHWM lazily: it can lag a VmRSS read just before the run
        return max(0, mem["peak_rss"] - mem["rss_before_run"])

    evsim = wi["weights_bytes"] + wm["buffers_bytes"] + wm["transient_peak"]
    yardstick = wi["weights_bytes"] + wi["state_bytes"]
    return dict(weights=wi["weights_bytes"], state=wi["state_bytes"], buffers=wm["buffers_bytes"],
                transient=wm["transient_peak"], evsim=evsim, yardstick=yardstick, ratio=evsim / yardstick,
                per_neuron=wi["per_neuron_bytes"], ratio_all=(evsim + wi["per_neuron_bytes"]) / yardstick,
                peak_rss_evsim=wm["peak_rss"], peak_rss_sj=sj["mem"]["peak_rss"],
                run_rss_evsim=run_rss(wm), run_rss_sj=run_rss(sj["mem"]))


def print_memory(rows):
    """evsim's memory against weights + state, and peak RSS of both workers, per config."""
    hdr = (f"{'network':9s} {'T':>2s} {'batch':>5s} | {'weights':>7s} {'state':>7s} {'w+s':>7s} | {'buffers':>7s} "
           f"{'transient':>9s} {'evsim':>7s} {'/(w+s)':>6s} | {'per-neuron':>10s} {'/(w+s)':>6s} | "
           f"{'peak RSS ev':>11s} {'SJ':>5s} | {'run RSS ev':>10s} {'SJ':>5s}")
    print(hdr)
    print("-" * len(hdr))
    for row in rows:
        m = row["memory"]
        print(f"{row['net']:9s} {row['T']:2d} {row['batch']:5d} | {mb(m['weights']):7.1f} {mb(m['state']):7.1f} "
              f"{mb(m['yardstick']):7.1f} | {mb(m['buffers']):7.1f} {mb(m['transient']):9.1f} {mb(m['evsim']):7.1f} "
              f"{m['ratio']:6.2f} | {mb(m['per_neuron']):10.1f} {m['ratio_all']:6.2f} | "
              f"{mb(m['peak_rss_evsim']):11.0f} {mb(m['peak_rss_sj']):5.0f} | {mb(m['run_rss_evsim']):10.0f} "
              f"{mb(m['run_rss_sj']):5.0f}")
    print("weights: evsim's kernel weights (incl. the analog-input projections).  state: batch x neurons x 8 B,\n"
          "  v and current per neuron in float32, what a step-by-step simulator must hold.  w+s: the yardstick.\n"
          "evsim = weights + buffers (persistent, sim.buffers) + transient (tracemalloc peak of one warm run_batch).\n"
          "per-neuron: v0, thresholds, bias-only constant currents and fan-outs the simulator also holds; the\n"
          "  second /(w+s) counts them too.  peak RSS: VmHWM of the worker during one run (Python + numba or\n"
          "  torch + model); run RSS: its growth during that run.")


def main(argv=None):
    """Drive the benchmark (or, with the hidden ``--worker``, be one of its worker processes)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="T=4 only, fewer rounds, short scaling run")
    ap.add_argument("--rate", type=float, default=0.10, help="target firing rate per neuron per step")
    ap.add_argument("--rounds", type=int, default=None, help="measurements per engine and config (>= 5)")
    ap.add_argument("--nets", default="vgg16,resnet20")
    ap.add_argument("--json", default=None, help="also write all results to this JSON file")
    ap.add_argument("--omp-wait", default="passive", choices=("passive", "active", "default"),
                    help="OMP_WAIT_POLICY of both workers ('default': leave it unset)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--net", default="vgg16", help=argparse.SUPPRESS)
    ap.add_argument("--T", type=int, default=4, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=THREADS, help=argparse.SUPPRESS)
    ap.add_argument("--rates", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    workers = {"evsim": engine_worker, "sj": engine_worker, "ann": engine_worker, "scaling": scaling_worker,
               "jit": jit_worker,
               "breakdown": breakdown_worker, "kernels": kernels_worker}
    globals()["OMP_WAIT"] = args.omp_wait
    if args.worker:
        return workers[args.worker](args)

    # this process (float64 check) and every worker inherit the same thread limits
    os.environ.update(thread_vars(THREADS))
    quick = args.quick
    rounds = max(5, args.rounds or (5 if quick else 7))
    nets = args.nets.split(",")
    Ts = (4,) if quick else (4, 8)
    batches = (1, 64)
    results = {"machine": machine(), "quick": quick, "rate": args.rate, "threads": THREADS}
    m = results["machine"]
    print(f"machine: {m.get('cpu')} ({m.get('cpus')} CPUs, {m.get('simd')}); {m['versions']}")
    print(f"threads: {THREADS} per worker (numba / torch, OMP/OpenBLAS/MKL), OMP_WAIT_POLICY {args.omp_wait}; "
          f"load average at start: {m['load']}")
    t_start = time.perf_counter()

    # 1. calibration (cached) and float64 spike check
    print("\n== float64 check: evsim vs dense SpikingJelly, spike counts per layer and step ==")
    results["check"] = {}
    for net in nets:
        for T in Ts:
            t0 = time.perf_counter()
            thresholds(net, T, args.rate)
            ok, n, diff, total = check_spikes(net, T, args.rate, 2 if quick else 8)
            results["check"][f"{net}/T{T}"] = dict(layers_equal=ok, layers=n, logit_maxdiff=diff, spikes=total)
            print(f"{net:9s} T={T}: {ok}/{n} layers identical ({total} spikes), logits max |diff| {diff:.1e}"
                  f"  [{time.perf_counter() - t0:.1f}s]")
            if ok != n:
                print("  WARNING: spike counts differ; the timed simulations are not the same computation")

    # 2. throughput and memory
    print(f"\n== throughput, float32, images/s: median [min, max] of {rounds} measurements ==")
    hdr = (f"{'network':9s} {'T':>2s} {'batch':>5s} | {'evsim':>24s} | {'SpikingJelly':>24s} | {'ev/SJ':>5s} | "
           f"{'torch ANN':>9s} {'ev/ANN':>6s} | {'firing':>6s} {'MSOP/img':>8s}")
    print(hdr)
    print("-" * len(hdr))
    results["throughput"] = []
    for net in nets:
        for T in Ts:
            for b in batches:
                r = timed_pair(net, T, b, args.rate, rounds, 0.2 if quick else 0.5)
                ev, sj, an = r["evsim"], r["sj"], r["ann"]
                row = dict(net=net, T=T, batch=b, evsim=ev, sj=sj, ann=an, ratio=ev["ips"] / sj["ips"],
                           ratio_ann=ev["ips"] / an["ips"], memory=memory_row(ev, sj))
                results["throughput"].append(row)
                print(f"{net:9s} {T:2d} {b:5d} | {ev['ips']:8.1f} [{ev['ips_min']:6.1f}, {ev['ips_max']:6.1f}] | "
                      f"{sj['ips']:8.1f} [{sj['ips_min']:6.1f}, {sj['ips_max']:6.1f}] | {row['ratio']:5.2f} | "
                      f"{an['ips']:9.1f} {row['ratio_ann']:6.2f} | "
                      f"{100 * ev['info']['rate']:5.1f}% {ev['info']['sops_per_image'] / 1e6:8.1f}", flush=True)
    print(f"ev/SJ = evsim / SpikingJelly images/s; torch ANN = the same layers with ReLU, one pass (the "
          f"moonshot's yardstick); all {THREADS} threads, measurements interleaved.")

    print("\n== memory, float32, MB ==")
    print_memory(results["throughput"])

    # 3. scaling
    srates = [0.01, 0.1, 0.3] if quick else [0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3]
    results["scaling_by_batch"] = {}
    for sbatch in ((4,) if quick else (1, 16)):
        print(f"\n== scaling: evsim VGG-16, T=4, batch {sbatch}, firing rate 1-30 % ==")
        results["scaling_by_batch"][sbatch] = scaling("vgg16", 4, sbatch, srates, 3 if quick else 5)
        print_scaling(results["scaling_by_batch"][sbatch])
    results["scaling"] = results["scaling_by_batch"][4 if quick else 16]

    if not quick:
        # 4. JIT
        print("\n== evsim JIT cost (VGG-16, T=4, batch 1, fresh NUMBA_CACHE_DIR) ==")
        cold, cached = jit_cost("vgg16", 4, 1, args.rate)
        print(f"cold process: import {cold['import_s']:.2f}s, first run_batch {cold['first_s']:.2f}s (compiles), "
              f"warm {cold['warm_s']:.3f}s")
        print(f"second process, cache filled: import {cached['import_s']:.2f}s, first run_batch "
              f"{cached['first_s']:.2f}s (loads the cache), warm {cached['warm_s']:.3f}s")
        results["jit"] = dict(cold=cold, cached=cached)

        # 5. breakdown
        print(f"\n== evsim time breakdown, share of run_batch per phase (T=4, {THREADS} threads; the median of 3 "
              "profiled runs) ==")
        results["breakdown"] = run_worker("breakdown", T=4, rate=args.rate, rounds=3)
        print_breakdown(results["breakdown"])

        # 6. kernels alone
        import kernels
        print("\n== scatter kernels alone (benchmarks/kernels.py) ==")
        results["kernels"] = run_worker("kernels", threads=1, net="vgg16", T=4, batch=16, rate=args.rate)
        print(kernels.table(results["kernels"], "vgg16", 4, 16, args.rate, 1))

    results["elapsed_s"] = time.perf_counter() - t_start
    results["machine"]["load_end"] = "%.2f %.2f %.2f" % os.getloadavg()
    print(f"\ndone in {results['elapsed_s']:.0f}s; load average at end: {results['machine']['load_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
