"""Per-node summary of a graph: output shapes, parameters, MACs, neurons (``evsim inspect``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .graph import ACTIVATION_OPS, Graph, node_macs

__all__ = ["NodeSummary", "summarize", "summary_json"]


@dataclass(frozen=True)
class NodeSummary:
    """One row of the summary: a node's name, op, output shape, parameters and MACs."""

    name: str
    op: str
    shape: tuple[int, ...]
    params: int
    macs: int


def summarize(graph: Graph) -> dict:
    """Rows and totals of a validated graph.

    Returns
    -------
    dict
        ``{"nodes": [NodeSummary, ...], "totals": {"params", "macs", "neurons"}}``:
        ``params`` counts every array element, ``macs`` the multiply-accumulates of
        conv2d and linear nodes for one sample, ``neurons`` the outputs of
        activation (``relu``, ``qcfs``, ``neuron``) nodes.
    """
    rows = []
    for node in graph.nodes:
        in_shapes = [graph.shape_of(name) for name in node.inputs]
        params = sum(int(a.size) for a in node.arrays.values())
        rows.append(NodeSummary(node.name, node.op, tuple(node.shape), params, node_macs(node, in_shapes)))
    neurons = sum(_size(n.shape) for n in graph.nodes if n.op in ACTIVATION_OPS)
    totals = {"params": sum(r.params for r in rows), "macs": sum(r.macs for r in rows), "neurons": neurons}
    return {"nodes": rows, "totals": totals}


def summary_json(graph: Graph) -> dict:
    """:func:`summarize` as plain JSON-ready data (shapes as lists)."""
    result = summarize(graph)
    nodes = [{**asdict(row), "shape": list(row.shape)} for row in result["nodes"]]
    return {"model": graph.source, "kind": graph.kind, "input": list(graph.input.shape), "output": graph.output,
            "nodes": nodes, "totals": result["totals"]}


def _size(shape) -> int:
    total = 1
    for d in shape:
        total *= int(d)
    return total
