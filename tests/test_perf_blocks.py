"""Time blocks: a run cut into blocks of steps gives exactly the results of one block, and its
memory does not grow with T."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import evsim
from evsim.compile import compile_network
from evsim.engine import Simulator, run_memory, time_block
from evsim.errors import DataError
from netgen import random_inputs, random_network

SLOW = settings(deadline=None, max_examples=12)


def same_batch(a, b):
    np.testing.assert_array_equal(a.predictions, b.predictions)
    np.testing.assert_array_equal(a.logits, b.logits)
    assert a.layers.keys() == b.layers.keys()
    for name in a.layers:
        for counter in a.layers[name]:
            np.testing.assert_array_equal(a.layers[name][counter], b.layers[name][counter], err_msg=name)
    assert a.recorded.keys() == b.recorded.keys()
    for name in a.recorded:
        np.testing.assert_array_equal(a.recorded[name], b.recorded[name])


@SLOW
@given(seed=st.integers(0, 2**31 - 1), model=st.sampled_from(["if", "gn", "signed_if"]), maxpool=st.booleans(),
       T=st.integers(2, 9), block=st.integers(1, 8), dtype=st.sampled_from([np.float32, np.float64]))
def test_blocks_give_identical_results(seed, model, maxpool, T, block, dtype):
    """Spikes, SOPs, predictions, logits and recorded counts are bit-identical for any time block
    (state, gate counts and the output's running sum carried across blocks)."""
    graph = random_network(seed, activation=model, maxpool=maxpool)
    x = random_inputs(graph, 3, seed)
    net = compile_network(graph)
    pops = tuple(p.name for p in net.populations)
    whole = Simulator(net, dtype, time_block=T).run_batch(x, T, record=pops)
    blocked_sim = Simulator(net, dtype, time_block=block)
    assert blocked_sim.block_steps(3, T) == min(block, T)
    same_batch(blocked_sim.run_batch(x, T, record=pops), whole)
    # the same simulator again (buffers and state re-used from the previous batch)
    same_batch(blocked_sim.run_batch(x, T, record=pops), whole)


def test_blocks_from_environment(monkeypatch):
    graph = random_network(3, activation="if")
    x = random_inputs(graph, 2, 3)
    whole = evsim.simulate(graph, x, T=7, precision="float64")
    monkeypatch.setenv("EVSIM_TIME_BLOCK", "2")
    sim = Simulator(compile_network(graph), np.float64)
    assert sim.block_steps(2, 7) == 2
    blocked = evsim.simulate(graph, x, T=7, precision="float64")
    np.testing.assert_array_equal(blocked.predictions, whole.predictions)
    assert [l.spikes_per_step for l in blocked.layers] == [l.spikes_per_step for l in whole.layers]
    monkeypatch.setenv("EVSIM_TIME_BLOCK", "zero")
    with pytest.raises(DataError, match="EVSIM_TIME_BLOCK"):
        sim.block_steps(2, 7)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_time_block_setting_validated(bad):
    net = compile_network(random_network(1))
    with pytest.raises(DataError, match="time_block"):
        Simulator(net, time_block=bad)


def test_automatic_block_bounds_memory(monkeypatch):
    """The automatic block keeps short runs whole and makes memory flat in T for long ones."""
    monkeypatch.delenv("EVSIM_TIME_BLOCK", raising=False)
    net = compile_network(random_network(5, activation="if"))
    assert time_block(net, 4, 32) == 32  # a small network: all steps in one block
    # a budget of 1 MiB forces blocks: limit the memory and check what the engine chooses
    monkeypatch.setattr("evsim.engine.MIN_BLOCK_BYTES", 2**20)
    long = [run_memory(net, 256, T, np.float32) for T in (512, 4096, 32768)]
    steps = [time_block(net, 256, T) for T in (512, 4096, 32768)]
    assert all(s < T for s, T in zip(steps, (512, 4096, 32768)))
    # memory grows only by the per-step predictions and counters, not by the buffers
    per_step = 256 * 16 + 48 * (len(net.populations) + 1)
    assert long[-1] - long[0] <= per_step * (32768 - 512) + 2**20
    # EVSIM_MEMORY_LIMIT shrinks the block further
    monkeypatch.setenv("EVSIM_MEMORY_LIMIT", str(run_memory(net, 256, 4096, np.float32, time_block=2)))
    assert time_block(net, 256, 4096) <= 2


def test_blocked_run_has_smaller_buffers():
    net = compile_network(random_network(11, activation="if"))
    x = random_inputs(net.graph, 4, 0)
    whole = Simulator(net, np.float32, time_block=64)
    whole.run_batch(x, 64)
    blocked = Simulator(net, np.float32, time_block=4)
    blocked.run_batch(x, 64)
    assert blocked.buffers.nbytes < whole.buffers.nbytes / 4


@settings(deadline=None, max_examples=8)
@given(seed=st.integers(0, 2**31 - 1), model=st.sampled_from(["if", "gn", "signed_if"]), extra=st.integers(-2, 3),
       block=st.integers(1, 4))
def test_event_frames_in_blocks(seed, model, extra, block):
    """Event-frame input is turned into events block by block (frames past T_data: none); results
    and the input layer's SOPs equal one block."""
    from evsim.graph import InputSpec

    graph = random_network(seed, activation=model)
    graph.input = InputSpec(tuple(graph.input.shape))  # frames are counts: no preprocessing
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, size=(2, 4) + tuple(graph.input.shape)).astype(np.uint8)
    T = 4 + extra
    net = compile_network(graph)
    pops = tuple(p.name for p in net.populations)
    whole = Simulator(net, np.float64, time_block=T).run_batch(x, T, record=pops)
    blocked = Simulator(net, np.float64, time_block=block).run_batch(x, T, record=pops)
    same_batch(blocked, whole)
    assert "input" in blocked.layers
