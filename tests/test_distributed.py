"""Dask runs and checkpoints (issue 14), on loopback only.

A distributed or resumed run must give the single-process report exactly: accuracy per
step, spikes, events and SOPs per layer, energy, predictions.  Every cluster, scheduler and
worker started here is stopped (process groups killed) before the test ends.
"""
import contextlib
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

import evsim
from evsim.checkpoint import Checkpoint, CheckpointRunner, content_hash, default_shard_size, group_shards
from evsim.data_io import load_data, open_data
from evsim.distributed import DaskRunner, _reads_itself, ann_accuracy, open_client, require_dask
from evsim.engine import Simulator, as_network
from evsim.errors import CheckpointError, ClusterError, DataError, MissingDependencyError
from evsim.runners import ArraySource

DATA = files("evsim.data")
MODEL = str(DATA / "mnist_qcfs.npz")
SHAPE = (1, 28, 28)
T, BATCH, SAMPLES = 4, 8, 64
#: keys of a report that say how a run was executed, not what it measured
HOW = ("timing",)
HOW_SETTINGS = ("shards", "runner", "checkpoint")

# The installed console script: ``python -m evsim.cli.main`` from the repository root would import the
# source folder evsim/ (which has no cli/ inside) instead of the installed package.
_SCRIPT = Path(sys.executable).with_name("evsim")
EVSIM_COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "evsim.cli.main"]


def report(results) -> dict:
    """The JSON report without what differs between executions of the same run."""
    d = json.loads(json.dumps(results.to_dict(), default=str)) if not isinstance(results, dict) else dict(results)
    for key in HOW:
        d.pop(key, None)
    d["settings"] = {k: v for k, v in d["settings"].items() if k not in HOW_SETTINGS}
    return d


def assert_same_run(a, b):
    """Identical reports (accuracy per step, spikes, events, SOPs per layer and step, energy) and predictions."""
    assert report(a) == report(b)
    np.testing.assert_array_equal(a.predictions, b.predictions)
    assert a.counts.keys() == b.counts.keys()
    for name in a.counts:
        for counter in a.counts[name]:
            np.testing.assert_array_equal(a.counts[name][counter], b.counts[name][counter])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The first 256 shipped test digits as .h5 and .npz files, and in memory."""
    import h5py

    x, y = load_data(DATA / "mnist_test.npz", SHAPE, 10, samples=256)
    root = tmp_path_factory.mktemp("data")
    with h5py.File(root / "digits.h5", "w") as f:
        f["x"], f["y"] = x, y
    np.savez(root / "digits.npz", x=x, y=y)
    return {"h5": root / "digits.h5", "npz": root / "digits.npz", "x": x, "y": y}


@pytest.fixture(scope="module")
def serial(data):
    """The single-process reference run."""
    return evsim.simulate(MODEL, data["x"][:SAMPLES], data["y"][:SAMPLES], T=T, batch_size=BATCH)


@pytest.fixture(scope="module")
def client():
    """A LocalCluster of 2 worker processes, one thread each."""
    with open_client(workers=2) as c:
        yield c


def source(data, kind, samples=SAMPLES):
    if kind == "memory":
        return ArraySource(data["x"][:samples], data["y"][:samples])
    return open_data(data[kind], SHAPE, 10, samples=samples)


# --------------------------------------------------------------------------- local cluster
@pytest.mark.parametrize("kind, shard_size", [("h5", 16), ("npz", 8), ("memory", None)])
def test_local_cluster_equals_the_serial_run(client, data, serial, kind, shard_size):
    runner = DaskRunner(client, shard_size=shard_size)
    src = source(data, kind)
    results = evsim.simulate(MODEL, src, T=T, batch_size=BATCH, runner=runner)
    assert_same_run(results, serial)
    expected = len(group_shards([(a, min(a + BATCH, SAMPLES)) for a in range(0, SAMPLES, BATCH)],
                                shard_size or default_shard_size(SAMPLES, BATCH)))
    assert runner.shards == {"total": expected, "reused": 0}
    # the model went once to each worker, which warmed its kernels up before its first task
    assert len(runner.workers) == 2 and all(w["warm_up_s"] > 0 for w in runner.workers.values())
    # a file source travels as a path (each worker reads its own slices); arrays travel as slices
    assert _reads_itself(src) == (kind != "memory")
    if kind != "memory":
        assert len(pickle.dumps(src)) < 10_000


@pytest.mark.parametrize("options, precision", [(evsim.ConversionOptions("gn", tau=3), "float32"),
                                                 (evsim.ConversionOptions("signed_if"), "float64")])
def test_other_neuron_models_and_precisions_are_exact_too(client, data, options, precision):
    x, y = data["x"][:SAMPLES], data["y"][:SAMPLES]
    kw = {"T": T, "batch_size": BATCH, "options": options, "precision": precision}
    reference = evsim.simulate(MODEL, x, y, **kw)  # first: compiles, and the workers load from the Numba cache
    assert_same_run(evsim.simulate(MODEL, source(data, "npz"), runner=DaskRunner(client, shard_size=24), **kw),
                    reference)


def test_the_ann_accuracy_is_computed_by_the_workers(client, data):
    graph = evsim.load(MODEL)
    expected = float((evsim.ann.predict(graph, data["x"][:SAMPLES]) == data["y"][:SAMPLES]).mean())
    for kind in ("npz", "memory"):
        assert ann_accuracy(client, graph, source(data, kind), shard_size=24) == expected
    with pytest.raises(DataError, match="labels"):
        ann_accuracy(client, graph, ArraySource(data["x"][:8]))


def test_shards_are_whole_batches_and_the_grouping_is_stable():
    batches = [(a, min(a + 8, 102)) for a in range(0, 102, 8)]
    groups = group_shards(batches, 20)  # at most 20 samples: two batches of 8 per group
    assert [g[0][0] for g in groups] == [0, 16, 32, 48, 64, 80, 96]
    assert all(len(g) == 2 for g in groups[:-1]) and groups[-1] == [(96, 102)]
    assert group_shards(batches[:-1] + [(96, 100)], 20)[-1] == [(80, 88), (88, 96), (96, 100)]
    assert group_shards(batches, 3) == [[b] for b in batches]  # never a split batch
    # what a checkpoint has not finished regroups into the same groups
    left = groups[1] + groups[2] + groups[5]
    assert group_shards(left, 20) == [groups[1], groups[2], groups[5]]
    with pytest.raises(DataError, match="--shard-size"):
        DaskRunner.__init__(object.__new__(DaskRunner), None, shard_size=0)


# --------------------------------------------------------------------------- connection errors
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_scheduler_is_one_clear_error_within_the_timeout():
    address = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.perf_counter()
    with pytest.raises(ClusterError, match=r"--scheduler tcp://127\.0\.0\.1:\d+: expected a reachable Dask "
                                           r"scheduler, found no connection within 2 s"):
        with open_client(scheduler=address, timeout=2):
            pass
    with pytest.raises(ClusterError, match="EVSIM_SCHEDULER="):
        with open_client(environ={"EVSIM_SCHEDULER": address}, timeout=2):
            pass
    assert time.perf_counter() - t0 < 30
    with pytest.raises(ClusterError, match="--workers and --scheduler"):
        with open_client(workers=2, scheduler=address):
            pass
    with pytest.raises(ClusterError, match="no such file"):
        with open_client(scheduler_file="/nonexistent/scheduler.json"):
            pass


def test_without_dask_the_api_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "evsim\[dask\]"'):
        require_dask()
    with pytest.raises(MissingDependencyError, match=r'pip install "evsim\[dask\]"'):
        with open_client(workers=2):
            pass


# --------------------------------------------------------------------------- checkpoints
def test_a_checkpoint_resumes_and_reuses_finished_shards(data, serial, tmp_path):
    ckpt = tmp_path / "ckpt"
    first = CheckpointRunner(ckpt, shard_size=16)
    assert_same_run(evsim.simulate(MODEL, source(data, "h5"), T=T, batch_size=BATCH, runner=first), serial)
    assert first.shards == {"total": 4, "reused": 0}
    shard_files = sorted(ckpt.glob("shard-*.npz"))
    assert len(shard_files) == 4
    shard_files[2].unlink()  # as if the run had died before that shard
    (ckpt / ".shard-0000000032-0000000048.npz.x.tmp").write_bytes(b"half")  # a write cut short
    again = CheckpointRunner(ckpt, shard_size=16)
    assert_same_run(evsim.simulate(MODEL, source(data, "h5"), T=T, batch_size=BATCH, runner=again), serial)
    assert again.shards == {"total": 4, "reused": 3}
    assert not list(ckpt.glob(".*.tmp")) and len(list(ckpt.glob("shard-*.npz"))) == 4


def test_a_changed_model_data_or_setting_is_refused(data, serial, tmp_path):
    ckpt = tmp_path / "ckpt"
    run = lambda model=MODEL, src=None, **kw: evsim.simulate(  # noqa: E731
        model, src or source(data, "h5"), **{"T": T, "batch_size": BATCH, **kw}, runner=CheckpointRunner(ckpt))
    run()
    with pytest.raises(CheckpointError, match=r"expected the model, data and settings of the run that wrote it, "
                                              r"found a different model .*fresh --checkpoint directory"):
        run(str(DATA / "mnist_csqcfs.npz"))
    with pytest.raises(CheckpointError, match="a different model"):
        run(options=evsim.ConversionOptions("gn", tau=2))
    with pytest.raises(CheckpointError, match=r"different settings \(settings\.T 4 -> 8"):
        run(T=8)
    with pytest.raises(CheckpointError, match="different settings"):
        run(precision="float64")
    changed = dict(data)
    changed["h5"] = tmp_path / "changed.h5"
    import h5py

    with h5py.File(changed["h5"], "w") as f:
        f["x"], f["y"] = data["x"][::-1], data["y"][::-1]
    with pytest.raises(CheckpointError, match="a different data file"):
        run(src=source(changed, "h5"))
    # the energy constants are applied to the merged counts: changing them reuses every shard
    runner = CheckpointRunner(ckpt)
    cheaper = evsim.simulate(MODEL, source(data, "h5"), T=T, batch_size=BATCH, runner=runner,
                             energy=evsim.EnergyModel.preset("45nm-int8"))
    assert runner.shards["reused"] == runner.shards["total"]
    assert cheaper.accuracy == serial.accuracy and cheaper.energy_snn_pj < serial.energy_snn_pj
    # a directory that is not a checkpoint is never written into
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="an empty directory or an evsim checkpoint"):
        evsim.simulate(MODEL, source(data, "h5"), T=T, batch_size=BATCH, runner=CheckpointRunner(tmp_path / "other"))


def test_a_shard_file_of_another_run_is_not_loaded(tmp_path):
    a = Checkpoint.open(tmp_path / "a", {"model": {"sha256": "1"}})
    b = Checkpoint.open(tmp_path / "b", {"model": {"sha256": "2"}})
    result = Simulator(as_network(MODEL)).run_batch(np.zeros((2,) + SHAPE), 2, np.array([0, 1]))
    a.save(0, 2, [result])
    (tmp_path / "b" / a.path(0, 2).name).write_bytes(a.path(0, 2).read_bytes())
    assert b.load(0, 2) is None
    back = a.load(0, 2)[0]
    assert (back.start, back.samples, back.T) == (0, 2, 2)
    np.testing.assert_array_equal(back.correct, result.correct)
    np.testing.assert_array_equal(back.logits, result.logits)
    assert back.layers.keys() == result.layers.keys()


def test_a_checkpoint_without_finished_shards_is_taken_over(tmp_path):
    Checkpoint.open(tmp_path, {"settings": {"T": 4}})  # a first attempt that failed before any shard
    ckpt = Checkpoint.open(tmp_path, {"settings": {"T": 8}})  # nothing to mix: the new run takes it
    assert json.loads((tmp_path / "checkpoint.json").read_text())["fingerprint"] == {"settings": {"T": 8}}
    ckpt.save(0, 2, [Simulator(as_network(MODEL)).run_batch(np.zeros((2,) + SHAPE), 2)])
    with pytest.raises(CheckpointError, match=r"different settings \(settings\.T 8 -> 4\)"):
        Checkpoint.open(tmp_path, {"settings": {"T": 4}})


def test_content_hash_is_canonical():
    net = as_network(MODEL)
    assert content_hash(net) == content_hash(pickle.loads(pickle.dumps(net)))
    assert content_hash({"a": 1, "b": {2, 3}}) == content_hash({"b": {3, 2}, "a": 1})
    assert content_hash(np.float32(1.0)) != content_hash(np.zeros(1))


# --------------------------------------------------------------------------- faults
@pytest.mark.slow
def test_a_worker_killed_mid_run_has_its_task_rerun_and_the_report_is_exact(data):
    samples = 128
    serial = evsim.simulate(MODEL, data["x"][:samples], data["y"][:samples], T=T, batch_size=BATCH)
    killed = []
    with open_client(workers=2) as client:
        runner = DaskRunner(client, shard_size=BATCH)

        def kill_a_busy_worker(n):
            if killed:
                return
            busy = {w: keys for w, keys in client.processing().items() if keys}
            if not busy:
                return
            worker = next(iter(busy))
            pid = client.run(os.getpid, workers=[worker])[worker]
            os.kill(pid, signal.SIGKILL)
            killed.append((worker, pid, busy[worker]))

        results = evsim.simulate(MODEL, source(data, "h5", samples), T=T, batch_size=BATCH, runner=runner,
                                 progress=kill_a_busy_worker)
        assert killed, "no worker was busy when the first shard finished"
        worker, pid, lost = killed[0]
        assert lost and all(str(key).startswith("evsim-shard-") for key in lost)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert runner.shards == {"total": samples // BATCH, "reused": 0}
    assert_same_run(results, serial)


# --------------------------------------------------------------------------- an existing cluster
def dask_command() -> str:
    return str(Path(sys.executable).with_name("dask"))


@pytest.fixture
def external_cluster(tmp_path):
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1; yields (address, scheduler file)."""
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    procs = []
    log = open(tmp_path / "cluster.log", "wb")

    def start(*args):
        procs.append(subprocess.Popen([dask_command(), *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                                      cwd=tmp_path, start_new_session=True))

    try:
        start("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file",
              str(scheduler_file))
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert procs[0].poll() is None and time.monotonic() < deadline, (tmp_path / "cluster.log").read_text()
            time.sleep(0.1)
        time.sleep(0.2)  # the file is written whole, but give the writer its close
        address = json.loads(scheduler_file.read_text())["address"]
        for i in range(2):
            start("worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1", "--host", "127.0.0.1",
                  "--no-dashboard", "--name", f"evsim-test-{i}")
        yield address, scheduler_file
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=15)
        log.close()


@pytest.mark.slow
def test_an_external_scheduler_and_workers_on_loopback(external_cluster, data, serial):
    address, scheduler_file = external_cluster
    with open_client(scheduler_file=str(scheduler_file)) as client:
        client.wait_for_workers(2, timeout=60)
        runner = DaskRunner(client, shard_size=16)
        assert_same_run(evsim.simulate(MODEL, source(data, "npz"), T=T, batch_size=BATCH, runner=runner), serial)
        assert len(runner.workers) == 2
    with open_client(environ={"EVSIM_SCHEDULER": address}) as client:
        runner = DaskRunner(client)
        assert_same_run(evsim.simulate(MODEL, source(data, "h5"), T=T, batch_size=BATCH, runner=runner), serial)


# --------------------------------------------------------------------------- the command line
def evsim_command(*args) -> list[str]:
    return [*EVSIM_COMMAND, *map(str, args)]


def kill_group(proc):
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=15)


@pytest.mark.slow
def test_a_client_killed_with_sigkill_resumes_from_its_checkpoint(data, tmp_path):
    samples, steps = 256, 8
    ckpt, killed_report, report_path = tmp_path / "ckpt", tmp_path / "killed.json", tmp_path / "resumed.json"
    run = ["run", MODEL, "--data", data["h5"], "--samples", samples, "-T", steps, "--batch-size", BATCH,
           "--shard-size", BATCH, "--no-ann", "--checkpoint", ckpt]
    proc = subprocess.Popen(evsim_command(*run, "--workers", 1, "--report", killed_report), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while len(list(ckpt.glob("shard-*.npz"))) < 2:
            assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "no shard finished in 180 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # the client only: its local cluster's workers exit with it
        proc.wait(timeout=30)
    finally:
        kill_group(proc)
    done = sorted(ckpt.glob("shard-*.npz"))
    assert not killed_report.exists()
    assert 2 <= len(done) < samples // BATCH, "the run finished before the kill"
    for path in done:  # only whole shards: every file is complete
        with np.load(path, allow_pickle=False) as z:
            assert "header" in z.files
    # the same command (here on 2 workers) reuses what was finished and runs the rest
    resumed = subprocess.run(evsim_command(*run, "--workers", 2, "--report", report_path), cwd=tmp_path,
                             capture_output=True, text=True, timeout=300, start_new_session=True)
    assert resumed.returncode == 0, resumed.stderr
    r = json.loads(report_path.read_text())
    assert r["settings"]["shards"] == {"total": samples // BATCH, "reused": len(done)}
    serial = evsim.simulate(MODEL, data["x"][:samples], data["y"][:samples], T=steps, batch_size=BATCH)
    assert report({**r, "settings": {k: v for k, v in r["settings"].items() if k != "data"}}) == report(serial)


@pytest.mark.slow
def test_the_command_line_on_an_external_scheduler_and_locally(external_cluster, data, serial, tmp_path):
    from click.testing import CliRunner

    from evsim.cli.main import main

    address, _ = external_cluster
    reports = {}
    for name, flags in {"serial": [], "scheduler": ["--scheduler", address], "workers": ["--workers", 2]}.items():
        path = tmp_path / f"{name}.json"
        result = CliRunner().invoke(main, ["run", MODEL, "--data", str(data["npz"]), "--samples", SAMPLES, "-T", T,
                                           "--batch-size", BATCH, "--report", str(path), *map(str, flags)])
        assert result.exit_code == 0, result.output
        reports[name] = json.loads(path.read_text())
    for name in ("scheduler", "workers"):
        assert reports[name]["settings"]["shards"]["reused"] == 0
        assert report(reports[name]) == report(reports["serial"])
    assert reports["serial"]["ann_accuracy"] == reports["scheduler"]["ann_accuracy"] is not None
    assert report({**reports["serial"], "settings": {k: v for k, v in reports["serial"]["settings"].items()
                                                     if k != "data"}, "ann_accuracy": None}) == report(serial)


def test_evsim_run_works_without_dask_and_a_cluster_flag_says_how_to_install_it(data, tmp_path):
    block = ("import sys; sys.modules['distributed'] = sys.modules['dask'] = None; "
             "from evsim.cli.main import main; main()")
    args = ["run", MODEL, "--data", data["npz"], "--samples", 16, "-T", 2, "--no-ann"]
    plain = subprocess.run([sys.executable, "-c", block, *map(str, args)], capture_output=True, text=True,
                           timeout=300, cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert "accuracy over 16 samples" in plain.stdout
    for flag in (["--workers", "2"], ["--scheduler", "tcp://127.0.0.1:1"]):
        refused = subprocess.run([sys.executable, "-c", block, *map(str, args), *flag], capture_output=True,
                                 text=True, timeout=300, cwd=tmp_path)
        assert refused.returncode == 1
        assert 'pip install "evsim[dask]"' in refused.stderr and flag[0] in refused.stderr
