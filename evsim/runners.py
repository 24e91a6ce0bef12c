"""How the batches of a run are executed: the :class:`Runner` interface.

:func:`evsim.simulate` is *check → plan → run batches → reduce*: it validates the model
and the data, builds a :class:`~evsim.results.RunPlan`, hands the network, the plan, a data
source and the list of sample ranges (shards) to a runner, and merges the
:class:`~evsim.results.BatchResult` objects the runner yields with
:meth:`Results.reduce <evsim.results.Results.reduce>` (exact, order-independent).

A runner only has to implement :meth:`Runner.map`.  :class:`SerialRunner` runs the shards
in this process; ``evsim.distributed.DaskRunner`` runs them on a Dask cluster.  A data
source is anything with ``n``, ``has_labels`` and ``read(start, stop) -> (x, y | None)``
that can be pickled: :class:`ArraySource` for arrays in memory, ``evsim.data_io.open_data``
for files (each worker reads its own slices).
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Protocol

import numpy as np

__all__ = ["Runner", "SerialRunner", "ArraySource", "run_shard"]


class ArraySource:
    """In-memory inputs (and labels) as a data source; slices are views."""

    def __init__(self, x: np.ndarray, y: np.ndarray | None = None):
        self.x, self.y = x, y

    @property
    def n(self) -> int:
        return len(self.x)

    @property
    def has_labels(self) -> bool:
        return self.y is not None

    def read(self, start: int, stop: int):
        return self.x[start:stop], None if self.y is None else self.y[start:stop]


class Runner(Protocol):
    """Executes the shards of a run; yields one :class:`~evsim.results.BatchResult` per shard, in any order."""

    def map(self, network, plan, source, shards: list[tuple[int, int]],
            progress: Callable[[int], None] | None = None) -> Iterable:
        ...


def run_shard(simulator, plan, source, start: int, stop: int, progress: Callable[[int], None] | None = None):
    """Simulate samples ``[start, stop)`` of ``source`` in batches of ``plan.batch_size``; one BatchResult."""
    from .results import BatchResult

    parts = []
    for lo in range(start, stop, plan.batch_size):
        hi = min(lo + plan.batch_size, stop)
        x, y = source.read(lo, hi)
        parts.append(simulator.run_batch(x, plan.T, y, start=lo))
        if progress is not None:
            progress(hi - lo)
    return BatchResult.concat(parts)


class SerialRunner:
    """Runs every shard in this process, one after the other (the kernels are parallel inside)."""

    def map(self, network, plan, source, shards, progress=None) -> Iterator:
        from .engine import PRECISIONS, Simulator

        simulator = Simulator(network, PRECISIONS[plan.precision])
        for start, stop in shards:
            yield run_shard(simulator, plan, source, start, stop, progress)
