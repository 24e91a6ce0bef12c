"""Every command with every inapplicable, conflicting or out-of-range option: refused up front.

One table: (command line, words the one-line error must contain).  Each case must exit
with a usage error (2) before any work — simulation and calibration are replaced by a
function that fails the test if called — name the option the user typed, print no
traceback and leave no output file.  Paths are placeholders filled per test:
``{qcfs}``, ``{relu}``, ``{test}``, ``{calib}`` (shipped), ``{snn}`` (a converted SNN
file), ``{out}`` (an output path in the test's directory), ``{afile}`` (a regular file).
"""
from __future__ import annotations

from importlib.resources import files

import pytest
from click.testing import CliRunner

import evsim
from evsim.cli.main import main

DATA = files("evsim.data")

RUN = "run {qcfs} --data {test} -T 2 --samples 8"
RUN_SNN = "run {snn} --data {test} -T 2 --samples 8"
CONVERT = "convert {qcfs} -o {out}.h5"
CONVERT_RELU = "convert {relu} -o {out}.h5"

CASES = [
    # run: neuron options that do not apply to the chosen model
    (f"{RUN} --neuron gn --reset zero", ["--reset zero", "--neuron gn", "no reset"]),
    (f"{RUN} --neuron signed-if --reset subtract", ["--reset subtract", "--neuron signed-if"]),
    (f"{RUN} --tau 8", ["--tau 8", "default model", "if", "models with tau: gn"]),
    (f"{RUN} --neuron signed-if --tau 8", ["--tau 8", "--neuron signed-if"]),
    (f"{RUN} --neuron if --neuron-param tau=2", ["--neuron-param tau=2", "--neuron if", "no parameter 'tau'"]),
    (f"{RUN} --neuron gn --neuron-param beta=0.9", ["--neuron-param beta=0.9", "no parameter 'beta'", "tau"]),
    (f"{RUN} --neuron gn --tau 2 --neuron-param tau=3", ["--tau", "--neuron-param tau", "both set tau"]),
    (f"{RUN} --neuron gn --neuron-param tau=2 --neuron-param tau=3", ["--neuron-param tau", "twice"]),
    (f"{RUN} --neuron gn --neuron-param tau", ["--neuron-param", "NAME=VALUE"]),
    (f"{RUN} --neuron gn --neuron-param tau=0", ["--neuron-param", "tau=0", "1..1024"]),
    (f"{RUN} --neuron gn --tau 2000", ["--tau", "tau=2000", "1..1024"]),
    (f"{RUN} --neuron gn --tau 2.5", ["--tau", "whole number"]),
    (f"{RUN} --neuron gn --tau ٨", ["--tau", "whole number"]),
    (f"{RUN} --neuron bursting", ["--neuron", "bursting"]),
    # run: an SNN file fixes its neurons; there is no ANN to evaluate
    (f"{RUN_SNN} --neuron gn", ["--neuron gn", "SNN file", "convert the ANN again"]),
    (f"{RUN_SNN} --v0 zero", ["--v0 zero", "SNN file"]),
    (f"{RUN_SNN} --reset zero", ["--reset zero", "SNN file"]),
    (f"{RUN_SNN} --tau 4", ["--tau 4", "SNN file"]),
    (f"{RUN_SNN} --neuron-param tau=4", ["--neuron-param tau=4", "SNN file"]),
    (f"{RUN_SNN} --no-ann", ["--no-ann", "SNN file", "no ANN"]),
    # run: outputs
    (f"{RUN} --report - --json", ["--report -", "--json", "stdout"]),
    (f"{RUN} --report /dev/null/x.json", ["--report", "/dev/null is not a directory"]),
    (f"{RUN} --report {{afile}}/r.json", ["--report", "is not a directory"]),
    (f"{RUN} --report {{tmp}}", ["--report", "directory"]),
    (f"{RUN} --report {{qcfs}}", ["--report", "input file"]),
    (f"{RUN} --report /dev/null", ["--report", "device"]),
    # run: numbers (ASCII digits, finite, bounded)
    (f"{RUN} --e-mac -1", ["--e-mac", "negative"]),
    (f"{RUN} --e-ac nan", ["--e-ac", "finite number"]),
    (f"{RUN} --e-ac inf", ["--e-ac", "finite number"]),
    (f"{RUN} --e-mac 1e999", ["--e-mac", "finite number"]),
    ("run {qcfs} --data {test} -T 0", ["-T", "0 is not in the range"]),
    ("run {qcfs} --data {test} -T 100001", ["-T", "100001 is not in the range"]),
    ("run {qcfs} --data {test} -T ١٢", ["-T", "whole number"]),
    ("run {qcfs} --data {test} --batch-size 1_0", ["--batch-size", "whole number"]),
    ("run {qcfs} --data {test} --samples 0", ["--samples", "not in the range"]),
    # convert: initial potential given twice
    (f"{CONVERT} --v0 zero --potential half", ["--v0 zero", "--potential half", "drop --v0"]),
    (f"{CONVERT} --v0 zero --potential data --calib-data {{calib}} -T 8", ["--v0 zero", "--potential data"]),
    # convert: calibration options without what they apply to
    (f"{CONVERT} --channelwise", ["--channelwise", "--threshold"]),
    (f"{CONVERT} --include-zeros", ["--include-zeros", "--threshold"]),
    (f"{CONVERT} --threshold max --include-zeros --calib-data {{calib}}", ["--include-zeros", "--threshold max"]),
    (f"{CONVERT} --keep-lambda", ["--keep-lambda", "--threshold"]),
    (f"{CONVERT} --calib-samples 10", ["--calib-samples", "--calib-data"]),
    (f"{CONVERT} --threshold p99.9", ["--threshold p99.9", "--calib-data"]),
    (f"{CONVERT} --potential data -T 8", ["--potential data", "--calib-data"]),
    (f"{CONVERT} --bias-calibration -T 8", ["--bias-calibration", "--calib-data"]),
    (f"{CONVERT} --potential data --calib-data {{calib}}", ["--potential data", "-T"]),
    (f"{CONVERT} --bias-calibration --calib-data {{calib}}", ["--bias-calibration", "-T"]),
    (f"{CONVERT} -T 8", ["-T 8", "--potential data", "--bias-calibration"]),
    (f"{CONVERT} -T 8 --calib-data {{calib}} --channelwise --include-zeros", ["--channelwise"]),
    (f"{CONVERT} --data-samples 10", ["--data-samples", "--potential data"]),
    (f"{CONVERT} --calib-data {{calib}}", ["--calib-data", "not used"]),
    (f"{CONVERT} --threshold p200 --calib-data {{calib}}", ["--threshold"]),
    # convert: options that the model file does not allow
    ("convert {snn} -o {out}.h5", ["SNN file", "evsim run"]),
    (f"{CONVERT_RELU}", ["relu", "--threshold"]),
    (f"{CONVERT_RELU} --threshold p99.9 --keep-lambda --calib-data {{calib}}", ["--keep-lambda", "no qcfs"]),
    (f"{CONVERT} --threshold p99.9 --keep-lambda --calib-data {{calib}}", ["--keep-lambda", "no relu"]),
    (f"{CONVERT} --neuron gn --reset zero", ["--reset zero", "--neuron gn"]),
    (f"{CONVERT} --tau 4", ["--tau 4", "if"]),
    # convert: outputs
    ("convert {qcfs} -o {out}.txt", ["--output", ".h5 or .npz"]),
    ("convert {qcfs} -o /dev/null/x.h5", ["--output", "/dev/null is not a directory"]),
    ("convert {qcfs} -o {qcfs}", ["--output", "input file"]),
    # demo, plot, examples
    ("demo --report-dir {afile}", ["--report-dir", "not a directory"]),
    ("demo --report-dir {afile}/sub", ["--report-dir", "is not a directory"]),
    ("demo -T 0", ["-T", "not in the range"]),
    ("demo --samples x", ["--samples", "whole number"]),
    ("plot {report} -o {out}.txt", [".png, .svg or .pdf"]),
    ("plot {report} -o /dev/null/f.png", ["--output", "/dev/null is not a directory"]),
    ("examples --dir --json", ["--dir", "--json"]),
]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    base = tmp_path_factory.mktemp("paths")
    snn = base / "snn.npz"
    evsim.save(evsim.convert(evsim.load(DATA / "mnist_qcfs.npz")), snn)
    afile = base / "afile"
    afile.write_text("a regular file\n")
    report = base / "r.json"
    report.write_text('{"T": 1, "layers": [{"name": "a", "firing_rate": 0.1, "sops": 1}], "accuracy": null}')
    return {"qcfs": DATA / "mnist_qcfs.npz", "relu": DATA / "mnist_relu.npz", "test": DATA / "mnist_test.npz",
            "calib": DATA / "mnist_calib.npz", "snn": snn, "afile": afile, "report": report}


@pytest.fixture
def no_work(monkeypatch):
    """Simulation and calibration fail the test if reached."""
    def boom(*args, **kwargs):
        raise AssertionError("work started before the options were checked")

    import evsim.converters.calibration as calibration

    monkeypatch.setattr(evsim, "simulate", boom, raising=False)
    monkeypatch.setattr(calibration, "calibrate", boom)


@pytest.mark.parametrize("line, words", CASES, ids=[c[0][:70] for c in CASES])
def test_refused_before_any_work(line, words, paths, tmp_path, no_work, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fill = {k: str(v) for k, v in paths.items()} | {"out": str(tmp_path / "out"), "tmp": str(tmp_path)}
    args = [part.format(**fill) for part in line.split()]
    before = set(tmp_path.iterdir())
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "work started" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1, result.output
    for word in words:
        assert word.format(**fill) in error[0], (word, error[0])
    assert "ConversionOptions(" not in error[0]
    assert set(tmp_path.iterdir()) == before  # nothing written


def test_every_command_is_covered():
    commands = {line.split()[0] for line, _ in CASES}
    assert commands >= set(main.commands) - {"inspect", "warmup"}  # these two have no option to misuse
