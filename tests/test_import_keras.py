"""Keras importer: .keras and legacy .h5 files written by Keras 3 (tests/fixtures/make_fixtures.py), the
Keras 2 layout, channels-last handling, custom layers mapped with ``activations``, and every refusal.
No Keras or TensorFlow is needed: the files are read with zipfile, json and h5py.
"""
from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

import evsim
from evsim.ann import forward
from evsim.converters import nhwc_to_nchw
from evsim.errors import ContainerError, ConversionError

FIXTURES = Path(__file__).parent / "fixtures"
FUNCTIONAL = ["keras_functional.keras", "keras_functional.h5", "keras2_functional.h5"]
SEQUENTIAL = ["keras_sequential.keras", "keras_sequential.h5"]


def expected(name):
    with np.load(FIXTURES / f"{name}.expected.npz") as f:
        return {k: f[k] for k in f.files}


def assert_logits(found, wanted, rel=1e-5):
    np.testing.assert_allclose(found, wanted, rtol=rel, atol=rel * float(np.abs(wanted).max()))


@pytest.mark.parametrize("file", FUNCTIONAL + SEQUENTIAL)
def test_logits_equal_keras(file):
    graph = evsim.load(FIXTURES / file)
    e = expected("keras_functional" if "functional" in file else "keras_sequential")
    assert graph.importer == "keras"
    # Keras' own logits, ReLU(max_value) clipping included (the fixture checks that it clips)
    wanted = e["logits"]
    assert_logits(forward(graph, e["x"], dtype=np.float32)[graph.output], wanted)
    assert_logits(forward(graph, e["x"], dtype=np.float64)[graph.output], wanted)


def test_functional_structure():
    graph = evsim.load(FIXTURES / "keras_functional.keras")
    ops = {n.name: n.op for n in graph.nodes}
    # TF 'same' with stride 2 on 12 px, the even kernel, the 'same' max pool: asymmetric -> pad2d
    assert ops["conv1.pad"] == ops["conv3.pad"] == ops["pool.pad"] == "pad2d"
    assert graph.node("conv1.pad").attrs["pads"] == [0, 1, 0, 1]
    assert graph.metadata["relu_max"] == {"relu1": 1.5}
    assert ops["add"] == "add" and graph.node("add").inputs == ("relu1", "conv3")
    # Rescaling then Normalization, leading: the input preprocessing
    assert graph.input.shape == (3, 12, 12)
    assert graph.input.scale == pytest.approx(1 / 255, rel=1e-15)
    assert graph.input.mean == pytest.approx((0.5, 0.4, 0.3)) and graph.input.std == pytest.approx((0.2, 0.3, 0.25))
    assert not any(n.op in ("scale", "batchnorm") and n.name in ("rescale", "normalize") for n in graph.nodes)


def test_h5_and_keras_give_the_same_graph():
    graphs = [evsim.load(FIXTURES / f) for f in FUNCTIONAL]
    for other in graphs[1:]:
        assert other.nodes == graphs[0].nodes and other.input == graphs[0].input


def test_dense_after_flatten_is_permuted():
    """The first Dense's kernel rows are in Keras's H, W, C order; evsim's are C, H, W."""
    with h5py.File(FIXTURES / "keras_functional.h5") as f:
        kernel = np.asarray(f["model_weights/logits/logits/kernel"])
    weight = evsim.load(FIXTURES / "keras_functional.h5").node("logits").arrays["weight"]
    h, w, c = 3, 3, 8
    np.testing.assert_array_equal(weight, kernel.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(-1, h * w * c))


def test_nhwc_data_helper():
    e = expected("keras_functional")
    np.testing.assert_array_equal(nhwc_to_nchw(e["x_nhwc"]), e["x"])
    flat = np.zeros((3, 7))
    assert nhwc_to_nchw(flat) is flat


def test_sequential_preprocessing_and_no_input_layer_weights():
    graph = evsim.load(FIXTURES / "keras_sequential.keras")
    assert graph.input.scale == pytest.approx(1 / 127.5) and graph.input.mean == (1.0,) and graph.input.std is None
    assert [n.op for n in graph.nodes][:4] == ["pad2d", "conv2d", "relu", "maxpool2d"]
    assert graph.node("zero_padding2d").attrs["pads"] == [1, 0, 2, 1]


def test_softmax_output_is_dropped(tmp_path):
    path = edit_h5(tmp_path, "keras_sequential.h5", lambda c: c["config"]["layers"][-1]["config"].update(
        activation="softmax"))
    graph = evsim.load(path)
    e = expected("keras_sequential")
    assert graph.metadata["imported_from"]["dropped"] == ["dense_1: softmax"]
    assert_logits(forward(graph, e["x"])[graph.output], e["logits"])


# --------------------------------------------------------------------------- editing real files
def edit_h5(tmp_path, name, edit, weights=None):
    """A copy of a fixture .h5 with its model_config edited (and optional weight edits)."""
    path = tmp_path / name
    shutil.copy(FIXTURES / name, path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        edit(config)
        f.attrs["model_config"] = json.dumps(config)
        if weights:
            weights(f)
    return path


def edit_keras(tmp_path, name, edit, weights=None):
    """A copy of a fixture .keras with config.json edited (and optional edits of model.weights.h5)."""
    path = tmp_path / name
    with zipfile.ZipFile(FIXTURES / name) as src:
        members = {i.filename: src.read(i.filename) for i in src.infolist()}
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    if weights:
        buffer = io.BytesIO(members["model.weights.h5"])
        with h5py.File(buffer, "r+") as f:
            weights(f)
        members["model.weights.h5"] = buffer.getvalue()
    with zipfile.ZipFile(path, "w") as dst:
        for key, value in members.items():
            dst.writestr(key, value)
    return path


def layer(config, name):
    return next(lay for lay in config["config"]["layers"] if lay["name"] == name)


def rename_class(name, new_class, **cfg):
    def edit(config):
        lay = layer(config, name)
        lay["class_name"] = new_class
        lay["config"].update(cfg)
    return edit


def test_custom_layer_mapped_to_qcfs_h5(tmp_path):
    """A custom activation with a threshold weight, as a legacy .h5 stores it, mapped with activations=."""
    def add_weight(f):
        group = f["model_weights/relu1"]
        group.create_dataset("relu1/thresh", data=np.full(8, 1.25, np.float32))
        group.attrs["weight_names"] = np.array([b"relu1/thresh"])

    path = edit_h5(tmp_path, "keras_functional.h5", rename_class("relu1", "QCFS"), add_weight)
    with pytest.raises(ConversionError) as info:
        evsim.load(path)
    assert "layer 'relu1' (QCFS)" in str(info.value) and "--activation QCFS=qcfs:WEIGHT_NAME,LEVELS" in str(info.value)
    graph = evsim.load(path, activations={"QCFS": "qcfs:thresh,4"})
    node = graph.node("relu1")
    assert node.op == "qcfs" and node.attrs["levels"] == 4 and node.arrays["threshold"].shape == ()
    assert float(node.arrays["threshold"]) == 1.25
    for wrong in ("qcfs:alpha,4", "qcfs:3,4"):
        with pytest.raises(ConversionError, match="weights thresh"):
            evsim.load(path, activations={"QCFS": wrong})


def test_custom_layer_mapped_in_keras_file(tmp_path):
    """.keras files keep no weight names: the weight is given by position (here vars/0)."""
    def add_weight(f):  # what Keras writes for a layer of class QCFS with one weight
        del f["layers/re_lu"]
        group = f.create_group("layers/qcfs/vars")
        group.attrs["name"] = "relu1"
        group.create_dataset("0", data=np.linspace(0.5, 1.2, 8).astype(np.float32))

    def edit(config):
        rename_class("relu1", "QCFS")(config)

    path = edit_keras(tmp_path, "keras_functional.keras", edit, add_weight)
    graph = evsim.load(path, activations=["QCFS=qcfs:0,8"])
    node = graph.node("relu1")
    assert node.op == "qcfs" and node.attrs["levels"] == 8
    np.testing.assert_array_equal(node.arrays["threshold"], np.linspace(0.5, 1.2, 8).astype(np.float32))
    relu = evsim.load(edit_keras(tmp_path, "keras_functional.keras", rename_class("relu1", "MyReLU")),
                      activations={"MyReLU": "relu"})
    assert relu.node("relu1").op == "relu"


# --------------------------------------------------------------------------- refusals
def nest(config):
    inner = layer(config, "conv2")
    inner["class_name"] = "Sequential"


def shared(config):
    lay = layer(config, "conv2")
    lay["inbound_nodes"] = lay["inbound_nodes"] * 2


REFUSALS = {
    "unknown-layer": (rename_class("conv2", "DepthwiseConv2D"),
                      ("layer 'conv2' (DepthwiseConv2D)", "layer class 'DepthwiseConv2D'", "--activation")),
    "sigmoid": (rename_class("relu2", "Activation", activation="sigmoid"),
                ("layer 'relu2' (Activation)", "'sigmoid'")),
    "leaky-relu": (rename_class("relu1", "ReLU", negative_slope=0.1), ("layer 'relu1' (ReLU)", "negative_slope")),
    "softmax-inside": (rename_class("relu2", "Activation", activation="softmax"), ("'relu2'", "'softmax' only")),
    "avgpool-same": (rename_class("pool", "AveragePooling2D"), ("layer 'pool' (AveragePooling2D)", "padding='valid'")),
    "nested-model": (nest, ("layer 'conv2' (Sequential)", "nested")),
    "shared-layer": (shared, ("'conv2'", "shared layer")),
    "bn-axis": (lambda c: layer(c, "bn1")["config"].update(axis=1), ("layer 'bn1'", "channel axis")),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
@pytest.mark.parametrize("container", ["h5", "keras"])
def test_refusal(tmp_path, case, container):
    edit, needles = REFUSALS[case]
    path = (edit_h5 if container == "h5" else edit_keras)(tmp_path, f"keras_functional.{container}", edit)
    with pytest.raises(ConversionError) as info:
        evsim.load(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)


def test_subclassed_model_refused(tmp_path):
    path = edit_h5(tmp_path, "keras_sequential.h5", lambda c: c.update(class_name="MyModel"))
    with pytest.raises(ConversionError, match="Sequential or Functional"):
        evsim.load(path)


def test_corrupted_files(tmp_path):
    data = (FIXTURES / "keras_functional.keras").read_bytes()
    with zipfile.ZipFile(FIXTURES / "keras_functional.keras") as src, \
            zipfile.ZipFile(tmp_path / "bad.keras", "w") as dst:
        dst.writestr("config.json", b"{not json")
        dst.writestr("model.weights.h5", src.read("model.weights.h5"))
    with pytest.raises(ContainerError, match="bad.keras"):
        evsim.load(tmp_path / "bad.keras")
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(ContainerError, match="cut.keras"):
        evsim.load(tmp_path / "cut.keras")


def test_weights_over_memory_limit():
    with pytest.raises(evsim.errors.ResourceLimitError, match="EVSIM_MEMORY_LIMIT"):
        evsim.load(FIXTURES / "keras_functional.h5", limit=2000)


def test_corrupt_config_heap_is_refused_before_libhdf5_reads_it(tmp_path):
    """model_config is a string in an HDF5 global heap: a corrupt heap is refused (libhdf5 could spin on it)."""
    data = bytearray((FIXTURES / "keras_functional.h5").read_bytes())
    first = data.index(b"GCOL") + 16  # the first heap object's header: index, refcount, reserved, size
    data[first + 8:first + 16] = (2**62).to_bytes(8, "little")
    (tmp_path / "bad.h5").write_bytes(bytes(data))
    with pytest.raises(ContainerError, match="attribute 'model_config'.*runs past the collection"):
        evsim.load(tmp_path / "bad.h5")


def _stalled_heap(data: bytes) -> bytes:
    """``data`` with its first global heap object turned into free space of size 0: libhdf5's
    decoder then never advances (it spins at 100 % CPU reading any string of that heap)."""
    out = bytearray(data)
    first = out.index(b"GCOL") + 16
    out[first:first + 2] = (0).to_bytes(2, "little")
    out[first + 8:first + 16] = (0).to_bytes(8, "little")
    return bytes(out)


def test_corrupt_weight_name_heap_of_a_keras_archive_is_refused(tmp_path):
    """The vars groups' ``name`` attributes of model.weights.h5 are heap strings (measured: reading them
    from this file with h5py hangs); the importer checks every heap of the member before reading."""
    with zipfile.ZipFile(FIXTURES / "keras_functional.keras") as src, \
            zipfile.ZipFile(tmp_path / "stalled.keras", "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, _stalled_heap(data) if name == "model.weights.h5" else data)
    with pytest.raises(ContainerError, match=r"stalled\.keras, 'model\.weights\.h5'.*does not advance"):
        evsim.load(tmp_path / "stalled.keras")


def test_corrupt_heap_other_than_the_config_is_refused_in_a_legacy_file(tmp_path):
    """keras_version, backend and weight names may live in other heaps than model_config's."""
    data = (FIXTURES / "keras2_functional.h5").read_bytes()
    assert data.count(b"GCOL") > 1  # the config's heap is the last one: this corrupts another
    (tmp_path / "stalled.h5").write_bytes(_stalled_heap(data))
    with pytest.raises(ContainerError, match=r"stalled\.h5: expected readable HDF5 strings"):
        evsim.load(tmp_path / "stalled.h5")
