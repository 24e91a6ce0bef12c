"""The engine against the dense reference simulator, and the facts of methods.md."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import evsim
from evsim.compile import compile_network
from evsim.engine import Simulator
from evsim.errors import ConversionError, DataError
from evsim.graph import Graph, InputSpec, Node, validate
from netgen import random_inputs, random_network
from reference import reference_fanout, simulate_reference

SLOW = settings(deadline=None, max_examples=20)


def engine_run(graph, x, T, dtype=np.float64):
    net = compile_network(graph)
    pops = tuple(p.name for p in net.populations)
    r = Simulator(net, dtype).run_batch(x, T, record=pops)
    return net, r.predictions, r.stats, r.logits, r.recorded


def reference_sops(graph, ref, population, T):
    """SOPs per step caused by a population: |counts| x dense structural fan-out, gates included."""
    names = [population] + [n.name for n in graph.nodes
                            if n.op == "maxpool2d" and n.name in ref["counts"] and n.inputs[0] == population]
    sops = np.zeros(T, np.int64)
    for name in names:
        counts = np.abs(ref["counts"][name]).reshape(T, ref["counts"][name].shape[1], -1)
        sops += (counts * reference_fanout(graph, name)).sum(axis=(1, 2))
    return sops


@SLOW
@given(seed=st.integers(0, 2**31 - 1), model=st.sampled_from(["if", "gn", "signed_if"]),
       maxpool=st.booleans())
def test_engine_equals_dense_reference(seed, model, maxpool):
    graph = random_network(seed, activation=model, maxpool=maxpool)
    x = random_inputs(graph, 3, seed)
    T = 5
    ref = simulate_reference(graph, x, T)
    net, pred, stats, logits, counts = engine_run(graph, x, T)
    np.testing.assert_array_equal(pred, ref["predictions"])
    np.testing.assert_allclose(logits, ref["output"], rtol=1e-9, atol=1e-9)
    for pop in net.populations:
        rc = ref["counts"][pop.name]
        np.testing.assert_array_equal(counts[pop.name], rc.sum(axis=0), err_msg=pop.name)
        np.testing.assert_array_equal(stats[pop.name][:, 0], np.abs(rc).reshape(T, -1).sum(axis=1))
        np.testing.assert_array_equal(stats[pop.name][:, 1], (rc != 0).reshape(T, -1).sum(axis=1))
        np.testing.assert_array_equal(stats[pop.name][:, 2], reference_sops(graph, ref, pop.name, T))


@SLOW
@given(seed=st.integers(0, 2**31 - 1), model=st.sampled_from(["if", "gn", "signed_if"]))
def test_causality_prefix(seed, model):
    """The first steps of a long run equal a short run (nothing looks ahead)."""
    graph = random_network(seed, activation=model)
    x = random_inputs(graph, 2, seed)
    long = evsim.simulate(graph, x, T=8, precision="float64")
    short = evsim.simulate(graph, x, T=4, precision="float64")
    np.testing.assert_array_equal(long.predictions[:, :4], short.predictions)
    for a, b in zip(long.layers, short.layers):
        assert a.spikes_per_step[:4] == b.spikes_per_step
        assert a.sops_per_step[:4] == b.sops_per_step


def test_determinism_and_batching():
    """Same results whatever the batch size, and run to run."""
    graph = random_network(7, activation="gn")
    x = random_inputs(graph, 7, 1)
    runs = [evsim.simulate(graph, x, T=6, batch_size=b) for b in (1, 3, 7, 7)]
    for r in runs[1:]:
        np.testing.assert_array_equal(r.predictions, runs[0].predictions)
        assert [l.spikes for l in r.layers] == [l.spikes for l in runs[0].layers]
        assert r.sops == runs[0].sops


def single_layer(theta, v0, model="if", tau=1, z=None, levels=None):
    """input (F,) -> linear identity -> neuron -> linear identity (output)."""
    f = len(z)
    eye = np.eye(f)
    attrs = {"model": model}
    if model == "gn":
        attrs["tau"] = tau
    nodes = [Node("fc", "linear", ("input",), {}, {"weight": eye}),
             Node("act", "neuron", ("fc",), attrs, {"threshold": np.asarray(theta, float), "v0": np.asarray(v0, float)}),
             Node("out", "linear", ("act",), {}, {"weight": eye})]
    return validate(Graph(InputSpec((f,)), nodes, "out", kind="snn"))


def qcfs(z, lam, levels):
    return lam * np.clip(np.floor(z * levels / lam + 0.5) / levels, 0, 1)


def avoid_ties(z, lam, levels):
    """Nudge inputs away from the QCFS rounding boundaries (methods.md allows ties to differ)."""
    frac = (z * levels / lam + 0.5) % 1
    return np.where(np.minimum(frac, 1 - frac) < 1e-6, z + 1e-3 * lam / levels, z)


@pytest.mark.parametrize("T", [1, 2, 4, 8])
def test_if_reproduces_qcfs_exactly(T):
    """methods.md 2.1: constant input z, v0 = θ/2, T = L -> θ·Σs/T == QCFS(z; λ=θ, L=T)."""
    theta = 1.7
    z = avoid_ties(np.linspace(-0.5, 2.2, 301), theta, T)
    graph = single_layer(theta, theta / 2, z=z)
    net, pred, stats, logits, counts = engine_run(graph, z[None], T)
    np.testing.assert_allclose(theta * counts["act"][0] / T, qcfs(z, theta, T), atol=1e-12)


@pytest.mark.parametrize("tau,T", [(2, 1), (4, 2), (4, 4), (8, 2)])
def test_gn_reproduces_qcfs_with_tau_T_levels(tau, T):
    """methods.md 2.2: GN with τ over T steps == QCFS with L = τ·T."""
    theta = 1.3
    z = avoid_ties(np.linspace(-0.4, 1.9, 301), theta, tau * T)
    graph = single_layer(theta, theta / (2 * tau), "gn", tau, z=z)
    net, pred, stats, logits, counts = engine_run(graph, z[None], T)
    np.testing.assert_allclose(theta / tau * counts["act"][0] / T, qcfs(z, theta, tau * T), atol=1e-12)


@given(seed=st.integers(0, 2**31 - 1))
@settings(deadline=None, max_examples=20)
def test_gn_tau_one_equals_if(seed):
    graph_gn = random_network(seed, activation="gn")
    for node in graph_gn.nodes:
        if node.op == "neuron":
            node.attrs["tau"] = 1
            node.arrays["v0"] = np.asarray(node.arrays["threshold"] / 2)
    graph_if = random_network(seed, activation="gn")
    for node in graph_if.nodes:
        if node.op == "neuron":
            node.attrs = {"model": "if", "reset": "subtract"}
            node.arrays["v0"] = np.asarray(node.arrays["threshold"] / 2)
    x = random_inputs(graph_gn, 3, seed)
    a = engine_run(validate(graph_gn), x, 6)
    b = engine_run(validate(graph_if), x, 6)
    np.testing.assert_array_equal(a[1], b[1])
    for name in a[4]:
        np.testing.assert_array_equal(a[4][name], b[4][name])


def test_conversion_needs_threshold_for_relu():
    graph = random_network(3, kind="ann", activation="relu")
    with pytest.raises(ConversionError, match="calib"):
        evsim.simulate(graph, random_inputs(graph, 2, 0), T=2)


def test_ann_conversion_equals_snn_with_folded_bn():
    """Converting an ANN (BN folded) simulates like the reference on the unfolded SNN graph."""
    ann = random_network(11, kind="ann", activation="qcfs", batchnorm=True)
    snn = evsim.convert(ann)
    assert not any(n.op == "batchnorm" for n in snn.nodes if n.inputs[0].startswith("conv"))
    x = random_inputs(ann, 3, 0)
    ref = simulate_reference(snn, x, 4)
    np.testing.assert_array_equal(evsim.simulate(ann, x, T=4, precision="float64").predictions, ref["predictions"])


def test_float32_close_to_float64():
    graph = random_network(5, activation="if")
    x = random_inputs(graph, 16, 0)
    a = evsim.simulate(graph, x, T=8, precision="float32")
    b = evsim.simulate(graph, x, T=8, precision="float64")
    assert (a.predictions == b.predictions).mean() > 0.9


@pytest.mark.parametrize("x,y,match", [
    (np.zeros((2, 9)), None, "shape"),
    (np.full((2, 1, 6, 6), np.nan), None, "finite"),
    (np.zeros((2, 1, 6, 6)), np.array([0, 99]), "labels in"),
    (np.zeros((2, 1, 6, 6)), np.array([0, -1]), "labels in"),
    (np.zeros((2, 1, 6, 6)), np.array([0.5, 1]), "integer"),
    (np.zeros((2, 1, 6, 6)), np.array([0, 1, 2]), "shape"),
    (np.array([["a"] * 36] * 2), None, "numeric"),
])
def test_bad_data_is_refused(x, y, match):
    spec = InputSpec((1, 6, 6))
    nodes = [Node("conv", "conv2d", ("input",), {}, {"weight": np.ones((2, 1, 3, 3))}),
             Node("act", "neuron", ("conv",), {"model": "if"}, {"threshold": np.array(1.0), "v0": np.array(0.5)}),
             Node("fc", "linear", ("act",), {}, {"weight": np.ones((3, 32))})]
    graph = validate(Graph(spec, nodes, "fc", kind="snn"))
    with pytest.raises(DataError, match=match):
        evsim.simulate(graph, x, y, T=2)


def test_results_report_is_complete(tmp_path):
    graph = random_network(2, activation="if")
    x = random_inputs(graph, 4, 0)
    y = np.zeros(4, int)
    r = evsim.simulate(graph, x, y, T=4)
    r.save(tmp_path / "r.json")
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert len(report["accuracy"]) == 4
    assert {"name", "neurons", "spikes", "events", "firing_rate", "sops"} <= set(report["layers"][0])
    assert {"sops", "macs", "spikes"} <= set(report["totals"])
    assert set(report["totals"]["energy_pj"]) >= {"snn", "ann"}
    assert report["settings"]["T"] == 4
    e = report["energy_model"]
    assert report["totals"]["energy_pj"]["snn"] == pytest.approx(
        report["totals"]["sops"] * e["e_ac_pj"] + report["totals"]["macs"] * e["e_mac_pj"])
    assert report["totals"]["energy_pj"]["ann"] == pytest.approx(report["totals"]["ann_macs"] * e["e_mac_pj"])
