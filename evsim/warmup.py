"""Compile every Numba kernel once, for float32 and float64 (``evsim warmup``).

Kernels are compiled with ``cache=True``: machine code is stored next to the kernel
modules (``evsim/_kernels/__pycache__``), or under ``NUMBA_CACHE_DIR`` when that is
set (e.g. when the installation directory is read-only), and reused by later processes.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .convert import ConversionOptions, convert
from .graph import Graph, InputSpec, Node, validate

__all__ = ["warm_up", "cache_directory"]


def cache_directory() -> str:
    """Where Numba stores the compiled kernels."""
    from . import _kernels

    return os.environ.get("NUMBA_CACHE_DIR") or str(Path(_kernels.__file__).parent / "__pycache__")


def _tiny_ann() -> Graph:
    """A network that exercises every projection kind and the max-pooling gate."""
    rng = np.random.default_rng(0)
    lam = np.array(1.0)
    nodes = [
        Node("conv", "conv2d", ("input",), {"padding": [1, 1]}, {"weight": rng.normal(size=(2, 1, 3, 3))}),
        Node("a1", "qcfs", ("conv",), {"levels": 4}, {"threshold": lam}),
        Node("pool", "maxpool2d", ("a1",), {"kernel": [2, 2]}),
        Node("conv2", "conv2d", ("pool",), {"padding": [1, 1]}, {"weight": rng.normal(size=(2, 2, 3, 3))}),
        Node("a2", "qcfs", ("conv2",), {"levels": 4}, {"threshold": lam}),
        Node("flat", "flatten", ("a2",)),
        Node("a3", "qcfs", ("flat",), {"levels": 4}, {"threshold": lam}),  # flatten alone: a CSR projection
        Node("fc", "linear", ("a3",), {}, {"weight": rng.normal(size=(3, 18))}),
    ]
    return validate(Graph(InputSpec((1, 6, 6)), nodes, "fc"))


def warm_up() -> str:
    """Compile (or load from cache) all kernels for both precisions; return the cache directory."""
    from .engine import simulate

    ann = _tiny_ann()
    x = np.random.default_rng(1).random((2, 1, 6, 6))
    for options in (ConversionOptions("if"), ConversionOptions("if", reset="zero"), ConversionOptions("gn"),
                    ConversionOptions("signed_if")):
        snn = convert(ann, options)
        for precision in ("float32", "float64"):
            for batch in (1, 2):
                simulate(snn, x[:batch], T=2, precision=precision)
    return cache_directory()
