"""Robustness against hostile input (issue 17), in process: HDF5 heap guard, strict limits,
short messages, lazy validated data files, BatchNorm folding, atomic output files."""
from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import evsim
from evsim.convert import convert, fold_batchnorm
from evsim.data_io import (check_data, check_labels, check_model_precision, check_preprocessed, load_data,
                           open_data)
from evsim.errors import (ContainerError, ConversionError, DataError, ManifestError, OutputError, ResourceLimitError,
                          describe, truncate)
from evsim.format import MAX_NESTING, TEMP_MARK, atomic_write, graph_from_manifest, manifest_from_graph
from evsim.graph import DEFAULT_MEMORY_LIMIT, memory_limit

ROOT = Path(__file__).resolve().parent.parent
REPRO = ROOT / "tests" / "fuzz" / "repro"
MODEL = ROOT / "data" / "mnist_qcfs.npz"
TEST = ROOT / "data" / "mnist_test.npz"


@pytest.fixture(autouse=True)
def _default_memory_limit(monkeypatch):
    monkeypatch.delenv("EVSIM_MEMORY_LIMIT", raising=False)


@pytest.fixture(scope="module")
def qcfs():
    return evsim.load(MODEL)


# --------------------------------------------------------------------------- the HDF5 heap guard
@pytest.mark.parametrize("name", ["h5_attr_hang", "hang_b595", "hang_b719", "hang_b1205", "hang_b101868"])
def test_corrupt_global_heap_is_refused_before_libhdf5_reads_it(name):
    start = time.perf_counter()
    with pytest.raises(ContainerError, match="does not advance the decoder"):
        evsim.load(REPRO / f"{name}.h5")
    assert time.perf_counter() - start < 5


def _h5(path, text, libver="earliest", attrs=0, fixed=False):
    with h5py.File(path, "w", libver=libver) as f:
        for i in range(attrs):
            f.attrs[f"note{i}"] = f"value {i}"
        f.attrs["evsim"] = np.bytes_(text.encode()) if fixed else text
    return path


@pytest.mark.parametrize("libver, attrs, fixed, pad", [
    ("earliest", 0, False, 0), ("latest", 0, False, 0),      # object header v1 / v2
    ("earliest", 20, False, 0), ("latest", 20, False, 0),    # many attributes (v2: dense storage -> file scan)
    ("earliest", 0, False, 200_000),                         # a string in its own heap collection
    ("earliest", 0, True, 0),                                # fixed-length string: no heap at all
])
def test_valid_manifest_attributes_pass_the_guard(tmp_path, qcfs, libver, attrs, fixed, pad):
    text, arrays = manifest_from_graph(qcfs)
    path = _h5(tmp_path / "m.h5", text + " " * pad, libver, attrs, fixed)
    with h5py.File(path, "a") as f:
        for name, value in arrays.items():
            f.create_dataset(f"arrays/{name}", data=value)
    assert evsim.load(path) == qcfs


def _heap_address(path) -> int:
    data = Path(path).read_bytes()
    return data.index(b"GCOL")


def test_string_longer_than_its_heap_object_is_refused(tmp_path, qcfs):
    text, _ = manifest_from_graph(qcfs)
    path = _h5(tmp_path / "m.h5", text)
    data = bytearray(path.read_bytes())
    heap = _heap_address(path)
    # the attribute's heap ID (length, address, index) sits in the root object header
    ident = data.index(len(text).to_bytes(4, "little") + heap.to_bytes(8, "little"), 0, heap)
    data[ident:ident + 4] = (2**31).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(ResourceLimitError, match="declared string"):
        evsim.load(path, limit=2**30)
    with pytest.raises(ContainerError, match="heap object of"):
        evsim.load(path, limit=2**40)


def test_heap_object_running_past_its_collection_is_refused(tmp_path, qcfs):
    text, _ = manifest_from_graph(qcfs)
    path = _h5(tmp_path / "m.h5", text)
    data = bytearray(path.read_bytes())
    heap = _heap_address(path)
    first = heap + 16  # the first object's header: index (2), refcount (2), reserved (4), size (8)
    data[first + 8:first + 16] = (2**62).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(ContainerError, match="runs past the collection"):
        evsim.load(path)


def test_non_scalar_manifest_attribute_is_refused_before_reading(tmp_path):
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f.attrs["evsim"] = ["a", "b"]
    with pytest.raises(ContainerError, match="scalar string"):
        evsim.load(tmp_path / "m.h5")


# --------------------------------------------------------------------------- limits and messages
@pytest.mark.parametrize("text, value", [
    ("", DEFAULT_MEMORY_LIMIT), ("4000000000", 4_000_000_000), ("512M", 512 * 2**20), ("8G", 8 * 2**30),
    ("8gib", 8 * 2**30), ("1.5GB", int(1.5 * 2**30)), ("2T", 2 * 2**40), (" 64k ", 64 * 2**10), ("100B", 100),
])
def test_memory_limit_accepts_byte_counts_with_units(monkeypatch, text, value):
    monkeypatch.setenv("EVSIM_MEMORY_LIMIT", text)
    assert memory_limit() == value


@pytest.mark.parametrize("text", ["inf", "nan", "-1", "0", "0.2", "lots", "1e9", "8X", "1iB", "\u0668G", "8GG",
                                  "99999999999T"])
def test_memory_limit_refuses_anything_else(monkeypatch, text):
    monkeypatch.setenv("EVSIM_MEMORY_LIMIT", text)
    with pytest.raises(ResourceLimitError, match="EVSIM_MEMORY_LIMIT: expected a positive byte count"):
        memory_limit()
    with pytest.raises(ResourceLimitError, match="EVSIM_MEMORY_LIMIT"):  # its own message, not "corrupted file"
        evsim.load(MODEL)


def test_messages_truncate_echoed_values():
    message = describe("m.npz, output", "the name of a node", repr("A" * 10**6), "fix " + "B" * 10**4)
    assert len(message) < 700 and "1000002 characters in all" in message
    assert truncate("short") == "short"


def test_a_huge_manifest_value_gives_a_short_line(tmp_path, qcfs):
    text, arrays = manifest_from_graph(qcfs)
    manifest = json.loads(text)
    manifest["nodes"][0]["name"] = "n" * 10**6
    with pytest.raises(evsim.EvsimError) as info:
        graph_from_manifest(json.dumps(manifest), arrays, "m.npz")
    assert len(str(info.value)) < 1500


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 500])
def test_deep_manifest_nesting_is_refused(qcfs, depth):
    text, arrays = manifest_from_graph(qcfs)
    manifest = json.loads(text)
    value = 1
    for _ in range(depth):
        value = {"k": value}
    manifest["metadata"] = value
    with pytest.raises(ManifestError, match=f"nested at most {MAX_NESTING} deep"):
        graph_from_manifest(json.dumps(manifest), arrays)


def test_integer_with_thousands_of_digits_is_a_manifest_error(qcfs):
    text, arrays = manifest_from_graph(qcfs)
    with pytest.raises(ManifestError, match="valid JSON"):
        graph_from_manifest(text.replace('"levels": 4', '"levels": ' + "9" * 5000, 1), arrays)


def test_percentile_accepts_ascii_digits_only():
    from evsim.converters.calibration import parse_statistic
    from evsim.errors import CalibrationError

    assert parse_statistic("p99.9").q == 99.9
    for text in ("p\u0669\u0669", "p\uff19\uff19", "p99\u00b79", "p" + "9" * 40):
        with pytest.raises(CalibrationError):
            parse_statistic(text)


# --------------------------------------------------------------------------- BatchNorm folding
def _bn_graph(weight_scale=1.0, eps=1e-5, var=1.0, dtype=np.float32):
    text = json.dumps({
        "format": "evsim-model", "version": 1, "input": {"shape": [1, 4, 4]},
        "nodes": [{"name": "conv", "op": "conv2d", "inputs": ["input"], "weight": "w"},
                  {"name": "norm", "op": "batchnorm", "inputs": ["conv"], "mean": "m", "var": "v", "gamma": "g",
                   "beta": "b", "eps": eps},
                  {"name": "act", "op": "qcfs", "inputs": ["norm"], "threshold": "t", "levels": 4},
                  {"name": "fc", "op": "linear", "inputs": ["act"], "weight": "fw"}],
        "output": "fc", "metadata": {}})
    arrays = {"w": np.full((2, 1, 3, 3), weight_scale, dtype), "m": np.zeros(2, dtype), "v": np.full(2, var, dtype),
              "g": np.full(2, 100.0, dtype), "b": np.zeros(2, dtype), "t": np.array(1.0, dtype),
              "fw": np.ones((3, 8), dtype)}
    return graph_from_manifest(text, arrays, "bn.npz")


def test_batchnorm_eps_that_vanishes_in_float32_is_refused_naming_the_node():
    with pytest.raises(ConversionError, match=r"node 'norm'.*array 'v' 0, eps 1e-50"):
        fold_batchnorm(_bn_graph(eps=1e-50, var=0.0))
    fold_batchnorm(_bn_graph(eps=1e-50, var=0.0, dtype=np.float64))  # representable in float64


def test_folded_weights_that_overflow_are_refused_naming_the_node():
    with pytest.raises(ConversionError, match=r"node 'norm'.*'conv'.*overflow"):
        convert(_bn_graph(weight_scale=3e38))


def test_deep_metadata_in_memory_converts_without_recursion_error():
    graph = _bn_graph()
    value = "leaf"
    for _ in range(5000):
        value = [value]
    graph.metadata = {"deep": value}
    snn = convert(graph)
    assert snn.metadata["deep"] is value


# --------------------------------------------------------------------------- data files
@pytest.fixture(scope="module")
def mnist():
    with np.load(TEST) as z:
        return z["x"][:64], z["y"][:64]


def _write(path, **arrays):
    path = Path(path)
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    else:
        with h5py.File(path, "w") as f:
            for k, v in arrays.items():
                f.create_dataset(k, data=v)
    return path


@pytest.mark.parametrize("suffix, compressed", [(".npz", False), (".npz", True), (".h5", False)])
def test_open_data_reads_validated_slices(tmp_path, mnist, suffix, compressed):
    x, y = mnist
    path = tmp_path / f"d{suffix}"
    (np.savez_compressed if compressed else np.savez)(path, x=x, y=y) if suffix == ".npz" else _write(path, x=x, y=y)
    source = open_data(path, (1, 28, 28), 10)
    assert (source.n, source.has_labels, source.frames) == (64, True, None)
    for start, stop in [(10, 20), (0, 5), (40, 64), (5, 7)]:  # backwards too: a compressed stream restarts
        xs, ys = source.read(start, stop)
        np.testing.assert_array_equal(xs, x[start:stop])
        np.testing.assert_array_equal(ys, y[start:stop])
        assert ys.dtype == np.int64
    clone = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(clone.read(30, 33)[0], x[30:33])
    np.testing.assert_array_equal(source[3:6], x[3:6])
    source.close()


def test_open_data_never_reads_more_than_the_slice(tmp_path):
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as f:  # 4e6 declared samples (3.1 GB), none written
        f.create_dataset("x", shape=(4_000_000, 1, 28, 28), dtype="u1", chunks=(125_000, 1, 1, 2))
    start = time.perf_counter()
    source = open_data(path, (1, 28, 28), samples=8)
    x, y = source.read(0, 8)
    assert x.shape == (8, 1, 28, 28) and y is None and source.n == 8
    assert time.perf_counter() - start < 10
    x, _ = load_data(path, (1, 28, 28), samples=3)
    assert x.shape == (3, 1, 28, 28)


def test_slices_larger_than_the_memory_limit_are_refused(tmp_path, mnist, monkeypatch):
    path = _write(tmp_path / "d.npz", x=mnist[0])
    source = open_data(path, (1, 28, 28))
    monkeypatch.setenv("EVSIM_MEMORY_LIMIT", "10K")
    with pytest.raises(ResourceLimitError, match="--batch-size"):
        source.read(0, 64)
    assert source.read(0, 8)[0].shape == (8, 1, 28, 28)


def test_event_frames_and_channels_last(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.random((6, 3, 2, 4, 5)).astype(np.float32)  # (N, T, C, H, W)
    source = open_data(_write(tmp_path / "f.npz", x=frames), (2, 4, 5))
    assert source.frames == 3
    np.testing.assert_array_equal(source.read(1, 4)[0], frames[1:4])
    hwc = _write(tmp_path / "hwc.h5", x=frames.transpose(0, 1, 3, 4, 2))
    np.testing.assert_array_equal(open_data(hwc, (2, 4, 5), layout="nhwc").read(0, 6)[0], frames)
    flat = _write(tmp_path / "flat.npz", x=frames[:, 0].reshape(6, -1))
    np.testing.assert_array_equal(open_data(flat, (2, 4, 5)).read(0, 6)[0], frames[:, 0])
    with pytest.raises(DataError, match="static samples"):  # calibration streams static samples only
        check_data(source, None, (2, 4, 5))


@pytest.mark.parametrize("arrays, match", [
    ({"x": np.float64(3.0)}, "0-d array"),
    ({"x": np.zeros((4, 1, 28, 28)), "y": np.int64(1)}, r"labels of shape \(4,\).*single value"),
    ({"x": np.zeros((4, 1, 28, 28)), "y": np.zeros(3)}, r"labels of shape \(4,\)"),
    ({"x": np.zeros((0, 1, 28, 28))}, "at least one sample"),
    ({"x": np.zeros((4, 28, 28))}, r"shape \(N, 1, 28, 28\)"),
    ({"x": np.array([b"a"] * 4)}, "numeric values"),
    ({"y": np.zeros(4)}, "an array 'x'"),
])
def test_bad_declared_data_is_refused_at_open(tmp_path, arrays, match):
    for suffix in (".npz", ".h5"):
        with pytest.raises(DataError, match=match):
            open_data(_write(tmp_path / f"d{suffix}", **arrays), (1, 28, 28), 10)


@pytest.mark.parametrize("y, found", [
    (np.array([0, 1e20]), "label 1e+20 at index 1"), (np.array([0.0, 2.5]), "label 2.5"),
    (np.array([0.0, np.nan]), "label nan"), (np.array([0, -1]), "label -1"), (np.array([0, 10]), "label 10"),
    (np.array([0, 2**64 - 1], np.uint64), "label 18446744073709551615"),
])
def test_labels_are_checked_on_raw_values(y, found):
    with pytest.raises(DataError, match=found.replace("+", r"\+").replace(".", r"\.")):
        check_labels(y, 10, "d.npz", start=0)


def test_labels_pass_unchanged_when_valid():
    np.testing.assert_array_equal(check_labels(np.array([0.0, 9.0]), 10), [0, 9])
    np.testing.assert_array_equal(check_labels(np.array([True, False]), 2), [1, 0])
    np.testing.assert_array_equal(check_labels(np.array([3], np.uint8), None), [3])


def test_non_finite_values_are_reported_with_their_sample_index(tmp_path):
    x = np.zeros((10, 1, 2, 2))
    x[7, 0, 1, 1] = np.inf
    source = open_data(_write(tmp_path / "d.npz", x=x), (1, 2, 2))
    source.read(0, 5)
    with pytest.raises(DataError, match="first: index 7"):
        source.read(5, 10)


def test_preprocessed_values_must_fit_the_simulation_dtype():
    check_preprocessed(np.array([[1e30, -3e38]]), np.float32)
    check_preprocessed(np.array([[1e300]]), np.float64)
    with pytest.raises(DataError, match=r"sample 4: a magnitude of 1e\+300"):
        check_preprocessed(np.vstack([np.zeros((3, 2)), [[1e300, 0]]]), np.float32, "d.npz", start=1)
    with pytest.raises(DataError, match="NaN/inf after preprocessing"):
        check_preprocessed(np.array([[np.inf]]), np.float64)


def test_model_arrays_beyond_the_simulation_dtype_are_refused(qcfs):
    import copy

    graph = copy.deepcopy(qcfs)
    weight = graph.node("fc").arrays["weight"].astype(np.float64)
    weight[0, 0] = 1e300
    graph.node("fc").arrays["weight"] = weight
    check_model_precision(graph, np.float64)
    with pytest.raises(evsim.EvsimError, match=r"node 'fc', array 'fc.weight'.*1e\+300.*--precision float64"):
        check_model_precision(graph, np.float32)
    check_model_precision(qcfs, np.float32)


def test_compressed_npz_member_larger_than_its_data_is_a_clean_error(tmp_path):
    import zipfile

    path = tmp_path / "short.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z, z.open("x.npy", "w") as m:
        np.lib.format.write_array_header_1_0(m, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 4)})
        m.write(b"\0" * 64)
    source = open_data(path, (4,))
    with pytest.raises(DataError, match="truncated"):
        source.read(0, 100)


# --------------------------------------------------------------------------- atomic output files
def _temps(directory):
    return [p.name for p in Path(directory).iterdir() if TEMP_MARK in p.name]


def test_atomic_write_replaces_a_regular_file_and_keeps_its_mode(tmp_path):
    out = tmp_path / "r.json"
    out.write_text("old")
    out.chmod(0o600)
    atomic_write(out, lambda tmp: tmp.write_text("new"))
    assert out.read_text() == "new" and (out.stat().st_mode & 0o777) == 0o600
    out.chmod(0o444)  # read-only: replaced all the same (the directory is writable), and stays read-only
    atomic_write(out, lambda tmp: tmp.write_text("newer"))
    assert out.read_text() == "newer" and (out.stat().st_mode & 0o777) == 0o444
    assert not _temps(tmp_path)


def test_atomic_write_refuses_special_files(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dev").symlink_to("/dev/null")
    for target, kind in [(fifo, "FIFO"), (tmp_path / "dir", "directory"), (tmp_path / "dev", "character device")]:
        with pytest.raises(OutputError, match=kind):
            atomic_write(target, lambda tmp: tmp.write_text("x"))
    assert fifo.is_fifo() and (tmp_path / "dev").is_symlink() and Path("/dev/null").is_char_device()
    assert not _temps(tmp_path)


def test_atomic_write_writes_through_symlinks(tmp_path):
    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / "r.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    atomic_write(link, lambda tmp: tmp.write_text("new"))
    assert link.is_symlink() and real.read_text() == "new"
    assert not _temps(tmp_path) and not _temps(tmp_path / "real")
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "real" / "new.json")
    with pytest.raises(OutputError, match="does not exist"):
        atomic_write(dangling, lambda tmp: tmp.write_text("created"))
    assert not (tmp_path / "real" / "new.json").exists() and dangling.is_symlink()


def test_atomic_write_removes_its_temp_file_on_errors_and_keeps_the_old_file(tmp_path):
    out = tmp_path / "m.npz"
    out.write_text("previous")

    def fail(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(out, fail)
    assert out.read_text() == "previous" and not _temps(tmp_path)
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None) or callable(signal.getsignal(signal.SIGTERM))


def test_stale_temp_files_of_dead_writers_are_removed_by_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".m.npz{TEMP_MARK}{int(dead.stdout)}-deadbeef.npz"
    live = tmp_path / f".m.npz{TEMP_MARK}{os.getppid()}-cafebabe.npz"  # a writer that is still running
    other = tmp_path / f".other.npz{TEMP_MARK}{int(dead.stdout)}-deadbeef.npz"  # another output's
    for p in (stale, live, other):
        p.write_text("x")
    atomic_write(tmp_path / "m.npz", lambda tmp: tmp.write_text("new"))
    assert not stale.exists() and live.exists() and other.exists()


_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from evsim.format import atomic_write

    def slow(tmp):
        tmp.write_text("partial")
        print("writing", flush=True)
        time.sleep(60)

    atomic_write(Path(sys.argv[1]), slow)
""")


def _default_action(signum):
    if signum != signal.SIGKILL:
        signal.signal(signum, signal.SIG_DFL)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, -signal.SIGINT),
                                          (signal.SIGHUP, -signal.SIGHUP), (signal.SIGKILL, -signal.SIGKILL)])
def test_signals_during_a_write_leave_no_temp_file(tmp_path, signum, code):
    out = tmp_path / "r.json"
    out.write_text("previous")
    # the signal's default action in the child, whatever this process inherited (under nohup SIGHUP is
    # ignored, and atomic_write rightly keeps an ignored signal ignored)
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: _default_action(signum))
    assert proc.stdout.readline() == "writing\n"
    assert len(_temps(tmp_path)) == 1
    proc.send_signal(signum)
    assert proc.wait(timeout=30) == code
    assert out.read_text() == "previous"
    if signum == signal.SIGKILL:  # nothing can run: the next write of the same output cleans up
        assert len(_temps(tmp_path)) == 1
        atomic_write(out, lambda tmp: tmp.write_text("next"))
        assert out.read_text() == "next"
    assert not _temps(tmp_path)


def test_simulate_reads_a_file_source_like_arrays(qcfs):
    source = open_data(TEST, qcfs.input.shape, 10, samples=12)
    x, y = load_data(TEST, qcfs.input.shape, 10, samples=12)
    lazy = evsim.simulate(qcfs, source, T=2, batch_size=5)
    eager = evsim.simulate(qcfs, x, y, T=2, batch_size=5)
    assert lazy.accuracy == eager.accuracy and lazy.sops == eager.sops
