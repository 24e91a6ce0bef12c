"""Numba kernels against their slow NumPy twins (tests/reference.py) and the methods.md facts."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import reference as ref
from evsim._kernels import (
    event_stats,
    gn_step,
    if_step,
    maxpool_gate,
    scatter_conv,
    scatter_csr,
    scatter_dense,
    signed_if_step,
)

DTYPES = st.sampled_from([np.float32, np.float64])
SEEDS = st.integers(0, 2**32 - 1)
NEG_THRESHOLD = -1e-3
# JIT compilation happens inside the first example: never use deadlines here.
FEW = settings(deadline=None, max_examples=15)
SOME = settings(deadline=None, max_examples=30)


def empty_events(n_batch, capacity):
    return (np.zeros((n_batch, capacity), np.int32), np.zeros((n_batch, capacity), np.int32),
            np.full(n_batch, -1, np.int64))


def random_counts(rng, n_batch, n_neurons, density=0.3, low=-3, high=4):
    """Random dense signed spike counts (no zeros where an event is present)."""
    values = rng.integers(low, high, size=(n_batch, n_neurons))
    values[values == 0] = 1
    return np.where(rng.random((n_batch, n_neurons)) < density, values, 0).astype(np.int32)


def assert_close(actual, expected, dtype, scale=1.0):
    """float64: equal to ~1e-12; float32: allclose at float32 precision."""
    if dtype == np.float64:
        np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12 * scale)
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * scale)


@st.composite
def populations(draw, max_batch=3, max_channels=4, max_pixels=12):
    """(B, C, N) of a population with N = pixels * C."""
    n_batch = draw(st.integers(1, max_batch))
    n_channels = draw(st.integers(1, max_channels))
    n_pixels = draw(st.integers(1, max_pixels))
    return n_batch, n_channels, n_pixels * n_channels


def neuron_inputs(rng, dtype, n_batch, n_channels, n_neurons, scale=2.0):
    current = (rng.standard_normal((n_batch, n_neurons)) * scale).astype(dtype)
    base = rng.standard_normal((n_batch, n_neurons)).astype(dtype)
    v = rng.uniform(-1, 1, (n_batch, n_neurons)).astype(dtype)
    theta = rng.uniform(0.3, 2.0, n_channels).astype(dtype)
    return current, base, v, theta


# --------------------------------------------------------------------------------------------
# Neurons vs twins (exact: same operations in the same dtype)
# --------------------------------------------------------------------------------------------

@SOME
@given(pop=populations(), dtype=DTYPES, reset_zero=st.booleans(), seed=SEEDS)
def test_if_step_matches_twin(pop, dtype, reset_zero, seed):
    rng = np.random.default_rng(seed)
    n_batch, n_channels, n_neurons = pop
    current, base, v, theta = neuron_inputs(rng, dtype, *pop)
    # Exact threshold hits must spike (h >= theta).
    v[:, : n_channels] = 0
    current[:, : n_channels] = theta
    want_counts, want_v, want_current = ref.if_step_ref(current, base, v, theta, reset_zero)

    ev = empty_events(n_batch, n_neurons)
    if_step(current, base, v, theta, reset_zero, *ev)
    np.testing.assert_array_equal(ref.events_to_dense(*ev, n_neurons), want_counts)
    assert np.all(want_counts[:, :n_channels] == 1)
    np.testing.assert_array_equal(v, want_v)
    np.testing.assert_array_equal(current, want_current)


@SOME
@given(pop=populations(), dtype=DTYPES, tau=st.integers(1, 8), seed=SEEDS)
def test_gn_step_matches_twin(pop, dtype, tau, seed):
    rng = np.random.default_rng(seed)
    n_batch, n_channels, n_neurons = pop
    current, base, v, theta = neuron_inputs(rng, dtype, *pop, scale=3.0)
    theta_unit = (theta / dtype(tau)).astype(dtype)
    unit_n = ref.per_neuron(theta_unit, n_neurons)
    # Potentials exactly at, and one ulp around, member thresholds (where floor(h/unit) is
    # fragile), plus far beyond tau*unit.
    member = rng.integers(0, tau + 2, size=(n_batch, n_neurons)).astype(dtype) * unit_n
    nudge = rng.integers(-1, 2, size=(n_batch, n_neurons))
    exact = np.where(nudge < 0, np.nextafter(member, dtype(-np.inf)),
                     np.where(nudge > 0, np.nextafter(member, dtype(np.inf)), member))
    on_boundary = rng.random((n_batch, n_neurons)) < 0.5
    v = np.where(on_boundary, 0, v).astype(dtype)
    current = np.where(on_boundary, exact, current).astype(dtype)
    current[:, -1] = dtype(50.0) * theta_unit.max() * tau
    want_counts, want_v, want_current = ref.gn_step_ref(current, base, v, theta_unit, tau)

    ev = empty_events(n_batch, n_neurons)
    gn_step(current, base, v, theta_unit, tau, *ev)
    counts = ref.events_to_dense(*ev, n_neurons)
    np.testing.assert_array_equal(counts, want_counts)
    assert counts.min() >= 0 and counts.max() <= tau
    assert np.all(counts[:, -1] == tau)
    np.testing.assert_array_equal(v, want_v)
    np.testing.assert_array_equal(current, want_current)


@SOME
@given(pop=populations(), dtype=DTYPES, seed=SEEDS,
       # -1e-4 rounds *up* in float32: catches a comparison done in float64 instead of dtype.
       neg_threshold=st.sampled_from([NEG_THRESHOLD, -1e-4]))
def test_signed_if_step_matches_twin(pop, dtype, seed, neg_threshold):
    rng = np.random.default_rng(seed)
    n_batch, n_channels, n_neurons = pop
    current, base, v, theta = neuron_inputs(rng, dtype, *pop, scale=1.0)
    net = rng.integers(0, 3, size=(n_batch, n_neurons)).astype(np.int32)
    # Potentials exactly at the negative threshold (rounded to dtype) and one ulp above.
    negative = dtype(neg_threshold)
    special = rng.integers(0, 3, size=(n_batch, n_neurons))
    v = np.where(special > 0, 0, v).astype(dtype)
    current = np.where(special == 1, negative,
                       np.where(special == 2, np.nextafter(negative, dtype(1)), current)).astype(dtype)
    want_counts, want_v, want_net, want_current = ref.signed_if_step_ref(
        current, base, v, net, theta, neg_threshold)

    ev = empty_events(n_batch, n_neurons)
    signed_if_step(current, base, v, net, theta, neg_threshold, *ev)
    np.testing.assert_array_equal(ref.events_to_dense(*ev, n_neurons), want_counts)
    np.testing.assert_array_equal(v, want_v)
    np.testing.assert_array_equal(net, want_net)
    np.testing.assert_array_equal(current, want_current)


# --------------------------------------------------------------------------------------------
# Neuron properties over several steps
# --------------------------------------------------------------------------------------------

def run_steps(kind, inputs, v0, theta, tau=1, net=None):
    """Feed inputs (T, B, N) step by step; return (v, dense counts per step (T, B, N), net)."""
    n_steps, n_batch, n_neurons = inputs.shape
    v = v0.copy()
    base = np.zeros((n_batch, n_neurons), v.dtype)
    current = np.empty_like(base)
    net = None if net is None else net.copy()
    counts = np.zeros(inputs.shape, np.int32)
    for t in range(n_steps):
        current[:] = inputs[t]
        ev = empty_events(n_batch, n_neurons)
        if kind == "if":
            if_step(current, base, v, theta, False, *ev)
        elif kind == "gn":
            gn_step(current, base, v, theta, tau, *ev)
        else:
            signed_if_step(current, base, v, net, theta, NEG_THRESHOLD, *ev)
        counts[t] = ref.events_to_dense(*ev, n_neurons)
    return v, counts, net


@SOME
@given(pop=populations(max_pixels=6), kind=st.sampled_from(["if", "gn", "signed"]),
       tau=st.integers(1, 6), n_steps=st.integers(1, 12), dtype=DTYPES, seed=SEEDS)
def test_conservation(pop, kind, tau, n_steps, dtype, seed):
    """v(T) = v0 + sum x - theta_unit * sum s (signed IF: sum s = net count N(T))."""
    rng = np.random.default_rng(seed)
    n_batch, n_channels, n_neurons = pop
    inputs = rng.normal(0.3, 1.0, (n_steps, n_batch, n_neurons)).astype(dtype)
    theta = rng.uniform(0.3, 2.0, n_channels).astype(dtype)
    if kind == "gn":
        theta = (theta / dtype(tau)).astype(dtype)
    v0 = (ref.per_neuron(theta, n_neurons) / 2 * np.ones((n_batch, 1))).astype(dtype)
    net0 = np.zeros((n_batch, n_neurons), np.int32) if kind == "signed" else None
    v, counts, net = run_steps(kind, inputs, v0, theta, tau, net0)

    spikes = counts.sum(axis=0)
    expected = (v0.astype(np.float64) + inputs.astype(np.float64).sum(axis=0)
                - ref.per_neuron(theta, n_neurons).astype(np.float64) * spikes)
    tol = n_steps * 10 * np.finfo(dtype).eps * (1 + np.abs(inputs).max() + 2 * theta.max())
    np.testing.assert_allclose(v, expected, rtol=0, atol=tol)
    if kind == "gn":
        assert counts.min() >= 0 and counts.max() <= tau
    if kind == "signed":
        np.testing.assert_array_equal(net, spikes)


@SOME
@given(pop=populations(), n_steps=st.integers(1, 10), dtype=DTYPES, seed=SEEDS)
def test_gn_with_one_member_is_if(pop, n_steps, dtype, seed):
    rng = np.random.default_rng(seed)
    n_batch, n_channels, n_neurons = pop
    inputs = rng.normal(0.3, 1.5, (n_steps, n_batch, n_neurons)).astype(dtype)
    theta = rng.uniform(0.3, 2.0, n_channels).astype(dtype)
    v0 = rng.uniform(0, 1, (n_batch, n_neurons)).astype(dtype)
    v_if, counts_if, _ = run_steps("if", inputs, v0, theta)
    v_gn, counts_gn, _ = run_steps("gn", inputs, v0, theta, tau=1)
    np.testing.assert_array_equal(counts_gn, counts_if)
    np.testing.assert_array_equal(v_gn, v_if)


@SOME
@given(pop=populations(), n_steps=st.integers(1, 12), dtype=DTYPES, seed=SEEDS)
def test_signed_if_invariants(pop, n_steps, dtype, seed):
    """net >= 0 always, and each step at most one event (count +-1) per neuron."""
    rng = np.random.default_rng(seed)
    n_batch, n_channels, n_neurons = pop
    # Alternating-sign input drives both positive and negative spikes.
    inputs = (rng.normal(0, 1.5, (n_steps, n_batch, n_neurons))
              * np.where(np.arange(n_steps) % 2, -1, 1)[:, None, None]).astype(dtype)
    theta = rng.uniform(0.3, 1.5, n_channels).astype(dtype)
    v = (ref.per_neuron(theta, n_neurons) / 2 * np.ones((n_batch, 1))).astype(dtype)
    net = np.zeros((n_batch, n_neurons), np.int32)
    base = np.zeros_like(v)
    current = np.empty_like(v)
    saw_negative = False
    for t in range(n_steps):
        current[:] = inputs[t]
        net_before = net.copy()
        ev = empty_events(n_batch, n_neurons)
        signed_if_step(current, base, v, net, theta, NEG_THRESHOLD, *ev)
        counts = ref.events_to_dense(*ev, n_neurons)  # also checks: unique, increasing indices
        assert np.all(np.abs(counts) <= 1)
        assert net.min() >= 0
        np.testing.assert_array_equal(net - net_before, counts)
        saw_negative |= bool((counts < 0).any())
    assume(saw_negative)


# --------------------------------------------------------------------------------------------
# QCFS exactness (methods.md 2.1, 2.2): constant input z, v0 = theta_unit / 2
# --------------------------------------------------------------------------------------------

def qcfs_level(z, lam, levels):
    """Integer QCFS level clip(floor(z*L/lam + 1/2), 0, L) (float64)."""
    return np.clip(np.floor(z * levels / lam + 0.5), 0, levels)


def far_from_ties(z, unit, n_steps, margin):
    """Neurons whose running sums t*z/unit + 1/2 (t = 1..T) all stay ``margin`` from integers."""
    t = np.arange(1, n_steps + 1)[:, None, None]
    frac = t * z / unit + 0.5
    return (np.abs(frac - np.round(frac)) > margin).all(axis=0)


def check_qcfs(kind, tau, n_steps, dtype, seed, n_channels=3, n_pixels=40, n_batch=2):
    rng = np.random.default_rng(seed)
    n_neurons = n_channels * n_pixels
    theta = rng.uniform(0.5, 2.0, n_channels).astype(dtype)
    unit = (theta / dtype(tau)).astype(dtype)
    unit_n = ref.per_neuron(unit, n_neurons).astype(np.float64)
    lam = tau * unit_n  # exact: tau is a small integer; lambda = theta
    z = (rng.uniform(-0.3, 1.3, (n_batch, n_neurons)) * lam).astype(dtype)
    v = (unit_n / 2 * np.ones((n_batch, 1))).astype(dtype)
    # Constant input through the base pre-load: current = base at every step.
    base = z.copy()
    current = z.copy()
    total = np.zeros((n_batch, n_neurons), np.int64)
    for _ in range(n_steps):
        ev = empty_events(n_batch, n_neurons)
        if kind == "if":
            if_step(current, base, v, unit, False, *ev)
        else:
            gn_step(current, base, v, unit, tau, *ev)
        total += ref.events_to_dense(*ev, n_neurons)

    levels = tau * n_steps
    margin = 1e-3 if dtype == np.float32 else 1e-9
    keep = far_from_ties(z.astype(np.float64), unit_n, n_steps, margin)
    assert keep.mean() > 0.8
    expected = qcfs_level(z.astype(np.float64), lam, levels)
    np.testing.assert_array_equal(total[keep], expected[keep])
    # The statement itself: theta_unit * sum s / T == lambda * clip(floor(z L/lambda + 1/2)/L, 0, 1).
    np.testing.assert_allclose((unit_n * total / n_steps)[keep],
                               (lam * np.clip(expected / levels, 0, 1))[keep], rtol=1e-12)


@SOME
@given(levels=st.integers(1, 16), dtype=DTYPES, seed=SEEDS)
def test_if_reproduces_qcfs(levels, dtype, seed):
    check_qcfs("if", 1, levels, dtype, seed)


@SOME
@given(tau=st.integers(1, 6), n_steps=st.integers(1, 8), dtype=DTYPES, seed=SEEDS)
def test_gn_reproduces_qcfs(tau, n_steps, dtype, seed):
    check_qcfs("gn", tau, n_steps, dtype, seed)


# --------------------------------------------------------------------------------------------
# Scatter kernels
# --------------------------------------------------------------------------------------------

@st.composite
def conv_geometries(draw):
    groups = draw(st.integers(1, 3))
    geo = dict(
        src_h=draw(st.integers(1, 7)), src_w=draw(st.integers(1, 7)),
        src_c=groups * draw(st.integers(1, 3)), out_c=groups * draw(st.integers(1, 3)),
        k_h=draw(st.integers(1, 3)), k_w=draw(st.integers(1, 3)),
        stride_h=draw(st.integers(1, 3)), stride_w=draw(st.integers(1, 3)),
        pad_h=draw(st.integers(0, 2)), pad_w=draw(st.integers(0, 2)),
        dil_h=draw(st.integers(1, 2)), dil_w=draw(st.integers(1, 2)), groups=groups,
    )
    geo["crop_h"] = draw(st.integers(1, geo["src_h"]))
    geo["crop_w"] = draw(st.integers(1, geo["src_w"]))
    for a in ("h", "w"):
        size = (geo["crop_" + a] + 2 * geo["pad_" + a] - geo["dil_" + a] * (geo["k_" + a] - 1) - 1
                ) // geo["stride_" + a] + 1
        # Mostly the PyTorch output size; the scatter must also respect any other out size.
        geo["out_" + a] = max(1, size + draw(st.sampled_from([0, 0, 0, -1, 1])))
    return geo


@settings(deadline=None, max_examples=60)
@given(geo=conv_geometries(), n_batch=st.integers(1, 3), dtype=DTYPES, seed=SEEDS)
def test_scatter_conv_matches_twins(geo, n_batch, dtype, seed):
    rng = np.random.default_rng(seed)
    g = geo
    n_src = g["src_h"] * g["src_w"] * g["src_c"]
    n_dst = g["out_h"] * g["out_w"] * g["out_c"]
    weight_oihw = rng.standard_normal(
        (g["out_c"], g["src_c"] // g["groups"], g["k_h"], g["k_w"])).astype(dtype)
    weight = ref.conv_weight_to_kernel_layout(weight_oihw, g["groups"])
    counts = random_counts(rng, n_batch, n_src, density=0.5)
    current0 = rng.standard_normal((n_batch, n_dst)).astype(dtype)

    geometry = (g["src_h"], g["src_w"], g["src_c"], g["crop_h"], g["crop_w"],
                g["out_h"], g["out_w"], g["out_c"], g["k_h"], g["k_w"],
                g["stride_h"], g["stride_w"], g["pad_h"], g["pad_w"],
                g["dil_h"], g["dil_w"], g["groups"])
    current = current0.copy()
    scatter_conv(*ref.dense_to_events(counts), weight, current, *geometry)

    assert_close(current, ref.scatter_conv_ref(counts, weight, current0, *geometry), dtype, 10)
    direct = ref.conv2d_direct_ref(
        counts, weight_oihw, g["src_h"], g["src_w"], g["src_c"], g["crop_h"], g["crop_w"],
        g["out_h"], g["out_w"], g["stride_h"], g["stride_w"], g["pad_h"], g["pad_w"],
        g["dil_h"], g["dil_w"], g["groups"])
    assert_close(current, current0.astype(np.float64) + direct, dtype, 10)


def test_scatter_conv_single_event_hits_pytorch_positions():
    """One unit event at (y, x) = (2, 3) of a 5x5 source, 3x3 kernel, pad 1, stride 1:
    output (oy, ox) receives w[ky, kx] with oy = y + 1 - ky, i.e. the kernel flipped around."""
    weight = np.arange(9, dtype=np.float64).reshape(3, 3, 1, 1)
    current = np.zeros((1, 25))
    ev_idx, ev_cnt, nev = ref.dense_to_events(np.eye(1, 25, 2 * 5 + 3, dtype=np.int32))
    scatter_conv(ev_idx, ev_cnt, nev, weight, current, 5, 5, 1, 5, 5, 5, 5, 1,
                 3, 3, 1, 1, 1, 1, 1, 1, 1)
    out = current.reshape(5, 5)
    expected = np.zeros((5, 5))
    expected[1:4, 2:5] = weight[::-1, ::-1, 0, 0]
    np.testing.assert_array_equal(out, expected)


@FEW
@given(n_batch=st.integers(1, 3), n_src=st.integers(1, 30), n_dst=st.integers(1, 30),
       dtype=DTYPES, seed=SEEDS)
def test_scatter_dense_matches_twin(n_batch, n_src, n_dst, dtype, seed):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((n_src, n_dst)).astype(dtype)
    counts = random_counts(rng, n_batch, n_src)
    current0 = rng.standard_normal((n_batch, n_dst)).astype(dtype)
    current = current0.copy()
    scatter_dense(*ref.dense_to_events(counts), weight, current)
    assert_close(current, ref.scatter_dense_ref(counts, weight, current0), dtype, 10)


@FEW
@given(n_batch=st.integers(1, 3), n_src=st.integers(1, 30), n_dst=st.integers(1, 30),
       index_dtype=st.sampled_from([np.int32, np.int64]), dtype=DTYPES, seed=SEEDS)
def test_scatter_csr_matches_twin(n_batch, n_src, n_dst, index_dtype, dtype, seed):
    rng = np.random.default_rng(seed)
    row_lengths = rng.integers(0, n_dst + 2, n_src)  # > n_dst forces duplicate columns
    indptr = np.concatenate([[0], np.cumsum(row_lengths)]).astype(index_dtype)
    indices = rng.integers(0, n_dst, indptr[-1]).astype(index_dtype)
    data = rng.standard_normal(indptr[-1]).astype(dtype)
    counts = random_counts(rng, n_batch, n_src)
    current0 = rng.standard_normal((n_batch, n_dst)).astype(dtype)
    current = current0.copy()
    scatter_csr(*ref.dense_to_events(counts), indptr, indices, data, current)
    assert_close(current, ref.scatter_csr_ref(counts, indptr, indices, data, current0), dtype, 10)


# --------------------------------------------------------------------------------------------
# Max pooling gate and event statistics
# --------------------------------------------------------------------------------------------

@st.composite
def pool_geometries(draw):
    k_h, k_w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    geo = dict(src_h=draw(st.integers(1, 7)), src_w=draw(st.integers(1, 7)),
               src_c=draw(st.integers(1, 3)), k_h=k_h, k_w=k_w,
               stride_h=draw(st.integers(1, 3)), stride_w=draw(st.integers(1, 3)),
               pad_h=draw(st.integers(0, k_h // 2)), pad_w=draw(st.integers(0, k_w // 2)))
    geo["out_h"] = (geo["src_h"] + 2 * geo["pad_h"] - k_h) // geo["stride_h"] + 1
    geo["out_w"] = (geo["src_w"] + 2 * geo["pad_w"] - k_w) // geo["stride_w"] + 1
    assume(geo["out_h"] >= 1 and geo["out_w"] >= 1)
    return geo


@settings(deadline=None, max_examples=40)
@given(geo=pool_geometries(), n_batch=st.integers(1, 3), n_steps=st.integers(1, 6),
       signed=st.booleans(), seed=SEEDS)
def test_maxpool_gate_matches_twin(geo, n_batch, n_steps, signed, seed):
    rng = np.random.default_rng(seed)
    g = geo
    n_src = g["src_h"] * g["src_w"] * g["src_c"]
    n_out = g["out_h"] * g["out_w"] * g["src_c"]
    geometry = (g["src_h"], g["src_w"], g["src_c"], g["out_h"], g["out_w"], g["k_h"], g["k_w"],
                g["stride_h"], g["stride_w"], g["pad_h"], g["pad_w"])
    cum = np.zeros((n_batch, n_src), np.int32)
    cum_ref = cum.copy()
    for _ in range(n_steps):
        # Small positive counts make ties (first-wins rule) frequent; signed adds -1 events.
        counts = random_counts(rng, n_batch, n_src, density=0.4, low=-1 if signed else 1, high=3)
        out_idx, out_cnt, out_nev = empty_events(n_batch, n_out)
        maxpool_gate(*ref.dense_to_events(counts), cum, *geometry, out_idx, out_cnt, out_nev)
        want_out, cum_ref = ref.maxpool_gate_ref(counts, cum_ref, *geometry)
        np.testing.assert_array_equal(cum, cum_ref)
        np.testing.assert_array_equal(ref.events_to_dense(out_idx, out_cnt, out_nev, n_out), want_out)


def test_maxpool_gate_overlapping_windows_sorted():
    """3x3 windows with stride 1 on a 6x6 map: one event feeds up to 9 windows, out of order."""
    rng = np.random.default_rng(0)
    n_src, n_out = 36 * 2, 36 * 2
    cum = np.zeros((2, n_src), np.int32)
    cum_ref = cum.copy()
    for _ in range(5):
        counts = random_counts(rng, 2, n_src, density=0.7, low=1, high=4)
        out = empty_events(2, n_out)
        maxpool_gate(*ref.dense_to_events(counts), cum, 6, 6, 2, 6, 6, 3, 3, 1, 1, 1, 1, *out)
        want, cum_ref = ref.maxpool_gate_ref(counts, cum_ref, 6, 6, 2, 6, 6, 3, 3, 1, 1, 1, 1)
        np.testing.assert_array_equal(ref.events_to_dense(*out, n_out), want)


@FEW
@given(n_batch=st.integers(1, 4), n_src=st.integers(1, 40), seed=SEEDS)
def test_event_stats_matches_twin(n_batch, n_src, seed):
    rng = np.random.default_rng(seed)
    fanout = rng.integers(0, 100, n_src).astype(np.int64)
    out = rng.integers(0, 1000, (n_batch, 3)).astype(np.int64)
    expected = out.copy()
    for _ in range(3):
        counts = random_counts(rng, n_batch, n_src, low=-4, high=5)
        event_stats(*ref.dense_to_events(counts), fanout, out)
        expected = ref.event_stats_ref(counts, fanout, expected)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_events_touch_nothing(dtype):
    """nev = 0: scatters leave currents unchanged; stats count nothing."""
    n_batch = 2
    ev_idx, ev_cnt, nev = ref.dense_to_events(np.zeros((n_batch, 8), np.int32))
    current = np.ones((n_batch, 8), dtype)
    scatter_dense(ev_idx, ev_cnt, nev, np.ones((8, 8), dtype), current)
    scatter_conv(ev_idx, ev_cnt, nev, np.ones((1, 1, 2, 2), dtype), current,
                 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 1, 1, 1)
    np.testing.assert_array_equal(current, 1)
    out = np.zeros((n_batch, 3), np.int64)
    event_stats(ev_idx, ev_cnt, nev, np.ones(8, np.int64), out)
    np.testing.assert_array_equal(out, 0)
