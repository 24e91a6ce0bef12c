"""Compile every Numba kernel once, for float32 and float64 (``evsim warmup``).

Kernels are compiled with ``cache=True``: machine code is stored next to the kernel
modules (``evsim/_kernels/__pycache__``), or under ``NUMBA_CACHE_DIR`` when that is
set (e.g. when the installation directory is read-only), and reused by later processes,
which then load it in a fraction of a second instead of compiling for seconds.  The
cache is keyed on the kernel source, the argument types and the CPU.
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


def _qcfs(name, src):
    return Node(name, "qcfs", (src,), {"levels": 4}, {"threshold": np.array(1.0)})


def _tiny_anns() -> list[Graph]:
    """Networks that exercise every projection kind, from spikes and from the analog input,
    composed pooling, a residual shortcut, the max-pooling gate, and a population split into
    parts at batch 1."""
    rng = np.random.default_rng(0)
    w = lambda *shape: rng.normal(size=shape)  # noqa: E731
    image = [
        Node("conv1", "conv2d", ("input",), {"padding": [1, 1]}, {"weight": w(16, 1, 3, 3)}),  # input: conv rows
        _qcfs("a1", "conv1"),  # 4096 neurons: split into parts at batch 1
        Node("avg", "avgpool2d", ("a1",), {"kernel": [2, 2], "stride": [2, 2]}),
        Node("conv2", "conv2d", ("avg",), {"padding": [1, 1]}, {"weight": w(4, 16, 3, 3)}),  # pooled conv rows
        _qcfs("a2", "conv2"),
        Node("conv2b", "conv2d", ("a2",), {"padding": [1, 1]}, {"weight": w(4, 4, 3, 3)}),
        Node("res", "add", ("conv2b", "a2")),  # the shortcut a2 -> a2b: a diagonal projection
        _qcfs("a2b", "res"),
        Node("max", "maxpool2d", ("a2b",), {"kernel": [2, 2]}),  # gate
        Node("conv3", "conv2d", ("max",), {"padding": [1, 1], "groups": 2}, {"weight": w(4, 2, 3, 3)}),  # general
        _qcfs("a3", "conv3"),
        Node("flat", "flatten", ("a3",)),
        _qcfs("a4", "flat"),  # flatten alone: a CSR projection
        Node("fc", "linear", ("a4",), {}, {"weight": w(3, 64)}),  # dense
    ]
    vector = [
        Node("conv", "conv2d", ("input",), {"padding": [1, 1]}, {"weight": w(2, 1, 3, 3)}),
        Node("flat", "flatten", ("conv",)),
        _qcfs("a1", "flat"),  # input through conv + flatten: a CSR input projection
        Node("flat_in", "flatten", ("input",)),
        Node("fc_in", "linear", ("flat_in",), {}, {"weight": w(5, 16)}),
        _qcfs("a2", "fc_in"),  # input through linear: a dense input projection
        Node("fc1", "linear", ("a1",), {}, {"weight": w(3, 32)}),
        Node("fc2", "linear", ("a2",), {}, {"weight": w(3, 5)}),
        Node("sum", "add", ("fc1", "fc2")),
    ]
    return [validate(Graph(InputSpec((1, 16, 16)), image, "fc")),
            validate(Graph(InputSpec((1, 4, 4)), vector, "sum"))]


def _variants() -> list[ConversionOptions]:
    """One conversion per registered neuron model (plugins included) and per reset rule it has:
    every layer kernel a simulation can use."""
    from .neurons import available_models

    out = []
    for model in available_models():
        for reset in model.resets or (None,):
            out.append(ConversionOptions(model.name, reset=reset))
    return out


def warm_up() -> str:
    """Compile (or load from cache) all kernels for both precisions; return the cache directory."""
    from .compile import compile_network
    from .engine import PRECISIONS, Simulator

    for ann in _tiny_anns():
        x = np.random.default_rng(1).random((2,) + tuple(ann.input.shape))
        for options in _variants():
            network = compile_network(convert(ann, options))
            record = tuple(p.name for p in network.populations)
            for dtype in PRECISIONS.values():
                sim = Simulator(network, dtype)
                for batch in (1, 2):
                    sim.run_batch(x[:batch], 2, record=record)
    return cache_directory()
