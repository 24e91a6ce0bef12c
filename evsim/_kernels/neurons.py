"""Neuron kernels: all T steps of one neuron population at once (layer-major).

A feed-forward SNN without synaptic delay can be simulated one population at a time:
population ``l`` at step ``t`` depends only on its sources at steps ``<= t``, so once every
source has emitted the events of all T steps, the input currents of all T steps of ``l`` are
known and its neurons can run through the T steps without leaving L1.  See
docs/methods.md section 2 for the equations.

Common conventions:

- ``current`` is ``(B, T, N)`` C-contiguous: the full input x(t) of every step (constant
  current included).  It is only read.  Neuron ``n`` of a ``(C, H, W)`` population is stored
  in HWC order, ``n = (y*W + x)*C + c``, so its channel is ``c = n % C`` with
  ``C = theta.shape[0]`` (``N`` is a multiple of ``C``).
- ``v0`` is the initial potential per neuron ``(N,)``.  Potentials live in a small local
  buffer per pixel; ``v_final`` ``(B, N)`` receives v(T) when it has ``B`` rows (pass a
  ``(0, N)`` array to skip that write).
- Work is split into items ``(b, part)``; ``bounds`` ``(P + 1,)`` gives the neuron range
  ``[bounds[k], bounds[k+1])`` of part ``k`` (multiples of ``C``).  A part writes the events
  of step ``t`` of sample ``b`` to ``ev_idx[b, t, bounds[k]:]`` and ``ev_cnt[b, t, bounds[k]:]``
  (increasing neuron index, signed count never 0; there is room because a neuron has at
  most one event per step) and their number to ``nev[b, t, k]``; with ``P > 1`` the parts
  are joined afterwards by :func:`join_parts`.
- ``stats[b, t, k]`` receives (spikes = sum |count|, events, SOPs = sum |count|*fanout[n]).
- All arithmetic is done in the dtype of ``current`` (float32 or float64): spikes are decided
  by comparisons, which must match the NumPy references bit for bit.  Neurons are processed in
  blocks of whole pixels (about :data:`BLOCK` neurons, potentials in L1): per step a
  branch-free update over 1-D row views (LLVM vectorises it), then a compaction of the spike
  flags into events (with the SOP sum) that skips groups of neurons without a spike.
- Kernels never raise and do no bounds checks: callers validate shapes, dtypes and contiguity.

IF and GN run on the kernel factory's generated kernels (:mod:`evsim._kernels.factory`):
measured as fast as the hand-written kernels they replaced (IF 8.1 vs 8.0 ms, GN 47.9 vs
48.0 ms on a 16 × 8 × 16384 layer, float32, 2 threads).  The signed IF neuron keeps a
hand-written kernel: it needs a per-neuron net spike count as state, which a step
function ``(v, x, θ) -> (v, s)`` cannot carry.
"""
import numba
import numpy as np

from . import steps
from ._flags import JIT, PJIT
from .factory import layer_kernel


#: neurons per block: whole pixels, about this many (a block's potentials stay in L1)
BLOCK = 256
#: spike flags are compacted into events by groups of this many neurons; a group without a
#: spike is skipped after one vectorised sum (so silent neurons cost little)
GROUP = 32


@numba.njit(**JIT)
def _tile(values, block):
    """Per-channel values repeated over the neurons of one block (block % C == 0)."""
    out = np.empty(block, values.dtype)
    for j in range(block):
        out[j] = values[j % values.shape[0]]
    return out


def _per_neuron(values, n_neurons):
    """(C,) per-channel values -> (N,) in HWC order (neuron n has channel n % C)."""
    return np.ascontiguousarray(np.tile(values, n_neurons // values.shape[0]))


def if_run(current, v0, theta, reset_zero, bounds, fanout, ev_idx, ev_cnt, nev, stats, v_final, resume=False):
    """T steps of integrate-and-fire neurons (methods.md 2.1), per-channel ``theta`` (C,).

    Per step: ``h = v + x``; a neuron spikes (count 1) if ``h >= theta[c]``, then
    ``v = h - theta[c]`` (reset by subtraction) or ``v = 0`` (``reset_zero``); else ``v = h``.
    The kernel is the factory's (:func:`evsim._kernels.factory.layer_kernel`) around
    :func:`evsim._kernels.steps.if_step`; it measured as fast as the former hand-written one.
    With ``resume`` the potentials start from ``v_final`` (a later block of time-steps).
    Other parameters: see the module docstring.
    """
    kernel = layer_kernel("if", steps.if_step, 0, True)
    n = current.shape[2]
    kernel(current, v0, _per_neuron(theta, n), np.zeros((0, n), current.dtype), 0, 1, bool(reset_zero), bounds,
           fanout, ev_idx, ev_cnt, nev, stats, v_final, bool(resume))


def gn_run(current, v0, theta_unit, tau, bounds, fanout, ev_idx, ev_cnt, nev, stats, v_final, resume=False):
    """T steps of Group Neurons with ``tau`` members (methods.md 2.2), ``theta_unit`` (C,) = θ/τ.

    Member ``i`` (1..tau) fires if ``h >= i*theta_unit[c]``; the output count is the number of
    members that fire and ``v = h - s*theta_unit``, exactly in the array dtype
    (:func:`evsim._kernels.steps.gn_step`, in the factory's kernel).
    """
    kernel = layer_kernel("gn", steps.gn_step, 1, False)
    n = current.shape[2]
    params = np.full((1, n), tau, current.dtype)
    kernel(current, v0, _per_neuron(theta_unit, n), params, 0, int(tau), False, bounds, fanout, ev_idx, ev_cnt,
           nev, stats, v_final, bool(resume))


@numba.njit(**PJIT)
def signed_if_run(current, v0, theta, neg_threshold, bounds, fanout, ev_idx, ev_cnt, nev, stats, v_final,
                  net_final=None, resume=False):
    """T steps of Fast-SNN signed IF neurons (methods.md 2.3), net spike count N(0) = 0.

    Per step: ``h = v + x``; if ``h >= theta[c]``: ``h -= theta[c]``, ``N += 1``, event +1;
    elif ``h <= neg_threshold and N > 0``: ``h += theta[c]``, ``N -= 1``, event -1;
    then ``v = h``.  At most one event per neuron and step; ``N`` never goes below 0.

    Parameters are those of :func:`if_run`, with ``neg_threshold`` the negative threshold
    (-1e-3 in Fast-SNN), compared in the dtype of ``current``; counts are +1 or -1.
    ``net_final`` (B, N) int64, optional, receives the net counts after the last step; with
    ``resume`` (and both ``v_final`` and ``net_final`` given) v and N start from them instead of
    ``v0`` and 0: the next block of time-steps of the same samples.
    """
    n_batch, n_steps, _ = current.shape
    n_channels = theta.shape[0]
    n_parts = bounds.shape[0] - 1
    write_v = v_final.shape[0] == n_batch
    # Round once to the array dtype, as a NumPy comparison with a Python float would.
    negative_threshold = current.dtype.type(neg_threshold)
    block = max(1, BLOCK // n_channels) * n_channels
    for item in numba.prange(n_batch * n_parts):
        b = item // n_parts
        k = item % n_parts
        start, stop = bounds[k], bounds[k + 1]
        threshold = _tile(theta, block)
        v = np.empty(block, current.dtype)
        net = np.empty(block, np.int64)
        sign = np.empty(block, np.int64)
        n_events = np.zeros(n_steps, np.uint64)
        sops = np.zeros(n_steps, np.int64)
        for o in range(start, stop, block):
            size = min(block, stop - o)
            vb, th, nt, sg, fan = v[:size], threshold[:size], net[:size], sign[:size], fanout[o:o + size]
            vb[:] = v0[o:o + size]
            nt[:] = 0
            if net_final is not None:
                if resume and write_v:
                    vb[:] = v_final[b, o:o + size]
                    nt[:] = net_final[b, o:o + size]
            for t in range(n_steps):
                x = current[b, t, o:o + size]
                for j in range(size):
                    h = vb[j] + x[j]
                    if h >= th[j]:
                        h -= th[j]
                        nt[j] += 1
                        sg[j] = 1
                    elif h <= negative_threshold and nt[j] > 0:
                        h += th[j]
                        nt[j] -= 1
                        sg[j] = -1
                    else:
                        sg[j] = 0
                    vb[j] = h
                ib, kb = ev_idx[b, t, start:], ev_cnt[b, t, start:]
                m = n_events[t]
                for g in range(0, size, GROUP):
                    sgg, fa = sg[g:g + GROUP], fan[g:g + GROUP]
                    active = 0
                    for j in range(sgg.shape[0]):
                        active += sgg[j] != 0
                    if active == 0:
                        continue
                    s = 0
                    for j in range(sgg.shape[0]):
                        s += (sgg[j] != 0) * fa[j]
                    sops[t] += s
                    for j in range(sgg.shape[0]):
                        ib[m] = o + g + j
                        kb[m] = sgg[j]
                        m += numba.uint64(sgg[j] != 0)
                n_events[t] = m
            if write_v:
                v_final[b, o:o + size] = vb
            if net_final is not None:
                if net_final.shape[0] == n_batch:
                    net_final[b, o:o + size] = nt
        for t in range(n_steps):
            nev[b, t, k] = n_events[t]
            stats[b, t, k, 0] = n_events[t]
            stats[b, t, k, 1] = n_events[t]
            stats[b, t, k, 2] = sops[t]


@numba.njit(**PJIT)
def join_parts(ev_idx, ev_cnt, nev_parts, bounds, nev):
    """Move the event segments of parts 1..P-1 down behind part 0, per (sample, step).

    Segments only move towards lower addresses (a part holds at most as many events as
    neurons before it), so the in-place copy in increasing order is safe.

    Parameters
    ----------
    ev_idx, ev_cnt : ndarray, (B, T, N)
        Events as written by the neuron kernels, joined in place.
    nev_parts : ndarray, (B, T, P) int64
        Events per part.
    bounds : ndarray, (P + 1,) int64
        Neuron range of each part.
    nev : ndarray, (B, T) int64
        Receives the number of events per (sample, step).
    """
    n_batch, n_steps, n_parts = nev_parts.shape
    for item in numba.prange(n_batch * n_steps):
        b = item // n_steps
        t = item % n_steps
        ib = ev_idx[b, t]
        kb = ev_cnt[b, t]
        m = nev_parts[b, t, 0]
        for k in range(1, n_parts):
            src = bounds[k]
            for e in range(nev_parts[b, t, k]):
                ib[m + e] = ib[src + e]
                kb[m + e] = kb[src + e]
            m += nev_parts[b, t, k]
        nev[b, t] = m
