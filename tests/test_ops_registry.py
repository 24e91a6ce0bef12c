"""The op registry: every op in one entry; ops the SNN cannot compose on the analog input fall back
to the NumPy executor; files written before the registry still load."""
from __future__ import annotations

import numpy as np
import pytest

import evsim
import reference as ref
from evsim.graph import Graph, InputSpec, Node, validate
from evsim.ops import OPS


def test_every_op_has_one_complete_entry():
    for name, spec in OPS.items():
        assert spec.name == name and spec.infer is not None
        if "ann" in spec.kinds and name != "neuron":
            assert spec.forward is not None, name  # the ANN executor can evaluate it
    composable = {n for n, s in OPS.items() if s.compose is not None}
    assert {"conv2d", "linear", "batchnorm", "avgpool2d", "sumpool2d", "global_avgpool", "flatten", "add",
            "pad2d", "scale"} <= composable
    assert OPS["maxpool2d"].gate and OPS["maxpool2d"].compose is None


@pytest.mark.parametrize("pool_on", ["input", "spikes"])
def test_maxpool_on_the_analog_input_is_evaluated_exactly(pool_on):
    """Max pooling of the analog input is constant over time: the executor evaluates it (no KeyError)."""
    rng = np.random.default_rng(0)
    theta = np.asarray(0.7)
    nodes = [Node("mp", "maxpool2d", ("input",), {"kernel": [2, 2]}),
             Node("conv", "conv2d", ("mp",), {"padding": [1, 1]}, {"weight": rng.normal(size=(3, 2, 3, 3))}),
             Node("a1", "neuron", ("conv",), {"model": "if"}, {"threshold": theta, "v0": np.asarray(theta / 2)}),
             Node("flat", "flatten", ("a1",)),
             Node("fc", "linear", ("flat",), {}, {"weight": rng.normal(size=(4, 3 * 4 * 4))})]
    if pool_on == "spikes":
        nodes[0] = Node("mp", "avgpool2d", ("input",), {"kernel": [2, 2]})
    graph = validate(Graph(InputSpec((2, 8, 8)), nodes, "fc", kind="snn"))
    x = rng.random((3, 2, 8, 8))
    r = evsim.simulate(graph, x, T=5, precision="float64")
    want = ref.simulate_reference(graph, x, 5)
    np.testing.assert_array_equal(r.predictions, want["predictions"])
    np.testing.assert_array_equal(r.counts["a1"]["spikes"], np.abs(want["counts"]["a1"]).reshape(5, -1).sum(axis=1))


def test_files_before_the_registry_load():
    """SNN files of earlier versions wrote reset 'subtract' for every model: still accepted for
    models without a reset option (it is what they do), and not kept."""
    theta = np.asarray(1.0)
    for model, extra in [("gn", {"tau": 4}), ("signed_if", {})]:
        node = Node("a", "neuron", ("input",), {"model": model, "reset": "subtract", **extra},
                    {"threshold": theta, "v0": np.asarray(theta / 8)})
        graph = validate(Graph(InputSpec((3,)), [node, Node("fc", "linear", ("a",), {}, {"weight": np.ones((2, 3))})],
                               "fc", kind="snn"))
        assert "reset" not in graph.node("a").attrs
        with pytest.raises(evsim.errors.ManifestError, match="no reset"):
            bad = Node("a", "neuron", ("input",), {"model": model, "reset": "zero", **extra},
                       {"threshold": theta, "v0": np.asarray(theta / 8)})
            validate(Graph(InputSpec((3,)), [bad, Node("fc", "linear", ("a",), {}, {"weight": np.ones((2, 3))})],
                           "fc", kind="snn"))
