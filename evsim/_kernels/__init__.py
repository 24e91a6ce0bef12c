"""Numba kernels of the event-driven engine.

Kernels take only NumPy arrays and scalars, never raise, and do no validation: the engine checks
shapes and coerces dtypes/contiguity before calling them. Compilation flags live in ``_flags``.

Numba's OpenMP workers sleep at barriers (``OMP_WAIT_POLICY=passive``): ``evsim/_omp.py`` sets
that when the ``evsim`` package is imported, which always happens before this subpackage loads.
"""
from .dense import channel_affine, events_to_cols, events_to_dense, im2col, pool_sum, qcfs_forward
from .gather import aligned, event_segments, gather_conv, gather_layout
from .neurons import gn_run, if_run, join_parts, signed_if_run
from .pooling import maxpool_gate
from .scatter import (conv_rows_layout, fill_rows, scatter_conv, scatter_conv_rows, scatter_csr, scatter_dense,
                      scatter_diagonal)
from .stats import accumulate_counts, event_stats

__all__ = [
    "if_run",
    "gn_run",
    "signed_if_run",
    "join_parts",
    "fill_rows",
    "conv_rows_layout",
    "scatter_conv_rows",
    "scatter_conv",
    "scatter_diagonal",
    "scatter_dense",
    "scatter_csr",
    "maxpool_gate",
    "event_stats",
    "accumulate_counts",
    "aligned",
    "event_segments",
    "gather_conv",
    "gather_layout",
    "im2col",
    "qcfs_forward",
    "pool_sum",
    "channel_affine",
    "events_to_cols",
    "events_to_dense",
]
