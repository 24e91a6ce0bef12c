"""Numba kernels against their slow NumPy twins (tests/reference.py) and the methods.md facts.

Layer-major API: a neuron kernel runs all T steps of a (B, T, N) current, split into parts
(``bounds``); scatter kernels work on (B*T, ...) items. Spikes and event lists must equal the
twins exactly; float currents are compared with ``assert_close``.
"""
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import reference as ref
from evsim._kernels import neurons as _neurons
from evsim._kernels import (
    accumulate_counts,
    conv_rows_layout,
    event_stats,
    fill_rows,
    gn_run,
    if_run,
    join_parts,
    maxpool_gate,
    scatter_conv,
    scatter_conv_rows,
    scatter_csr,
    scatter_dense,
    scatter_diagonal,
    signed_if_run,
)

DTYPES = st.sampled_from([np.float32, np.float64])
SEEDS = st.integers(0, 2**32 - 1)
# (events, weight dtype) pairs the scatters receive: spike counts (int8 is the engine's default,
# int32 when a GN has tau > 127) or the analog input's float payloads (every input neuron is an
# event, payload in the weight dtype). Parametrised, not drawn: every pair is covered, and each
# pair is one JIT specialisation (compiling dominates a cold run, so rare int32 gets one dtype).
PAYLOAD_CASES = [("int8", np.float32), ("int8", np.float64), ("int32", np.float32),
                 ("float", np.float32), ("float", np.float64)]
NEG_THRESHOLD = -1e-3
# JIT compilation happens inside the first example: never use deadlines here.
FEW = settings(deadline=None, max_examples=15)
SOME = settings(deadline=None, max_examples=50)


# ============================================================================================
# Helpers
# ============================================================================================

def random_counts(rng, shape, density=0.3, low=-3, high=4, dtype=np.int32):
    """Random dense signed spike counts in [low, high) \\ {0} at a fraction ``density`` of neurons."""
    values = rng.integers(low, high, size=shape)
    values[values == 0] = 1 if high > 1 else -1
    return np.where(rng.random(shape) < density, values, 0).astype(dtype)


def random_payloads(rng, payload, shape, dtype):
    """Dense counts (or float payloads) and their event lists, as the engine would scatter them."""
    if payload == "float":
        values = rng.standard_normal(shape).astype(dtype)
        pick = rng.random(shape)
        values[pick < 0.2] = 0  # zero payloads are events too
        values[(pick >= 0.2) & (pick < 0.4)] = 1  # exact 1: the kernels skip the multiplication
        return values, ref.dense_to_events(values, every_neuron=True)
    counts = random_counts(rng, shape, density=0.5, dtype=np.dtype(payload))
    return counts, ref.dense_to_events(counts)


def assert_close(actual, expected, dtype, scale=1.0):
    """float64: equal to ~1e-12; float32: ~1e-5 relative. ``scale`` bounds the summed |terms|."""
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


def assert_same_events(a, b, nev):
    """Two event lists (..., E) with the same ``nev`` agree on every used slot."""
    for item in np.ndindex(nev.shape):
        m = nev[item]
        np.testing.assert_array_equal(a[0][item][:m], b[0][item][:m])
        np.testing.assert_array_equal(a[1][item][:m], b[1][item][:m])


# ============================================================================================
# Neurons
# ============================================================================================

KERNELS = {"if": if_run, "gn": gn_run, "signed": signed_if_run}
# The neuron kernels work in blocks of about this many neurons (whole pixels); large test layers
# span several blocks so that block seams and partial last blocks are exercised.
BLOCK = getattr(_neurons, "BLOCK", 256)
TWINS = {"if": ref.if_run_ref, "gn": ref.gn_run_ref, "signed": ref.signed_if_run_ref}


@st.composite
def layers(draw, max_batch=3, max_pixels=10, min_steps=1, max_steps=8, max_parts=4):
    """(B, T, C, N, bounds): N = pixels * C; parts cut at pixel boundaries, empty parts allowed.

    Small layers, or large ones (3 to 6 BLOCKs, C up to 300: parts of several blocks, partial
    last blocks, a block of one pixel when C > BLOCK).
    """
    n_batch = draw(st.integers(1, max_batch))
    n_steps = draw(st.integers(min_steps, max_steps))
    if draw(st.booleans()):
        n_channels = draw(st.integers(1, 4))
        n_pixels = draw(st.integers(1, max_pixels))
    else:
        n_channels = draw(st.sampled_from([1, 3, 7, 300]))
        n_pixels = draw(st.integers(max(1, 3 * BLOCK // n_channels), max(1, 6 * BLOCK // n_channels)))
    n_parts = draw(st.integers(1, max_parts))
    cuts = sorted(draw(st.lists(st.integers(0, n_pixels), min_size=n_parts - 1, max_size=n_parts - 1)))
    bounds = np.array([0] + cuts + [n_pixels], np.int64) * n_channels
    return n_batch, n_steps, n_channels, n_pixels * n_channels, bounds


def run_neurons(kind, current, v0, param, option, bounds=None, fanout=None, count_dtype=np.int8,
                write_v=True):
    """Call a neuron kernel on fresh (poisoned) outputs; ``option`` = reset_zero / tau / neg_threshold.

    Returns the raw outputs plus ``counts``: the dense (B, T, N) events, part invariants checked.
    """
    n_batch, n_steps, n_neurons = current.shape
    bounds = np.array([0, n_neurons], np.int64) if bounds is None else bounds
    fanout = np.ones(n_neurons, np.int64) if fanout is None else fanout
    n_parts = len(bounds) - 1
    out = SimpleNamespace(
        ev_idx=np.full((n_batch, n_steps, n_neurons), -1, np.int32),
        ev_cnt=np.zeros((n_batch, n_steps, n_neurons), count_dtype),
        nev=np.full((n_batch, n_steps, n_parts), -1, np.int64),
        stats=np.full((n_batch, n_steps, n_parts, 3), -1, np.int64),
        v=np.full((n_batch if write_v else 0, n_neurons), np.nan, current.dtype),
    )
    KERNELS[kind](current, v0, param, option, bounds, fanout,
                  out.ev_idx, out.ev_cnt, out.nev, out.stats, out.v)
    out.counts = ref.part_events_to_dense(out.ev_idx, out.ev_cnt, out.nev, bounds, n_neurons)
    return out


def check_against_twin(rng, kind, current, v0, param, option, bounds, count_dtype=np.int8):
    """Kernel == twin: events, v(T) and per-part stats (random fan-out), all exactly."""
    fanout = rng.integers(0, 50, current.shape[2]).astype(np.int64)
    got = run_neurons(kind, current, v0, param, option, bounds, fanout, count_dtype)
    want_counts, want_v = TWINS[kind](current, v0, param, option)
    np.testing.assert_array_equal(got.counts, want_counts)
    np.testing.assert_array_equal(got.v, want_v)
    np.testing.assert_array_equal(got.stats, ref.neuron_stats_ref(want_counts, fanout, bounds))
    return got.counts


def neuron_inputs(rng, dtype, layer, scale=2.0, dyadic=False):
    """Random (current (B, T, N), v0 (N,), theta (C,)); ``dyadic`` values make sums exact, so
    ``h == theta`` ties happen at every step, not only where they are planted."""
    n_batch, n_steps, n_channels, n_neurons, _ = layer
    shape = (n_batch, n_steps, n_neurons)
    if dyadic:
        current = rng.integers(-8, 11, shape) * 0.25 * scale / 2
        v0 = rng.integers(-4, 5, n_neurons) * 0.25
        theta = rng.integers(1, 5, n_channels) * 0.5
    else:
        current = rng.standard_normal(shape) * scale
        v0 = rng.uniform(-1, 1, n_neurons)
        theta = rng.uniform(0.3, 2.0, n_channels)
    return current.astype(dtype), v0.astype(dtype), theta.astype(dtype)


# --------------------------------------------------------------------------------------------
# Neurons vs twins (exact: same operations in the same dtype)
# --------------------------------------------------------------------------------------------

@SOME
@given(layer=layers(), dtype=DTYPES, reset_zero=st.booleans(), dyadic=st.booleans(), seed=SEEDS)
def test_if_run_matches_twin(layer, dtype, reset_zero, dyadic, seed):
    rng = np.random.default_rng(seed)
    n_neurons, bounds = layer[3], layer[4]
    current, v0, theta = neuron_inputs(rng, dtype, layer, dyadic=dyadic)
    # Exact threshold hits at step 0 must spike (h >= theta).
    tie = rng.random(n_neurons) < 0.2
    v0[tie] = 0
    current[:, 0, tie] = ref.per_neuron(theta, n_neurons)[tie]
    counts = check_against_twin(rng, "if", current, v0, theta, reset_zero, bounds)
    assert np.all(counts[:, 0, tie] == 1)
    assert set(np.unique(counts)) <= {0, 1}


@SOME
@given(layer=layers(), dtype=DTYPES, dyadic=st.booleans(), seed=SEEDS,
       # 127 is the largest count of the engine's int8 events; 200 needs int32 counts.
       tau=st.one_of(st.integers(1, 8), st.sampled_from([127, 200])))
def test_gn_run_matches_twin(layer, dtype, dyadic, tau, seed):
    rng = np.random.default_rng(seed)
    n_batch, n_steps, n_channels, n_neurons, bounds = layer
    current, v0, theta = neuron_inputs(rng, dtype, layer, scale=3.0, dyadic=dyadic)
    unit = (rng.integers(1, 5, n_channels) * 0.25).astype(dtype) if dyadic else (theta / dtype(tau)).astype(dtype)
    unit_n = ref.per_neuron(unit, n_neurons)
    # Step 0 of half the neurons: v0 = 0 and h exactly at, or one ulp around, a member threshold
    # (where floor(h/unit) is fragile), up to past tau*unit.
    member = rng.integers(0, tau + 2, size=(n_batch, n_neurons)).astype(dtype) * unit_n
    nudge = rng.integers(-1, 2, size=(n_batch, n_neurons))
    exact = np.where(nudge < 0, np.nextafter(member, dtype(-np.inf)),
                     np.where(nudge > 0, np.nextafter(member, dtype(np.inf)), member))
    on_boundary = rng.random(n_neurons) < 0.5
    v0[on_boundary] = 0
    current[:, 0] = np.where(on_boundary, exact, current[:, 0])
    current[:, 0, -1] = dtype(50.0) * unit.max() * tau  # far beyond the top member: count tau
    count_dtype = np.int8 if tau <= 127 else np.int32
    counts = check_against_twin(rng, "gn", current, v0, unit, tau, bounds, count_dtype)
    assert counts.min() >= 0 and counts.max() <= tau
    assert np.all(counts[:, 0, -1] == tau)


@SOME
@given(layer=layers(min_steps=2), dtype=DTYPES, seed=SEEDS,
       # -1e-4 rounds *up* in float32: catches a comparison done in float64 instead of dtype.
       neg_threshold=st.sampled_from([NEG_THRESHOLD, -1e-4]))
def test_signed_if_run_matches_twin(layer, dtype, seed, neg_threshold):
    rng = np.random.default_rng(seed)
    n_batch, n_steps, n_channels, n_neurons, bounds = layer
    current, v0, theta = neuron_inputs(rng, dtype, layer, scale=1.0)
    # Special neurons: v0 = 0, step 0 hits theta exactly (+1, v = 0, N = 1), step 1 lands exactly
    # on the negative threshold in dtype (kind 1: -1), one ulp above (kind 2: none) or below (3: -1).
    negative = dtype(neg_threshold)
    special = rng.integers(0, 4, n_neurons)
    theta_n = ref.per_neuron(theta, n_neurons)
    step1 = {1: negative, 2: np.nextafter(negative, dtype(1)), 3: np.nextafter(negative, dtype(-1))}
    for kind, value in step1.items():
        v0[special == kind] = 0
        current[:, 0, special == kind] = theta_n[special == kind]
        current[:, 1, special == kind] = value
    counts = check_against_twin(rng, "signed", current, v0, theta, float(neg_threshold), bounds)
    assert np.all(counts[:, 0, special > 0] == 1)
    np.testing.assert_array_equal(counts[:, 1, special == 1], -1)
    np.testing.assert_array_equal(counts[:, 1, special == 2], 0)
    np.testing.assert_array_equal(counts[:, 1, special == 3], -1)


# --------------------------------------------------------------------------------------------
# Neuron properties over several steps
# --------------------------------------------------------------------------------------------

@SOME
@given(layer=layers(max_pixels=6, max_steps=12), kind=st.sampled_from(["if", "gn", "signed"]),
       tau=st.integers(1, 6), dtype=DTYPES, seed=SEEDS)
def test_conservation(layer, kind, tau, dtype, seed):
    """v(T) = v0 + sum x - theta_unit * sum s (signed IF: sum s = net count N(T) >= 0)."""
    rng = np.random.default_rng(seed)
    n_batch, n_steps, n_channels, n_neurons, bounds = layer
    inputs = rng.normal(0.3, 1.0, (n_batch, n_steps, n_neurons)).astype(dtype)
    theta = rng.uniform(0.3, 2.0, n_channels).astype(dtype)
    option = {"if": False, "gn": tau, "signed": NEG_THRESHOLD}[kind]
    if kind == "gn":
        theta = (theta / dtype(tau)).astype(dtype)
    theta_n = ref.per_neuron(theta, n_neurons)
    v0 = (theta_n / 2).astype(dtype)
    got = run_neurons(kind, inputs, v0, theta, option, bounds)

    spikes = got.counts.sum(axis=1)
    expected = v0.astype(np.float64) + inputs.astype(np.float64).sum(axis=1) - theta_n.astype(np.float64) * spikes
    bound = 1 + np.abs(inputs).max() + 2 * (tau if kind == "gn" else 1) * theta.max()
    np.testing.assert_allclose(got.v, expected, rtol=0, atol=n_steps * 10 * np.finfo(dtype).eps * bound)
    if kind == "gn":
        assert got.counts.min() >= 0 and got.counts.max() <= tau
    if kind == "signed":
        assert spikes.min() >= 0


@SOME
@given(layer=layers(), dtype=DTYPES, seed=SEEDS)
def test_gn_with_one_member_is_if(layer, dtype, seed):
    """Identical raw outputs: events, counts, v(T) and stats."""
    rng = np.random.default_rng(seed)
    n_neurons, bounds = layer[3], layer[4]
    current, v0, theta = neuron_inputs(rng, dtype, layer, scale=1.5)
    fanout = rng.integers(0, 9, n_neurons).astype(np.int64)
    a = run_neurons("if", current, v0, theta, False, bounds, fanout)
    b = run_neurons("gn", current, v0, theta, 1, bounds, fanout)
    np.testing.assert_array_equal(b.nev, a.nev)
    np.testing.assert_array_equal(b.counts, a.counts)
    np.testing.assert_array_equal(b.stats, a.stats)
    np.testing.assert_array_equal(b.v, a.v)


@SOME
@given(layer=layers(max_steps=12), dtype=DTYPES, seed=SEEDS)
def test_signed_if_invariants(layer, dtype, seed):
    """N(t) >= 0 always, and each step at most one event (count +-1) per neuron."""
    rng = np.random.default_rng(seed)
    n_batch, n_steps, n_channels, n_neurons, bounds = layer
    # Alternating-sign input drives both positive and negative spikes.
    sign = np.where(np.arange(n_steps) % 2, -1, 1)[None, :, None]
    inputs = (rng.normal(0, 1.5, (n_batch, n_steps, n_neurons)) * sign).astype(dtype)
    theta = rng.uniform(0.3, 1.5, n_channels).astype(dtype)
    v0 = (ref.per_neuron(theta, n_neurons) / 2).astype(dtype)
    # part_events_to_dense checks unique, increasing indices per part and step
    counts = run_neurons("signed", inputs, v0, theta, NEG_THRESHOLD, bounds).counts
    assert np.all(np.abs(counts) <= 1)
    assert np.cumsum(counts, axis=1).min() >= 0
    assume((counts < 0).any())


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


def check_qcfs(kind, tau, n_steps, dtype, seed, n_channels=3, n_pixels=200, n_batch=2):
    rng = np.random.default_rng(seed)
    n_neurons = n_channels * n_pixels
    theta = rng.uniform(0.5, 2.0, n_channels).astype(dtype)
    unit = (theta / dtype(tau)).astype(dtype)
    unit_n = ref.per_neuron(unit, n_neurons).astype(np.float64)
    lam = tau * unit_n  # exact: tau is a small integer; lambda = theta
    z = (rng.uniform(-0.3, 1.3, (n_batch, n_neurons)) * lam).astype(dtype)
    current = np.ascontiguousarray(np.repeat(z[:, None, :], n_steps, axis=1))  # constant input
    v0 = (unit_n / 2).astype(dtype)
    option = False if kind == "if" else tau
    total = run_neurons(kind, current, v0, unit, option).counts.sum(axis=1)

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
# Parts: results independent of P; join_parts; optional v_final
# --------------------------------------------------------------------------------------------

@SOME
@given(layer=layers(max_pixels=16, max_parts=6), kind=st.sampled_from(["if", "gn", "signed"]),
       dtype=DTYPES, seed=SEEDS)
def test_parts_and_join(layer, kind, dtype, seed):
    rng = np.random.default_rng(seed)
    n_batch, n_steps, n_channels, n_neurons, bounds = layer
    current, v0, theta = neuron_inputs(rng, dtype, layer, scale=1.5)
    option = {"if": False, "gn": 3, "signed": NEG_THRESHOLD}[kind]
    fanout = rng.integers(0, 9, n_neurons).astype(np.int64)
    whole = run_neurons(kind, current, v0, theta, option, None, fanout)
    parts = run_neurons(kind, current, v0, theta, option, bounds, fanout)
    np.testing.assert_array_equal(parts.counts, whole.counts)
    np.testing.assert_array_equal(parts.v, whole.v)
    np.testing.assert_array_equal(parts.nev.sum(axis=2), whole.nev[:, :, 0])
    np.testing.assert_array_equal(parts.stats.sum(axis=2), whole.stats[:, :, 0])

    # join_parts: same events as one part, and as the twin's concatenation of the segments
    want_idx, want_cnt, want_nev = ref.join_parts_ref(parts.ev_idx, parts.ev_cnt, parts.nev, bounds)
    nev = np.full((n_batch, n_steps), -1, np.int64)
    join_parts(parts.ev_idx, parts.ev_cnt, parts.nev, bounds, nev)
    np.testing.assert_array_equal(nev, want_nev)
    np.testing.assert_array_equal(nev, whole.nev[:, :, 0])
    assert_same_events((parts.ev_idx, parts.ev_cnt), (want_idx, want_cnt), nev)
    assert_same_events((parts.ev_idx, parts.ev_cnt), (whole.ev_idx, whole.ev_cnt), nev)

    # a (0, N) v_final skips the write and changes nothing else
    no_v = run_neurons(kind, current, v0, theta, option, bounds, fanout, write_v=False)
    assert no_v.v.shape == (0, n_neurons)
    np.testing.assert_array_equal(no_v.counts, whole.counts)
    np.testing.assert_array_equal(no_v.stats, parts.stats)


# ============================================================================================
# Scatter kernels (items = B*T rows)
# ============================================================================================

@pytest.mark.parametrize("n_rows", [1, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fill_rows_matches_twin(n_rows, dtype):
    rng = np.random.default_rng(n_rows)
    base = rng.standard_normal((n_rows, 7)).astype(dtype)
    current = np.full((3, 4, 7), np.nan, dtype)
    fill_rows(current, base)
    np.testing.assert_array_equal(current, ref.fill_rows_ref(base, 3, 4))


@st.composite
def conv_geometries(draw):
    """General convolution: groups, dilation, stride, padding, crop; out sizes PyTorch's +-1."""
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


def conv_geometry_args(g):
    """Positional geometry of scatter_conv / scatter_conv_ref."""
    return (g["src_h"], g["src_w"], g["src_c"], g["crop_h"], g["crop_w"],
            g["out_h"], g["out_w"], g["out_c"], g["k_h"], g["k_w"],
            g["stride_h"], g["stride_w"], g["pad_h"], g["pad_w"],
            g["dil_h"], g["dil_w"], g["groups"])


def direct_conv(counts, weight_oihw, g):
    """conv2d_direct_ref with the geometry dict ``g``."""
    return ref.conv2d_direct_ref(
        counts, weight_oihw, g["src_h"], g["src_w"], g["src_c"], g["crop_h"], g["crop_w"],
        g["out_h"], g["out_w"], g["stride_h"], g["stride_w"], g["pad_h"], g["pad_w"],
        g["dil_h"], g["dil_w"], g["groups"])


@pytest.mark.parametrize("payload, dtype", PAYLOAD_CASES)
@settings(deadline=None, max_examples=30)
@given(geo=conv_geometries(), n_items=st.integers(1, 4), seed=SEEDS)
def test_scatter_conv_matches_twins(payload, dtype, geo, n_items, seed):
    rng = np.random.default_rng(seed)
    g = geo
    n_src = g["src_h"] * g["src_w"] * g["src_c"]
    n_dst = g["out_h"] * g["out_w"] * g["out_c"]
    weight_oihw = rng.standard_normal(
        (g["out_c"], g["src_c"] // g["groups"], g["k_h"], g["k_w"])).astype(dtype)
    weight = ref.conv_weight_to_kernel_layout(weight_oihw, g["groups"])
    counts, events = random_payloads(rng, payload, (n_items, n_src), dtype)
    current0 = rng.standard_normal((n_items, n_dst)).astype(dtype)

    current = current0.copy()
    scatter_conv(*events, weight, current, *conv_geometry_args(g))
    scale = 1 + np.abs(current0).max() + direct_conv(np.abs(counts), np.abs(weight_oihw), g).max()
    assert_close(current, ref.scatter_conv_ref(counts, weight, current0, *conv_geometry_args(g)), dtype, scale)
    assert_close(current, current0.astype(np.float64) + direct_conv(counts, weight_oihw, g), dtype, scale)


@st.composite
def conv_rows_geometries(draw):
    """scatter_conv_rows: groups 1, dilation 1, optional sum pooling in front of the conv."""
    geo = dict(
        src_h=draw(st.integers(1, 8)), src_w=draw(st.integers(1, 8)),
        src_c=draw(st.integers(1, 3)), out_c=draw(st.integers(1, 3)),
        pool_h=draw(st.sampled_from([1, 1, 2, 3])), pool_w=draw(st.sampled_from([1, 1, 2, 3])),
        k_h=draw(st.integers(1, 4)), k_w=draw(st.integers(1, 4)),
        stride_h=draw(st.integers(1, 3)), stride_w=draw(st.integers(1, 3)),
        pad_h=draw(st.integers(0, 2)), pad_w=draw(st.integers(0, 2)),
    )
    geo["crop_h"] = draw(st.integers(1, geo["src_h"]))
    geo["crop_w"] = draw(st.integers(1, geo["src_w"]))
    for a in ("h", "w"):
        grid = -(-geo["crop_" + a] // geo["pool_" + a])  # pooled grid: ceil(crop / pool)
        size = (grid + 2 * geo["pad_" + a] - geo["k_" + a]) // geo["stride_" + a] + 1
        geo["out_" + a] = max(1, size + draw(st.sampled_from([0, 0, 0, -1, 1])))
    # bands of output rows split an item's work; any number up to out_h gives the same result
    geo["n_bands"] = draw(st.integers(1, geo["out_h"]))
    # blocks of source channels are scattered one after the other; any size gives the same result
    geo["c_block"] = draw(st.integers(1, geo["src_c"]))
    return geo


def call_conv_rows(events, weight, current, g):
    """scatter_conv_rows with the geometry dict ``g`` (the one place that knows its signature)."""
    rows, taps_y, taps_x = conv_rows_layout(weight, g["stride_h"], g["stride_w"])
    scatter_conv_rows(*events, rows, taps_y, taps_x, current,
                      g["src_w"], g["src_c"], g["crop_h"], g["crop_w"], g["pool_h"], g["pool_w"],
                      g["out_h"], g["out_w"], g["out_c"],
                      g["stride_h"], g["stride_w"], g["pad_h"], g["pad_w"], g.get("n_bands", 1),
                      g.get("c_block", g["src_c"]))


@pytest.mark.parametrize("payload, dtype", PAYLOAD_CASES)
@settings(deadline=None, max_examples=40)
@given(geo=conv_rows_geometries(), n_items=st.integers(1, 4), seed=SEEDS)
def test_scatter_conv_rows_matches_twins(payload, dtype, geo, n_items, seed):
    """Twin: sum-pool the cropped source over pool blocks, then the plain convolution on the
    ceil(crop/pool) grid (scatter form and direct gather form)."""
    rng = np.random.default_rng(seed)
    g = geo
    n_src = g["src_h"] * g["src_w"] * g["src_c"]
    n_dst = g["out_h"] * g["out_w"] * g["out_c"]
    weight_oihw = rng.standard_normal((g["out_c"], g["src_c"], g["k_h"], g["k_w"])).astype(dtype)
    weight = ref.conv_weight_to_kernel_layout(weight_oihw, 1)
    counts, events = random_payloads(rng, payload, (n_items, n_src), dtype)
    current0 = rng.standard_normal((n_items, n_dst)).astype(dtype)

    current = current0.copy()
    call_conv_rows(events, weight, current, g)

    pool = (g["src_h"], g["src_w"], g["src_c"], g["crop_h"], g["crop_w"], g["pool_h"], g["pool_w"])
    pooled, grid_h, grid_w = ref.sum_pool_ref(counts, *pool)
    abs_pooled = ref.sum_pool_ref(np.abs(counts), *pool)[0]
    on_grid = dict(g, src_h=grid_h, src_w=grid_w, crop_h=grid_h, crop_w=grid_w, dil_h=1, dil_w=1, groups=1)
    scale = 1 + np.abs(current0).max() + direct_conv(abs_pooled, np.abs(weight_oihw), on_grid).max()
    assert_close(current, ref.scatter_conv_ref(pooled, weight, current0, *conv_geometry_args(on_grid)),
                 dtype, scale)
    assert_close(current, current0.astype(np.float64) + direct_conv(pooled, weight_oihw, on_grid), dtype, scale)


@pytest.mark.parametrize("kernel", ["conv", "conv_rows", "conv_rows_pooled"])
def test_scatter_conv_single_event_hits_pytorch_positions(kernel):
    """One unit event at (y, x) = (2, 3) of a 5x5 source, 3x3 kernel, pad 1, stride 1:
    output (oy, ox) receives w[ky, kx] with oy = y + 1 - ky, i.e. the kernel flipped around.
    Pooled: source 10x10 with 2x2 sum pooling, the event at (5, 7) lies in block (2, 3)."""
    weight = np.arange(9, dtype=np.float64).reshape(3, 3, 1, 1)
    current = np.zeros((1, 25))
    if kernel == "conv":
        events = ref.dense_to_events(np.eye(1, 25, 2 * 5 + 3, dtype=np.int8))
        scatter_conv(*events, weight, current, 5, 5, 1, 5, 5, 5, 5, 1, 3, 3, 1, 1, 1, 1, 1, 1, 1)
    else:
        pool = 2 if kernel == "conv_rows_pooled" else 1
        size = 5 * pool
        y, x = 2 * pool + pool - 1, 3 * pool + pool - 1  # (2, 3), or (5, 7) in block (2, 3)
        event = np.eye(1, size * size, y * size + x, dtype=np.int8)
        geo = dict(src_w=size, src_c=1, crop_h=size, crop_w=size, pool_h=pool, pool_w=pool,
                   out_h=5, out_w=5, out_c=1, stride_h=1, stride_w=1, pad_h=1, pad_w=1)
        call_conv_rows(ref.dense_to_events(event), weight, current, geo)
    expected = np.zeros((5, 5))
    expected[1:4, 2:5] = weight[::-1, ::-1, 0, 0]
    np.testing.assert_array_equal(current.reshape(5, 5), expected)


@pytest.mark.parametrize("payload, dtype", PAYLOAD_CASES)
@FEW
@given(n_items=st.integers(1, 4), n_neurons=st.integers(1, 40), seed=SEEDS)
def test_scatter_diagonal_matches_twin(payload, dtype, n_items, n_neurons, seed):
    """Residual shortcut: neuron n of the source feeds neuron n of the target."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal(n_neurons).astype(dtype)
    counts, events = random_payloads(rng, payload, (n_items, n_neurons), dtype)
    current0 = rng.standard_normal((n_items, n_neurons)).astype(dtype)
    current = current0.copy()
    scatter_diagonal(*events, weight, current)
    scale = 1 + np.abs(current0).max() + (np.abs(counts).astype(np.float64) * np.abs(weight)).max()
    assert_close(current, ref.scatter_diagonal_ref(counts, weight, current0), dtype, scale)


@pytest.mark.parametrize("payload, dtype", PAYLOAD_CASES)
@FEW
@given(n_items=st.integers(1, 4), n_src=st.integers(1, 30), n_dst=st.integers(1, 30), seed=SEEDS)
def test_scatter_dense_matches_twin(payload, dtype, n_items, n_src, n_dst, seed):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((n_src, n_dst)).astype(dtype)
    counts, events = random_payloads(rng, payload, (n_items, n_src), dtype)
    current0 = rng.standard_normal((n_items, n_dst)).astype(dtype)
    current = current0.copy()
    scatter_dense(*events, weight, current)
    scale = 1 + np.abs(current0).max() + (np.abs(counts).astype(np.float64) @ np.abs(weight)).max()
    assert_close(current, ref.scatter_dense_ref(counts, weight, current0), dtype, scale)


# the engine stores int64 indptr/indices; the kernel also accepts scipy's int32
@pytest.mark.parametrize("payload, dtype, index_dtype",
                         [case + (np.int64,) for case in PAYLOAD_CASES] + [("int8", np.float32, np.int32)])
@FEW
@given(n_items=st.integers(1, 4), n_src=st.integers(1, 30), n_dst=st.integers(1, 30), seed=SEEDS)
def test_scatter_csr_matches_twin(payload, dtype, index_dtype, n_items, n_src, n_dst, seed):
    rng = np.random.default_rng(seed)
    row_lengths = rng.integers(0, n_dst + 2, n_src)  # > n_dst forces duplicate columns
    indptr = np.concatenate([[0], np.cumsum(row_lengths)]).astype(index_dtype)
    indices = rng.integers(0, n_dst, indptr[-1]).astype(index_dtype)
    data = rng.standard_normal(indptr[-1]).astype(dtype)
    counts, events = random_payloads(rng, payload, (n_items, n_src), dtype)
    current0 = rng.standard_normal((n_items, n_dst)).astype(dtype)
    current = current0.copy()
    scatter_csr(*events, indptr, indices, data, current)
    abs_dense = ref.csr_to_dense(indptr, indices, np.abs(data), n_dst)
    scale = 1 + np.abs(current0).max() + (np.abs(counts).astype(np.float64) @ abs_dense).max()
    assert_close(current, ref.scatter_csr_ref(counts, indptr, indices, data, current0), dtype, scale)


# ============================================================================================
# Max-pooling gate and event statistics
# ============================================================================================

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


def pool_geometry_args(g):
    return (g["src_h"], g["src_w"], g["src_c"], g["out_h"], g["out_w"], g["k_h"], g["k_w"],
            g["stride_h"], g["stride_w"], g["pad_h"], g["pad_w"])


def run_gate(counts, cum, geometry, count_dtype):
    """maxpool_gate on dense (B, T, N_src) counts; returns dense (B, T, N_out) output counts."""
    n_batch, n_steps, _ = counts.shape
    n_out = geometry[3] * geometry[4] * geometry[2]
    out_idx = np.full((n_batch, n_steps, n_out), -1, np.int32)
    out_cnt = np.zeros((n_batch, n_steps, n_out), count_dtype)
    out_nev = np.full((n_batch, n_steps), -1, np.int64)
    maxpool_gate(*ref.dense_to_events(counts), cum, *geometry, out_idx, out_cnt, out_nev)
    return ref.events_to_dense(out_idx, out_cnt, out_nev, n_out)  # checks: sorted, unique


@settings(deadline=None, max_examples=40)
@given(geo=pool_geometries(), n_batch=st.integers(1, 3), n_steps=st.integers(1, 6),
       signed=st.booleans(), seed=SEEDS, data=st.data())
def test_maxpool_gate_matches_twin(geo, n_batch, n_steps, signed, seed, data):
    """T steps in two calls: cum carries the accumulated counts from one call to the next.

    int8 events only (the engine's default; int32 differs only in the stored dtype and would
    cost one more JIT specialisation)."""
    rng = np.random.default_rng(seed)
    geometry = pool_geometry_args(geo)
    n_src = geo["src_h"] * geo["src_w"] * geo["src_c"]
    # Small positive counts make ties (first-wins rule) frequent; signed adds -1 events.
    counts = random_counts(rng, (n_batch, n_steps, n_src), density=0.4,
                           low=-1 if signed else 1, high=3, dtype=np.int8)
    split = data.draw(st.integers(0, n_steps))
    cum = np.zeros((n_batch, n_src), np.int32)
    cum_ref = cum.copy()
    for chunk in (counts[:, :split], counts[:, split:]):
        got = run_gate(chunk, cum, geometry, np.int8)
        want, cum_ref = ref.maxpool_gate_ref(chunk, cum_ref, *geometry)
        np.testing.assert_array_equal(cum, cum_ref)
        np.testing.assert_array_equal(got, want)


def test_maxpool_gate_overlapping_windows_sorted():
    """3x3 windows with stride 1 on a 6x6 map: one event feeds up to 9 windows, out of order."""
    rng = np.random.default_rng(0)
    geometry = (6, 6, 2, 6, 6, 3, 3, 1, 1, 1, 1)
    counts = random_counts(rng, (2, 5, 72), density=0.7, low=1, high=4, dtype=np.int8)
    cum = np.zeros((2, 72), np.int32)
    got = run_gate(counts, cum, geometry, np.int8)
    want, cum_ref = ref.maxpool_gate_ref(counts, np.zeros((2, 72), np.int32), *geometry)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(cum, cum_ref)
    assert got.any()


@FEW
@given(n_items=st.integers(1, 6), n_src=st.integers(1, 40),
       count_dtype=st.sampled_from([np.int8, np.int32]), seed=SEEDS)
def test_event_stats_matches_twin(n_items, n_src, count_dtype, seed):
    """Full count range of the dtype (int8 -128 must not overflow in |k|)."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(count_dtype)
    fanout = rng.integers(0, 100, n_src).astype(np.int64)
    out = rng.integers(0, 1000, (n_items, 3)).astype(np.int64)
    expected = out.copy()
    for _ in range(3):
        counts = random_counts(rng, (n_items, n_src), low=max(info.min, -300), high=min(info.max, 300) + 1,
                               dtype=count_dtype)
        event_stats(*ref.dense_to_events(counts), fanout, out)
        expected = ref.event_stats_ref(counts, fanout, expected)
    np.testing.assert_array_equal(out, expected)


@FEW
@given(n_batch=st.integers(1, 3), n_steps=st.integers(1, 6), n_src=st.integers(1, 40),
       count_dtype=st.sampled_from([np.int8, np.int32]), seed=SEEDS)
def test_accumulate_counts_matches_twin(n_batch, n_steps, n_src, count_dtype, seed):
    rng = np.random.default_rng(seed)
    counts = random_counts(rng, (n_batch, n_steps, n_src), low=-128, high=128, dtype=count_dtype)
    totals = rng.integers(-50, 50, (n_batch, n_src)).astype(np.int64)
    expected = ref.accumulate_counts_ref(counts, totals)
    accumulate_counts(*ref.dense_to_events(counts), totals)
    np.testing.assert_array_equal(totals, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_events_touch_nothing(dtype):
    """nev = 0 (slots past nev are poisoned): currents, cum and totals unchanged, nothing counted."""
    n_batch, n_steps = 2, 3
    zeros = np.zeros((n_batch, n_steps, 8), np.int8)  # a 2x2x2 HWC population
    ev_idx, ev_cnt, nev = ref.dense_to_events(zeros)
    items = (ev_idx.reshape(n_batch * n_steps, 8), ev_cnt.reshape(n_batch * n_steps, 8), nev.reshape(-1))
    current = np.ones((n_batch * n_steps, 8), dtype)
    scatter_dense(*items, np.ones((8, 8), dtype), current)
    scatter_diagonal(*items, np.ones(8, dtype), current)
    scatter_csr(*items, np.arange(9, dtype=np.int64), np.arange(8, dtype=np.int64), np.ones(8, dtype), current)
    scatter_conv(*items, np.ones((1, 1, 2, 2), dtype), current, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 1, 1, 1)
    geo = dict(src_w=2, src_c=2, crop_h=2, crop_w=2, pool_h=1, pool_w=1, out_h=2, out_w=2, out_c=2,
               stride_h=1, stride_w=1, pad_h=0, pad_w=0)
    call_conv_rows(items, np.ones((1, 1, 2, 2), dtype), current, geo)
    np.testing.assert_array_equal(current, 1)

    stats = np.zeros((n_batch * n_steps, 3), np.int64)
    event_stats(*items, np.ones(8, np.int64), stats)
    np.testing.assert_array_equal(stats, 0)
    totals = np.zeros((n_batch, 8), np.int64)
    accumulate_counts(ev_idx, ev_cnt, nev, totals)
    np.testing.assert_array_equal(totals, 0)
    cum = np.zeros((n_batch, 8), np.int32)
    gated = run_gate(zeros, cum, (2, 2, 2, 1, 1, 2, 2, 2, 2, 0, 0), np.int8)
    np.testing.assert_array_equal(gated, 0)
    np.testing.assert_array_equal(cum, 0)
