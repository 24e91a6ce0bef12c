"""Per-node summary of a graph: output shapes, parameters, MACs, neurons (``evsim inspect``).

**Parameters**, here and everywhere evsim prints a count, are all stored array elements,
BatchNorm running statistics (``mean``, ``var``) included; ``trainable`` is the same
count without the running statistics (what PyTorch's ``numel`` over ``parameters()``
gives for the same network).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .graph import ACTIVATION_OPS, Graph, node_macs

__all__ = ["NodeSummary", "summarize", "summary_json", "PARAMETERS_DEFINITION", "RUNNING_STATISTICS"]

#: arrays that are running statistics, not trained parameters, per op
RUNNING_STATISTICS = {"batchnorm": ("mean", "var")}
#: the one definition of a parameter count, as printed by ``evsim inspect``
PARAMETERS_DEFINITION = "all stored array elements, incl. BatchNorm running statistics"


@dataclass(frozen=True)
class NodeSummary:
    """One row of the summary: a node's name, op, output shape, parameters and MACs."""

    name: str
    op: str
    shape: tuple[int, ...]
    params: int
    macs: int
    trainable: int = 0


def summarize(graph: Graph) -> dict:
    """Rows and totals of a validated graph.

    Returns
    -------
    dict
        ``{"nodes": [NodeSummary, ...], "totals": {"params", "trainable", "macs", "neurons"}}``:
        ``params`` counts every stored array element (BatchNorm running statistics
        included), ``trainable`` the same without them, ``macs`` the multiply-accumulates of
        conv2d and linear nodes for one sample, ``neurons`` the outputs of
        activation (``relu``, ``qcfs``, ``neuron``) nodes.
    """
    rows = []
    for node in graph.nodes:
        in_shapes = [graph.shape_of(name) for name in node.inputs]
        params = sum(int(a.size) for a in node.arrays.values())
        statistics = sum(int(a.size) for k, a in node.arrays.items() if k in RUNNING_STATISTICS.get(node.op, ()))
        rows.append(NodeSummary(node.name, node.op, tuple(node.shape), params, node_macs(node, in_shapes),
                                params - statistics))
    neurons = sum(_size(n.shape) for n in graph.nodes if n.op in ACTIVATION_OPS)
    totals = {"params": sum(r.params for r in rows), "trainable": sum(r.trainable for r in rows),
              "macs": sum(r.macs for r in rows), "neurons": neurons}
    return {"nodes": rows, "totals": totals}


def summary_json(graph: Graph) -> dict:
    """:func:`summarize` as plain JSON-ready data (shapes as lists)."""
    result = summarize(graph)
    nodes = [{**asdict(row), "shape": list(row.shape)} for row in result["nodes"]]
    return {"model": graph.source, "kind": graph.kind, "input": list(graph.input.shape), "output": graph.output,
            "nodes": nodes, "totals": result["totals"], "params_definition": PARAMETERS_DEFINITION}


def _size(shape) -> int:
    total = 1
    for d in shape:
        total *= int(d)
    return total
