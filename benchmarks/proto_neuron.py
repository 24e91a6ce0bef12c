"""Prototype of a vectorised IF neuron step (not used by evsim; measured against ``evsim._kernels.if_step``).

evsim's ``if_step`` updates each neuron with a data-dependent branch that also appends the event,
through signed 2-D indexing: LLVM cannot vectorise it.  The prototype splits the step in two:

1. a branch-free pass over 1-D row views that LLVM vectorises (AVX-512):
   ``h = v + current; s = h >= θ; v = s ? h - θ : h; current = base``, spike flags to a byte row;
2. a compaction pass over the flags (cheap: one byte per neuron, mostly zeros), writing the events.

Same arithmetic in the same dtype, so the spikes and potentials are bit-identical (checked).
``python benchmarks/proto_neuron.py`` prints the speed-up at the VGG-16 / ResNet-20 layer sizes.
"""
from __future__ import annotations

import time

import numba
import numpy as np


# The prototype (branch-free update over row views, then event compaction) is now evsim's own
# if_step; the name is kept so the comparison still runs.
from evsim._kernels import if_step as if_step_vec  # noqa: E402


def compare(shapes, batch=64, rate=0.1, threads=1, reps=7):
    """Median time of evsim's if_step vs the prototype on random currents firing ~``rate``."""
    from evsim import _kernels as K
    old = numba.get_num_threads()
    numba.set_num_threads(threads)
    rows = []
    try:
        for name, (c, h, w) in shapes:
            n = c * h * w
            rng = np.random.default_rng(0)
            theta = np.ones(c, np.float32)
            base = (rng.standard_normal((batch, n)) * 0.5 - 0.2).astype(np.float32)
            v0 = np.full((batch, n), 0.5, np.float32)
            # currents drawn so that about `rate` of the neurons cross threshold on the first step
            cur0 = (rng.random((batch, n)) < rate).astype(np.float32) * 0.6 + rng.random((batch, n)).astype(np.float32) * 0.3
            outs = []
            for fn in (K.if_step, if_step_vec):
                cur, v = cur0.copy(), v0.copy()
                idx, cnt, nev = np.empty((batch, n), np.int32), np.empty((batch, n), np.int32), np.zeros(batch, np.int64)
                fn(cur, base, v, theta, False, idx, cnt, nev)
                outs.append((v.copy(), cur.copy(), nev.copy(), [idx[b, :nev[b]].copy() for b in range(batch)]))
            same = (np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1], outs[1][1])
                    and np.array_equal(outs[0][2], outs[1][2])
                    and all(np.array_equal(a, b) for a, b in zip(outs[0][3], outs[1][3])))
            times = []
            for fn in (K.if_step, if_step_vec):
                ts = []
                for _ in range(reps):
                    cur, v = cur0.copy(), v0.copy()
                    t = time.perf_counter()
                    fn(cur, base, v, theta, False, idx, cnt, nev)
                    ts.append(time.perf_counter() - t)
                times.append(float(np.median(ts)))
            rows.append(dict(layer=name, neurons=n * batch, t_evsim=times[0], t_proto=times[1],
                             gups_evsim=n * batch / times[0] / 1e9, gups_proto=n * batch / times[1] / 1e9,
                             identical=bool(same)))
    finally:
        numba.set_num_threads(old)
    return rows


SHAPES = [("vgg act1/2", (64, 32, 32)), ("vgg act3/4", (128, 16, 16)), ("vgg act5-7", (256, 8, 8)),
          ("vgg act8-10", (512, 4, 4)), ("resnet s1", (16, 32, 32)), ("resnet s2", (32, 16, 16)),
          ("resnet s3", (64, 8, 8))]

if __name__ == "__main__":
    import sys
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    print(f"IF neuron step, batch 64, ~10 % firing, {threads} thread(s): G neuron-updates/s")
    print(f"{'layer':>12s} {'evsim':>7s} {'proto':>7s} speed-up identical")
    for r in compare(SHAPES, threads=threads):
        print(f"{r['layer']:>12s} {r['gups_evsim']:7.2f} {r['gups_proto']:7.2f} {r['t_evsim'] / r['t_proto']:7.2f}x"
              f"  {r['identical']}")
