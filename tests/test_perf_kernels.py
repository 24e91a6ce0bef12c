"""The performance kernels of issue 19 against their NumPy twins (tests/reference.py), exactly.

* the output-stationary convolution (:mod:`evsim._kernels.gather`, SIMD accumulators) equals its
  twin bit for bit in both dtypes, for every geometry, chunk tail, payload and initial current;
* the explicit vector intrinsics do, lane by lane, what the scalar code does;
* whole networks simulated with the gather kernel equal the dense reference simulator spike for
  spike (float64), like the scatter kernel.
"""
import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
from evsim._kernels.gather import aligned, chunk_width, event_segments, gather_conv, gather_layout
from evsim._kernels.simd import vadd, vload, vscale, vstore, vzeros

SEEDS = st.integers(0, 2**32 - 1)
SOME = settings(deadline=None, max_examples=40)


def payloads(rng, kind, shape, dtype, density=0.3):
    """Dense counts (items, N) and their event lists: int8 / int32 spike counts or float payloads."""
    mask = rng.random(shape) < density
    if kind == "float":
        counts = np.where(mask, rng.standard_normal(shape), 0).astype(dtype)
    else:
        counts = (mask * rng.integers(-3, 4, shape)).astype(kind)
    return counts, ref.dense_to_events(counts)


@st.composite
def gather_geometries(draw):
    pool_h, pool_w = draw(st.sampled_from([1, 1, 2, 3])), draw(st.sampled_from([1, 1, 2, 3]))
    geo = dict(src_h=draw(st.integers(1, 9)), src_w=draw(st.integers(1, 9)), src_c=draw(st.integers(1, 20)),
               out_c=draw(st.sampled_from([1, 3, 15, 16, 17, 32, 40, 64, 65, 100])),
               pool_h=pool_h, pool_w=pool_w, k_h=draw(st.integers(1, 4)), k_w=draw(st.integers(1, 4)),
               stride_h=draw(st.integers(1, 3)), stride_w=draw(st.integers(1, 3)),
               pad_h=draw(st.integers(0, 2)), pad_w=draw(st.integers(0, 2)))
    geo["crop_h"] = draw(st.integers(1, geo["src_h"]))
    geo["crop_w"] = draw(st.integers(1, geo["src_w"]))
    for a in ("h", "w"):
        grid = -(-geo["crop_" + a] // geo["pool_" + a])
        geo["grid_" + a] = grid
        size = (grid + 2 * geo["pad_" + a] - geo["k_" + a]) // geo["stride_" + a] + 1
        geo["out_" + a] = max(1, size + draw(st.sampled_from([0, 0, -1, 1])))
    geo["n_bands"] = draw(st.integers(1, geo["out_h"]))
    return geo


def run_gather(events, weight, init, per_row, n_items, g, dtype):
    ev_idx, ev_cnt, nev = events
    seg = np.full((n_items, g["src_h"] * g["src_w"] + 1), -7, np.int64)
    event_segments(ev_idx, nev, g["src_c"], seg)
    current = np.full((n_items, g["out_h"] * g["out_w"] * g["out_c"]), np.nan, dtype)
    if init is None:  # accumulate onto the current itself
        current[:] = per_row
        init, per_row = current, 1
    gather_conv(ev_idx, ev_cnt, nev, seg, gather_layout(weight), init, per_row, current, g["src_w"], g["src_c"],
                g["crop_h"], g["crop_w"], g["pool_h"], g["pool_w"], g["grid_h"], g["grid_w"], g["out_h"], g["out_w"],
                g["out_c"], g["k_h"], g["k_w"], g["stride_h"], g["stride_w"], g["pad_h"], g["pad_w"], g["n_bands"])
    return current


def twin(counts, weight, init, per_row, g):
    return ref.gather_conv_ref(counts, weight, init, per_row, g["src_h"], g["src_w"], g["src_c"], g["crop_h"],
                               g["crop_w"], g["pool_h"], g["pool_w"], g["out_h"], g["out_w"], g["out_c"], g["k_h"],
                               g["k_w"], g["stride_h"], g["stride_w"], g["pad_h"], g["pad_w"])


@pytest.mark.parametrize("payload, dtype", [("int8", np.float32), ("int8", np.float64), ("int32", np.float32),
                                            ("float", np.float32), ("float", np.float64)])
@SOME
@given(geo=gather_geometries(), n_batch=st.integers(1, 3), n_steps=st.integers(1, 3), rows=st.sampled_from([1, 0]),
       seed=SEEDS)
def test_gather_conv_equals_twin_exactly(payload, dtype, geo, n_batch, n_steps, rows, seed):
    """Bit-identical to the twin: from a constant current of 1 or B rows (the fused pre-load)."""
    rng = np.random.default_rng(seed)
    g = geo
    n_items = n_batch * n_steps
    counts, events = payloads(rng, payload, (n_items, g["src_h"] * g["src_w"] * g["src_c"]), dtype)
    weight = rng.standard_normal((g["k_h"], g["k_w"], g["src_c"], g["out_c"])).astype(dtype)
    init = rng.standard_normal((rows or n_batch, g["out_h"] * g["out_w"] * g["out_c"])).astype(dtype)
    got = run_gather(events, weight, init, n_steps, n_items, g, dtype)
    np.testing.assert_array_equal(got, twin(counts, weight, init, n_steps, g))


@SOME
@given(geo=gather_geometries(), n_items=st.integers(1, 4), dtype=st.sampled_from([np.float32, np.float64]),
       seed=SEEDS)
def test_gather_conv_accumulates_onto_the_current(geo, n_items, dtype, seed):
    """``init`` = the current itself (a second projection into the same target)."""
    rng = np.random.default_rng(seed)
    g = geo
    counts, events = payloads(rng, "int8", (n_items, g["src_h"] * g["src_w"] * g["src_c"]), dtype)
    weight = rng.standard_normal((g["k_h"], g["k_w"], g["src_c"], g["out_c"])).astype(dtype)
    start = dtype(rng.standard_normal())
    got = run_gather(events, weight, None, start, n_items, g, dtype)
    init = np.full((n_items, g["out_h"] * g["out_w"] * g["out_c"]), start, dtype)
    np.testing.assert_array_equal(got, twin(counts, weight, init, 1, g))


@settings(deadline=None, max_examples=25)
@given(geo=gather_geometries(), n_items=st.integers(1, 3), seed=SEEDS)
def test_gather_conv_is_the_convolution(geo, n_items, seed):
    """Independent of the event formulation: sum-pool the cropped source, then PyTorch conv2d (float64)."""
    rng = np.random.default_rng(seed)
    g = geo
    counts, events = payloads(rng, "int8", (n_items, g["src_h"] * g["src_w"] * g["src_c"]), np.float64)
    weight_oihw = rng.standard_normal((g["out_c"], g["src_c"], g["k_h"], g["k_w"]))
    weight = ref.conv_weight_to_kernel_layout(weight_oihw, 1)
    got = run_gather(events, weight, np.zeros((1, g["out_h"] * g["out_w"] * g["out_c"])), 1, n_items, g, np.float64)
    pooled, grid_h, grid_w = ref.sum_pool_ref(counts, g["src_h"], g["src_w"], g["src_c"], g["crop_h"], g["crop_w"],
                                              g["pool_h"], g["pool_w"])
    want = ref.conv2d_direct_ref(pooled, weight_oihw, grid_h, grid_w, g["src_c"], grid_h, grid_w, g["out_h"],
                                 g["out_w"], g["stride_h"], g["stride_w"], g["pad_h"], g["pad_w"], 1, 1, 1)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * (1 + np.abs(want).max()))


@settings(deadline=None, max_examples=30)
@given(n_items=st.integers(1, 4), pixels=st.integers(1, 30), channels=st.integers(1, 9), seed=SEEDS)
def test_event_segments(n_items, pixels, channels, seed):
    rng = np.random.default_rng(seed)
    counts = (rng.random((n_items, pixels * channels)) < rng.uniform(0, 1)).astype(np.int8)
    ev_idx, _, nev = ref.dense_to_events(counts)
    seg = np.full((n_items, pixels + 1), -1, np.int64)
    event_segments(ev_idx, nev, channels, seg)
    for i in range(n_items):
        pix = ev_idx[i, :nev[i]] // channels
        np.testing.assert_array_equal(seg[i], np.searchsorted(pix, np.arange(pixels + 1)))


def test_gather_layout_chunks_are_contiguous_and_aligned():
    w = np.arange(3 * 2 * 5 * 70, dtype=np.float32).reshape(3, 2, 5, 70)
    flat = gather_layout(w)
    assert flat.ctypes.data % 64 == 0 and flat.size == w.size
    width = chunk_width(70, 4)
    assert width == 64
    np.testing.assert_array_equal(flat[:3 * 2 * 5 * 64], w[..., :64].reshape(-1))
    np.testing.assert_array_equal(flat[3 * 2 * 5 * 64:], w[..., 64:].reshape(-1))
    assert aligned(np.ones(3)).ctypes.data % 64 == 0


# --------------------------------------------------------------------------- the intrinsics
@numba.njit
def _lanes16(a, b, k, out):
    x = vload(a, 1, 16)
    y = vload(b, 0, 16)
    vstore(out, 0, vadd(vscale(x, k), y))
    vstore(out, 16, vadd(vzeros(k, 16), x))


@numba.njit
def _lanes5(a, b, k, out):  # an odd width: LLVM legalises it, lanes stay exact
    vstore(out, 2, vadd(vscale(vload(a, 0, 5), k), vload(b, 3, 5)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_intrinsics_equal_scalar_arithmetic(dtype):
    rng = np.random.default_rng(3)
    a = rng.standard_normal(40).astype(dtype)
    b = rng.standard_normal(40).astype(dtype)
    k = dtype(rng.standard_normal())
    out = np.zeros(40, dtype)
    _lanes16(a, b, k, out)
    np.testing.assert_array_equal(out[:16], a[1:17] * k + b[:16])  # rounded product, then the sum
    np.testing.assert_array_equal(out[16:32], a[1:17])
    assert not out[32:].any()
    out[:] = 0
    _lanes5(a, b, k, out)
    np.testing.assert_array_equal(out[2:7], a[:5] * k + b[3:8])
    assert not out[:2].any() and not out[7:].any()


# --------------------------------------------------------------------------- whole networks
@settings(deadline=None, max_examples=12)
@given(seed=st.integers(0, 2**31 - 1), model=st.sampled_from(["if", "gn", "signed_if"]), maxpool=st.booleans(),
       kernel=st.sampled_from(["gather", "scatter"]))
def test_engine_with_each_conv_kernel_equals_dense_reference(seed, model, maxpool, kernel, monkeypatch_module):
    """Spike for spike (float64) with every conv projection on one kernel; the gather starts from the
    constant current (the pre-load is fused) when it is a target's first projection."""
    from evsim.compile import compile_network
    from evsim.engine import Simulator
    from netgen import random_inputs, random_network
    from reference import simulate_reference

    monkeypatch_module.setenv("EVSIM_CONV_KERNEL", kernel)
    graph = random_network(seed, activation=model, maxpool=maxpool)
    x = random_inputs(graph, 3, seed)
    T = 4
    want = simulate_reference(graph, x, T)
    net = compile_network(graph)
    r = Simulator(net, np.float64).run_batch(x, T, record=tuple(p.name for p in net.populations))
    np.testing.assert_array_equal(r.predictions, want["predictions"])
    np.testing.assert_allclose(r.logits, want["output"], rtol=1e-9, atol=1e-9)
    for p in net.populations:
        np.testing.assert_array_equal(r.recorded[p.name], want["counts"][p.name].sum(axis=0), err_msg=p.name)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp
