"""NIR exchange: run NIR graphs from other SNN tools, export converted SNNs to NIR (issue 13).

NIR (the Neuromorphic Intermediate Representation, PyPI ``nir``) is the HDF5 format through
which Sinabs, snnTorch, Norse, Rockpool, Lava, SpiNNaker2 and Speck exchange spiking networks.
``nir`` is an optional extra (``pip install "evsim[nir]"``) imported only inside the functions
that need it.  See ``docs/nir.md`` for what maps to what and what is lossy.

**The neuron model ``nir_if``** (registered with :func:`evsim.register_neuron` when this module
is imported; the entry point ``evsim.neurons: nir_if`` imports it, so an SNN file that uses it
loads in a fresh process).  NIR's IF discretised with dt = 1, per neuron::

    h = v + r * I
    spike (count 1)  if h > v_threshold        (NIR's strict rule; ``inclusive``: h >= v_threshold)
    v = h - v_threshold (reset "subtract")  or  v = v_reset (reset "zero": to v_reset)
    v starts at 0 (``--v0 half``: at v_threshold / 2)

A spike carries 1 (payload ``"one"``), not θ.  ``r``, ``v_reset`` and the threshold may be
scalars, per channel or per neuron.

**Import** (:func:`read_nir`): ``nir.read`` (retried without its type checks for old files),
nested graphs flattened (``sub.node`` names), several edges into one node summed by an ``add``
node, nodes ordered from the Input; Conv2d → ``conv2d`` (+ ``pad2d`` for an asymmetric
``'same'``), Affine/Linear → ``linear``, Scale → ``scale``, SumPool2d → ``sumpool2d`` (a
SumPool2d followed by a Scale of exactly 1/(kH·kW) → ``avgpool2d``), AvgPool2d → ``avgpool2d``,
Flatten → ``flatten``, IF → ``neuron`` of model ``nir_if``.  Anything else (LIF, CubaLIF, LI,
I, Delay, Threshold, Conv1d, recurrent cycles) is refused with the node and its type named.
When the Output reads an IF population directly, the graph output is an identity ``scale``
node after it: the engine accumulates the population's spike counts (payload one), so the
prediction at step t is the class with most output spikes so far, ties to the lowest index.

**Export** (:func:`write_nir`): an evsim SNN graph (IF neurons) becomes a NIR graph that
``nir.read`` accepts with its type checks.  evsim's IF spike carries θ; NIR's carries 1, so θ is
folded into the weights of the next Conv2d/Affine (``w * θ[c_in]`` in float64, exactly what the
engine computes, so the round trip gives bit-identical engine weights).  Where a spike reaches
an ``add``, a neuron or the output without passing a weighted layer, a NIR Scale(θ) is put on
that edge; where a path passes a layer that would make folding inexact (BatchNorm, average
pooling whose 1/area is not a power of two) the population gets a Scale(θ) right after it,
marked in metadata so evsim fuses it back.  Soft reset, v0, the ``>=`` rule, input
preprocessing and names go into NIR metadata, which :func:`read_nir` reads back: an
evsim → NIR → evsim round trip simulates exactly like the original.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from evsim.errors import (ContainerError, ConversionError, GraphError, ManifestError, MissingDependencyError,
                          describe)
from evsim.graph import Graph, InputSpec, Node, validate
from evsim.results import json_default

__all__ = ["NIR_MODEL", "read_nir", "graph_from_nir", "write_nir", "graph_to_nir", "sniff", "register"]

#: name of the NIR IF neuron model in evsim SNN files
NIR_MODEL = "nir_if"
#: version of the evsim metadata written into NIR files
META_VERSION = 1
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


# =========================================================================================
# the neuron model
# =========================================================================================
def nir_if_step(v, current, theta, r, v_reset, inclusive, reset_zero):
    """One step of NIR's IF neuron (dt = 1): ``h = v + r*I``; spike if ``h > θ`` (``>=`` if
    ``inclusive``); then ``v = h - θ``, or ``v = v_reset`` with ``reset_zero``.  Branch-free
    selects, like the built-in IF step, so the kernel's update loop vectorises."""
    h = v + r * current
    spike = (h >= theta) if inclusive else (h > theta)
    after = v_reset if reset_zero else h - theta
    return (after if spike else h), (1 if spike else 0)


class _LazyStep:
    """``nir_if_step`` jitted on first use, so that reading or inspecting a file never imports Numba."""

    py_func = nir_if_step

    def __init__(self):
        self._jitted = None

    def resolve(self):
        if self._jitted is None:
            import numba

            self._jitted = numba.njit(nogil=True, cache=True, error_model="numpy")(nir_if_step)
        return self._jitted


def register():
    """Register ``nir_if`` with evsim's neuron registry (once); returns the model.

    Runs when this module is imported; the entry point ``evsim.neurons: nir_if`` names it,
    so an SNN file with ``nir_if`` neurons loads in a fresh process.
    """
    from evsim import neurons

    model = neurons.MODELS.get(NIR_MODEL)
    if model is not None:
        return model
    return neurons.register_neuron(
        NIR_MODEL, _LazyStep(), params={
            "r": neurons.Param(1.0, doc="input resistance: v += r*I"),
            "v_reset": neurons.Param(0.0, doc="potential after a spike with reset 'zero'"),
            "inclusive": neurons.Param(False, doc="fire at v >= θ (evsim's rule) instead of NIR's v > θ"),
        }, v0="zero", payload="one", resets=("subtract", "zero"), cli_name="nir-if",
        doc="NIR IF (dt = 1): h = v + r·I; spike (payload 1) if h > θ (inclusive: h >= θ); "
            "v = h - θ, or v = v_reset with reset 'zero'; v0 = 0")


def _try_register():
    try:
        register()
    except ImportError:  # an evsim without the neuron registry (before issue 11): import still works
        pass


# =========================================================================================
# helpers
# =========================================================================================
def _nir():
    """The ``nir`` package, or a MissingDependencyError naming the extra."""
    try:
        import nir
    except ImportError:
        raise MissingDependencyError(describe(
            "NIR import/export", "the optional package 'nir'", "it is not installed",
            'install it with: pip install "evsim[nir]"')) from None
    return nir


def _pair(value, where: str, key: str) -> list[int]:
    arr = np.asarray(value).reshape(-1)
    if arr.size not in (1, 2) or not np.all(np.isfinite(arr.astype(np.float64))) or np.any(arr != np.round(arr)):
        raise ManifestError(describe(f"{where}, '{key}'", "an integer or a pair of integers", repr(value)))
    return [int(arr[0]), int(arr[-1])]


def _float_array(value, where: str, key: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub":
        raise ManifestError(describe(f"{where}, '{key}'", "a numeric array", f"dtype {arr.dtype}"))
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ManifestError(describe(f"{where}, '{key}'", "finite values", f"{int(np.sum(~np.isfinite(arr)))} NaN/inf"))
    return arr


def _to_shape(value, shape: tuple, where: str, key: str) -> np.ndarray:
    """A per-neuron parameter broadcast to ``shape``; leading size-1 axes (a batch dimension
    written by some exporters) are dropped first."""
    arr = _float_array(value, where, key)
    while arr.ndim > len(shape) and arr.shape[0] == 1:
        arr = arr[0]
    try:
        return np.broadcast_to(arr, shape)
    except ValueError:
        raise GraphError(describe(f"{where}, '{key}'", f"an array of the population's shape {shape} "
                                  "(or broadcastable to it)", f"shape {np.asarray(value).shape}")) from None


def _compact(full: np.ndarray) -> np.ndarray:
    """A full (C, H, W) or (F,) array as a scalar, per channel (C,) or per neuron, whichever is exact."""
    full = np.asarray(full)
    flat = full.reshape(-1)
    if flat.size and np.all(flat == flat[0]):
        return np.array(flat[0], dtype=full.dtype)
    if full.ndim == 3:
        first = full[:, :1, :1]
        if np.all(full == first):
            return np.ascontiguousarray(first.reshape(-1))
    return np.ascontiguousarray(full)


def _scalar_or_array(full: np.ndarray):
    """A uniform parameter as a Python float (node attribute), else a compact array."""
    c = _compact(full)
    return float(c) if c.ndim == 0 else c


def _nir_type(node) -> str:
    return type(node).__name__


def _reason(kind: str) -> str:
    return _REFUSED.get(kind, "evsim has no equivalent for this node type")


_REFUSED = {
    "LIF": "a leaky neuron's discretisation depends on a time step dt that NIR does not store",
    "CubaLIF": "a current-based leaky neuron needs a synaptic state and a dt that NIR does not store",
    "LI": "a leaky integrator (no spikes) depends on a dt that NIR does not store",
    "CubaLI": "a current-based leaky integrator depends on a dt that NIR does not store",
    "I": "a plain integrator emits no spikes; evsim only carries spikes between layers",
    "Delay": "evsim simulates without synaptic delays",
    "Threshold": "a stateless threshold is not a neuron evsim runs",
    "Conv1d": "evsim's layers are 2-D (C, H, W) or flat (F,)",
}


# =========================================================================================
# import
# =========================================================================================
def sniff(path, head: bytes = b"") -> bool:
    """Whether ``path`` is a NIR file: HDF5 whose root holds a ``node`` group of type NIRGraph.

    ``head`` is the first bytes of the file (read here when empty).  Never raises.
    """
    try:
        if not head:
            with open(path, "rb") as f:
                head = f.read(8)
        if not head.startswith(HDF5_MAGIC):
            return False
        import h5py

        with h5py.File(path, "r") as f:
            node = f.get("node")
            if not isinstance(node, h5py.Group) or "type" not in node:
                return False
            kind = node["type"][()]
            return (kind.decode() if isinstance(kind, bytes) else str(kind)) == "NIRGraph"
    except Exception:  # noqa: BLE001 - a file we cannot open is not a NIR file
        return False


def read_nir(path, *, reset: str | None = None, v0: str | None = None, options=None, **unused) -> Graph:
    """Read a NIR file (``nir.read``) into a validated evsim SNN graph.

    Parameters
    ----------
    path : str or Path
        A ``.nir`` (HDF5) file written by ``nir.write`` (any version ``nir`` reads).
    reset : {"subtract", "zero"}, optional
        IF reset after a spike: subtract the threshold (default, as Sinabs and snnTorch) or set
        ``v = v_reset`` (``"zero"``, Norse's ``reset_value``).  A file written by evsim keeps its own.
    v0 : {"zero", "half"}, optional
        Initial potential: 0 (NIR's, default) or half the threshold.
    options : object with ``reset`` / ``v0`` attributes, optional
        E.g. :class:`evsim.ConversionOptions`; explicit ``reset`` / ``v0`` take precedence.

    Returns
    -------
    Graph
        Kind ``"snn"``; IF populations are ``neuron`` nodes of model ``nir_if``.

    Raises
    ------
    MissingDependencyError
        ``nir`` is not installed.
    ContainerError
        Not a file ``nir.read`` can read.
    ConversionError
        A node type evsim cannot simulate (named), a recurrent cycle, several inputs/outputs.
    GraphError, ManifestError
        Shapes or parameters that do not fit.
    """
    nir = _nir()
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ContainerError(describe(source, "an existing NIR file", "nothing at that path"))
    notes = []
    try:
        graph = nir.read(path)
    except Exception as first:  # noqa: BLE001 - nir raises many types for a graph it cannot type-check
        try:
            graph = nir.read(path, type_check=False)
        except Exception as exc:  # noqa: BLE001
            raise ContainerError(describe(source, "a NIR file that nir.read can read",
                                          f"one it cannot ({_first_line(exc)})",
                                          "is it a NIR graph written by nir.write?")) from None
        notes.append(f"nir.read type checks failed ({_first_line(first)}); read without them, "
                     "shapes inferred by evsim")
    version = _file_version(path)
    if reset is None and options is not None:
        reset = getattr(options, "reset", None)
    if v0 is None and options is not None:
        v0 = getattr(options, "v0", None)
    return graph_from_nir(graph, source=source, reset=reset, v0=v0, version=version, notes=notes)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _file_version(path: Path) -> str | None:
    try:
        import h5py

        with h5py.File(path, "r") as f:
            v = f["version"][()] if "version" in f else None
        return v.decode() if isinstance(v, bytes) else (None if v is None else str(v))
    except Exception:  # noqa: BLE001
        return None


class _Flat:
    """A NIR graph with nested graphs flattened: nodes by dotted name, edges, Input, Output."""

    def __init__(self, graph, source: str):
        self.source = source
        self.nodes: dict[str, object] = {}
        self.edges: list[tuple[str, str]] = []
        self.passes: set[str] = set()
        self._add(graph, "")
        self._contract()
        kinds = {name: _nir_type(n) for name, n in self.nodes.items()}
        inputs = [n for n, k in kinds.items() if k == "Input"]
        outputs = [n for n, k in kinds.items() if k == "Output"]
        if len(inputs) != 1:
            raise ConversionError(describe(source, "a NIR graph with exactly one Input node",
                                           f"{len(inputs)} ({', '.join(inputs) or 'none'})",
                                           "evsim simulates one input stream"))
        if len(outputs) != 1:
            raise ConversionError(describe(source, "a NIR graph with exactly one Output node",
                                           f"{len(outputs)} ({', '.join(outputs) or 'none'})",
                                           "evsim reports one output (the predicted class)"))
        self.input, self.output = inputs[0], outputs[0]

    def _add(self, graph, prefix: str) -> None:
        nir = _nir()
        for name, node in graph.nodes.items():
            full = prefix + str(name)
            if isinstance(node, nir.NIRGraph):
                self._add(node, full + ".")
                continue
            if prefix and _nir_type(node) in ("Input", "Output"):
                self.passes.add(full)  # the boundary of a nested graph: contracted below
            self.nodes[full] = node
        for a, b in graph.edges:
            a, b = (x.decode() if isinstance(x, bytes) else str(x) for x in (a, b))
            self.edges.append((self._resolve(graph, prefix, a, "src"), self._resolve(graph, prefix, b, "dst")))

    def _resolve(self, graph, prefix: str, name: str, role: str) -> str:
        nir = _nir()
        node = graph.nodes.get(name)
        if node is not None and isinstance(node, nir.NIRGraph):
            kind = "Output" if role == "src" else "Input"
            ends = [k for k, n in node.nodes.items() if _nir_type(n) == kind]
            if len(ends) != 1:
                raise ConversionError(describe(f"{self.source}, edge at subgraph '{prefix + name}'",
                                               f"a subgraph with one {kind} node (or an edge naming "
                                               f"'{name}.<node>')", f"{len(ends)}"))
            return self._resolve(node, prefix + name + ".", ends[0], role)
        if node is not None:
            return prefix + name
        head, dot, tail = name.partition(".")
        sub = graph.nodes.get(head)
        if dot and sub is not None and isinstance(sub, nir.NIRGraph):
            return self._resolve(sub, prefix + head + ".", tail, role)
        raise GraphError(describe(f"{self.source}, edge endpoint '{prefix + name}'",
                                  "the name of a node of the graph", "no such node"))

    def _contract(self) -> None:
        for p in sorted(self.passes):
            preds = [a for a, b in self.edges if b == p]
            succs = [b for a, b in self.edges if a == p]
            self.edges = [(a, b) for a, b in self.edges if p not in (a, b)]
            self.edges += [(a, b) for a in preds for b in succs]
            del self.nodes[p]


def _order(flat: _Flat) -> tuple[list[str], dict[str, list[str]], list[str]]:
    """Nodes reachable from the Input that lead to the Output, sources first; also the sources
    of each node and notes about dropped nodes.  Refuses cycles and unsupported types."""
    src = flat.source
    succ: dict[str, list[str]] = {n: [] for n in flat.nodes}
    pred: dict[str, list[str]] = {n: [] for n in flat.nodes}
    for a, b in flat.edges:
        if a in pred[b]:
            raise GraphError(describe(f"{src}, edge ({a!r}, {b!r})", "each edge once", "a duplicate"))
        succ[a].append(b)
        pred[b].append(a)
    reach, stack = {flat.input}, [flat.input]
    while stack:
        for b in succ[stack.pop()]:
            if b not in reach:
                reach.add(b)
                stack.append(b)
    back, stack = {flat.output}, [flat.output]
    while stack:
        for a in pred[stack.pop()]:
            if a not in back:
                back.add(a)
                stack.append(a)
    if flat.output not in reach:
        raise GraphError(describe(f"{src}, Output '{flat.output}'", "a path from the Input to the Output", "none"))
    keep = reach & back
    for name in sorted(keep):
        kind = _nir_type(flat.nodes[name])
        if kind not in _IMPORT:
            raise ConversionError(describe(
                f"{src}, node '{name}'", "a node type evsim simulates (" + ", ".join(sorted(_IMPORT)) + ")",
                f"{kind}", _reason(kind)))
        orphans = [a for a in pred[name] if a not in reach]
        if orphans:
            raise GraphError(describe(f"{src}, node '{name}'", "inputs that all come from the Input",
                                      f"an edge from '{orphans[0]}', which no path from the Input reaches"))
    order, done = [], set()
    pending = set(keep)
    while pending:
        ready = sorted(n for n in pending if all(a in done for a in pred[n] if a in keep))
        if not ready:
            cycle = sorted(pending)[0]
            raise ConversionError(describe(
                f"{src}, node '{cycle}' ({_nir_type(flat.nodes[cycle])})", "a feed-forward graph",
                "a recurrent cycle through it", "evsim simulates feed-forward networks without delays"))
        order += ready
        done.update(ready)
        pending.difference_update(ready)
    notes = [f"node '{n}' ({_nir_type(flat.nodes[n])}) does not lead to the Output: dropped"
             for n in sorted(set(flat.nodes) - keep) if n in reach]
    return order, {n: [a for a in pred[n] if a in keep] for n in keep}, notes


class _Importer:
    """Builds the evsim nodes of one flattened NIR graph."""

    def __init__(self, flat: _Flat, source: str, reset: str | None, v0: str | None):
        self.flat, self.source = flat, source
        self.reset, self.v0 = reset, v0
        self.nodes: list[Node] = []
        self.names: set[str] = set()
        self.value: dict[str, str] = {}  # NIR node -> evsim node holding its value
        self.shape: dict[str, tuple] = {}
        self.consumers: dict[str, list[str]] = {}
        self.skip: set[str] = set()
        self.notes: list[str] = []
        self.evsim_origin = False

    def where(self, name: str) -> str:
        return f"{self.source}, node '{name}' ({_nir_type(self.flat.nodes[name])})"

    def unique(self, base: str) -> str:
        name = base if base != "input" else "input_"
        k = 1
        while name in self.names:
            name = f"{base}_{k}"
            k += 1
        self.names.add(name)
        return name

    def emit(self, base: str, op: str, inputs, attrs=None, arrays=None, shape=None) -> str:
        node = self.flat.nodes.get(base)
        original = _evsim_meta(node).get("name") if node is not None else None
        name = self.unique(original if isinstance(original, str) and original else base)
        self.nodes.append(Node(name, op, tuple(inputs), dict(attrs or {}), dict(arrays or {})))
        self.shape[name] = tuple(shape)
        return name

    def input_of(self, name: str, sources: list[str]) -> str:
        """The evsim node that holds the (summed) input of NIR node ``name``."""
        values = [self.value[s] for s in sources]
        if len(values) == 1:
            return values[0]
        shapes = {self.shape[v] for v in values}
        if len(shapes) != 1:
            raise GraphError(describe(self.where(name), "edges into it of one shape (they are summed)",
                                      ", ".join(f"{s} {self.shape[self.value[s]]}" for s in sources)))
        node = self.flat.nodes.get(name)
        given = _evsim_meta(node).get("sum") if node is not None else None
        base = given if isinstance(given, str) and given else f"{name}.sum"
        return self.emit(base, "add", values, shape=self.shape[values[0]])


def _evsim_meta(node) -> dict:
    meta = getattr(node, "metadata", None) or {}
    text = meta.get("evsim") if isinstance(meta, dict) else None
    if isinstance(text, bytes):
        text = text.decode()
    if not isinstance(text, str):
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _imp_batchnorm(im: _Importer, name: str, node, x: str, shape: tuple) -> str | None:
    """A BatchNorm that evsim wrote as a 1x1 Conv2d / diagonal Affine, restored from metadata."""
    meta, md = _evsim_meta(node), getattr(node, "metadata", None) or {}
    roles = ("mean", "var", "gamma", "beta")
    if meta.get("op") != "batchnorm" or not all(f"evsim_{r}" in md for r in roles):
        return None
    arrays = {r: _float_array(md[f"evsim_{r}"], im.where(name), f"metadata evsim_{r}").reshape(-1) for r in roles}
    return im.emit(name, "batchnorm", [x], {"eps": float(meta.get("eps", 1e-5))}, arrays, shape=shape)


def _imp_conv(im: _Importer, name: str, node, x: str, shape: tuple) -> str:
    restored = _imp_batchnorm(im, name, node, x, shape)
    if restored is not None:
        return restored
    where = im.where(name)
    if len(shape) != 3:
        raise GraphError(describe(where, "an input of shape (C, H, W)", f"{shape}"))
    weight = _float_array(node.weight, where, "weight")
    if weight.ndim != 4:
        raise GraphError(describe(where, "weight of shape (C_out, C_in/groups, kH, kW)", f"{weight.shape}"))
    groups = int(np.asarray(node.groups).reshape(-1)[0])
    written = _evsim_meta(node).get("groups")
    if groups == 1 and isinstance(written, int) and written > 1:  # evsim wrote a grouped conv densely
        weight = _grouped(weight, written) if weight.shape[0] % written == 0 and \
            weight.shape[1] % written == 0 else None
        if weight is None:
            raise GraphError(describe(where, f"a block-diagonal weight for the {written} groups its metadata names",
                                      "other non-zero weights"))
        groups = written
    stride, dilation = _pair(node.stride, where, "stride"), _pair(node.dilation, where, "dilation")
    declared = getattr(node, "input_shape", None)
    if declared is not None and tuple(_pair(declared, where, "input_shape")) != tuple(shape[1:]):
        raise GraphError(describe(f"{where}, 'input_shape'", f"the (H, W) of its input, {tuple(shape[1:])}",
                                  f"{tuple(np.asarray(declared).reshape(-1).tolist())}"))
    _, _, kh, kw = weight.shape
    padding = node.padding
    if isinstance(padding, bytes):
        padding = padding.decode()
    if isinstance(padding, str):
        if padding == "valid":
            padding = [0, 0]
        elif padding == "same":
            if stride != [1, 1]:
                raise GraphError(describe(f"{where}, 'padding'", "'same' only with stride 1 (as in PyTorch)",
                                          f"stride {stride}"))
            th, tw = dilation[0] * (kh - 1), dilation[1] * (kw - 1)
            top, left = th // 2, tw // 2
            if th % 2 or tw % 2:  # PyTorch puts the odd pixel at the bottom / right
                pads = [top, th - top, left, tw - left]
                x = im.emit(f"{name}.pad", "pad2d", [x], {"pads": pads},
                            shape=(shape[0], shape[1] + th, shape[2] + tw))
                shape = im.shape[x]
                padding = [0, 0]
            else:
                padding = [top, left]
        else:
            raise ManifestError(describe(f"{where}, 'padding'", "an integer, a pair, 'same' or 'valid'", repr(padding)))
    else:
        padding = _pair(padding, where, "padding")
    arrays = {"weight": weight}
    bias = getattr(node, "bias", None)
    if bias is not None:
        bias = _float_array(bias, where, "bias").reshape(-1)
        if np.any(bias != 0):
            arrays["bias"] = bias
    ho = (shape[1] + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (shape[2] + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return im.emit(name, "conv2d", [x], {"stride": stride, "padding": padding, "dilation": dilation,
                                         "groups": groups}, arrays, shape=(weight.shape[0], ho, wo))


def _grouped(dense: np.ndarray, groups: int) -> np.ndarray | None:
    """The grouped weight of a block-diagonal dense weight, or None if it has weights off the blocks."""
    c_out, c_in = dense.shape[:2]
    cog, cig = c_out // groups, c_in // groups
    blocks = np.concatenate([dense[g * cog:(g + 1) * cog, g * cig:(g + 1) * cig] for g in range(groups)])
    return blocks if np.count_nonzero(dense) == np.count_nonzero(blocks) else None


def _imp_linear(im: _Importer, name: str, node, x: str, shape: tuple) -> str:
    restored = _imp_batchnorm(im, name, node, x, shape)
    if restored is not None:
        return restored
    where = im.where(name)
    weight = _float_array(node.weight, where, "weight")
    if weight.ndim != 2:
        raise GraphError(describe(where, "a 2-D weight (out, in)", f"shape {weight.shape}"))
    if weight.shape[1] != int(np.prod(shape)):
        raise GraphError(describe(where, f"weight of shape (out, {int(np.prod(shape))}) for its input {shape}",
                                  f"{weight.shape}"))
    arrays = {"weight": weight}
    bias = getattr(node, "bias", None)
    if bias is not None:
        bias = _float_array(bias, where, "bias").reshape(-1)
        if bias.shape != (weight.shape[0],):
            raise GraphError(describe(f"{where}, 'bias'", f"shape ({weight.shape[0]},)", f"{bias.shape}"))
        if np.any(bias != 0):
            arrays["bias"] = bias
    return im.emit(name, "linear", [x], arrays=arrays, shape=(weight.shape[0],))


def _pool_attrs(im: _Importer, name: str, node, shape: tuple):
    where = im.where(name)
    if len(shape) != 3:
        raise GraphError(describe(where, "an input of shape (C, H, W)", f"{shape}"))
    kernel = _pair(node.kernel_size, where, "kernel_size")
    stride = kernel if getattr(node, "stride", None) is None else _pair(node.stride, where, "stride")
    padding = [0, 0] if getattr(node, "padding", None) is None else _pair(node.padding, where, "padding")
    out = (shape[0], (shape[1] + 2 * padding[0] - kernel[0]) // stride[0] + 1,
           (shape[2] + 2 * padding[1] - kernel[1]) // stride[1] + 1)
    return {"kernel": kernel, "stride": stride, "padding": padding}, out


def _imp_sumpool(im: _Importer, name: str, node, x: str, shape: tuple) -> str:
    attrs, out = _pool_attrs(im, name, node, shape)
    # SumPool2d -> Scale(1/(kH kW)) is an average pooling (as evsim writes one): one avgpool2d node
    users = im.consumers.get(name, [])
    if len(users) == 1 and _nir_type(im.flat.nodes[users[0]]) == "Scale" \
            and len(im.flat_pred.get(users[0], [])) == 1:
        scale = np.asarray(im.flat.nodes[users[0]].scale, np.float64)
        area = attrs["kernel"][0] * attrs["kernel"][1]
        if scale.size and np.all(scale == 1.0 / area):
            im.skip.add(users[0])
            value = im.emit(users[0], "avgpool2d", [x], attrs, shape=out)
            im.value[users[0]] = value
            return value
    return im.emit(name, "sumpool2d", [x], attrs, shape=out)


def _imp_avgpool(im: _Importer, name: str, node, x: str, shape: tuple) -> str:
    attrs, out = _pool_attrs(im, name, node, shape)
    return im.emit(name, "avgpool2d", [x], attrs, shape=out)


def _imp_scale(im: _Importer, name: str, node, x: str, shape: tuple) -> str:
    where = im.where(name)
    full = _to_shape(node.scale, shape, where, "scale")
    compact = _compact(full)
    if compact.ndim > 1 or (compact.ndim == 1 and len(shape) == 3 and compact.shape != (shape[0],)):
        raise GraphError(describe(where, "a scale that is uniform or per channel",
                                  "different values within a channel", "fold it into the next layer's weights"))
    return im.emit(name, "scale", [x], arrays={"scale": compact}, shape=shape)


def _imp_flatten(im: _Importer, name: str, node, x: str, shape: tuple) -> str:
    where = im.where(name)
    start, end = int(np.asarray(node.start_dim)), int(np.asarray(node.end_dim))
    declared = (getattr(node, "input_type", None) or {}).get("input")
    if declared is not None and np.asarray(declared).size == len(shape) + 1:
        # an exporter that counted a batch dimension (start_dim=1 for torch's Flatten())
        start, end = (start - 1 if start > 0 else start), (end - 1 if end > 0 else end)
        im.notes.append(f"Flatten '{name}': declared input {np.asarray(declared).tolist()} has a batch "
                        "dimension; start_dim/end_dim shifted by one")
    n = len(shape)
    if not (-n <= start < n and -n <= end < n):
        raise GraphError(describe(where, f"start_dim and end_dim within the {n} dimensions of its input {shape} "
                                  "(NIR shapes have no batch dimension)", f"start_dim {start}, end_dim {end}"))
    s, e = start % n, end % n
    out = shape[:s] + (int(np.prod(shape[s:e + 1])),) + shape[e + 1:]
    if len(out) != 1:
        raise GraphError(describe(where, "a Flatten to one dimension (start_dim 0, end_dim -1: NIR has no "
                                  "batch dimension)", f"output {out} from start_dim {start}, end_dim {end}",
                                  "re-export with start_dim=0"))
    return im.emit(name, "flatten", [x], shape=out)


def _imp_if(im: _Importer, name: str, node, x: str, shape: tuple) -> str:
    where = im.where(name)
    thr = _to_shape(node.v_threshold, shape, where, "v_threshold")
    if np.any(thr <= 0):
        raise GraphError(describe(f"{where}, 'v_threshold'", "thresholds > 0", f"minimum {thr.min():g}"))
    r = _to_shape(node.r, shape, where, "r")
    v_reset_value = getattr(node, "v_reset", None)
    v_reset = np.zeros(shape) if v_reset_value is None else _to_shape(v_reset_value, shape, where, "v_reset")
    meta = _evsim_meta(node)
    md = getattr(node, "metadata", None) or {}
    reset = im.reset or meta.get("reset") or "subtract"
    if reset not in ("subtract", "zero"):
        raise ConversionError(describe(f"{where}, reset", "'subtract' or 'zero'", repr(reset)))
    threshold = _compact(thr)
    if im.v0 == "half":
        v0 = _compact(thr / 2)
    elif im.v0 is None and isinstance(md, dict) and "evsim_v0" in md:  # written by evsim: as it was
        v0 = _float_array(md["evsim_v0"], where, "metadata evsim_v0").reshape(tuple(meta.get("v0_shape", [-1])))
    else:
        v0 = np.zeros((), thr.dtype)
    base = name
    payload = _payload_scale(im, name, thr, meta)
    if payload is not None:  # an evsim IF whose θ payload was kept as a Scale: fuse it back
        value = im.emit(base, "neuron", [x], {"model": "if", "reset": reset},
                        {"threshold": threshold, "v0": v0}, shape=shape)
        im.skip.add(payload)
        im.value[payload] = value
        return value
    attrs = {"model": NIR_MODEL, "reset": reset}
    arrays = {"threshold": threshold, "v0": v0}
    for key, full in (("r", r), ("v_reset", v_reset)):
        value = _scalar_or_array(full)
        if isinstance(value, float):
            attrs[key] = value
        else:
            arrays[key] = value.astype(np.float64) if value.dtype not in (np.float32, np.float64) else value
    if meta.get("firing") == ">=":
        attrs["inclusive"] = True
    return im.emit(base, "neuron", [x], attrs, arrays, shape=shape)


def _payload_scale(im: _Importer, name: str, thr: np.ndarray, meta: dict) -> str | None:
    if meta.get("payload") != "scale":
        return None
    users = im.consumers.get(name, [])
    if len(users) != 1 or _nir_type(im.flat.nodes[users[0]]) != "Scale":
        return None
    scale = im.flat.nodes[users[0]]
    if _evsim_meta(scale).get("role") != "payload" or len(im.flat_pred.get(users[0], [])) != 1:
        return None
    try:
        values = np.broadcast_to(np.asarray(scale.scale), thr.shape)
    except ValueError:
        return None
    return users[0] if np.array_equal(values, thr) else None


#: NIR node type -> import handler (im, name, node, evsim input node, input shape) -> evsim node
_IMPORT = {
    "Input": None,
    "Output": None,
    "Conv2d": _imp_conv,
    "Affine": _imp_linear,
    "Linear": _imp_linear,
    "Scale": _imp_scale,
    "SumPool2d": _imp_sumpool,
    "AvgPool2d": _imp_avgpool,
    "Flatten": _imp_flatten,
    "IF": _imp_if,
}


def _input_shape(flat: _Flat, notes: list) -> tuple:
    node = flat.nodes[flat.input]
    where = f"{flat.source}, Input '{flat.input}'"
    shape = (getattr(node, "input_type", None) or {}).get("input")
    if shape is None:
        raise GraphError(describe(where, "a declared input shape", "none"))
    shape = [int(d) for d in np.asarray(shape).reshape(-1)]
    original = list(shape)
    while len(shape) > 3 or (len(shape) == 2 and shape[0] == 1):
        if shape[0] != 1:
            break
        shape = shape[1:]
    if shape != original:
        notes.append(f"Input shape {original}: leading batch dimension dropped")
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise GraphError(describe(where, "an input of shape (C, H, W) or (F,)", f"{original}"))
    return tuple(shape)


def graph_from_nir(graph, source: str = "<nir>", reset: str | None = None, v0: str | None = None,
                   version: str | None = None, notes: list | None = None) -> Graph:
    """Convert an in-memory ``nir.NIRGraph`` into a validated evsim SNN graph (see :func:`read_nir`)."""
    nir = _nir()
    if not isinstance(graph, nir.NIRGraph):
        raise ConversionError(describe(source, "a nir.NIRGraph", type(graph).__name__))
    if reset not in (None, "subtract", "zero"):
        raise ConversionError(describe(f"{source}, option reset", "'subtract' or 'zero'", repr(reset)))
    if v0 not in (None, "zero", "half"):
        raise ConversionError(describe(f"{source}, option v0", "'zero' or 'half'", repr(v0)))
    notes = list(notes or [])
    flat = _Flat(graph, source)
    order, pred, dropped = _order(flat)
    notes += dropped
    im = _Importer(flat, source, reset, v0)
    im.flat_pred = pred
    for name in order:
        for a in pred[name]:
            im.consumers.setdefault(a, []).append(name)
    shape = _input_shape(flat, notes)
    im.value[flat.input] = "input"
    im.shape["input"] = shape
    output_sources = None
    for name in order:
        if name == flat.input or name in im.skip:
            continue
        if name == flat.output:
            output_sources = pred[name]
            continue
        x = im.input_of(name, pred[name])
        im.value[name] = _IMPORT[_nir_type(flat.nodes[name])](im, name, flat.nodes[name], x, im.shape[x])
    out = im.input_of(flat.output, output_sources)
    counts_output = out == "input" or any(n.name == out and n.op == "neuron" for n in im.nodes)
    if counts_output:  # the Output reads spikes: accumulate the counts (payload one) through an identity
        out = im.emit(flat.output, "scale", [out], arrays={"scale": np.ones(())}, shape=im.shape[out])
    declared = (getattr(flat.nodes[flat.output], "output_type", None) or {}).get("output")
    if declared is not None and np.asarray(declared).size and \
            int(np.prod(np.asarray(declared, dtype=np.int64))) not in (0, int(np.prod(im.shape[out]))):
        raise GraphError(describe(f"{source}, Output '{flat.output}'", f"a shape of {int(np.prod(im.shape[out]))} "
                                  "values (what reaches it)", f"{np.asarray(declared).tolist()}"))
    meta = _evsim_meta(graph)
    spec = InputSpec(shape)
    metadata = {}
    if meta.get("format") == "evsim-nir":
        inp = meta.get("input") or {}
        spec = InputSpec(shape, inp.get("scale"), None if inp.get("mean") is None else tuple(inp["mean"]),
                         None if inp.get("std") is None else tuple(inp["std"]))
        metadata = dict(meta.get("metadata") or {})
    origin = meta.get("format") == "evsim-nir"
    info = {"source": source, "nir_version": version,
            "reset": reset or ("as written by evsim" if origin else "subtract (default)"),
            "v0": v0 or ("as written by evsim" if origin else "zero (default)"),
            "output": ("spike counts of '" + output_sources[0] + "' (prediction: most spikes, ties to the "
                       "lowest index)") if counts_output else f"accumulated value of '{out}'"}
    if notes:
        info["notes"] = notes
    metadata["nir"] = info
    result = Graph(spec, im.nodes, out, kind="snn", metadata=metadata, source=source)
    return validate(result)


# =========================================================================================
# export
# =========================================================================================


def _pow2(x: float) -> bool:
    m, _ = math.frexp(x)
    return x > 0 and m == 0.5


def _pool_area(node: Node, shape) -> int:
    if node.op == "global_avgpool":
        return int(shape[1] * shape[2])
    return int(node.attrs["kernel"][0] * node.attrs["kernel"][1])


class _Exporter:
    def __init__(self, graph: Graph):
        self.g = graph
        self.users = graph.consumers()
        self.by_name = {n.name: n for n in graph.nodes}
        self.fold: dict[str, np.ndarray] = {}  # conv/linear -> factor per input element (input shape)
        self.edge_scale: dict[tuple[str, str], np.ndarray] = {}  # (src, dst) -> factors, src shape
        self.payload: set[str] = set()  # populations whose θ stays a Scale after the IF

    def shape(self, name):
        return tuple(self.g.shape_of(name))

    def exact_scaling(self, node: Node) -> bool:
        """Whether composing ``node`` only adds, or scales every path by a power of two with no sums
        (flatten, add, non-overlapping pools whose 1/area is a power of two): such nodes commute with
        a product exactly, so θ may be applied before or after them."""
        if node.op in ("flatten", "add"):
            return True
        if node.op == "global_avgpool":
            return _pow2(1.0 / _pool_area(node, self.shape(node.inputs[0])))
        if node.op in ("avgpool2d", "sumpool2d"):
            non_overlapping = node.attrs["stride"] == node.attrs["kernel"]
            return non_overlapping and (node.op == "sumpool2d" or _pow2(1.0 / _pool_area(node, None)))
        return False

    def paths(self, name: str, merged: bool = False):
        """Every path from node ``name`` to the next population or the output, as a list of
        (weighted nodes, whether a merge came before the first of them)."""
        node = self.by_name[name]
        if node.op == "neuron":
            return [([], False)]
        weighted = [] if self.exact_scaling(node) else [(node, merged)]
        merged = merged or node.op == "add"
        ends = [([], False)] if name == self.g.output else []
        for user in self.users.get(name, []):
            ends += self.paths(user.name, merged)
        return [(weighted + w, m) for w, m in ends] if ends else [(weighted, merged)]

    def plan(self, pop: Node, theta_c: np.ndarray | None) -> None:
        """Decide where population ``pop``'s payload θ goes, so that the engine's weights of the NIR
        graph equal ``composed weight × θ`` of the original bit for bit.

        The engine multiplies a path's composed weight by θ at the end.  Per consumer of ``pop``: if
        every path from it reaches exactly one weighted node, a Conv2d/Affine before any merge, θ is
        folded into those weights (one product ``w·θ``, the rest exact scalings); if every path has at
        most one weighted node, a Scale(θ) goes on the edge (again one product with θ); otherwise the
        population keeps a Scale(θ) after it that evsim fuses back into the neuron on import.
        """
        if theta_c is None:
            self.payload.add(pop.name)
            return
        folds, edges = {}, {}
        full = np.broadcast_to(theta_c.reshape(-1, 1, 1), pop.shape) if len(pop.shape) == 3 else \
            np.broadcast_to(theta_c, pop.shape)
        for user in self.users.get(pop.name, []):
            paths = self.paths(user.name)
            counts = [len(w) for w, _ in paths]
            if max(counts, default=0) > 1:
                self.payload.add(pop.name)
                return
            foldable = all(c == 1 and w[0][0].op in ("conv2d", "linear") and not w[0][1] for c, (w, _) in
                           zip(counts, paths))
            if foldable:
                for w, _ in paths:
                    target = w[0][0]
                    shape = self.shape(target.inputs[0])
                    folds[target.name] = _factors(theta_c, shape)
            else:
                edges[(pop.name, user.name)] = full
        self.fold.update(folds)
        self.edge_scale.update(edges)


def _factors(theta_c: np.ndarray, shape) -> np.ndarray:
    """θ per element of a (C, H, W) value, or per feature of its flattening (F = C·H·W, channels first)."""
    if len(shape) == 3:
        return np.broadcast_to(theta_c.reshape(-1, 1, 1), shape)
    c = theta_c.size
    return np.repeat(theta_c, shape[0] // c) if shape[0] % c == 0 else None


def _theta_per_channel(node: Node, shape) -> np.ndarray | None:
    theta = np.asarray(node.arrays["threshold"], np.float64)
    if theta.ndim == 0:
        return np.full(shape[0], float(theta))
    if theta.shape == (shape[0],):
        return theta
    full = theta.reshape(shape)
    if len(shape) == 3 and np.all(full == full[:, :1, :1]):
        return full[:, 0, 0].copy()
    return None


def _neuron_param(node: Node, key: str, default: float, shape) -> np.ndarray:
    if key in node.arrays:
        value = np.asarray(node.arrays[key], np.float64)
    else:
        value = np.asarray(float(node.attrs.get(key, default)))
    if value.ndim == 1 and len(shape) == 3:
        value = value.reshape(-1, 1, 1)
    return np.broadcast_to(value, shape)


def graph_to_nir(graph: Graph):
    """An evsim SNN graph (kind "snn", IF or nir_if neurons) as a ``nir.NIRGraph``.

    See the module docstring for how θ payloads are folded and what goes into metadata.

    Raises
    ------
    ConversionError
        Neuron models without a NIR form (signed IF, Group Neurons, plugins), max pooling,
        a ``pad2d`` that is not a PyTorch 'same' padding, an ANN graph.
    """
    nir = _nir()
    graph = validate(graph)
    src = graph.source
    if graph.kind != "snn":
        raise ConversionError(describe(src, "an SNN graph (kind 'snn')", f"kind {graph.kind!r}",
                                       "convert it first (evsim convert MODEL -o model.nir does both)"))
    ex = _Exporter(graph)
    for node in graph.nodes:
        where = f"{src}, node '{node.name}'"
        if node.op == "neuron":
            model = node.attrs.get("model")
            if model not in ("if", NIR_MODEL):
                raise ConversionError(describe(where, "an IF neuron (the only spiking neuron NIR and evsim share)",
                                               f"model {model!r}", _NO_NIR_FORM.get(model, "it has no NIR form")))
            if model == "if":
                ex.plan(node, _theta_per_channel(node, node.shape))
        elif node.op == "maxpool2d":
            raise ConversionError(describe(where, "layers NIR can express", "max pooling",
                                           "NIR has no max pooling node (evsim's spiking max pooling is a gate); "
                                           "use average pooling"))
        elif node.op not in _EXPORT:
            raise ConversionError(describe(where, "an op with a NIR form (" + ", ".join(sorted(_EXPORT)) + ")",
                                           repr(node.op)))
    b = _Builder(nir, graph, ex)
    b.build()
    return b.result()


_NO_NIR_FORM = {
    "signed_if": "a signed IF neuron also emits negative spikes (-θ) to take back early positive ones; "
                 "NIR's IF emits only positive spikes and has no negative threshold",
    "gn": "a Group Neuron emits up to τ spikes in one step (payload θ/τ each); NIR's IF emits at most one "
          "spike per step, and no NIR node counts several",
}


class _Builder:
    """Emits NIR nodes and edges for an evsim graph, given the payload plan."""

    def __init__(self, nir, graph: Graph, ex: _Exporter):
        self.nir, self.g, self.ex = nir, graph, ex
        self.nodes: dict[str, object] = {}
        self.edges: list[tuple[str, str]] = []
        self.out: dict[str, list[str]] = {}  # evsim node -> NIR nodes whose summed values it is
        self.names: dict[str, str] = {}
        self.used: set[str] = set()
        self.edge_nodes: dict[tuple[str, str], str] = {}

    def nir_name(self, name: str) -> str:
        if name in self.names:
            return self.names[name]
        base = name.replace("/", "_") or "node"
        if base in ("input", "output"):
            base = base + "_"
        cand, k = base, 1
        while cand in self.used:
            cand, k = f"{base}_{k}", k + 1
        self.used.add(cand)
        self.names[name] = cand
        return cand

    def add(self, name: str, node, meta: dict | None = None, evsim_name: str | None = None) -> str:
        key = self.nir_name(name)
        if meta or (evsim_name is not None and evsim_name != key):
            node.metadata = dict(node.metadata or {})
            info = dict(meta or {})
            if evsim_name is not None and evsim_name != key:
                info["name"] = evsim_name
            node.metadata["evsim"] = json.dumps(info, default=json_default)
        self.nodes[key] = node
        return key

    def sources(self, name: str, dst: str) -> list[str]:
        """NIR nodes whose values, summed, are the value of evsim node ``name`` as seen by ``dst``."""
        if name == "input":
            return ["input"]
        scale = self.ex.edge_scale.get((name, dst))
        if scale is not None:
            key = (name, dst)
            if key not in self.edge_nodes:
                s = self.add(f"{name}.to.{dst.strip('<>')}", self.nir.Scale(scale=np.array(scale, np.float64)),
                             {"role": "edge"})
                for a in self.out[name]:
                    self.edges.append((a, s))
                self.edge_nodes[key] = s
            return [self.edge_nodes[key]]
        node = self.ex.by_name[name]
        if node.op == "add":
            return [s for x in node.inputs for s in self.sources(x, name)]
        return self.out[name]

    def connect(self, node: Node, key: str) -> None:
        adds = [x for x in node.inputs if x != "input" and self.ex.by_name[x].op == "add"]
        if len(node.inputs) == 1 and adds:  # keep the add's name: evsim re-creates it on import
            n = self.nodes[key]
            info = json.loads((n.metadata or {}).get("evsim", "{}"))
            n.metadata = {**(n.metadata or {}), "evsim": json.dumps({**info, "sum": adds[0]})}
        for x in node.inputs:
            for s in self.sources(x, node.name):
                if (s, key) in self.edges:
                    raise ConversionError(describe(f"{self.g.source}, node '{node.name}'",
                                                   "each source at most once among its summed inputs",
                                                   f"'{s}' twice", "NIR sums edges and allows no duplicates"))
                self.edges.append((s, key))

    def build(self) -> None:
        nir, g = self.nir, self.g
        self.nodes["input"] = nir.Input(input_type=np.array(g.input.shape))
        self.used.update({"input", "output"})
        for node in g.nodes:
            if node.op == "add":
                continue
            _EXPORT[node.op](self, node)
        out = self.sources(g.output, "<output>")
        self.nodes["output"] = nir.Output(output_type=np.array(g.shape_of(g.output)))
        for s in out:
            self.edges.append((s, "output"))

    def result(self):
        meta = {"format": "evsim-nir", "version": META_VERSION, "kind": "snn", "output": self.g.output,
                "input": {"scale": self.g.input.scale,
                          "mean": None if self.g.input.mean is None else list(self.g.input.mean),
                          "std": None if self.g.input.std is None else list(self.g.input.std)},
                "metadata": self.g.metadata}
        return self.nir.NIRGraph(nodes=self.nodes, edges=self.edges,
                                 metadata={"evsim": json.dumps(meta, default=json_default)})




def _folded(ex: _Exporter, node: Node, weight: np.ndarray) -> np.ndarray:
    """``weight`` with the θ of the population feeding ``node`` folded in (float64: ``w * θ``)."""
    f = ex.fold.get(node.name)
    if f is None:
        return weight
    w = np.asarray(weight, np.float64)
    if node.op == "linear":
        return w * np.asarray(f, np.float64).reshape(1, -1)
    c_in = np.asarray(f, np.float64)[:, 0, 0]
    c_out, cig = w.shape[:2]
    groups = node.attrs["groups"]
    channel = (np.arange(c_out)[:, None] // (c_out // groups)) * cig + np.arange(cig)[None, :]
    return w * c_in[channel][:, :, None, None]


def _dense_groups(weight: np.ndarray, groups: int) -> np.ndarray:
    """A grouped convolution's weight as the equivalent dense (groups = 1) weight, zeros off the blocks."""
    c_out, cig, kh, kw = weight.shape
    cog = c_out // groups
    dense = np.zeros((c_out, cig * groups, kh, kw), weight.dtype)
    for g in range(groups):
        dense[g * cog:(g + 1) * cog, g * cig:(g + 1) * cig] = weight[g * cog:(g + 1) * cog]
    return dense


def _exp_conv(b: _Builder, node: Node) -> None:
    a = node.attrs
    weight = _folded(b.ex, node, node.arrays["weight"])
    meta = None
    if a["groups"] > 1:  # nir's type checks assume C_in = weight.shape[1]: write the dense equivalent
        weight, meta = _dense_groups(weight, a["groups"]), {"groups": a["groups"]}
    bias = node.arrays.get("bias")
    bias = np.zeros(weight.shape[0], weight.dtype) if bias is None else bias
    in_shape = b.g.shape_of(node.inputs[0])
    padding = tuple(a["padding"])
    source = b.ex.by_name.get(node.inputs[0])
    if source is not None and source.op == "pad2d":
        padding = "same"
    key = b.add(node.name, b.nir.Conv2d(input_shape=tuple(int(d) for d in in_shape[1:]) if padding != "same" else
                                        tuple(int(d) for d in b.g.shape_of(source.inputs[0])[1:]),
                                        weight=weight, stride=tuple(a["stride"]), padding=padding,
                                        dilation=tuple(a["dilation"]), groups=1, bias=bias),
                meta, evsim_name=node.name)
    if padding == "same":
        b.connect(source, key)
    else:
        b.connect(node, key)
    b.out[node.name] = [key]


def _exp_pad(b: _Builder, node: Node) -> None:
    users = b.ex.users.get(node.name, [])
    ok = len(users) == 1 and users[0].op == "conv2d" and users[0].attrs["padding"] == [0, 0] \
        and users[0].attrs["stride"] == [1, 1] and node.name != b.g.output
    if ok:
        kh, kw = users[0].arrays["weight"].shape[2:]
        dh, dw = users[0].attrs["dilation"]
        th, tw = dh * (kh - 1), dw * (kw - 1)
        ok = list(node.attrs["pads"]) == [th // 2, th - th // 2, tw // 2, tw - tw // 2]
    if not ok:
        raise ConversionError(describe(f"{b.g.source}, node '{node.name}'", "a zero padding NIR can express",
                                       f"pad2d {node.attrs.get('pads')}",
                                       "NIR pads only inside Conv2d (symmetric, or 'same' at stride 1)"))
    b.out[node.name] = []  # the next Conv2d takes padding='same' and reads the pad's input


def _exp_linear(b: _Builder, node: Node) -> None:
    weight = _folded(b.ex, node, node.arrays["weight"])
    if "bias" in node.arrays:
        n = b.nir.Affine(weight=weight, bias=node.arrays["bias"])
    else:
        n = b.nir.Linear(weight=weight)
    key = b.add(node.name, n, evsim_name=node.name)
    b.connect(node, key)
    b.out[node.name] = [key]


def _exp_pool(b: _Builder, node: Node, kernel, stride, padding, global_pool=False) -> None:
    shape = b.g.shape_of(node.inputs[0])
    pool = b.add(f"{node.name}.sum", b.nir.SumPool2d(kernel_size=np.array(kernel), stride=np.array(stride),
                                                     padding=np.array(padding)))
    b.connect(node, pool)
    out_shape = (shape[0], (shape[1] + 2 * padding[0] - kernel[0]) // stride[0] + 1,
                 (shape[2] + 2 * padding[1] - kernel[1]) // stride[1] + 1)
    area = kernel[0] * kernel[1]
    name = f"{node.name}.scale" if global_pool else node.name
    scale = b.add(name, b.nir.Scale(scale=np.full(out_shape, 1.0 / area)),
                  evsim_name=None if global_pool else node.name)
    b.edges.append((pool, scale))
    if global_pool:
        flat = b.add(node.name, b.nir.Flatten(input_type={"input": np.array(out_shape)}, start_dim=0, end_dim=-1),
                     evsim_name=node.name)
        b.edges.append((scale, flat))
        scale = flat
    b.out[node.name] = [scale]


def _exp_avgpool(b: _Builder, node: Node) -> None:
    a = node.attrs
    _exp_pool(b, node, a["kernel"], a["stride"], a["padding"])


def _exp_global(b: _Builder, node: Node) -> None:
    _, h, w = b.g.shape_of(node.inputs[0])
    _exp_pool(b, node, [h, w], [h, w], [0, 0], global_pool=True)


def _exp_sumpool(b: _Builder, node: Node) -> None:
    a = node.attrs
    key = b.add(node.name, b.nir.SumPool2d(kernel_size=np.array(a["kernel"]), stride=np.array(a["stride"]),
                                           padding=np.array(a["padding"])), evsim_name=node.name)
    b.connect(node, key)
    b.out[node.name] = [key]


def _exp_flatten(b: _Builder, node: Node) -> None:
    shape = b.g.shape_of(node.inputs[0])
    key = b.add(node.name, b.nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1),
                evsim_name=node.name)
    b.connect(node, key)
    b.out[node.name] = [key]


def _exp_scale(b: _Builder, node: Node) -> None:
    shape = b.g.shape_of(node.name)
    value = np.asarray(node.arrays["scale"], np.float64)
    if value.ndim == 1 and len(shape) == 3:
        value = value.reshape(-1, 1, 1)
    key = b.add(node.name, b.nir.Scale(scale=np.array(np.broadcast_to(value, shape))), evsim_name=node.name)
    b.connect(node, key)
    b.out[node.name] = [key]


def _exp_batchnorm(b: _Builder, node: Node) -> None:
    p = node.arrays
    scale = p["gamma"] / np.sqrt(p["var"] + node.attrs["eps"])
    shift = p["beta"] - p["mean"] * scale
    shape = b.g.shape_of(node.name)
    if len(shape) == 3:  # a depthwise 1x1 convolution, written densely (see _exp_conv)
        n = b.nir.Conv2d(input_shape=tuple(shape[1:]), weight=np.diag(scale)[:, :, None, None], stride=(1, 1),
                         padding=(0, 0), dilation=(1, 1), groups=1, bias=shift)
    else:
        n = b.nir.Affine(weight=np.diag(scale), bias=shift)
    key = b.add(node.name, n, {"op": "batchnorm", "eps": node.attrs["eps"]}, evsim_name=node.name)
    for role in ("mean", "var", "gamma", "beta"):  # evsim reads the BatchNorm back as it was
        n.metadata[f"evsim_{role}"] = np.atleast_1d(p[role])
    b.connect(node, key)
    b.out[node.name] = [key]


def _exp_neuron(b: _Builder, node: Node) -> None:
    shape = b.g.shape_of(node.name)
    model = node.attrs["model"]
    thr = np.asarray(node.arrays["threshold"])
    thr_full = np.array(np.broadcast_to(thr.reshape(-1, 1, 1) if thr.ndim == 1 and len(shape) == 3 else thr, shape))
    reset = node.attrs.get("reset", "subtract")
    if model == "if":
        r, v_reset = np.ones(shape, thr_full.dtype), np.zeros(shape, thr_full.dtype)
        inclusive = True
    else:
        r = np.array(_neuron_param(node, "r", 1.0, shape))
        v_reset = np.array(_neuron_param(node, "v_reset", 0.0, shape))
        inclusive = bool(node.attrs.get("inclusive", False))
    payload = node.name in b.ex.payload
    meta = {"model": model, "reset": reset, "firing": ">=" if inclusive else ">",
            "payload": "scale" if payload else ("folded" if model == "if" else "one")}
    n = b.nir.IF(r=r, v_threshold=thr_full, v_reset=v_reset)
    key = b.add(node.name, n, meta, evsim_name=node.name)
    v0 = np.asarray(node.arrays["v0"])
    n.metadata["evsim"] = json.dumps({**json.loads(n.metadata["evsim"]), "v0_shape": list(v0.shape)})
    n.metadata["evsim_v0"] = np.atleast_1d(v0)  # HDF5 cannot compress a 0-d dataset
    b.connect(node, key)
    b.out[node.name] = [key]
    if payload:
        s = b.add(f"{node.name}.payload", b.nir.Scale(scale=np.array(thr_full, np.float64)),
                  {"role": "payload", "population": node.name})
        b.edges.append((key, s))
        b.out[node.name] = [s]


#: evsim op -> NIR emission
_EXPORT = {
    "conv2d": _exp_conv,
    "linear": _exp_linear,
    "avgpool2d": _exp_avgpool,
    "global_avgpool": _exp_global,
    "sumpool2d": _exp_sumpool,
    "flatten": _exp_flatten,
    "scale": _exp_scale,
    "batchnorm": _exp_batchnorm,
    "neuron": _exp_neuron,
    "pad2d": _exp_pad,
    "add": None,
}


def write_nir(graph: Graph, path) -> None:
    """Write an evsim SNN graph to a NIR file that ``nir.read`` accepts with its type checks.

    The file is written atomically and read back with ``nir.read`` before this returns.

    Raises
    ------
    ConversionError
        What NIR cannot express (see :func:`graph_to_nir`).
    MissingDependencyError
        ``nir`` is not installed.
    """
    nir = _nir()
    from evsim.format import atomic_write

    g = graph_to_nir(graph)
    atomic_write(path, lambda tmp: nir.write(tmp, g))
    try:
        nir.read(path)
    except Exception as exc:  # noqa: BLE001 - a file nir cannot read back is our bug: say so
        raise ConversionError(describe(str(path), "a NIR file nir.read accepts", f"one it refuses ({_first_line(exc)})",
                                       "please report this as an evsim bug")) from None


_try_register()


def _read_for_loader(path, *, limit=None, reset=None, v0=None):
    """The importer registry's entry: ``evsim.load(path, reset=..., v0=...)``."""
    return read_nir(path, reset=reset, v0=v0)


def _importer():
    from evsim.importers import Importer

    return Importer("nir", sniff, _read_for_loader,
                    'NIR graphs (.nir, from Sinabs, snnTorch, Norse, ...; pip install "evsim[nir]")',
                    frozenset({"reset", "v0"}))


#: registered with evsim.load through the entry-point group evsim.importers (pyproject.toml)
IMPORTER = _importer()
