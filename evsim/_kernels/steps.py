"""Scalar step functions of the built-in neuron models (docs/methods.md section 2).

A step takes one neuron's potential, this step's input current, its threshold and the
model's parameters, and returns the new potential and the spike count; the kernel factory
(:mod:`evsim._kernels.factory`) builds the layer kernel around it.  Written branch-free
where possible (selects), so that LLVM vectorises the kernel's update loop.
"""
import numba
import numpy as np

from ._flags import STEP_JIT


@numba.njit(**STEP_JIT)
def if_step(v, current, theta, reset_zero):
    """IF: ``h = v + x``; spike when ``h >= θ``; then ``v = h - θ`` (or 0 with ``reset_zero``)."""
    h = v + current
    spike = h >= theta
    after = theta - theta if reset_zero else h - theta
    return (after if spike else h), (1 if spike else 0)


@numba.njit(**STEP_JIT)
def gn_step(v, current, unit, tau):
    """Group Neurons: ``s = #{i = 1..τ : h >= i·unit}`` exactly in the array dtype; ``v = h - s·unit``.

    ``unit`` is θ/τ (> 0, finite) and ``tau`` arrives in the same float dtype.  All arithmetic
    stays in that dtype (a count times ``unit`` is the member threshold rounded as the
    reference rounds it).  ``s`` is estimated with a division, then corrected against the
    member thresholds (division rounding can be off by one).
    """
    one = unit / unit
    zero = unit - unit
    h = v + current
    ratio = np.floor(h / unit)
    if ratio >= tau:
        s = tau
    elif ratio > zero:
        s = ratio
    else:  # also nan
        s = zero
    while s < tau and h >= (s + one) * unit:
        s = s + one
    while s > zero and h < s * unit:
        s = s - one
    return (h - s * unit if s > zero else h), s
