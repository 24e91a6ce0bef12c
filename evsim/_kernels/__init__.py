"""Numba kernels of the event-driven engine.

Kernels take only NumPy arrays and scalars, never raise, and do no validation: the engine checks
shapes and coerces dtypes/contiguity before calling them. Compilation flags live in ``_flags``.
"""
from .neurons import gn_step, if_step, signed_if_step
from .pooling import maxpool_gate
from .scatter import scatter_conv, scatter_csr, scatter_dense
from .stats import event_stats

__all__ = [
    "if_step",
    "gn_step",
    "signed_if_step",
    "scatter_conv",
    "scatter_dense",
    "scatter_csr",
    "maxpool_gate",
    "event_stats",
]
