"""The fast ANN executor (issue 19, item 0b) against plain NumPy definitions, and the dense path of
the simulation against the event path (float64, within rounding)."""
import importlib.resources as res

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

import reference as ref
from evsim import ann
from evsim.errors import GraphError
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


# --------------------------------------------------------------------------- fused convolution chains
def numpy_forward(graph, x):
    """The plain NumPy definition of every op the executor fuses (float64, op by op)."""
    values = {"input": graph.input.preprocess(x, np.float64)}
    for node in graph.nodes:
        xs, a, p = [values[n] for n in node.inputs], node.attrs, node.arrays
        if node.op == "conv2d":
            v = conv_einsum(xs[0], p["weight"], p.get("bias"), a["stride"], a["padding"], a["dilation"], a["groups"])
        elif node.op == "batchnorm":
            scale = p["gamma"] / np.sqrt(p["var"] + a["eps"])
            v = xs[0] * scale.reshape(1, -1, 1, 1) + (p["beta"] - p["mean"] * scale).reshape(1, -1, 1, 1)
        elif node.op == "add":
            v = xs[0] + xs[1]
        elif node.op == "relu":
            v = np.maximum(xs[0], 0)
            if node.name in graph.metadata.get("relu_max", {}):  # a clipped ReLU
                v = np.minimum(v, np.reshape(graph.metadata["relu_max"][node.name], (1, -1, 1, 1)))
        elif node.op == "qcfs":
            v = ann.qcfs_numpy(xs[0], p["threshold"], a["levels"])
        elif node.op in ("avgpool2d", "sumpool2d"):
            v = ann.windows(xs[0], a["kernel"], a["stride"], a["padding"]).sum(axis=(4, 5))
            v = v / (a["kernel"][0] * a["kernel"][1]) if node.op == "avgpool2d" else v
        elif node.op == "flatten":
            v = xs[0].reshape(len(xs[0]), -1)
        else:
            v = xs[0] @ p["weight"].T + p["bias"]
        values[node.name] = v
    return values[graph.output]


def chain_graph(rng, k, pad, stride, groups, c_out, width, bn, residual, act, pool):
    """input -> conv2d [-> batchnorm] [-> add(residual conv)] [-> act] [-> pool] -> flatten -> linear."""
    from evsim.graph import Graph, InputSpec, Node, validate

    c_in = groups * int(rng.integers(1, 4))
    c_out = groups * max(1, c_out // groups)
    h = int(rng.integers(k, 2 * k + 6))
    spec = InputSpec((c_in, h, width), scale=0.5, mean=(0.1,), std=(0.9,))
    nodes = []

    def conv(name):
        arrays = {"weight": rng.normal(0, 1 / np.sqrt(c_in * k * k), (c_out, c_in // groups, k, k))}
        if rng.random() < 0.5:
            arrays["bias"] = rng.normal(0, 0.2, c_out)
        nodes.append(Node(name, "conv2d", ("input",), {"stride": [stride, stride], "padding": [pad, pad],
                                                       "dilation": [1, 1], "groups": groups}, arrays))
        return name

    cur = conv("conv")
    if bn:
        nodes.append(Node("bn", "batchnorm", (cur,), {"eps": 1e-5}, {
            "mean": rng.normal(0, 0.1, c_out), "var": rng.uniform(0.5, 1.5, c_out),
            "gamma": rng.uniform(0.5, 1.5, c_out), "beta": rng.normal(0, 0.1, c_out)}))
        cur = "bn"
    if residual:
        nodes.insert(0, nodes[0])  # the residual's conv first: it must be computed before the add
        nodes[0] = Node("side", "conv2d", ("input",), dict(nodes[1].attrs),
                        {"weight": rng.normal(0, 0.3, nodes[1].arrays["weight"].shape)})
        nodes.append(Node("add", "add", (cur, "side") if rng.random() < 0.5 else ("side", cur)))
        cur = "add"
    relu_max = {}
    if act in ("relu", "clipped"):
        nodes.append(Node("act", "relu", (cur,)))
        cur = "act"
        if act == "clipped":  # a ReLU with a maximum λ (one, or one per channel)
            relu_max["act"] = np.asarray(rng.uniform(0.2, 1.0, c_out if rng.random() < 0.5 else None)).tolist()
    elif act == "qcfs":
        theta = rng.uniform(0.3, 1.5, c_out if rng.random() < 0.5 else None)
        nodes.append(Node("act", "qcfs", (cur,), {"levels": int(rng.integers(1, 9))}, {"threshold": np.asarray(theta)}))
        cur = "act"
    if pool is not None:
        op, kh, kw, sh, sw = pool
        nodes.append(Node("pool", op, (cur,), {"kernel": [kh, kw], "stride": [sh, sw], "padding": [0, 0]}))
        cur = "pool"
    nodes.append(Node("flatten", "flatten", (cur,)))
    graph = Graph(spec, nodes, "flatten")
    validate(graph)
    features = int(np.prod(graph.node("flatten").shape))
    nodes.append(Node("fc", "linear", ("flatten",), {}, {"weight": rng.normal(0, 1 / np.sqrt(features), (5, features)),
                                                         "bias": rng.normal(0, 0.1, 5)}))
    return validate(Graph(spec, nodes, "fc", metadata={"relu_max": relu_max} if relu_max else {}))


POOLS = st.sampled_from([None, ("avgpool2d", 2, 2, 2, 2), ("sumpool2d", 2, 2, 2, 2), ("avgpool2d", 1, 2, 1, 2),
                         ("avgpool2d", 2, 1, 2, 1), ("sumpool2d", 1, 1, 1, 1), ("avgpool2d", 3, 3, 3, 3),
                         ("avgpool2d", 3, 3, 2, 2)])


@settings(deadline=None, max_examples=25)  # each new (kernel size, epilogue, pooling, dtype) compiles ~2 s
@given(seed=st.integers(0, 2**32 - 1), k=st.sampled_from([1, 2, 3, 5]), pad=st.integers(0, 2),
       stride=st.sampled_from([1, 1, 1, 2]), groups=st.sampled_from([1, 1, 2]), c_out=st.integers(1, 19),
       width=st.sampled_from([1, 3, 7, 14, 16, 17, 33]), bn=st.booleans(), residual=st.booleans(),
       act=st.sampled_from([None, "relu", "clipped", "qcfs"]), pool=POOLS, batch=st.sampled_from([1, 2, 5]))
def test_fused_chain_equals_numpy_forward(seed, k, pad, stride, groups, c_out, width, bn, residual, act, pool, batch):
    """conv -> batchnorm -> residual add -> activation -> pooling, fused into one kernel where the executor
    can (stride 1, groups 1, windows of one or two rows, output channels not a multiple of 8, widths
    around the vector width, odd heights): float64 equals the NumPy definition to 1e-10, float32 to float32
    rounding (except QCFS, whose levels may flip at float32 rounding), and the fused chain gives exactly
    the values of the same executor op by op (BatchNorm folded), in both dtypes."""
    rng = np.random.default_rng(seed)
    if k > width + 2 * pad:
        k = 1
    try:
        graph = chain_graph(rng, k, pad, stride, groups, c_out, width, bn, residual, act, pool)
    except GraphError:  # shapes that do not fit (e.g. a pooling window larger than the output)
        assume(False)
    x = rng.uniform(0, 2, (batch,) + graph.input.shape)
    want = numpy_forward(graph, x)
    got64 = ann.forward(graph, x)[graph.output]
    assert got64.dtype == np.float64
    np.testing.assert_allclose(got64, want, rtol=1e-10, atol=1e-10 * (1 + np.abs(want).max()))
    if act != "qcfs":
        got32 = ann.forward(graph, x, dtype=np.float32)[graph.output]
        assert got32.dtype == np.float32
        np.testing.assert_allclose(got32, want, rtol=1e-4, atol=1e-4 * (1 + np.abs(want).max()))
    steps = ann._plan(graph, [graph.output], frozenset({"input"}))
    fused = [s for s in steps if isinstance(s, ann._Fused)]
    fusable_pool = pool is not None and pool[1] <= 2 and pool[1:3] == pool[3:5]
    fusable_act = act in ("relu", "qcfs")  # a clipped ReLU stays a step of its own
    if stride == 1 and groups == 1 and (bn or residual or fusable_act or (fusable_pool and act != "clipped")):
        assert fused  # (an add joins the chain of whichever of its two convolutions comes first)
    op_by_op = [n.name for n in graph.nodes if n.op != "conv2d"]  # every value asked for: nothing fused but BN
    for dtype in (np.float32, np.float64):
        separate = ann.forward(graph, x, wanted=op_by_op, dtype=dtype)[graph.output]
        np.testing.assert_array_equal(ann.forward(graph, x, dtype=dtype)[graph.output], separate)


def test_plan_of_the_shipped_model(shipped):
    """The shipped model's chains are fused once per plan; a value asked for ends its chain."""
    graph = shipped[0]
    steps = ann._plan(graph, [graph.output], frozenset({"input"}))
    chains = [[n.name for n in s.nodes] for s in steps if isinstance(s, ann._Fused)]
    assert chains == [["conv1", "bn1", "act1", "pool1"], ["conv2", "bn2", "act2"],
                      ["res_conv1", "res_bn1", "res_act1"], ["res_conv2", "res_bn2", "res_add", "res_act2", "pool2"]]
    steps = ann._plan(graph, ["act1", graph.output], frozenset({"input"}))
    assert [n.name for n in steps[0].nodes] == ["conv1", "bn1", "act1"]
    x = shipped[1][:7]
    both = ann.forward(graph, x, wanted=["act1", "pool1", graph.output], dtype=np.float32)
    np.testing.assert_array_equal(both[graph.output], ann.forward(graph, x, dtype=np.float32)[graph.output])
    np.testing.assert_array_equal(both["pool1"], ann.forward(graph, x, wanted=["pool1"], dtype=np.float32)["pool1"])


def test_random_ann_networks_fused_equal_op_by_op():
    """Residual blocks, pooling heads and global pooling of random ANN networks: the planned, fused
    executor gives the op-by-op values exactly (float32 and float64)."""
    from netgen import random_network

    for seed in range(12):
        graph = random_network(seed, kind="ann", activation=("qcfs", "relu")[seed % 2])
        x = np.random.default_rng(seed).uniform(0, 1, (3,) + graph.input.shape)
        op_by_op = [n.name for n in graph.nodes if n.op != "conv2d"]
        for dtype in (np.float32, np.float64):
            np.testing.assert_array_equal(ann.forward(graph, x, dtype=dtype)[graph.output],
                                          ann.forward(graph, x, wanted=op_by_op, dtype=dtype)[graph.output])


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
