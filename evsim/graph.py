"""In-memory model graph, the op registry, and validation (shape inference).

A :class:`Graph` is the validated, container-independent form of an evsim model file
(format v1, see ``docs/format.md``).  Every op is described once, in :data:`OPS`, by an
:class:`OpSpec`: which arrays and attributes it takes, how its output shape follows
from its inputs, and how many multiply-accumulates it costs.  Validation walks the
nodes in order and checks everything a simulator would otherwise trip over later.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from .errors import ArrayError, GraphError, ManifestError, ResourceLimitError, describe

__all__ = [
    "Node",
    "InputSpec",
    "Graph",
    "OpSpec",
    "OPS",
    "ACTIVATION_OPS",
    "Attr",
    "validate",
    "memory_limit",
    "node_macs",
]

Shape = tuple[int, ...]

#: default ceiling on the memory one sample of a model may need (bytes); see :func:`memory_limit`
DEFAULT_MEMORY_LIMIT = 8 * 2**30


def memory_limit() -> int:
    """Bytes a model, a data slice or a run may need before it is refused.

    Read from the environment variable ``EVSIM_MEMORY_LIMIT``: a positive, finite
    number of bytes written in ASCII, optionally with a unit ``K``, ``M``, ``G`` or ``T``
    (powers of 1024) and an optional ``B`` or ``iB`` (``4000000000``, ``512M``,
    ``8G``, ``8GiB``, ``1.5GB``); unset or empty means the default, 8 GiB.

    Raises
    ------
    ResourceLimitError
        A value that is not such a byte count (``inf``, ``-1``, ``0``, ``lots``).
    """
    import re

    raw = os.environ.get("EVSIM_MEMORY_LIMIT", "")
    text = raw.strip()
    if not text:
        return DEFAULT_MEMORY_LIMIT
    match = re.fullmatch(r"([0-9]{1,30}(?:\.[0-9]{1,30})?|\.[0-9]{1,30})\s*([KMGT]?)(I?B)?", text,
                         re.IGNORECASE | re.ASCII)
    factor = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    value = float(match.group(1)) * factor[match.group(2).upper()] if match and (
        match.group(2) or not match.group(3) or match.group(3).upper() == "B") else 0.0
    if not (1 <= value < 2**63):
        shown = raw if len(raw) <= 40 else raw[:40] + "..."
        raise ResourceLimitError(describe(
            "environment variable EVSIM_MEMORY_LIMIT",
            "a positive byte count, optionally with a unit K, M, G or T (powers of 1024) and B or iB, "
            "e.g. 4000000000, 512M or 8G", repr(shown),
            "fix the value, or unset EVSIM_MEMORY_LIMIT for the default of 8G"))
    return int(value)


# --------------------------------------------------------------------------- data classes
@dataclass
class InputSpec:
    """One input sample and its preprocessing: ``(x * scale - mean[c]) / std[c]``."""

    shape: Shape
    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def preprocess(self, x: np.ndarray, dtype=np.float64) -> np.ndarray:
        """Apply the preprocessing to a batch ``x`` of shape ``(N, *shape)``."""
        out = np.asarray(x, dtype=dtype)
        if self.scale is not None:
            out = out * dtype(self.scale)
        if self.mean is not None or self.std is not None:
            bshape = (1, -1) + (1,) * (len(self.shape) - 1)
            if self.mean is not None:
                out = out - np.asarray(self.mean, dtype=dtype).reshape(bshape)
            if self.std is not None:
                out = out / np.asarray(self.std, dtype=dtype).reshape(bshape)
        return np.ascontiguousarray(out, dtype=dtype)


@dataclass
class Node:
    """One node of the graph.

    Attributes
    ----------
    name, op : str
        Unique node name and op name (a key of :data:`OPS`).
    inputs : tuple of str
        Earlier node names or ``"input"``.
    attrs : dict
        Non-array attributes (``stride``, ``levels``, ``model`` ...), normalised.
    arrays : dict of str to ndarray
        Array-valued attributes by role (``weight``, ``threshold`` ...).
    array_names : dict of str to str
        The name of each role's array in the file (kept for faithful round trips).
    shape : tuple of int or None
        Output shape of one sample, set by :func:`validate`.
    """

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)
    array_names: dict = field(default_factory=dict)
    shape: Shape | None = None

    def array_name(self, role: str) -> str:
        return self.array_names.get(role, f"{self.name}.{role}")

    def __eq__(self, other) -> bool:
        if not isinstance(other, Node):
            return NotImplemented
        return (
            (self.name, self.op, tuple(self.inputs), self.attrs)
            == (other.name, other.op, tuple(other.inputs), other.attrs)
            and self.arrays.keys() == other.arrays.keys()
            and all(
                self.arrays[k].shape == other.arrays[k].shape
                and np.array_equal(self.arrays[k], other.arrays[k])
                for k in self.arrays
            )
        )


@dataclass
class Graph:
    """A model: input spec, nodes in topological order, the output node, metadata.

    ``kind`` is ``"ann"`` (activations ``relu``/``qcfs``) or ``"snn"`` (``neuron``
    nodes, as written by ``evsim convert``).
    """

    input: InputSpec
    nodes: list[Node]
    output: str
    kind: str = "ann"
    metadata: dict = field(default_factory=dict)
    source: str = "<memory>"

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def shape_of(self, name: str) -> Shape:
        return tuple(self.input.shape) if name == "input" else self.node(name).shape

    def consumers(self) -> dict[str, list[Node]]:
        """Map each node name (and ``"input"``) to the nodes that read it."""
        users: dict[str, list[Node]] = {"input": []}
        for node in self.nodes:
            users.setdefault(node.name, [])
            for src in node.inputs:
                users.setdefault(src, []).append(node)
        return users

    def __eq__(self, other) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        return (
            self.input == other.input
            and self.nodes == other.nodes
            and (self.output, self.kind, self.metadata) == (other.output, other.kind, other.metadata)
        )


# --------------------------------------------------------------------------- attribute parsing
def _pair(value, *, minimum: int, maximum: int) -> tuple[int, int] | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        value = [value, value]
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and minimum <= v <= maximum for v in value)
    ):
        return (int(value[0]), int(value[1]))
    return None


#: upper bound of every integer attribute (kernel, stride, padding, dilation, groups, levels):
#: far above any real network, and small enough that no index computed from it can overflow
MAX_INT_ATTR = 2**16


@dataclass(frozen=True)
class Attr:
    """How one non-array attribute is parsed: ``kind`` is pair/int/float/choice."""

    kind: str
    default: object = None
    required: bool = False
    minimum: float = 0
    choices: tuple = ()
    maximum: int = MAX_INT_ATTR

    def parse(self, value, where: str, key: str):
        if self.kind == "pair":
            parsed = _pair(value, minimum=int(self.minimum), maximum=self.maximum)
            expected = f"an integer in {self.minimum}..{self.maximum} or a pair of them"
        elif self.kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool) and self.minimum <= value <= self.maximum
            parsed = int(value) if ok else None
            expected = f"an integer in {self.minimum}..{self.maximum}"
        elif self.kind == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            parsed = float(value) if ok and value > self.minimum else None
            expected = f"a finite number > {self.minimum}"
        else:  # choice
            parsed = value if value in self.choices else None
            expected = "one of " + ", ".join(map(repr, self.choices))
        if parsed is None:
            text = repr(value)
            raise ManifestError(describe(f"{where}, attribute '{key}'", expected,
                                         text if len(text) <= 80 else text[:77] + "..."))
        return list(parsed) if isinstance(parsed, tuple) else parsed


# --------------------------------------------------------------------------- op specs
InferFn = Callable[[Node, list[Shape], str], Shape]


@dataclass(frozen=True)
class OpSpec:
    """Everything evsim knows about one op.

    ``arrays`` maps each array role to whether it is required; ``array_shapes`` gives
    the allowed shapes of each role for the node's input shapes; ``infer`` returns
    the output shape (raising :class:`GraphError` with the node named);
    ``macs`` counts multiply-accumulates of one sample.  The ANN forward function, the
    rule that composes the op into SNN projections and its calibration behaviour sit in
    the same record (:mod:`evsim.ops` holds every entry).
    """

    name: str
    infer: InferFn
    arrays: Mapping[str, bool] = field(default_factory=dict)
    attrs: Mapping[str, Attr] = field(default_factory=dict)
    array_shapes: Callable[[Node, list[Shape]], Mapping[str, list[Shape]]] = lambda n, s: {}
    macs: Callable[[Node, list[Shape], Shape], int] = lambda n, s, o: 0
    n_inputs: tuple[int, float] = (1, 1)
    kinds: frozenset = frozenset({"ann", "snn"})
    #: custom attribute parsing (node, where) instead of ``attrs`` (neuron nodes: by model)
    parse: Callable[[Node, str], None] | None = None
    #: array roles (role -> required) that depend on the node's attributes
    array_roles: Callable[[Node], Mapping[str, bool]] | None = None
    #: the ANN executor: (node, input values, batch first) -> value; None: not an ANN op
    forward: Callable[[Node, list], np.ndarray] | None = None
    #: SNN projections: (operator so far, node, structural, input index) -> operator; None: not composable
    compose: Callable | None = None
    #: calibration: whether a per-channel shift δ of the input moves the output by exactly δ
    shift: Callable[[Node], bool] | None = None
    #: calibration: the array role that adds a per-channel bias (bias calibration target)
    bias_role: str | None = None
    #: spiking max pooling: becomes a gate after a population
    gate: bool = False
    #: arrays that must be > 0
    positive: tuple = ()


def _fail(where: str, expected: str, found: str, fix: str | None = None):
    raise GraphError(describe(where, expected, found, fix))


def _need_chw(node: Node, shape: Shape, where: str) -> Shape:
    if len(shape) != 3:
        _fail(where, "an input of shape (C, H, W)", f"{shape}",
              "put this op before the flatten/linear part of the network")
    return shape


def _window_out(size: int, k: int, s: int, p: int, d: int, where: str, axis: str) -> int:
    span = d * (k - 1) + 1
    if size + 2 * p < span:
        _fail(where, f"a padded input {axis} of at least {span} for kernel {k}",
              f"{size} + 2*{p} = {size + 2 * p}")
    return (size + 2 * p - span) // s + 1


def node_macs(node: Node, in_shapes: list[Shape]) -> int:
    """Multiply-accumulates of one sample through ``node`` (conv2d and linear only)."""
    return OPS[node.op].macs(node, in_shapes, node.shape)


# --------------------------------------------------------------------------- validation
def validate(graph: Graph, limit: int | None = None) -> Graph:
    """Check a graph completely and set every node's output shape.

    Checks ops and their kind, names (unique, not ``"input"``), that inputs name
    earlier nodes (no dangling inputs, no cycles), array dtypes, shapes and values
    (finite; thresholds > 0), shape inference through the whole graph, that the
    output exists and every node contributes to it, and that one sample fits in
    ``limit`` bytes (default :func:`memory_limit`).

    Returns
    -------
    Graph
        The same graph, with ``node.shape`` filled in.

    Raises
    ------
    ManifestError, ArrayError, GraphError, ResourceLimitError
    """
    src = graph.source
    limit = memory_limit() if limit is None else limit
    shape = tuple(graph.input.shape)
    if len(shape) not in (1, 3) or not all(isinstance(d, (int, np.integer)) and d >= 1 for d in shape):
        raise ManifestError(describe(f"{src}, input.shape", "(C, H, W) or (F,) of positive integers", f"{list(shape)}"))
    _check_preprocessing(graph, src)
    if graph.kind not in ("ann", "snn"):
        raise ManifestError(describe(f"{src}, kind", "'ann' or 'snn'", repr(graph.kind)))

    shapes: dict[str, Shape] = {"input": shape}
    position = {node.name: i for i, node in enumerate(graph.nodes)}
    total = _elements(shape)
    for i, node in enumerate(graph.nodes):
        where = f"{src}, node '{node.name}'"
        spec = OPS.get(node.op)
        if spec is None:
            raise ManifestError(describe(where, "an op among " + ", ".join(sorted(OPS)), repr(node.op)))
        if graph.kind not in spec.kinds:
            fix = ("convert the model with 'evsim convert' first" if node.op == "neuron"
                   else "an SNN file holds 'neuron' nodes in place of activations")
            raise ManifestError(describe(where, f"an op allowed in a kind '{graph.kind}' model", repr(node.op), fix))
        if node.name == "input" or node.name in shapes:
            raise GraphError(describe(where, "a unique node name other than 'input'", "a duplicate"))
        lo, hi = spec.n_inputs
        if not lo <= len(node.inputs) <= hi:
            want = f"{lo}" if lo == hi else f"at least {lo}"
            raise GraphError(describe(where, f"{want} input(s)", f"{len(node.inputs)}"))
        for name in node.inputs:
            if name not in shapes:
                later = position.get(name, -1) >= i
                raise GraphError(describe(
                    where, "inputs naming 'input' or an earlier node",
                    f"'{name}', " + ("a later node (nodes must be in topological order; a cycle?)" if later
                                     else "which is not a node (dangling input)")))
        _parse_attrs(node, spec, where)
        _check_arrays(node, spec, where)
        in_shapes = [shapes[name] for name in node.inputs]
        node.shape = tuple(int(d) for d in spec.infer(node, in_shapes, where))
        if any(d < 1 for d in node.shape):
            raise GraphError(describe(where, "an output of positive size", f"{node.shape}"))
        _check_array_shapes(node, spec, in_shapes, where)
        shapes[node.name] = node.shape
        total += _elements(node.shape) + sum(a.size for a in node.arrays.values())
        if total * 8 > limit:
            raise ResourceLimitError(describe(
                where, f"a model whose sample needs at most {limit} bytes (EVSIM_MEMORY_LIMIT)",
                f"at least {total * 8} bytes declared up to this node",
                "check input.shape and layer sizes, or raise EVSIM_MEMORY_LIMIT"))

    if graph.output not in position:
        raise GraphError(describe(f"{src}, output", "the name of a node", repr(graph.output)))
    if graph.node(graph.output).op in ACTIVATION_OPS:
        raise GraphError(describe(f"{src}, output '{graph.output}'", "a node without activation (the logits)",
                                  f"op {graph.node(graph.output).op!r}"))
    _check_all_used(graph, src)
    relu_caps(graph)
    return graph


def relu_caps(graph: Graph) -> dict[str, np.ndarray]:
    """The upper bound λ of every clipped ReLU of an ANN graph, by node name.

    A ReLU with a maximum (Keras ``ReLU(max_value)``, ONNX ``Clip(0, λ)``, PyTorch ``ReLU6`` /
    ``clamp(0, λ)``) is a ``relu`` node whose λ is recorded in ``metadata["relu_max"]``
    (``{"node": λ}``, a number or one per channel; format v1 keeps unknown metadata): the ANN
    executor computes ``min(max(z, 0), λ)`` there, and conversion uses λ as that layer's
    threshold unless calibration gives one (docs/import.md).

    Returns
    -------
    dict
        Node name -> λ as a float64 array of shape ``()`` or ``(C,)``; empty for SNN graphs.

    Raises
    ------
    ManifestError
        ``relu_max`` that is not a mapping of relu node names to positive finite numbers
        (one, or one per channel).
    """
    raw = graph.metadata.get("relu_max") if isinstance(graph.metadata, dict) else None
    if raw is None or graph.kind != "ann":
        return {}
    where = f"{graph.source}, metadata.relu_max"
    if not isinstance(raw, dict):
        raise ManifestError(describe(where, "a mapping of relu node names to their maximum λ",
                                     type(raw).__name__))
    nodes = {node.name: node for node in graph.nodes}
    caps = {}
    for name, value in raw.items():
        node = nodes.get(name)
        if node is None or node.op != "relu":
            raise ManifestError(describe(f"{where}, {name!r}", "the name of a relu node",
                                         "no such node" if node is None else f"op {node.op!r}",
                                         "remove the entry or rename it to its relu node"))
        channels = node.shape[0] if node.shape else None
        try:
            lam = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            lam = None
        if lam is None or lam.shape not in ((), (channels,)) or not np.all(np.isfinite(lam)) or np.any(lam <= 0):
            found = "not numbers" if lam is None else f"shape {lam.shape}, values {_short(lam)}"
            raise ManifestError(describe(f"{where}, {name!r}", f"a positive finite λ, or one per channel ({channels})",
                                         found))
        caps[name] = lam
    return caps


def _short(values: np.ndarray) -> str:
    flat = values.reshape(-1)
    return "[" + ", ".join(f"{v:g}" for v in flat[:4]) + (", ...]" if flat.size > 4 else "]")


def _elements(shape) -> int:
    return int(np.prod(shape, dtype=np.float64))


def _check_preprocessing(graph: Graph, src: str) -> None:
    spec = graph.input
    if spec.scale is not None and not (isinstance(spec.scale, (int, float)) and not isinstance(spec.scale, bool)
                                       and math.isfinite(spec.scale)):
        raise ManifestError(describe(f"{src}, input.scale", "a finite number", repr(spec.scale)))
    channels = spec.shape[0]
    for key in ("mean", "std"):
        values = getattr(spec, key)
        if values is None:
            continue
        ok = len(values) in (1, channels) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        if ok and key == "std":
            ok = all(v > 0 for v in values)
        if not ok:
            raise ManifestError(describe(
                f"{src}, input.{key}", f"a list of 1 or {channels} finite numbers" + (", all > 0" if key == "std" else ""),
                repr(list(values))))


def _parse_attrs(node: Node, spec: OpSpec, where: str) -> None:
    """Check attribute names and values, normalise them and fill in defaults."""
    if spec.parse is not None:
        spec.parse(node, where)
        return
    for key in node.attrs:
        if key not in spec.attrs:
            known = ", ".join(list(spec.attrs) + list(spec.arrays)) or "none"
            raise ManifestError(describe(where, f"attributes of op '{node.op}' ({known})", repr(key)))
    parsed = {}
    for key, attr in spec.attrs.items():
        if key in node.attrs:
            parsed[key] = attr.parse(node.attrs[key], where, key)
        elif attr.required:
            raise ManifestError(describe(where, f"attribute '{key}'", "none"))
        elif attr.default is not None:
            parsed[key] = attr.default
    if "kernel" in spec.attrs and "stride" in spec.attrs and "stride" not in parsed:  # pooling: stride = kernel
        parsed["stride"] = list(parsed["kernel"])
    node.attrs = parsed


def _check_arrays(node: Node, spec: OpSpec, where: str) -> None:
    roles = spec.array_roles(node) if spec.array_roles else spec.arrays
    for role, required in roles.items():
        if required and role not in node.arrays:
            raise ArrayError(describe(where, f"array attribute '{role}'", "none"))
    for role, arr in node.arrays.items():
        if role not in roles:
            raise ManifestError(describe(where, "array attributes among " + ", ".join(roles), repr(role)))
        label = f"{where}, array '{node.array_name(role)}'"
        if not isinstance(arr, np.ndarray) or arr.dtype not in (np.float32, np.float64):
            found = f"dtype {arr.dtype}" if isinstance(arr, np.ndarray) else f"a {type(arr).__name__}, not an array"
            raise ArrayError(describe(label, "float32 or float64", str(found), "cast with .astype(np.float32)"))
        if not np.all(np.isfinite(arr)):
            raise ArrayError(describe(label, "finite values", f"{int(np.sum(~np.isfinite(arr)))} NaN/inf"))
        if role in spec.positive and np.any(arr <= 0):
            raise ArrayError(describe(label, "thresholds > 0", f"minimum {arr.min():g}"))
        if node.op == "batchnorm" and role == "var" and np.any(arr < 0):
            raise ArrayError(describe(label, "variances >= 0", f"minimum {arr.min():g}"))


def _check_array_shapes(node: Node, spec: OpSpec, in_shapes: list[Shape], where: str) -> None:
    for role, allowed in spec.array_shapes(node, in_shapes).items():
        if role in node.arrays and node.arrays[role].shape not in [tuple(a) for a in allowed]:
            raise ArrayError(describe(
                f"{where}, array '{node.array_name(role)}'",
                "shape " + " or ".join(str(tuple(a)) for a in allowed), f"{node.arrays[role].shape}"))


def _check_all_used(graph: Graph, src: str) -> None:
    used = {graph.output}
    for node in reversed(graph.nodes):
        if node.name in used:
            used.update(node.inputs)
    unused = [n.name for n in graph.nodes if n.name not in used]
    if unused:
        raise GraphError(describe(f"{src}, node '{unused[0]}'", f"every node to contribute to output '{graph.output}'",
                                  f"{len(unused)} that do not ({', '.join(unused[:5])})", "remove them"))


# The registry lives in evsim.ops (one entry per op); imported last: it builds on the classes above.
from .ops import ACTIVATION_OPS, OPS  # noqa: E402
