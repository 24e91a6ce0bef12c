"""Model format v1 (docs/format.md): round trips, hand-written files, and every validation error.

The malformed-file cases (:data:`CASES`) are plain data plus a builder so that
``test_cli_inspect.py`` can run the same files through ``evsim inspect``.
"""
from __future__ import annotations

import json
import os
import tempfile
import tracemalloc
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import evsim
from evsim.errors import (ArrayError, ContainerError, EvsimError, GraphError, ManifestError, ModelFileError,
                          ResourceLimitError)
from evsim.format import CONTAINERS, manifest_from_graph, read_container, save, write_container
from evsim.summary import summarize
from netgen import random_network

EXTS = [".npz", ".h5"]


@pytest.fixture(autouse=True)
def _default_memory_limit(monkeypatch):
    monkeypatch.delenv("EVSIM_MEMORY_LIMIT", raising=False)


# --------------------------------------------------------------------------- writers with NumPy/h5py alone
def write_npz(path, text: str, arrays: dict, allow_pickle: bool = False) -> Path:
    """The contract's .npz: entry ``__evsim__`` (0-d unicode) plus one entry per array."""
    np.savez(path, __evsim__=np.array(text), allow_pickle=allow_pickle, **arrays)
    return Path(path)


def write_h5(path, text: str, arrays: dict) -> Path:
    """The contract's .h5: root attribute ``evsim`` plus datasets in ``/arrays``."""
    with h5py.File(path, "w") as f:
        f.attrs["evsim"] = text
        group = f.create_group("arrays")
        for name, arr in arrays.items():
            group.create_dataset(name, data=arr)
    return Path(path)


def write_model(path, text, arrays) -> Path:
    path = Path(path)
    return (write_npz if path.suffix == ".npz" else write_h5)(path, text, arrays)


# --------------------------------------------------------------------------- hand-built reference models
def ann_model() -> tuple[dict, dict]:
    """conv-bn-qcfs-avgpool-flatten-linear-relu-linear on (2, 6, 6); summary computed by hand below."""
    rng = np.random.default_rng(0)
    arrays = {
        "conv1.weight": rng.normal(size=(4, 2, 3, 3)).astype(np.float32),
        "conv1.bias": rng.normal(size=4).astype(np.float32),
        "bn1.mean": np.zeros(4), "bn1.var": np.ones(4), "bn1.gamma": np.ones(4), "bn1.beta": np.zeros(4),
        "act1.threshold": np.array(1.5),
        "fc1.weight": rng.normal(size=(10, 36)), "fc1.bias": np.zeros(10),
        "fc2.weight": rng.normal(size=(3, 10)).astype(np.float32),
    }
    manifest = {
        "format": "evsim-model", "version": 1, "kind": "ann",
        "input": {"shape": [2, 6, 6], "scale": 1 / 255, "mean": [0.5, 0.4], "std": [0.25, 0.2]},
        "nodes": [
            {"name": "conv1", "op": "conv2d", "inputs": ["input"], "weight": "conv1.weight", "bias": "conv1.bias",
             "padding": 1},
            {"name": "bn1", "op": "batchnorm", "inputs": ["conv1"], "mean": "bn1.mean", "var": "bn1.var",
             "gamma": "bn1.gamma", "beta": "bn1.beta", "eps": 1e-5},
            {"name": "act1", "op": "qcfs", "inputs": ["bn1"], "threshold": "act1.threshold", "levels": 4},
            {"name": "pool1", "op": "avgpool2d", "inputs": ["act1"], "kernel": 2},
            {"name": "flat", "op": "flatten", "inputs": ["pool1"]},
            {"name": "fc1", "op": "linear", "inputs": ["flat"], "weight": "fc1.weight", "bias": "fc1.bias"},
            {"name": "act2", "op": "relu", "inputs": ["fc1"]},
            {"name": "fc2", "op": "linear", "inputs": ["act2"], "weight": "fc2.weight"},
        ],
        "output": "fc2",
        "metadata": {"source": "hand-written test model", "nested": {"k": [1, 2.5, None]}},
    }
    return manifest, arrays


# conv1: 4*6*6 outputs x (2*3*3) = 2592; fc1: 10*36 = 360; fc2: 3*10 = 30
ANN_MACS = 4 * 6 * 6 * 2 * 3 * 3 + 10 * 36 + 3 * 10
ANN_PARAMS = (4 * 2 * 9 + 4) + 4 * 4 + 1 + (10 * 36 + 10) + 3 * 10
ANN_NEURONS = 4 * 6 * 6 + 10
ANN_SHAPES = {"conv1": (4, 6, 6), "bn1": (4, 6, 6), "act1": (4, 6, 6), "pool1": (4, 3, 3), "flat": (36,),
              "fc1": (10,), "act2": (10,), "fc2": (3,)}


def snn_model() -> tuple[dict, dict]:
    """conv-neuron-linear on (1, 5, 5); the linear reads the (C, H, W) neuron output directly."""
    rng = np.random.default_rng(1)
    arrays = {"conv1.weight": rng.normal(size=(3, 1, 3, 3)), "n1.threshold": np.array([1.0, 0.5, 2.0]),
              "n1.v0": np.full((3, 3, 3), 0.25), "fc.weight": rng.normal(size=(2, 27)), "fc.bias": np.zeros(2)}
    manifest = {
        "format": "evsim-model", "version": 1, "kind": "snn", "input": {"shape": [1, 5, 5]},
        "nodes": [
            {"name": "conv1", "op": "conv2d", "inputs": ["input"], "weight": "conv1.weight"},
            {"name": "n1", "op": "neuron", "inputs": ["conv1"], "model": "if", "threshold": "n1.threshold",
             "v0": "n1.v0", "reset": "subtract"},
            {"name": "fc", "op": "linear", "inputs": ["n1"], "weight": "fc.weight", "bias": "fc.bias"},
        ],
        "output": "fc",
        "metadata": {"calibration": {"threshold": "percentile", "T": 32}},
    }
    return manifest, arrays


SNN_MACS = 3 * 3 * 3 * 9 + 2 * 27
SNN_PARAMS = 27 + 3 + 27 + 54 + 2
SNN_NEURONS = 27
BASES = {"ann": ann_model, "snn": snn_model}


def node(manifest: dict, name: str) -> dict:
    return next(n for n in manifest["nodes"] if n["name"] == name)


def is_node(manifest: dict, name: str) -> bool:
    return any(n["name"] == name for n in manifest["nodes"])


# --------------------------------------------------------------------------- malformed files
@dataclass
class Case:
    """One malformed file: ``build(dir, ext)`` writes it; loading raises ``exc`` naming ``needles``."""

    id: str
    build: Callable[[Path, str], Path]
    exc: type
    needles: tuple = ()
    exts: tuple = tuple(EXTS)
    env: dict = field(default_factory=dict)


def mutated(fn, base="ann"):
    """A builder: the base model changed by ``fn(manifest, arrays)`` (which may return raw manifest text)."""
    def build(directory: Path, ext: str) -> Path:
        manifest, arrays = BASES[base]()
        text = fn(manifest, arrays)
        return write_model(directory / f"model{ext}", json.dumps(manifest) if text is None else text, arrays)
    return build


def setter(path: tuple, value, base="ann"):
    """Set ``manifest[path...] = value`` (a node by name when the first key is a node name)."""
    def fn(m, a):
        target = m
        keys = list(path)
        if is_node(m, keys[0]):
            target, keys = node(m, keys[0]), keys[1:]
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
    return mutated(fn, base)


def set_array(name, value, base="ann"):
    def fn(m, a):
        a[name] = value
    return mutated(fn, base)


def add_nodes(*extra, base="ann", output=None):
    def fn(m, a):
        m["nodes"].extend(extra)
        if output:
            m["output"] = output
    return mutated(fn, base)


def raw_bytes(data: bytes, ext=None):
    def build(directory, e):
        path = directory / f"model{ext or e}"
        path.write_bytes(data)
        return path
    return build


def truncated(directory, ext):
    manifest, arrays = ann_model()
    path = write_model(directory / f"full{ext}", json.dumps(manifest), arrays)
    data = path.read_bytes()
    out = directory / f"model{ext}"
    out.write_bytes(data[: len(data) // 2])
    return out


def zip_with_txt(directory, ext):
    path = directory / "model.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes.txt", "hello")
    return path


def npz_without_manifest(directory, ext):
    path = directory / "model.npz"
    np.savez(path, w=np.ones(3))
    return path


def npz_manifest_not_0d(directory, ext):
    manifest, arrays = ann_model()
    path = directory / "model.npz"
    np.savez(path, __evsim__=np.array([json.dumps(manifest)]), **arrays)
    return path


def h5_without_attribute(directory, ext):
    path = directory / "model.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("arrays/conv1.weight", data=np.ones((4, 2, 3, 3)))
    return path


def h5_arrays_is_dataset(directory, ext):
    manifest, _ = ann_model()
    path = directory / "model.h5"
    with h5py.File(path, "w") as f:
        f.attrs["evsim"] = json.dumps(manifest)
        f.create_dataset("arrays", data=np.ones(3))
    return path


class Unpickled:
    """Unpickling this creates the file ``MARKER`` (it must never happen)."""

    marker: Path | None = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def npz_object_array(directory, ext):
    Unpickled.marker = directory / "UNPICKLED"
    manifest, arrays = ann_model()
    arrays["conv1.weight"] = np.array([Unpickled(), 1], dtype=object)
    return write_npz(directory / "model.npz", json.dumps(manifest), arrays, allow_pickle=True)


def h5_object_array(directory, ext):
    manifest, arrays = ann_model()
    arrays["conv1.weight"] = np.array(["a", "b"], dtype=h5py.string_dtype())
    return write_h5(directory / "model.h5", json.dumps(manifest), arrays)


HUGE = (2**21, 2**10)  # 16 GiB of float64, above the default 8 GiB limit


def huge_header(directory, ext):
    """A .npy header claiming a 16 GiB array, with 16 bytes of payload."""
    manifest, _ = ann_model()
    path = directory / f"model{ext}"
    if ext == ".npz":
        with zipfile.ZipFile(path, "w") as z:
            with z.open("__evsim__.npy", "w") as f:
                np.lib.format.write_array(f, np.array(json.dumps(manifest)))
            with z.open("conv1.weight.npy", "w") as f:
                np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": HUGE})
                f.write(b"\0" * 16)
    else:  # chunked dataset, never written: a tiny file declaring 16 GiB
        with h5py.File(path, "w") as f:
            f.attrs["evsim"] = json.dumps(manifest)
            f.create_dataset("arrays/conv1.weight", shape=HUGE, dtype="f8", chunks=(1024, 1024))
    return path


def two_large_arrays(directory, ext):
    """Each array fits the limit (100 KiB), together they do not."""
    manifest, _ = ann_model()
    return write_model(directory / f"model{ext}", json.dumps(manifest), {"a": np.ones(7500), "b": np.ones(7500)})


def del_key(*path, base="ann"):
    def fn(m, a):
        target, keys = (node(m, path[0]), path[1:]) if is_node(m, path[0]) else (m, path)
        for k in keys[:-1]:
            target = target[k]
        del target[keys[-1]]
    return mutated(fn, base)


def rename_node(old, new):
    def fn(m, a):
        node(m, old)["name"] = new
    return mutated(fn)


CASES = [
    # JSON and top level
    Case("not-json", mutated(lambda m, a: "{not json"), ManifestError, ("manifest", "JSON")),
    Case("json-array", mutated(lambda m, a: "[1, 2]"), ManifestError, ("manifest", "JSON object")),
    Case("deeply-nested-json", mutated(lambda m, a: "[" * 100_000 + "]" * 100_000), ManifestError, ("manifest",)),
    Case("wrong-format-name", setter(("format",), "onnx"), ManifestError, ("'format'", "onnx")),
    Case("version-2", setter(("version",), 2), ManifestError, ("'version'",)),
    Case("version-string", setter(("version",), "1"), ManifestError, ("'version'", "'1'")),
    Case("version-true", setter(("version",), True), ManifestError, ("'version'",)),
    Case("version-float", setter(("version",), 1.0), ManifestError, ("'version'",)),
    Case("unknown-top-key", setter(("extra",), 1), ManifestError, ("extra", "metadata")),
    Case("unknown-kind", setter(("kind",), "cnn"), ManifestError, ("kind", "cnn")),
    # nodes: keys, attributes, ops
    Case("unknown-node-key", setter(("conv1", "weights_layout"), "OIHW"), ManifestError,
         ("conv1", "weights_layout")),
    Case("unknown-attribute-relu", setter(("act2", "levels"), 4), ManifestError, ("act2", "levels")),
    Case("unknown-op", setter(("act2", "op"), "softmax"), ManifestError, ("act2", "softmax")),
    Case("op-not-a-string", setter(("act2", "op"), ["relu"]), ManifestError, ("act2",)),
    Case("bad-stride", setter(("conv1", "stride"), 0), ManifestError, ("conv1", "stride")),
    Case("node-not-object", mutated(lambda m, a: m["nodes"].append("relu")), ManifestError, ("nodes[8]",)),
    # arrays
    Case("missing-array-role", del_key("conv1", "weight"), ArrayError, ("node 'conv1'", "'weight'", "none")),
    Case("unused-array", set_array("junk", np.ones(3)), ArrayError, ("unused", "junk")),
    Case("array-on-op-without-arrays", setter(("act2", "threshold"), "act1.threshold"), ManifestError,
         ("act2", "threshold")),
    Case("array-absent", setter(("conv1", "weight"), "conv1.W"), ArrayError, ("conv1", "conv1.W")),
    Case("dtype-int64", set_array("conv1.weight", np.ones((4, 2, 3, 3), np.int64)), ArrayError,
         ("conv1", "conv1.weight", "int64")),
    Case("dtype-float16", set_array("conv1.weight", np.ones((4, 2, 3, 3), np.float16)), ArrayError,
         ("conv1", "conv1.weight", "float16")),
    Case("dtype-object-pickle", npz_object_array, ContainerError, ("conv1.weight", "object"), (".npz",)),
    Case("dtype-object-h5", h5_object_array, ContainerError, ("conv1.weight",), (".h5",)),
    Case("nan-weight", set_array("fc1.weight", np.full((10, 36), np.nan)), ArrayError, ("fc1", "fc1.weight", "NaN")),
    Case("inf-weight", set_array("conv1.bias", np.array([0, np.inf, 0, 0])), ArrayError, ("conv1", "conv1.bias")),
    Case("qcfs-threshold-zero", set_array("act1.threshold", np.array(0.0)), ArrayError, ("act1", "act1.threshold")),
    Case("qcfs-threshold-negative", set_array("act1.threshold", np.array(-1.0)), ArrayError, ("act1",)),
    Case("neuron-threshold-zero", set_array("n1.threshold", np.array([1.0, 0.0, 1.0]), base="snn"), ArrayError,
         ("n1", "n1.threshold")),
    Case("neuron-threshold-negative", set_array("n1.threshold", np.array(-0.5), base="snn"), ArrayError,
         ("n1", "n1.threshold")),
    Case("levels-zero", setter(("act1", "levels"), 0), ManifestError, ("act1", "levels")),
    Case("levels-missing", del_key("act1", "levels"), ManifestError, ("act1", "levels")),
    Case("bias-shape", set_array("conv1.bias", np.zeros(5)), ArrayError, ("conv1", "conv1.bias", "(4,)", "(5,)")),
    Case("threshold-shape", set_array("n1.threshold", np.ones(2), base="snn"), ArrayError, ("n1", "(3,)", "(2,)")),
    # shapes
    Case("conv-weight-shape", set_array("conv1.weight", np.ones((4, 3, 3, 3))), GraphError,
         ("conv1", "(4, 2, 3, 3)", "(4, 3, 3, 3)")),
    Case("conv-weight-zero-kernel", set_array("conv1.weight", np.ones((4, 2, 0, 3))), GraphError,
         ("conv1", "(4, 2, 0, 3)")),
    Case("linear-in-features", set_array("fc1.weight", np.ones((10, 35))), GraphError, ("fc1", "36", "(10, 35)")),
    Case("add-different-shapes", add_nodes({"name": "sum", "op": "add", "inputs": ["conv1", "input"]},
                                           {"name": "head", "op": "linear", "inputs": ["sum"],
                                            "weight": "fc1.weight"}, output="head"),
         GraphError, ("sum", "(4, 6, 6)", "(2, 6, 6)")),
    Case("pool-bigger-than-input", setter(("pool1", "kernel"), 7), GraphError, ("pool1", "7")),
    Case("pool-on-vector", mutated(lambda m, a: node(m, "act2").update(op="avgpool2d", kernel=2)), GraphError,
         ("act2", "(C, H, W)", "(10,)")),
    Case("global-pool-on-vector", mutated(lambda m, a: node(m, "act2").update(op="global_avgpool")), GraphError,
         ("act2", "(C, H, W)")),
    # graph structure
    Case("dangling-input", setter(("fc1", "inputs"), ["nothere"]), GraphError, ("fc1", "nothere", "dangling")),
    Case("forward-reference", setter(("conv1", "inputs"), ["fc2"]), GraphError, ("conv1", "fc2", "later")),
    Case("self-loop", setter(("act2", "inputs"), ["act2"]), GraphError, ("act2", "later")),
    Case("duplicate-name", rename_node("act2", "act1"), GraphError, ("act1", "duplicate")),
    Case("node-named-input", rename_node("conv1", "input"), GraphError, ("'input'",)),
    Case("output-missing", del_key("output"), ManifestError, ("output",)),
    Case("output-unknown", setter(("output",), "fc9"), GraphError, ("output", "fc9")),
    Case("output-activation", add_nodes({"name": "act3", "op": "relu", "inputs": ["fc2"]}, output="act3"),
         GraphError, ("act3", "output")),
    Case("node-not-contributing", add_nodes({"name": "dead", "op": "relu", "inputs": ["conv1"]}), GraphError,
         ("dead", "fc2")),
    Case("neuron-in-ann", setter(("act2", "op"), "neuron"), ManifestError, ("act2", "neuron")),
    Case("relu-in-snn", mutated(lambda m, a: (m["nodes"].insert(2, {"name": "r", "op": "relu", "inputs": ["n1"]}),
                                              node(m, "fc").update(inputs=["r"])) and None, "snn"),
         ManifestError, ("'r'", "relu")),
    Case("if-with-tau", setter(("n1", "tau"), 4, base="snn"), ManifestError, ("n1", "tau")),
    # input spec
    Case("input-shape-zero", setter(("input", "shape"), [0, 6, 6]), ManifestError, ("input.shape",)),
    Case("input-shape-negative", setter(("input", "shape"), [2, -6, 6]), ManifestError, ("input.shape",)),
    Case("input-shape-2d", setter(("input", "shape"), [6, 6]), ManifestError, ("input.shape",)),
    Case("input-shape-not-ints", setter(("input", "shape"), [2, 6.5, 6]), ManifestError, ("input.shape",)),
    Case("std-zero", setter(("input", "std"), [0.25, 0.0]), ManifestError, ("input.std",)),
    Case("std-negative", setter(("input", "std"), [-1.0]), ManifestError, ("input.std",)),
    Case("mean-wrong-length", setter(("input", "mean"), [0.1, 0.2, 0.3]), ManifestError, ("input.mean",)),
    Case("scale-not-number", setter(("input", "scale"), True), ManifestError, ("input.scale",)),
    Case("unknown-input-key", setter(("input", "layout"), "NCHW"), ManifestError, ("input", "layout")),
    # resources
    Case("memory-limit-env", mutated(lambda m, a: a.update({"fc1.weight": np.ones((10, 9000))})),
         ResourceLimitError, ("fc1.weight", "EVSIM_MEMORY_LIMIT"), env={"EVSIM_MEMORY_LIMIT": "64K"}),
    Case("memory-limit-declared-input", setter(("input", "shape"), [2, 3000, 3000]), ResourceLimitError,
         ("conv1", "EVSIM_MEMORY_LIMIT"), env={"EVSIM_MEMORY_LIMIT": "1M"}),
    Case("memory-limit-default", setter(("input", "shape"), [2, 100_000, 100_000]), ResourceLimitError,
         ("conv1", "EVSIM_MEMORY_LIMIT")),
    Case("huge-npy-header", huge_header, ResourceLimitError, ("conv1.weight", "EVSIM_MEMORY_LIMIT")),
    Case("arrays-together-over-limit", two_large_arrays, ResourceLimitError, ("'b'",),
         env={"EVSIM_MEMORY_LIMIT": "100K"}),
    # containers
    Case("truncated", truncated, ContainerError),
    Case("random-bytes", raw_bytes(np.random.default_rng(7).bytes(4096)), ContainerError),
    Case("empty-file", raw_bytes(b""), ContainerError),
    Case("zip-not-npz", zip_with_txt, ContainerError, ("notes.txt",), (".npz",)),
    Case("npz-without-manifest", npz_without_manifest, ContainerError, ("__evsim__",), (".npz",)),
    Case("npz-manifest-not-0d", npz_manifest_not_0d, ContainerError, ("__evsim__",), (".npz",)),
    Case("h5-without-attribute", h5_without_attribute, ContainerError, ("'evsim'",), (".h5",)),
    Case("h5-arrays-is-dataset", h5_arrays_is_dataset, ContainerError, ("/arrays",), (".h5",)),
    Case("unknown-extension", raw_bytes(b"\x08\x01", ".onnx"), ContainerError, (".onnx",), (".npz",)),
    Case("missing-file", lambda d, e: d / f"missing{e}", ContainerError),
]
CASE_PARAMS = [pytest.param(c, ext, id=f"{c.id}{ext}") for c in CASES for ext in c.exts]


def test_case_ids_unique():
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case, ext", CASE_PARAMS)
def test_malformed_file(case, ext, tmp_path, monkeypatch):
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    path = case.build(tmp_path, ext)
    tracemalloc.start()
    try:
        with pytest.raises(case.exc) as info:
            evsim.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert str(path) in message
    for needle in case.needles:
        assert needle in message, (needle, message)
    assert "\n" not in message
    assert isinstance(info.value, (ModelFileError, ResourceLimitError))
    assert peak < 32 * 2**20, "declared sizes must be refused before allocating"
    assert not (tmp_path / "UNPICKLED").exists(), "an object array was unpickled"


def test_error_tree():
    for exc in (ContainerError, ManifestError, ArrayError, GraphError):
        assert issubclass(exc, ModelFileError)
    assert issubclass(ModelFileError, EvsimError) and issubclass(ResourceLimitError, EvsimError)


def test_explicit_limit_argument(tmp_path):
    manifest, arrays = ann_model()
    path = write_npz(tmp_path / "m.npz", json.dumps(manifest), arrays)
    with pytest.raises(ResourceLimitError, match="fc1.weight"):
        evsim.load(path, limit=2000 + 4 * len(json.dumps(manifest)))
    assert evsim.load(path, limit=10**6).node("fc2").shape == (3,)


def test_bad_memory_limit_variable(tmp_path, monkeypatch):
    manifest, arrays = ann_model()
    path = write_npz(tmp_path / "m.npz", json.dumps(manifest), arrays)
    monkeypatch.setenv("EVSIM_MEMORY_LIMIT", "lots")
    with pytest.raises(ResourceLimitError, match="EVSIM_MEMORY_LIMIT"):
        evsim.load(path)
    monkeypatch.setenv("EVSIM_MEMORY_LIMIT", "0.5G")
    assert evsim.load(path).output == "fc2"


# --------------------------------------------------------------------------- files written by hand
@pytest.mark.parametrize("ext", [".npz", ".h5", ".hdf5"])
def test_hand_written_ann(tmp_path, ext):
    manifest, arrays = ann_model()
    graph = evsim.load(write_model(tmp_path / f"m{ext}", json.dumps(manifest), arrays))
    assert {n.name: n.shape for n in graph.nodes} == ANN_SHAPES
    assert graph.input.shape == (2, 6, 6) and graph.input.mean == (0.5, 0.4) and graph.input.std == (0.25, 0.2)
    assert graph.metadata == manifest["metadata"]
    # defaults filled in as documented
    assert graph.node("conv1").attrs == {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1}
    assert graph.node("pool1").attrs == {"kernel": [2, 2], "stride": [2, 2], "padding": [0, 0]}
    assert graph.node("bn1").attrs == {"eps": 1e-5}
    assert graph.node("conv1").arrays["weight"].dtype == np.float32
    assert graph.node("fc1").arrays["weight"].dtype == np.float64
    totals = summarize(graph)["totals"]
    assert totals == {"macs": ANN_MACS, "params": ANN_PARAMS, "neurons": ANN_NEURONS,
                      "trainable": ANN_PARAMS - 8}  # bn1 running mean and var are not trained


@pytest.mark.parametrize("ext", EXTS)
def test_hand_written_snn(tmp_path, ext):
    manifest, arrays = snn_model()
    graph = evsim.load(write_model(tmp_path / f"m{ext}", json.dumps(manifest), arrays))
    assert graph.kind == "snn" and graph.node("n1").shape == (3, 3, 3) and graph.node("fc").shape == (2,)
    assert graph.node("n1").attrs == {"model": "if", "reset": "subtract"}
    assert summarize(graph)["totals"] == {"macs": SNN_MACS, "params": SNN_PARAMS, "neurons": SNN_NEURONS,
                                          "trainable": SNN_PARAMS}


def test_contract_example_mnist(tmp_path):
    """The contract's manifest example, completed, written with NumPy and with h5py alone."""
    rng = np.random.default_rng(3)
    arrays = {"conv1.weight": rng.normal(size=(8, 1, 5, 5)).astype(np.float32),
              "conv1.bias": np.zeros(8, np.float32), "act1.threshold": np.ones(8, np.float32),
              "fc1.weight": rng.normal(size=(32, 8 * 12 * 12)).astype(np.float32),
              "fc1.bias": np.zeros(32, np.float32), "fc2.weight": rng.normal(size=(10, 32)).astype(np.float32)}
    manifest = {
        "format": "evsim-model", "version": 1, "kind": "ann",
        "input": {"shape": [1, 28, 28], "scale": 0.00392156862745098, "mean": [0.1307], "std": [0.3081]},
        "nodes": [
            {"name": "conv1", "op": "conv2d", "inputs": ["input"], "weight": "conv1.weight", "bias": "conv1.bias"},
            {"name": "act1", "op": "qcfs", "inputs": ["conv1"], "threshold": "act1.threshold", "levels": 8},
            {"name": "pool1", "op": "avgpool2d", "inputs": ["act1"], "kernel": [2, 2]},
            {"name": "flat", "op": "flatten", "inputs": ["pool1"]},
            {"name": "fc1", "op": "linear", "inputs": ["flat"], "weight": "fc1.weight", "bias": "fc1.bias"},
            {"name": "act2", "op": "relu", "inputs": ["fc1"]},
            {"name": "fc2", "op": "linear", "inputs": ["act2"], "weight": "fc2.weight"},
        ],
        "output": "fc2",
        "metadata": {"source": "numpy by hand"},
    }
    text = json.dumps(manifest)
    np.savez(tmp_path / "mnist.npz", __evsim__=np.array(text), **arrays)
    with h5py.File(tmp_path / "mnist.h5", "w") as f:
        f.attrs["evsim"] = text
        for name, arr in arrays.items():
            f.create_dataset(f"arrays/{name}", data=arr)
    graphs = [evsim.load(tmp_path / "mnist.npz"), evsim.load(tmp_path / "mnist.h5")]
    assert graphs[0] == graphs[1]
    g = graphs[0]
    assert [n.shape for n in g.nodes] == [(8, 24, 24), (8, 24, 24), (8, 12, 12), (1152,), (32,), (32,), (10,)]
    assert summarize(g)["totals"] == {
        "macs": 8 * 24 * 24 * 25 + 32 * 1152 + 10 * 32,
        "params": 8 * 25 + 8 + 8 + 32 * 1152 + 32 + 10 * 32,
        "trainable": 8 * 25 + 8 + 8 + 32 * 1152 + 32 + 10 * 32,  # no batchnorm: every element is trained
        "neurons": 8 * 24 * 24 + 32,
    }
    x = np.full((1, 1, 28, 28), 255.0)
    assert np.allclose(g.input.preprocess(x), (1.0 - 0.1307) / 0.3081)


def test_linear_and_flatten_on_chw(tmp_path):
    """linear reads a (C, H, W) input flattened C-major; flatten and global_avgpool take (C, H, W)."""
    manifest, arrays = ann_model()
    node(manifest, "fc1")["inputs"] = ["pool1"]  # skip the flatten
    manifest["nodes"] = [n for n in manifest["nodes"] if n["name"] != "flat"]
    g = evsim.load(write_npz(tmp_path / "a.npz", json.dumps(manifest), arrays))
    assert g.node("fc1").shape == (10,)
    manifest, arrays = ann_model()
    node(manifest, "flat")["inputs"] = ["act1"]
    node(manifest, "pool1").update(op="global_avgpool", inputs=["act1"])
    del node(manifest, "pool1")["kernel"]
    manifest["nodes"].insert(3, manifest["nodes"].pop(3))
    arrays["fc1.weight"] = np.ones((10, 144))
    node(manifest, "fc1")["inputs"] = ["flat"]
    manifest["nodes"].append({"name": "gap_fc", "op": "linear", "inputs": ["pool1"], "weight": "gap.weight"})
    manifest["nodes"].append({"name": "sum", "op": "add", "inputs": ["fc2", "gap_fc"]})
    manifest["output"] = "sum"
    arrays["gap.weight"] = np.ones((3, 4))
    g = evsim.load(write_h5(tmp_path / "b.h5", json.dumps(manifest), arrays))
    assert g.node("flat").shape == (144,) and g.node("pool1").shape == (4,) and g.node("sum").shape == (3,)


def test_array_names_are_free_strings(tmp_path):
    """Names need not follow <node>.<param>, and a name numpy.savez would refuse ('file') works."""
    manifest, arrays = ann_model()
    arrays["file"] = arrays.pop("conv1.weight")
    node(manifest, "conv1")["weight"] = "file"
    g = evsim.load(write_h5(tmp_path / "m.h5", json.dumps(manifest), arrays))
    save(g, tmp_path / "m.npz")
    text, stored = read_container(tmp_path / "m.npz")
    assert "file" in stored and json.loads(text)["nodes"][0]["weight"] == "file"
    assert evsim.load(tmp_path / "m.npz") == g


# --------------------------------------------------------------------------- round trips
VARIANTS = [("ann", "relu"), ("ann", "qcfs"), ("snn", "if"), ("snn", "signed_if"), ("snn", "gn")]
json_scalars = (st.none() | st.booleans() | st.integers(-2**53, 2**53)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


def manifest_json(path) -> dict:
    return json.loads(read_container(path)[0])


@settings(deadline=None, max_examples=25)
@given(seed=st.integers(0, 2**32 - 1), variant=st.sampled_from(VARIANTS), maxpool=st.booleans(),
       channelwise=st.booleans(), cast_seed=st.integers(0, 2**32 - 1), h5_ext=st.sampled_from([".h5", ".hdf5"]),
       metadata=st.dictionaries(st.text(max_size=6), json_values, max_size=3))
def test_round_trip_npz_h5(seed, variant, maxpool, channelwise, cast_seed, h5_ext, metadata):
    kind, activation = variant
    graph = random_network(seed, kind=kind, activation=activation, channelwise=channelwise, maxpool=maxpool)
    rng = np.random.default_rng(cast_seed)
    for n in graph.nodes:  # a mix of float32 and float64 arrays
        n.arrays = {role: (a.astype(np.float32) if rng.random() < 0.5 else a) for role, a in n.arrays.items()}
    graph.metadata = metadata
    with tempfile.TemporaryDirectory() as d:
        npz, h5 = Path(d) / "model.npz", Path(d) / f"model{h5_ext}"
        save(graph, npz)
        from_npz = evsim.load(npz)
        save(from_npz, h5)
        from_h5 = evsim.load(h5)
        assert from_npz == graph and from_h5 == graph and from_h5 == from_npz
        assert manifest_json(npz) == manifest_json(h5) == json.loads(manifest_from_graph(graph)[0])
        assert manifest_json(h5) == json.loads(manifest_from_graph(from_h5)[0])
        for original, loaded in zip(graph.nodes, from_h5.nodes):
            assert loaded.shape == original.shape
            for role, arr in original.arrays.items():
                assert loaded.arrays[role].dtype == arr.dtype, (original.name, role)
                assert loaded.arrays[role].tobytes() == np.ascontiguousarray(arr).tobytes()
        assert sorted(os.listdir(d)) == sorted(["model.npz", f"model{h5_ext}"])  # no temporary files left


def test_round_trip_hand_written(tmp_path):
    manifest, arrays = ann_model()
    g = evsim.load(write_npz(tmp_path / "m.npz", json.dumps(manifest), arrays))
    save(g, tmp_path / "again.h5")
    text, stored = read_container(tmp_path / "again.h5")
    assert stored.keys() == arrays.keys()
    assert all(stored[k].dtype == arrays[k].dtype and np.array_equal(stored[k], arrays[k]) for k in arrays)
    assert evsim.load(tmp_path / "again.h5") == g


# --------------------------------------------------------------------------- atomic writes
def tiny_graph():
    return random_network(5, kind="ann", activation="qcfs")


@pytest.mark.parametrize("ext", EXTS)
def test_save_leaves_no_temporary_file(tmp_path, ext):
    save(tiny_graph(), tmp_path / "sub" / f"model{ext}")  # creates the directory
    assert os.listdir(tmp_path / "sub") == [f"model{ext}"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "sub" / f"model{ext}").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_write_keeps_existing_file(tmp_path, monkeypatch, ext, error):
    path = tmp_path / f"model{ext}"
    save(tiny_graph(), path)
    before = path.read_bytes()
    reader, writer = CONTAINERS[ext]

    def failing_writer(tmp, text, arrays):
        writer(tmp, text, arrays)
        Path(tmp).write_bytes(b"half-written")
        raise error

    monkeypatch.setitem(CONTAINERS, ext, (reader, failing_writer))
    with pytest.raises(type(error)):
        save(random_network(6, kind="snn"), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]


@pytest.mark.parametrize("ext", EXTS)
def test_unwritable_array_keeps_existing_file(tmp_path, ext):
    path = tmp_path / f"model{ext}"
    save(tiny_graph(), path)
    before = path.read_bytes()
    with pytest.raises(Exception):
        write_container(path, "{}", {"a": np.ones(3), "z": np.array([object()], dtype=object)})
    assert path.read_bytes() == before and os.listdir(tmp_path) == [path.name]


@pytest.mark.parametrize("ext", EXTS)
def test_invalid_graph_is_not_written(tmp_path, ext):
    path = tmp_path / f"model{ext}"
    save(tiny_graph(), path)
    before = path.read_bytes()
    bad = tiny_graph()
    bad.nodes[0].arrays["weight"] = np.full_like(bad.nodes[0].arrays["weight"], np.nan)
    with pytest.raises(ArrayError):
        save(bad, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == [path.name]


def test_save_unknown_extension(tmp_path):
    with pytest.raises(ContainerError, match="onnx"):
        save(tiny_graph(), tmp_path / "model.onnx")
    assert os.listdir(tmp_path) == []
