"""The reproducers of issue 17 (``repro/``, copied from the fuzz campaign's findings) as regression tests.

Each runs the exact command of the campaign's README in a child process with a timeout and
an address-space limit, and asserts a clean one-line refusal (or correct behaviour) within
seconds.  Reproducers whose fix belongs to someone else are marked ``xfail(strict=False)``
with the owner named, so they start passing when that work is merged.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import harness

R = Path(__file__).resolve().parent / "repro"
D = harness.ROOT / "data"
MODEL, RELU, TEST = D / "mnist_qcfs.npz", D / "mnist_relu.npz", D / "mnist_test.npz"
FAST = 30.0  # seconds: every refusal below takes one or two

LEAD = "owned by the lead (architecture, issue 11): "


def refused(outcome: harness.Outcome, *words: str, within: float = FAST) -> None:
    assert outcome.outcome == "refused", f"{outcome.outcome}: {outcome.detail}"
    assert outcome.seconds < within, f"took {outcome.seconds:.1f} s"
    assert len(outcome.detail) < 1200, f"a {len(outcome.detail)}-character error line"
    for word in words:
        assert word in outcome.detail, f"{word!r} not in: {outcome.detail}"


# --------------------------------------------------------------------------- hangs
@pytest.mark.parametrize("name", ["h5_attr_hang", "hang_b595", "hang_b719", "hang_b1205", "hang_b101868"])
def test_corrupt_hdf5_heap_is_refused_within_seconds(name):
    refused(harness.run_cli(["inspect", R / f"{name}.h5"], timeout=FAST), "attribute 'evsim'", "corrupted", within=10)


def test_declared_huge_h5_data_reads_only_the_samples_used(tmp_path):
    huge = R / "data_h5_declared_huge.h5"
    out = harness.run_cli(["convert", RELU, "-o", tmp_path / "x.npz", "--threshold", "p99", "--calib-data", huge,
                           "--calib-samples", 64], timeout=60)
    assert out.outcome == "ok", out.detail
    import evsim

    assert evsim.load(tmp_path / "x.npz").metadata["calibration"]["samples"] == 64
    out = harness.run_cli(["run", MODEL, "--data", huge, "-T", 2, "--samples", 4, "--no-ann"], timeout=60)
    assert out.outcome == "ok", out.detail
    assert "4 samples (no labels" in out.detail


@pytest.mark.parametrize("args", [
    ["run", R / "gn_tau_4611686018427387904.npz", "--data", TEST, "-T", 2, "--samples", 8],
    ["run", MODEL, "--data", TEST, "--neuron", "gn", "--tau", 4611686018427387904, "-T", 2],
    ["run", R / "gn_tau_18446744073709551616.npz", "--data", TEST, "-T", 2, "--samples", 8],
    ["run", MODEL, "--data", TEST, "--neuron", "gn", "--tau", 18446744073709551616, "-T", 2],
], ids=["file-2**62", "option-2**62", "file-2**64", "option-2**64"])
def test_huge_gn_tau_is_refused(args):
    refused(harness.run_cli(args, timeout=10), "tau")


# --------------------------------------------------------------------------- tracebacks
@pytest.mark.parametrize("name", ["maxpool_input_snn", "maxpool_input_ann"])
def test_maxpool_on_the_input_is_refused_or_simulated(name):
    out = harness.run_cli(["run", R / f"{name}.npz", "--data", TEST, "-T", 2, "--samples", 4], timeout=FAST)
    assert out.outcome in ("ok", "refused"), out.detail


def test_deeply_nested_metadata_is_refused_at_load():
    for args in (["inspect", R / "deep_metadata.npz"],
                 ["run", R / "deep_metadata.npz", "--data", TEST, "-T", 2, "--samples", 4]):
        refused(harness.run_cli(args), "nested at most 64 deep")


def test_surrogate_node_name_is_printed():
    out = harness.run_cli(["inspect", R / "surrogate_name.npz"])
    assert out.outcome == "ok", out.detail


def test_neuron_model_that_is_not_a_string_is_refused():
    """Found by this suite's campaign: a neuron node whose 'model' is a JSON object."""
    refused(harness.run_cli(["inspect", R / "neuron_model_dict.npz"]), "'model'")


def test_pooling_stride_beyond_int64_is_refused(tmp_path):
    """Found by this suite: maxpool2d stride 2**64 validates, then fails to type in the pooling kernel."""
    import corpus

    data = corpus.write_data(tmp_path / "d.npz", corpus.base_data())
    refused(harness.run_cli(["run", R / "maxpool_stride_2_64.npz", "--data", data, "-T", 2, "--samples", 2]),
            "stride")


@pytest.mark.parametrize("name, words", [("data_x0d", ["'x'", "0-d"]), ("data_y0d", ["'y'", "single value"])])
def test_zero_dimensional_data_is_refused(name, words):
    refused(harness.run_cli(["run", MODEL, "--data", R / f"{name}.npz", "-T", 2, "--samples", 4]), *words)


@pytest.mark.parametrize("args", [
    ["run", MODEL, "--data", TEST, "-T", 1000000000, "--samples", 1],  # memory is flat in T up to the counters
    ["convert", MODEL, "-o", "{tmp}/x.npz", "--potential", "data", "--calib-data", TEST, "-T", 1000000000],
    ["convert", MODEL, "-o", "{tmp}/x.npz", "--bias-calibration", "--calib-data", TEST, "-T", 1000000000],
], ids=["run", "potential", "bias"])
def test_time_steps_times_neurons_is_checked_before_allocating(args, tmp_path):
    args = [str(a).format(tmp=tmp_path) for a in args]
    out = harness.run_cli(args, timeout=60)
    refused(out)  # by the memory limit, or by -T's own range
    assert "EVSIM_MEMORY_LIMIT" in out.detail or "'-T'" in out.detail, out.detail


# --------------------------------------------------------------------------- unclear answers
def test_labels_are_checked_on_their_raw_values():
    out = harness.run_cli(["run", MODEL, "--data", R / "labels_1e20.npz", "-T", 2, "--samples", 4])
    refused(out, "1e+20", "[0, 10)")
    assert "-9223372036854775808" not in out.detail


def test_calibration_ignores_unused_labels(tmp_path):
    out = harness.run_cli(["convert", RELU, "-o", tmp_path / "x.npz", "--threshold", "p99",
                           "--calib-data", R / "labels_1e20.npz"], timeout=60)
    assert out.outcome == "ok", out.detail


def test_a_long_value_is_truncated_in_the_message(tmp_path):
    shutil.copy(R / "long_message.py", tmp_path)
    (tmp_path / "data").symlink_to(D)
    subprocess.run([sys.executable, "long_message.py"], cwd=tmp_path, check=True)
    out = harness.run_cli(["inspect", tmp_path / "long_message.npz"])
    refused(out, "characters in all")
    assert len(out.detail) < 700


def test_batchnorm_eps_underflow_names_the_users_node(tmp_path):
    bn = R / "bn_eps_underflow.npz"
    refused(harness.run_cli(["run", bn, "--data", TEST, "-T", 2, "--samples", 4]), "node 'bn1'", "eps")
    out = harness.run_cli(["convert", bn, "-o", tmp_path / "x.npz", "--potential", "data", "--calib-data", TEST,
                           "--calib-samples", 16, "-T", 4], timeout=60)
    refused(out, "node 'bn1'", "bn1.var")
    assert "v0" not in out.detail


@pytest.mark.parametrize("value", ["inf", "-1", "0", "nan", "1e9", "8 GB x"])
def test_memory_limit_variable_is_parsed_strictly(value):
    out = harness.run_cli(["inspect", MODEL], env={"EVSIM_MEMORY_LIMIT": value})
    refused(out, "EVSIM_MEMORY_LIMIT", "positive byte count")
    assert "corrupted" not in out.detail


def test_allocation_failure_says_out_of_memory(tmp_path):
    """A .npy header declaring 1.5 GB under an address space of 1 GB: 'out of memory', not 'corrupted'."""
    import zipfile

    path = tmp_path / "bomb.npz"
    manifest = json.loads(str(np.load(MODEL)["__evsim__"]))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("__evsim__.npy", "w") as m:
            np.lib.format.write_array(m, np.array(json.dumps(manifest)))
        with z.open("conv1.weight.npy", "w") as m:
            header = {"descr": "<f4", "fortran_order": False, "shape": (375_000_000,)}
            np.lib.format.write_array_header_1_0(m, header)
            m.write(b"\0" * 4096)
    out = harness.run_cli(["inspect", path], env={"EVSIM_MEMORY_LIMIT": "8G"}, memory=1 * 2**30)
    refused(out, "out of memory")

    h5 = tmp_path / "chunked.h5"
    with h5py.File(h5, "w") as f:
        f.attrs["evsim"] = json.dumps(manifest)
        f.create_dataset("arrays/conv1.weight", shape=(375_000_000,), dtype="f4", chunks=(1_000_000,))
    out = harness.run_cli(["inspect", h5], env={"EVSIM_MEMORY_LIMIT": "8G"}, memory=1 * 2**30)
    refused(out, "out of memory")


@pytest.mark.parametrize("flag, value", [("--e-mac", "nan"), ("--e-mac", "inf"), ("--e-ac", "-1")])
def test_energy_constants_must_be_finite_and_non_negative(flag, value):
    out = harness.run_cli(["run", MODEL, "--data", TEST, "-T", 2, "--samples", 4, flag, value])
    refused(out)
    assert any(word in out.detail for word in (flag, "finite", ">= 0")), out.detail


def test_percentile_digits_are_ascii_only(tmp_path):
    out = harness.run_cli(["convert", RELU, "-o", tmp_path / "x.npz", "--threshold", "p\u0669\u0669",
                           "--calib-data", TEST])
    refused(out, "percentile")


def test_inputs_that_overflow_the_simulation_dtype_are_refused(tmp_path):
    x = np.zeros((4, 1, 28, 28))
    x[2, 0, 3, 3] = 1e308
    np.savez(tmp_path / "big.npz", x=x, y=np.zeros(4, np.int64))
    refused(harness.run_cli(["run", MODEL, "--data", tmp_path / "big.npz", "-T", 2, "--no-ann"]), "sample 2")


# --------------------------------------------------------------------------- output files
def test_report_onto_a_fifo_or_a_symlink_to_one_is_refused(tmp_path):
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link.json"
    link.symlink_to(fifo)
    for target in (fifo, link, tmp_path):
        out = harness.run_cli(["run", MODEL, "--data", TEST, "-T", 1, "--samples", 1, "--report", target])
        refused(out, "directory" if target == tmp_path else "regular file")
    assert fifo.is_fifo() and link.is_symlink()
    assert not [p for p in tmp_path.iterdir() if ".evsim-tmp-" in p.name]


def test_symlinked_report_is_written_through(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(real.name)
    out = harness.run_cli(["run", MODEL, "--data", TEST, "-T", 2, "--samples", 4, "--report", link])
    assert out.outcome == "ok", out.detail
    assert link.is_symlink() and json.loads(real.read_text())["T"] == 2
