"""The kernel factory: a layer-major neuron kernel generated around a scalar step function.

:func:`layer_kernel` takes a jitted step ``step(v, current, theta, *params[, reset_zero]) ->
(new_v, count)`` and returns a parallel kernel that runs one population through all T
steps (layer-major, see :mod:`evsim._kernels.neurons`): per block of :data:`BLOCK` neurons
(potentials in L1) and step, one update loop calling the step (inlined by LLVM, so a
branch-free step vectorises), then the compaction of non-zero counts into events with the
spike and SOP sums, skipping groups of :data:`GROUP` silent neurons.

How it stays cacheable: Numba cannot cache closures (a captured dispatcher pickles
differently in every process, so the cache never hits).  The kernel is therefore a
module-level *template* whose globals ``_step`` / ``_call`` are bound by building a new
function object over the same code with its own globals; its ``__qualname__`` names the
model and a hash of the step's bytecode, so every model (and every edit of a step) has its
own cache entry.  A step's own callees are not part of that hash (as in Numba's cache).

Kernel signature (all arrays validated and laid out by the engine)::

    kernel(current (B, T, N), v0 (N,), theta (N,), params (P, N), lo, hi, reset_zero,
           bounds (K + 1,), fanout (N,), ev_idx (B, T, N), ev_cnt (B, T, N), nev (B, T, K),
           stats (B, T, K, 3), v_final (B | 0, N), resume=False)

``theta`` and ``params`` are per neuron, in the dtype of ``current``; counts are clipped
to ``[lo, hi]`` (a nan count becomes ``lo``).  ``v_final`` receives v after the last step;
with ``resume`` the potentials start from ``v_final`` instead of ``v0`` (the next block of
time-steps of the same samples: the engine processes long runs in blocks of steps).
"""
import hashlib
import types

import numba
import numpy as np

from ._flags import JIT, PJIT

__all__ = ["layer_kernel", "BLOCK", "GROUP"]

BLOCK = 256
GROUP = 32


# One adapter per arity: unpacks the parameter rows into the step's arguments.  ``_step`` is
# bound per model (see _bind); ``rz`` is passed on only by the "r" variants (models with resets).
def _adapt0(v, x, th, p, j, rz):
    return _step(v, x, th)  # noqa: F821


def _adapt1(v, x, th, p, j, rz):
    return _step(v, x, th, p[0, j])  # noqa: F821


def _adapt2(v, x, th, p, j, rz):
    return _step(v, x, th, p[0, j], p[1, j])  # noqa: F821


def _adapt3(v, x, th, p, j, rz):
    return _step(v, x, th, p[0, j], p[1, j], p[2, j])  # noqa: F821


def _adapt4(v, x, th, p, j, rz):
    return _step(v, x, th, p[0, j], p[1, j], p[2, j], p[3, j])  # noqa: F821


def _adapt5(v, x, th, p, j, rz):
    return _step(v, x, th, p[0, j], p[1, j], p[2, j], p[3, j], p[4, j])  # noqa: F821


def _adapt6(v, x, th, p, j, rz):
    return _step(v, x, th, p[0, j], p[1, j], p[2, j], p[3, j], p[4, j], p[5, j])  # noqa: F821


def _adapt0r(v, x, th, p, j, rz):
    return _step(v, x, th, rz)  # noqa: F821


def _adapt1r(v, x, th, p, j, rz):
    return _step(v, x, th, p[0, j], rz)  # noqa: F821


def _adapt2r(v, x, th, p, j, rz):
    return _step(v, x, th, p[0, j], p[1, j], rz)  # noqa: F821


def _adapt3r(v, x, th, p, j, rz):
    return _step(v, x, th, p[0, j], p[1, j], p[2, j], rz)  # noqa: F821


def _adapt4r(v, x, th, p, j, rz):
    return _step(v, x, th, p[0, j], p[1, j], p[2, j], p[3, j], rz)  # noqa: F821


def _adapt5r(v, x, th, p, j, rz):
    return _step(v, x, th, p[0, j], p[1, j], p[2, j], p[3, j], p[4, j], rz)  # noqa: F821


def _adapt6r(v, x, th, p, j, rz):
    return _step(v, x, th, p[0, j], p[1, j], p[2, j], p[3, j], p[4, j], p[5, j], rz)  # noqa: F821


_ADAPTERS = {(0, False): _adapt0, (1, False): _adapt1, (2, False): _adapt2, (3, False): _adapt3,
             (4, False): _adapt4, (5, False): _adapt5, (6, False): _adapt6,
             (0, True): _adapt0r, (1, True): _adapt1r, (2, True): _adapt2r, (3, True): _adapt3r,
             (4, True): _adapt4r, (5, True): _adapt5r, (6, True): _adapt6r}


def _layer(current, v0, theta, params, lo, hi, reset_zero, bounds, fanout, ev_idx, ev_cnt, nev, stats, v_final,
           resume=False):
    n_batch, n_steps, _ = current.shape
    n_parts = bounds.shape[0] - 1
    write_v = v_final.shape[0] == n_batch
    for item in numba.prange(n_batch * n_parts):
        b = item // n_parts
        k = item % n_parts
        start, stop = bounds[k], bounds[k + 1]
        v = np.empty(BLOCK, current.dtype)
        counts = np.empty(BLOCK, np.int64)
        n_events = np.zeros(n_steps, np.uint64)
        spikes = np.zeros(n_steps, np.int64)
        sops = np.zeros(n_steps, np.int64)
        for o in range(start, stop, BLOCK):
            size = min(BLOCK, stop - o)
            vb, cn, th, fan = v[:size], counts[:size], theta[o:o + size], fanout[o:o + size]
            pb = params[:, o:o + size]
            if resume and write_v:  # a later block of time-steps: carry on from v_final
                vb[:] = v_final[b, o:o + size]
            else:
                vb[:] = v0[o:o + size]
            for t in range(n_steps):
                x = current[b, t, o:o + size]
                for j in range(size):  # the update: branch-free steps vectorise
                    nv, c = _call(vb[j], x[j], th[j], pb, j, reset_zero)  # noqa: F821
                    vb[j] = nv
                    c = c if c >= lo else lo  # nan -> lo
                    cn[j] = c if c <= hi else hi
                # compaction by groups: a silent group costs one vectorised sum; every neuron
                # writes its slot, only non-zero counts advance the (unsigned) position
                ib, kb = ev_idx[b, t, start:], ev_cnt[b, t, start:]
                m = n_events[t]
                for g in range(0, size, GROUP):
                    cg, fa = cn[g:g + GROUP], fan[g:g + GROUP]
                    total = 0
                    for j in range(cg.shape[0]):
                        total += abs(cg[j])
                    if total == 0:
                        continue
                    spikes[t] += total
                    weighted = 0
                    for j in range(cg.shape[0]):
                        weighted += abs(cg[j]) * fa[j]
                    sops[t] += weighted
                    for j in range(cg.shape[0]):
                        ib[m] = o + g + j
                        kb[m] = cg[j]
                        m += numba.uint64(cg[j] != 0)
                n_events[t] = m
            if write_v:
                v_final[b, o:o + size] = vb
        for t in range(n_steps):
            nev[b, t, k] = n_events[t]
            stats[b, t, k, 0] = spikes[t]
            stats[b, t, k, 1] = n_events[t]
            stats[b, t, k, 2] = sops[t]


def _code_tag(step) -> str:
    """A hash of the step's bytecode and constants: a changed step gets a new cache entry."""
    code = step.py_func.__code__
    h = hashlib.sha256(code.co_code)
    h.update(repr(code.co_consts).encode())
    h.update(repr(code.co_names).encode())
    h.update(step.py_func.__module__.encode())
    return h.hexdigest()[:12]


def _bind(template, name: str, qualname: str, **bound):
    """A new function over ``template``'s code, with ``bound`` as extra globals."""
    scope = dict(template.__globals__)
    scope.update(bound)
    fn = types.FunctionType(template.__code__, scope, name, template.__defaults__)
    fn.__qualname__ = qualname
    fn.__module__ = template.__module__
    return fn


_KERNELS: dict = {}


def layer_kernel(model_name: str, step, n_params: int, with_reset: bool):
    """The layer kernel of a model built around ``step`` (cached per model and step).

    Parameters
    ----------
    model_name : str
        Registered model name (part of the cache key and of the kernel's name).
    step : numba dispatcher
        The model's jitted step.
    n_params : int
        Number of declared parameters (0..6).
    with_reset : bool
        Whether the step takes the final ``reset_zero`` argument.
    """
    key = (model_name, id(step), n_params, with_reset)
    kernel = _KERNELS.get(key)
    if kernel is None:
        tag = f"{model_name}_{_code_tag(step)}_{n_params}{'r' if with_reset else ''}"
        adapter = _ADAPTERS[n_params, with_reset]
        call = numba.njit(**JIT)(_bind(adapter, adapter.__name__, f"step_adapter_{tag}", _step=step))
        kernel = numba.njit(**PJIT)(_bind(_layer, "_layer", f"layer_kernel_{tag}", _call=call))
        _KERNELS[key] = kernel
    return kernel
