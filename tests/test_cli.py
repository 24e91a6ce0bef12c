"""`evsim run`, `convert` and `plot` end to end through click's CliRunner."""
import json
from importlib.resources import files

import numpy as np
import pytest
from click.testing import CliRunner

import evsim
from evsim.cli.main import main
from evsim.data_io import load_data

DATA = files("evsim.data")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    x, y = load_data(DATA / "mnist_test.npz", (1, 28, 28), 10, samples=40)
    path = tmp_path_factory.mktemp("data") / "small.h5"
    import h5py

    with h5py.File(path, "w") as f:
        f["x"], f["y"] = x, y
    return path, x, y


def test_run_prints_accuracy_table_and_writes_report(small_data, tmp_path):
    path, x, y = small_data
    report = tmp_path / "r.json"
    result = invoke("run", DATA / "mnist_qcfs.npz", "--data", path, "-T", 8, "--report", report,
                    "--neuron", "gn", "--tau", 2)
    assert result.exit_code == 0, result.output
    for t in ("1", "2", "4", "8"):
        assert any(line.split()[:1] == [t] for line in result.output.splitlines())
    r = json.loads(report.read_text())
    api = evsim.simulate(DATA / "mnist_qcfs.npz", x, y, T=8, options=evsim.ConversionOptions("gn", tau=2))
    assert r["accuracy"] == api.accuracy
    assert r["settings"]["conversion"]["neuron"] == "gn" and r["settings"]["conversion"]["tau"] == 2
    assert r["ann_accuracy"] == pytest.approx(float((evsim.ann.predict(evsim.load(DATA / "mnist_qcfs.npz"), x) == y).mean()))
    assert [l["name"] for l in r["layers"]] == ["act1", "act2", "res_act1", "res_act2"]
    assert r["totals"]["sops"] == pytest.approx(api.sops)


def test_convert_then_run_reproduces_the_saved_network(small_data, tmp_path):
    path, x, y = small_data
    snn_path = tmp_path / "snn.npz"
    result = invoke("convert", DATA / "mnist_relu.npz", "-o", snn_path, "--threshold", "p99.9", "--channelwise",
                    "--calib-data", DATA / "mnist_calib.npz", "--calib-samples", 200)
    assert result.exit_code == 0, result.output
    snn = evsim.load(snn_path)
    assert snn.kind == "snn" and snn.metadata["calibration"]["channelwise"] is True
    report = tmp_path / "r.json"
    assert invoke("run", snn_path, "--data", path, "-T", 4, "--report", report,
                  "--precision", "float64").exit_code == 0
    again = evsim.simulate(snn, x, y, T=4, precision="float64")
    assert json.loads(report.read_text())["accuracy"] == again.accuracy


@pytest.mark.parametrize("args,expect", [
    (["convert", DATA / "mnist_relu.npz", "-o", "x.h5"], "calib"),
    (["run", DATA / "mnist_qcfs.npz", "--data", DATA / "mnist_calib.npz", "--neuron", "gn", "--reset", "zero"],
     "reset"),
])
def test_clean_one_line_errors(args, expect, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(*args)
    assert result.exit_code != 0
    assert "Traceback" not in result.output and expect in result.output.lower()
    assert not (tmp_path / "x.h5").exists()


def test_run_refuses_bad_data(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.full((3, 1, 28, 28), np.nan), y=np.zeros(3, int))
    result = invoke("run", DATA / "mnist_qcfs.npz", "--data", bad, "-T", 2)
    assert result.exit_code == 1 and "finite" in result.output and "Traceback" not in result.output


def test_plot_writes_a_figure_or_says_what_to_install(small_data, tmp_path):
    path, _, _ = small_data
    report = tmp_path / "r.json"
    assert invoke("run", DATA / "mnist_qcfs.npz", "--data", path, "-T", 4, "--report", report).exit_code == 0
    result = invoke("plot", report, "-o", tmp_path / "fig.png")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert result.exit_code == 1 and "evsim[plot]" in result.output
    else:
        assert result.exit_code == 0, result.output
        assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
