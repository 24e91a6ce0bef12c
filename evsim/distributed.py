"""Dataset-parallel runs on Dask: a local cluster, or any existing cluster by address.

A run is cut into *shards* of whole batches (:func:`make_shards`); each shard is one Dask
task that carries only its sample range.  The compiled network is pickled once and
handed to every worker by a worker plugin (:class:`EvsimWorkerPlugin`), which also builds
the simulator and warms up the Numba kernels once per worker (loaded from the Numba cache
when ``NUMBA_CACHE_DIR`` points to a shared directory).  A worker reads its own slice
from the data file (h5py slice / npz member) — the data set never travels through the
scheduler; in-memory arrays are sent slice by slice to the workers.  A task returns the
exact integer counts of its batches (:class:`~evsim.results.BatchResult`); the client
merges them with :meth:`Results.reduce`, so the report equals the single-process one
whatever the number of workers, the shard size or the completion order.

A worker that dies mid-task has its task re-run elsewhere (the scheduler allows
``distributed.scheduler.allowed-failures`` deaths per task, 3 by default; an exception
inside a task is retried ``retries`` times).  A scheduler that cannot be reached gives one
:class:`~evsim.errors.ClusterError` after ``distributed.comm.timeouts.connect`` (30 s by
default; ``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=5s`` to change it).

Dask is an optional extra: nothing in evsim imports this module unless asked to, and
everything here raises :class:`~evsim.errors.MissingDependencyError` with the install
command when ``dask[distributed]`` is missing.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import pickle
import sys
import threading
import time
import uuid

from .errors import ClusterError, DataError, EvsimError, MissingDependencyError, describe

try:  # the plugin must subclass WorkerPlugin for Client.register_plugin to recognise it
    from distributed import WorkerPlugin as _WorkerPluginBase
except ImportError:  # pragma: no cover - exercised only without the extra
    _WorkerPluginBase = object

__all__ = ["DaskRunner", "EvsimWorkerPlugin", "open_client", "make_shards", "default_shard_size",
           "require_dask", "INSTALL", "ENV_SCHEDULER"]

INSTALL = 'pip install "evsim[dask]"'
#: environment variable naming an existing scheduler (used when no flag chooses the cluster)
ENV_SCHEDULER = "EVSIM_SCHEDULER"
#: default shards per run (shards of whole batches, at most _MAX_BATCHES_PER_SHARD batches each)
_TARGET_SHARDS = 64
_MAX_BATCHES_PER_SHARD = 16
#: how long a fresh external cluster may take to show its first worker
_WORKER_WAIT_S = 60.0


def require_dask(what: str = "a Dask run"):
    """Import ``distributed`` or raise :class:`MissingDependencyError` saying how to install it."""
    try:
        import distributed
    except ImportError:
        raise MissingDependencyError(describe(what, "the optional extra dask[distributed]", "it is not installed",
                                              INSTALL)) from None
    return distributed


# --------------------------------------------------------------------------- shards
def default_shard_size(samples: int, batch_size: int) -> int:
    """About 64 shards of whole batches, at most 16 batches each (independent of the cluster,
    so that a checkpointed run may be resumed with a different number of workers)."""
    batches = math.ceil(samples / batch_size)
    per_shard = min(_MAX_BATCHES_PER_SHARD, max(1, math.ceil(batches / _TARGET_SHARDS)))
    return per_shard * batch_size


def make_shards(samples: int, batch_size: int, shard_size: int | None = None) -> list[tuple[int, int]]:
    """Sample ranges ``(start, stop)`` covering ``[0, samples)``, each made of whole batches.

    Shards start at multiples of ``batch_size``, so every batch is the same as in a
    single-process run (kernels choose their work split per batch; same batches, same
    arithmetic, identical results).

    Raises
    ------
    DataError
        ``shard_size`` is not a positive multiple of ``batch_size``.
    """
    if shard_size is None:
        shard_size = default_shard_size(samples, batch_size)
    if not isinstance(shard_size, int) or shard_size < 1 or shard_size % batch_size:
        lower = max(batch_size, (shard_size // batch_size) * batch_size) if isinstance(shard_size, int) else batch_size
        raise DataError(describe("--shard-size", f"a positive multiple of --batch-size {batch_size} (a shard is "
                                 "made of whole batches, so that the run is identical to a single-process one)",
                                 repr(shard_size), f"use e.g. {lower} or {lower + batch_size}"))
    return [(a, min(a + shard_size, samples)) for a in range(0, samples, shard_size)]


# --------------------------------------------------------------------------- worker side
class EvsimWorkerPlugin(_WorkerPluginBase):
    """Holds one compiled network on every worker, its simulator, and warms the kernels up once.

    The network travels once per worker, as pickled bytes inside the plugin.  ``setup``
    (run when the plugin is registered, and on every worker that joins later, e.g. after
    one died) builds the :class:`~evsim.engine.Simulator` and runs one sample for one
    step so that the Numba kernels are compiled or loaded from the cache before the first
    task.  Tasks find the plugin by name on their worker.
    """

    def __init__(self, name: str, network_bytes: bytes, precision: str, numba_threads: int | None = None,
                 warm_up: bool = True):
        self.name = name
        self.network_bytes = network_bytes
        self.precision = precision
        self.numba_threads = numba_threads
        self.warm_up = warm_up
        self._state = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_state"] = None
        return state

    async def setup(self, worker=None):
        import asyncio

        self._state = _WorkerState(self)
        if self.warm_up:  # off the event loop: compiling may take seconds, heartbeats must go on
            await asyncio.get_running_loop().run_in_executor(None, self._state.warm_up)

    def teardown(self, worker=None):
        self._state = None

    def state(self) -> "_WorkerState":
        if self._state is None:  # a task that arrived before setup ran (or after teardown)
            self._state = _WorkerState(self)
        return self._state


class _WorkerState:
    """The simulator of one network on one worker; one shard runs at a time per process."""

    def __init__(self, plugin: EvsimWorkerPlugin):
        from .engine import PRECISIONS, Simulator

        self.network = pickle.loads(plugin.network_bytes)
        self.numba_threads = plugin.numba_threads
        self.simulator = Simulator(self.network, PRECISIONS[plugin.precision])
        # Numba's parallel regions are not meant to be entered by several threads of one process at
        # once; a worker with several threads runs its shards one after another
        self.lock = threading.Lock()
        self.warm_up_s = 0.0
        self.shards_run = 0

    def warm_up(self) -> None:
        import numpy as np

        t0 = time.perf_counter()
        shape = tuple(self.network.graph.input.shape)
        with self.lock:
            self._threads()
            self.simulator.run_batch(np.zeros((1,) + shape), 1)
        self.warm_up_s = time.perf_counter() - t0

    def _threads(self) -> None:
        if self.numba_threads:
            import numba

            numba.set_num_threads(min(self.numba_threads, numba.config.NUMBA_NUM_THREADS))

    def run(self, x, y, start: int, T: int, batch_size: int) -> list:
        out = []
        with self.lock:
            self._threads()
            for i in range(0, len(x), batch_size):
                yb = None if y is None else y[i:i + batch_size]
                out.append(self.simulator.run_batch(x[i:i + batch_size], T, yb, start=start + i))
        self.shards_run += 1
        return out


def _plugin(name: str) -> EvsimWorkerPlugin:
    from distributed import get_worker

    worker = get_worker()
    plugin = worker.plugins.get(name)
    if plugin is None:
        raise ClusterError(describe(f"worker {worker.address}", f"the evsim plugin {name!r}", "none",
                                    "the run was cancelled or the worker joined without it"))
    return plugin


def _run_shard(name: str, source, start: int, stop: int, T: int, batch_size: int) -> list:
    """Task: read samples [start, stop) from the data file and simulate them batch by batch."""
    state = _plugin(name).state()
    x, y = source.read(start, stop)
    return state.run(x, y, start, T, batch_size)


def _run_slice(name: str, data, start: int, T: int, batch_size: int) -> list:
    """Task: simulate samples handed over with the task (in-memory data)."""
    x, y = data
    return _plugin(name).state().run(x, y, start, T, batch_size)


def _worker_stats(name: str, dask_worker=None) -> dict:
    plugin = dask_worker.plugins.get(name) if dask_worker is not None else None
    state = getattr(plugin, "_state", None)
    if state is None:
        return {}
    return {"warm_up_s": state.warm_up_s, "shards": state.shards_run}


def _reads_itself(source) -> bool:
    """True for a source that workers can re-open by path (a data file); else slices are shipped."""
    return getattr(source, "path", None) is not None


# --------------------------------------------------------------------------- client side
class DaskRunner:
    """Runs shards as tasks on a Dask cluster (the architecture's runner interface).

    Parameters
    ----------
    client : distributed.Client
        A connected client (see :func:`open_client`).
    shard_size : int, optional
        Samples per task, a multiple of the batch size (default :func:`default_shard_size`).
    retries : int
        Times a task that *raised* is retried (a task whose worker *died* is re-run by the
        scheduler, up to ``distributed.scheduler.allowed-failures`` times).
    numba_threads : int, optional
        Numba threads per worker process (default: the worker's ``NUMBA_NUM_THREADS``).
    warm_up : bool
        Compile / load the kernels on every worker before the first task.

    Examples
    --------
    >>> from evsim.distributed import DaskRunner, open_client
    >>> with open_client(workers=2) as client:                      # doctest: +SKIP
    ...     results = evsim.simulate("snn.h5", source, T=32, runner=DaskRunner(client))
    """

    def __init__(self, client, shard_size: int | None = None, retries: int = 2, numba_threads: int | None = None,
                 warm_up: bool = True):
        require_dask()
        self.client = client
        self.shard_size = shard_size
        self.retries = int(retries)
        self.numba_threads = numba_threads
        self.warm_up = warm_up
        #: after a run: {"total": shards, "reused": 0}, and per-worker warm-up seconds
        self.shards: dict | None = None
        self.workers: dict | None = None

    @property
    def dashboard(self) -> str | None:
        """The cluster's dashboard address, or None when it serves none."""
        return dashboard_link(self.client)

    def map(self, network, plan, source, shards, progress=None):
        """Run ``shards`` (sample ranges) on the cluster; yield BatchResults as tasks finish.

        Raises
        ------
        ClusterError
            A task was lost more often than allowed (workers keep dying), or the cluster went away.
        """
        from distributed import as_completed
        from distributed.client import FutureCancelledError

        shards = [(int(a), int(b)) for a, b in shards]
        self.shards = {"total": len(shards), "reused": 0}
        if not shards:
            return
        payload = pickle.dumps(network, protocol=pickle.HIGHEST_PROTOCOL)
        name = f"evsim-{hashlib.sha256(payload).hexdigest()[:12]}-{plan.precision}-{uuid.uuid4().hex[:8]}"
        plugin = EvsimWorkerPlugin(name, payload, plan.precision, self.numba_threads, self.warm_up)
        client = self.client
        client.register_plugin(plugin, name=name)
        futures = []
        try:
            ahead = _reads_itself(source)
            for start, stop in shards:
                key = f"evsim-shard-{start}-{stop}-{name}"
                if ahead:
                    futures.append(client.submit(_run_shard, name, source, start, stop, plan.T, plan.batch_size,
                                                 key=key, retries=self.retries, pure=False))
                else:
                    data = client.scatter(source.read(start, stop), hash=False)
                    futures.append(client.submit(_run_slice, name, data, start, plan.T, plan.batch_size,
                                                 key=key, retries=self.retries, pure=False))
            for future in as_completed(futures):
                try:
                    results = future.result()
                except EvsimError:
                    raise
                except FutureCancelledError as exc:
                    raise ClusterError(describe("Dask cluster", "every shard to finish",
                                                f"shard {future.key} cancelled ({exc})",
                                                "the scheduler or the client lost the task; run again "
                                                "(with --checkpoint finished shards are kept)")) from None
                except Exception as exc:  # noqa: BLE001 - KilledWorker, CommClosedError, OSError ...
                    raise ClusterError(describe("Dask cluster", "every shard to finish",
                                                f"{type(exc).__name__}: {exc}",
                                                "a worker died more often than the scheduler allows "
                                                "(distributed.scheduler.allowed-failures) or the cluster went "
                                                "away; run again (with --checkpoint finished shards are kept)")
                                       ) from exc
                future.release()
                yield from results
                if progress is not None:
                    progress(sum(int(r.samples) for r in results))
            with contextlib.suppress(Exception):
                self.workers = client.run(_worker_stats, name)
        finally:
            pending = [f for f in futures if not f.done()]
            if pending:
                with contextlib.suppress(Exception):
                    client.cancel(pending)
            with contextlib.suppress(Exception):
                client.unregister_worker_plugin(name)


def dashboard_link(client) -> str | None:
    """The dashboard address of the client's scheduler, or None when it serves none (no bokeh)."""
    try:
        if "dashboard" not in client.scheduler_info().get("services", {}):
            return None
        return client.dashboard_link
    except Exception:  # noqa: BLE001 - informative only
        return None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def _connect_timeout() -> float:
    import dask

    from distributed.utils import parse_timedelta

    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="s"))


@contextlib.contextmanager
def open_client(workers: int | None = None, scheduler: str | None = None, scheduler_file: str | None = None,
                environ=None, log=None, timeout: float | None = None):
    """A connected Dask client for a run, closed (with its local cluster) on exit.

    The cluster is chosen by, in order: ``scheduler`` (an address such as
    ``tcp://host:8786``), ``scheduler_file`` (written by ``dask scheduler --scheduler-file``),
    ``workers`` (a :class:`~distributed.LocalCluster` of that many worker processes, one
    thread each, with ``NUMBA_NUM_THREADS`` = cores / workers so that the cores are not
    oversubscribed), else the ``EVSIM_SCHEDULER`` environment variable.  ``workers``
    together with ``scheduler`` / ``scheduler_file`` is an error.

    Parameters
    ----------
    log : callable, optional
        Called with one line of information (the dashboard address).
    timeout : float, optional
        Seconds to reach the scheduler (default: Dask's ``distributed.comm.timeouts.connect``).

    Raises
    ------
    ClusterError
        Nothing chose a cluster, the scheduler cannot be reached within the timeout, or it
        has no worker within 60 s.
    MissingDependencyError
        ``dask[distributed]`` is not installed.
    """
    environ = os.environ if environ is None else environ
    flags = [f for f, v in (("--workers", workers), ("--scheduler", scheduler), ("--scheduler-file", scheduler_file))
             if v is not None]
    if len(flags) > 1:
        raise ClusterError(describe(" and ".join(flags), "one way to choose the cluster", "several",
                                    "give either --workers N (a local cluster) or --scheduler/--scheduler-file "
                                    "(an existing one)"))
    if not flags and environ.get(ENV_SCHEDULER):
        scheduler = environ[ENV_SCHEDULER]
    if workers is None and scheduler is None and scheduler_file is None:
        raise ClusterError(describe("open_client", "--workers N, --scheduler ADDRESS, --scheduler-file F or "
                                    f"{ENV_SCHEDULER}", "none"))
    require_dask("--workers / --scheduler" if workers is None else "--workers")
    import logging

    from distributed import Client, LocalCluster

    timeout = _connect_timeout() if timeout is None else float(timeout)
    cluster = None
    if workers is not None:
        if not isinstance(workers, int) or workers < 1:
            raise ClusterError(describe("--workers", "an integer >= 1", repr(workers)))
        threads = max(1, _cores() // workers)
        env = {"NUMBA_NUM_THREADS": str(threads), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1"}
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.ERROR, env=env)
        where, target = f"--workers {workers}", cluster
    elif scheduler is not None:
        where, target = f"--scheduler {scheduler}" if flags else f"{ENV_SCHEDULER}={scheduler}", scheduler
    else:
        where, target = f"--scheduler-file {scheduler_file}", None
        if not os.path.isfile(scheduler_file):
            raise ClusterError(describe(where, "the JSON file written by `dask scheduler --scheduler-file F`",
                                        "no such file", "start the scheduler first, or check the path"))
    try:
        try:
            if target is None:
                client = Client(scheduler_file=scheduler_file, timeout=timeout, set_as_default=False)
            else:
                client = Client(target, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ClusterError(describe(where, "a reachable Dask scheduler",
                                        f"no connection within {timeout:g} s ({reason})",
                                        "start one (`dask scheduler`), check the address, or raise the timeout "
                                        "with DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=60s")) from None
        try:
            if cluster is None:
                try:
                    client.wait_for_workers(1, timeout=_WORKER_WAIT_S)
                except (TimeoutError, OSError):
                    raise ClusterError(describe(where, "a scheduler with at least one worker",
                                                f"no worker after {_WORKER_WAIT_S:g} s",
                                                "start workers with `dask worker ADDRESS`")) from None
            link = dashboard_link(client)
            if log is not None and link:
                log(f"dask dashboard: {link}")
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.close()
    finally:
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()
