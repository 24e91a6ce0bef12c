"""Dataset-parallel runs on Dask: a local cluster, or any existing cluster by address.

A run's shards (its batches) are gathered into tasks of about ``shard_size`` samples
(:func:`~evsim.checkpoint.group_shards`, whole batches only); a task carries only its
sample ranges.  The compiled network is pickled once and handed to every worker by a
worker plugin (:class:`EvsimWorkerPlugin`), which also builds
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
import os
import pickle
import threading
import time
import uuid

from .checkpoint import check_shard_size, default_shard_size, group_shards, shard_groups
from .errors import ClusterError, EvsimError, MissingDependencyError, describe

try:  # the plugin must subclass WorkerPlugin for Client.register_plugin to recognise it
    from distributed import WorkerPlugin as _WorkerPluginBase
except ImportError:  # pragma: no cover - exercised only without the extra
    _WorkerPluginBase = object

__all__ = ["DaskRunner", "EvsimWorkerPlugin", "open_client", "group_shards", "shard_groups", "default_shard_size",
           "check_shard_size", "dashboard_link", "ann_accuracy",
           "require_dask", "INSTALL", "ENV_SCHEDULER"]

INSTALL = 'pip install "evsim[dask]"'
#: environment variable naming an existing scheduler (used when no flag chooses the cluster)
ENV_SCHEDULER = "EVSIM_SCHEDULER"
#: how long a fresh external cluster may take to show its first worker
_WORKER_WAIT_S = 60.0
#: a source that pickles to at most this many bytes is sent with every task (it reads its own data)
_SMALL_SOURCE = 1 << 20


def require_dask(what: str = "a Dask run"):
    """Import ``distributed`` or raise :class:`MissingDependencyError` saying how to install it."""
    try:
        import distributed
    except ImportError:
        raise MissingDependencyError(describe(what, "the optional extra dask[distributed]", "it is not installed",
                                              INSTALL)) from None
    return distributed


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
            try:
                self.simulator.run_batch(np.zeros((1,) + shape), 1)
            except Exception:  # noqa: BLE001 - only a warm-up: the first task meets (and reports) the same error
                pass
        self.warm_up_s = time.perf_counter() - t0

    def _threads(self) -> None:
        if self.numba_threads:
            import numba

            numba.set_num_threads(min(self.numba_threads, numba.config.NUMBA_NUM_THREADS))

    def run(self, plan, source, shards) -> list:
        from .runners import run_shard

        with self.lock:
            self._threads()
            out = [run_shard(self.simulator, plan, source, a, b) for a, b in shards]
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


def _run_group(name: str, plan, source, shards) -> list:
    """Task: simulate a group of shards, reading each batch from ``source`` on this worker."""
    return _plugin(name).state().run(plan, source, shards)


class _Slice:
    """Samples ``[offset, offset + len(x))`` of an in-memory data set, shipped with one task."""

    def __init__(self, x, y, offset: int):
        self.x, self.y, self.offset = x, y, offset

    @property
    def n(self) -> int:
        return self.offset + len(self.x)

    @property
    def has_labels(self) -> bool:
        return self.y is not None

    def read(self, start: int, stop: int):
        a, b = start - self.offset, stop - self.offset
        return self.x[a:b], None if self.y is None else self.y[a:b]


def _worker_stats(name: str, dask_worker=None) -> dict:
    plugin = dask_worker.plugins.get(name) if dask_worker is not None else None
    state = getattr(plugin, "_state", None)
    if state is None:
        return {}
    return {"warm_up_s": state.warm_up_s, "shards": state.shards_run}


def _reads_itself(source) -> bool:
    """True for a small source that workers re-open themselves (a data file), False for data in
    memory (its slices are shipped with the tasks instead of the whole set with every task)."""
    from .runners import ArraySource

    if isinstance(source, ArraySource):
        return False
    try:
        return len(pickle.dumps(source, protocol=pickle.HIGHEST_PROTOCOL)) <= _SMALL_SOURCE
    except Exception:  # noqa: BLE001 - not picklable: ship the slices
        return False


# --------------------------------------------------------------------------- client side
class DaskRunner:
    """Runs a simulation's shards as tasks on a Dask cluster (the :class:`~evsim.runners.Runner` interface).

    The run's shards (its batches) are gathered into tasks of about ``shard_size`` samples
    (:func:`~evsim.checkpoint.group_shards`); each task yields one BatchResult per shard, like the serial runner.

    Parameters
    ----------
    client : distributed.Client
        A connected client (see :func:`open_client`).
    shard_size : int, optional
        Samples per task, rounded down to whole batches, at least one batch (default
        :func:`~evsim.checkpoint.default_shard_size`: about 64 tasks of at most 16 batches).
    retries : int
        Times a task that *raised* is retried (a task whose worker *died* is re-run by the
        scheduler, up to ``distributed.scheduler.allowed-failures`` times).
    numba_threads : int, optional
        Numba threads per worker process (default: the worker's ``NUMBA_NUM_THREADS``).
    warm_up : bool
        Compile / load the kernels on every worker before its first task.

    Attributes
    ----------
    shards : dict
        After a run: ``{"total": tasks, "reused": 0}``.
    workers : dict
        After a run: per worker address, the seconds its warm-up took and the tasks it ran.

    Examples
    --------
    >>> from evsim.data_io import open_data
    >>> from evsim.distributed import DaskRunner, open_client
    >>> with open_client(workers=2) as client:                      # doctest: +SKIP
    ...     data = open_data("test.h5", (3, 32, 32), 10)
    ...     results = evsim.simulate("snn.h5", data, T=32, runner=DaskRunner(client))
    """

    def __init__(self, client, shard_size: int | None = None, retries: int = 2, numba_threads: int | None = None,
                 warm_up: bool = True):
        require_dask()
        self.client = client
        self.shard_size = check_shard_size(shard_size)
        self.retries = int(retries)
        self.numba_threads = numba_threads
        self.warm_up = warm_up
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

        groups = shard_groups(shards, plan, self.shard_size)
        self.shards = {"total": len(groups), "reused": 0}
        if not groups:
            return
        payload = pickle.dumps(network, protocol=pickle.HIGHEST_PROTOCOL)
        name = f"evsim-{hashlib.sha256(payload).hexdigest()[:12]}-{plan.precision}-{uuid.uuid4().hex[:8]}"
        client = self.client
        client.register_plugin(EvsimWorkerPlugin(name, payload, plan.precision, self.numba_threads, self.warm_up),
                               name=name)
        futures = []
        try:
            itself = _reads_itself(source)
            for group in groups:
                lo, hi = group[0][0], group[-1][1]
                task_source = source
                if not itself:  # in memory: this task's samples go to a worker, once
                    task_source = client.scatter(_Slice(*source.read(lo, hi), lo), hash=False)
                futures.append(client.submit(_run_group, name, plan, task_source, group,
                                             key=f"evsim-shard-{lo}-{hi}-{name}", retries=self.retries, pure=False))
            for future in as_completed(futures, loop=client.loop):
                results = _result(future)
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


def _ann_correct(graph, source, start: int, stop: int) -> int:
    """Task: correct ANN predictions on samples [start, stop), read on the worker."""
    import numpy as np

    from .ann import predict

    x, y = source.read(start, stop)
    return int(np.sum(predict(graph, x) == y))


def ann_accuracy(client, graph, source, shard_size: int | None = None, batch_size: int = 64,
                 retries: int = 2) -> float:
    """The ANN's accuracy on a labelled data source, computed by the workers on their own slices.

    The graph goes once to every worker; each task reads its samples from the data file
    (in-memory arrays are shipped slice by slice) and returns an exact count of correct
    predictions.

    Raises
    ------
    DataError
        The source has no labels.
    """
    from .errors import DataError
    from .runners import ArraySource

    if not source.has_labels:
        raise DataError(describe("ANN accuracy", "a data source with labels y", "none"))
    shard_size = check_shard_size(shard_size) or default_shard_size(source.n, batch_size)
    graph_future = client.scatter(graph, broadcast=True, hash=False)
    itself = _reads_itself(source)
    futures = []
    try:
        for lo in range(0, source.n, shard_size):
            hi = min(lo + shard_size, source.n)
            task_source = source if itself else client.scatter(ArraySource(*source.read(lo, hi)), hash=False)
            a, b = (lo, hi) if itself else (0, hi - lo)
            futures.append(client.submit(_ann_correct, graph_future, task_source, a, b, retries=retries,
                                         pure=False, key=f"evsim-ann-{lo}-{hi}-{uuid.uuid4().hex[:8]}"))
        return sum(_result(f) for f in futures) / source.n
    finally:
        with contextlib.suppress(Exception):
            client.cancel([f for f in futures if not f.done()] + [graph_future])


def _result(future) -> list:
    """A task's result; evsim's own errors as they are, cluster failures as one ClusterError."""
    try:
        return future.result()
    except EvsimError:
        raise
    except Exception as exc:  # noqa: BLE001 - KilledWorker, CancelledError, CommClosedError, OSError ...
        raise ClusterError(describe(
            "Dask cluster", "every shard to finish", f"shard {future.key}: {type(exc).__name__}: {exc}",
            "a worker died more often than the scheduler allows (distributed.scheduler.allowed-failures), "
            "or the cluster went away; run again (with --checkpoint, finished shards are kept)")) from exc


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

    from dask.utils import parse_timedelta

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
                               silence_logs=logging.CRITICAL, env=env)
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
            with contextlib.suppress(Exception), _quiet():
                client.close()
    finally:
        if cluster is not None:
            with contextlib.suppress(Exception), _quiet():
                cluster.close()


@contextlib.contextmanager
def _quiet():
    """Dask's lines about closing a cluster (and work it drops on an interrupt) are not for the user of a command."""
    import logging

    logger = logging.getLogger("distributed")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)
