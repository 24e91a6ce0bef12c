"""NIR exchange (issue 13): import against a float64 reference of NIR's rules, exact round trips,
refusals, and event-frame inputs against the dense reference for every neuron model."""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

nir = pytest.importorskip("nir")  # the [nir] extra; CI installs it with [test]

import evsim  # noqa: E402
from evsim.compile import compile_network  # noqa: E402
from evsim.converters import nir_io  # noqa: E402
from evsim.engine import Simulator  # noqa: E402
from evsim.errors import ContainerError, ConversionError, GraphError, MissingDependencyError  # noqa: E402
from evsim.graph import InputSpec  # noqa: E402
from netgen import random_network  # noqa: E402
from reference import nir_reference, simulate_reference_frames  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "nir"
DATA = Path(__file__).parent.parent / "data"
SLOW = settings(deadline=None, max_examples=12)


# ------------------------------------------------------------------------------------ helpers
def run(graph, x, T, dtype=np.float64):
    """Per-step, per-neuron spike counts of every population: (T, B, *shape), and predictions."""
    net = compile_network(graph)
    pops = [p.name for p in net.populations]
    sim = Simulator(net, dtype)
    per_step, previous = {p: [] for p in pops}, {p: 0 for p in pops}
    for t in range(1, T + 1):  # the engine is causal: a run of t steps is the first t steps of T
        res = sim.run_batch(x, t, record=tuple(pops))
        for p in pops:
            per_step[p].append(res.recorded[p] - previous[p])
            previous[p] = res.recorded[p]
    return {p: np.stack(v) for p, v in per_step.items()}, res


def dyadic(rng, shape, scale=8, low=-6, high=7):
    """Random multiples of 1/scale: every sum the tests make is exact in float32 and float64."""
    return rng.integers(low, high, size=shape).astype(np.float32) / scale


def frames(rng, n, t_data, shape, high=3):
    return rng.integers(0, high, size=(n, t_data) + tuple(shape)).astype(np.float32)


def tool_like_graph(rng, same_padding=True, per_neuron=True):
    """Conv2d → IF → Conv2d → IF → SumPool2d → Conv2d → IF → AvgPool2d → Flatten → Affine → IF → Affine → IF,
    built with nir's own API the way Sinabs/Norse export it (input_shape on Conv2d, full-shape
    IF parameters, Flatten start_dim 0)."""
    def thr(shape):
        return (rng.integers(2, 9, size=shape) / 4).astype(np.float32) if per_neuron else \
            np.full(shape, 1.0, np.float32)

    def if_node(shape, r_values=(0.5, 1.0, 1.5)):
        r = rng.choice(np.array(r_values, np.float32), size=shape) if per_neuron else np.ones(shape, np.float32)
        return nir.IF(r=r, v_threshold=thr(shape), v_reset=(rng.integers(-2, 2, size=shape) / 4).astype(np.float32))

    nodes = {
        "input": nir.Input(input_type=np.array([2, 10, 10])),
        "conv1": nir.Conv2d(input_shape=(10, 10), weight=dyadic(rng, (4, 2, 3, 3)), stride=1, padding=1,
                            dilation=1, groups=1, bias=dyadic(rng, 4, 16)),
        "if1": if_node((4, 10, 10)),
        "conv2": nir.Conv2d(input_shape=(10, 10), weight=dyadic(rng, (6, 2, 3, 3)), stride=(1, 1), padding=(1, 1),
                            dilation=1, groups=2, bias=np.zeros(6, np.float32)),
        "if2": if_node((6, 10, 10)),
        "pool1": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
        "conv3": nir.Conv2d(input_shape=(5, 5), weight=dyadic(rng, (4, 6, 2, 2)),
                            stride=1, padding="same" if same_padding else 0, dilation=1, groups=1,
                            bias=dyadic(rng, 4, 16)),
    }
    s3 = (4, 5, 5) if same_padding else (4, 4, 4)
    nodes["if3"] = if_node(s3)
    nodes["pool2"] = nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([1, 1]), padding=np.array([0, 0]))
    pooled = (4, s3[1] - 1, s3[2] - 1)
    features = int(np.prod(pooled))
    nodes["flat"] = nir.Flatten(input_type={"input": np.array(pooled)}, start_dim=0, end_dim=-1)
    nodes["fc1"] = nir.Affine(weight=dyadic(rng, (12, features)), bias=dyadic(rng, 12, 16))
    nodes["if4"] = if_node((12,))
    nodes["fc2"] = nir.Linear(weight=dyadic(rng, (5, 12)))
    nodes["if5"] = if_node((5,), r_values=(1.0,))
    nodes["output"] = nir.Output(output_type=np.array([5]))
    order = list(nodes)
    # nir's type checks take a grouped Conv2d's C_in as weight.shape[1]: build (and read) without them
    return nir.NIRGraph(nodes=nodes, edges=list(zip(order[:-1], order[1:])), type_check=False)


def assert_equal_reference(graph_nir, graph, x, T, reset="subtract", v0_half=False, dtype=np.float64):
    ref = nir_reference(graph_nir, x, reset=reset, v0_half=v0_half, T=T)
    counts, res = run(graph, x, T, dtype)
    for name, rc in ref["counts"].items():
        np.testing.assert_array_equal(counts[name], rc, err_msg=f"IF '{name}'")
    np.testing.assert_array_equal(res.predictions, ref["predictions"])
    return ref, counts


# ------------------------------------------------------------------------------------ import
@pytest.mark.parametrize("same_padding", [True, False])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_tool_like_graph_equals_reference(tmp_path, same_padding, reset):
    rng = np.random.default_rng(3 + same_padding)
    g = tool_like_graph(rng, same_padding)
    nir.write(tmp_path / "g.nir", g)
    graph = nir_io.read_nir(tmp_path / "g.nir", reset=reset)
    assert sum(n.op == "neuron" for n in graph.nodes) == 5
    assert ("pad2d" in {n.op for n in graph.nodes}) == same_padding  # 'same' for a 2x2 kernel is asymmetric
    x = frames(rng, 4, 7, (2, 10, 10))
    ref, counts = assert_equal_reference(nir.read(tmp_path / "g.nir", type_check=False), graph, x, T=9, reset=reset)
    assert all(c.sum() > 0 for c in counts.values()), "every population should spike for a meaningful test"
    # float32 gives the same spikes: every value here is a short dyadic fraction
    assert_equal_reference(nir.read(tmp_path / "g.nir", type_check=False), graph, x, T=9, reset=reset, dtype=np.float32)


def test_v0_half_option(tmp_path):
    rng = np.random.default_rng(11)
    g = tool_like_graph(rng)
    nir.write(tmp_path / "g.nir", g)
    graph = nir_io.read_nir(tmp_path / "g.nir", v0="half")
    x = frames(rng, 3, 5, (2, 10, 10))
    assert_equal_reference(nir.read(tmp_path / "g.nir", type_check=False), graph, x, T=6, v0_half=True)


def test_sinabs_file_equals_reference():
    """A NIR file written by Sinabs (nir 0.2.0, never touched by evsim) on random event frames."""
    path = FIXTURES / "cnn_sinabs.nir"
    graph = nir_io.read_nir(path)
    assert graph.input.shape == (2, 34, 34)
    assert [n.name for n in graph.nodes if n.op == "neuron"] == ["1", "3", "6", "10", "12"]
    rng = np.random.default_rng(0)
    x = frames(rng, 3, 6, (2, 34, 34), high=2)
    # weights are float32: their float64 sums are exact whatever the order, so float64 decides alike
    ref, counts = assert_equal_reference(nir.read(path), graph, x, T=8)
    assert sum(c.sum() for c in counts.values()) > 0


def test_nested_graph_and_fan_in_sum(tmp_path):
    """A nested subgraph (edges 'sub' and 'sub.node') and two edges into one IF (a residual sum)."""
    rng = np.random.default_rng(5)
    shape = (3, 6, 6)
    conv = lambda c_in: nir.Conv2d(input_shape=(6, 6), weight=dyadic(rng, (3, c_in, 3, 3)), stride=1,  # noqa: E731
                                   padding=1, dilation=1, groups=1, bias=dyadic(rng, 3, 16))
    thr = lambda: (rng.integers(2, 9, size=shape) / 4).astype(np.float32)  # noqa: E731
    inner = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array(shape)), "conv": conv(3),
                                "lif": nir.IF(r=np.ones(shape, np.float32), v_threshold=thr()),
                                "output": nir.Output(output_type=np.array(shape))},
                         edges=[("input", "conv"), ("conv", "lif"), ("lif", "output")], type_check=False)
    conv0, conv2, if0, if2 = conv(2), conv(3), nir.IF(r=np.ones(shape, np.float32), v_threshold=thr()), \
        nir.IF(r=np.ones(shape, np.float32), v_threshold=thr())
    head = nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1)
    fc = nir.Linear(weight=dyadic(rng, (4, 108)))
    nested = nir.NIRGraph(
        nodes={"input": nir.Input(input_type=np.array([2, 6, 6])), "conv0": conv0, "if0": if0, "block": inner,
               "conv2": conv2, "if2": if2, "flat": head, "fc": fc, "output": nir.Output(output_type=np.array([4]))},
        edges=[("input", "conv0"), ("conv0", "if0"), ("if0", "block"), ("block.output", "conv2"),
               ("conv2", "if2"), ("if0", "if2"), ("if2", "flat"), ("flat", "fc"), ("fc", "output")],
        type_check=False)
    nir.write(tmp_path / "nested.nir", nested)
    graph = nir_io.read_nir(tmp_path / "nested.nir")
    names = [n.name for n in graph.nodes]
    assert "block.lif" in names and "if2.sum" in names and graph.output == "fc"
    flat_nodes = {k: v for k, v in nested.nodes.items() if k != "block"}
    flat_nodes.update({"block.conv": inner.nodes["conv"], "block.lif": inner.nodes["lif"]})
    flat = nir.NIRGraph(nodes=flat_nodes, type_check=False, edges=[
        ("input", "conv0"), ("conv0", "if0"), ("if0", "block.conv"), ("block.conv", "block.lif"),
        ("block.lif", "conv2"), ("conv2", "if2"), ("if0", "if2"), ("if2", "flat"), ("flat", "fc"), ("fc", "output")])
    x = frames(rng, 3, 6, (2, 6, 6))
    ref, counts = assert_equal_reference(flat, graph, x, T=7)
    np.testing.assert_array_equal(run(graph, x, 7)[1].logits, ref["output"])


def test_output_counts_spikes_ties_lowest_index(tmp_path):
    """IF → Output: the prediction is the most-spiking class so far, ties to the lowest index."""
    w = np.eye(3, dtype=np.float32)
    g = nir.NIRGraph.from_list(nir.Input(input_type=np.array([3])), nir.Linear(weight=w),
                               nir.IF(r=np.ones(3, np.float32), v_threshold=np.full(3, 0.5, np.float32)),
                               nir.Output(output_type=np.array([3])))
    nir.write(tmp_path / "g.nir", g)
    graph = nir_io.read_nir(tmp_path / "g.nir", reset="zero")  # v_reset = 0: easy to follow by hand
    assert graph.node(graph.output).op == "scale"
    x = np.zeros((1, 4, 3), np.float32)
    x[0, 0] = [0, 1, 1]  # classes 1 and 2 tie: class 1 wins
    x[0, 1] = [0, 0, 1]  # class 2 leads
    x[0, 2] = [1, 1, 0]  # 1: 2 spikes, 2: 2 spikes -> tie again -> 1
    res = run(graph, x, 4)[1]
    np.testing.assert_array_equal(res.predictions[0], [1, 2, 1, 1])
    np.testing.assert_array_equal(res.logits[0], [1, 2, 2])


# ------------------------------------------------------------------------------------ refusals
def _write(tmp_path, graph, name="g.nir"):
    nir.write(tmp_path / name, graph)
    return tmp_path / name


@pytest.mark.parametrize("kind", ["LIF", "CubaLIF", "Delay", "LI"])
def test_refuses_other_neurons_naming_node_and_type(tmp_path, kind):
    n = 4
    node = {"LIF": lambda: nir.LIF(tau=np.ones(n), r=np.ones(n), v_leak=np.zeros(n), v_threshold=np.ones(n)),
            "CubaLIF": lambda: nir.CubaLIF(tau_syn=np.ones(n), tau_mem=np.ones(n), r=np.ones(n), v_leak=np.zeros(n),
                                           v_threshold=np.ones(n)),
            "Delay": lambda: nir.Delay(delay=np.ones(n)),
            "LI": lambda: nir.LI(tau=np.ones(n), r=np.ones(n), v_leak=np.zeros(n))}[kind]()
    g = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([n])), "neurons": node,
                            "output": nir.Output(output_type=np.array([n]))},
                     edges=[("input", "neurons"), ("neurons", "output")])
    with pytest.raises(ConversionError, match=rf"node 'neurons'.*found {kind}"):
        nir_io.read_nir(_write(tmp_path, g))


def test_refuses_recurrent_cycle(tmp_path):
    n = 3
    g = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([n])),
                            "lif": nir.IF(r=np.ones(n), v_threshold=np.ones(n)),
                            "rec": nir.Linear(weight=np.eye(n)), "output": nir.Output(output_type=np.array([n]))},
                     edges=[("input", "lif"), ("lif", "rec"), ("rec", "lif"), ("lif", "output")], type_check=False)
    with pytest.raises(ConversionError, match="recurrent cycle"):
        nir_io.read_nir(_write(tmp_path, g))


def test_refuses_malformed_files(tmp_path):
    bad = tmp_path / "bad.nir"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 40)  # an HDF5 signature, then garbage
    with pytest.raises(ContainerError, match="bad.nir"):
        nir_io.read_nir(bad)
    model = tmp_path / "model.h5"
    evsim.save(evsim.load(DATA / "mnist_qcfs.npz"), model)  # an evsim file is HDF5, but not NIR
    assert not nir_io.sniff(model) and nir_io.sniff(FIXTURES / "cnn_sinabs.nir")
    with pytest.raises(ContainerError, match="model.h5"):
        nir_io.read_nir(model)
    with pytest.raises(ContainerError, match="nothing at that path"):
        nir_io.read_nir(tmp_path / "missing.nir")
    truncated = tmp_path / "truncated.nir"
    truncated.write_bytes((FIXTURES / "cnn_sinabs.nir").read_bytes()[:5000])
    with pytest.raises(ContainerError, match="truncated.nir"):
        nir_io.read_nir(truncated)


def test_refuses_shapes_nir_cannot_mean(tmp_path):
    # Flatten with start_dim 1 on (C, H, W): NIR has no batch dimension, so this keeps 2 dims
    g = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([2, 3, 3])),
                            "flat": nir.Flatten(input_type={"input": np.array([2, 3, 3])}, start_dim=1),
                            "output": nir.Output(output_type=np.array([2, 9]))},
                     edges=[("input", "flat"), ("flat", "output")])
    with pytest.raises(GraphError, match=r"node 'flat'.*start_dim=0"):
        nir_io.read_nir(_write(tmp_path, g))
    # 'same' padding with stride 2 has no PyTorch meaning
    g = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([1, 6, 6])),
                            "conv": nir.Conv2d(input_shape=(6, 6), weight=np.ones((1, 1, 3, 3)), stride=2,
                                               padding="same", dilation=1, groups=1, bias=np.zeros(1)),
                            "output": nir.Output(output_type=np.array([1, 6, 6]))},
                     edges=[("input", "conv"), ("conv", "output")])
    with pytest.raises(GraphError, match=r"'same' only with stride 1"):
        nir_io.read_nir(_write(tmp_path, g, "same.nir"))
    # a non-positive threshold
    g = nir.NIRGraph.from_list(nir.Input(input_type=np.array([2])), nir.Linear(weight=np.eye(2)),
                               nir.IF(r=np.ones(2), v_threshold=np.array([1.0, 0.0])))
    with pytest.raises(GraphError, match="v_threshold"):
        nir_io.read_nir(_write(tmp_path, g, "thr.nir"))


def test_missing_nir_package_is_a_clean_error(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "nir", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "evsim\[nir\]"'):
        nir_io.read_nir(FIXTURES / "cnn_sinabs.nir")


# ------------------------------------------------------------------------------------ export
def engine_weights(network):
    """Every projection's fields by (source, target), as the engine uses them (the node path aside)."""
    import dataclasses

    out = {}
    for p in network.projections + network.input_projections:
        fields = {f.name: getattr(p, f.name) for f in dataclasses.fields(p) if f.name != "path"}
        out.setdefault((p.source, p.target), []).append((type(p).__name__, fields))
    return out


def assert_same_network(a, b):
    wa, wb = engine_weights(a), engine_weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert len(wa[key]) == len(wb[key]), key
        for (ta, fa), (tb, fb) in zip(wa[key], wb[key]):
            assert ta == tb and fa.keys() == fb.keys(), key
            for name, u in fa.items():
                v = fb[name]
                if isinstance(u, np.ndarray):
                    assert u.dtype == v.dtype and np.array_equal(u, v), (key, name)  # bit for bit
                else:
                    assert u == v, (key, name)
    for name in a.static_current:
        np.testing.assert_array_equal(a.static_current[name], b.static_current[name])
    assert [(p.name, p.size) for p in a.populations] == [(p.name, p.size) for p in b.populations]
    for p in a.populations:
        np.testing.assert_array_equal(p.v0, b.population(p.name).v0)
        np.testing.assert_array_equal(a.fanout(p.name), b.fanout(p.name))


@pytest.mark.parametrize("options", [None, {"v0": "zero"}, {"reset": "zero"}])
def test_roundtrip_shipped_qcfs(tmp_path, options):
    ann = evsim.load(DATA / "mnist_qcfs.npz")
    snn = evsim.convert(ann, evsim.ConversionOptions(**(options or {})))
    nir_io.write_nir(snn, tmp_path / "q.nir")
    g = nir.read(tmp_path / "q.nir")  # nir's own reader, with its type checks
    assert isinstance(g, nir.NIRGraph) and sum(type(n).__name__ == "IF" for n in g.nodes.values()) == 4
    back = nir_io.read_nir(tmp_path / "q.nir")
    assert [n.name for n in back.nodes if n.op == "neuron"] == [n.name for n in snn.nodes if n.op == "neuron"]
    assert back.input == snn.input
    assert_same_network(compile_network(snn), compile_network(back))
    data = np.load(DATA / "mnist_test.npz")
    x, y = data["x"][:64], data["y"][:64]
    r1 = evsim.simulate(snn, x, y, T=8)
    r2 = evsim.simulate(back, x, y, T=8)
    np.testing.assert_array_equal(r1.predictions, r2.predictions)
    assert r1.accuracy == r2.accuracy
    for l1, l2 in zip(r1.layers, r2.layers):
        assert (l1.name, l1.spikes_per_step, l1.sops_per_step) == (l2.name, l2.spikes_per_step, l2.sops_per_step)


@SLOW
@given(seed=st.integers(0, 2**31 - 1), reset=st.sampled_from(["subtract", "zero"]))
def test_roundtrip_random_networks(tmp_path_factory, seed, reset):
    """Random SNNs (strided/grouped/dilated convs, pools of any size, unfolded BatchNorm, residual
    adds, global pooling): export, read back, bit-identical engine and identical spikes."""
    snn = random_network(seed, activation="if")
    for node in snn.nodes:
        if node.op == "neuron":
            node.attrs["reset"] = reset
    path = tmp_path_factory.mktemp("rt") / "r.nir"
    nir_io.write_nir(snn, path)
    back = nir_io.read_nir(path)
    assert_same_network(compile_network(snn), compile_network(back))
    x = np.random.default_rng(seed).random((3,) + tuple(snn.input.shape))
    c1, r1 = run(snn, x, 4)
    c2, r2 = run(back, x, 4)
    for name in c1:
        np.testing.assert_array_equal(c1[name], c2[name])
    np.testing.assert_array_equal(r1.predictions, r2.predictions)


@pytest.mark.parametrize("model", ["gn", "signed_if"])
def test_export_refuses_multi_spike_and_signed_neurons(tmp_path, model):
    snn = evsim.convert(evsim.load(DATA / "mnist_qcfs.npz"), evsim.ConversionOptions(neuron=model))
    with pytest.raises(ConversionError, match="NIR's IF emits"):
        nir_io.write_nir(snn, tmp_path / "x.nir")
    assert not (tmp_path / "x.nir").exists()


def test_reexport_of_imported_graph(tmp_path):
    """A NIR graph read by evsim and written again keeps its per-neuron parameters and rules."""
    rng = np.random.default_rng(8)
    nir.write(tmp_path / "a.nir", tool_like_graph(rng))
    first = nir_io.read_nir(tmp_path / "a.nir", reset="zero")
    nir_io.write_nir(first, tmp_path / "b.nir")
    second = nir_io.read_nir(tmp_path / "b.nir")
    assert_same_network(compile_network(first), compile_network(second))
    x = frames(rng, 2, 5, (2, 10, 10))
    c1, _ = run(first, x, 6)
    c2, _ = run(second, x, 6)
    for name in c1:
        np.testing.assert_array_equal(c1[name], c2[name])


# ------------------------------------------------------------------------------------ event frames
@SLOW
@given(seed=st.integers(0, 2**31 - 1), model=st.sampled_from(["if", "gn", "signed_if"]),
       extra=st.integers(-2, 3))
def test_event_frames_equal_reference(seed, model, extra):
    """Frame t drives step t (counts may exceed 1); steps past the data are silent."""
    graph = random_network(seed, activation=model)
    graph.input = InputSpec(tuple(graph.input.shape))  # frames are spike counts: no preprocessing
    rng = np.random.default_rng(seed)
    t_data = 4
    x = rng.integers(0, 4, size=(3, t_data) + tuple(graph.input.shape)).astype(np.uint8)
    T = t_data + extra
    ref = simulate_reference_frames(graph, x, T)
    counts, res = run(graph, x, T)
    for name, rc in ref["counts"].items():
        if name in counts:
            np.testing.assert_array_equal(counts[name], rc, err_msg=name)
    np.testing.assert_array_equal(res.predictions, ref["predictions"])
    np.testing.assert_allclose(res.logits, ref["output"], rtol=1e-9, atol=1e-9)


def test_simulate_event_frames_counts_input_sops(tmp_path):
    """simulate(): T defaults to T_data, the input is a spike source whose SOPs replace the first
    layer's MACs, and steps past the data are silent."""
    rng = np.random.default_rng(2)
    g = nir.NIRGraph.from_list(nir.Input(input_type=np.array([6])), nir.Linear(weight=dyadic(rng, (5, 6)) + 2),
                               nir.IF(r=np.ones(5, np.float32), v_threshold=np.full(5, 1.5, np.float32)),
                               nir.Affine(weight=dyadic(rng, (3, 5)), bias=np.zeros(3, np.float32)))
    graph = nir_io.graph_from_nir(g)
    x = rng.integers(0, 300, size=(4, 5, 6)).astype(np.int32)  # counts beyond int8
    y = np.array([0, 1, 2, 0])
    res = evsim.simulate(graph, x, y)
    assert res.T == 5 and res.first_layer_macs == 0 and res.macs == 0
    assert res.layers[0].name == "input"
    assert res.layers[0].sops * 4 == x.sum() * 5  # every input event reaches the 5 neurons (no zero weight)
    assert res.layers[0].spikes * 4 == x.sum()
    longer = evsim.simulate(graph, x, y, T=8)
    assert longer.layers[0].sops_per_step[5:] == [0, 0, 0]  # no input past the data
    ref = nir_reference(g, x, T=8)
    np.testing.assert_array_equal(longer.predictions, ref["predictions"])
    with pytest.raises(evsim.errors.DataError, match="integer counts"):
        evsim.simulate(graph, x + 0.5, y)
