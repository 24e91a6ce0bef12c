"""Energy: device models as data, exact counts against the dense reference, counts × energies."""
import json
import math
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import evsim.energy as E
from evsim.compile import compile_network
from evsim.engine import Simulator
from evsim.errors import DataError
from evsim.graph import Graph, InputSpec, Node, validate
from netgen import random_inputs, random_network
from reference import reference_counts, simulate_reference

SLOW = settings(deadline=None, max_examples=15)


def engine_layers(net, x, T):
    """The engine's per-population counters, population -> counter -> (T,) int64 over the batch."""
    out = Simulator(net, np.float64).run_batch(x, T)
    if hasattr(out, "layers"):
        return out.layers
    _, stats, _ = out
    return {name: {"spikes": s[:, 0], "events": s[:, 1], "sops": s[:, 2]} for name, s in stats.items()}


def run_counts(graph, x, T):
    net = compile_network(graph)
    return net, E.count_table(engine_layers(net, x, T), net, T, len(x))


@pytest.fixture
def registry():
    """Restore the registry after a test that registers models."""
    saved = dict(E._REGISTRY)
    yield
    E._REGISTRY.clear()
    E._REGISTRY.update(saved)


# --------------------------------------------------------------------------- counts
@SLOW
@given(seed=st.integers(0, 2**31 - 1), model=st.sampled_from(["if", "gn", "signed_if"]), maxpool=st.booleans())
def test_counts_equal_dense_reference(seed, model, maxpool):
    graph = random_network(seed, activation=model, maxpool=maxpool)
    x = random_inputs(graph, 3, seed)
    T = 4
    net, counts = run_counts(graph, x, T)
    ref_layers, analog, ann = reference_counts(graph, simulate_reference(graph, x, T), T)
    assert set(ref_layers) | ({E.INPUT_ROW} if analog else set()) == set(counts.layers)
    for name, ref in ref_layers.items():
        row = counts.layers[name]
        np.testing.assert_array_equal(row["spikes"], ref["spikes"], err_msg=name)
        np.testing.assert_array_equal(row["events"], ref["events"], err_msg=name)
        np.testing.assert_array_equal(row["synops"], ref["sops"], err_msg=name)
        np.testing.assert_array_equal(row["neuron_updates"], ref["neuron_updates"], err_msg=name)
        # memory traffic derived from the same counts
        np.testing.assert_array_equal(row["weight_reads"], ref["sops"])
        np.testing.assert_array_equal(row["event_writes"], ref["events"])
        np.testing.assert_array_equal(row["event_reads"], ref["events"])
        neurons = counts.neurons[name]
        state = 2 if model == "signed_if" else 1
        np.testing.assert_array_equal(row["state_reads"], np.full(T, state * neurons * len(x)))
        np.testing.assert_array_equal(row["state_writes"], row["state_reads"])
    if analog:
        np.testing.assert_array_equal(counts.layers[E.INPUT_ROW]["analog_macs"], np.full(T, analog * len(x)))
    assert counts.ann["macs"] == ann
    assert counts.ann["neuron_updates"] == sum(counts.neurons.values())


def single_layer(model="if", tau=1, f=5, theta=1.0):
    eye = np.eye(f)
    attrs = {"model": model}
    if model == "gn":
        attrs["tau"] = tau
    nodes = [Node("fc", "linear", ("input",), {}, {"weight": eye}),
             Node("act", "neuron", ("fc",), attrs, {"threshold": np.asarray(theta), "v0": np.asarray(0.0)}),
             Node("out", "linear", ("act",), {}, {"weight": eye})]
    return validate(Graph(InputSpec((f,)), nodes, "out", kind="snn"))


@pytest.mark.parametrize("model,tau", [("if", 1), ("gn", 4), ("gn", 6)])
def test_neuron_updates_every_neuron_every_step(model, tau):
    """Neuron updates = members × neurons × T per sample, whatever fires (silent input included)."""
    f, T, b = 5, 7, 3
    x = np.zeros((b, f))
    x[0] = np.linspace(0, 2, f)
    _, counts = run_counts(single_layer(model, tau, f), x, T)
    assert counts.total("neuron_updates") == tau * f * T * b
    assert counts.per_sample("neuron_updates") == tau * f * T
    assert counts.total("state_reads") == f * T * b  # GN members share one potential


# --------------------------------------------------------------------------- estimate
def test_breakdown_is_counts_times_energies():
    graph = random_network(11, activation="gn", maxpool=True)
    x = random_inputs(graph, 4, 3)
    T = 5
    _, counts = run_counts(graph, x, T)
    n = counts.samples
    total = counts.total
    for model in E.available_energy_models():
        est = E.estimate(counts, model)
        read = ((total("weight_reads") + total("input_reads") + total("state_reads")) * model.value_bytes
                + total("event_reads") * model.event_bytes)
        written = total("state_writes") * model.value_bytes + total("event_writes") * model.event_bytes
        expected_counts = {"synops": total("synops") / n, "macs": total("analog_macs") / n,
                           "spikes": total("spikes") / n, "events": total("events") / n,
                           "neuron_updates": total("neuron_updates") / n, "memory_read": read / n,
                           "memory_write": written / n}
        assert est["counts"] == expected_counts
        unit = {"synops": model.synop_pj, "macs": model.mac_pj, "spikes": model.spike_pj, "events": model.event_pj,
                "neuron_updates": model.neuron_update_pj,
                "memory_read": None if model.mem_read_pj is None else model.mem_read_pj / model.mem_word_bytes,
                "memory_write": None if model.mem_write_pj is None else model.mem_write_pj / model.mem_word_bytes}
        for term, count in expected_counts.items():
            if unit[term] is None:
                assert term not in est["breakdown"]
                assert (term in est["unpriced"]) == (count != 0)
            else:
                assert est["breakdown"][term] == count * unit[term], (model.name, term)
        assert est["snn"] == math.fsum(est["breakdown"].values())
        a = counts.ann
        ann_counts = {"macs": a["macs"], "neuron_updates": a["neuron_updates"],
                      "memory_read": (a["weight_reads"] + a["activation_reads"]) * model.value_bytes,
                      "memory_write": a["activation_writes"] * model.value_bytes}
        assert est["ann_counts"] == ann_counts
        for term, count in ann_counts.items():
            if unit[term] is not None:
                assert est["ann_breakdown"][term] == count * unit[term]
        if model.mac_pj is None:
            assert est["ann"] is None and est["ratio"] is None
        else:
            assert est["ann"] == math.fsum(est["ann_breakdown"].values())
            assert est["ratio"] == est["snn"] / est["ann"]


def test_default_model_is_methods_formula():
    """45nm-fp32: E_SNN = SOPs·E_AC + first-layer MACs·T·E_MAC, E_ANN = MACs·E_MAC (methods.md 5)."""
    graph = random_network(5, activation="if")
    x = random_inputs(graph, 3, 5)
    T = 6
    net, counts = run_counts(graph, x, T)
    est = E.estimate(counts, E.DEFAULT_ENERGY_MODEL)
    sops = counts.total("synops") / 3
    assert est["breakdown"] == {"synops": sops * 0.9, "macs": net.input_macs * T * 4.6}
    assert est["ann"] == net.ann_macs * 4.6
    assert set(est["unpriced"]) == {"spikes", "events", "neuron_updates", "memory_read", "memory_write"}


def test_layers_and_steps_partition_the_estimate():
    graph = random_network(3, activation="signed_if")
    x = random_inputs(graph, 2, 1)
    T = 6
    _, counts = run_counts(graph, x, T)
    model = E.get_energy_model("45nm-fp32-sram8k")
    whole = E.estimate(counts, model)["snn"]
    per_layer = [E.estimate(counts, model, layers=[name])["snn"] for name in counts.layers]
    assert math.fsum(per_layer) == pytest.approx(whole, rel=1e-12)
    assert E.estimate(counts, model, steps=T)["snn"] == whole
    assert E.estimate(counts, model, steps=0)["snn"] == 0
    first = E.estimate(counts, model, steps=2)
    assert first["counts"]["synops"] == sum(int(r["synops"][:2].sum()) for r in counts.layers.values()
                                            if "synops" in r) / 2
    with pytest.raises(DataError, match="steps"):
        E.estimate(counts, model, steps=T + 1)
    with pytest.raises(DataError, match="rows"):
        E.estimate(counts, model, layers=["nope"])


def test_keras_spiking_formula_by_hand():
    """keras-spiking: E = E_synop·connections·rate·dt·T + E_neuron·neurons·T per layer (spiking device),
    E = E·(connections + neurons) (non-spiking device). Hand-computed on a dense 2-3-2 network."""
    nodes = [Node("fc1", "linear", ("input",), {}, {"weight": np.eye(2)}),
             Node("act1", "neuron", ("fc1",), {"model": "if"}, {"threshold": np.asarray(1.0), "v0": np.asarray(0.0)}),
             Node("fc2", "linear", ("act1",), {}, {"weight": np.full((3, 2), 0.25)}),
             Node("act2", "neuron", ("fc2",), {"model": "if"}, {"threshold": np.asarray(1.0), "v0": np.asarray(0.0)}),
             Node("fc3", "linear", ("act2",), {}, {"weight": np.ones((2, 3))})]
    graph = validate(Graph(InputSpec((2,)), nodes, "fc3", kind="snn"))
    T, dt = 4, 0.001
    # act1: currents 0.5 and 1.0 -> 2 and 4 spikes; act2: 0.25·(s_a + s_b) = .25, .5, .25, .5 -> one spike each
    _, counts = run_counts(graph, np.array([[0.5, 1.0]]), T)
    assert counts.total("spikes", ["act1"]) == 6 and counts.total("spikes", ["act2"]) == 3
    rate1 = 6 / (2 * T) / dt  # Hz: mean input rate of fc2 (keras-spiking's layer_rates)
    rate2 = 3 / (3 * T) / dt  # of fc3
    connections = {"fc1": 2 * 2, "fc2": 2 * 3, "fc3": 3 * 2}
    neurons = 2 + 3
    e_synop, e_neuron = (23.6 + 3.5) * 1e-12, 81e-12  # keras-spiking's "loihi", in J
    joules = (e_synop * connections["fc2"] * rate1 * dt * T + e_synop * connections["fc3"] * rate2 * dt * T
              + e_neuron * neurons * T)
    est = E.estimate(counts, "keras-spiking-loihi")
    assert est["snn"] == pytest.approx(joules * 1e12, rel=1e-12)
    assert est["snn"] == pytest.approx(27.1 * (18 + 6) + 81 * 20, rel=1e-12)
    # fc1 takes the analog input: MACs, which a spiking device does not price (keras-spiking would
    # treat the raw input values as firing rates); it is reported, not charged
    assert "macs" in est["unpriced"] and est["ann"] is None
    # non-spiking device: the ANN, every connection and neuron once per inference
    cpu = E.estimate(counts, "keras-spiking-cpu")
    assert cpu["ann"] == pytest.approx(8.6e-9 * (sum(connections.values()) + neurons) * 1e12, rel=1e-12)


# --------------------------------------------------------------------------- registry
def test_presets():
    names = [m.name for m in E.available_energy_models()]
    assert names[:3] == ["45nm-fp32", "45nm-int32", "45nm-int8"]
    for name, mac, ac in (("45nm-fp32", 4.6, 0.9), ("45nm-int32", 3.2, 0.1), ("45nm-int8", 0.23, 0.03)):
        m = E.get_energy_model(name)
        assert (m.e_mac_pj, m.e_ac_pj) == (mac, ac) and m.source.startswith("Horowitz, ISSCC 2014: 45 nm CMOS")
    loihi = E.get_energy_model("loihi")
    assert (loihi.synop_pj, loihi.spike_pj, loihi.neuron_update_pj, loihi.mac_pj) == (23.6, 1.7, 52.0, None)
    assert "Davies" in loihi.source and "Table 2" in loihi.source
    assert E.get_energy_model("45nm-fp32-sram8k").mem_read_pj == 10.0
    for name in ("cpu", "gpu", "arm", "loihi", "spinnaker", "spinnaker2"):
        assert "keras-spiking" in E.get_energy_model(f"keras-spiking-{name}").source
    assert all(m.source.strip() for m in E.available_energy_models())
    with pytest.raises(DataError, match="one of"):
        E.get_energy_model("nope")


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), -float("inf"), True, "1.0"])
def test_register_refuses_bad_energies(registry, bad):
    with pytest.raises(DataError, match="synop_pj"):
        E.register_energy_model("chip", synop_pj=bad, source="a paper")
    assert "chip" not in E._REGISTRY


@pytest.mark.parametrize("source", ["", "   ", None])
def test_register_refuses_missing_source(registry, source):
    with pytest.raises(DataError, match="source"):
        E.register_energy_model("chip", synop_pj=1.0, source=source)
    with pytest.raises(TypeError):
        E.register_energy_model("chip", synop_pj=1.0)  # source is a required keyword


def test_register_rules(registry):
    m = E.register_energy_model("chip", synop_pj=2, neuron_update_pj=0, source="Doe 2030, Table 1")
    assert E.get_energy_model("chip") is m and m.synop_pj == 2.0 and isinstance(m.synop_pj, float)
    with pytest.raises(DataError, match="replace=True"):
        E.register_energy_model("chip", synop_pj=3.0, source="Doe 2030")
    assert E.register_energy_model("chip", synop_pj=3.0, source="Doe 2031", replace=True).synop_pj == 3.0
    with pytest.raises(DataError, match="at least one"):
        E.register_energy_model("empty", source="nothing")
    with pytest.raises(DataError, match="fields among"):
        E.register_energy_model("typo", synops_pj=1.0, source="x")
    for name in ("all", "two words", ""):
        with pytest.raises(DataError, match="name"):
            E.register_energy_model(name, synop_pj=1.0, source="x")
    with pytest.raises(DataError, match="mem_word_bytes"):
        E.register_energy_model("w", mem_read_pj=1.0, mem_word_bytes=0, source="x")


def test_load_energy_model_json_and_toml(tmp_path):
    fields = {"name": "file-chip", "source": "Doe et al. 2030, Table 3", "synop_pj": 2.5,
              "neuron_update_pj": 10.0, "mem_read_pj": 16.0, "mem_word_bytes": 8}
    (tmp_path / "m.json").write_text(json.dumps(fields))
    (tmp_path / "m.toml").write_text('name = "file-chip"\nsource = "Doe et al. 2030, Table 3"\nsynop_pj = 2.5\n'
                                     'neuron_update_pj = 10.0\nmem_read_pj = 16.0\nmem_word_bytes = 8\n')
    a, b = E.load_energy_model(tmp_path / "m.json"), E.load_energy_model(tmp_path / "m.toml")
    assert a == b == E.EnergyModel(**fields)
    assert "file-chip" not in E._REGISTRY  # loading does not register


@pytest.mark.parametrize("name,text,match", [
    ("m.json", '{"name": "x", "source": "s", "synop_pj": -1}', "synop_pj"),
    ("m.json", '{"name": "x", "synop_pj": 1}', "'source'"),
    ("m.json", '{"name": "x", "source": "s", "sop_pj": 1}', "sop_pj"),
    ("m.json", '[1, 2]', "one object"),
    ("m.json", '{"name": ', "invalid JSON"),
    ("m.toml", 'name = ', "invalid TOML"),
    ("m.yaml", 'name: x', ".json or .toml"),
])
def test_load_energy_model_errors(tmp_path, name, text, match):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=match):
        E.load_energy_model(tmp_path / name)
    with pytest.raises(DataError, match="unreadable"):
        E.load_energy_model(tmp_path / "missing.json")


def test_toml_without_tomllib_says_use_json(tmp_path, monkeypatch):
    """Python 3.10 has no tomllib (and tomli is not a dependency): a clear message, JSON still works."""
    monkeypatch.setitem(sys.modules, "tomllib", None)
    (tmp_path / "m.toml").write_text('name = "x"\nsource = "s"\nsynop_pj = 1.0\n')
    with pytest.raises(DataError, match="Python 3.11"):
        E.load_energy_model(tmp_path / "m.toml")


def test_neuron_cost_registry(registry):
    class Pop:
        model, size, name = "my_model", 10, "p"
    E.register_neuron_cost("my_model", members=3, state_values=2)
    assert E._cost(Pop()) == (3, 2)
    with pytest.raises(DataError, match="members"):
        E.register_neuron_cost("bad", members=0)
    E._NEURON_COSTS.pop("my_model")


def test_energy_report_and_text():
    graph = random_network(2, activation="gn")
    x = random_inputs(graph, 2, 2)
    T = 3
    _, counts = run_counts(graph, x, T)
    report = E.energy_report(counts, ["loihi", "all", "loihi"])
    names = list(report["by_model"])
    assert names[0] == "loihi" and len(names) == len(E.available_energy_models()) == len(set(names))
    assert report["model"] == "loihi" and report["snn"] == report["by_model"]["loihi"]["snn"]
    assert report["ann"] is None
    assert report["snn_per_step"][-1] == report["snn"]
    assert report["snn_per_step"] == sorted(report["snn_per_step"])
    for name, est in report["by_model"].items():
        assert set(est["layers"]) == set(counts.layers)
        for term, value in est["breakdown"].items():  # per-layer terms add up to the whole
            parts = [layer.get(term, 0.0) for layer in est["layers"].values()]
            assert math.fsum(parts) == pytest.approx(value, rel=1e-12)
    json.dumps(report)  # serialisable as it is
    text = "\n".join(E.summary_lines(report))
    assert "loihi: E_SNN" in text and "not priced by this model: MACs" in text
    assert E.resolve_models(None) == [E.get_energy_model("45nm-fp32")]
    with pytest.raises(DataError, match="one of"):
        E.resolve_models(["nope"])


# --------------------------------------------------------------------------- end to end
def test_run_energy_all_report_and_plot(tmp_path):
    """`evsim run MODEL --data F -T 8 --energy all --energy-model FILE --report r.json`: every model
    gets an SNN-vs-ANN energy whose breakdown is exact counts times its per-op energies."""
    from importlib.resources import files

    from click.testing import CliRunner

    from evsim.cli.main import main
    from evsim.data_io import load_data

    data = files("evsim.data")
    x, y = load_data(data / "mnist_test.npz", (1, 28, 28), 10, samples=6)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    (tmp_path / "chip.json").write_text(json.dumps({"name": "my-chip", "source": "Doe 2030, Table 1",
                                                    "synop_pj": 2.0, "neuron_update_pj": 5.0, "mac_pj": 3.0}))
    T, tau = 8, 4
    result = CliRunner().invoke(main, ["run", str(data / "mnist_qcfs.npz"), "--data", str(tmp_path / "d.npz"),
                                       "-T", str(T), "--neuron", "gn", "--tau", str(tau), "--energy", "all",
                                       "--energy-model", str(tmp_path / "chip.json"), "--report",
                                       str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "loihi: E_SNN" in result.output and "my-chip: E_SNN" in result.output
    report = json.loads((tmp_path / "r.json").read_text())
    energy, counts = report["totals"]["energy_pj"], report["totals"]["counts"]
    assert list(energy["by_model"]) == [m.name for m in E.available_energy_models()] + ["my-chip"]
    assert energy["model"] == "45nm-fp32" and energy["snn"] == energy["by_model"]["45nm-fp32"]["snn"]
    neurons = sum(layer["neurons"] for layer in report["layers"])
    per_sample = {c: sum(row[c]["total"] for row in counts["layers"].values() if c in row)
                  for c in ("synops", "analog_macs", "spikes", "neuron_updates")}
    assert per_sample["neuron_updates"] == tau * neurons * T  # GN: τ members, every neuron, every step
    for model in E.available_energy_models() + [E.load_energy_model(tmp_path / "chip.json")]:
        est = energy["by_model"][model.name]
        for term, count in (("synops", "synops"), ("macs", "analog_macs"), ("spikes", "spikes"),
                            ("neuron_updates", "neuron_updates")):
            energy_per_op = E.unit_energies(model)[term]
            if energy_per_op is not None:
                assert est["breakdown"][term] == pytest.approx(per_sample[count] * energy_per_op, rel=1e-12)
        assert est["snn"] == pytest.approx(sum(est["breakdown"].values()), rel=1e-12)
        assert (est["ann"] is None) == (model.mac_pj is None)
    chip = energy["by_model"]["my-chip"]
    assert chip["ann"] == pytest.approx(report["totals"]["ann_macs"] * 3.0 + neurons * 5.0, rel=1e-12)
    pytest.importorskip("matplotlib")
    result = CliRunner().invoke(main, ["plot", str(tmp_path / "r.json"), "-o", str(tmp_path / "f.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "f.png").stat().st_size > 0


def test_run_refuses_unknown_energy_model(tmp_path):
    from importlib.resources import files

    from click.testing import CliRunner

    from evsim.cli.main import main

    data = files("evsim.data")
    result = CliRunner().invoke(main, ["run", str(data / "mnist_qcfs.npz"), "--data", str(data / "mnist_test.npz"),
                                       "--samples", "2", "-T", "1", "--energy", "nope"])
    assert result.exit_code != 0 and "nope" in result.output and "45nm-fp32" in result.output


def test_counts_from_batch_and_reduced_results():
    """The same table from one batch result, from the reduced Results, and from Results.energy_counts."""
    import evsim

    graph = random_network(9, activation="gn")
    x = random_inputs(graph, 5, 9)
    net = compile_network(graph)
    batch = Simulator(net, np.float64).run_batch(x, 4)
    results = evsim.simulate(net, x, T=4, batch_size=2, precision="float64")
    tables = [E.counts_from(batch, net), E.counts_from(results, net), results.energy_counts]
    for table in tables[1:]:
        assert table.layers.keys() == tables[0].layers.keys() and table.ann == tables[0].ann
        for name, row in table.layers.items():
            for counter, values in row.items():
                np.testing.assert_array_equal(values, tables[0].layers[name][counter])
