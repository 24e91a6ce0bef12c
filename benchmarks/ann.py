#!/usr/bin/env python
"""The ANN pass against the SNN run on the shipped model (issue 19, item 0b).

    python benchmarks/ann.py [--samples 10000] [--T 8] [--rounds 5] [--threads 2]

In one process, interleaved for ``--rounds`` rounds (median reported):

* ``snn``: ``evsim.simulate`` of the converted shipped model (``mnist_qcfs.npz``, default
  conversion options) on N samples (the 1,000 shipped test images repeated), T steps, batch 64;
* ``ann f32`` / ``ann f64``: :func:`evsim.ann.accuracy` in float32 (what ``evsim run`` reports)
  and float64;
* ``ann before``: the executor as it was before this work (float64 ``einsum`` convolutions over a
  sliding-window view, NumPy pooling, BatchNorm and QCFS, BLAS left at its default threads),
  re-created here by swapping the op registry's forward functions, for the same samples.

The target: the ANN pass <= 10 % of the SNN run at T = 8.  Predictions of every executor are
compared with the float64 one (differing samples are reported).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def old_forwards():
    """The op forward functions of the executor before issue 19 (for the 'before' column)."""
    from numpy.lib.stride_tricks import sliding_window_view

    def windows(x, kernel, stride, padding, dilation=(1, 1), fill=0.0):
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
        if ph or pw:
            x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
        view = sliding_window_view(x, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
        return view[:, :, ::sh, ::sw, ::dh, ::dw]

    def channel(param, ndim):
        return param.reshape((1, -1) + (1,) * (ndim - 2)) if param.ndim == 1 else param

    def conv(node, xs):
        a, x = node.attrs, xs[0]
        weight, bias, groups = node.arrays["weight"], node.arrays.get("bias"), a["groups"]
        c_out, c_in_g, kh, kw = weight.shape
        win = windows(x, (kh, kw), a["stride"], a["padding"], a["dilation"])
        b, c, ho, wo = win.shape[:4]
        win = win.reshape(b, groups, c_in_g, ho, wo, kh, kw)
        w = weight.reshape(groups, c_out // groups, c_in_g, kh, kw).astype(x.dtype, copy=False)
        out = np.einsum("bgihwkl,goikl->bgohw", win, w, optimize=True).reshape(b, c_out, ho, wo)
        if bias is not None:
            out += bias.astype(x.dtype, copy=False).reshape(1, -1, 1, 1)
        return out

    def bn(node, xs):
        p, v = node.arrays, xs[0]
        scale = p["gamma"] / np.sqrt(p["var"] + node.attrs["eps"])
        shift = p["beta"] - p["mean"] * scale
        return v * channel(scale.astype(v.dtype), v.ndim) + channel(shift.astype(v.dtype), v.ndim)

    def qcfs(node, xs):
        z = xs[0]
        lam = channel(node.arrays["threshold"].astype(z.dtype, copy=False), z.ndim)
        return lam * np.clip(np.floor(z * node.attrs["levels"] / lam + 0.5) / node.attrs["levels"], 0, 1)

    def avgpool(node, xs):
        a = node.attrs
        kh, kw = a["kernel"]
        return windows(xs[0], a["kernel"], a["stride"], a["padding"]).sum(axis=(4, 5)) / (kh * kw)

    return {"conv2d": conv, "batchnorm": bn, "qcfs": qcfs, "avgpool2d": avgpool}


def old_accuracy(graph, x, y, batch_size=256):
    """The ANN accuracy as ``evsim run`` computed it before: float64, one batch after the other."""
    import dataclasses

    from evsim import ops
    from evsim.ann import forward

    saved = dict(ops.OPS)
    try:
        for name, fn in old_forwards().items():
            ops.OPS[name] = dataclasses.replace(ops.OPS[name], forward=fn)
        out = []
        every = [node.name for node in graph.nodes]  # every value asked for: op by op, nothing fused
        for start in range(0, len(x), batch_size):
            logits = forward(graph, x[start:start + batch_size], wanted=every)[graph.output]
            out.append(logits.reshape(len(logits), -1).argmax(axis=1))
        return float((np.concatenate(out) == y).mean()), np.concatenate(out)
    finally:
        ops.OPS.clear()
        ops.OPS.update(saved)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=10000)
    ap.add_argument("--T", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-before", action="store_true", help="skip the (slow) executor before this work")
    args = ap.parse_args(argv)
    import importlib.resources as res

    import numba

    import evsim
    import evsim.engine
    from evsim.ann import accuracy, predict
    from evsim.format import load

    numba.set_num_threads(args.threads)
    data = res.files("evsim.data")
    with np.load(data / "mnist_test.npz") as f:
        x, y = np.resize(f["x"], (args.samples,) + f["x"].shape[1:]), np.resize(f["y"], args.samples)
    ann = load(str(data / "mnist_qcfs.npz"))
    network = evsim.engine.as_network(ann)
    evsim.simulate(network, x[:64], y[:64], T=args.T)
    reference = predict(ann, x, dtype=np.float64)
    runs = {"snn": lambda: evsim.simulate(network, x, y, T=args.T, batch_size=64).accuracy[-1],
            "ann f32": lambda: accuracy(ann, x, y),
            "ann f64": lambda: accuracy(ann, x, y, dtype=np.float64)}
    if not args.no_before:
        runs["ann before"] = lambda: old_accuracy(ann, x, y)[0]
    times = {k: [] for k in runs}
    cpu = {k: [] for k in runs}
    values = {}
    for r in range(args.rounds):
        for k in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            t0, c0 = time.perf_counter(), time.process_time()
            values[k] = runs[k]()
            times[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    snn, snn_cpu = statistics.median(times["snn"]), statistics.median(cpu["snn"])
    print(f"shipped model, {args.samples} samples, T = {args.T}, {args.threads} threads, "
          f"median of {args.rounds} interleaved rounds; load average {'%.1f %.1f %.1f' % os.getloadavg()}")
    print(f"{'pass':12s} {'wall s':>8s} {'[min, max]':>18s} {'/ SNN':>7s} | {'CPU s':>7s} {'/ SNN':>7s} | "
          f"{'accuracy':>9s}")
    for k, ts in times.items():
        med, c = statistics.median(ts), statistics.median(cpu[k])
        print(f"{k:12s} {med:8.3f} [{min(ts):7.3f}, {max(ts):7.3f}] {med / snn:7.3f} | {c:7.3f} {c / snn_cpu:7.3f} | "
              f"{values[k]:9.4f}")
    print("CPU s: CPU time of the process (all threads); on a shared machine the wall-time ratio mixes in "
          "the load, the CPU-time ratio is the work ratio.")
    f32 = predict(ann, x)
    print(f"float32 predictions differing from float64: {int((f32 != reference).sum())} of {args.samples}")
    if not args.no_before:
        print(f"before-executor predictions differing from float64: "
              f"{int((old_accuracy(ann, x, y)[1] != reference).sum())}")


if __name__ == "__main__":
    main()
