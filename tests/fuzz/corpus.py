"""Seed files and hypothesis strategies that mutate them (structure and bytes).

Base models are tiny (so a run is quick) but use every op family: conv2d, batchnorm,
qcfs/relu, avg/max pooling, flatten, linear, add, and the neuron models of SNN files.
Files are written the way a foreign exporter would (plain NumPy / h5py, no evsim
validation), so a mutation reaches evsim's readers exactly as a user's file would.
"""
from __future__ import annotations

import copy
import functools
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from hypothesis import strategies as st

INPUT_SHAPE = (1, 6, 6)
N_CLASSES = 4
DATA_SAMPLES = 8


# --------------------------------------------------------------------------- base models
def _rng(seed):
    return np.random.default_rng(seed)


def ann_qcfs() -> tuple[dict, dict]:
    """conv-bn-qcfs-avgpool-flatten-linear-qcfs-linear: runs directly (QCFS λ are the thresholds)."""
    r = _rng(1)
    arrays = {
        "c1.weight": r.normal(0, 0.5, (3, 1, 3, 3)).astype(np.float32), "c1.bias": np.zeros(3, np.float32),
        "bn.mean": np.zeros(3, np.float32), "bn.var": np.ones(3, np.float32),
        "bn.gamma": np.ones(3, np.float32), "bn.beta": np.full(3, 0.1, np.float32),
        "a1.threshold": np.array(1.0, np.float32),
        "f1.weight": r.normal(0, 0.3, (8, 27)).astype(np.float32), "f1.bias": np.zeros(8, np.float32),
        "a2.threshold": np.full(8, 1.5, np.float32),
        "f2.weight": r.normal(0, 0.3, (N_CLASSES, 8)).astype(np.float32),
    }
    manifest = {
        "format": "evsim-model", "version": 1, "kind": "ann",
        "input": {"shape": list(INPUT_SHAPE), "scale": 1 / 255, "mean": [0.5], "std": [0.25]},
        "nodes": [
            {"name": "c1", "op": "conv2d", "inputs": ["input"], "weight": "c1.weight", "bias": "c1.bias",
             "padding": 1, "stride": [1, 1]},
            {"name": "bn", "op": "batchnorm", "inputs": ["c1"], "mean": "bn.mean", "var": "bn.var",
             "gamma": "bn.gamma", "beta": "bn.beta", "eps": 1e-5},
            {"name": "a1", "op": "qcfs", "inputs": ["bn"], "threshold": "a1.threshold", "levels": 4},
            {"name": "p1", "op": "avgpool2d", "inputs": ["a1"], "kernel": 2},
            {"name": "fl", "op": "flatten", "inputs": ["p1"]},
            {"name": "f1", "op": "linear", "inputs": ["fl"], "weight": "f1.weight", "bias": "f1.bias"},
            {"name": "a2", "op": "qcfs", "inputs": ["f1"], "threshold": "a2.threshold", "levels": 8},
            {"name": "f2", "op": "linear", "inputs": ["a2"], "weight": "f2.weight"},
        ],
        "output": "f2",
        "metadata": {"source": "fuzz seed", "nested": {"k": [1, 2.5, None]}},
    }
    return manifest, arrays


def snn_residual() -> tuple[dict, dict]:
    """conv-IF-conv-GN + skip (add) - signed IF - maxpool - global avgpool - linear, kind snn."""
    r = _rng(2)
    arrays = {
        "c1.weight": r.normal(0, 0.5, (2, 1, 3, 3)), "n1.threshold": np.array([1.0, 0.5]),
        "n1.v0": np.full((2,), 0.25),
        "c2.weight": r.normal(0, 0.5, (2, 2, 3, 3)), "c2.bias": np.zeros(2),
        "n2.threshold": np.array(0.8), "n2.v0": np.full((2, 6, 6), 0.1),
        "n3.threshold": np.array(1.0), "n3.v0": np.array(0.5),
        "fc.weight": r.normal(0, 0.5, (N_CLASSES, 2)), "fc.bias": np.zeros(N_CLASSES),
    }
    manifest = {
        "format": "evsim-model", "version": 1, "kind": "snn", "input": {"shape": list(INPUT_SHAPE), "scale": 0.01},
        "nodes": [
            {"name": "c1", "op": "conv2d", "inputs": ["input"], "weight": "c1.weight", "padding": 1},
            {"name": "n1", "op": "neuron", "inputs": ["c1"], "model": "if", "threshold": "n1.threshold",
             "v0": "n1.v0", "reset": "subtract"},
            {"name": "c2", "op": "conv2d", "inputs": ["n1"], "weight": "c2.weight", "bias": "c2.bias",
             "padding": [1, 1], "dilation": 1, "groups": 1},
            {"name": "n2", "op": "neuron", "inputs": ["c2"], "model": "gn", "tau": 4,
             "threshold": "n2.threshold", "v0": "n2.v0"},
            {"name": "sum", "op": "add", "inputs": ["n2", "n1"]},
            {"name": "n3", "op": "neuron", "inputs": ["sum"], "model": "signed_if", "threshold": "n3.threshold",
             "v0": "n3.v0"},
            {"name": "mp", "op": "maxpool2d", "inputs": ["n3"], "kernel": 2, "stride": 2},
            {"name": "gp", "op": "global_avgpool", "inputs": ["mp"]},
            {"name": "fc", "op": "linear", "inputs": ["gp"], "weight": "fc.weight", "bias": "fc.bias"},
        ],
        "output": "fc",
        "metadata": {"conversion": {"neuron": "mixed"}, "calibration": {"T": 2}},
    }
    return manifest, arrays


def mlp_relu() -> tuple[dict, dict]:
    """A flat relu MLP (needs calibration before it can run: `run` must refuse it cleanly)."""
    r = _rng(3)
    arrays = {"l1.weight": r.normal(0, 0.2, (16, 36)), "l1.bias": np.zeros(16),
              "l2.weight": r.normal(0, 0.2, (N_CLASSES, 16)), "l2.bias": np.zeros(N_CLASSES)}
    manifest = {
        "format": "evsim-model", "version": 1, "kind": "ann", "input": {"shape": [36]},
        "nodes": [
            {"name": "l1", "op": "linear", "inputs": ["input"], "weight": "l1.weight", "bias": "l1.bias"},
            {"name": "r1", "op": "relu", "inputs": ["l1"]},
            {"name": "l2", "op": "linear", "inputs": ["r1"], "weight": "l2.weight", "bias": "l2.bias"},
        ],
        "output": "l2",
    }
    return manifest, arrays


BASES = {"ann": ann_qcfs, "snn": snn_residual, "mlp": mlp_relu}


# --------------------------------------------------------------------------- writers (foreign-exporter style)
def write_model(path: Path, manifest, arrays: dict) -> Path:
    """Write ``manifest`` (a dict, or raw text) and ``arrays`` with NumPy/h5py alone."""
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    path = Path(path)
    if path.suffix == ".npz":
        np.savez(path, __evsim__=np.array(text), allow_pickle=True, **arrays)
    else:
        with h5py.File(path, "w") as f:
            f.attrs["evsim"] = text
            group = f.create_group("arrays")
            for name, value in arrays.items():
                group.create_dataset(name, data=value)
    return path


def base_data() -> dict:
    r = _rng(4)
    return {"x": r.integers(0, 256, (DATA_SAMPLES,) + INPUT_SHAPE).astype(np.uint8),
            "y": r.integers(0, N_CLASSES, DATA_SAMPLES).astype(np.int64)}


def write_data(path: Path, arrays: dict, h5_layout: dict | None = None) -> Path:
    path = Path(path)
    if path.suffix == ".npz":
        np.savez(path, allow_pickle=True, **arrays)
    else:
        with h5py.File(path, "w") as f:
            for key, value in arrays.items():
                if h5_layout and key in h5_layout:  # declared, never written: reads as the fill value
                    f.create_dataset(key, **h5_layout[key])
                else:
                    f.create_dataset(key, data=value)
    return path


# --------------------------------------------------------------------------- values a mutation may put anywhere
INTERESTING_INTS = [0, -1, 1, 2, 3, 7, 255, 256, 65535, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**62, 2**63 - 1,
                    2**63, 2**64, 10**30, -2**63, -(2**64)]
INTERESTING_FLOATS = [0.0, -0.0, 0.5, 1e-320, 1e-45, 3.4e38, 1e39, 1e308, -1e308, math.nan, math.inf, -math.inf]
INTERESTING_STRINGS = ["", "x", "input", "\ud800", "a\x00b", "ü", "A" * 5000, "c1", "f2", "if", "gn", "zero",
                       "conv2d", "maxpool2d", "neuron", "snn", "ann"]

json_scalar = st.one_of(st.sampled_from(INTERESTING_INTS), st.sampled_from(INTERESTING_FLOATS),
                        st.sampled_from(INTERESTING_STRINGS), st.booleans(), st.none(),
                        st.integers(), st.floats(), st.text(max_size=20))
json_value = st.recursive(json_scalar, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                               st.dictionaries(st.text(max_size=8), inner,
                                                                               max_size=4)),
                          max_leaves=12)


def _paths(value, prefix=()) -> list[tuple]:
    """Every path (tuple of keys/indices) inside a JSON value."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


def _parent(doc, path):
    for key in path[:-1]:
        doc = doc[key]
    return doc


# --------------------------------------------------------------------------- structure mutations
@dataclass(frozen=True)
class Mutation:
    """One change to (manifest, arrays); ``apply`` returns the changed copies (or raw text)."""

    kind: str
    args: tuple

    def apply(self, manifest, arrays):
        return MUTATORS[self.kind](manifest, arrays, *self.args)


def _set(manifest, arrays, pick, value):
    paths = _paths(manifest)[1:]
    path = paths[pick % len(paths)]
    _parent(manifest, path)[path[-1]] = value
    return manifest, arrays


NUMBER_INTS = [1, 2, 0, 3, 4, 5, 8, 16, 1024, 1025, 2**31, 2**62, 2**64, -1]  # the simplest pick is benign
NUMBER_FACTORS = [2.0, 0.0, -1.0, 1e-30, 1e30, 1e300, math.nan]


def _number(manifest, arrays, pick, choice):
    """Change one number in place, to a value of its own type: likely to pass parsing and go deeper."""
    paths = [p for p in _paths(manifest)[1:]
             if isinstance(_parent(manifest, p)[p[-1]], (int, float)) and not isinstance(_parent(manifest, p)[p[-1]],
                                                                                         bool)]
    if paths:
        path = paths[pick % len(paths)]
        parent = _parent(manifest, path)
        old = parent[path[-1]]
        parent[path[-1]] = NUMBER_INTS[choice % len(NUMBER_INTS)] if isinstance(old, int) else \
            old * NUMBER_FACTORS[choice % len(NUMBER_FACTORS)]
    return manifest, arrays


def _delete(manifest, arrays, pick):
    paths = _paths(manifest)[1:]
    path = paths[pick % len(paths)]
    parent = _parent(manifest, path)
    del parent[path[-1]]
    return manifest, arrays


def _node_key(manifest, arrays, pick, key, value):
    nodes = manifest.get("nodes")
    if isinstance(nodes, list) and nodes and isinstance(nodes[pick % len(nodes)], dict):
        nodes[pick % len(nodes)][key] = value
    return manifest, arrays


def _topology(manifest, arrays, pick, how, other):
    nodes = manifest.get("nodes")
    if not (isinstance(nodes, list) and nodes):
        return manifest, arrays
    i, j = pick % len(nodes), other % len(nodes)
    names = [n.get("name") for n in nodes if isinstance(n, dict)] + ["input", "missing"]
    if how == "swap":
        nodes[i], nodes[j] = nodes[j], nodes[i]
    elif how == "duplicate":
        nodes.insert(j, copy.deepcopy(nodes[i]))
    elif how == "drop":
        del nodes[i]
    elif how == "self" and isinstance(nodes[i], dict):
        nodes[i]["inputs"] = [nodes[i].get("name")]
    elif how == "rewire" and isinstance(nodes[i], dict):
        nodes[i]["inputs"] = [names[other % len(names)], names[(other * 7 + 1) % len(names)]][: 1 + other % 2]
    elif how == "output":
        manifest["output"] = names[other % len(names)]
    return manifest, arrays


ARRAY_DTYPES = ["int8", "int64", "uint8", "float16", "complex64", "bool", "object", "<U3", ">f8", ">f4", "V8"]


def _array_dtype(manifest, arrays, pick, dtype):
    names = sorted(arrays)
    if names:
        name = names[pick % len(names)]
        value = arrays[name]
        if dtype == "object":
            arrays[name] = np.array([value.tolist()] if value.ndim else value.item(), dtype=object)
        elif dtype == "V8":
            arrays[name] = np.zeros(value.shape, dtype="V8")
        else:
            with np.errstate(all="ignore"):
                arrays[name] = value.astype(dtype)
    return manifest, arrays


def _array_shape(manifest, arrays, pick, how):
    names = sorted(arrays)
    if names:
        name = names[pick % len(names)]
        a = arrays[name]
        arrays[name] = {"scalar": lambda: np.asarray(a.reshape(-1)[0] if a.size else 0.0, a.dtype),
                        "flat": lambda: a.reshape(-1), "axis": lambda: a[None],
                        "empty": lambda: np.zeros((0,) + a.shape[1:], a.dtype),
                        "transpose": lambda: a.T.copy(), "grow": lambda: np.concatenate([a.reshape(-1)] * 2),
                        "big": lambda: np.zeros((3, 700, 700), a.dtype)}[how]()
    return manifest, arrays


def _array_values(manifest, arrays, pick, value, where):
    names = sorted(arrays)
    if names:
        name = names[pick % len(names)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # complex -> real
            a = np.array(arrays[name], dtype=np.float64 if arrays[name].dtype.kind != "f" else arrays[name].dtype)
        if a.size:
            with np.errstate(all="ignore"):
                a.reshape(-1)[where % a.size if where >= 0 else slice(None)] = value
        arrays[name] = a
    return manifest, arrays


def _array_membership(manifest, arrays, pick, how):
    names = sorted(arrays)
    if how == "extra":
        arrays["extra.array"] = np.zeros(3)
    elif names and how == "remove":
        del arrays[names[pick % len(names)]]
    elif names and how == "rename":
        arrays["renamed" + "/x" * (pick % 3)] = arrays.pop(names[pick % len(names)])
    return manifest, arrays


def _deep(manifest, arrays, depth, where):
    value = "leaf"
    for _ in range(depth):
        value = [value] if where % 2 else {"k": value}
    if where % 3 == 0:
        manifest.setdefault("metadata", {})["deep"] = value
    else:
        nodes = manifest.get("nodes") or [{}]
        if isinstance(nodes[0], dict):
            nodes[0]["stride"] = value
    return manifest, arrays


def _raw_text(manifest, arrays, how, pick):
    text = json.dumps(manifest)
    cut = pick % max(1, len(text))
    raw = {"truncate": text[:cut], "garbage": text[:cut] + "\x00}{" + text[cut:], "nan": text.replace("1e-05", "NaN"),
           "bigint": text.replace('"levels": 4', '"levels": ' + "9" * 5000), "deep": "[" * 100000 + "]" * 100000,
           "bom": "\ufeff" + text, "list": "[" + text + "]"}[how]
    return raw, arrays


MUTATORS = {"set": _set, "number": _number, "delete": _delete, "node_key": _node_key, "topology": _topology,
            "array_dtype": _array_dtype, "array_shape": _array_shape, "array_values": _array_values,
            "array_membership": _array_membership, "deep": _deep, "raw_text": _raw_text}

NODE_KEYS = ["op", "inputs", "name", "stride", "padding", "dilation", "groups", "kernel", "levels", "eps", "tau",
             "model", "reset", "weight", "bias", "threshold", "v0", "mean", "scale", "pads", "unknown"]
OPS = ["conv2d", "linear", "batchnorm", "relu", "qcfs", "avgpool2d", "maxpool2d", "global_avgpool", "flatten", "add",
       "neuron", "pad2d", "scale", "sumpool2d", "nope"]

picks = st.integers(0, 10_000)
mutations = st.one_of(
    st.builds(Mutation, st.just("number"), st.tuples(picks, picks)),
    st.builds(Mutation, st.just("number"), st.tuples(picks, picks)),
    st.builds(Mutation, st.just("set"), st.tuples(picks, json_value)),
    st.builds(Mutation, st.just("delete"), st.tuples(picks)),
    st.builds(Mutation, st.just("node_key"), st.tuples(picks, st.sampled_from(NODE_KEYS),
                                                       st.one_of(json_value, st.sampled_from(OPS)))),
    st.builds(Mutation, st.just("topology"), st.tuples(picks, st.sampled_from(
        ["swap", "duplicate", "drop", "self", "rewire", "output"]), picks)),
    st.builds(Mutation, st.just("array_dtype"), st.tuples(picks, st.sampled_from(ARRAY_DTYPES))),
    st.builds(Mutation, st.just("array_shape"), st.tuples(picks, st.sampled_from(
        ["scalar", "flat", "axis", "empty", "transpose", "grow", "big"]))),
    st.builds(Mutation, st.just("array_values"), st.tuples(
        picks, st.sampled_from(INTERESTING_FLOATS + [-1.0, 1e38, 3e38, 1e-38]), st.integers(-1, 1000))),
    st.builds(Mutation, st.just("array_membership"), st.tuples(picks, st.sampled_from(["extra", "remove", "rename"]))),
    st.builds(Mutation, st.just("deep"), st.tuples(st.sampled_from([10, 60, 70, 500, 900]), picks)),
    st.builds(Mutation, st.just("raw_text"), st.tuples(st.sampled_from(
        ["truncate", "garbage", "nan", "bigint", "deep", "bom", "list"]), picks)),
)


@dataclass(frozen=True)
class ModelCase:
    """A base model, the mutations applied to it, and its container."""

    base: str
    changes: tuple
    suffix: str

    def write(self, path: Path) -> Path | None:
        """Write the mutated file (None if NumPy/h5py cannot even store it)."""
        manifest, arrays = BASES[self.base]()
        for change in self.changes:
            if isinstance(manifest, str):
                break
            try:
                manifest, arrays = change.apply(manifest, arrays)
            except (KeyError, IndexError, TypeError, ValueError, RecursionError):
                continue  # the path no longer exists after an earlier change
        try:
            return write_model(path.with_suffix(self.suffix), manifest, arrays)
        except (TypeError, ValueError, OverflowError, UnicodeEncodeError, RecursionError):
            return None


#: one small change of a number or of array values: most of these still load, so they reach
#: conversion, compilation and simulation (``evsim run``)
mild_mutations = st.one_of(
    st.builds(Mutation, st.just("number"), st.tuples(picks, picks)),
    st.builds(Mutation, st.just("array_values"), st.tuples(
        picks, st.sampled_from([0.0, -1.0, 1e-38, 1e-3, 10.0, 1e6, 3e38, 1e300]), st.integers(-1, 1000))),
)
mild_model_cases = st.builds(ModelCase, st.sampled_from(["ann", "snn"]), st.tuples(mild_mutations),
                             st.sampled_from([".npz", ".h5"]))
model_cases = st.builds(ModelCase, st.sampled_from(sorted(BASES)), st.lists(mutations, min_size=1, max_size=3)
                        .map(tuple), st.sampled_from([".npz", ".h5"]))


# --------------------------------------------------------------------------- byte mutations
def seed_bytes(base: str, suffix: str, writer: str) -> bytes:
    """A valid model file as bytes: written by evsim.save (deflated npz) or by NumPy/h5py (stored npz)."""
    import tempfile

    import evsim
    from evsim.format import graph_from_manifest

    manifest, arrays = BASES[base]()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"seed{suffix}"
        if writer == "evsim":
            evsim.save(graph_from_manifest(json.dumps(manifest), arrays), path)
        elif writer == "latest":  # object header v2, attributes in dense storage (fractal heap)
            with h5py.File(path, "w", libver="latest") as f:
                for i in range(12):
                    f.attrs[f"note{i}"] = f"exporter note {i}"
                f.attrs["evsim"] = json.dumps(manifest)
                for name, value in arrays.items():
                    f.create_dataset(f"arrays/{name}", data=value)
        else:
            write_model(path, manifest, arrays)
        return path.read_bytes()


@dataclass(frozen=True)
class ByteCase:
    base: str
    suffix: str
    writer: str
    edits: tuple  # (op, position, payload)

    def write(self, path: Path) -> Path:
        data = bytearray(seed_files()[(self.base, self.suffix, self.writer)])
        for op, pos, payload in self.edits:
            if not data:
                break
            at = pos % len(data)
            if op == "flip":
                data[at] ^= 1 << (payload % 8)
            elif op == "byte":
                data[at] = payload % 256
            elif op == "insert":
                data[at:at] = bytes([payload % 256]) * (1 + payload % 9)
            elif op == "delete":
                del data[at:at + 1 + payload % 16]
            elif op == "truncate":
                del data[at:]
            elif op == "int":  # an interesting integer, little-endian, over 2/4/8 bytes
                width = (2, 4, 8)[payload % 3]
                value = INTERESTING_INTS[payload % len(INTERESTING_INTS)] % 2 ** (8 * width)
                data[at:at + width] = value.to_bytes(width, "little")
        out = path.with_suffix(self.suffix)
        out.write_bytes(bytes(data))
        return out


SEEDS = [(b, s, w) for b in sorted(BASES) for s in (".npz", ".h5") for w in ("evsim", "numpy")] + \
    [(b, ".h5", "latest") for b in sorted(BASES)]


DATA_SEEDS = [("data", s, w) for s in (".npz", ".h5") for w in ("numpy", "compressed")]


def data_seed_bytes(suffix: str, writer: str) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"seed{suffix}"
        if suffix == ".npz" and writer == "compressed":
            np.savez_compressed(path, **base_data())
        elif suffix == ".h5" and writer == "compressed":
            with h5py.File(path, "w") as f:
                for key, value in base_data().items():
                    f.create_dataset(key, data=value, chunks=True, compression="gzip")
        else:
            write_data(path, base_data())
        return path.read_bytes()


@functools.lru_cache(maxsize=None)
def seed_files() -> dict:
    """Every seed of :data:`SEEDS` and :data:`DATA_SEEDS` as bytes (built once per process)."""
    return {**{key: seed_bytes(*key) for key in SEEDS}, **{key: data_seed_bytes(*key[1:]) for key in DATA_SEEDS}}
# positions: mostly in the first 8 kB, where headers, the manifest and the HDF5 heaps are
positions = st.one_of(st.integers(0, 8191), st.integers(0, 2**20))
byte_edits = st.tuples(st.sampled_from(["flip", "byte", "insert", "delete", "truncate", "int"]), positions,
                       st.integers(0, 2**16))
byte_cases = st.builds(lambda seed, edits: ByteCase(*seed, edits), st.sampled_from(SEEDS),
                       st.lists(byte_edits, min_size=1, max_size=4).map(tuple))
data_byte_cases = st.builds(lambda seed, edits: ByteCase(*seed, edits), st.sampled_from(DATA_SEEDS),
                            st.lists(byte_edits, min_size=1, max_size=4).map(tuple))


# --------------------------------------------------------------------------- data mutations
X_SHAPES = {"0d": (), "1d": (DATA_SAMPLES,), "flat": (DATA_SAMPLES, 36), "frames": (DATA_SAMPLES, 2) + INPUT_SHAPE,
            "empty": (0,) + INPUT_SHAPE, "hwc": (DATA_SAMPLES, 6, 6, 1), "extra": (DATA_SAMPLES, 1, 6, 6, 1, 1),
            "wrong": (DATA_SAMPLES, 2, 6, 6)}
DATA_DTYPES = ["float32", "float64", "float16", "int64", "uint64", "int8", "bool", "complex64", "<U2", "object",
               ">f8"]
LABEL_VALUES = [1e20, -1.0, 2.5, math.nan, math.inf, float(N_CLASSES), 2**63, 2**64 - 1, -2**63, 3.0, 0.0]


@dataclass(frozen=True)
class DataCase:
    suffix: str
    changes: tuple

    def write(self, path: Path) -> Path | None:
        arrays = base_data()
        layout = None
        for kind, a, b in self.changes:
            try:
                layout = self._change(arrays, kind, a, b) or layout
            except (IndexError, ValueError, TypeError, OverflowError):
                continue  # not applicable to what earlier changes left
        try:
            return write_data(path.with_suffix(self.suffix), arrays, layout)
        except (TypeError, ValueError, OverflowError):
            return None

    def _change(self, arrays: dict, kind: str, a: int, b: int) -> dict | None:
        key = "x" if a % 2 == 0 else "y"
        if key not in arrays:
            return None
        if kind == "shape" and key == "x":
            shape = X_SHAPES[sorted(X_SHAPES)[b % len(X_SHAPES)]]
            arrays["x"] = np.resize(arrays["x"], shape) if shape else np.asarray(arrays["x"].reshape(-1)[0])
        elif kind == "shape":
            y = arrays["y"]
            arrays["y"] = [lambda: np.asarray(1), lambda: y[:3], lambda: y[:, None], lambda: y[:0]][b % 4]()
        elif kind == "dtype":
            dtype = DATA_DTYPES[b % len(DATA_DTYPES)]
            with np.errstate(all="ignore"):
                arrays[key] = (arrays[key].astype(object) if dtype == "object" else arrays[key].astype(dtype))
        elif kind == "value":
            value = LABEL_VALUES[b % len(LABEL_VALUES)] if key == "y" else \
                [math.nan, math.inf, 1e308, -1e308, 1e39, 1e-320][b % 6]
            arr = arrays[key]
            target = np.float64 if not (key == "y" and isinstance(value, int)) else (
                np.uint64 if value > 0 else np.int64)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # complex -> real
                arr = arr.astype(target)
            if arr.ndim and arr.size:
                arr.reshape(-1)[a % arr.size] = value
            arrays[key] = arr
        elif kind == "remove":
            arrays.pop(key, None)
        elif kind == "huge" and self.suffix == ".h5":
            arrays.pop("y", None)
            return {"x": {"shape": (4_000_000,) + INPUT_SHAPE, "dtype": "uint8",
                          "chunks": (100_000, 1, 1, 2) if a % 2 else (1_000_000, 1, 6, 6)}}
        return None


data_changes = st.tuples(st.sampled_from(["shape", "dtype", "value", "remove", "huge"]), st.integers(0, 100),
                         st.integers(0, 1000))
data_cases = st.builds(DataCase, st.sampled_from([".npz", ".h5"]),
                       st.lists(data_changes, min_size=1, max_size=3).map(tuple))


# --------------------------------------------------------------------------- AER event lists (--bins)
AER_FIELDS = [("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "u1")]


def base_aer() -> dict:
    """AER event lists for the (1, 6, 6) input: ``events`` records, ``offsets``, ``y``; sample 2 is empty."""
    r = _rng(5)
    counts = r.integers(1, 12, DATA_SAMPLES)
    counts[2] = 0
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    events = np.zeros(offsets[-1], AER_FIELDS)
    events["t"] = np.sort(r.integers(0, 10_000, len(events)))
    events["x"], events["y"] = r.integers(0, 6, len(events)), r.integers(0, 6, len(events))
    events["p"] = r.integers(0, 2, len(events))
    return {"events": events, "offsets": offsets, "y": r.integers(0, N_CLASSES, DATA_SAMPLES).astype(np.int64)}


AER_VALUES = [math.nan, math.inf, -math.inf, -1, 6, 7, 2**15 - 1, 1e300, -1e300, 0.5, 2**62]


@dataclass(frozen=True)
class AerCase:
    suffix: str
    changes: tuple

    def write(self, path: Path) -> Path | None:
        arrays = base_aer()
        for kind, a, b in self.changes:
            try:
                self._change(arrays, kind, a, b)
            except (IndexError, ValueError, TypeError, OverflowError, KeyError):
                continue  # not applicable to what earlier changes left
        try:
            return write_data(path.with_suffix(self.suffix), arrays)
        except (TypeError, ValueError, OverflowError):
            return None

    @staticmethod
    def _change(arrays: dict, kind: str, a: int, b: int) -> None:
        if kind == "event":  # one field of one event: out of range, non-finite, fractional
            ev = arrays["events"]
            field = ["t", "x", "y", "p"][a % 4]
            wide = np.zeros(len(ev), [(name, "<f8") for name in ev.dtype.names])
            for name in ev.dtype.names:
                wide[name] = ev[name]
            wide[field][b % len(wide)] = AER_VALUES[b % len(AER_VALUES)]
            arrays["events"] = wide
        elif kind == "offset":
            off = arrays["offsets"].copy()
            off[a % len(off)] = INTERESTING_INTS[b % len(INTERESTING_INTS)] % (2**63)
            arrays["offsets"] = off
        elif kind == "columns":  # plain columns of the wrong width or dtype
            ev = arrays["events"]
            cols = np.stack([ev[n].astype(np.float64) for n in ev.dtype.names], axis=1)
            arrays["events"] = [cols, cols[:, :3], cols.astype(np.complex64), cols.reshape(-1), cols[:0]][b % 5]
        elif kind == "fields":  # a field missing, renamed or of a non-numeric type
            ev = arrays["events"]
            names = list(ev.dtype.names)
            names[a % 4] = ["tt", "x", "q", "y"][b % 4]
            arrays["events"] = ev.astype({"names": names, "formats": [ev.dtype[i] for i in range(4)]}) \
                if len(set(names)) == 4 else ev[["t", "x", "y"]]
        elif kind == "offsets_shape":
            off = arrays["offsets"]
            arrays["offsets"] = [off[:1], off.astype(np.float64), off[:, None], off[::-1].copy(), off[:3]][b % 5]
        elif kind == "remove":
            arrays.pop(["events", "offsets", "y"][a % 3])


aer_changes = st.tuples(st.sampled_from(["event", "offset", "columns", "fields", "offsets_shape", "remove"]),
                        st.integers(0, 100), st.integers(0, 1000))
aer_cases = st.builds(AerCase, st.sampled_from([".npz", ".h5"]),
                      st.lists(aer_changes, min_size=1, max_size=3).map(tuple))


def write_all(cases, directory: Path) -> list[Path]:
    """Write each case to ``directory/case<i>``; cases NumPy/h5py cannot store are skipped."""
    files = []
    for i, case in enumerate(cases):
        path = case.write(directory / f"case{i}")
        if path is not None:
            files.append(path)
    return files
