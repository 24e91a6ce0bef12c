"""ANN graph -> SNN graph (kind "snn"): BatchNorm folding, activations -> neuron nodes.

The result is itself a valid model graph (``docs/format.md``, kind "snn") that can be
saved and simulated; :mod:`evsim.compile` turns it into sparse projections.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace
from typing import Mapping

import numpy as np

from .errors import ConversionError, describe
from .graph import Graph, Node, validate

__all__ = ["ConversionOptions", "NEURON_MODELS", "convert", "fold_batchnorm", "initial_potential"]

#: neuron models, named as in SNN files
NEURON_MODELS = ("if", "signed_if", "gn")


@dataclass(frozen=True)
class ConversionOptions:
    """How activations become neurons.

    Attributes
    ----------
    neuron : {"if", "signed_if", "gn"}
        IF with soft reset (methods.md 2.1), signed IF (2.3), Group Neurons (2.2).
    tau : int
        Members per Group Neuron (``neuron="gn"`` only).
    v0 : {"half", "zero"}
        Initial membrane potential: half a payload unit (OPI: θ/2, GN: θ/(2τ)) or 0.
    reset : {"subtract", "zero"}
        Reset of the IF neuron after a spike (``zero`` for comparison only).
    """

    neuron: str = "if"
    tau: int = 4
    v0: str = "half"
    reset: str = "subtract"

    def __post_init__(self):
        where = "conversion options"
        if self.neuron not in NEURON_MODELS:
            raise ConversionError(describe(where, "neuron among " + ", ".join(NEURON_MODELS), repr(self.neuron)))
        if not (isinstance(self.tau, int) and self.tau >= 1):
            raise ConversionError(describe(where, "tau an integer >= 1", repr(self.tau)))
        if self.v0 not in ("half", "zero"):
            raise ConversionError(describe(where, "v0 'half' or 'zero'", repr(self.v0)))
        if self.reset not in ("subtract", "zero"):
            raise ConversionError(describe(where, "reset 'subtract' or 'zero'", repr(self.reset)))
        if self.reset == "zero" and self.neuron != "if":
            raise ConversionError(describe(where, "reset 'zero' only with neuron 'if'", f"neuron {self.neuron!r}"))


def initial_potential(threshold: np.ndarray, options: ConversionOptions) -> np.ndarray:
    """v0 of :class:`ConversionOptions`: half a payload unit (θ/2, or θ/(2τ) for GN) or zero."""
    threshold = np.asarray(threshold)
    if options.v0 == "zero":
        return np.zeros_like(threshold)
    unit = threshold / options.tau if options.neuron == "gn" else threshold
    return np.asarray(unit / 2, dtype=threshold.dtype)


def fold_batchnorm(graph: Graph) -> Graph:
    """Fold every BatchNorm that directly follows a conv2d/linear used only by it.

    ``w' = w·γ/σ``, ``b' = (b − μ)·γ/σ + β`` with ``σ = sqrt(var + eps)``.  Other
    BatchNorms stay as per-channel affine nodes (the compiler carries them).
    Returns a new graph; the input is not modified.
    """
    # copy the nodes, not the metadata: it is never changed here, and a deep copy of deeply
    # nested metadata would recurse past Python's stack limit
    graph = copy.copy(graph)
    graph.nodes = [replace(n, attrs=copy.deepcopy(n.attrs), arrays=dict(n.arrays), array_names=dict(n.array_names))
                   for n in graph.nodes]
    users = graph.consumers()
    renamed: dict[str, str] = {}
    nodes: list[Node] = []
    by_name = {n.name: n for n in graph.nodes}
    for node in graph.nodes:
        node.inputs = tuple(renamed.get(s, s) for s in node.inputs)
        prev = by_name.get(node.inputs[0]) if node.op == "batchnorm" else None
        if prev is not None and prev.op in ("conv2d", "linear") and len(users[prev.name]) == 1 \
                and graph.output != prev.name:
            p = node.arrays
            scale = p["gamma"] / np.sqrt(p["var"].astype(np.float64) + node.attrs["eps"])
            bias = prev.arrays.get("bias", np.zeros(len(scale)))
            dtype = np.result_type(prev.arrays["weight"], *p.values())
            w = prev.arrays["weight"]
            with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
                sigma = np.sqrt(p["var"].astype(dtype) + dtype.type(node.attrs["eps"]))  # as the ANN computes it
                prev.arrays["weight"] = (w * scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(dtype)
                prev.arrays["bias"] = ((bias - p["mean"]) * scale + p["beta"]).astype(dtype)
            _check_folded(graph.source, node, prev, sigma, dtype)
            prev.array_names.setdefault("bias", f"{prev.name}.bias")
            renamed[node.name] = prev.name
            continue
        nodes.append(node)
    graph.nodes = nodes
    graph.output = renamed.get(graph.output, graph.output)
    return validate(graph)


def _check_folded(source: str, bn: Node, prev: Node, sigma: np.ndarray, dtype) -> None:
    """Refuse a BatchNorm whose folding is not finite in the model's dtype, naming the user's arrays."""
    where = f"{source}, node '{bn.name}'"
    zero = np.flatnonzero(~(sigma > 0))
    if zero.size:
        raise ConversionError(describe(
            where, f"var + eps > 0 in {np.dtype(dtype).name} for every channel",
            f"0 for {zero.size} channel(s) (first: {zero[0]}; array '{bn.array_name('var')}' "
            f"{float(bn.arrays['var'].flat[zero[0]]):g}, eps {bn.attrs['eps']:g})",
            "use a larger eps (PyTorch's default is 1e-5) or store float64 arrays"))
    for role in ("weight", "bias"):
        bad = np.flatnonzero(~np.isfinite(prev.arrays[role]))
        if bad.size:
            raise ConversionError(describe(
                where, f"folding into '{prev.name}' to give finite {np.dtype(dtype).name} {role}s",
                f"{bad.size} overflow(s) in {role} (from '{prev.array_name('weight')}' times "
                f"gamma/sqrt(var + eps) of this node)", "rescale the weights or store float64 arrays"))


def convert(graph: Graph, options: ConversionOptions | None = None,
            thresholds: Mapping[str, np.ndarray] | None = None,
            potentials: Mapping[str, np.ndarray] | None = None, **kwargs) -> Graph:
    """Turn an ANN graph into an SNN graph (kind "snn").

    Parameters
    ----------
    graph : Graph
        A validated ANN graph (kind "ann").
    options : ConversionOptions, optional
        Neuron model, tau, v0 and reset; keyword arguments build one if omitted.
    thresholds : mapping of str to ndarray, optional
        Thresholds by activation name (scalar or per channel), e.g. from
        calibration; required for ``relu`` nodes, override λ for ``qcfs`` nodes.
    potentials : mapping of str to ndarray, optional
        Initial potentials by activation name (scalar, per channel or per neuron),
        overriding ``options.v0``.

    Returns
    -------
    Graph
        Kind "snn": BatchNorm folded, each relu/qcfs replaced by a ``neuron`` node of
        the same name with θ = λ (or the given threshold).

    Raises
    ------
    ConversionError
        A ``relu`` without a threshold, or an SNN graph given.
    """
    options = options or ConversionOptions(**kwargs)
    if graph.kind != "ann":
        raise ConversionError(describe(graph.source, "an ANN model (kind 'ann')", f"kind {graph.kind!r}",
                                       "an SNN file is already converted; run it directly"))
    thresholds, potentials = dict(thresholds or {}), dict(potentials or {})
    snn = fold_batchnorm(graph)
    for i, node in enumerate(snn.nodes):
        if node.op not in ("relu", "qcfs"):
            continue
        if node.name in thresholds:
            theta = np.asarray(thresholds.pop(node.name), dtype=np.float64)
        elif node.op == "qcfs":
            theta = node.arrays["threshold"]
        else:
            raise ConversionError(describe(
                f"{graph.source}, node '{node.name}'", "a threshold for every relu (QCFS λ or calibration)",
                "a plain relu", "calibrate it: evsim convert MODEL --calib-data FILE (or pass thresholds=)"))
        v0 = potentials.pop(node.name, None)
        v0 = initial_potential(theta, options) if v0 is None else np.asarray(v0, dtype=np.float64)
        attrs = {"model": options.neuron, "reset": options.reset}
        if options.neuron == "gn":
            attrs["tau"] = options.tau
        snn.nodes[i] = Node(node.name, "neuron", node.inputs, attrs, {"threshold": theta, "v0": v0})
    unknown = sorted(set(thresholds) | set(potentials))
    if unknown:
        raise ConversionError(describe(graph.source, "thresholds/potentials only for relu or qcfs nodes",
                                       ", ".join(map(repr, unknown))))
    snn.kind = "snn"
    snn.metadata = {**graph.metadata, "conversion": {**asdict(options), "source_kind": "ann"}}
    return validate(snn)
