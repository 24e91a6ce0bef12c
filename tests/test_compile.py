"""Compilation into projections: pooling factorisation, diagonal shortcuts, the analog input."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import evsim
from evsim.compile import ConvOp, compile_network, conv_matrix, factor_pooling
from evsim.graph import Graph, InputSpec, Node, validate
from reference import simulate_reference


def _neuron(name, src, theta=0.7):
    return Node(name, "neuron", (src,), {"model": "if"}, {"threshold": np.array(theta), "v0": np.array(theta / 2)})


def _sum_pool(x, q_h, q_w, crop):
    """(C, H, W) -> sum over aligned q_h x q_w blocks of the region [:crop_h, :crop_w], partial blocks kept."""
    x = x[:, :crop[0], :crop[1]]
    gh, gw = -(-crop[0] // q_h), -(-crop[1] // q_w)
    padded = np.zeros((x.shape[0], gh * q_h, gw * q_w))
    padded[:, :crop[0], :crop[1]] = x
    return padded.reshape(x.shape[0], gh, q_h, gw, q_w).sum(axis=(2, 4))


@settings(deadline=None, max_examples=40)
@given(q=st.integers(2, 3), k=st.integers(1, 3), s=st.integers(1, 2), p=st.integers(0, 1),
       size=st.integers(4, 11), channels=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_factor_pooling_is_exact(q, k, s, p, size, channels, seed):
    """A kernel constant over aligned q x q blocks == sum pooling then the q-times smaller conv."""
    rng = np.random.default_rng(seed)
    small = rng.standard_normal((2, channels, k, k))
    crop = (size - rng.integers(0, 2), size - rng.integers(0, 2))
    grid = (-(-crop[0] // q), -(-crop[1] // q))
    out = ((grid[0] + 2 * p - k) // s + 1, (grid[1] + 2 * p - k) // s + 1)
    assume(min(out) >= 1)  # a geometry without output positions: nothing to compare
    composed = ConvOp(np.repeat(np.repeat(small, q, axis=2), q, axis=3), 1, (s * q, s * q), (p * q, p * q),
                      (1, 1), (channels, size, size), crop, (2,) + out)
    pool, reduced = factor_pooling(composed)
    assert pool == (q, q) and reduced.weight.shape[2:] == (k, k)
    x = rng.standard_normal((channels, size, size))
    direct = x.reshape(-1) @ conv_matrix(composed).toarray()
    factored = _sum_pool(x, q, q, crop).reshape(-1) @ conv_matrix(reduced).toarray()
    np.testing.assert_allclose(factored, direct, rtol=1e-12, atol=1e-12)


def test_factor_pooling_leaves_other_kernels_alone():
    rng = np.random.default_rng(0)
    op = ConvOp(rng.standard_normal((2, 1, 4, 4)), 1, (2, 2), (0, 0), (1, 1), (1, 8, 8), (8, 8), (2, 3, 3))
    assert factor_pooling(op) == ((1, 1), op)


def _pool_residual_graph(size=9):
    """conv -> IF -> avgpool 2x2 -> conv 3x3 -> IF -> (+ identity) -> IF -> linear, odd size (crop)."""
    rng = np.random.default_rng(1)
    nodes = [
        Node("conv1", "conv2d", ("input",), {"padding": [1, 1]}, {"weight": rng.normal(0, 0.8, (3, 1, 3, 3))}),
        _neuron("a1", "conv1"),
        Node("pool", "avgpool2d", ("a1",), {"kernel": [2, 2], "stride": [2, 2]}),
        Node("conv2", "conv2d", ("pool",), {"padding": [1, 1]}, {"weight": rng.normal(0, 0.8, (3, 3, 3, 3))}),
        _neuron("a2", "conv2"),
        Node("conv3", "conv2d", ("a2",), {"padding": [1, 1]}, {"weight": rng.normal(0, 0.5, (3, 3, 3, 3))}),
        Node("add", "add", ("conv3", "a2")),
        _neuron("a3", "add"),
        Node("flat", "flatten", ("a3",)),
        Node("fc", "linear", ("flat",), {}, {"weight": rng.normal(0, 0.5, (4, 48))}),
    ]
    return validate(Graph(InputSpec((1, size, size)), nodes, "fc", kind="snn"))


def test_pooled_and_diagonal_projections_simulate_exactly():
    graph = _pool_residual_graph()
    net = compile_network(graph)
    kinds = {(p.source, p.target): p for p in net.projections}
    pooled = kinds["a1", "a2"]
    assert pooled.kind == "conv" and pooled.pool == (2, 2) and pooled.weight.shape == (3, 3, 3, 3)
    assert kinds["a2", "a3"].kind == "diagonal"
    x = np.random.default_rng(2).random((3, 1, 9, 9))
    ref = simulate_reference(graph, x, 5)
    res = evsim.simulate(net, x, T=5, precision="float64")
    np.testing.assert_array_equal(res.predictions, ref["predictions"])
    for layer in res.layers:
        assert layer.spikes_per_step == (np.abs(ref["counts"][layer.name]).reshape(5, 3, -1).sum(axis=(1, 2)) / 3
                                         ).tolist()


def test_input_paths_over_the_memory_limit_fall_back_to_the_executor(monkeypatch):
    """Composing conv -> flatten on the input needs a materialised matrix; under a tiny memory
    limit that target's constant current is evaluated by the NumPy executor instead."""
    rng = np.random.default_rng(3)
    nodes = [Node("conv", "conv2d", ("input",), {"padding": [1, 1]}, {"weight": rng.normal(size=(4, 1, 3, 3)),
                                                                       "bias": rng.normal(size=4)}),
             Node("flat", "flatten", ("conv",)),
             _neuron("a1", "flat", 1.5),
             Node("fc", "linear", ("a1",), {}, {"weight": rng.normal(size=(3, 256))})]
    graph = validate(Graph(InputSpec((1, 8, 8)), nodes, "fc", kind="snn"))
    x = rng.random((4, 1, 8, 8))
    composed = compile_network(graph)
    assert composed.input_projections and not composed.forward_inputs
    monkeypatch.setenv("EVSIM_MEMORY_LIMIT", "16K")
    fallback = compile_network(graph)
    assert fallback.forward_inputs == ("a1",) and not fallback.input_projections
    monkeypatch.delenv("EVSIM_MEMORY_LIMIT")  # the run's own buffers are checked against the limit too
    a = evsim.simulate(composed, x, T=6, precision="float64")
    b = evsim.simulate(fallback, x, T=6, precision="float64")
    np.testing.assert_array_equal(a.predictions, b.predictions)
    assert [l.spikes_per_step for l in a.layers] == [l.spikes_per_step for l in b.layers]


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_buffers_are_reused_across_batches(batch):
    """Batches of different sizes through one Simulator give the results of fresh ones."""
    from evsim.engine import Simulator

    net = compile_network(_pool_residual_graph())
    x = np.random.default_rng(4).random((5, 1, 9, 9))
    sim = Simulator(net, np.float64)
    sim.run_batch(x, 3)  # fills the buffers with the largest batch first
    got = sim.run_batch(x[:batch], 4)
    want = Simulator(net, np.float64).run_batch(x[:batch], 4)
    np.testing.assert_array_equal(got.predictions, want.predictions)
    np.testing.assert_array_equal(got.logits, want.logits)
    for name in want.stats:
        np.testing.assert_array_equal(got.stats[name], want.stats[name])
