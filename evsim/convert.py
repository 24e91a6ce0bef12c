"""ANN graph -> SNN graph (kind "snn"): BatchNorm folding, activations -> neuron nodes.

The result is itself a valid model graph (``docs/format.md``, kind "snn") that can be
saved and simulated; :mod:`evsim.compile` turns it into sparse projections.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Mapping

import numpy as np

from .errors import ConversionError, describe
from .graph import Graph, Node, relu_caps, validate
from .neurons import V0_RULES, NeuronModel, _short, get_model

__all__ = ["ConversionOptions", "convert", "fold_batchnorm", "initial_potential"]

@dataclass(frozen=True)
class ConversionOptions:
    """How activations become neurons.

    Attributes
    ----------
    neuron : str
        A registered neuron model (:mod:`evsim.neurons`): ``"if"`` (IF, soft reset,
        methods.md 2.1), ``"signed_if"`` (2.3), ``"gn"`` (Group Neurons, 2.2), or a plugin.
        The CLI spelling (``"signed-if"``) is accepted too.
    v0 : {"half", "zero"} or None
        Initial membrane potential: half a payload unit (OPI: θ/2, GN: θ/(2τ)) or 0;
        None = the model's default.
    reset : {"subtract", "zero"} or None
        Reset after a spike, for models that have one (IF); None = the model's default.
    tau : int or None
        Shorthand for ``neuron_params={"tau": tau}`` (Group Neurons' members).
    neuron_params : dict or None
        Values of the model's declared parameters; the others keep their defaults.
        ``params`` is the same (either may be given); after construction both hold the
        resolved values of every declared parameter.

    An option that does not apply to the chosen model (``reset`` for GN, ``tau`` for IF, a
    parameter the model does not declare) raises :class:`~evsim.errors.ConversionError`;
    nothing is silently ignored.  :meth:`applied` lists what was used.
    """

    neuron: str = "if"
    v0: str | None = None
    reset: str | None = None
    tau: int | None = None
    neuron_params: Mapping | None = None
    params: Mapping | None = None

    def __post_init__(self):
        where = "conversion options"
        model = get_model(self.neuron, f"{where}, neuron")
        object.__setattr__(self, "neuron", model.name)
        if self.v0 is not None and self.v0 not in V0_RULES:
            raise ConversionError(describe(f"{where}, v0", "'half' or 'zero'", _short(self.v0)))
        if self.reset is not None:
            if not model.resets:
                raise ConversionError(describe(f"{where}, reset", f"no reset option for neuron model '{model.name}'",
                                               _short(self.reset), "drop the reset option"))
            if self.reset not in model.resets:
                raise ConversionError(describe(f"{where}, reset", "one of " + ", ".join(map(repr, model.resets)),
                                               _short(self.reset)))
        if self.params is not None and self.neuron_params is not None and dict(self.params) != dict(
                self.neuron_params):
            raise ConversionError(describe(f"{where}, neuron_params", "the model parameters given once",
                                           f"params={_short(self.params)} and neuron_params={_short(self.neuron_params)}"))
        given = dict(self.neuron_params if self.neuron_params is not None else self.params or {})
        if self.tau is not None:
            if "tau" not in model.params:
                raise ConversionError(describe(f"{where}, tau", f"tau only for models that have it (gn), not "
                                               f"'{model.name}'", _short(self.tau), "drop tau or choose neuron 'gn'"))
            if "tau" in given and given["tau"] != self.tau:
                raise ConversionError(describe(f"{where}, tau", "tau given once", f"tau={self.tau!r} and "
                                               f"params tau={given['tau']!r}"))
            given["tau"] = self.tau
        resolved = dict(model.resolve(given, where))
        object.__setattr__(self, "params", resolved)
        object.__setattr__(self, "neuron_params", resolved)

    @property
    def model(self) -> NeuronModel:
        return get_model(self.neuron)

    @property
    def v0_rule(self) -> str:
        return self.v0 or self.model.v0

    @property
    def reset_rule(self) -> str | None:
        model = self.model
        return (self.reset or model.resets[0]) if model.resets else None

    def applied(self) -> dict:
        """The settings actually used: model, its parameters, v0 rule and reset (if it has one)."""
        out = {"neuron": self.neuron, "v0": self.v0_rule}
        if self.reset_rule is not None:
            out["reset"] = self.reset_rule
        out.update(self.params)
        return out

    def __hash__(self):
        return hash((self.neuron, self.v0, self.reset, tuple(sorted(self.params.items()))))

    def __eq__(self, other):
        if not isinstance(other, ConversionOptions):
            return NotImplemented
        return (self.neuron, self.v0, self.reset, self.params) == (other.neuron, other.v0, other.reset, other.params)


def initial_potential(threshold: np.ndarray, options: ConversionOptions) -> np.ndarray:
    """v0 of :class:`ConversionOptions`: half a payload unit (θ/2, or θ/(2τ) for GN) or zero."""
    threshold = np.asarray(threshold)
    v0 = options.model.initial_potential(threshold, options.params, options.v0_rule)
    return np.asarray(v0, dtype=threshold.dtype)


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
    if options is not None and kwargs:
        raise ConversionError(describe("convert", "either options= or keyword options, not both",
                                       ", ".join(sorted(kwargs)), "put every setting into ConversionOptions"))
    options = options or ConversionOptions(**kwargs)
    if graph.kind != "ann":
        raise ConversionError(describe(graph.source, "an ANN model (kind 'ann')", f"kind {graph.kind!r}",
                                       "an SNN file is already converted; run it directly"))
    thresholds, potentials = dict(thresholds or {}), dict(potentials or {})
    caps = relu_caps(graph)
    snn = fold_batchnorm(graph)
    for i, node in enumerate(snn.nodes):
        if node.op not in ("relu", "qcfs"):
            continue
        if node.name in thresholds:
            theta = np.asarray(thresholds.pop(node.name), dtype=np.float64)
        elif node.op == "qcfs":
            theta = node.arrays["threshold"]
        elif node.name in caps:  # a clipped ReLU min(max(z, 0), λ): an IF neuron of θ = λ saturates there too
            theta = caps[node.name]
        else:
            raise ConversionError(describe(
                f"{graph.source}, node '{node.name}'", "a threshold for every relu (QCFS λ, a clip λ or calibration)",
                "a plain relu", "calibrate it: evsim convert MODEL --calib-data FILE (or pass thresholds=)"))
        v0 = potentials.pop(node.name, None)
        v0 = initial_potential(theta, options) if v0 is None else np.asarray(v0, dtype=np.float64)
        attrs = {"model": options.neuron, **options.params}
        if options.reset_rule is not None:
            attrs["reset"] = options.reset_rule
        snn.nodes[i] = Node(node.name, "neuron", node.inputs, attrs, {"threshold": theta, "v0": v0})
    unknown = sorted(set(thresholds) | set(potentials))
    if unknown:
        raise ConversionError(describe(graph.source, "thresholds/potentials only for relu or qcfs nodes",
                                       ", ".join(map(repr, unknown))))
    snn.kind = "snn"
    snn.metadata = {**graph.metadata, "conversion": {**options.applied(), "source_kind": "ann"}}
    return validate(snn)
