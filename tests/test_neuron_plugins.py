"""The neuron-model registry and its plugin API (issue: architecture).

A plugin model is one jitted step function and one ``register_neuron`` call; evsim builds
the layer kernel around it.  Checked here: the documented LIF example against an
independent NumPy twin (tests/reference.py) spike for spike, a plugin with signed counts,
a plugin installed as a package (entry point), refusal of options that do not apply, and
that ``Results.reduce`` gives the same report for any split of the data into batches.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import evsim
import reference as ref
from evsim.errors import ConversionError, ManifestError, UnknownNeuronError
from netgen import random_inputs, random_network
from plugin_dist import write_plugin_distribution

SLOW = settings(deadline=None, max_examples=12, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- the plugins
# Exactly the example of docs/usage.md.
@numba.njit
def lif_step(v, current, theta, beta):      # scalars in; returns (new v, spike count)
    h = beta * v + current
    s = 1.0 if h >= theta else 0.0
    return h - s * theta, s


@numba.njit
def ternary_step(v, current, theta):
    """A signed plugin: +1 at or above θ, -1 at or below -θ."""
    h = v + current
    s = 1 if h >= theta else (-1 if h <= -theta else 0)
    return h - s * theta, s


if "lif" not in evsim.neurons.MODELS:
    evsim.register_neuron("lif", lif_step, params={"beta": 0.9}, v0="half")
if "ternary" not in evsim.neurons.MODELS:
    evsim.register_neuron("ternary", ternary_step, counts=(-1, 1), v0="zero",
                          doc="s = +1 if h >= θ, -1 if h <= -θ; v = h - s·θ")


def test_documented_example_runs():
    graph = random_network(3, kind="ann", activation="qcfs")
    x = random_inputs(graph, 6, 1)
    snn = evsim.convert(graph, neuron="lif", neuron_params={"beta": 0.95})
    assert {n.attrs["beta"] for n in snn.nodes if n.op == "neuron"} == {0.95}
    assert snn.metadata["conversion"] == {"neuron": "lif", "v0": "half", "beta": 0.95, "source_kind": "ann"}
    results = evsim.simulate(snn, x, np.zeros(6, np.int64), T=8, precision="float64")
    assert results.settings["neuron"] == ["lif"] and len(results.accuracy) == 8


# --------------------------------------------------------------------------- exactness
@SLOW
@given(seed=st.integers(0, 2**31 - 1), dtype=st.sampled_from([np.float32, np.float64]),
       beta=st.floats(0.3, 1.0))
def test_lif_kernel_equals_numpy_twin(seed, dtype, beta):
    """The factory's kernel around the plugin step == tests/reference.py's LIF, events and v(T)."""
    from evsim._kernels.factory import layer_kernel

    rng = np.random.default_rng(seed)
    b, t, c, pixels = int(rng.integers(1, 4)), int(rng.integers(1, 9)), int(rng.integers(1, 5)), \
        int(rng.integers(1, 300))
    n = c * pixels
    current = (rng.standard_normal((b, t, n)) * 1.5).astype(dtype)
    v0 = rng.uniform(-1, 1, n).astype(dtype)
    theta = rng.uniform(0.3, 2, c).astype(dtype)
    cut = int(rng.integers(0, pixels + 1)) * c
    bounds = np.array(sorted({0, cut, n}), np.int64)
    parts = len(bounds) - 1
    fanout = rng.integers(0, 40, n).astype(np.int64)
    ev_idx, ev_cnt = np.full((b, t, n), -1, np.int32), np.zeros((b, t, n), np.int8)
    nev, stats = np.full((b, t, parts), -1, np.int64), np.full((b, t, parts, 3), -1, np.int64)
    v = np.full((b, n), np.nan, dtype)
    kernel = layer_kernel("lif", evsim.neurons.get_model("lif").step, 1, False)
    kernel(current, v0, ref.per_neuron(theta, n), np.full((1, n), beta, dtype), 0, 1, False, bounds, fanout,
           ev_idx, ev_cnt, nev, stats, v)
    counts = ref.part_events_to_dense(ev_idx, ev_cnt, nev, bounds, n)
    want, want_v = ref.lif_run_ref(current, v0, theta, beta)
    np.testing.assert_array_equal(counts, want)
    np.testing.assert_array_equal(v, want_v)
    np.testing.assert_array_equal(stats, ref.neuron_stats_ref(want, fanout, bounds))


@SLOW
@given(seed=st.integers(0, 2**31 - 1), model=st.sampled_from(["lif", "ternary"]), new_ops=st.booleans())
def test_plugin_network_equals_dense_reference(seed, model, new_ops):
    """Whole networks of plugin neurons: spikes per population and step and predictions equal the
    dense float64 reference (which implements the two plugins independently)."""
    graph = random_network(seed, activation=model, new_ops=new_ops)
    x = random_inputs(graph, 3, seed)
    T = 5
    r = evsim.simulate(graph, x, T=T, precision="float64", batch_size=2)
    want = ref.simulate_reference(graph, x, T)
    np.testing.assert_array_equal(r.predictions, want["predictions"])
    for layer in r.layers:
        spikes = np.abs(want["counts"][layer.name]).reshape(T, -1).sum(axis=1)
        np.testing.assert_array_equal(r.counts[layer.name]["spikes"], spikes)
        events = (want["counts"][layer.name] != 0).reshape(T, -1).sum(axis=1)
        np.testing.assert_array_equal(r.counts[layer.name]["events"], events)


@SLOW
@given(seed=st.integers(0, 2**31 - 1), model=st.sampled_from(["if", "gn", "signed_if"]))
def test_new_ops_equal_dense_reference(seed, model):
    """pad2d (asymmetric), scale and sumpool2d compose into projections exactly."""
    graph = random_network(seed, activation=model, new_ops=True)
    x = random_inputs(graph, 2, seed)
    r = evsim.simulate(graph, x, T=4, precision="float64")
    want = ref.simulate_reference(graph, x, 4)
    np.testing.assert_array_equal(r.predictions, want["predictions"])
    for layer in r.layers:
        np.testing.assert_array_equal(r.counts[layer.name]["spikes"],
                                      np.abs(want["counts"][layer.name]).reshape(4, -1).sum(axis=1))


def test_signed_plugin_counts():
    graph = random_network(11, activation="ternary")
    x = random_inputs(graph, 4, 2) * 4 - 2
    r = evsim.simulate(graph, x, T=6, precision="float64")
    network = evsim.as_network(graph)
    sim = evsim.Simulator(network, np.float64)
    recorded = sim.run_batch(x, 6, record=tuple(p.name for p in network.populations)).recorded
    assert any((c < 0).any() for c in recorded.values()), "some neuron should emit -1"
    for layer in r.layers:  # spikes count |s|: at least the events
        assert r.counts[layer.name]["spikes"].sum() >= r.counts[layer.name]["events"].sum()


# --------------------------------------------------------------------------- files and refusals
def test_snn_file_records_model_and_params(tmp_path):
    graph = random_network(5, kind="ann", activation="qcfs")
    snn = evsim.convert(graph, neuron="lif", neuron_params={"beta": 0.8})
    evsim.save(snn, tmp_path / "lif.h5")
    loaded = evsim.load(tmp_path / "lif.h5")
    assert [n.attrs for n in loaded.nodes if n.op == "neuron"][0] == {"model": "lif", "beta": 0.8}


def test_unregistered_model_in_a_file_is_a_clear_error(tmp_path):
    graph = random_network(5, kind="ann", activation="qcfs")
    evsim.save(evsim.convert(graph, neuron="lif"), tmp_path / "lif.npz")
    code = f"import evsim; evsim.load({str(tmp_path / 'lif.npz')!r})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "UnknownNeuronError" in out.stderr and "'lif'" in out.stderr and "evsim.neurons" in out.stderr


@pytest.mark.parametrize("kwargs, match", [
    ({"neuron": "gn", "reset": "zero"}, "no reset option for neuron model 'gn'"),
    ({"neuron": "signed-if", "reset": "subtract"}, "no reset option"),
    ({"neuron": "lif", "reset": "zero"}, "no reset option for neuron model 'lif'"),
    ({"neuron": "if", "tau": 4}, "tau only for models that have it"),
    ({"neuron": "lif", "neuron_params": {"tau": 2}}, "parameters of neuron model 'lif'"),
    ({"neuron": "gn", "tau": 2000}, "<= 1024"),
    ({"neuron": "gn", "tau": 2**64}, "<= 1024"),
    ({"neuron": "lif", "neuron_params": {"beta": float("nan")}}, "finite"),
    ({"neuron": "if", "v0": "third"}, "'half' or 'zero'"),
])
def test_inapplicable_options_are_refused(kwargs, match):
    with pytest.raises(ConversionError, match=match):
        evsim.ConversionOptions(**kwargs)


def test_unknown_model_names_the_plugin_mechanism():
    with pytest.raises(UnknownNeuronError, match="evsim.neurons"):
        evsim.ConversionOptions("bursting")


def test_file_with_inapplicable_attribute_is_refused(tmp_path):
    graph = random_network(5, kind="ann", activation="qcfs")
    snn = evsim.convert(graph, neuron="gn", tau=3)
    node = next(n for n in snn.nodes if n.op == "neuron")
    node.attrs["reset"] = "zero"  # ("subtract" is what GN does: accepted from older files)
    with pytest.raises(ManifestError, match="reset"):
        evsim.validate(snn)


@pytest.mark.parametrize("args, match", [
    (("if", lif_step), "already registered"),
    (("bad name", lif_step), "ASCII"),
    (("lif2", lambda v, x, t: (v, 0)), "numba.njit"),
])
def test_register_neuron_validates(args, match):
    with pytest.raises(ConversionError, match=match):
        evsim.register_neuron(*args)


def test_register_neuron_validates_declarations():
    with pytest.raises(ConversionError, match="counts"):
        evsim.register_neuron("odd", lif_step, counts=(1, 2))
    with pytest.raises(ConversionError, match="payload"):
        evsim.register_neuron("odd", lif_step, payload="volts")
    with pytest.raises(ConversionError, match="at most 6"):
        evsim.register_neuron("odd", lif_step, params={f"p{i}": 1.0 for i in range(7)})
    assert "odd" not in evsim.neurons.MODELS


# --------------------------------------------------------------------------- entry points
def test_entry_point_plugin(tmp_path):
    """A plugin installed as a package (a distribution with an entry point in group evsim.neurons)
    is found by name in a fresh process, from the API and from a saved SNN file."""
    site = write_plugin_distribution(tmp_path / "site")
    graph = random_network(5, kind="ann", activation="qcfs")
    evsim.save(graph, tmp_path / "ann.npz")
    code = textwrap.dedent(f"""
        import numpy as np, evsim
        g = evsim.load({str(tmp_path / 'ann.npz')!r})
        assert "gainif" in [m.name for m in evsim.neurons.available_models()]
        snn = evsim.convert(g, neuron="gainif", neuron_params={{"gain": 1.5}})
        evsim.save(snn, {str(tmp_path / 'snn.h5')!r})
        r = evsim.simulate(snn, np.random.default_rng(0).random((3,) + g.input.shape), T=3)
        print(r.settings["neuron"])
    """)
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    import os
    env = {**os.environ, **env}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert "['gainif']" in out.stdout
    load = f"import evsim; g = evsim.load({str(tmp_path / 'snn.h5')!r}); print(g.node(g.nodes[1].name).attrs)"
    out = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr


# --------------------------------------------------------------------------- Results.reduce
def _report(results):
    d = results.to_dict()
    d.pop("timing")
    return d


@settings(deadline=None, max_examples=15)
@given(data=st.data())
def test_reduce_is_independent_of_split_and_order(data):
    graph = random_network(data.draw(st.integers(0, 50)), activation=data.draw(st.sampled_from(["if", "gn"])))
    n = data.draw(st.integers(1, 9))
    x = random_inputs(graph, n, 0)
    y = np.arange(n) % int(np.prod(graph.node(graph.output).shape))
    network = evsim.as_network(graph)
    plan = evsim.engine.plan_run(network, n, T=4, batch_size=64, precision="float64")
    whole = evsim.Results.reduce([evsim.Simulator(network, np.float64).run_batch(x, 4, y)], plan)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, n - 1)), max_size=4)))) if n > 1 else []
    bounds = [0] + [c for c in cuts if c < n] + [n]
    sim = evsim.Simulator(network, np.float64)
    parts = [sim.run_batch(x[a:b], 4, y[a:b], start=a) for a, b in zip(bounds, bounds[1:])]
    parts = data.draw(st.permutations(parts))
    merged = evsim.Results.reduce(parts, plan)
    assert _report(merged) == _report(whole)
    np.testing.assert_array_equal(merged.predictions, whole.predictions)


def test_reduce_refuses_gaps_and_overlaps():
    graph = random_network(1)
    network = evsim.as_network(graph)
    x = random_inputs(graph, 4, 0)
    sim = evsim.Simulator(network, np.float64)
    plan = evsim.engine.plan_run(network, 4, T=2)
    a, b = sim.run_batch(x[:2], 2), sim.run_batch(x[3:], 2, start=3)
    with pytest.raises(ConversionError, match="contiguous"):
        evsim.Results.reduce([a, b], plan)
    with pytest.raises(ConversionError, match="covering"):
        evsim.Results.reduce([a], plan)


def test_network_pickles_and_runs_in_another_process():
    import pickle

    graph = random_network(2, activation="gn")
    network = evsim.as_network(graph)
    x = random_inputs(graph, 3, 0)
    again = pickle.loads(pickle.dumps(network))
    a = evsim.Simulator(network, np.float64).run_batch(x, 3)
    b = evsim.Simulator(again, np.float64).run_batch(x, 3)
    np.testing.assert_array_equal(a.predictions, b.predictions)
    assert a.stats.keys() == b.stats.keys()
