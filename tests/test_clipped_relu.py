"""ReLU with a maximum (``metadata["relu_max"]``, docs/import.md): the ANN executor clips, conversion uses
λ as θ, calibration from data still applies when asked, and bad metadata is refused."""
from __future__ import annotations

import copy
import json
import os
import subprocess
from importlib.resources import files

import numpy as np
import pytest

import evsim
from evsim.ann import forward
from evsim.converters.calibration import calibrate
from evsim.errors import ManifestError
from evsim.graph import relu_caps, validate

DATA = str(files("evsim.data"))
RELU = os.path.join(DATA, "mnist_relu.npz")
TEST = os.path.join(DATA, "mnist_test.npz")
CALIB = os.path.join(DATA, "mnist_calib.npz")
EVSIM = os.environ.get("EVSIM_COMMAND", "evsim")
RELUS = ["act1", "act2", "res_act1", "res_act2"]


def clipped(lam=None):
    """The shipped ReLU model with a maximum on every ReLU (per channel on act2)."""
    graph = evsim.load(RELU)
    lam = lam or {"act1": 1.0, "act2": [0.5 + 0.1 * c for c in range(graph.node("act2").shape[0])],
                  "res_act1": 2.0, "res_act2": 1.5}
    graph.metadata["relu_max"] = lam
    return validate(graph)


def x_test(n=32):
    with np.load(TEST) as f:
        return f["x"][:n], f["y"][:n]


def test_executor_clips_each_relu_at_its_maximum():
    graph = clipped()
    plain = evsim.load(RELU)
    x, _ = x_test()
    got, free = forward(graph, x, wanted=RELUS), forward(plain, x, wanted=RELUS)
    for name, lam in relu_caps(graph).items():
        lam = lam.reshape((1, -1, 1, 1)) if lam.ndim else lam
        assert np.all(got[name] <= lam) and np.any(free[name] > lam)  # the clip is exercised
    np.testing.assert_array_equal(got["act1"], np.minimum(free["act1"], 1.0))  # same input: exactly the clip
    for dtype in (np.float32, np.float64):
        assert forward(graph, x, dtype=dtype)[graph.output].dtype == dtype


def test_conversion_takes_lambda_and_calibration_from_data_stays_below_it():
    graph = clipped()
    snn = evsim.convert(graph)
    caps = relu_caps(graph)
    for name in RELUS:
        np.testing.assert_array_equal(snn.node(name).arrays["threshold"], caps[name])
    no_data = calibrate(graph)
    assert no_data.metadata["calibration"]["threshold_method"] == "clip_lambda"
    assert {v["source"] for v in no_data.metadata["calibration"]["layers"].values()} == {"clip_lambda"}
    with np.load(CALIB) as f:
        xc = f["x"][:64]
    data = calibrate(graph, xc, threshold="max")
    for name in RELUS:
        assert np.all(data.node(name).arrays["threshold"] <= caps[name].max() + 1e-12)
        assert data.metadata["calibration"]["layers"][name]["source"] == "calibration"


def test_a_plain_relu_still_needs_calibration():
    lam = {"act1": 1.0}
    graph = clipped(lam)
    with pytest.raises(evsim.errors.ConversionError, match="act2"):
        evsim.convert(graph)
    with pytest.raises(evsim.errors.CalibrationError, match="3 relu"):
        calibrate(graph)


@pytest.mark.parametrize("bad, found", [
    ({"conv1": 1.0}, "op 'conv2d'"), ({"nope": 1.0}, "no such node"), ({"act1": 0.0}, "values"),
    ({"act1": float("nan")}, "values"), ({"act1": [1.0, 2.0]}, "shape"), ({"act1": "six"}, "not numbers"),
    ([1.0], "list")])
def test_bad_relu_max_is_refused_naming_the_entry(bad, found):
    graph = evsim.load(RELU)
    graph.metadata["relu_max"] = bad
    with pytest.raises(ManifestError, match="relu_max") as err:
        validate(graph)
    assert found in str(err.value)


def test_relu_max_survives_the_file_and_runs_from_the_cli(tmp_path):
    graph = clipped()
    path = tmp_path / "clipped.h5"
    evsim.format.save(graph, path)
    assert evsim.load(path).metadata["relu_max"] == graph.metadata["relu_max"]
    out = subprocess.run([EVSIM, "run", str(path), "--data", TEST, "--samples", "64", "-T", "4", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    x, y = x_test(64)
    assert report["ann_accuracy"] == pytest.approx(float(np.mean(evsim.ann.predict(graph, x) == y)))
    conv = subprocess.run([EVSIM, "convert", str(path), "-o", str(tmp_path / "snn.h5")],
                          capture_output=True, text=True, timeout=300)
    assert conv.returncode == 0, conv.stderr
    snn = evsim.load(tmp_path / "snn.h5")
    assert float(snn.node("act1").arrays["threshold"]) == 1.0
    half = copy.deepcopy(graph)
    half.metadata["relu_max"] = {"act1": 1.0}
    evsim.format.save(half, tmp_path / "half.h5")
    refused = subprocess.run([EVSIM, "convert", str(tmp_path / "half.h5"), "-o", str(tmp_path / "s2.h5")],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "3 relu activation(s) without a maximum" in refused.stderr
