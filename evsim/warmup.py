"""Compile every Numba kernel once, for float32 and float64 (``evsim warmup``).

Kernels are compiled with ``cache=True``: machine code is stored next to the kernel
modules (``evsim/_kernels/__pycache__``), or under ``NUMBA_CACHE_DIR`` when that is
set (e.g. when the installation directory is read-only), and reused by later processes,
which then load it in a fraction of a second instead of compiling for seconds.  The
cache is keyed on the kernel source, the argument types and the CPU.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .convert import ConversionOptions, convert
from .graph import Graph, InputSpec, Node, validate

__all__ = ["warm_up", "warm_up_steps", "WarmupReport", "cache_directory", "kernel_counts"]


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


@dataclass
class WarmupReport:
    """What :func:`warm_up` did.

    Attributes
    ----------
    cache : str
        Where Numba stores the compiled kernels.
    compiled, loaded : int
        Kernel specialisations (one per kernel and argument types) compiled now, and
        loaded from the on-disk cache.  Specialisations already in memory count as neither.
    compile_s, total_s : float
        Seconds Numba spent compiling, and in all.
    kernels : dict
        Kernel name -> (compiled, loaded).
    """

    cache: str
    compiled: int = 0
    loaded: int = 0
    compile_s: float = 0.0
    total_s: float = 0.0
    kernels: dict = field(default_factory=dict)


def kernel_dispatchers() -> dict:
    """Every Numba kernel of the engine: name -> dispatcher."""
    from numba.core.registry import CPUDispatcher

    from ._kernels import neurons, pooling, scatter, stats

    found = {}
    for module in (neurons, pooling, scatter, stats):
        for name, obj in vars(module).items():
            if isinstance(obj, CPUDispatcher):
                found.setdefault(getattr(obj.py_func, "__name__", name), obj)
    try:  # layer kernels generated around the neuron models' step functions (issue 11)
        from ._kernels import factory
    except ImportError:
        factory = None
    for kernel in getattr(factory, "_KERNELS", {}).values():
        found.setdefault(getattr(kernel.py_func, "__name__", repr(kernel)), kernel)
    return found


def kernel_counts() -> dict[str, tuple[int, int]]:
    """Per kernel: (specialisations compiled, loaded from the cache) in this process so far."""
    return {name: (sum(k.stats.cache_misses.values()), sum(k.stats.cache_hits.values()))
            for name, k in kernel_dispatchers().items()}


def warm_up_steps() -> list[tuple[str, Callable[[], None]]]:
    """The warm-up as (description, call) steps: every network x neuron model x precision x batch."""
    from .compile import compile_network
    from .engine import PRECISIONS, Simulator

    from .neurons import available_models

    steps = []
    variants = []  # every registered model (plugins included), with each of its reset rules
    for model in available_models():
        for reset in model.resets or (None,):
            label = model.cli_name + (f", reset {reset}" if reset else "")
            variants.append((label, ConversionOptions(model.name, reset=reset)))
    for net_name, ann in zip(("image network", "vector network"), _tiny_anns()):
        x = np.random.default_rng(1).random((2,) + tuple(ann.input.shape))
        for label, options in variants:
            for precision, dtype in PRECISIONS.items():
                def step(ann=ann, options=options, dtype=dtype, x=x):
                    network = compile_network(convert(ann, options))
                    record = tuple(p.name for p in network.populations)
                    sim = Simulator(network, dtype)
                    for batch in (1, 2):
                        sim.run_batch(x[:batch], 2, record=record)
                steps.append((f"{net_name}, {label}, {precision}", step))
    return steps


def warm_up(progress: Callable[[str, int, int], None] | None = None) -> WarmupReport:
    """Compile (or load from the cache) every kernel specialisation for both precisions.

    Parameters
    ----------
    progress : callable, optional
        Called as ``progress(description, done, total)`` before each step and once at the end.

    Returns
    -------
    WarmupReport
        Counts of kernel specialisations compiled vs loaded from the cache, truthfully:
        a second warm-up compiles nothing.
    """
    from numba.core.event import TimingListener, install_listener

    start = time.perf_counter()
    steps = warm_up_steps()
    before = kernel_counts()
    with install_listener("numba:compile", TimingListener()) as timer:
        for i, (description, step) in enumerate(steps):
            if progress is not None:
                progress(description, i, len(steps))
            step()
    if progress is not None:
        progress("done", len(steps), len(steps))
    after = kernel_counts()
    report = WarmupReport(cache_directory(), compile_s=timer.duration if timer.done else 0.0,
                          total_s=time.perf_counter() - start)
    for name, (compiled, loaded) in after.items():
        c0, l0 = before.get(name, (0, 0))
        if compiled - c0 or loaded - l0:
            report.kernels[name] = (compiled - c0, loaded - l0)
    report.compiled = sum(c for c, _ in report.kernels.values())
    report.loaded = sum(lo for _, lo in report.kernels.values())
    return report
