"""ONNX importer: an ``.onnx`` file as an evsim graph (needs only the ``onnx`` package, ``evsim[onnx]``).

Registered with :mod:`evsim.importers` through the entry point ``evsim.importers: onnx``, so
``evsim.load("model.onnx")`` and every CLI command read ONNX files.  No ONNX runtime is used: the
graph is walked node by node, constant subgraphs (shape arithmetic, ``softplus`` of a parameter,
...) are folded with NumPy, and the remaining nodes become evsim ops:

* Conv (pads, auto_pad incl. SAME_UPPER/SAME_LOWER, strides, dilations, group), Gemm (alpha, beta,
  transA = 0, transB), MatMul (+ Add), BatchNormalization, AveragePool, MaxPool,
  GlobalAveragePool, ReduceMean over H and W, Pad (zeros), Add/Sum, Flatten, Reshape / Squeeze /
  Unsqueeze / Transpose (as views: a Gemm after a channels-last flatten gets its columns
  permuted), Identity, Dropout, Cast, Constant;
* runs of elementwise ops with constants (Mul, Div, Add, Sub, Clip, Max, Min, Relu, Floor, Neg)
  are collected and recognised by :func:`evsim.converters._builder.materialize`: QCFS in the
  seeds' and in the methods.md form (scalar or per-channel θ) -> ``qcfs``; Relu -> ``relu``;
  Clip(0, λ) -> ``relu`` with λ in ``metadata["relu_max"]``; affine maps -> folded into the layer
  before, or into the input preprocessing when they come first;
* a Softmax/LogSoftmax that produces the graph output is dropped (the output is then the logits;
  the prediction is unchanged) and listed in ``metadata["imported_from"]["dropped"]``.

Everything else is refused before anything runs, with one line naming the file, the node, its
op type, what evsim supports and how to fix it.
"""
from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np

from evsim.errors import ContainerError, ConversionError, MissingDependencyError, describe
from evsim.importers import Importer

from ._builder import (GraphBuilder, Pending, Values, View, add_conv, add_linear, add_pool, as_float_array,
                       channel_constant, parse_activations, same_pads)

__all__ = ["read", "sniff", "IMPORTER", "MIN_OPSET", "MAX_OPSET", "SUPPORTED_OPS"]

MIN_OPSET, MAX_OPSET = 13, 21
#: stands for the (dynamic) batch size while shape arithmetic is folded; Reshape targets must keep it
BATCH = 2**31 - 1
_DEFAULT_DOMAINS = ("", "ai.onnx")


# --------------------------------------------------------------------------- sniffing
# ModelProto fields: number -> wire type (0 varint, 2 length-delimited)
_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}


def _varint(buf: bytes, pos: int) -> tuple[int, int] | None:
    value = shift = 0
    while pos < len(buf) and shift < 64:
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    return None


def sniff(path, head: bytes) -> bool:
    """An ONNX ModelProto: starts with ``ir_version`` and continues with valid ModelProto fields.

    Only the first bytes are parsed (protobuf wire format, no ``onnx`` import), so foreign files,
    empty files and other formats are never handed to the protobuf parser.
    """
    first = _varint(head, 0)
    if first is None or first[0] != (1 << 3 | 0):
        return False
    fields, pos = 0, 0
    while pos < len(head):
        tag = _varint(head, pos)
        if tag is None:
            break
        number, wire = tag[0] >> 3, tag[0] & 7
        if _MODEL_FIELDS.get(number) != wire:
            return False
        if wire == 0:
            value = _varint(head, tag[1])
            if value is None:
                break
            if number == 1 and not 1 <= value[0] <= 64:
                return False
            pos = value[1]
        else:
            length = _varint(head, tag[1])
            if length is None:
                break
            pos = length[1] + length[0]
        fields += 1
    return fields >= 2


# --------------------------------------------------------------------------- loading
def _onnx():
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError(describe("ONNX import", "the 'onnx' package", "it is not installed",
                                              'pip install "evsim[onnx]"')) from None
    return onnx


def _load_model(path: Path, limit: int | None):
    onnx = _onnx()
    from onnx import external_data_helper

    from evsim.format import check_declared
    from evsim.graph import memory_limit

    limit = memory_limit() if limit is None else limit
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types for a bad file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ContainerError(describe(str(path), "a readable ONNX model", f"a truncated or corrupted file ({reason})"))
    declared = 0.0
    tensors = list(model.graph.initializer)
    tensors += [a.t for n in model.graph.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
    for tensor in tensors:
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
        except Exception:  # noqa: BLE001 - unknown or undefined element type
            dtype = np.dtype(np.float64)
        declared = check_declared(path, tensor.name, tuple(tensor.dims), dtype, limit, declared)
    if any(external_data_helper.uses_external_data(t) for t in tensors):
        base = path.resolve().parent
        for tensor in tensors:
            if not external_data_helper.uses_external_data(tensor):
                continue
            info = {e.key: e.value for e in tensor.external_data}
            location = (base / info.get("location", "")).resolve()
            if base not in location.parents:
                raise ContainerError(describe(f"{path}, tensor '{tensor.name}'",
                                              "external data in the model's directory", repr(info.get("location"))))
            try:
                external_data_helper.load_external_data_for_tensor(tensor, str(base))
            except Exception as exc:  # noqa: BLE001 - missing or short external file
                raise ContainerError(describe(f"{path}, tensor '{tensor.name}'",
                                              f"its external data in {info.get('location')!r}",
                                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                                              "keep the .onnx file and its data file(s) together")) from None
    if model.functions:
        from onnx import inliner

        model = inliner.inline_local_functions(model)
    return model


def read(path, *, limit: int | None = None, activations=None):
    """Read an ONNX file as a validated evsim graph.

    Parameters
    ----------
    path : str or Path
    limit : int, optional
        Bytes the model may declare (initializers are checked before they are read).
    activations : dict or list, optional
        Custom (non-standard) op types to map: ``{"MyAct": "relu"}`` or ``["MyAct=qcfs:thresh,8"]``;
        the weight is named by one of the node's constant inputs or attributes.

    Raises
    ------
    ContainerError, ConversionError, MissingDependencyError
    """
    path = Path(path)
    model = _load_model(path, limit)
    return _OnnxGraph(model, path, parse_activations(activations)).run()


IMPORTER = Importer("onnx", sniff, read, f"ONNX (opset {MIN_OPSET}-{MAX_OPSET}; pip install \"evsim[onnx]\")",
                    frozenset({"activations"}))


def _attrs(node) -> dict:
    import onnx
    from onnx import numpy_helper

    out = {}
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        if isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        elif isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode("utf-8", "replace") for v in value]
        out[a.name] = value
    return out


# --------------------------------------------------------------------------- constant folding
def _f64(fn):
    """An elementwise float op computed in float64 and returned in the input's float dtype."""

    def run(*xs):
        dtype = np.result_type(*xs)
        out = fn(*[np.asarray(x, dtype=np.float64) for x in xs])
        return out.astype(dtype if dtype.kind == "f" else np.float64)

    return run


def _fold_div(a, b):
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        return np.trunc(a / b).astype(np.result_type(a, b))
    return _f64(np.divide)(a, b)


def _axes(node, inputs, attrs, index=1):
    if len(inputs) > index and inputs[index] is not None:
        return [int(v) for v in np.asarray(inputs[index]).reshape(-1)]
    return attrs.get("axes")


def _fold_reduce(fn):
    def run(node, x, attrs):
        axes = _axes(node, x, attrs)
        keep = bool(attrs.get("keepdims", 1))
        if axes is None or len(axes) == 0:
            if attrs.get("noop_with_empty_axes", 0) and axes is not None:
                return [x[0]]
            axes = None
        return [fn(x[0], axis=None if axes is None else tuple(axes), keepdims=keep)]

    return run


def _fold_slice(node, x, attrs):
    data, starts, ends = x[0], x[1], x[2]
    axes = list(range(len(starts))) if len(x) < 4 or x[3] is None else [int(a) for a in x[3]]
    steps = [1] * len(starts) if len(x) < 5 or x[4] is None else [int(s) for s in x[4]]
    index = [slice(None)] * data.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[a] = slice(int(max(min(s, 2**62), -2**62)), int(max(min(e, 2**62), -2**62)), st)
    return [data[tuple(index)]]


def _fold_reshape(node, x, attrs):
    data, shape = x[0], [int(v) for v in x[1]]
    if not attrs.get("allowzero", 0):
        shape = [data.shape[i] if v == 0 else v for i, v in enumerate(shape)]
    return [data.reshape(shape)]


def _fold_cast(node, x, attrs):
    from onnx import helper

    return [x[0].astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))]


def _fold_constant(node, x, attrs):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in attrs:
            value = attrs[key]
            dtype = np.float32 if key.startswith("value_float") else (np.int64 if key.startswith("value_int") else None)
            return [np.asarray(value, dtype=dtype)]
    raise ConversionError("Constant without a numeric value")


def _fold_clip(node, x, attrs):
    lo = x[1] if len(x) > 1 and x[1] is not None else -np.inf
    hi = x[2] if len(x) > 2 and x[2] is not None else np.inf
    return [np.clip(x[0], lo, hi).astype(x[0].dtype)]


def _fold_gemm(node, x, attrs):
    a = x[0].T if attrs.get("transA", 0) else x[0]
    b = x[1].T if attrs.get("transB", 0) else x[1]
    out = attrs.get("alpha", 1.0) * (a @ b)
    if len(x) > 2 and x[2] is not None:
        out = out + attrs.get("beta", 1.0) * x[2]
    return [out.astype(x[0].dtype)]


def _fold_unsqueeze(node, x, attrs):
    out = x[0]
    axes = _axes(node, x, attrs)
    rank = out.ndim + len(axes)
    for a in sorted(a % rank for a in axes):
        out = np.expand_dims(out, a)
    return [out]


def _fold_squeeze(node, x, attrs):
    axes = _axes(node, x, attrs)
    return [np.squeeze(x[0], axis=None if axes is None else tuple(axes))]


def _fold_flatten(node, x, attrs):
    axis = attrs.get("axis", 1) % max(x[0].ndim, 1) if x[0].ndim else 0
    return [x[0].reshape(int(np.prod(x[0].shape[:axis], dtype=np.int64)), -1)]


#: op type -> fold(node, input values, attributes) -> list of output values (all inputs constant)
FOLD = {
    "Identity": lambda n, x, a: [x[0]],
    "Dropout": lambda n, x, a: [x[0], np.ones(x[0].shape, bool)],
    "Cast": _fold_cast,
    "Constant": _fold_constant,
    "Shape": lambda n, x, a: [np.asarray(x[0].shape, np.int64)[a.get("start", 0):a.get("end")]],
    "Size": lambda n, x, a: [np.asarray(x[0].size, np.int64)],
    "Gather": lambda n, x, a: [np.take(x[0], x[1], axis=a.get("axis", 0))],
    "Unsqueeze": _fold_unsqueeze,
    "Squeeze": _fold_squeeze,
    "Concat": lambda n, x, a: [np.concatenate([np.asarray(v) for v in x], axis=a["axis"])],
    "Reshape": _fold_reshape,
    "Flatten": _fold_flatten,
    "Slice": _fold_slice,
    "Transpose": lambda n, x, a: [np.transpose(x[0], a.get("perm"))],
    "Expand": lambda n, x, a: [x[0] * np.ones([int(v) for v in x[1]], dtype=x[0].dtype)],
    "Tile": lambda n, x, a: [np.tile(x[0], [int(v) for v in x[1]])],
    "ConstantOfShape": lambda n, x, a: [np.full([int(v) for v in x[0]], a["value"].reshape(-1)[0]
                                                if "value" in a else np.float32(0))],
    "Range": lambda n, x, a: [np.arange(x[0], x[1], x[2]).astype(np.result_type(x[0]))],
    "Add": lambda n, x, a: [x[0] + x[1]],
    "Sub": lambda n, x, a: [x[0] - x[1]],
    "Mul": lambda n, x, a: [x[0] * x[1]],
    "Div": lambda n, x, a: [_fold_div(x[0], x[1])],
    "Pow": lambda n, x, a: [_f64(np.power)(x[0], x[1]).astype(x[0].dtype)],
    "Neg": lambda n, x, a: [-x[0]],
    "Abs": lambda n, x, a: [np.abs(x[0])],
    "Sign": lambda n, x, a: [np.sign(x[0])],
    "Sqrt": lambda n, x, a: [_f64(np.sqrt)(x[0])],
    "Exp": lambda n, x, a: [_f64(np.exp)(x[0])],
    "Log": lambda n, x, a: [_f64(np.log)(x[0])],
    "Reciprocal": lambda n, x, a: [_f64(lambda v: 1.0 / v)(x[0])],
    "Floor": lambda n, x, a: [np.floor(x[0])],
    "Ceil": lambda n, x, a: [np.ceil(x[0])],
    "Round": lambda n, x, a: [np.round(x[0])],
    "Softplus": lambda n, x, a: [_f64(lambda v: np.logaddexp(0.0, v))(x[0])],
    "Sigmoid": lambda n, x, a: [_f64(lambda v: 1.0 / (1.0 + np.exp(-v)))(x[0])],
    "Tanh": lambda n, x, a: [_f64(np.tanh)(x[0])],
    "Relu": lambda n, x, a: [np.maximum(x[0], 0).astype(x[0].dtype)],
    "Clip": _fold_clip,
    "Max": lambda n, x, a: [np.maximum.reduce(np.broadcast_arrays(*x))],
    "Min": lambda n, x, a: [np.minimum.reduce(np.broadcast_arrays(*x))],
    "Sum": lambda n, x, a: [sum(x[1:], x[0])],
    "Where": lambda n, x, a: [np.where(x[0], x[1], x[2])],
    "Equal": lambda n, x, a: [np.equal(x[0], x[1])],
    "Greater": lambda n, x, a: [np.greater(x[0], x[1])],
    "Less": lambda n, x, a: [np.less(x[0], x[1])],
    "GreaterOrEqual": lambda n, x, a: [np.greater_equal(x[0], x[1])],
    "LessOrEqual": lambda n, x, a: [np.less_equal(x[0], x[1])],
    "Not": lambda n, x, a: [np.logical_not(x[0])],
    "And": lambda n, x, a: [np.logical_and(x[0], x[1])],
    "Or": lambda n, x, a: [np.logical_or(x[0], x[1])],
    "ReduceProd": _fold_reduce(np.prod),
    "ReduceSum": _fold_reduce(np.sum),
    "ReduceMean": _fold_reduce(np.mean),
    "ReduceMax": _fold_reduce(np.max),
    "ReduceMin": _fold_reduce(np.min),
    "MatMul": lambda n, x, a: [np.matmul(x[0], x[1])],
    "Gemm": _fold_gemm,
}


# --------------------------------------------------------------------------- the walk
def _scope(names) -> str:
    """A readable evsim node name for ONNX nodes: their common ``/module/`` scope.

    ``/layer1/conv/Conv`` gives ``layer1/conv``; the run ``/act1/Div``, ``/act1/Clip``, ... gives
    ``act1``; names without a shared scope (``node_mul_26``) give the last name.
    """
    names = [n for n in names if n]
    if not names:
        return "node"
    parts = [n.strip("/").split("/") for n in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    if len(set(map(tuple, parts))) == 1:
        last = parts[-1]
        return "/".join(last[:-1]) if len(last) > 1 else last[0]
    return "/".join(common) if common else names[-1]


def _pads(attrs, kernel, strides, dilations, spatial) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` from ONNX ``pads``/``auto_pad``."""
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return same_pads(spatial, kernel, strides, dilations, lower=auto_pad == "SAME_LOWER")
    pads = attrs.get("pads")
    if auto_pad == "VALID" or pads is None:
        return 0, 0, 0, 0
    return int(pads[0]), int(pads[2]), int(pads[1]), int(pads[3])


def _label(node) -> str:
    """The node's name for messages and evsim names; the dynamo exporter's module scope when it has one."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = [str(s) for s in ast.literal_eval(prop.value) if s]
            except (ValueError, SyntaxError):
                break
            if scopes:
                return "/" + "/".join(scopes)
    return node.name or (node.output[0] if node.output else node.op_type)


class _OnnxGraph:
    """One import: walks the ONNX nodes in order, keeping constants and dynamic values apart."""

    def __init__(self, model, path: Path, activations: dict):
        self.model, self.path, self.activations = model, path, activations
        self.graph = model.graph
        self.consts: dict[str, np.ndarray] = {}
        self.uses: dict[str, int] = {}
        self.dyn = Values(str(path), self.uses)
        self.dropped: list[str] = []
        self.outputs = [o.name for o in self.graph.output]
        self.node = None

    # ---------------------------------------------------------------- messages
    def where(self, node=None) -> str:
        node = node or self.node
        label = node.name or (node.output[0] if node.output else "?")
        return f"{self.path}, node '{label}' ({node.op_type})"

    def refuse(self, expected: str, found: str, fix: str | None = None, node=None):
        raise ConversionError(describe(self.where(node), expected, found, fix))

    # ---------------------------------------------------------------- entry
    def run(self):
        from onnx import numpy_helper

        self._check_opset()
        for tensor in self.graph.initializer:
            self.consts[tensor.name] = numpy_helper.to_array(tensor)
        inputs = [i for i in self.graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise ConversionError(describe(f"{self.path}, graph inputs", "exactly one input (the data)",
                                           f"{len(inputs)}: {', '.join(i.name for i in inputs) or 'none'}",
                                           "export a model with a single input tensor"))
        if len(self.outputs) != 1:
            raise ConversionError(describe(f"{self.path}, graph outputs", "exactly one output (the logits)",
                                           f"{len(self.outputs)}: {', '.join(self.outputs)}",
                                           "export only the logits"))
        for node in self.graph.node:
            for name in node.input:
                self.uses[name] = self.uses.get(name, 0) + 1
        for name in self.outputs:
            self.uses[name] = self.uses.get(name, 0) + 1
        self.builder = self.dyn.builder = self._input(inputs[0])
        for node in self.graph.node:
            self.node = node
            self._visit(node)
        out = self.outputs[0]
        if out not in self.dyn:
            raise ConversionError(describe(f"{self.path}, output '{out}'", "an output computed from the input",
                                           "a constant"))
        view = self._concrete(out, "output")
        if not view.flat_order_kept:
            raise ConversionError(describe(f"{self.path}, output '{out}'", "logits in evsim's (C, H, W) order",
                                           f"a transposed tensor of shape {view.shape}", "export the logits as (N, F)"))
        if view.node == "input":
            raise ConversionError(describe(f"{self.path}, output '{out}'", "an output computed by layers",
                                           "the input itself"))
        producer = " ".join(p for p in (self.model.producer_name, self.model.producer_version) if p)
        info = {"importer": "onnx", "file": self.path.name, "opset": self.opset}
        if producer:
            info["producer"] = producer
        if self.dropped:
            info["dropped"] = self.dropped
        if self.layout != "nchw":
            info["input_layout"] = self.layout
        return self.builder.finish(view.node, {"source": f"ONNX model {self.path.name}", "imported_from": info})

    def _check_opset(self):
        versions = [o.version for o in self.model.opset_import if o.domain in _DEFAULT_DOMAINS]
        self.opset = int(versions[0]) if versions else None
        if self.opset is None or not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ConversionError(describe(
                f"{self.path}, opset_import", f"the default ONNX opset between {MIN_OPSET} and {MAX_OPSET}",
                "none" if self.opset is None else str(self.opset),
                f"export with opset {MIN_OPSET}..{MAX_OPSET}, e.g. torch.onnx.export(..., opset_version=17)"))

    def _input(self, value) -> GraphBuilder:
        dims = value.type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        where = f"{self.path}, input '{value.name}'"
        found = str([d if d is not None else "?" for d in shape])
        if len(shape) not in (2, 4):
            raise ConversionError(describe(where, "an input of shape (N, C, H, W) or (N, F)", found,
                                           "evsim simulates images and feature vectors (no 1-D or 3-D inputs)"))
        if any(d is None or d < 1 for d in shape[1:]):
            raise ConversionError(describe(where, "fixed C, H, W (or F)", found,
                                           "export with a fixed sample shape (a dynamic batch axis is fine)"))
        self.batch = shape[0] if shape[0] else BATCH
        sample = tuple(shape[1:])
        self.layout = "nhwc" if len(sample) == 3 and self._leads_to_nchw(value.name) else "nchw"
        if self.layout == "nhwc":
            h, w, c = sample
            view = View("input", (c, h, w), (1, 2, 0), sample)
            evsim_shape = (c, h, w)
        else:
            view, evsim_shape = View.of("input", sample), sample
        self.dyn[value.name] = Pending(view)
        return GraphBuilder(str(self.path), evsim_shape)

    def _leads_to_nchw(self, name: str) -> bool:
        """True when the input reaches a Transpose(0, 3, 1, 2) through elementwise ops: NHWC data."""
        users = {}
        for node in self.graph.node:
            for i in node.input:
                users.setdefault(i, []).append(node)
        seen = 0
        while seen < 16:
            nodes = users.get(name, [])
            if len(nodes) != 1:
                return False
            node = nodes[0]
            if node.op_type == "Transpose":
                return list(_attrs(node).get("perm", [])) == [0, 3, 1, 2]
            if node.op_type not in ("Div", "Mul", "Add", "Sub", "Cast", "Identity"):
                return False
            name, seen = node.output[0], seen + 1
        return False

    # ---------------------------------------------------------------- dispatch
    def _visit(self, node):
        op = node.op_type
        if node.domain not in _DEFAULT_DOMAINS or op in self.activations:
            return self._custom(node)
        ins = [self.consts.get(n) if n else None for n in node.input]
        dynamic = [n for n in node.input if n and n in self.dyn]
        missing = [n for n in node.input if n and n not in self.dyn and n not in self.consts]
        if missing:
            self.refuse("inputs produced by earlier nodes (nodes in topological order)", f"unknown input '{missing[0]}'")
        if not dynamic:
            fold = FOLD.get(op)
            if fold is None:
                self.refuse("a constant op evsim can fold: " + ", ".join(sorted(FOLD)), f"op '{op}' on constants")
            try:
                values = fold(node, ins, _attrs(node))
            except ConversionError:
                raise
            except Exception as exc:  # noqa: BLE001 - bad shapes or attributes in a constant subgraph
                self.refuse("a constant subgraph evsim can evaluate", f"{type(exc).__name__}: {exc}")
            for name, value in zip(node.output, values):
                if name:
                    self.consts[name] = np.asarray(value)
            return
        handler = HANDLERS.get(op)
        if handler is None:
            self.refuse("an op among " + ", ".join(SUPPORTED_OPS), f"op '{op}' on the data path",
                        "replace it in the model, or map a custom activation with --activation")
        handler(self, node, _attrs(node))

    # ---------------------------------------------------------------- dynamic helpers
    def _single_output(self, node):
        for extra in node.output[1:]:
            if extra and self.uses.get(extra, 0):
                self.refuse("only the first output to be used", f"output '{extra}' used by another node")

    def _concrete(self, name: str, wanted: str | None = None) -> View:
        """The evsim view of a dynamic value, materialising its pending elementwise steps."""
        return self.dyn.concrete(name, wanted)

    def _plain(self, name: str, rank: int | None = 3) -> View:
        view = self._concrete(name)
        if not view.plain:
            if view.base == view.shape and len(view.shape) == 3:
                self.refuse("a channels-first (N, C, H, W) tensor", f"a transposed tensor (layout {view.perm})",
                            "transpose back to NCHW before this op")
            self.refuse(f"a tensor of shape (N, {', '.join('CHW'[:rank] if rank == 3 else 'F')})",
                        f"a reshaped tensor of shape {view.shape}")
        if rank is not None and len(view.shape) != rank:
            self.refuse(f"an input of {rank + 1} dimensions", f"shape (N, {', '.join(map(str, view.shape))})")
        return view

    def _set(self, node, view: View):
        self.dyn[node.output[0]] = Pending(view)

    def _const(self, node, index: int, what: str, required: bool = True):
        name = node.input[index] if len(node.input) > index else ""
        if not name:
            if required:
                self.refuse(f"input {index} ({what})", "none")
            return None
        if name in self.dyn:
            self.refuse(f"a constant {what} (an initializer or folded constant)", f"'{name}', computed from the data")
        return self.consts[name]

    def _weight(self, node, index: int, what: str, required: bool = True):
        value = self._const(node, index, what, required)
        return None if value is None else as_float_array(value, f"{self.where(node)}, {what}")

    def _step_const(self, node, value: np.ndarray, view: View) -> np.ndarray:
        """A constant operand as a scalar or per-channel array in the evsim layout of ``view``."""
        return channel_constant(self.builder, view, value, self.where(node))

    def _extend(self, node, name: str, *steps):
        """``node``'s output: the value ``name`` followed by elementwise steps."""
        self.dyn.extend(node.output[0], name, _label(node), *steps)

    def _alias(self, node, name: str, view: View | None = None):
        self.dyn.alias(node.output[0], name, view)

    # ---------------------------------------------------------------- custom ops (--activation)
    def _custom(self, node):
        spec = self.activations.get(node.op_type) or self.activations.get(f"{node.domain}.{node.op_type}")
        if spec is None:
            label = f"{node.domain}.{node.op_type}" if node.domain not in _DEFAULT_DOMAINS else node.op_type
            self.refuse("an op of the default ONNX domain among " + ", ".join(SUPPORTED_OPS), f"custom op '{label}'",
                        f"map it with --activation {node.op_type}=relu or --activation "
                        f"{node.op_type}=qcfs:WEIGHT_NAME,LEVELS")
        data = [n for n in node.input if n in self.dyn]
        if len(data) != 1:
            self.refuse("a custom activation with one data input", f"{len(data)} data inputs")
        view = self._concrete(data[0])
        name = _scope([_label(node)])
        if spec.op == "relu":
            out = self.builder.add(name, "relu", [view.node], kind=node.op_type)
        else:
            theta = self._custom_weight(node, spec.weight)
            theta = self._step_const(node, theta, view)
            out = self.builder.add(name, "qcfs", [view.node], {"levels": spec.levels},
                                   {"threshold": as_float_array(theta, self.where(node))}, kind=node.op_type)
        self._single_output(node)
        self._set(node, View(out, view.base, view.perm, view.shape))

    def _custom_weight(self, node, weight: str) -> np.ndarray:
        attrs = _attrs(node)
        if weight in attrs:
            return np.asarray(attrs[weight], dtype=np.float64)
        consts = [n for n in node.input if n in self.consts]
        for n in consts:
            if n == weight or n.split("/")[-1].split(".")[-1] == weight or n.endswith("." + weight):
                return self.consts[n]
        if weight.isdigit() and int(weight) < len(node.input) and node.input[int(weight)] in self.consts:
            return self.consts[node.input[int(weight)]]
        self.refuse(f"a constant input or attribute named '{weight}' (the threshold)",
                    "inputs " + ", ".join(consts or ["none"]) + "; attributes " + ", ".join(attrs or ["none"]))


# --------------------------------------------------------------------------- handlers (data path)
def _elementwise_binary(kind_const_right, kind_const_left=None):
    """Add/Sub/Mul/Div with one constant operand -> a chain step (both dynamic: only Add)."""

    def handle(g: _OnnxGraph, node, attrs):
        a, b = node.input[0], node.input[1]
        if a in g.dyn and b in g.dyn:
            if node.op_type != "Add":
                g.refuse(f"{node.op_type} with a constant operand (evsim adds data paths, it does not "
                         f"{node.op_type.lower()} them)", "two data inputs")
            return _add_paths(g, node, [a, b])
        if a in g.dyn:
            g._extend(node, a, (kind_const_right, g._step_const(node, g.consts[b], g.dyn[a].view)))
            return
        if kind_const_left is None:
            g.refuse(f"{node.op_type} of the data by a constant", f"a constant {node.op_type.lower()}ed by the data")
        g._extend(node, b, (kind_const_left, g._step_const(node, g.consts[a], g.dyn[b].view)))

    return handle


def _add_paths(g: _OnnxGraph, node, names):
    views = [g._concrete(n) for n in names]
    first = views[0]
    for v in views[1:]:
        if (v.base, v.perm, v.shape) != (first.base, first.perm, first.shape):
            g.refuse("data inputs of the same shape and layout", f"{first.shape} and {v.shape}")
    out = g.builder.add(_scope([_label(node)]), "add", [v.node for v in views], kind=node.op_type)
    g._set(node, View(out, first.base, first.perm, first.shape))


def _sum(g, node, attrs):
    dyn = [n for n in node.input if n in g.dyn]
    if len(dyn) != len(node.input):
        g.refuse("Sum of data inputs only", "a constant operand", "use Add for a constant")
    if len(dyn) == 1:
        return g._alias(node, dyn[0])
    _add_paths(g, node, dyn)


def _clip_step(g, node, attrs):
    view = g.dyn[node.input[0]].view
    lo = g._const(node, 1, "min", required=False)
    hi = g._const(node, 2, "max", required=False)
    lo = -np.inf if lo is None else g._step_const(node, lo, view)
    hi = np.inf if hi is None else g._step_const(node, hi, view)
    g._extend(node, node.input[0], ("clip", lo, hi))


def _minmax(kind):
    def handle(g, node, attrs):
        data = [n for n in node.input if n in g.dyn]
        consts = [n for n in node.input if n not in g.dyn]
        if len(data) != 1 or len(consts) != 1:
            g.refuse(f"{node.op_type} of the data and one constant", f"{len(data)} data and {len(consts)} constant inputs")
        c = g._step_const(node, g.consts[consts[0]], g.dyn[data[0]].view)
        step = ("clip", c, np.inf) if kind == "max" else ("clip", -np.inf, c)
        g._extend(node, data[0], step)

    return handle


def _passthrough(g, node, attrs):
    if node.op_type == "Cast":
        from onnx import helper

        if np.dtype(helper.tensor_dtype_to_np_dtype(attrs["to"])).kind != "f":
            g.refuse("a Cast to a float type on the data path", f"a Cast to {helper.tensor_dtype_to_np_dtype(attrs['to'])}")
    g._single_output(node)
    g._alias(node, node.input[0])


def _conv(g: _OnnxGraph, node, attrs):
    view = g._plain(node.input[0])
    w = g._weight(node, 1, "weight")
    if w.ndim != 4:
        g.refuse("a 2-D convolution (weight of 4 dimensions)", f"weight of shape {w.shape}")
    bias = g._weight(node, 2, "bias", required=False)
    kernel = list(attrs.get("kernel_shape", w.shape[2:]))
    if kernel != list(w.shape[2:]):
        g.refuse(f"kernel_shape equal to the weight's {list(w.shape[2:])}", str(kernel))
    strides = list(attrs.get("strides", [1, 1]))
    dilations = list(attrs.get("dilations", [1, 1]))
    pads = _pads(attrs, kernel, strides, dilations, view.shape[1:])
    out = add_conv(g.builder, view.node, w, bias, strides, pads, dilations, attrs.get("group", 1),
                   _scope([_label(node)]), "Conv")
    g._set(node, View.of(out, g.builder.shape(out)))


def _pool(op):
    def handle(g: _OnnxGraph, node, attrs):
        view = g._plain(node.input[0])
        g._single_output(node)
        kernel = list(attrs["kernel_shape"])
        strides = list(attrs.get("strides", [1] * len(kernel)))
        if len(kernel) != 2:
            g.refuse("2-D pooling", f"kernel_shape {kernel}")
        if any(d != 1 for d in attrs.get("dilations", [1, 1])):
            g.refuse("pooling without dilation", f"dilations {attrs['dilations']}")
        pads = _pads(attrs, kernel, strides, [1, 1], view.shape[1:])
        top, bottom, left, right = pads
        if attrs.get("ceil_mode", 0):
            sizes = [(view.shape[1] + top + bottom - kernel[0]) / strides[0],
                     (view.shape[2] + left + right - kernel[1]) / strides[1]]
            if any(math.ceil(v) != math.floor(v) for v in sizes):
                g.refuse("ceil_mode=0 (or a ceil_mode=1 that changes nothing)",
                         "ceil_mode=1 with windows past the input", "export the pooling with ceil_mode=False")
        if op == "avgpool2d" and any(pads) and not attrs.get("count_include_pad", 0):
            g.refuse("count_include_pad=1 when padding (evsim divides every window by kH·kW)",
                     f"count_include_pad=0 with pads {list(pads)}", "use count_include_pad=True or no padding")
        out = add_pool(g.builder, view.node, op, kernel, strides, pads, _scope([_label(node)]), node.op_type)
        g._set(node, View.of(out, g.builder.shape(out)))

    return handle


def _global_pool(g, node, attrs, keep=True):
    view = g._plain(node.input[0])
    out = g.builder.add(_scope([_label(node)]), "global_avgpool", [view.node], kind=node.op_type)
    c = view.shape[0]
    g._set(node, View(out, (c,), (0,), (c, 1, 1) if keep else (c,)))


def _reduce_spatial(g, node, attrs):
    """ReduceMean/ReduceSum over H and W of an NCHW tensor: global average pooling (times H·W for a sum)."""
    axes = attrs.get("axes")
    if len(node.input) > 1 and node.input[1]:
        axes = [int(a) for a in g._const(node, 1, "axes")]
    view = g._concrete(node.input[0])
    rank = len(view.shape) + 1
    if axes is None or sorted(a % rank for a in axes) != [2, 3] or rank != 4:
        g.refuse(f"{node.op_type} over the spatial axes (2, 3) of an NCHW tensor (global pooling)",
                 f"axes {axes} of a {rank}-D tensor")
    _global_pool(g, node, attrs, keep=bool(attrs.get("keepdims", 1)))
    if node.op_type == "ReduceSum":
        g._extend(node, node.output[0], ("mul", np.asarray(float(view.shape[1] * view.shape[2]))))


def _gemm(g: _OnnxGraph, node, attrs):
    if node.input[0] not in g.dyn or node.input[1] in g.dyn:
        g.refuse("Gemm of the data (input A) by a constant matrix B", "a data input B")
    if attrs.get("transA", 0):
        g.refuse("transA=0 (the batch axis first)", "transA=1")
    b = g._weight(node, 1, "B")
    c = g._weight(node, 2, "C", required=False)
    w = (b.T if attrs.get("transB", 0) else b) * np.float32(attrs.get("alpha", 1.0))
    bias = None if c is None else np.broadcast_to(c * np.float32(attrs.get("beta", 1.0)), (w.shape[1],))
    _linear(g, node, w, bias)


def _matmul(g: _OnnxGraph, node, attrs):
    if node.input[0] not in g.dyn or node.input[1] in g.dyn:
        g.refuse("MatMul of the data by a constant matrix", "a data right-hand side")
    _linear(g, node, g._weight(node, 1, "weight"), None)


def _linear(g: _OnnxGraph, node, w_in_out: np.ndarray, bias):
    """A linear layer on ``node.input[0]`` with weight ``(in, out)`` in the framework's feature order."""
    out = add_linear(g.builder, g._concrete(node.input[0]), w_in_out, bias, _scope([_label(node)]), node.op_type)
    g._set(node, View.of(out, g.builder.shape(out)))


def _batchnorm(g: _OnnxGraph, node, attrs):
    if attrs.get("training_mode", 0):
        g.refuse("BatchNormalization in inference mode", "training_mode=1", "export the model in eval() mode")
    g._single_output(node)
    scale, beta, mean, var = (g._weight(node, i, what) for i, what in ((1, "scale"), (2, "B"), (3, "mean"), (4, "var")))
    eps = float(attrs.get("epsilon", 1e-5))
    view = g._concrete(node.input[0])
    if view.plain:
        out = g.builder.add(_scope([_label(node)]), "batchnorm", [view.node], {"eps": eps},
                            {"gamma": scale, "beta": beta, "mean": mean, "var": var}, kind="BatchNormalization")
        return g._set(node, View.of(out, g.builder.shape(out)))
    # a reshaped/transposed input: the same map as elementwise steps along ONNX axis 1
    shape = (-1,) + (1,) * (len(view.shape) - 1)
    a = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    b = beta - mean * a
    g._extend(node, node.input[0], ("mul", g._step_const(node, a.reshape(shape), view)),
              ("add", g._step_const(node, b.reshape(shape), view)))


def _reshape_view(g: _OnnxGraph, node, full_target):
    """Output of a reshape-like op as a view; the batch axis must stay first and unchanged."""
    full_target = [int(v) for v in full_target]
    if not full_target or full_target[0] != g.batch:
        g.refuse("a reshape that keeps the batch axis first", f"target shape {full_target}",
                 "reshape per sample, e.g. x.view(x.size(0), -1) or x.flatten(1)")
    dyn = g.dyn[node.input[0]]
    sample = tuple(full_target[1:])
    if math.prod(sample) != math.prod(dyn.view.shape):
        g.refuse(f"a reshape of {math.prod(dyn.view.shape)} values per sample", f"target {full_target}")
    g._alias(node, node.input[0], dyn.view.reshape(sample))


def _full_shape(g, name):
    return [g.batch, *g.dyn[name].view.shape]


def _reshape(g, node, attrs):
    shape = [int(v) for v in g._const(node, 1, "shape")]
    current = _full_shape(g, node.input[0])
    if not attrs.get("allowzero", 0):
        shape = [current[i] if v == 0 and i < len(current) else v for i, v in enumerate(shape)]
    if shape.count(-1) > 1:
        g.refuse("at most one -1 in the target shape", str(shape))
    if -1 in shape:
        known = math.prod(v for v in shape if v != -1)
        total = math.prod(current)
        if known == 0 or total % known:
            g.refuse("a target shape that fits the data", f"{shape} for {current}")
        shape[shape.index(-1)] = total // known
    _reshape_view(g, node, shape)


def _flatten(g, node, attrs):
    current = _full_shape(g, node.input[0])
    axis = attrs.get("axis", 1) % len(current)
    _reshape_view(g, node, [math.prod(current[:axis]), math.prod(current[axis:])])


def _squeeze(g, node, attrs):
    current = _full_shape(g, node.input[0])
    axes = attrs.get("axes") if len(node.input) < 2 else [int(a) for a in g._const(node, 1, "axes")]
    axes = [a % len(current) for a in axes] if axes is not None else [i for i, d in enumerate(current) if d == 1]
    _reshape_view(g, node, [d for i, d in enumerate(current) if i not in axes])


def _unsqueeze(g, node, attrs):
    current = _full_shape(g, node.input[0])
    axes = attrs.get("axes") if len(node.input) < 2 else [int(a) for a in g._const(node, 1, "axes")]
    out = list(current)
    rank = len(current) + len(axes)
    for a in sorted(a % rank for a in axes):
        out.insert(a, 1)
    _reshape_view(g, node, out)


def _transpose(g, node, attrs):
    dyn = g.dyn[node.input[0]]
    rank = len(dyn.view.shape) + 1
    perm = list(attrs.get("perm", reversed(range(rank))))
    if perm[0] != 0:
        g.refuse("a Transpose that keeps the batch axis first", f"perm {perm}")
    view = dyn.view.transpose([p - 1 for p in perm[1:]])
    if view is None:
        g.refuse("a Transpose of an unreshaped tensor", f"a Transpose after a Reshape (shape {dyn.view.shape})")
    g._alias(node, node.input[0], view)


def _pad_op(g, node, attrs):
    view = g._plain(node.input[0])
    if attrs.get("mode", "constant") != "constant":
        g.refuse("Pad mode 'constant'", repr(attrs.get("mode")))
    pads = [int(v) for v in g._const(node, 1, "pads")]
    value = g._const(node, 2, "constant_value", required=False)
    if value is not None and np.any(np.asarray(value) != 0):
        g.refuse("padding with zeros", f"constant_value {np.asarray(value).tolist()}")
    axes = g._const(node, 3, "axes", required=False)
    rank = len(view.shape) + 1
    axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes]
    begin = dict(zip(axes, pads[:len(axes)]))
    end = dict(zip(axes, pads[len(axes):]))
    if any(begin.get(a, 0) or end.get(a, 0) for a in (0, 1)):
        g.refuse("padding of the H and W axes only", f"pads {pads} on axes {axes}")
    out = g.builder.add(_scope([_label(node)]), "pad2d", [view.node],
                        {"pads": [begin.get(2, 0), end.get(2, 0), begin.get(3, 0), end.get(3, 0)]}, kind="Pad")
    g._set(node, View.of(out, g.builder.shape(out)))


def _softmax(g, node, attrs):
    if node.output[0] not in g.outputs:
        g.refuse(f"{node.op_type} only as the last op (it is dropped; the output is then the logits)",
                 f"{node.op_type} inside the network")
    g.dropped.append(node.op_type)
    g._alias(node, node.input[0])


#: op type -> handler(importer, node, attributes) for nodes on the data path
HANDLERS = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "BatchNormalization": _batchnorm,
    "Relu": lambda g, n, a: g._extend(n, n.input[0], ("clip", 0.0, np.inf)),
    "Clip": _clip_step,
    "Max": _minmax("max"),
    "Min": _minmax("min"),
    "Floor": lambda g, n, a: g._extend(n, n.input[0], ("floor",)),
    "Neg": lambda g, n, a: g._extend(n, n.input[0], ("mul", np.asarray(-1.0))),
    "Mul": _elementwise_binary("mul", "mul"),
    "Div": _elementwise_binary("div"),
    "Add": _elementwise_binary("add", "add"),
    "Sub": _elementwise_binary("sub", "rsub"),
    "Sum": _sum,
    "AveragePool": _pool("avgpool2d"),
    "MaxPool": _pool("maxpool2d"),
    "GlobalAveragePool": _global_pool,
    "ReduceMean": _reduce_spatial,
    "ReduceSum": _reduce_spatial,
    "Pad": _pad_op,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Transpose": _transpose,
    "Identity": _passthrough,
    "Dropout": _passthrough,
    "Cast": _passthrough,
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
    "Shape": lambda g, n, a: g.consts.__setitem__(
        n.output[0], np.asarray(_full_shape(g, n.input[0]), np.int64)[a.get("start", 0):a.get("end")]),
    "Size": lambda g, n, a: g.consts.__setitem__(n.output[0], np.asarray(math.prod(_full_shape(g, n.input[0])))),
}

#: every op type the importer accepts (on the data path, or folded when constant)
SUPPORTED_OPS = sorted(set(HANDLERS) | {"Constant"})
