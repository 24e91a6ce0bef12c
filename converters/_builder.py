"""Shared machinery of the importers (ONNX, Keras, PyTorch): build an evsim graph from framework ops.

Importers do not write evsim nodes one-to-one.  Three things are common to all of them and live here:

* :class:`GraphBuilder` collects nodes, checks each one against the op registry as it is added
  (so a bad weight shape is reported at the framework's layer, not later), and at the end folds
  elementwise affine nodes into the conv/linear/batchnorm before them or into the input
  preprocessing, drops nodes that do not reach the output and validates the graph.
* **Elementwise chains.**  Framework graphs spell activations as runs of elementwise ops
  (``x/θ → clamp(0, 1) → floor(x·L + ½)/L → ·θ``).  An importer collects such a run as a list of
  :data:`Step` and calls :func:`materialize`, which recognises QCFS (any order of the ops, scalar
  or per-channel θ), ReLU, clipped ReLU and affine maps *by evaluating the chain*, not by matching
  the order of the ops, and refuses anything else.
* :class:`View`: how a framework tensor relates to an evsim value.  evsim values are channels
  first; a framework tensor may be the same value transposed (NHWC) or reshaped (flattened in
  H, W, C order).  A view carries that relation, so a Dense/Gemm after a channels-last flatten
  gets its weight columns permuted, and elementwise constants are mapped to evsim's layout.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

import numpy as np

from evsim.errors import ConversionError, ModelFileError, describe
from evsim.graph import Graph, InputSpec, Node, validate

__all__ = ["GraphBuilder", "View", "Step", "materialize", "match_qcfs", "ActivationSpec", "parse_activation",
           "parse_activations", "nhwc_to_nchw", "as_float_array", "preprocessing_from_steps", "same_pads", "add_conv", "add_pool", "add_linear",
           "channel_constant"]

#: ops whose output is >= 0 whenever their inputs are
_KEEPS_SIGN = frozenset({"avgpool2d", "maxpool2d", "global_avgpool", "flatten", "pad2d", "sumpool2d", "add"})


# --------------------------------------------------------------------------- arrays
def as_float_array(value, where: str) -> np.ndarray:
    """A parameter as float32 (float64 stays float64); refuses non-finite values."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub":
        raise ConversionError(describe(where, "a numeric array", f"dtype {arr.dtype}"))
    arr = np.array(arr, dtype=np.float64 if arr.dtype == np.float64 else np.float32, order="C")  # keeps 0-d
    if not np.all(np.isfinite(arr)):
        raise ConversionError(describe(where, "finite values", f"{int(np.sum(~np.isfinite(arr)))} NaN/inf"))
    return arr


def nhwc_to_nchw(x: np.ndarray) -> np.ndarray:
    """Channels-last data ``(N, H, W, C)`` as evsim's ``(N, C, H, W)``; ``(N, F)`` is returned as is.

    Parameters
    ----------
    x : ndarray
        A batch of samples, channels last.

    Returns
    -------
    ndarray
        A C-contiguous copy, channels first.
    """
    x = np.asarray(x)
    if x.ndim == 2:
        return x
    if x.ndim != 4:
        raise ConversionError(describe("data layout nhwc", "x of shape (N, H, W, C) or (N, F)", f"{x.shape}"))
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


# --------------------------------------------------------------------------- views
@dataclass(frozen=True)
class View:
    """A framework tensor (one sample) as a view of an evsim value.

    The framework sees ``value.reshape(base).transpose(perm).reshape(shape)`` where ``value`` is
    the evsim node's output (channels first).  ``View.of(node, shape)`` is the identity view.
    """

    node: str
    base: tuple
    perm: tuple
    shape: tuple

    @classmethod
    def of(cls, node: str, shape) -> "View":
        shape = tuple(int(d) for d in shape)
        return cls(node, shape, tuple(range(len(shape))), shape)

    @property
    def plain(self) -> bool:
        """True when the framework tensor is the evsim value itself (same layout and shape)."""
        return self.perm == tuple(range(len(self.perm))) and self.shape == self.base

    @property
    def flat_order_kept(self) -> bool:
        """True when flattening the framework tensor gives evsim's C-major flattening."""
        moved = [p for p in self.perm if self.base[p] != 1]
        return moved == sorted(moved)

    def reshape(self, shape) -> "View":
        shape = tuple(int(d) for d in shape)
        if math.prod(shape) != math.prod(self.shape):
            raise ValueError(f"cannot reshape {self.shape} to {shape}")
        return replace(self, shape=shape)

    def transpose(self, order) -> "View | None":
        """The view transposed by ``order`` (per-sample axes), or None if it mixes a reshape."""
        if self.shape != tuple(self.base[p] for p in self.perm):
            return None
        return replace(self, perm=tuple(self.perm[i] for i in order), shape=tuple(self.shape[i] for i in order))

    def flat_index(self) -> np.ndarray:
        """``idx[j]``: the evsim (C-major) flat position of the framework's flat element ``j``."""
        return np.arange(math.prod(self.base)).reshape(self.base).transpose(self.perm).reshape(-1)

    def to_evsim(self, full: np.ndarray, evsim_shape) -> np.ndarray:
        """An array in the framework's layout (``self.shape``) in evsim's layout (``evsim_shape``)."""
        out = np.empty(math.prod(self.base), dtype=full.dtype)
        out[self.flat_index()] = np.asarray(full).reshape(-1)
        return out.reshape(tuple(evsim_shape))


def per_channel(values: np.ndarray) -> np.ndarray | None:
    """A per-sample array (evsim layout) as a scalar ``()`` or per-channel ``(C,)`` array, or None.

    None when the values vary inside a channel (a per-pixel constant), which no evsim op expresses.
    """
    values = np.asarray(values)
    if values.size and np.all(values == values.reshape(-1)[0]):
        return np.asarray(values.reshape(-1)[0])
    if values.ndim <= 1:
        return values
    flat = values.reshape(values.shape[0], -1)
    return flat[:, 0].copy() if np.all(flat == flat[:, :1]) else None


# --------------------------------------------------------------------------- activation specs
@dataclass(frozen=True)
class ActivationSpec:
    """What a custom activation layer becomes: ``relu``, or ``qcfs`` with a weight and a level count.

    ``weight`` names the layer's threshold weight (a name, or a position among its weights/inputs).
    """

    op: str
    weight: str | None = None
    levels: int | None = None

    def __str__(self) -> str:
        return "relu" if self.op == "relu" else f"qcfs:{self.weight},{self.levels}"


_SPEC = re.compile(r"\s*(relu|qcfs:([^,\s]+)\s*,\s*([0-9]+))\s*")
_SPEC_FORMS = "'relu' or 'qcfs:WEIGHT_NAME,LEVELS' (e.g. 'qcfs:thresh,8')"


def parse_activation(text, where: str = "--activation") -> ActivationSpec:
    """``"relu"`` or ``"qcfs:WEIGHT_NAME,LEVELS"`` -> :class:`ActivationSpec`."""
    if isinstance(text, ActivationSpec):
        return text
    match = _SPEC.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ConversionError(describe(where, _SPEC_FORMS, repr(text)))
    if match.group(1) == "relu":
        return ActivationSpec("relu")
    levels = int(match.group(3))
    if not 1 <= levels <= 2**20:
        raise ConversionError(describe(where, "LEVELS an integer in 1..1048576", str(levels)))
    return ActivationSpec("qcfs", match.group(2), levels)


def parse_activations(value) -> dict[str, ActivationSpec]:
    """The ``activations`` importer option: a mapping ``{CLASS: spec}`` or a list of ``"CLASS=spec"``.

    Raises
    ------
    ConversionError
        Anything that is not of these forms, naming the entry.
    """
    if value is None:
        return {}
    if isinstance(value, str):
        value = [value]
    items = []
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (list, tuple)):
        for entry in value:
            if not isinstance(entry, str) or "=" not in entry:
                raise ConversionError(describe("--activation", f"CLASS={_SPEC_FORMS}", repr(entry)))
            name, _, spec = entry.partition("=")
            items.append((name.strip(), spec))
    else:
        raise ConversionError(describe("option 'activations'", "a dict {CLASS: spec} or a list of 'CLASS=spec'",
                                       type(value).__name__))
    out = {}
    for name, spec in items:
        if not isinstance(name, str) or not name:
            raise ConversionError(describe("--activation", "a non-empty layer class name before '='", repr(name)))
        out[name] = parse_activation(spec, f"--activation {name}")
    return out


# --------------------------------------------------------------------------- elementwise chains
#: one elementwise step: (kind, constants).  kinds: mul, div, add, sub, rsub (c - x), clip (lo, hi), floor.
#: Constants are in evsim layout, scalar () or per channel (C,), float64.
Step = tuple


#: step kind -> its function of (values, *constants)
STEPS = {
    "mul": lambda x, c: x * c,
    "div": lambda x, c: x / c,
    "add": lambda x, c: x + c,
    "sub": lambda x, c: x - c,
    "rsub": lambda x, c: c - x,
    "clip": lambda x, lo, hi: np.clip(x, lo, hi),
    "floor": np.floor,
}


def evaluate(steps, z: np.ndarray) -> np.ndarray:
    """Apply a chain to probe values ``z`` of shape (n, C) in float64 (constants broadcast over C)."""
    out = np.asarray(z, dtype=np.float64)
    for kind, *consts in steps:
        out = STEPS[kind](out, *[np.asarray(v, dtype=np.float64) for v in consts])
    return out


def _affine_coefficients(steps, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """``y = a·x + b`` per channel for a chain of mul/div/add/sub/rsub steps."""
    b = evaluate(steps, np.zeros((1, channels)))[0]
    a = evaluate(steps, np.ones((1, channels)))[0] - b
    return a, b


def match_qcfs(steps, channels: int) -> tuple[np.ndarray, int] | None:
    """``(λ, L)`` if the chain computes ``λ·clip(floor(z·L/λ + ½)/L, 0, 1)`` per channel, else None.

    The chain is evaluated, not pattern-matched, so the seeds' public form
    (``x/θ → clamp(0,1) → floor(x·L+0.5)/L → ·θ``), the methods.md form (clamp after the floor) and
    any reordering of the multiplications are all recognised.  λ comes from the saturation value,
    L from the slope before the floor; the chain is then checked against QCFS at probe points
    between the quantisation steps of every level (ties at exact step boundaries are not probed).
    """
    if sum(1 for s in steps if s[0] == "floor") != 1:
        return None
    big = np.full((1, channels), 1e15)
    with np.errstate(all="ignore"):
        lam = evaluate(steps, big)[0]
        if not (np.all(np.isfinite(lam)) and np.all(lam > 0)):
            return None
        if not np.allclose(evaluate(steps, -big)[0], 0.0, atol=0):
            return None
        pre = steps[:[s[0] for s in steps].index("floor")]
        g0 = evaluate(pre, np.zeros((1, channels)))[0]
        g1 = evaluate(pre, (lam / 2)[None, :])[0]
        levels = (g1 - g0) * 2  # slope L/λ times λ
    if not (np.all(np.isfinite(levels)) and np.allclose(g0, 0.5, rtol=0, atol=1e-9)):
        return None
    L = int(round(float(levels[0])))
    if L < 1 or not np.allclose(levels, L, rtol=0, atol=1e-6 * L):
        return None
    k = np.arange(-2, L + 3)[:, None]
    u = np.array([0.1, 0.25, 0.75, 0.9])[None, :]
    grid = ((k + u).reshape(-1, 1) / L) * lam[None, :]
    expected = lam * np.clip(np.floor(grid * L / lam + 0.5) / L, 0, 1)
    with np.errstate(all="ignore"):
        found = evaluate(steps, grid)
    if not np.allclose(found, expected, rtol=0, atol=1e-6 * float(lam.max())):
        return None
    return lam, L


def preprocessing_from_steps(steps, channels: int):
    """``(scale, mean, std)`` of ``InputSpec`` for an affine chain on the input, or None.

    Leading scalar multiplications become ``scale``; the rest is written as ``(x - mean)/std``
    step by step, so ``x/255 → (x - m)/s`` gives exactly ``scale = 1/255, mean = m, std = s``.
    None when the chain cannot be written that way (a channel multiplied by 0, or signs that differ
    between channels).
    """
    scale = None
    i = 0
    while i < len(steps) and steps[i][0] in ("mul", "div") and np.ndim(steps[i][1]) == 0:
        c = float(steps[i][1])
        scale = (1.0 if scale is None else scale) * c if steps[i][0] == "mul" else (1.0 if scale is None else scale) / c
        i += 1
    mean = np.zeros(channels)
    std = np.ones(channels)
    for kind, *consts in steps[i:]:
        c = np.broadcast_to(np.asarray(consts[0], dtype=np.float64), (channels,))
        if kind == "sub":
            mean = mean + c * std
        elif kind == "add":
            mean = mean - c * std
        elif kind == "div":
            std = std * c
        elif kind == "mul":
            if np.any(c == 0):
                return None
            std = std / c
        elif kind == "rsub":  # c - x = -(x - c)
            mean, std = mean + c * std, -std
        else:
            return None
    if np.all(std < 0):
        scale, mean, std = -(1.0 if scale is None else scale), -mean, -std
    if not (np.all(std > 0) and np.all(np.isfinite(std)) and np.all(np.isfinite(mean))):
        return None
    if scale is not None and not (math.isfinite(scale) and scale != 0):
        return None

    def squeeze(v):
        return [float(v[0])] if np.all(v == v[0]) else [float(t) for t in v]

    mean_l = None if np.all(mean == 0) else squeeze(mean)
    std_l = None if np.all(std == 1) else squeeze(std)
    return scale, mean_l, std_l


# --------------------------------------------------------------------------- the builder
@dataclass
class GraphBuilder:
    """Collects evsim nodes for one imported model.

    Parameters
    ----------
    source : str
        The model file (or a description of the in-memory model); every message names it.
    input_shape : tuple of int
        One input sample, channels first.
    """

    source: str
    input_shape: tuple
    nodes: list = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    _shapes: dict = field(default_factory=dict)
    _affine: dict = field(default_factory=dict)  # node name -> steps (elementwise affine nodes)
    _names: set = field(default_factory=set)

    def __post_init__(self):
        self.input_shape = tuple(int(d) for d in self.input_shape)
        self._shapes["input"] = self.input_shape
        self._names.add("input")

    # ---------------------------------------------------------------- names and shapes
    def where(self, name: str, kind: str | None = None) -> str:
        """``"file, node 'name' (Kind)"`` for messages."""
        return f"{self.source}, node '{name}'" + (f" ({kind})" if kind else "")

    def unique(self, wanted: str) -> str:
        """A node name derived from ``wanted`` that is not used yet ('/' and ':' become '.')."""
        base = re.sub(r"[/:]+", ".", str(wanted)).strip(".") or "node"
        if base == "input":
            base = "input_"
        name, i = base, 1
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def shape(self, name: str) -> tuple:
        return self._shapes[name]

    def op(self, name: str) -> str | None:
        return None if name == "input" else self._node(name).op

    def _node(self, name: str) -> Node:
        for node in reversed(self.nodes):
            if node.name == name:
                return node
        raise KeyError(name)

    def nonnegative(self, name: str) -> bool:
        """True when the value of ``name`` can never be negative (after relu/qcfs, through pooling)."""
        if name == "input":
            return False
        node = self._node(name)
        if node.op in ("relu", "qcfs"):
            return True
        return node.op in _KEEPS_SIGN and all(self.nonnegative(s) for s in node.inputs)

    # ---------------------------------------------------------------- adding nodes
    def add(self, wanted: str, op: str, inputs, attrs=None, arrays=None, kind: str | None = None) -> str:
        """Append a node (checked against the op registry at once) and return its name.

        ``kind`` is the framework's op/layer type, for messages.
        """
        name = self.unique(wanted)
        arrays = {role: arr for role, arr in (arrays or {}).items() if arr is not None}
        node = Node(name, op, tuple(inputs), dict(attrs or {}), arrays, {r: f"{name}.{r}" for r in arrays})
        self._shapes[name] = self._infer(node, kind)
        self.nodes.append(node)
        return name

    def _infer(self, node: Node, kind: str | None) -> tuple:
        """Check ``node`` alone against the op registry and return its output shape.

        The node is validated in a one-node graph fed by an input of the right shape, so any
        problem (a weight that does not fit, a window larger than the input) is reported here,
        at the framework layer that produced it.
        """
        in_shapes = [self._shapes[s] for s in node.inputs]
        if node.op == "add" and len(set(in_shapes)) > 1:
            raise ConversionError(describe(self.where(node.name, kind), "inputs of equal shape",
                                           " and ".join(map(str, in_shapes))))
        probe = Node(node.name, node.op, ("input",) * len(node.inputs), dict(node.attrs), dict(node.arrays),
                     dict(node.array_names))
        nodes, output = [probe], node.name
        if node.op in ("relu", "qcfs"):  # an activation cannot be the output: read it through a flatten
            nodes.append(Node("__probe__", "flatten", (node.name,)))
            output = "__probe__"
        try:
            validate(Graph(InputSpec(in_shapes[0]), nodes, output, source=self.source))
        except ModelFileError as exc:
            text = str(exc)
            prefix = f"{self.source}, node '{node.name}'"
            detail = text[len(prefix):].lstrip(":, ") if text.startswith(prefix) else text
            raise ConversionError(f"{self.where(node.name, kind)}: {detail}") from None
        node.attrs = dict(probe.attrs)
        return tuple(probe.shape)

    def affine(self, src: str, steps, wanted: str) -> str:
        """An elementwise affine map of ``src`` (a mul/div/add/sub/rsub chain, per channel or scalar).

        Written as a ``scale`` node when there is no offset, else as a ``batchnorm`` node with mean 0,
        var 0, eps 1 (exactly ``gamma·x + beta``);
        :meth:`finish` folds it into the conv/linear/batchnorm before it or into the input
        preprocessing when it is the only user of that value.
        """
        channels = self._shapes[src][0]
        a, b = _affine_coefficients(steps, channels)
        if np.all(a == 1) and np.all(b == 0):
            return src
        dtype = np.float32
        gamma = np.asarray(a[0] if np.all(a == a[0]) else a, dtype)
        if np.all(b == 0):  # a multiplication: the scale op
            name = self.add(wanted, "scale", [src], {}, {"scale": gamma})
        else:
            arrays = {"mean": np.zeros(channels, dtype), "var": np.zeros(channels, dtype),
                      "gamma": np.broadcast_to(gamma, (channels,)).copy(), "beta": b.astype(dtype)}
            name = self.add(wanted, "batchnorm", [src], {"eps": 1.0}, arrays)
        self._affine[name] = (list(steps), a, b)
        return name

    # ---------------------------------------------------------------- finishing
    def finish(self, output: str, metadata: dict | None = None) -> Graph:
        """Fold affine nodes, drop dead nodes, validate, and return the graph."""
        spec = InputSpec(self.input_shape)
        output = self._fold_affine(spec, output)
        graph = Graph(spec, self._live(output), output, kind="ann",
                      metadata={**self.metadata, **(metadata or {})}, source=self.source)
        validate(graph)
        return graph

    def _fold_affine(self, spec: InputSpec, output: str) -> str:
        """Fold each affine node into what it is the only user of; return the (renamed) output."""
        users: dict[str, list[str]] = {}
        for node in self.nodes:
            for s in node.inputs:
                users.setdefault(s, []).append(node.name)
        renamed: dict[str, str] = {}
        by_name: dict[str, Node] = {}
        input_steps: list = []
        kept = []
        for node in self.nodes:
            node.inputs = tuple(renamed.get(s, s) for s in node.inputs)
            info = self._affine.get(node.name)
            src = node.inputs[0] if node.inputs else None
            if info is not None and len(users.get(src, [])) == 1 and src != output:
                steps, a, b = info
                target = None
                if src == "input":
                    pre = preprocessing_from_steps(input_steps + steps, self.input_shape[0])
                    if pre is not None:
                        input_steps += steps
                        spec.scale, mean, std = pre
                        spec.mean = None if mean is None else tuple(mean)
                        spec.std = None if std is None else tuple(std)
                        target = "input"
                elif by_name[src].op in ("conv2d", "linear", "batchnorm"):
                    _fold_into(by_name[src], a, b)
                    target = src
                if target is not None:
                    renamed[node.name] = target
                    users[target] = users.get(node.name, [])
                    if output == node.name:
                        output = target
                    continue
            kept.append(node)
            by_name[node.name] = node
        if output == "input":
            raise ConversionError(describe(f"{self.source}, output", "a node that computes the logits",
                                           "an elementwise map of the input"))
        self.nodes = kept
        return output

    def _live(self, output: str) -> list[Node]:
        used = {output}
        for node in reversed(self.nodes):
            if node.name in used:
                used.update(node.inputs)
        return [n for n in self.nodes if n.name in used]


def _fold_into(node: Node, a: np.ndarray, b: np.ndarray) -> None:
    """``a·node(x) + b`` folded into a conv2d/linear (weights, bias) or batchnorm (gamma, beta)."""
    if node.op == "batchnorm":
        dtype = node.arrays["gamma"].dtype
        node.arrays["gamma"] = (node.arrays["gamma"] * a).astype(dtype)
        node.arrays["beta"] = (node.arrays["beta"] * a + b).astype(dtype)
        return
    weight = node.arrays["weight"]
    dtype = weight.dtype
    out = weight.shape[0]
    a = np.broadcast_to(a, (out,))
    node.arrays["weight"] = (weight * a.reshape((-1,) + (1,) * (weight.ndim - 1))).astype(dtype)
    bias = node.arrays.get("bias", np.zeros(out, dtype))
    node.arrays["bias"] = (bias * a + b).astype(dtype)
    node.array_names.setdefault("bias", f"{node.name}.bias")


# --------------------------------------------------------------------------- chain -> nodes
def materialize(builder: GraphBuilder, src: str, steps, wanted: str, where: str) -> str:
    """evsim nodes computing an elementwise chain on ``src``; returns the last node's name.

    * a chain with one ``floor`` must be QCFS (:func:`match_qcfs`) -> ``qcfs`` node;
    * ``clip(0, ∞)`` -> ``relu``; ``clip(0, λ)`` -> ``relu`` with λ recorded in
      ``metadata["relu_max"][node]`` (the ANN executor clips there; conversion uses λ as θ);
    * mul/div/add/sub runs -> affine nodes (folded later where possible).

    Raises
    ------
    ConversionError
        A chain that is none of these (e.g. a floor that is not QCFS), naming ``where``.
    """
    steps = list(steps)
    if not steps:
        return src
    channels = builder.shape(src)[0]
    if any(s[0] == "floor" for s in steps):
        found = match_qcfs(steps, channels)
        if found is None:
            raise ConversionError(describe(
                where, "the QCFS activation λ·clip(floor(z·L/λ + 1/2)/L, 0, 1) (x/θ → clamp(0,1) → "
                "floor(x·L+0.5)/L → ·θ, or the clamp after the floor)",
                "a floor in a chain that does not compute it (" + " → ".join(s[0] for s in steps) + ")",
                "export QCFS exactly in one of these forms, or map the layer with --activation"))
        lam, levels = found
        lam_arr = np.asarray(lam[0] if np.all(lam == lam[0]) else lam, dtype=np.float32)
        return builder.add(wanted, "qcfs", [src], {"levels": levels}, {"threshold": lam_arr}, kind="QCFS")
    out = src
    run: list = []
    for step in steps:
        if step[0] != "clip":
            run.append(step)
            continue
        out = builder.affine(out, run, wanted) if run else out
        run = []
        out = _clip(builder, out, step[1], step[2], wanted, where)
    return builder.affine(out, run, wanted) if run else out


def _clip(builder: GraphBuilder, src: str, lo, hi, wanted: str, where: str) -> str:
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    if np.all(np.isneginf(lo)) and np.all(np.isposinf(hi)):
        return src
    if np.all(np.isneginf(lo)):  # min(x, hi) = hi - relu(hi - x)
        inner = _clip(builder, builder.affine(src, [("rsub", hi)], wanted), 0.0, np.inf, wanted, where)
        return builder.affine(inner, [("rsub", hi)], wanted)
    if not np.all(np.isfinite(lo)) or np.any(hi <= lo):
        raise ConversionError(describe(where, "a clip with finite lower bound below the upper bound",
                                       f"clip({lo.tolist()}, {hi.tolist()})"))
    if np.any(lo != 0):  # clip(x, lo, hi) = clip(x - lo, 0, hi - lo) + lo
        inner = builder.affine(src, [("sub", lo)], wanted)
        return builder.affine(_clip(builder, inner, 0.0, hi - lo, wanted, where), [("add", lo)], wanted)
    name = builder.add(wanted, "relu", [src], kind="Relu")
    if not np.all(np.isposinf(hi)):
        if np.any(np.isposinf(hi)):
            raise ConversionError(describe(where, "one upper clip bound for every channel or none",
                                           "some channels clipped and others not"))
        value = float(hi.reshape(-1)[0]) if np.all(hi == hi.reshape(-1)[0]) else [float(v) for v in hi]
        builder.metadata.setdefault("relu_max", {})[name] = value
    return name


# --------------------------------------------------------------------------- layers shared by the importers
def same_pads(spatial, kernel, strides, dilations=(1, 1), lower: bool = False) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of TensorFlow/ONNX 'SAME' padding (output = ceil(input / stride)).

    The odd pixel goes to the bottom/right (TF 'same', ONNX SAME_UPPER) or, with ``lower``, to the
    top/left (ONNX SAME_LOWER).
    """
    out = []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        out.append((large, small) if lower else (small, large))
    return out[0][0], out[0][1], out[1][0], out[1][1]


def add_conv(builder: GraphBuilder, src: str, weight, bias, stride, pads, dilation, groups: int, wanted: str,
             kind: str) -> str:
    """A conv2d (OIHW weight); asymmetric ``pads`` (top, bottom, left, right) go to a ``pad2d`` before it."""
    top, bottom, left, right = (int(p) for p in pads)
    if min(pads) < 0:
        raise ConversionError(describe(builder.where(wanted, kind), "non-negative padding", str(list(pads))))
    padding = [top, left]
    if top != bottom or left != right:
        src = builder.add(f"{wanted}.pad", "pad2d", [src], {"pads": [top, bottom, left, right]}, kind=kind)
        padding = [0, 0]
    return builder.add(wanted, "conv2d", [src], {"stride": list(stride), "padding": padding,
                                                 "dilation": list(dilation), "groups": int(groups)},
                       {"weight": weight, "bias": bias}, kind=kind)


def add_pool(builder: GraphBuilder, src: str, op: str, kernel, stride, pads, wanted: str, kind: str) -> str:
    """avgpool2d/maxpool2d with ``pads`` (top, bottom, left, right).

    Symmetric padding of at most half the kernel is the op's own (zeros counted by avgpool, -inf
    for maxpool).  Other padding becomes a ``pad2d`` of zeros before the op: exact for average
    pooling that counts the padded zeros, and for max pooling of values that are never negative.
    """
    top, bottom, left, right = (int(p) for p in pads)
    kernel, stride = list(kernel), list(stride)
    if top == bottom and left == right and top <= kernel[0] // 2 and left <= kernel[1] // 2:
        padding = [top, left]
    else:
        if op == "maxpool2d" and not builder.nonnegative(src):
            raise ConversionError(describe(
                builder.where(wanted, kind), "max-pool padding that is symmetric and at most half the kernel, "
                "or an input that is never negative (after a ReLU)", f"padding {[top, bottom, left, right]} "
                "on values that may be negative", "pad explicitly after the activation"))
        src = builder.add(f"{wanted}.pad", "pad2d", [src], {"pads": [top, bottom, left, right]}, kind=kind)
        padding = [0, 0]
    return builder.add(wanted, op, [src], {"kernel": kernel, "stride": stride, "padding": padding}, kind=kind)


def add_linear(builder: GraphBuilder, view: View, w_in_out: np.ndarray, bias, wanted: str, kind: str) -> str:
    """A linear layer on a framework vector ``view`` with weight ``(in, out)`` in the framework's order.

    The columns are permuted into evsim's C-major order, so a Dense after a channels-last Flatten
    (H, W, C order) computes the same as in the framework.
    """
    where = builder.where(wanted, kind)
    if len(view.shape) != 1:
        raise ConversionError(describe(where, "a vector input (flatten first)", f"shape {view.shape}"))
    if w_in_out.ndim != 2 or w_in_out.shape[0] != view.shape[0]:
        raise ConversionError(describe(where, f"a weight of shape ({view.shape[0]}, out)", f"{w_in_out.shape}"))
    weight = np.empty((w_in_out.shape[1], w_in_out.shape[0]), dtype=w_in_out.dtype)
    weight[:, view.flat_index()] = w_in_out.T
    bias = None if bias is None else np.ascontiguousarray(np.broadcast_to(bias, (w_in_out.shape[1],)),
                                                          dtype=w_in_out.dtype)
    return builder.add(wanted, "linear", [view.node], {}, {"weight": weight, "bias": bias}, kind=kind)


def channel_constant(builder: GraphBuilder, view: View, value, where: str) -> np.ndarray:
    """A constant operand of an elementwise op on ``view`` as a scalar or per-channel evsim array.

    ``value`` broadcasts against one batch of the framework tensor (batch axis first); the result
    is in evsim's layout.  Refuses constants that change the data's shape or vary inside a channel.
    """
    value = np.asarray(value, dtype=np.float64)
    expected = f"a constant broadcastable to the data (N, {', '.join(map(str, view.shape))})"
    if value.ndim > len(view.shape) + 1:
        raise ConversionError(describe(where, expected, f"shape {value.shape}"))
    try:
        sample = np.broadcast_to(value, (1,) + tuple(view.shape))[0]
    except ValueError:
        raise ConversionError(describe(where, expected, f"shape {value.shape}",
                                       "a constant may not change the data's shape")) from None
    result = per_channel(view.to_evsim(sample, builder.shape(view.node)))
    if result is None:
        raise ConversionError(describe(where, "a constant that is scalar or per channel",
                                       f"one that varies over positions ({value.shape})",
                                       "fold it into the data or the neighbouring layer"))
    return result


# --------------------------------------------------------------------------- values of one import
class Pending:
    """A framework value computed from the input: a :class:`View` of an evsim node, plus elementwise
    steps on it not yet written as nodes (so that a whole QCFS chain is seen at once)."""

    __slots__ = ("view", "steps", "origin")

    def __init__(self, view: View, steps=(), origin=()):
        self.view, self.steps, self.origin = view, list(steps), list(origin)


class Values(dict):
    """The values of one import by the framework's key (tensor name, fx node); data values are
    :class:`Pending`.  ``uses`` counts each key's users, so a shared chain is written once."""

    def __init__(self, source: str, uses: dict):
        super().__init__()
        self.source, self.uses, self.builder = source, uses, None

    def concrete(self, key, wanted: str | None = None) -> View:
        """The view of ``key`` with its pending steps written as evsim nodes (the result replaces them)."""
        value = self[key]
        if value.steps:
            where = f"{self.source}, node '{value.origin[-1]}'"
            node = materialize(self.builder, value.view.node, value.steps, wanted or value.origin[-1], where)
            value = Pending(View(node, value.view.base, value.view.perm, value.view.shape))
            self[key] = value
        return value.view

    def extend(self, out, key, label: str, *steps) -> None:
        """``out`` = ``key`` followed by elementwise ``steps`` (``label``: the framework op, for names)."""
        value = self[key]
        if value.steps and self.uses.get(key, 0) > 1:
            self.concrete(key)
            value = self[key]
        self[out] = Pending(value.view, value.steps + list(steps), value.origin + [label])

    def alias(self, out, key, view: View | None = None) -> None:
        """``out`` is ``key`` (optionally seen through another view); pending steps carry over."""
        value = self[key]
        self[out] = Pending(view or value.view, value.steps, value.origin)
