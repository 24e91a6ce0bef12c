"""The fast ANN executor (issue 19, item 0b) against plain NumPy definitions, and the dense path of
the simulation against the event path (float64, within rounding)."""
import importlib.resources as res

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

import reference as ref
from evsim import ann
from evsim.format import load

SOME = settings(deadline=None, max_examples=40)


def conv_einsum(x, weight, bias, stride, padding, dilation, groups):
    """The executor's former convolution: float64 einsum over a sliding-window view."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = weight.shape[2:], stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = sliding_window_view(xp, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    b, c, ho, wo = win.shape[:4]
    c_out, cig = weight.shape[:2]
    win = win.reshape(b, groups, cig, ho, wo, kh, kw)
    w = weight.reshape(groups, c_out // groups, cig, kh, kw)
    out = np.einsum("bgihwkl,goikl->bgohw", win, w).reshape(b, c_out, ho, wo)
    return out if bias is None else out + bias.reshape(1, -1, 1, 1)


@SOME
@given(seed=st.integers(0, 2**32 - 1), groups=st.integers(1, 3), k=st.integers(1, 4), stride=st.integers(1, 3),
       pad=st.integers(0, 2), dil=st.integers(1, 2), bias=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]))
def test_conv2d_equals_einsum(seed, groups, k, stride, pad, dil, bias, dtype):
    rng = np.random.default_rng(seed)
    c_in, c_out = groups * int(rng.integers(1, 4)), groups * int(rng.integers(1, 4))
    h, w = int(rng.integers(dil * (k - 1) + 1, 12)), int(rng.integers(dil * (k - 1) + 1, 12))
    x = rng.standard_normal((int(rng.integers(1, 5)), c_in, h, w))
    weight = rng.standard_normal((c_out, c_in // groups, k, k))
    b = rng.standard_normal(c_out) if bias else None
    got = ann.conv2d(x.astype(dtype), weight, b, (stride, stride), (pad, pad), (dil, dil), groups)
    want = conv_einsum(x, weight, b, (stride, stride), (pad, pad), (dil, dil), groups)
    assert got.dtype == dtype and got.shape == want.shape
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * (1 + np.abs(want).max()))


@SOME
@given(seed=st.integers(0, 2**32 - 1), levels=st.integers(1, 16), channelwise=st.booleans(), flat=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_qcfs_equals_numpy_expression_exactly(seed, levels, channelwise, flat, dtype):
    rng = np.random.default_rng(seed)
    shape = (3, 5) if flat else (3, 5, 4, 2)
    z = (rng.standard_normal(shape) * 2).astype(dtype)
    z.flat[:6] = [0.0, np.nan, np.inf, -np.inf, 1.0, 0.5]
    theta = rng.uniform(0.2, 2, 5 if channelwise else None)
    np.testing.assert_array_equal(ann.qcfs(z, np.asarray(theta), levels), ann.qcfs_numpy(z, np.asarray(theta), levels))


@SOME
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 3), stride=st.integers(1, 3), pad=st.integers(0, 1),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_pool_sum_and_channel_affine(seed, k, stride, pad, dtype):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, int(rng.integers(k, 9)), int(rng.integers(k, 9)))).astype(dtype)
    if 2 * pad > k:
        pad = 0
    got = ann.pool_sum(x, (k, k), (stride, stride), (pad, pad))
    want = ann.windows(x, (k, k), (stride, stride), (pad, pad)).sum(axis=(4, 5))
    np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == np.float32 else 1e-14, atol=1e-6)
    scale, shift = rng.standard_normal(3), rng.standard_normal(3)
    np.testing.assert_array_equal(ann.channel_affine(x, scale, shift),
                                  x * scale.astype(dtype).reshape(1, 3, 1, 1) + shift.astype(dtype).reshape(1, 3, 1, 1))


@pytest.fixture(scope="module")
def shipped():
    data = res.files("evsim.data")
    with np.load(data / "mnist_test.npz") as f:
        x, y = f["x"], f["y"]
    return load(str(data / "mnist_qcfs.npz")), x, y


def test_predict_float32_threads_and_source(shipped):
    """float32 in threads, float64 single-threaded, and a lazily read source: the same predictions
    on the shipped test set, and the accuracy recorded in the model file."""
    graph, x, y = shipped
    p64 = ann.predict(graph, x, batch_size=100, dtype=np.float64, threads=1)
    p32 = ann.predict(graph, x, batch_size=64, threads=2)
    np.testing.assert_array_equal(p32, p64)
    assert (p64 == y).mean() == pytest.approx(graph.metadata["test_accuracy"], abs=1e-9)

    class Source:  # read() is all the executor may use
        n, has_labels, reads = len(x), True, []

        def read(self, start, stop):
            self.reads.append((start, stop))
            return x[start:stop], y[start:stop]

    source = Source()
    assert ann.accuracy(graph, source, batch_size=300) == pytest.approx((p64 == y).mean())
    assert sorted(source.reads) == [(0, 300), (300, 600), (600, 900), (900, 1000)]
    with pytest.raises(Exception, match="labels"):
        ann.accuracy(graph, x)


def test_blas_threads_restores_the_count():
    libs = ann._blas_libraries()
    if not libs:
        pytest.skip("no BLAS library with a thread-count API is loaded in this process")
    before = [get() for _, get in libs]
    with ann.blas_threads(1):
        assert all(get() == 1 for _, get in libs)
    assert [get() for _, get in libs] == before


# --------------------------------------------------------------------------- dense path of the simulation
@settings(deadline=None, max_examples=10)
@given(seed=st.integers(0, 2**31 - 1), model=st.sampled_from(["if", "gn"]), kernel=st.sampled_from(["gather", "scatter"]))
def test_dense_path_equals_event_path(seed, model, kernel, monkeypatch_module):
    """Every projection forced dense (break-even 0) gives the event path's results within float64
    rounding: predictions and spike counts equal, logits to 1e-9."""
    import evsim.compile as C
    from evsim.compile import compile_network
    from evsim.engine import Simulator
    from netgen import random_inputs, random_network

    monkeypatch_module.setenv("EVSIM_CONV_KERNEL", kernel)
    graph = random_network(seed, activation=model)
    x = random_inputs(graph, 3, seed)
    net = compile_network(graph)
    pops = tuple(p.name for p in net.populations)
    monkeypatch_module.setenv("EVSIM_DENSE", "0")
    event = Simulator(net, np.float64).run_batch(x, 5, record=pops)
    monkeypatch_module.setenv("EVSIM_DENSE", "1")
    monkeypatch_module.setattr(C, "DENSE_BREAK_EVEN", {"conv": 0.0, "dense": 0.0})
    sim = Simulator(net, np.float64)
    sim.profile = {}
    dense = sim.run_batch(x, 5, record=pops)
    np.testing.assert_array_equal(dense.predictions, event.predictions)
    np.testing.assert_allclose(dense.logits, event.logits, rtol=1e-9, atol=1e-9)
    for p in pops:
        np.testing.assert_array_equal(dense.recorded[p], event.recorded[p])
    kinds = {p.kind for p in net.projections}
    if kinds & {"conv", "dense"}:  # the profile says which projections went dense
        assert any(phase.startswith("dense ") for _, phase in sim.profile)


def test_events_to_cols_is_im2col_of_the_counts():
    """The dense path's operand equals the executor's im2col of the (pooled) count image."""
    from evsim._kernels.dense import events_to_cols, im2col

    rng = np.random.default_rng(0)
    h, w, c = 6, 5, 3
    counts = (rng.random((2, h * w * c)) < 0.4) * rng.integers(1, 4, (2, h * w * c))
    ev = ref.dense_to_events(counts.astype(np.int8))
    cols = np.full((2, 6 * 5, 9 * c), np.nan)
    events_to_cols(*ev, 0, cols, w, c, h, w, 1, 1, h, w, 6, 5, 3, 3, 1, 1, 1, 1)
    image = counts.reshape(2, h, w, c).transpose(0, 3, 1, 2).astype(np.float64)  # channels first
    want = np.empty((2, c * 9, 30))
    im2col(image, 3, 3, 1, 1, 1, 1, 1, 1, 6, 5, want)  # rows (c, ky, kx), columns pixels
    want = want.reshape(2, c, 9, 30).transpose(0, 3, 2, 1).reshape(2, 30, 9 * c)  # -> (pixel, (ky, kx, c))
    np.testing.assert_array_equal(cols, want)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp
