"""evsim.threads: a batch uses no more Numba threads than there are idle cores (docs/performance.md,
"Sharing the machine"); the thread count never changes a result."""
from __future__ import annotations

import subprocess
import sys
import time
from importlib.resources import files

import numba
import numpy as np
import pytest

import evsim
from evsim.threads import ThreadBudget


def proc(cpus: dict[int, tuple[int, int]], own: int, running: int = 1):
    """A fake /proc: per CPU (busy, idle) ticks, this process's utime + stime, runnable tasks."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    for cpu, (busy, idle) in cpus.items():
        # user nice system idle iowait irq softirq steal guest guest_nice
        lines.append(f"cpu{cpu} {busy - 3} 1 1 {idle} 0 0 0 1 0 0")
    files = {"/proc/stat": "\n".join(lines) + "\nintr 1 2 3\n",
             "/proc/self/stat": f"42 (py (x) thon) R 1 1 1 0 -1 0 0 0 0 0 {own - 2} 2 0 0 20 0 3 0",
             "/proc/loadavg": f"0.5 0.4 0.3 {running}/100 4242\n"}
    return files.get


def test_first_batch_counts_runnable_tasks_other_than_itself():
    assert ThreadBudget(proc({0: (0, 0), 1: (0, 0)}, 0, running=1), {0, 1}).threads(2) == 2
    assert ThreadBudget(proc({0: (0, 0), 1: (0, 0)}, 0, running=2), {0, 1}).threads(2) == 1
    assert ThreadBudget(proc({0: (0, 0), 1: (0, 0)}, 0, running=9), {0, 1}).threads(2) == 1  # never 0


@pytest.mark.parametrize("others, expected", [(0.0, 2), (0.3, 2), (0.4, 1), (1.0, 1), (1.9, 1)])
def test_cores_kept_busy_by_others_are_taken_off(others, expected):
    state = {"now": proc({0: (0, 0), 1: (0, 0)}, 0)}
    budget = ThreadBudget(lambda path: state["now"](path), {0, 1})
    budget.threads(2)
    # 100 ticks per CPU pass; this process used 150 ticks (its own threads), others `others` cores
    busy = 150 + int(round(others * 100))
    state["now"] = proc({0: (busy // 2, 100 - busy // 2), 1: (busy - busy // 2, 100 - (busy - busy // 2))}, 150)
    assert budget.threads(2) == expected
    assert budget.others == pytest.approx(others, abs=0.011)


def test_only_this_process_cpus_count_and_configured_is_a_ceiling():
    state = {"now": proc({0: (0, 0), 1: (0, 0), 2: (0, 0), 3: (0, 0)}, 0)}
    budget = ThreadBudget(lambda path: state["now"](path), {2, 3})
    budget.threads(2)
    state["now"] = proc({0: (100, 0), 1: (100, 0), 2: (0, 100), 3: (0, 100)}, 0)  # others on CPUs 0, 1 only
    assert budget.threads(2) == 2 and budget.others == 0
    assert budget.threads(1) == 1


def test_without_proc_the_configured_count_is_used():
    assert ThreadBudget(lambda path: None, {0, 1}).threads(2) == 2
    assert ThreadBudget(lambda path: "garbage", {0, 1}).threads(2) == 2


def test_a_busy_process_takes_a_core():
    """A real busy process on this machine: the next batch is given at least one thread less."""
    budget = ThreadBudget()
    n = len(budget.cpus)
    if n < 2:
        pytest.skip("one CPU: nothing to give up")
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        budget.threads(n)
        time.sleep(1.0)
        assert budget.threads(n) <= n - 1 and budget.others >= 0.7
    finally:
        hog.kill()
        hog.wait()


def test_the_thread_count_never_changes_a_result(monkeypatch):
    graph = evsim.load(str(files("evsim.data") / "mnist_qcfs.npz"))
    with np.load(str(files("evsim.data") / "mnist_test.npz")) as f:
        x, y = f["x"][:40], f["y"][:40]
    runs = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        monkeypatch.setenv("EVSIM_ADAPT_THREADS", "0")
        numba.set_num_threads(threads)
        try:
            runs.append(evsim.simulate(graph, x, y, T=4, batch_size=16))
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    monkeypatch.setenv("EVSIM_ADAPT_THREADS", "1")
    runs.append(evsim.simulate(graph, x, y, T=4, batch_size=16))
    assert runs[-1].settings["engine"]["adapt_threads"] is True
    for other in runs[1:]:
        np.testing.assert_array_equal(other.predictions, runs[0].predictions)
        assert other.sops == runs[0].sops and other.layers == runs[0].layers


@pytest.mark.parametrize("before, spins", [
    ("", False),                                          # evsim first: its passive policy is in force
    ("import numba; numba.set_num_threads(1)", True),     # Numba's threads started before evsim, policy unset
])
def test_auto_adapts_exactly_when_openmp_workers_spin(before, spins):
    code = (f"import os; os.environ.pop('OMP_WAIT_POLICY', None); os.environ.pop('EVSIM_ADAPT_THREADS', None)\n"
            f"{before}\nimport evsim, numba\nfrom evsim.threads import adapt_enabled, openmp_spins\n"
            "from evsim._omp import policy_in_force\nnumba.get_num_threads()\n"
            "print(numba.threading_layer(), policy_in_force(), openmp_spins(), adapt_enabled())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    layer, policy, spin, adapt = out.stdout.split()
    if layer != "omp":
        pytest.skip(f"Numba threading layer {layer}: no OpenMP wait policy")
    assert (spin, adapt) == (str(spins), str(spins))
    assert policy == ("default" if spins else "passive")


def test_short_windows_keep_the_last_estimate():
    """Ticks are 10 ms: a window of a few ticks is mostly rounding, so it does not change the count."""
    state = {"now": proc({0: (0, 0), 1: (0, 0)}, 0)}
    budget = ThreadBudget(lambda path: state["now"](path), {0, 1})
    assert budget.threads(2) == 2
    state["now"] = proc({0: (2, 1), 1: (1, 2)}, 1)  # 3 ticks per CPU: 2 busy ticks not ours = "0.67 cores"
    assert budget.threads(2) == 2 and budget.others == 0.0
    state["now"] = proc({0: (2 + 40, 1), 1: (1, 2 + 40)}, 1)  # 43 ticks: another process on a core
    assert budget.threads(2) == 1 and budget.others == pytest.approx(42 / 43, abs=0.01)  # the whole window since the first sample
