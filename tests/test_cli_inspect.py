"""``evsim inspect`` (table and --json), clean one-line errors, --version/--help, and a light import."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from evsim.cli.main import main
from test_format import (ANN_MACS, ANN_NEURONS, ANN_PARAMS, ANN_SHAPES, CASE_PARAMS, EXTS, SNN_MACS, SNN_NEURONS,
                         SNN_PARAMS, ann_model, snn_model, write_model)


@pytest.fixture(autouse=True)
def _default_memory_limit(monkeypatch):
    monkeypatch.delenv("EVSIM_MEMORY_LIMIT", raising=False)


def invoke(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def model_file(tmp_path, ext, base=ann_model):
    manifest, arrays = base()
    return write_model(tmp_path / f"model{ext}", json.dumps(manifest), arrays)


@pytest.mark.parametrize("ext", EXTS)
def test_inspect_table(tmp_path, ext):
    path = model_file(tmp_path, ext)
    result = invoke("inspect", path)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{path}: kind ann, input 2x6x6, output 'fc2'"
    assert lines[1].split() == ["node", "op", "output", "params", "MACs"]
    rows = {line.split()[0]: line.split() for line in lines[3:-1]}
    assert list(rows) == list(ANN_SHAPES)
    assert rows["conv1"] == ["conv1", "conv2d", "4x6x6", "76", "2,592"]
    assert rows["pool1"] == ["pool1", "avgpool2d", "4x3x3", "0", "0"]
    assert rows["fc1"] == ["fc1", "linear", "10", "370", "360"]
    assert lines[-1] == (f"total: {ANN_PARAMS:,} parameters (all stored array elements, incl. BatchNorm running "
                         f"statistics; {ANN_PARAMS - 8:,} trainable), {ANN_MACS:,} MACs (conv/linear), "
                         f"{ANN_NEURONS:,} neurons")


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize("base, totals", [
    (ann_model, {"macs": ANN_MACS, "params": ANN_PARAMS, "neurons": ANN_NEURONS, "trainable": ANN_PARAMS - 8}),
    (snn_model, {"macs": SNN_MACS, "params": SNN_PARAMS, "neurons": SNN_NEURONS, "trainable": SNN_PARAMS}),
], ids=["ann", "snn"])
def test_inspect_json(tmp_path, ext, base, totals):
    path = model_file(tmp_path, ext, base)
    result = invoke("inspect", path, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["totals"] == totals
    assert info["model"] == str(path) and info["output"] == base()[0]["output"]
    assert info["kind"] == base()[0]["kind"] and info["input"] == base()[0]["input"]["shape"]
    assert [n["name"] for n in info["nodes"]] == [n["name"] for n in base()[0]["nodes"]]
    assert sum(n["macs"] for n in info["nodes"]) == totals["macs"]
    assert sum(n["params"] for n in info["nodes"]) == totals["params"]


@pytest.mark.parametrize("case, ext", CASE_PARAMS)
def test_inspect_malformed_file(case, ext, tmp_path, monkeypatch):
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    path = case.build(tmp_path, ext)
    result = invoke("inspect", path)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an uncaught exception
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and str(path) in lines[0]
    assert result.stdout == ""  # the error goes to stderr


def test_inspect_json_malformed_file(tmp_path):
    path = tmp_path / "model.npz"
    path.write_bytes(b"not a zip")
    result = invoke("inspect", path, "--json")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and str(path) in result.stderr


def test_version_and_help():
    result = invoke("--version")
    assert result.exit_code == 0 and "0.1.0" in result.output
    for flag in ("--help", "-h"):
        result = invoke(flag)
        assert result.exit_code == 0 and "inspect" in result.output and "Usage" in result.output
    result = invoke("inspect", "--help")
    assert result.exit_code == 0 and "--json" in result.output


def fresh_python(code: str, tmp_path) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_help_does_not_import_numba(tmp_path):
    code = ("import sys\nimport evsim.cli.main as m\n"
            "try:\n    m.main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print([k for k in sys.modules if k == 'numba' or k.startswith('numba.')])")
    out = fresh_python(code, tmp_path)
    assert "Usage" in out and out.strip().splitlines()[-1] == "[]"


def test_inspect_does_not_import_numba(tmp_path):
    path = model_file(tmp_path, ".npz")
    code = ("import sys\nimport evsim.cli.main as m\n"
            f"try:\n    m.main(['inspect', {str(path)!r}])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print(sorted(k for k in sys.modules if k == 'numba' or k.startswith('numba.')))")
    out = fresh_python(code, tmp_path)
    assert "total:" in out and out.strip().splitlines()[-1] == "[]"
