"""Calibration (methods.md section 4): threshold statistics, data-driven potentials, bias calibration.

The statistics are checked against NumPy (``np.max``, ``np.percentile`` with its default
``linear`` method over the non-zero values); potential and bias calibration must lower
the per-channel rate error against the ANN at the calibrated T; a calibrated file must
simulate exactly like the graph that wrote it.
"""
import numpy as np
import pytest

import evsim
from evsim.ann import forward
from evsim.converters.calibration import (
    CalibrationWarning,
    Statistic,
    _bias_target,
    _channel_mean,
    _snn_rate,
    calibrate,
    parse_statistic,
    percentile_error_bound,
    threshold_statistics,
)
from evsim.convert import ConversionOptions
from evsim.errors import CalibrationError
from evsim.graph import Graph, InputSpec, Node, validate

RELUS = ["relu1", "relu2", "relu3"]
# fallback thresholds are expected on these tiny random networks; tests that check them use pytest.warns
pytestmark = pytest.mark.filterwarnings("ignore::evsim.converters.calibration.CalibrationWarning")


# --------------------------------------------------------------------------- small networks
def _conv(name, inp, cin, cout, rng, k=3, pad=1, bias=True):
    arrays = {"weight": rng.standard_normal((cout, cin, k, k)) * np.sqrt(2 / (cin * k * k))}
    if bias:
        arrays["bias"] = rng.standard_normal(cout) * 0.1
    return Node(name, "conv2d", (inp,), {"padding": pad}, arrays)


def _linear(name, inp, fin, fout, rng):
    return Node(name, "linear", (inp,), {}, {"weight": rng.standard_normal((fout, fin)) * np.sqrt(2 / fin),
                                             "bias": rng.standard_normal(fout) * 0.1})


def cnn(seed=0, c=6, hw=8):
    """conv-relu-conv-bn-relu-avgpool-flatten-linear-relu-linear, He-initialised."""
    rng = np.random.default_rng(seed)
    bn = {"mean": rng.standard_normal(c) * 0.1, "var": rng.random(c) + 0.5, "gamma": rng.random(c) + 0.5,
          "beta": rng.standard_normal(c) * 0.1}
    nodes = [_conv("conv1", "input", 3, c, rng), Node("relu1", "relu", ("conv1",)),
             _conv("conv2", "relu1", c, c, rng), Node("bn2", "batchnorm", ("conv2",), {"eps": 1e-5}, bn),
             Node("relu2", "relu", ("bn2",)), Node("pool", "avgpool2d", ("relu2",), {"kernel": 2}),
             Node("flat", "flatten", ("pool",)), _linear("fc1", "flat", c * (hw // 2) ** 2, 20, rng),
             Node("relu3", "relu", ("fc1",)), _linear("fc2", "relu3", 20, 5, rng)]
    return validate(Graph(InputSpec((3, hw, hw), scale=1 / 255), nodes, "fc2"))


def relu_on_input(features):
    """input (F,) -> relu -> linear: the relu records the raw input values exactly."""
    rng = np.random.default_rng(0)
    nodes = [Node("act", "relu", ("input",)), _linear("out", "act", features, 2, rng)]
    return validate(Graph(InputSpec((features,)), nodes, "out"))


def residual(shortcut_conv=False, bias=True):
    """conv1-relu1-conv2-relu2-conv3 + (relu1 or conv_sc(relu1)) -> add -> relu3 -> gap -> linear."""
    rng = np.random.default_rng(3)
    nodes = [_conv("conv1", "input", 3, 4, rng), Node("relu1", "relu", ("conv1",)),
             _conv("conv2", "relu1", 4, 4, rng), Node("relu2", "relu", ("conv2",)),
             _conv("conv3", "relu2", 4, 4, rng, bias=bias)]
    short = "relu1"
    if shortcut_conv:
        nodes.append(_conv("conv_sc", "relu1", 4, 4, rng, k=1, pad=0))
        short = "conv_sc"
    nodes += [Node("add", "add", ("conv3", short)), Node("relu3", "relu", ("add",)),
              Node("gap", "global_avgpool", ("relu3",)), _linear("fc", "gap", 4, 3, rng)]
    return validate(Graph(InputSpec((3, 6, 6)), nodes, "fc"))


def qcfs_net(per_channel=True):
    rng = np.random.default_rng(5)
    lam = np.array([0.5, 1.0, 1.5, 2.0]) if per_channel else np.array(1.2)
    nodes = [_conv("conv1", "input", 3, 4, rng), Node("q1", "qcfs", ("conv1",), {"levels": 4}, {"threshold": lam}),
             Node("flat", "flatten", ("q1",)), _linear("fc", "flat", 4 * 36, 3, rng)]
    return validate(Graph(InputSpec((3, 6, 6)), nodes, "fc"))


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(1).integers(0, 256, size=(150, 3, 8, 8)).astype(np.uint8)


def reference_statistic(values, statistic, channelwise, include_zeros):
    """NumPy reference: np.max, or np.percentile (method 'linear') over the non-zero values."""
    groups = np.moveaxis(values, 1, 0).reshape(values.shape[1], -1) if channelwise else values.reshape(1, -1)
    out = []
    for v in groups:
        kept = v if include_zeros else v[v != 0]
        if not np.any(v > 0):
            out.append(0.0)
        elif statistic == "max":
            out.append(np.max(kept))
        else:
            out.append(np.percentile(kept, float(statistic[1:]), method="linear"))
    return np.array(out) if channelwise else np.array(out[0])


def rate_error(snn, ann, x, T):
    """Mean over populations and channels of |mean_{n,h,w} r/T - mean_{n,h,w} a|."""
    ann_values = forward(ann, x, wanted=RELUS)
    return np.mean([np.abs(_channel_mean(_snn_rate(snn, name, x, T) - ann_values[name])).mean()
                    for name in RELUS])


# --------------------------------------------------------------------------- threshold statistics
@pytest.mark.parametrize("statistic", ["max", "p99.9", "p50"])
@pytest.mark.parametrize("channelwise", [False, True])
@pytest.mark.parametrize("include_zeros", [False, True])
def test_statistics_equal_numpy(data, statistic, channelwise, include_zeros):
    graph = cnn()
    stats = threshold_statistics(graph, data, statistic, channelwise=channelwise, include_zeros=include_zeros,
                                 batch_size=23)  # streamed over 7 uneven batches
    values = forward(graph, data, wanted=RELUS)
    for name in RELUS:
        assert stats.estimator[name] == "exact"
        want = reference_statistic(values[name], statistic, channelwise, include_zeros)
        assert stats.values[name].shape == want.shape
        np.testing.assert_allclose(stats.values[name], want, rtol=1e-13, atol=0)
        assert np.all(stats.thresholds[name] > 0)


@pytest.mark.parametrize("channelwise", [False, True])
@pytest.mark.parametrize("include_zeros", [False, True])
def test_histogram_estimate_within_documented_bound(data, channelwise, include_zeros):
    graph = cnn()
    values = forward(graph, data, wanted=RELUS)
    bound = percentile_error_bound()
    for statistic in ["p99.9", "p99", "p50", "max"]:
        stats = threshold_statistics(graph, data, statistic, channelwise=channelwise, include_zeros=include_zeros,
                                     batch_size=40, exact_budget=0)
        for name in RELUS:
            assert stats.estimator[name] == "histogram"
            want = reference_statistic(values[name], statistic, channelwise, include_zeros)
            if statistic == "max":
                # tracked exactly (rtol: the executor's rounding depends on the batch size)
                np.testing.assert_allclose(stats.values[name], want, rtol=1e-13, atol=0)
            else:
                assert np.all(np.abs(stats.values[name] - want) <= bound * want * (1 + 1e-9))


def test_histogram_window_slides_over_octaves():
    # log-uniform values over 2^-50 .. 2^10, growing batch by batch: the window slides and
    # the smallest values fall into the underflow bin
    rng = np.random.default_rng(7)
    x = np.sort(2.0 ** rng.uniform(-50, 10, size=(400, 16)), axis=0) * np.where(rng.random((400, 16)) < 0.3, -1, 1)
    graph = relu_on_input(16)
    for q in [99.9, 90, 50, 10]:
        got = threshold_statistics(graph, x, f"p{q}", batch_size=50, exact_budget=0).values["act"]
        want = np.percentile(x[x > 0], q)
        if want > x.max() * 2.0 ** -31:  # above the underflow bin: relative bound
            assert abs(got - want) <= percentile_error_bound() * want
        else:
            assert abs(got - want) <= x.max() * 2.0 ** -31
    exact = threshold_statistics(graph, x, "p50", batch_size=50).values["act"]
    np.testing.assert_allclose(exact, np.percentile(x[x > 0], 50), rtol=1e-13)


def test_budget_switches_to_histogram_midway(data):
    graph = cnn()
    stats = threshold_statistics(graph, data, "p99.9", batch_size=10, exact_budget=30_000)
    assert set(stats.estimator.values()) == {"histogram"}
    values = forward(graph, data, wanted=RELUS)
    for name in RELUS:
        want = reference_statistic(values[name], "p99.9", False, False)
        assert abs(stats.values[name] - want) <= percentile_error_bound() * want


def test_parse_statistic():
    assert parse_statistic("max") == Statistic("max", "max")
    assert parse_statistic("p99.99") == Statistic("p99.99", "percentile", 99.99)
    assert parse_statistic("P100").q == 100.0
    for bad in ["p0", "p100.5", "median", "99.9", "p", 99.9]:
        with pytest.raises(CalibrationError, match="pXX.X"):
            parse_statistic(bad)


def test_dead_channel_and_dead_layer_get_safe_thresholds():
    x = np.random.default_rng(2).random((64, 4)) + 0.1
    x[:, 2] = -1.0  # channel 2 never activates
    graph = relu_on_input(4)
    with pytest.warns(CalibrationWarning, match=r"channel\(s\) \(2\)"):
        stats = threshold_statistics(graph, x, "p99", channelwise=True)
    layer = np.percentile(x[x > 0], 99)
    np.testing.assert_allclose(stats.thresholds["act"][2], layer, rtol=1e-13)
    assert stats.values["act"][2] == 0
    with pytest.warns(CalibrationWarning, match="no positive activation"):
        snn = calibrate(graph, -np.abs(x), threshold="p99.9")
    assert float(snn.node("act").arrays["threshold"]) == 1.0
    assert "no positive activation" in snn.metadata["calibration"]["warnings"][0]
    # include_zeros: the percentile lands on zeros -> the channel's own maximum, never 0
    sparse = np.where(np.random.default_rng(3).random((100, 4)) < 0.995, 0.0, 1.0 + x[:1].repeat(100, 0))
    with pytest.warns(CalibrationWarning, match="mostly zeros"):
        stats = threshold_statistics(graph, sparse, "p50", channelwise=True, include_zeros=True)
    assert np.all(stats.thresholds["act"] > 0)


def test_calib_samples_uses_the_first_samples(data):
    graph = cnn()
    snn = calibrate(graph, data, threshold="p99.9", calib_samples=40, channelwise=True)
    direct = threshold_statistics(graph, data[:40], "p99.9", channelwise=True)
    for name in RELUS:
        np.testing.assert_array_equal(snn.node(name).arrays["threshold"], direct.thresholds[name])
    assert snn.metadata["calibration"]["samples"] == 40


# --------------------------------------------------------------------------- qcfs
def test_qcfs_keeps_lambda_unless_overridden():
    graph = qcfs_net()
    snn = calibrate(graph)  # no data needed: λ is the threshold
    np.testing.assert_array_equal(snn.node("q1").arrays["threshold"], graph.node("q1").arrays["threshold"])
    assert snn.metadata["calibration"]["threshold_method"] == "qcfs_lambda"
    x = np.random.default_rng(4).random((50, 3, 6, 6))
    with pytest.raises(CalibrationError, match="override_qcfs=False: qcfs keep"):
        calibrate(graph, x, threshold="max", override_qcfs=False)
    snn = calibrate(graph, x, threshold="max", channelwise=True)  # a threshold overrides λ by default
    z = forward(graph, x, wanted=["conv1"])["conv1"]
    np.testing.assert_allclose(snn.node("q1").arrays["threshold"], np.maximum(z, 0).max(axis=(0, 2, 3)), rtol=1e-13)
    assert snn.metadata["calibration"]["layers"]["q1"]["source"] == "calibration"
    assert snn.metadata["calibration"]["override_qcfs"] is True


def test_qcfs_data_potential_targets_the_qcfs_output():
    graph = qcfs_net(per_channel=False)
    x = np.random.default_rng(4).random((64, 3, 6, 6))
    T = 4
    q = forward(graph, x, wanted=["q1"])["q1"]
    err = {}
    for potential in ["zero", "data"]:
        snn = calibrate(graph, x, potential=potential, T=T)
        err[potential] = np.abs(_snn_rate(snn, "q1", x, T) - q).mean(axis=0).mean()
    assert err["data"] < err["zero"]


# --------------------------------------------------------------------------- potentials and bias
@pytest.mark.parametrize("neuron", ["if", "gn", "signed-if"])
def test_data_potential_lowers_rate_error(data, neuron):
    graph, T = cnn(), 4
    x = data[:48]
    half = calibrate(graph, x, ConversionOptions(neuron, tau=2 if neuron == "gn" else None), threshold="p99.9",
                     potential="half", T=T)
    tuned = calibrate(graph, x, ConversionOptions(neuron, tau=2 if neuron == "gn" else None), threshold="p99.9",
                      potential="data", T=T)
    for name in RELUS:  # per-neuron potentials, thresholds untouched
        assert tuned.node(name).arrays["v0"].shape == graph.node(name).shape
        np.testing.assert_array_equal(tuned.node(name).arrays["threshold"], half.node(name).arrays["threshold"])
    before, after = rate_error(half, graph, x, T), rate_error(tuned, graph, x, T)
    assert after < 0.8 * before, (before, after)


@pytest.mark.parametrize("channelwise", [False, True])
def test_bias_calibration_lowers_rate_error(data, channelwise):
    graph, T = cnn(), 4
    x = data[:48]
    plain = calibrate(graph, x, threshold="p99.9", channelwise=channelwise)
    tuned = calibrate(graph, x, threshold="p99.9", channelwise=channelwise, bias_calibration=True, T=T)
    assert not np.array_equal(tuned.node("conv2").arrays["bias"], plain.node("conv2").arrays["bias"])  # folded BN
    for name in RELUS:
        np.testing.assert_array_equal(tuned.node(name).arrays["v0"], plain.node(name).arrays["v0"])
    before, after = rate_error(plain, graph, x, T), rate_error(tuned, graph, x, T)
    assert after < 0.8 * before, (before, after)
    both = calibrate(graph, x, threshold="p99.9", channelwise=channelwise, bias_calibration=True,
                     potential="data", T=T)
    assert rate_error(both, graph, x, T) < after


def test_bias_target_through_residual_add():
    graph = residual(bias=False)
    x = np.random.default_rng(6).random((32, 3, 6, 6))
    snn = calibrate(graph, x, threshold="p99.9", bias_calibration=True, T=4)
    assert _bias_target(snn, "relu3")[0].name == "conv3"  # the shortcut is a population: no bias
    assert snn.node("conv3").arrays["bias"].shape == (4,)  # conv without bias: one is added
    with pytest.raises(CalibrationError, match=r"node 'relu3'.*'conv3', 'conv_sc'"):
        calibrate(residual(shortcut_conv=True), x, threshold="p99.9", bias_calibration=True, T=4)
    # without bias calibration the ambiguous add is fine
    calibrate(residual(shortcut_conv=True), x, threshold="p99.9", potential="data", T=4)


# --------------------------------------------------------------------------- files and metadata
@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_save_load_simulate_identical(tmp_path, data, suffix):
    graph, T = cnn(), 6
    snn = calibrate(graph, data, threshold="p99.9", channelwise=True, potential="data", bias_calibration=True,
                    T=T, batch_size=64, data_samples=32)
    path = tmp_path / f"snn{suffix}"
    evsim.save(snn, path)
    loaded = evsim.load(path)
    assert loaded == snn
    assert loaded.metadata["calibration"] == snn.metadata["calibration"]
    x = data[100:130]
    a = evsim.simulate(snn, x, T=T, precision="float64")
    b = evsim.simulate(loaded, x, T=T, precision="float64")
    np.testing.assert_array_equal(a.predictions, b.predictions)
    assert [(la.name, la.spikes, la.spikes_per_step) for la in a.layers] == \
           [(lb.name, lb.spikes, lb.spikes_per_step) for lb in b.layers]
    for name in RELUS:  # per-neuron spike counts as well
        np.testing.assert_array_equal(_snn_rate(snn, name, x, T), _snn_rate(loaded, name, x, T))


def test_metadata_records_every_choice(data):
    snn = calibrate(cnn(), data, ConversionOptions("gn", tau=3), threshold="p99.99", channelwise=True, potential="data",
                    bias_calibration=True, T=5, calib_samples=100, data_samples=16)
    rec = snn.metadata["calibration"]
    assert rec["threshold_method"] == "percentile" and rec["threshold_statistic"] == "p99.99"
    assert rec["channelwise"] is True and rec["include_zeros"] is False and rec["override_qcfs"] is None
    assert rec["potential"] == "data" and rec["bias_calibration"] is True and rec["T"] == 5
    assert rec["samples"] == 100 and rec["data_samples"] == 16
    assert rec["percentile_estimator"]["storage"] == "exact"
    assert set(rec["layers"]) == set(RELUS)
    assert set(rec["layers"]["relu1"]["threshold"]) == {"min", "mean", "max"}
    assert snn.metadata["conversion"]["neuron"] == "gn" and snn.metadata["conversion"]["tau"] == 3
    plain = calibrate(cnn(), data, threshold="max", T=8).metadata["calibration"]
    assert plain["T"] is None and plain["data_samples"] is None and plain["include_zeros"] is None
    assert plain["potential"] == "half" and plain["percentile_estimator"] is None
    assert plain["layers"]["relu1"]["threshold"] > 0


# --------------------------------------------------------------------------- errors
def test_missing_calibration_inputs_say_what_to_pass(data):
    graph = cnn()
    with pytest.raises(CalibrationError, match="--threshold p99.9 --calib-data FILE"):
        calibrate(graph, data)
    with pytest.raises(CalibrationError, match="calibration data.*--calib-data FILE"):
        calibrate(graph, threshold="p99.9")
    with pytest.raises(CalibrationError, match="time-steps T for potential='data'.*-T 8"):
        calibrate(graph, data, threshold="p99.9", potential="data")
    with pytest.raises(CalibrationError, match="time-steps T for bias_calibration"):
        calibrate(graph, data, threshold="p99.9", bias_calibration=True)
    with pytest.raises(CalibrationError, match="calibration data for potential='data'"):
        calibrate(qcfs_net(), potential="data", T=4)
    snn = calibrate(graph, data, threshold="max")
    with pytest.raises(CalibrationError, match="kind 'ann'"):
        calibrate(snn, data, threshold="max")


@pytest.mark.parametrize("kwargs, match", [
    ({"potential": "opi"}, "potential"),
    ({"threshold": "p99.9x"}, "pXX.X"),
    ({"T": 0, "potential": "data"}, "-T"),
    ({"calib_samples": 0}, "--calib-samples"),
    ({"channelwise": "yes"}, "True or False"),
    ({"options": ConversionOptions(v0="zero"), "potential": "half"}, "one initial potential"),
])
def test_bad_options_raise_calibration_error(data, kwargs, match):
    kwargs = {"threshold": "p99.9", **kwargs}
    with pytest.raises(CalibrationError, match=match):
        calibrate(cnn(), data, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"neuron": "bursting"}, "signed_if"),
    ({"reset": "zero", "neuron": "gn"}, "reset"),
    ({"tau": 4, "neuron": "if"}, "tau"),
])
def test_bad_neuron_options_refused_before_calibration(kwargs, match):
    with pytest.raises(evsim.errors.ConversionError, match=match):
        ConversionOptions(**kwargs)


def test_bad_calibration_data_shape(data):
    with pytest.raises(evsim.errors.DataError, match="calibration data"):
        calibrate(cnn(), data[:, :2], threshold="p99.9")
