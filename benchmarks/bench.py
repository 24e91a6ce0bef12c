#!/usr/bin/env python
"""evsim vs a dense PyTorch + SpikingJelly 2.0 simulation of the same converted SNNs (issue 7).

    python benchmarks/bench.py            # full run (~15-25 min on 2 cores)
    python benchmarks/bench.py --quick    # T=4 only, fewer rounds (~2 min once thresholds are cached)

Needs the [bench] extra (torch==2.13.0) and ``pip install --no-deps spikingjelly==2.0.0 loguru``.

What it does
1. Builds VGG-16 and ResNet-20 (CIFAR shapes, seeded random weights, ``benchmarks/nets.py``) and
   calibrates one threshold per layer so that every layer fires ``--rate`` (default 10 %) spikes per
   neuron per step on a calibration batch (bisection on the exact simulated IF rate); thresholds
   are cached in ``benchmarks/.cache`` (``EVSIM_BENCH_CACHE``).
2. Checks, in float64, that evsim and the dense SpikingJelly simulation emit identical spike
   counts in every layer at every step (and the same logits to ~1e-12).
3. Times both in float32, each in its own worker process limited to the same 2 threads
   (numba / torch), the two workers driven alternately so that load drift on a shared machine
   hits both alike.  Prints images/s (median, min, max of >= 5 measurements), the ratio
   evsim/SpikingJelly and peak memory (RSS; evsim also the exact NumPy peak via tracemalloc).
4. Scaling run (full mode): VGG-16 driven to 1-30 % firing; time against SOPs, linear fit, R² and
   the fixed per-batch overhead (intercept).
5. Full mode also: evsim JIT cost (cold compile, cached first call, warm call), the conv scatter
   kernel alone in GSOP/s per core, the time breakdown per kernel, and the prototype kernel
   (``proto_scatter.py``).
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


# --------------------------------------------------------------------------- shared helpers
def thresholds(net: str, T: int, rate: float) -> dict:
    """Calibrated per-layer thresholds (cached as JSON)."""
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
    from nets import NETWORKS
    return NETWORKS[net](thresholds=thresholds(net, T, rate))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def proc_status(key: str) -> int:
    """VmRSS / VmHWM of this process in bytes (VmHWM, unlike ru_maxrss, is not inherited across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def set_threads(n=THREADS):
    os.environ.setdefault("OMP_NUM_THREADS", str(n))


# --------------------------------------------------------------------------- worker: one engine, one config
def worker(args):
    import numpy as np
    from nets import random_inputs
    rss_start = rss_bytes()
    graph = build(args.net, args.T, args.rate)
    x = random_inputs(64, DATA_SEED)[:args.batch]
    T = args.T
    info = {}
    if args.worker == "evsim":
        import numba
        from evsim.compile import compile_network
        from evsim.engine import Simulator
        numba.set_num_threads(args.threads)
        rss_import = rss_bytes()
        sim = Simulator(compile_network(graph), np.float32)
        weights = sum(a.nbytes for w in sim.weights.values() for a in w)
        neurons = sum(p.size for p in sim.network.populations)
        info.update(weights_bytes=weights, state_bytes=len(x) * neurons * 4 * 2, neurons=neurons,
                    numba_threads=numba.get_num_threads(), threading_layer=None)

        def run():
            return sim.run_batch(x, T)
    else:
        import torch
        torch.set_num_threads(args.threads)
        from nets import DenseSNN
        rss_import = rss_bytes()
        dense = DenseSNN(graph, "float32")
        weights = sum(p.numel() * p.element_size() for _, k, _, m in dense.plan if k == "layer"
                      for p in m.parameters())
        info.update(weights_bytes=weights, torch_threads=torch.get_num_threads())

        def run():
            return dense.run(x, T)
    rss_built = rss_bytes()
    t0 = time.perf_counter()
    out = run()
    first = time.perf_counter() - t0
    if args.worker == "evsim":
        import numba
        info["threading_layer"] = numba.threading_layer()
        _, stats, _ = out
        info["sops_per_image"] = float(sum(s[:, 2].sum() for s in stats.values())) / len(x)
        info["rate"] = float(sum(s[:, 0].sum() for s in stats.values())) / (len(x) * T * info["neurons"])
    run()
    emit(dict(ready=True, first_call_s=first, rss_start=rss_start, rss_import=rss_import, rss_built=rss_built,
              **info))
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "run":  # noqa: SIM114
            t0 = time.perf_counter()
            for _ in range(cmd["reps"]):
                run()
            emit({"t": (time.perf_counter() - t0) / cmd["reps"]})
        elif cmd["op"] == "mem":
            reset_hwm()
            rss0 = proc_status("VmRSS")
            run()
            res = {"peak": proc_status("VmHWM"), "rss_before_run": rss0, "rss_import": rss_import,
                   "rss_built": rss_built, "rss_start": rss_start}
            if args.worker == "evsim":
                import tracemalloc
                tracemalloc.start()
                tracemalloc.reset_peak()
                run()
                res["traced_peak"] = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
            emit(res)
        else:
            break


class Worker:
    def __init__(self, engine, net, T, batch, rate, threads=THREADS, wait=True):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads))
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", engine, "--net", net, "--T", str(T),
               "--batch", str(batch), "--rate", str(rate), "--threads", str(threads)]
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  text=True, env=env)
        self.info = self.read() if wait else None

    def read(self):
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError("benchmark worker died")
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
        self.p.wait(timeout=60)


def timed_pair(net, T, batch, rate, rounds, min_seconds):
    """Alternate evsim and SpikingJelly measurements; returns per-engine stats."""
    ws = {"evsim": Worker("evsim", net, T, batch, rate, wait=False), "sj": Worker("sj", net, T, batch, rate, wait=False)}
    for w in ws.values():  # both start (import, build, warm up) concurrently
        w.info = w.read()
    try:
        # measurements of >= min_seconds: repeat small batches inside one measurement
        reps = {}
        for k, w in ws.items():
            t = w.ask(op="run", reps=1)["t"]
            reps[k] = max(1, int(min_seconds / max(t, 1e-6)))
        times = {k: [] for k in ws}
        for r in range(rounds):
            order = list(ws) if r % 2 == 0 else list(ws)[::-1]
            for k in order:
                times[k].append(ws[k].ask(op="run", reps=reps[k])["t"])
        mem = {k: w.ask(op="mem") for k, w in ws.items()}
    finally:
        for w in ws.values():
            w.close()
    out = {}
    for k, w in ws.items():
        ts = times[k]
        out[k] = dict(info=w.info, mem=mem[k], times=ts, reps=reps[k], median=statistics.median(ts),
                      ips=batch / statistics.median(ts), ips_min=batch / max(ts), ips_max=batch / min(ts))
    return out


# --------------------------------------------------------------------------- float64 spike check
def check_spikes(net, T, rate, n):
    import numpy as np
    from evsim.compile import compile_network
    from evsim.engine import Simulator
    from nets import DenseSNN, neuron_names, random_inputs
    graph = build(net, T, rate)
    x = random_inputs(64, DATA_SEED)[:n]
    _, stats, logits = Simulator(compile_network(graph), np.float64).run_batch(x, T)
    out, spikes = DenseSNN(graph, "float64").run(x, T, record=True)
    names = neuron_names(graph)
    same = [np.array_equal(stats[k][:, 0], spikes[k].astype(np.int64)) for k in names]
    diff = float(np.abs(out - logits).max())
    return sum(same), len(names), diff, int(sum(stats[k][:, 0].sum() for k in names))


# --------------------------------------------------------------------------- scaling worker
def scaling_worker(args):
    import numpy as np
    import numba
    from evsim.compile import compile_network
    from evsim.engine import Simulator
    from nets import random_inputs
    numba.set_num_threads(args.threads)
    rates = [float(r) for r in args.rates.split(",")]
    x = random_inputs(64, DATA_SEED)[:args.batch]
    sims = {r: Simulator(compile_network(build(args.net, args.T, r)), np.float32) for r in rates}
    sops, fired = {}, {}
    for r, sim in sims.items():
        _, stats, _ = sim.run_batch(x, args.T)
        sops[r] = float(sum(s[:, 2].sum() for s in stats.values()))
        n = sum(p.size for p in sim.network.populations)
        fired[r] = float(sum(s[:, 0].sum() for s in stats.values())) / (len(x) * args.T * n)
    times = {r: [] for r in rates}
    for _ in range(args.rounds):
        for r, sim in sims.items():
            t0 = time.perf_counter()
            sim.run_batch(x, args.T)
            times[r].append(time.perf_counter() - t0)
    emit({"rates": rates, "sops": sops, "fired": fired, "times": times})


def run_scaling(net, T, batch, rates, rounds):
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), NUMBA_NUM_THREADS=str(THREADS))
    for r in rates:
        thresholds(net, T, r)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "scaling", "--net", net, "--T", str(T),
           "--batch", str(batch), "--rates", ",".join(map(str, rates)), "--rounds", str(rounds)]
    res = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
    return res


def linear_fit(xs, ys):
    import numpy as np
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    b, a = np.polyfit(xs, ys, 1)
    pred = a + b * xs
    r2 = 1 - ((ys - pred) ** 2).sum() / ((ys - ys.mean()) ** 2).sum()
    return a, b, r2


# --------------------------------------------------------------------------- JIT cost
def jit_worker(args):
    import numpy as np
    import numba
    t0 = time.perf_counter()
    from evsim.compile import compile_network
    from evsim.engine import Simulator
    from nets import random_inputs
    t_import = time.perf_counter() - t0
    numba.set_num_threads(args.threads)
    sim = Simulator(compile_network(build(args.net, args.T, args.rate)), np.float32)
    x = random_inputs(64, DATA_SEED)[:args.batch]
    t0 = time.perf_counter()
    sim.run_batch(x, args.T)
    first = time.perf_counter() - t0
    warm = []
    for _ in range(3):
        t0 = time.perf_counter()
        sim.run_batch(x, args.T)
        warm.append(time.perf_counter() - t0)
    emit({"import_s": t_import, "first_s": first, "warm_s": statistics.median(warm)})


def run_jit(net, T, batch, rate):
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), NUMBA_NUM_THREADS=str(THREADS), NUMBA_CACHE_DIR=d)
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "jit", "--net", net, "--T", str(T),
               "--batch", str(batch), "--rate", str(rate)]
        cold = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)
        cached = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)
    return cold, cached


# --------------------------------------------------------------------------- kernel + breakdown worker
def probe_worker(args):
    import numpy as np
    import numba
    from evsim.compile import compile_network
    from evsim.engine import Simulator
    from nets import random_inputs
    import probe
    import proto_scatter
    numba.set_num_threads(args.threads)
    res = {}
    x = random_inputs(64, DATA_SEED)
    for net in ("vgg16", "resnet20"):
        sim = Simulator(compile_network(build(net, args.T, args.rate)), np.float32)
        for b in (1, 64):
            tot, cats, scat, neur = probe.breakdown(sim, x[:b], args.T, runs=3)
            res[f"{net}/b{b}"] = {"total": tot, "cats": cats, "scatter_layers": scat, "neuron_layers": neur}
            res[f"{net}/b{b}/whatif"] = proto_scatter.whatif(sim, x[:b], args.T, rounds=5)
        if net == "vgg16":
            captured = probe.capture_conv_events(sim, x, args.T, step=2)
            res["kernel"] = proto_scatter.compare(captured, threads=1)
            res["cycle"] = probe.cycle_check(sim, x, args.T)
    import proto_neuron
    res["neuron"] = proto_neuron.compare(proto_neuron.SHAPES, batch=64, threads=1)
    emit(res)


def run_probe(T, rate):
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), NUMBA_NUM_THREADS=str(THREADS))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "probe", "--T", str(T), "--rate", str(rate)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.splitlines()[-1])


# --------------------------------------------------------------------------- report
def machine():
    info = {}
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        kv = dict(l.split(":", 1) for l in lines if ":" in l)
        info["cpu"] = kv.get("Model name", "?").strip()
        info["cpus"] = kv.get("CPU(s)", "?").strip()
        flags = kv.get("Flags", "").split()
        info["simd"] = " ".join(f for f in flags if f in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl"))
    except OSError:
        pass
    import numpy
    import numba
    info["versions"] = f"python {sys.version.split()[0]}, numpy {numpy.__version__}, numba {numba.__version__}"
    try:
        import torch
        import spikingjelly  # noqa: F401
        from importlib.metadata import version
        info["versions"] += f", torch {torch.__version__}, spikingjelly {version('spikingjelly')}"
    except Exception:  # noqa: BLE001
        pass
    info["load"] = "%.2f %.2f %.2f" % os.getloadavg()
    return info


def mb(n):
    return n / 2**20


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="T=4 only, fewer rounds, short scaling run")
    ap.add_argument("--rate", type=float, default=0.10, help="target firing rate per neuron per step")
    ap.add_argument("--rounds", type=int, default=None, help="measurements per engine and config (>= 5)")
    ap.add_argument("--nets", default="vgg16,resnet20")
    ap.add_argument("--json", default=None, help="also write all results to this JSON file")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--net", default="vgg16", help=argparse.SUPPRESS)
    ap.add_argument("--T", type=int, default=4, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=THREADS, help=argparse.SUPPRESS)
    ap.add_argument("--rates", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker in ("evsim", "sj"):
        return worker(args)
    if args.worker == "scaling":
        return scaling_worker(args)
    if args.worker == "jit":
        return jit_worker(args)
    if args.worker == "probe":
        return probe_worker(args)

    quick = args.quick
    rounds = args.rounds or 5 if quick else args.rounds or 7
    rounds = max(rounds, 5)
    nets = args.nets.split(",")
    Ts = (4,) if quick else (4, 8)
    batches = (1, 64)
    results = {"machine": machine(), "quick": quick, "rate": args.rate}
    m = results["machine"]
    print(f"machine: {m.get('cpu')} ({m.get('cpus')} CPUs, {m.get('simd')}); {m['versions']}")
    print(f"threads: {THREADS} (numba / torch); load average at start: {m['load']}")
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

    # 2. throughput
    print("\n== throughput, float32, images/s: median [min, max] of %d measurements ==" % rounds)
    hdr = (f"{'network':9s} {'T':>2s} {'batch':>5s} | {'evsim img/s':>24s} | {'SpikingJelly img/s':>24s} | "
           f"{'ratio':>5s} | {'rate':>5s} {'MSOP/img':>8s} | {'peak RSS MB ev/SJ':>17s} | {'ev mem/(w+s)':>12s}")
    print(hdr)
    print("-" * len(hdr))
    results["throughput"] = []
    for net in nets:
        for T in Ts:
            for b in batches:
                r = timed_pair(net, T, b, args.rate, rounds, 0.2 if quick else 0.5)
                ev, sj = r["evsim"], r["sj"]
                ratio = ev["ips"] / sj["ips"]
                wi = ev["info"]
                ws_bytes = wi["weights_bytes"] + wi["state_bytes"]
                traced_ratio = (wi["weights_bytes"] + ev["mem"]["traced_peak"]) / ws_bytes
                rss_ratio = (ev["mem"]["peak"] - ev["mem"]["rss_import"]) / ws_bytes
                row = dict(net=net, T=T, batch=b, evsim=ev, sj=sj, ratio=ratio, mem_ratio_numpy=traced_ratio,
                           mem_ratio_rss=rss_ratio)
                results["throughput"].append(row)
                print(f"{net:9s} {T:2d} {b:5d} | {ev['ips']:8.1f} [{ev['ips_min']:6.1f},{ev['ips_max']:7.1f}] | "
                      f"{sj['ips']:8.1f} [{sj['ips_min']:6.1f},{sj['ips_max']:7.1f}] | {ratio:5.2f} | "
                      f"{100 * wi['rate']:4.1f}% {wi['sops_per_image'] / 1e6:8.1f} | "
                      f"{mb(ev['mem']['peak']):7.0f}/{mb(sj['mem']['peak']):<7.0f}   | {traced_ratio:5.2f}/{rss_ratio:<5.2f}")
    print("ratio = evsim / SpikingJelly images/s (both 2 threads, measurements interleaved).")
    print("peak RSS = VmHWM of the worker process during one run (python + numba or torch + model).")
    print("ev mem/(w+s) = evsim memory / (weights + v and current per neuron, float32): NumPy = weights + "
          "tracemalloc peak of one run_batch; RSS = peak RSS - RSS after imports")
    for row in results["throughput"]:
        ev, sj = row["evsim"], row["sj"]
        if row["batch"] == 64:
            print(f"  {row['net']} T={row['T']} b=64: evsim weights {mb(ev['info']['weights_bytes']):.1f} MB, "
                  f"state {mb(ev['info']['state_bytes']):.1f} MB, run_batch NumPy peak "
                  f"{mb(ev['mem']['traced_peak']):.1f} MB; RSS during a run above idle: evsim "
                  f"{mb(ev['mem']['peak'] - ev['mem']['rss_before_run']):.0f} MB, SJ "
                  f"{mb(sj['mem']['peak'] - sj['mem']['rss_before_run']):.0f} MB")

    # 3. scaling
    srates = (0.01, 0.1, 0.3) if quick else (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
    sbatch = 4 if quick else 16
    print(f"\n== scaling: evsim VGG-16, T=4, batch {sbatch}, firing rate 1-30 % ==")
    sc = run_scaling("vgg16", 4, sbatch, srates, 3 if quick else 5)
    med = {float(r): statistics.median(sc["times"][str(r)] if str(r) in sc["times"] else sc["times"][r])
           for r in sc["rates"]}
    xs = [sc["sops"][str(r)] if str(r) in sc["sops"] else sc["sops"][r] for r in sc["rates"]]
    fired = [sc["fired"][str(r)] if str(r) in sc["fired"] else sc["fired"][r] for r in sc["rates"]]
    ys = [med[float(r)] for r in sc["rates"]]
    a, slope, r2 = linear_fit(xs, ys)
    print(f"{'target':>6s} {'fired':>6s} {'GSOP/batch':>10s} {'time s':>8s} {'fit s':>8s} {'GSOP/s':>7s}")
    for r, f, s, t in zip(sc["rates"], fired, xs, ys):
        print(f"{100 * r:5.0f}% {100 * f:5.1f}% {s / 1e9:10.3f} {t:8.3f} {a + slope * s:8.3f} {s / t / 1e9:7.2f}")
    t10 = a + slope * xs[sc["rates"].index(0.1)] if 0.1 in sc["rates"] else float("nan")
    print(f"fit: time = {a * 1e3:.1f} ms + SOPs / {1 / slope / 1e9:.2f} GSOP/s;  R² = {r2:.4f};  "
          f"fixed overhead = {100 * a / t10:.1f} % of the time at 10 % firing")
    results["scaling"] = dict(batch=sbatch, rates=sc["rates"], fired=fired, sops=xs, times=ys, all=sc["times"],
                              intercept_s=a, gsops=1 / slope / 1e9, r2=r2, overhead_at_10=a / t10)

    if not quick:
        # 4. JIT
        print("\n== evsim JIT cost (VGG-16, T=4, batch 1, fresh NUMBA_CACHE_DIR) ==")
        cold, cached = run_jit("vgg16", 4, 1, args.rate)
        print(f"cold process: import {cold['import_s']:.2f}s, first run_batch {cold['first_s']:.2f}s (compiles), "
              f"warm {cold['warm_s']:.3f}s")
        print(f"second process, cache filled: import {cached['import_s']:.2f}s, first run_batch "
              f"{cached['first_s']:.2f}s (loads the cache), warm {cached['warm_s']:.3f}s")
        results["jit"] = dict(cold=cold, cached=cached)

        # 5. kernel + breakdown
        print("\n== evsim time breakdown (T=4, 2 threads; median of 3 profiled runs) ==")
        pr = run_probe(4, args.rate)
        results["probe"] = pr
        for key in ("vgg16/b1", "vgg16/b64", "resnet20/b1", "resnet20/b64"):
            p = pr[key]
            tot = p["total"]
            parts = sorted(p["cats"].items(), key=lambda kv: -kv[1])
            rest = tot - sum(p["cats"].values())
            print(f"{key:13s} {tot * 1e3:8.1f} ms: " + ", ".join(f"{k} {100 * v / tot:.0f}%" for k, v in parts)
                  + f", python/alloc {100 * rest / tot:.0f}%")
        p = pr["vgg16/b64"]
        print("VGG-16 batch 64, scatter time per target layer (ms): " +
              ", ".join(f"{k} {v * 1e3:.0f}" for k, v in p["scatter_layers"].items()))
        print("\n== what-if: evsim run_batch with prototype conv scatter kernels (images/s, median of 5) ==")
        for key in ("vgg16/b1", "vgg16/b64", "resnet20/b1", "resnet20/b64"):
            w = pr[key + "/whatif"]
            b = int(key.split("/b")[1])
            print(f"{key:13s} " + ", ".join(f"{v} {b / t:.1f}" for v, t in w.items()))
        k = pr["kernel"]
        print("\n== conv scatter kernel alone, VGG-16 events of step 3 at 10 % firing, batch 64, 1 thread ==")
        print("GSOP/s: evsim = current kernel; slices = + 1-D row views (vectorised); rows = + re-laid weights;"
              " grouped = rows + events grouped by pixel")
        print(f"{'layer':>6s} {'events':>9s} {'MSOP':>8s} | {'evsim':>6s} {'slices':>6s} {'rows':>6s} {'grouped':>7s}")
        for row in k["layers"]:
            print(f"{row['target']:>6s} {row['events']:9d} {row['sops'] / 1e6:8.1f} | {row['gsops_evsim']:6.2f} "
                  f"{row['gsops_slices']:6.2f} {row['gsops_rows']:6.2f} {row['gsops_proto']:7.2f}")
        print(f"{'all':>6s} {k['events']:9d} {k['sops'] / 1e6:8.1f} | {k['gsops_evsim']:6.2f} "
              f"{k['gsops_slices']:6.2f} {k['gsops_rows']:6.2f} {k['gsops_proto']:7.2f}   bit-identical currents: "
              f"{k['bitwise_equal']}")
        print("\n== IF neuron step alone, batch 64, ~10 % firing, 1 thread: G neuron-updates/s ==")
        for row in pr["neuron"]:
            print(f"{row['layer']:>12s}: evsim {row['gups_evsim']:5.2f}, vectorised prototype {row['gups_proto']:5.2f} "
                  f"({row['t_evsim'] / row['t_proto']:.2f}x, identical: {row['identical']})")
        c = pr["cycle"]
        print("\n== memory: does run_batch free its per-batch arrays on return? (tracemalloc, VGG-16 batch 64) ==")
        print(f"NumPy memory still allocated after run_batch returned: {mb(c['held']):.0f} MB; gc.collect() "
              f"collects {c['collected']} objects, leaving {mb(c['after_gc']):.0f} MB  (the closure 'emit' in "
              f"run_batch refers to itself: a reference cycle that keeps every _PopState array alive until the "
              f"cyclic GC runs)")

    results["elapsed_s"] = time.perf_counter() - t_start
    results["machine"]["load_end"] = "%.2f %.2f %.2f" % os.getloadavg()
    print(f"\ndone in {results['elapsed_s']:.0f}s; load average at end: {results['machine']['load_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=float)


if __name__ == "__main__":
    main()
