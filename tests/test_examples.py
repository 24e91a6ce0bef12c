"""Regression guard on the shipped models: each reaches its documented SNN accuracy.

The documented figures are in docs/neurons.md and the README's reproduction table (all 1,000
shipped test samples, float32); the bounds below sit half a point under them.
"""
from importlib.resources import files

import numpy as np
import pytest
from click.testing import CliRunner

import evsim
from evsim.ann import predict
from evsim.cli.main import main
from evsim.converters.calibration import calibrate
from evsim.data_io import load_data

DATA = files("evsim.data")


@pytest.fixture(scope="module")
def test_split():
    return load_data(DATA / "mnist_test.npz", (1, 28, 28), 10)


@pytest.mark.parametrize("name", ["mnist_qcfs.npz", "mnist_csqcfs.npz", "mnist_relu.npz"])
def test_shipped_models_load_and_match_their_ann_accuracy(name, test_split):
    graph = evsim.load(DATA / name)
    x, y = test_split
    assert (predict(graph, x) == y).mean() == pytest.approx(graph.metadata["test_accuracy"], abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("name,options,t,documented", [
    ("mnist_qcfs.npz", {}, 1, 93.2),
    ("mnist_qcfs.npz", {"neuron": "gn", "tau": 4}, 1, 98.8),
    ("mnist_qcfs.npz", {"neuron": "signed_if"}, 4, 98.7),
    ("mnist_csqcfs.npz", {}, 4, 94.9),
])
def test_qcfs_models_reach_documented_accuracy(name, options, t, documented, test_split):
    x, y = test_split
    r = evsim.simulate(evsim.convert(evsim.load(DATA / name), **options), x, y, T=t)
    assert 100 * r.accuracy[t - 1] >= documented - 0.5


@pytest.mark.slow
def test_calibrated_relu_reaches_documented_accuracy(test_split):
    x, y = test_split
    calib, _ = load_data(DATA / "mnist_calib.npz", (1, 28, 28))
    snn = calibrate(evsim.load(DATA / "mnist_relu.npz"), calib, threshold="p99.9", potential="data", T=8)
    r = evsim.simulate(snn, x, y, T=8)
    assert 100 * r.accuracy[3] >= 98.2 - 0.5  # T = 4
    assert 100 * r.accuracy[7] >= 98.9 - 0.5  # T = 8


def test_demo_command_runs():
    result = CliRunner().invoke(main, ["demo", "--samples", "50", "-T", "4"])
    assert result.exit_code == 0, result.output
    assert "ANN accuracy" in result.output and "GN τ=4" in result.output and "SNN/ANN" in result.output
    rows = [line for line in result.output.splitlines() if line.startswith(("IF", "GN", "signed"))]
    assert len(rows) == 6  # accuracy table and energy table, three neuron models each
    accuracies = [float(v) for v in rows[0].split()[-3:]]
    assert all(0 <= a <= 100 for a in accuracies) and max(accuracies) > 50
