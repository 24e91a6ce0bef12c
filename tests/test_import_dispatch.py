"""Content dispatch (evsim/importers.py): which importer reads a file, plug-in registration, refusals,
and the CLI commands on imported models."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import evsim
from evsim import importers
from evsim.cli.main import main
from evsim.errors import ContainerError, ConversionError
from evsim.graph import Graph, InputSpec, Node

pytest.importorskip("onnx")  # the test extra installs it

FIXTURES = Path(__file__).parent / "fixtures"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("file, name", [
    ("onnx_relu.onnx", "onnx"), ("keras_functional.keras", "keras"), ("keras_functional.h5", "keras"),
    ("keras2_functional.h5", "keras"), ("onnx_csqcfs.twin.npz", "evsim-v1")])
def test_identify_by_content(tmp_path, file, name):
    assert importers.identify(FIXTURES / file).name == name
    renamed = tmp_path / "model.dat"  # extensions are not trusted
    shutil.copy(FIXTURES / file, renamed)
    if name != "evsim-v1":  # format v1 keeps its container-by-extension rule (docs/format.md)
        assert evsim.load(renamed).importer == name


def test_entry_points_register_the_importers():
    names = [i.name for i in importers.available_importers()]
    assert names[0] == "evsim-v1" and {"onnx", "keras"} <= set(names)
    from importlib.metadata import entry_points

    assert {ep.name for ep in entry_points(group=importers.ENTRY_POINT_GROUP)} >= {"onnx", "keras"}


def test_v1_files_still_load_with_the_v1_reader(tmp_path):
    twin = evsim.load(FIXTURES / "onnx_qcfs_seeds.twin.npz")
    assert twin.importer == "evsim-v1" and "imported_from" not in twin.metadata
    evsim.save(twin, tmp_path / "twin.h5")
    again = evsim.load(tmp_path / "twin.h5")
    assert again == twin and again.importer == "evsim-v1"


def test_imported_model_saves_as_format_v1(tmp_path):
    graph = evsim.load(FIXTURES / "onnx_relu.onnx")
    evsim.save(graph, tmp_path / "relu.npz")
    again = evsim.load(tmp_path / "relu.npz")
    assert again == graph and again.importer == "evsim-v1"
    assert again.metadata["imported_from"]["file"] == "onnx_relu.onnx"


@pytest.mark.parametrize("content, what", [(b"", "an empty file"), (b"hello world" * 10, "an unrecognised file"),
                                           (b"PK\x05\x06" + b"\0" * 18, "a zip archive of another kind")])
def test_unrecognised_file(tmp_path, content, what):
    path = tmp_path / "model.bin"
    path.write_bytes(content)
    with pytest.raises(ContainerError) as info:
        evsim.load(path)
    message = str(info.value)
    assert str(path) in message and what in message and "ONNX" in message and "Keras" in message
    assert "evsim format v1" in message and "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(ContainerError, match="nothing at that path"):
        evsim.load(tmp_path / "nope.onnx")


@pytest.fixture
def registry(monkeypatch):
    """The registry, restored after the test."""
    monkeypatch.setattr(importers, "_REGISTRY", dict(importers._REGISTRY))
    return importers._REGISTRY


def tiny_graph(source):
    node = Node("fc", "linear", ("input",), {}, {"weight": np.ones((2, 3), np.float32)})
    return evsim.validate(Graph(InputSpec((3,)), [node], "fc", source=str(source)))


def test_register_a_plugin(tmp_path, registry):
    calls = []

    def read(path, *, limit=None, scale=1.0):
        calls.append((path, limit, scale))
        return tiny_graph(path)

    plugin = importers.Importer("toy", lambda p, head: head.startswith(b"TOY1"), read, "toy files",
                                frozenset({"scale"}))
    importers.register_importer(plugin)
    with pytest.raises(ConversionError, match="duplicate"):
        importers.register_importer(importers.Importer("toy", plugin.sniff, read))
    importers.register_importer(importers.Importer("toy", plugin.sniff, read, options=frozenset({"scale"})),
                                replace=True)
    path = tmp_path / "m.toy"
    path.write_bytes(b"TOY1...")
    graph = evsim.load(path, scale=2.0, limit=123)
    assert graph.importer == "toy" and calls == [(path, 123, 2.0)]
    with pytest.raises(ConversionError, match="option 'shift'"):
        evsim.load(path, shift=1)


def test_a_failing_sniffer_says_no(tmp_path, registry):
    def boom(path, head):
        raise RuntimeError("broken plug-in")

    importers.register_importer(importers.Importer("broken", boom, lambda p, **k: None))
    assert evsim.load(FIXTURES / "onnx_relu.onnx").importer == "onnx"


# --------------------------------------------------------------------------- the CLI on imported models
@pytest.fixture(scope="module")
def mnist_like(tmp_path_factory):
    """The QCFS fixture's inputs, labelled with the framework's predictions."""
    with np.load(FIXTURES / "onnx_qcfs_seeds.expected.npz") as f:
        x, logits = f["x"], f["logits"]
    path = tmp_path_factory.mktemp("data") / "data.npz"
    np.savez(path, x=x, y=logits.argmax(1))
    return path


def test_cli_inspect_says_which_importer():
    result = invoke("inspect", FIXTURES / "onnx_qcfs_seeds.onnx")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].endswith("(read by the onnx importer)")
    info = json.loads(invoke("inspect", FIXTURES / "keras_sequential.keras", "--json").output)
    assert info["importer"] == "keras"


def test_cli_run_and_convert_onnx(tmp_path, mnist_like):
    result = invoke("run", FIXTURES / "onnx_qcfs_seeds.onnx", "--data", mnist_like, "-T", "8")
    assert result.exit_code == 0, result.output
    assert "(ANN 100.00 %)" in result.output  # labels are the framework's own predictions
    out = tmp_path / "snn.h5"
    result = invoke("convert", FIXTURES / "onnx_qcfs_seeds.onnx", "-o", out)
    assert result.exit_code == 0, result.output
    assert evsim.load(out).kind == "snn"


def test_cli_activation_option(tmp_path):
    result = invoke("inspect", FIXTURES / "onnx_relu.onnx", "--activation", "X=sigmoid")
    assert result.exit_code == 1 and "qcfs:WEIGHT_NAME,LEVELS" in result.output
    result = invoke("inspect", FIXTURES / "onnx_qcfs_seeds.twin.npz", "--activation", "X=relu")
    assert result.exit_code == 1 and "option 'activations'" in result.output
    result = invoke("inspect", FIXTURES / "keras_functional.h5", "--activation", "Unused=relu")
    assert result.exit_code == 0, result.output
