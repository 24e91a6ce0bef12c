"""Prototype of a faster event-driven convolution scatter (not used by evsim; measured by bench.py).

Differences from ``evsim._kernels.scatter.scatter_conv``:

1. **Phase-decomposed, row-contiguous weights.**  A stride-s kernel is split into s×s phases; in
   phase (py, px) an event at (y, x) reaches outputs oy = oy0 - jy, ox = ox0 - jx.  The weights are
   re-laid as ``W[py, px, jy, c_in, r, c_out]`` with ``r`` the *reversed* kx tap, so that one event
   adds ONE contiguous block of ``n_taps_x * C_out`` weights to ONE contiguous block of the HWC output
   row (the [ky, c_in, kx, c_out] layout of issue 7).  Border taps are clipped once per (event, ky)
   instead of tested per tap; the composed avgpool∘conv 6×6/stride-2 kernels no longer loop over
   the 27 of 36 taps that a given event cannot reach.
2. **Events grouped by pixel.**  Events are sorted by neuron index, so the events of one pixel are
   consecutive and share every output span; their weight rows are summed into a 256-float
   accumulator that stays in L1 and is written back once per group (the output row is read and
   written once per pixel instead of once per event).
3. Flat 1-D indexing with non-negative int64 offsets (no wraparound branches), inner loops that
   LLVM vectorises.

Per output element the contributions are still added in event order, starting from the
current value, so the float results are bit-identical to evsim's kernel (checked by ``compare``).
Only groups == 1 and dilation 1 are handled (all the benchmark networks).
"""
from __future__ import annotations

import time

import numba
import numpy as np

CHUNK = 256


def relayout(weight: np.ndarray, geometry: tuple):
    """evsim conv weight (kh, kw, C_in, C_out) -> phase-decomposed (s_h, s_w, Kpy, C_in, Kpx*C_out)."""
    (src_h, src_w, src_c, crop_h, crop_w, out_h, out_w, out_c, kh, kw, sh, sw, ph, pw, dh, dw, groups) = geometry
    assert groups == 1 and dh == dw == 1
    kpy = -(-kh // sh)
    kpx = -(-kw // sw)
    W = np.zeros((sh, sw, kpy, src_c, kpx, out_c), dtype=weight.dtype)
    ny = np.zeros(sh, np.int64)
    nx = np.zeros(sw, np.int64)
    for py in range(sh):
        ny[py] = len(range(py, kh, sh))
    for px in range(sw):
        nx[px] = len(range(px, kw, sw))
    for py in range(sh):
        for px in range(sw):
            for jy in range(ny[py]):
                for jx in range(nx[px]):
                    r = nx[px] - 1 - jx
                    W[py, px, jy, :, r, :] = weight[py + sh * jy, px + sw * jx]
    return np.ascontiguousarray(W.reshape(-1)), ny, nx, kpy, kpx


@numba.njit(nogil=True, parallel=True, error_model="numpy", cache=True)
def scatter_conv_grouped(ev_idx, ev_cnt, nev, W, ny, nx, kpy, kpx, current,
                         src_w, src_c, crop_h, crop_w, out_h, out_w, out_c, sh, sw, ph, pw):
    n_batch = current.shape[0]
    row = kpx * out_c                 # floats per (phase, jy, c) block
    per_c = row
    per_jy = src_c * per_c
    per_px = kpy * per_jy
    per_py = sw * per_px
    for b in numba.prange(n_batch):
        acc = np.empty(CHUNK, current.dtype)
        cur = current[b]
        n_e = nev[b]
        e = 0
        while e < n_e:
            n = ev_idx[b, e]
            pixel = n // src_c
            g_end = e + 1
            while g_end < n_e and ev_idx[b, g_end] // src_c == pixel:
                g_end += 1
            x = pixel % src_w
            y = pixel // src_w
            if y >= crop_h or x >= crop_w:
                e = g_end
                continue
            ty = y + ph
            tx = x + pw
            py = ty % sh
            px = tx % sw
            oy0 = ty // sh
            ox0 = tx // sw
            kx_n = nx[px]
            # outputs ox = ox0 - (kx_n-1) + r for r in [lo, hi)
            lo = kx_n - 1 - ox0
            if lo < 0:
                lo = 0
            hi = out_w - ox0 + kx_n - 1
            if hi > kx_n:
                hi = kx_n
            if hi <= lo:
                e = g_end
                continue
            span = (hi - lo) * out_c
            w_phase = py * per_py + px * per_px + lo * out_c
            for jy in range(ny[py]):
                oy = oy0 - jy
                if oy < 0:
                    break
                if oy >= out_h:
                    continue
                o = (oy * out_w + ox0 - (kx_n - 1) + lo) * out_c
                w_jy = w_phase + jy * per_jy
                for j0 in range(0, span, CHUNK):
                    m = min(CHUNK, span - j0)
                    out = cur[o + j0:o + j0 + m]
                    for j in range(m):
                        acc[j] = out[j]
                    for g in range(e, g_end):
                        count = W.dtype.type(ev_cnt[b, g])
                        wo = w_jy + (ev_idx[b, g] - pixel * src_c) * per_c + j0
                        wrow = W[wo:wo + m]
                        for j in range(m):
                            acc[j] += count * wrow[j]
                    for j in range(m):
                        out[j] = acc[j]
            e = g_end


@numba.njit(nogil=True, parallel=True, error_model="numpy", cache=True)
def scatter_conv_rows(ev_idx, ev_cnt, nev, W, ny, nx, kpy, kpx, current,
                      src_w, src_c, crop_h, crop_w, out_h, out_w, out_c, sh, sw, ph, pw):
    """Variant 1 alone: contiguous rows, no pixel grouping."""
    n_batch = current.shape[0]
    per_c = kpx * out_c
    per_jy = src_c * per_c
    per_px = kpy * per_jy
    per_py = sw * per_px
    for b in numba.prange(n_batch):
        cur = current[b]
        for e in range(nev[b]):
            n = ev_idx[b, e]
            c = n % src_c
            pixel = n // src_c
            x = pixel % src_w
            y = pixel // src_w
            if y >= crop_h or x >= crop_w:
                continue
            count = W.dtype.type(ev_cnt[b, e])
            ty = y + ph
            tx = x + pw
            py = ty % sh
            px = tx % sw
            oy0 = ty // sh
            ox0 = tx // sw
            kx_n = nx[px]
            lo = max(0, kx_n - 1 - ox0)
            hi = min(kx_n, out_w - ox0 + kx_n - 1)
            if hi <= lo:
                continue
            span = (hi - lo) * out_c
            w_c = py * per_py + px * per_px + c * per_c + lo * out_c
            for jy in range(ny[py]):
                oy = oy0 - jy
                if oy < 0:
                    break
                if oy >= out_h:
                    continue
                o = (oy * out_w + ox0 - (kx_n - 1) + lo) * out_c
                wo = w_c + jy * per_jy
                out = cur[o:o + span]
                wrow = W[wo:wo + span]
                for j in range(span):
                    out[j] += count * wrow[j]


# The "slices" prototype (1-D row views in the inner loop) is now evsim's own scatter_conv;
# the name is kept so the comparison below still reads "slices".
from evsim._kernels import scatter_conv as scatter_conv_slices  # noqa: E402


def _call(kernel, ev_idx, ev_cnt, nev, lay, current, geometry):
    W, ny, nx, kpy, kpx = lay
    (src_h, src_w, src_c, crop_h, crop_w, out_h, out_w, out_c, kh, kw, sh, sw, ph, pw, dh, dw, groups) = geometry
    kernel(ev_idx, ev_cnt, nev, W, ny, nx, kpy, kpx, current, src_w, src_c, crop_h, crop_w, out_h, out_w, out_c,
           sh, sw, ph, pw)


def _best(fn, reps):
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def compare(captured, threads=1, reps=5):
    """Time evsim's scatter_conv and the prototypes on captured events (one step, all conv projections).

    ``captured``: list of (projection, weight, ev_idx, ev_cnt, nev, current_shape) from
    ``probe.capture_conv_events``.  Returns per-layer and total GSOP/s with ``threads`` numba threads
    for: evsim (current kernel), slices (evsim + row views), rows (re-laid weights), proto (rows +
    pixel grouping).
    """
    from evsim import _kernels as K
    old = numba.get_num_threads()
    numba.set_num_threads(threads)
    variants = ("evsim", "slices", "rows", "proto")
    layers = []
    tot = {"events": 0, "sops": 0, **{"t_" + v: 0.0 for v in variants}}
    max_rel, bitwise = 0.0, True
    try:
        for proj, weight, ev_idx, ev_cnt, nev, shape in captured:
            g = proj.geometry
            if g[-1] != 1 or g[-2] != 1 or g[-3] != 1:
                continue
            lay = relayout(weight, g)
            calls = {
                "evsim": lambda cur: K.scatter_conv(ev_idx, ev_cnt, nev, weight, cur, *g),
                "slices": lambda cur: scatter_conv_slices(ev_idx, ev_cnt, nev, weight, cur, *g),
                "rows": lambda cur: _call(scatter_conv_rows, ev_idx, ev_cnt, nev, lay, cur, g),
                "proto": lambda cur: _call(scatter_conv_grouped, ev_idx, ev_cnt, nev, lay, cur, g),
            }
            base = np.random.default_rng(0).standard_normal(shape).astype(weight.dtype)
            sops = int(sum(int(proj.fanout[ev_idx[b, :nev[b]]].sum()) for b in range(len(nev))))
            ref = base.copy()
            calls["evsim"](ref)
            denom = np.abs(ref - base).max() + 1e-30
            row = dict(target=proj.target, events=int(nev.sum()), sops=sops)
            for v in variants[1:]:
                out = base.copy()
                calls[v](out)
                max_rel = max(max_rel, float(np.abs(out - ref).max() / denom))
                bitwise &= bool(np.array_equal(out, ref))
            for v in variants:
                cur = base.copy()
                t = _best(lambda: calls[v](cur), reps)
                row["t_" + v] = t
                row["gsops_" + v] = sops / t / 1e9
                tot["t_" + v] += t
            layers.append(row)
            tot["events"] += row["events"]
            tot["sops"] += sops
    finally:
        numba.set_num_threads(old)
    return dict(layers=layers, threads=threads, max_rel_diff=max_rel, bitwise_equal=bitwise,
                **{"gsops_" + v: tot["sops"] / tot["t_" + v] / 1e9 for v in variants}, **tot)


if __name__ == "__main__":
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench
    import probe
    from evsim.compile import compile_network
    from evsim.engine import Simulator
    from nets import random_inputs
    rate = float(sys.argv[1]) if len(sys.argv) > 1 else 0.1
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    sim = Simulator(compile_network(bench.build("vgg16", 4, rate)), np.float32)
    captured = probe.capture_conv_events(sim, random_inputs(64, bench.DATA_SEED)[:batch], 4, step=2)
    res = compare(captured, threads=threads)
    print(f"VGG-16 conv scatter, firing {rate:.0%}, batch {batch}, {threads} thread(s), events of step 3; GSOP/s")
    print(f"{'layer':>6s} {'events':>8s} {'MSOP':>8s} {'evsim':>7s} {'slices':>7s} {'rows':>7s} {'grouped':>7s}")
    for l in res["layers"]:
        print(f"{l['target']:>6s} {l['events']:8d} {l['sops'] / 1e6:8.1f} {l['gsops_evsim']:7.2f} "
              f"{l['gsops_slices']:7.2f} {l['gsops_rows']:7.2f} {l['gsops_proto']:7.2f}")
    print(f"{'all':>6s} {res['events']:8d} {res['sops'] / 1e6:8.1f} {res['gsops_evsim']:7.2f} "
          f"{res['gsops_slices']:7.2f} {res['gsops_rows']:7.2f} {res['gsops_proto']:7.2f}   "
          f"bit-identical: {res['bitwise_equal']} (max rel diff {res['max_rel_diff']:.1e})")


class patched:
    """Context manager: run evsim's engine with a prototype conv scatter (``"slices"`` or ``"rows"``)
    in place of ``scatter_conv`` (monkeypatches ``evsim.engine.SCATTERS['conv']`` only)."""

    layouts: dict = {}  # id(weight) -> (weight, re-laid weights), kept across blocks: the re-layout is a
    #                     one-off compile-time cost, not part of a simulation

    def __init__(self, variant: str):
        self.variant = variant

    def __enter__(self):
        import evsim.engine as E
        self.E, self.saved = E, E.SCATTERS["conv"]
        layouts = self.layouts

        if self.variant == "slices":
            def scatter(proj, arrays, src, current):
                scatter_conv_slices(src.ev_idx, src.ev_cnt, src.nev, arrays[0], current, *proj.geometry)
        else:
            kernel = scatter_conv_rows if self.variant == "rows" else scatter_conv_grouped

            def scatter(proj, arrays, src, current):
                g = proj.geometry
                if g[-1] != 1 or g[-2] != 1 or g[-3] != 1:  # groups / dilation: not handled by the prototype
                    scatter_conv_slices(src.ev_idx, src.ev_cnt, src.nev, arrays[0], current, *g)
                    return
                hit = layouts.get(id(arrays[0]))
                if hit is None or hit[0] is not arrays[0]:
                    hit = layouts[id(arrays[0])] = (arrays[0], relayout(arrays[0], proj.geometry))
                lay = hit[1]
                _call(kernel, src.ev_idx, src.ev_cnt, src.nev, lay, current, proj.geometry)
        E.SCATTERS["conv"] = scatter
        return self

    def __exit__(self, *exc):
        self.E.SCATTERS["conv"] = self.saved


def whatif(sim, x, T, rounds=5):
    """End-to-end run_batch time (median) of evsim as is and with prototype kernels; with
    ``len(x) == 1`` also with 1 numba thread (serial dispatch).  Variants are interleaved."""
    variants = ["evsim", "slices", "rows"]
    if len(x) == 1:
        variants += ["evsim 1 thread", "rows 1 thread"]
    times = {v: [] for v in variants}
    n0 = numba.get_num_threads()
    import contextlib
    for r in range(rounds + 1):  # round 0 warms up (JIT, re-layout of the weights) and is not timed
        for v in variants:
            ctx = patched(v.split()[0]) if not v.startswith("evsim") else contextlib.nullcontext()
            numba.set_num_threads(1 if "1 thread" in v else n0)
            with ctx:
                t = time.perf_counter()
                sim.run_batch(x, T)
                dt = time.perf_counter() - t
            if r:
                times[v].append(dt)
    numba.set_num_threads(n0)
    return {v: float(np.median(ts)) for v, ts in times.items()}
