#!/usr/bin/env python
"""Where the dense path pays: event path vs dense (GEMM) path of one projection against event density.

    python benchmarks/dense.py [--threads 2] [--rounds 5] [--items 64]

For a few projection shapes of the benchmark networks (a convolution with the output-stationary
kernel, one with the scatter kernel, a linear layer), random events at densities 2-100 % (events /
source neurons / item; counts 1, or 1..4 as Group Neurons emit) are fed to the projection's
call with the dense path off (``EVSIM_DENSE=0``) and forced on (break-even 0), interleaved,
``--rounds`` medians of wall time with ``--threads`` threads.  Prints both times, their ratio and
the measured break-even density (first density where dense is faster), which
``evsim.compile.DENSE_BREAK_EVEN`` is set from.  Also checks that both paths agree within float
rounding.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

#: (name, kind, source shape (C, H, W), out channels, kernel, stride, padding, pool)
SHAPES = [("vgg input 3->64 32x32", "scatter", (3, 32, 32), 64, 3, 1, 1, 1),
          ("vgg conv2 64->64 32x32", "gather", (64, 32, 32), 64, 3, 1, 1, 1),
          ("vgg conv6 256->256 8x8", "gather", (256, 8, 8), 256, 3, 1, 1, 1),
          ("resnet s1 16->16 32x32", "scatter", (16, 32, 32), 16, 3, 1, 1, 1),
          ("mnist res 32->32 14x14", "scatter", (32, 14, 14), 32, 3, 1, 1, 1),
          ("fc 512->10", "dense", (512, 1, 1), 10, 0, 0, 0, 1)]
DENSITIES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)


def projection(kind, shape, out_c, k, stride, pad, pool, rng):
    from evsim.compile import ConvGeometry, ConvProjection, DenseProjection

    c, h, w = shape
    fanout = np.ones(c * h * w, np.int64)
    if kind == "dense":
        return DenseProjection("src", "dst", (), fanout, rng.standard_normal((c * h * w, out_c)))
    gh, gw = -(-h // pool), -(-w // pool)
    out_h, out_w = (gh + 2 * pad - k) // stride + 1, (gw + 2 * pad - k) // stride + 1
    geometry = ConvGeometry(h, w, c, h, w, out_h, out_w, out_c, k, k, stride, stride, pad, pad, 1, 1, 1)
    return ConvProjection("src", "dst", (), fanout, rng.standard_normal((k, k, c, out_c)) / k, geometry, (pool, pool))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--max-count", type=int, default=1, help="counts 1..max (Group Neurons: up to tau)")
    args = ap.parse_args(argv)
    import numba

    import evsim.compile as C

    numba.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"{args.items} items, float32, {args.threads} threads, counts 1..{args.max_count}; "
          f"ms per call: median of {args.rounds} interleaved rounds")
    print(f"{'projection':26s} {'density':>7s} {'event ms':>9s} {'dense ms':>9s} {'dense/event':>11s}")
    found = {}
    for name, kind, shape, out_c, k, stride, pad, pool in SHAPES:
        os.environ["EVSIM_CONV_KERNEL"] = kind if kind != "dense" else "auto"
        proj = projection(kind, shape, out_c, k, stride, pad, pool, rng)
        call, _ = proj.prepare(lambda a: np.ascontiguousarray(a, dtype=np.float32))
        n_src = int(np.prod(shape))
        n_dst = (proj.geometry.out_h * proj.geometry.out_w * out_c) if kind != "dense" else out_c
        for density in DENSITIES:
            mask = rng.random((args.items, n_src)) < density
            counts = np.where(mask, rng.integers(1, args.max_count + 1, mask.shape), 0)
            ev_idx = np.zeros((args.items, n_src), np.int32)
            ev_cnt = np.zeros((args.items, n_src), np.int8)
            nev = mask.sum(axis=1).astype(np.int64)
            for i in range(args.items):
                idx = np.flatnonzero(mask[i])
                ev_idx[i, :len(idx)] = idx
                ev_cnt[i, :len(idx)] = counts[i, idx]
            out = {}
            times = {"event": [], "dense": []}
            saved = dict(C.DENSE_BREAK_EVEN)
            for r in range(args.rounds + 1):
                for path in (("event", "dense") if r % 2 else ("dense", "event")):
                    C.DENSE_BREAK_EVEN.update(saved if path == "event" else {key: 0.0 for key in saved})
                    os.environ["EVSIM_DENSE"] = "0" if path == "event" else "1"
                    current = np.zeros((args.items, n_dst), np.float32)
                    t0 = time.perf_counter()
                    call(ev_idx, ev_cnt, nev, current)
                    if r:  # round 0 compiles
                        times[path].append(time.perf_counter() - t0)
                    out[path] = current
            C.DENSE_BREAK_EVEN.update(saved)
            os.environ.pop("EVSIM_DENSE")
            scale = 1 + np.abs(out["event"]).max()
            assert np.abs(out["dense"] - out["event"]).max() <= 1e-4 * scale, "dense and event paths disagree"
            te, td = statistics.median(times["event"]), statistics.median(times["dense"])
            if td < te and name not in found:
                found[name] = density
            print(f"{name:26s} {100 * density:6.0f}% {1e3 * te:9.2f} {1e3 * td:9.2f} {td / te:11.2f}", flush=True)
    print("dense faster from: " + "; ".join(f"{k}: {100 * v:.0f} %" for k, v in found.items())
          + ("" if len(found) == len(SHAPES) else "; others: never"))


if __name__ == "__main__":
    main()
