"""How many Numba threads a batch should use when Numba's OpenMP workers spin: no more than idle cores.

Why
---
Every kernel call of the engine is a Numba parallel region, which ends when its last thread
arrives.  evsim makes OpenMP workers sleep at barriers (``OMP_WAIT_POLICY=passive``, set at
``import evsim``); but the OpenMP runtime reads that once, when Numba starts its threads, so a
program that ran Numba parallel code before importing evsim (``numba.set_num_threads`` is
enough) — or that sets another policy — has workers that spin.  A spinning worker holds its core
while the thread it waits for is descheduled.  Measured on the 2-core machine (docs/performance.md,
"Sharing the machine"), VGG-16 at batch 1 with one other process computing: 168–252 ms per batch
on 2 spinning threads, 21–41 ms on 1; with sleeping workers 2 threads stayed the faster choice
(VGG-16 batch 16: 316 ms on 2 against 400 ms on 1).  So with spinning workers
(:func:`adapt_enabled`) each batch runs on the configured threads (``numba.get_num_threads()``:
``NUMBA_NUM_THREADS`` or a Dask worker's share) minus the cores other processes kept busy since
the previous batch; with sleeping workers the count is left alone.

How
---
Linux only (elsewhere the configured count is used): ``/proc/stat`` gives the busy time of the CPUs
this process may run on, ``/proc/self/stat`` the time of this process (all its threads, so evsim's
own work is not counted as someone else's); their difference over the interval is the cores the
others used.  Before the first batch there is no interval yet: the number of runnable tasks in
``/proc/loadavg`` minus this thread is the estimate; later estimates use windows of at least
0.3 s.  A core counts as taken from 0.35 busy cores on.
``EVSIM_ADAPT_THREADS`` = ``auto`` (default), ``1`` (always adapt) or ``0`` (never).
"""
from __future__ import annotations

import math
import os

__all__ = ["ThreadBudget", "adapt_enabled", "openmp_spins"]

#: another process's load (in cores) from which a core counts as taken
TAKEN_FROM = 0.35
#: the shortest interval (``/proc/stat`` ticks per CPU, 10 ms each) a new estimate is made from;
#: batches closer together keep the last estimate (measured: 25 ms windows misjudged an idle machine)
MIN_WINDOW_TICKS = 30


def adapt_enabled() -> bool:
    """Whether batches adapt their thread count to the machine's load.

    ``EVSIM_ADAPT_THREADS``: ``1`` always, ``0`` never, ``auto`` (default) exactly when Numba's
    OpenMP workers spin at barriers — the runtime was started before ``import evsim`` without
    ``OMP_WAIT_POLICY=passive``, or with another policy set — where it measured 8x faster under
    load; with sleeping (passive) workers two threads still gained under load, so it stays off.
    """
    mode = os.environ.get("EVSIM_ADAPT_THREADS", "auto").strip().lower()
    if mode in ("0", "false", "no", "off"):
        return False
    if mode in ("1", "true", "yes", "on"):
        return True
    return openmp_spins()


def openmp_spins() -> bool:
    """Whether Numba runs OpenMP threads whose wait policy is not ``passive``."""
    import numba

    from ._omp import policy_in_force

    try:
        is_omp = numba.threading_layer() == "omp"
    except ValueError:  # no parallel code ran yet: the threads will start with the policy in force now
        is_omp = True
    return is_omp and policy_in_force() != "passive"


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


class ThreadBudget:
    """Threads for the next batch, from the load other processes put on this process's CPUs.

    Parameters
    ----------
    read : callable, optional
        ``read(path) -> str | None``, the reader of ``/proc`` files (tests give fake ones).
    cpus : set of int, optional
        The CPUs this process may run on (default: its affinity).
    """

    def __init__(self, read=_read, cpus: set[int] | None = None):
        self._read = read
        if cpus is None:
            try:
                cpus = set(os.sched_getaffinity(0))
            except (AttributeError, OSError):
                cpus = set()
        self.cpus = cpus
        self._last = None  # (busy ticks of self.cpus, total ticks of self.cpus, ticks of this process)
        self.others = None  # the last estimate of the cores others kept busy

    def threads(self, configured: int) -> int:
        """Threads to use out of ``configured``: at least 1, fewer when others keep cores busy."""
        configured = max(1, int(configured))
        others = self._others()
        self.others = others
        if others is None or configured == 1:
            return configured
        taken = math.floor(others + 1.0 - TAKEN_FROM)  # 0.35 busy cores take one, 1.35 two, ...
        return max(1, min(configured, len(self.cpus) - taken))

    def _others(self) -> float | None:
        now = self._sample()
        if now is None or not self.cpus:
            self._last = None
            return None
        last = self._last
        if last is None:  # no interval yet: the tasks runnable right now, less this thread
            self._last = now
            text = self._read("/proc/loadavg")
            try:
                running = int(text.split()[3].split("/")[0])
            except (AttributeError, IndexError, ValueError):
                return None
            return float(max(0, running - 1))
        busy, total, mine = (a - b for a, b in zip(now, last))
        per_cpu = total / len(self.cpus)  # ticks each CPU had in the interval
        if per_cpu < MIN_WINDOW_TICKS:  # ticks are 10 ms: a shorter window is mostly rounding
            return self.others
        self._last = now
        return max(0.0, (busy - mine) / per_cpu)

    def _sample(self) -> tuple[int, int, int] | None:
        stat, mine = self._read("/proc/stat"), self._read("/proc/self/stat")
        if not stat or not mine:
            return None
        busy = total = 0
        try:
            for line in stat.splitlines():
                name, _, rest = line.partition(" ")
                if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in self.cpus:
                    continue
                # user nice system idle iowait irq softirq steal: stolen time is time others had
                ticks = [int(v) for v in rest.split()[:8]]
                total += sum(ticks)
                busy += sum(ticks) - ticks[3] - ticks[4]
            fields = mine.rsplit(")", 1)[1].split()  # after "pid (comm)": state is field 3
            own = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        except (IndexError, ValueError):
            return None
        return busy, total, own

