"""ONNX importer: files written by torch.onnx.export, crafted graphs checked against onnx's reference
evaluator, and every refusal.

The fixtures in tests/fixtures were written by PyTorch (tests/fixtures/make_fixtures.py); each comes
with the framework's logits on the stored inputs.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import evsim
from evsim.ann import forward
from evsim.converters import nhwc_to_nchw
from evsim.errors import ContainerError, ConversionError

onnx = pytest.importorskip("onnx")  # the test extra installs it: these tests run in CI
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
TORCH_MODELS = ["onnx_qcfs_seeds", "onnx_qcfs_methods", "onnx_csqcfs", "onnx_relu"]


def expected(name):
    with np.load(FIXTURES / f"{name}.expected.npz") as f:
        return {k: f[k] for k in f.files}


def assert_logits(found, wanted, rel=1e-5):
    """Equal to ``rel`` of the largest logit (elementwise relative error is meaningless near 0)."""
    np.testing.assert_allclose(found, wanted, rtol=rel, atol=rel * float(np.abs(wanted).max()))


# --------------------------------------------------------------------------- files written by PyTorch
@pytest.mark.parametrize("name", TORCH_MODELS)
def test_torch_export_logits(name):
    graph = evsim.load(FIXTURES / f"{name}.onnx")
    e = expected(name)
    assert graph.importer == "onnx"
    assert graph.metadata["imported_from"]["importer"] == "onnx"
    assert graph.input.shape == e["x"].shape[1:]
    assert_logits(forward(graph, e["x"], dtype=np.float32)[graph.output], e["logits"])
    assert_logits(forward(graph, e["x"], dtype=np.float64)[graph.output], e["logits64"])
    assert np.array_equal(evsim.ann.predict(graph, e["x"]), e["logits"].argmax(1))


def test_jax_export_logits():
    """A channels-first JAX CNN exported by jax2onnx (opset 21): SAME convs, bias Add, mean as ReduceSum/Div."""
    graph = evsim.load(FIXTURES / "onnx_jax.onnx")
    e = expected("onnx_jax")
    assert [n.op for n in graph.nodes] == ["conv2d", "relu", "pad2d", "conv2d", "relu", "global_avgpool", "linear"]
    assert_logits(forward(graph, e["x"], dtype=np.float32)[graph.output], e["logits"])


@pytest.mark.parametrize("name, levels, per_channel", [
    ("onnx_qcfs_seeds", 4, False), ("onnx_qcfs_methods", 8, False), ("onnx_csqcfs", 4, True)])
def test_qcfs_recognised(name, levels, per_channel):
    graph = evsim.load(FIXTURES / f"{name}.onnx")
    acts = [n for n in graph.nodes if n.op == "qcfs"]
    assert len(acts) == 4 and not any(n.op in ("relu", "scale", "batchnorm") for n in graph.nodes)
    for node in acts:
        assert node.attrs["levels"] == levels
        assert node.arrays["threshold"].shape == ((node.shape[0],) if per_channel else ())
    # leading x/255, (x - mean)/std became the input preprocessing
    assert graph.input.scale == pytest.approx(1 / 255, rel=1e-15)
    assert graph.input.mean == (float(np.float32(0.1307)),) and graph.input.std == (float(np.float32(0.3081)),)


def test_relu_model_structure():
    graph = evsim.load(FIXTURES / "onnx_relu.onnx")
    ops = [n.op for n in graph.nodes]
    assert ops == ["conv2d", "batchnorm", "relu", "maxpool2d", "conv2d", "batchnorm", "relu", "global_avgpool",
                   "linear"]
    assert graph.input.mean == tuple(float(np.float32(v)) for v in (0.485, 0.456, 0.406))
    assert graph.input.std == tuple(float(np.float32(v)) for v in (0.229, 0.224, 0.225))


@pytest.mark.parametrize("name", ["onnx_qcfs_seeds", "onnx_csqcfs"])
def test_qcfs_simulates_like_format_v1_twin(name):
    """The ONNX file and the same weights written by hand in format v1 give the same spikes."""
    graph = evsim.load(FIXTURES / f"{name}.onnx")
    twin = evsim.load(FIXTURES / f"{name}.twin.npz")
    qcfs = [n for n in graph.nodes if n.op == "qcfs"]
    assert [n.arrays["threshold"].tobytes() for n in qcfs] == \
        [n.arrays["threshold"].tobytes() for n in twin.nodes if n.op == "qcfs"]
    assert (graph.input.scale, graph.input.mean, graph.input.std) == (twin.input.scale, twin.input.mean,
                                                                     twin.input.std)
    x = expected(name)["x"]
    y = expected(name)["logits"].argmax(1)
    a = evsim.simulate(graph, x, y, T=16)
    b = evsim.simulate(twin, x, y, T=16)
    assert np.array_equal(a.predictions, b.predictions)
    assert a.accuracy == b.accuracy
    assert [(layer.neurons, layer.spikes_per_step, layer.sops_per_step) for layer in a.layers] == \
        [(layer.neurons, layer.spikes_per_step, layer.sops_per_step) for layer in b.layers]
    assert sum(layer.spikes for layer in a.layers) > 0


def test_external_data(tmp_path):
    """The dynamo exporter wrote its weights next to the model; without that file the load names it."""
    assert (FIXTURES / "onnx_qcfs_methods.onnx.data").is_file()
    shutil.copy(FIXTURES / "onnx_qcfs_methods.onnx", tmp_path / "m.onnx")
    with pytest.raises(ContainerError, match="onnx_qcfs_methods.onnx.data") as info:
        evsim.load(tmp_path / "m.onnx")
    assert "\n" not in str(info.value)


def test_static_batch_and_content_dispatch(tmp_path):
    """A fixed batch dimension loads too, and the file is recognised without its extension."""
    model = onnx.load(FIXTURES / "onnx_qcfs_seeds.onnx")
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = 8
    onnx.save(model, tmp_path / "model.bin")
    graph = evsim.load(tmp_path / "model.bin")
    e = expected("onnx_qcfs_seeds")
    assert graph.importer == "onnx"
    assert_logits(forward(graph, e["x"], dtype=np.float64)[graph.output], e["logits64"])


def test_memory_limit_before_reading(tmp_path):
    with pytest.raises(evsim.errors.ResourceLimitError, match="EVSIM_MEMORY_LIMIT"):
        evsim.load(FIXTURES / "onnx_relu.onnx", limit=1000)


def test_truncated_file(tmp_path):
    data = (FIXTURES / "onnx_relu.onnx").read_bytes()
    (tmp_path / "t.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ContainerError, match="t.onnx"):
        evsim.load(tmp_path / "t.onnx")


# --------------------------------------------------------------------------- crafted graphs
RNG = np.random.default_rng(3)


def make(tmp_path, nodes, inits, shape=(2, 6, 6), out_shape=None, opset=17, outputs=("y",), name="m.onnx",
         nhwc=False):
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])]
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    init = [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outs, initializer=init),
                              opset_imports=[helper.make_opsetid("", opset)], producer_name="test")
    model.ir_version = 8
    path = tmp_path / name
    onnx.save(model, path)
    return path, model


def reference(model, x):
    return ReferenceEvaluator(model).run(None, {"x": x.astype(np.float32)})[0]


def f32(*shape, scale=1.0):
    return (RNG.normal(size=shape) * scale).astype(np.float32)


def check_against_reference(path, model, x, **kw):
    graph = evsim.load(path, **kw)
    want = reference(model, x)
    assert_logits(forward(graph, x, dtype=np.float64)[graph.output], want.reshape(len(x), -1))
    return graph


@pytest.mark.parametrize("auto_pad, stride, kernel, size, asymmetric", [
    ("SAME_UPPER", 2, 3, 6, True), ("SAME_LOWER", 2, 3, 6, True), ("SAME_UPPER", 2, 3, 7, False),
    ("SAME_UPPER", 1, 2, 6, True), ("NOTSET", 1, 3, 6, True)])
def test_conv_auto_pad(tmp_path, auto_pad, stride, kernel, size, asymmetric):
    attrs = {"auto_pad": auto_pad, "strides": [stride, stride]}
    if auto_pad == "NOTSET":
        attrs = {"pads": [0, 1, 2, 1], "strides": [1, 1]}  # top 0, left 1, bottom 2, right 1
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], **attrs),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "fw"], ["y"], transB=1)]
    out = -(-size // stride)
    path, model = make(tmp_path, nodes, {"w": f32(3, 2, kernel, kernel), "b": f32(3), "fw": f32(5, 3 * out * out)},
                       shape=(2, size, size))
    graph = check_against_reference(path, model, f32(4, 2, size, size))
    assert ("pad2d" in [n.op for n in graph.nodes]) == asymmetric


def test_gemm_alpha_beta_matmul_add_and_views(tmp_path):
    """Gemm(alpha, beta, transB), MatMul + Add (folded into the bias), Squeeze/Unsqueeze/Reshape views."""
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"]),                  # (N, 2, 1, 1)
             helper.make_node("Squeeze", ["g", "axes23"], ["s"]),                  # (N, 2)
             helper.make_node("Unsqueeze", ["s", "axes2"], ["u"]),                 # (N, 2, 1)
             helper.make_node("Reshape", ["u", "shape"], ["v"]),                   # (N, 2)
             helper.make_node("Gemm", ["v", "w1", "c1"], ["h"], alpha=0.5, beta=2.0, transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["m"]),
             helper.make_node("Add", ["m", "b2"], ["y"])]
    inits = {"axes23": np.array([2, 3]), "axes2": np.array([2]), "shape": np.array([0, -1]),
             "w1": f32(4, 2), "c1": f32(4), "w2": f32(4, 3), "b2": f32(3)}
    path, model = make(tmp_path, nodes, inits)
    graph = check_against_reference(path, model, f32(5, 2, 6, 6))
    assert [n.op for n in graph.nodes] == ["global_avgpool", "linear", "relu", "linear"]


def test_nhwc_input_transposes_and_flatten(tmp_path):
    """A channels-last graph (as tf2onnx/jax2onnx write them): Transpose in, Transpose out, flatten, Gemm."""
    nodes = [helper.make_node("Div", ["x", "k255"], ["d"]),
             helper.make_node("Sub", ["d", "mean"], ["m"]),                        # per-channel, channels last
             helper.make_node("Transpose", ["m"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["c"], ["back"], perm=[0, 2, 3, 1]),
             helper.make_node("Relu", ["back"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["f"]),
             helper.make_node("Gemm", ["f", "fw"], ["y"])]
    inits = {"k255": np.float32(255), "mean": np.array([0.2, 0.5], np.float32), "w": f32(3, 2, 3, 3),
             "shape": np.array([-1, 5 * 4 * 3]), "fw": f32(60, 4)}
    path, model = make(tmp_path, nodes, inits, shape=(5, 4, 2))
    x = RNG.integers(0, 256, (3, 5, 4, 2)).astype(np.float32)
    graph = evsim.load(path)
    assert graph.input.shape == (2, 5, 4)  # evsim's input is channels first; data must be NCHW
    assert graph.metadata["imported_from"]["input_layout"] == "nhwc"
    assert_logits(forward(graph, nhwc_to_nchw(x), dtype=np.float64)[graph.output], reference(model, x))


def test_pad_op_batchnorm_pools_and_final_softmax(tmp_path):
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"]),
             helper.make_node("Conv", ["p", "w"], ["c"]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "mu", "var"], ["bn"], epsilon=1e-3),
             helper.make_node("Relu", ["bn"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["mp"], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1]),
             helper.make_node("AveragePool", ["mp"], ["ap"], kernel_shape=[2, 2], pads=[1, 1, 1, 1],
                              count_include_pad=1),
             helper.make_node("ReduceSum", ["ap", "axes"], ["rs"], keepdims=0),
             helper.make_node("Div", ["rs", "area"], ["rm"]),
             helper.make_node("Gemm", ["rm", "fw"], ["z"]),
             helper.make_node("Softmax", ["z"], ["y"])]
    inits = {"pads": np.array([0, 0, 1, 0, 0, 0, 0, 2]), "w": f32(4, 2, 3, 3), "axes": np.array([2, 3]),
             "area": np.float32(16), "g": f32(4) + 2, "b": f32(4),
             "mu": f32(4), "var": np.abs(f32(4)) + 0.5, "fw": f32(4, 6)}
    path, model = make(tmp_path, nodes, inits, opset=17)
    x = f32(3, 2, 6, 6)
    graph = evsim.load(path)
    assert graph.metadata["imported_from"]["dropped"] == ["Softmax"]
    logits = forward(graph, x, dtype=np.float64)[graph.output]
    e = np.exp(logits - logits.max(1, keepdims=True))
    assert_logits(e / e.sum(1, keepdims=True), reference(model, x))
    assert [n.op for n in graph.nodes].count("pad2d") == 2  # the Pad op and the MaxPool's asymmetric pads


def test_clip_is_relu_with_recorded_max(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Clip", ["c", "lo", "hi"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("Gemm", ["f", "fw"], ["y"])]
    path, model = make(tmp_path, nodes, {"w": f32(3, 2, 3, 3), "lo": np.float32(0), "hi": np.float32(0.5),
                                         "fw": f32(48, 4)})
    graph = evsim.load(path)
    relu = [n for n in graph.nodes if n.op == "relu"]
    assert len(relu) == 1 and graph.metadata["relu_max"] == {relu[0].name: 0.5}
    # the ANN executor clips at the max: equal to ONNX's reference evaluator where many values exceed it
    x = f32(3, 2, 6, 6)
    conv = forward(graph, x, wanted=[graph.node(relu[0].name).inputs[0]])
    assert np.mean(next(iter(conv.values())) > 0.5) > 0.1  # the clip is exercised
    assert_logits(forward(graph, x, dtype=np.float64)[graph.output], reference(model, x))
    assert_logits(forward(graph, x, dtype=np.float32)[graph.output], reference(model, x), rel=1e-5)
    # conversion: θ = the clip's λ without calibration data
    snn = evsim.convert(graph)
    assert float(snn.node(relu[0].name).arrays["threshold"]) == 0.5


def test_constant_subgraph_folded_and_qcfs_per_channel(tmp_path):
    """softplus of a parameter, shape arithmetic: folded; CS-QCFS with λ = softplus(p) recognised."""
    L = 4
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Softplus", ["p"], ["lam"]),
             helper.make_node("Mul", ["c", "L"], ["m"]), helper.make_node("Div", ["m", "lam"], ["d"]),
             helper.make_node("Add", ["d", "half"], ["a"]), helper.make_node("Floor", ["a"], ["fl"]),
             helper.make_node("Div", ["fl", "L"], ["q"]),
             helper.make_node("Clip", ["q", "zero", "one"], ["cl"]),
             helper.make_node("Mul", ["lam", "cl"], ["act"]),
             helper.make_node("Shape", ["act"], ["sh"]),
             helper.make_node("Gather", ["sh", "i0"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
             helper.make_node("Reshape", ["act", "target"], ["f"]),
             helper.make_node("Gemm", ["f", "fw"], ["y"], transB=1)]
    p = f32(1, 3, 1, 1) + 1
    inits = {"w": f32(3, 2, 3, 3), "b": f32(3), "p": p, "L": np.float32(L), "half": np.float32(0.5),
             "zero": np.float32(0), "one": np.float32(1), "i0": np.array(0), "ax0": np.array([0]),
             "minus1": np.array([-1]), "fw": f32(5, 108)}
    path, model = make(tmp_path, nodes, inits)
    graph = check_against_reference(path, model, f32(4, 2, 6, 6))
    (act,) = [n for n in graph.nodes if n.op == "qcfs"]
    assert act.attrs["levels"] == L
    np.testing.assert_allclose(act.arrays["threshold"], np.log1p(np.exp(p.reshape(-1).astype(np.float64))),
                               rtol=1e-6)


def test_custom_op_mapped_with_activations(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("MyQCFS", ["c", "theta"], ["q"], domain="my.ops"),
             helper.make_node("MyReLU", ["q"], ["r"], domain="my.ops"),
             helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("Gemm", ["f", "fw"], ["y"])]
    inits = {"w": f32(3, 2, 3, 3), "theta": np.array([1.0, 2.0, 3.0], np.float32).reshape(1, 3, 1, 1),
             "fw": f32(48, 4)}
    path, _ = make(tmp_path, nodes, inits)
    with pytest.raises(ConversionError, match="--activation MyQCFS="):
        evsim.load(path)
    graph = evsim.load(path, activations=["MyQCFS=qcfs:theta,8", "MyReLU=relu"])
    ops = {n.op: n for n in graph.nodes}
    assert ops["qcfs"].attrs["levels"] == 8
    assert ops["qcfs"].arrays["threshold"].tolist() == [1.0, 2.0, 3.0]
    assert "relu" in ops


# --------------------------------------------------------------------------- refusals
def conv_head(extra_nodes, extra_inits, last="r"):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1])] + extra_nodes + \
        [helper.make_node("Flatten", [last], ["f"]), helper.make_node("Gemm", ["f", "fw"], ["y"])]
    return nodes, {"w": f32(3, 2, 3, 3), "fw": f32(108, 4), **extra_inits}


REFUSALS = {
    "opset-too-old": (lambda: conv_head([helper.make_node("Relu", ["c"], ["r"])], {}), {"opset": 11},
                      ("opset", "11", "opset_version")),
    "opset-too-new": (lambda: conv_head([helper.make_node("Relu", ["c"], ["r"])], {}), {"opset": 22},
                      ("opset", "22")),
    "sigmoid": (lambda: conv_head([helper.make_node("Sigmoid", ["c"], ["r"], name="act1")], {}), {},
                ("'act1' (Sigmoid)", "op 'Sigmoid'", "--activation")),
    "custom-domain": (lambda: conv_head([helper.make_node("Spiky", ["c"], ["r"], domain="x.y", name="sp")], {}), {},
                      ("'sp' (Spiky)", "custom op 'x.y.Spiky'", "--activation Spiky=relu")),
    "floor-not-qcfs": (lambda: conv_head([helper.make_node("Floor", ["c"], ["r"], name="fl")], {}), {},
                       ("'fl'", "QCFS", "--activation")),
    "per-pixel-constant": (lambda: conv_head([helper.make_node("Mul", ["c", "k"], ["r"], name="mul")],
                                             {"k": f32(1, 3, 6, 6)}), {}, ("'mul' (Mul)", "varies over positions")),
    "two-data-mul": (lambda: conv_head([helper.make_node("Mul", ["c", "c"], ["r"], name="sq")], {}), {},
                     ("'sq' (Mul)", "two data inputs")),
    "ceil-mode": (lambda: conv_head([helper.make_node("AveragePool", ["c"], ["r"], kernel_shape=[4, 4], strides=[4, 4],
                                                      ceil_mode=1, name="pool")], {"fw": f32(12, 4)}), {},
                  ("'pool' (AveragePool)", "ceil_mode", "ceil_mode=False")),
    "count-include-pad": (lambda: conv_head([helper.make_node("AveragePool", ["c"], ["r"], kernel_shape=[3, 3],
                                                              pads=[1, 1, 1, 1], name="pool")], {}), {},
                          ("'pool' (AveragePool)", "count_include_pad")),
    "maxpool-pad-negative": (lambda: conv_head([helper.make_node("MaxPool", ["c"], ["r"], kernel_shape=[2, 2],
                                                                 strides=[2, 2], pads=[0, 0, 1, 1], name="mp")],
                                               {"fw": f32(27, 4)}), {}, ("'mp'", "never negative")),
    "conv1d": (lambda: ([helper.make_node("Conv", ["x", "w"], ["y"], name="c1d")], {"w": f32(3, 2, 3)}),
               {"shape": (2, 6)}, ("input 'x'", "(N, C, H, W) or (N, F)", "no 1-D or 3-D")),
    "transA": (lambda: (conv_head([helper.make_node("Relu", ["c"], ["r"])], {})[0][:-1] +
                        [helper.make_node("Gemm", ["f", "fw"], ["y"], transA=1, name="g")],
                        {"w": f32(3, 2, 3, 3), "fw": f32(108, 4)}), {}, ("'g' (Gemm)", "transA")),
    "reshape-merges-batch": (lambda: conv_head([helper.make_node("Relu", ["c"], ["r0"]),
                                                helper.make_node("Reshape", ["r0", "s"], ["r"], name="rs")],
                                               {"s": np.array([-1, 3, 6])}), {},
                             ("'rs' (Reshape)", "batch axis")),
    "softmax-inside": (lambda: conv_head([helper.make_node("Softmax", ["c"], ["r"], name="sm")], {}), {},
                       ("'sm' (Softmax)", "last op")),
    "bn-training": (lambda: conv_head([helper.make_node("BatchNormalization", ["c", "s", "s", "z", "s"], ["r"],
                                                        training_mode=1, name="bn")],
                                      {"s": np.ones(3, np.float32), "z": np.zeros(3, np.float32)}), {"opset": 15},
                    ("'bn'", "training_mode", "eval()")),
    "two-outputs": (lambda: conv_head([helper.make_node("Relu", ["c"], ["r"])], {}), {"outputs": ("y", "c")},
                    ("graph outputs", "exactly one output")),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusal(tmp_path, case):
    build, kwargs, needles = REFUSALS[case]
    nodes, inits = build()
    path, _ = make(tmp_path, nodes, inits, **kwargs)
    with pytest.raises(ConversionError) as info:
        evsim.load(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)


def test_option_for_wrong_importer():
    with pytest.raises(ConversionError, match="option 'activations'"):
        evsim.load(FIXTURES / "onnx_qcfs_seeds.twin.npz", activations={"X": "relu"})
    with pytest.raises(ConversionError, match="option 'layout'"):
        evsim.load(FIXTURES / "onnx_relu.onnx", layout="nhwc")


@pytest.mark.parametrize("spec", ["qcfs:theta", "qcfs:theta,0", "sigmoid", "qcfs:,4", 3])
def test_bad_activation_spec(spec):
    with pytest.raises(ConversionError, match="--activation X: expected (LEVELS|'relu' or 'qcfs:WEIGHT_NAME,LEVELS')"):
        evsim.load(FIXTURES / "onnx_relu.onnx", activations={"X": spec})
