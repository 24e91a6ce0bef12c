"""Keras importer: ``.keras`` (Keras 3) and legacy ``.h5`` (Keras 2 and 3 writers), no TensorFlow.

Registered with :mod:`evsim.importers` through the entry point ``evsim.importers: keras``.  Reads
the model's JSON config and its weights with ``zipfile``, ``json`` and ``h5py`` only:

* ``.keras``: a zip holding ``config.json`` and ``model.weights.h5``, where the weights of the
  i-th layer of a class are under ``layers/<snake_case class name>[_i]/vars/<k>`` (Keras's own
  naming, which does not use the layer names);
* legacy ``.h5``: root attribute ``model_config`` and the group ``model_weights``, whose
  ``layer_names`` and per-layer ``weight_names`` attributes (split into ``name0``, ``name1``, ...
  when long) name the datasets.

Sequential and Functional models (one input, one output, no nested models, no shared layers).
Layers: InputLayer, Conv2D (valid/same, TF's asymmetric 'same' padding via ``pad2d``), Dense,
BatchNormalization, Activation('relu'/'linear'; 'softmax' as the last layer is dropped), ReLU
(``max_value`` -> ``relu`` with the value in ``metadata["relu_max"]``), Add, AveragePooling2D,
MaxPooling2D, GlobalAveragePooling2D, Flatten, Dropout, ZeroPadding2D, Rescaling and
Normalization (folded into the input preprocessing when they come first).  Channels-last models
become channels-first: kernels are transposed and the Dense after a Flatten gets its rows
permuted, so evsim's C, H, W flatten equals Keras's H, W, C one.  A custom layer can be mapped with
``activations={"ClassName": "relu" | "qcfs:WEIGHT,LEVELS"}`` (CLI ``--activation``).
"""
from __future__ import annotations

import io
import json
import math
import re
import zipfile
from pathlib import Path

import numpy as np

from evsim.errors import ContainerError, ConversionError, EvsimError, ManifestError, describe
from evsim.h5guard import check_all_heaps, check_string_attribute
from evsim.importers import Importer, hdf5_keys, is_hdf5, is_zip, zip_names

from ._builder import (GraphBuilder, View, add_conv, add_linear, add_pool, as_float_array, channel_constant,
                       materialize, parse_activations, same_pads)

__all__ = ["read", "sniff", "IMPORTER", "SUPPORTED_LAYERS"]

#: largest config.json evsim parses (bytes)
MAX_CONFIG_BYTES = 64 * 2**20
_MODEL_CLASSES = ("Functional", "Model", "Sequential")


# --------------------------------------------------------------------------- sniffing
def sniff(path, head: bytes) -> bool:
    """A ``.keras`` zip (``config.json`` + ``model.weights.h5``) or an HDF5 file with ``model_config``."""
    if is_zip(head):
        names = zip_names(path)
        return "config.json" in names and "model.weights.h5" in names
    if is_hdf5(head):
        return "model_config" in hdf5_keys(path)[0]
    return False


# --------------------------------------------------------------------------- reading weights
def _text(value) -> str:
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _attr_list(group, name: str) -> list[str]:
    """A list attribute, joined from ``name0``, ``name1``, ... when Keras split it (HDF5 header limit)."""
    if name in group.attrs:
        return [_text(v) for v in np.asarray(group.attrs[name]).reshape(-1)]
    out, i = [], 0
    while f"{name}{i}" in group.attrs:
        out += [_text(v) for v in np.asarray(group.attrs[f"{name}{i}"]).reshape(-1)]
        i += 1
    return out


def to_snake_case(name: str) -> str:
    """Keras's ``naming.to_snake_case`` (how ``.keras`` files name the weight groups of layers)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


class _Weights:
    """Weights of each layer: ``{layer_name: [(name or None, array), ...]}`` in saved order."""

    def __init__(self, path: Path, limit: int):
        self.path, self.limit, self.declared = path, limit, 0.0

    def _read(self, name: str, ds) -> np.ndarray:
        import h5py

        from evsim.format import check_declared

        if not isinstance(ds, h5py.Dataset):
            raise ContainerError(describe(f"{self.path}, weight '{name}'", "a dataset", "a group"))
        self.declared = check_declared(self.path, name, ds.shape, ds.dtype, self.limit, self.declared)
        return np.asarray(ds[()])

    def legacy(self, f, layer_names) -> dict:
        """``model_weights/<layer>/`` datasets named by ``weight_names`` (Keras 2 and Keras 3 writers)."""
        root = f["model_weights"] if "model_weights" in f else f
        saved = set(_attr_list(root, "layer_names"))
        out = {}
        for layer in layer_names:
            if layer not in saved or layer not in root:
                out[layer] = []
                continue
            group = root[layer]
            out[layer] = [(w.split("/")[-1].split(":")[0], self._read(f"{layer}/{w}", group[w]))
                          for w in _attr_list(group, "weight_names")]
        return out

    def keras3(self, f, layers) -> dict:
        """``layers/<snake_case class>[_i]/vars/<k>`` of a ``.keras`` file.

        Keras names these groups after the layer *class* (numbered in layer order) and, for
        Functional models, records the layer name in the ``vars`` group's ``name`` attribute; that
        name is used when present, the class-based numbering otherwise.
        """
        groups = f.get("layers")
        by_name = {}
        if groups is not None:
            for key in groups:
                vars_ = groups[key].get("vars") if hasattr(groups[key], "get") else None
                if vars_ is not None and "name" in vars_.attrs:
                    by_name[_text(vars_.attrs["name"])] = (key, vars_)
        used: dict[str, int] = {}
        out = {}
        for layer in layers:
            base = to_snake_case(str(layer.get("class_name")))
            used[base] = used.get(base, -1) + 1
            key = f"{base}_{used[base]}" if used[base] else base
            key, group = by_name.get(layer["name"], (key, f.get(f"layers/{key}/vars")))
            if group is None:
                out[layer["name"]] = []
                continue
            keys = sorted(group.keys(), key=lambda k: int(k) if k.isdigit() else 1 << 30)
            out[layer["name"]] = [(None, self._read(f"layers/{key}/vars/{k}", group[k])) for k in keys]
        return out


def _load(path: Path, limit: int):
    """``(config, weights by layer name, keras version)`` of a ``.keras`` or legacy ``.h5`` file."""
    import h5py

    with open(path, "rb") as fh:
        zipped = is_zip(fh.read(4))
    if zipped:
        with zipfile.ZipFile(path) as archive:
            info = {i.filename: i for i in archive.infolist()}
            for member, cap in (("config.json", MAX_CONFIG_BYTES), ("model.weights.h5", limit)):
                if info[member].file_size > cap:
                    raise ContainerError(describe(f"{path}, '{member}'", f"at most {cap} bytes",
                                                  f"{info[member].file_size} bytes (EVSIM_MEMORY_LIMIT)"))
            config = json.loads(archive.read("config.json"))
            meta = json.loads(archive.read("metadata.json")) if "metadata.json" in info else {}
            weights_bytes = archive.read("model.weights.h5")
        layers = _model_layers(config, path)
        with h5py.File(io.BytesIO(weights_bytes), "r") as f:
            check_all_heaps(f, f"{path}, 'model.weights.h5'", weights_bytes)  # vars' names are heap strings
            weights = _Weights(path, limit).keras3(f, layers)
        return config, weights, str(meta.get("keras_version", "3"))
    with h5py.File(path, "r") as f:
        check_string_attribute(f, path, "model_config", min(limit, MAX_CONFIG_BYTES))  # a corrupt heap hangs libhdf5
        check_all_heaps(f, path)  # keras_version and the weight names may be heap strings too
        text = _text(f.attrs["model_config"])
        if len(text) > MAX_CONFIG_BYTES:
            raise ContainerError(describe(f"{path}, 'model_config'", f"at most {MAX_CONFIG_BYTES} bytes",
                                          f"{len(text)}"))
        config = json.loads(text)
        layers = _model_layers(config, path)
        weights = _Weights(path, limit).legacy(f, [layer["name"] for layer in layers])
        version = _text(f.attrs.get("keras_version", "?"))
    return config, weights, version


def _model_layers(config, path) -> list[dict]:
    """The layer configs of a Sequential/Functional config, in the order Keras saves their weights."""
    if not isinstance(config, dict) or config.get("class_name") not in _MODEL_CLASSES:
        found = config.get("class_name") if isinstance(config, dict) else type(config).__name__
        raise ConversionError(describe(f"{path}, model config", "a Sequential or Functional model",
                                       repr(found), "save a Sequential or Functional model (not a subclassed Model)"))
    layers = config.get("config", {}).get("layers")
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise ManifestError(describe(f"{path}, model config", "a list of layers", repr(type(layers).__name__)))
    for layer in layers:
        layer.setdefault("name", layer.get("config", {}).get("name"))
    if config["class_name"] == "Sequential" and layers and layers[0].get("class_name") == "InputLayer":
        return layers[1:]  # Sequential.layers omits its InputLayer, and so do its saved weights
    return layers


# --------------------------------------------------------------------------- the walk
def read(path, *, limit: int | None = None, activations=None):
    """Read a Keras ``.keras`` or legacy ``.h5`` model as a validated evsim graph.

    Parameters
    ----------
    path : str or Path
    limit : int, optional
        Bytes the weights may declare (checked before each is read).
    activations : dict or list, optional
        Custom layer classes to map: ``{"QCFS": "qcfs:thresh,8"}`` or ``["QCFS=qcfs:0,8", "MyReLU=relu"]``.
        The weight is named by its Keras name (legacy ``.h5``) or its position among the layer's
        weights (``.keras`` files do not store weight names).

    Raises
    ------
    ContainerError, ManifestError, ConversionError
    """
    from evsim.graph import memory_limit

    path = Path(path)
    limit = memory_limit() if limit is None else limit
    try:
        config, weights, version = _load(path, limit)
    except EvsimError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile/h5py/json raise many types for a bad file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ContainerError(describe(str(path), "a readable Keras model (.keras zip or .h5)",
                                      f"a truncated, corrupted or foreign file ({reason})")) from None
    return _KerasGraph(path, config, weights, version, parse_activations(activations)).run()


IMPORTER = Importer("keras", sniff, read, "Keras (.keras, legacy .h5)", frozenset({"activations"}))


def _history(tensor) -> tuple[str, int, int]:
    """``(layer, node_index, tensor_index)`` of a Keras 3 ``__keras_tensor__`` or a Keras 2 list."""
    if isinstance(tensor, dict):
        history = tensor.get("config", {}).get("keras_history")
    else:
        history = tensor[:3]
    return str(history[0]), int(history[1]), int(history[2])


def _inbound(layer, where: str) -> list[tuple[str, int, int]]:
    """The input tensors of a Functional layer's (single) call."""
    nodes = layer.get("inbound_nodes") or []
    if len(nodes) > 1:
        raise ConversionError(describe(where,
                                       "each layer called once", f"{len(nodes)} calls (a shared layer)",
                                       "give each call its own layer"))
    if not nodes:
        return []
    node = nodes[0]
    if isinstance(node, dict):  # Keras 3: {"args": [tensor or [tensors]], "kwargs": {}}
        args = node.get("args", [])
        first = args[0] if args else []
        tensors = first if isinstance(first, list) else [first]
        return [_history(t) for t in tensors]
    return [_history(t) for t in node]  # Keras 2: [[name, node, tensor, kwargs], ...]


def _pair(value, n=2) -> list[int]:
    if isinstance(value, (int, float)):
        return [int(value)] * n
    return [int(v) for v in value]


class _KerasGraph:
    def __init__(self, path: Path, config: dict, weights: dict, version: str, activations: dict):
        self.path, self.config, self.weights, self.version = path, config, weights, version
        self.activations = activations
        self.values: dict = {}
        self.dropped: list[str] = []
        self.layer: dict = {}
        self.last = False

    # ---------------------------------------------------------------- messages
    def where(self, layer=None) -> str:
        layer = layer or self.layer
        return f"{self.path}, layer '{layer.get('name')}' ({layer.get('class_name')})"

    def refuse(self, expected, found, fix=None):
        raise ConversionError(describe(self.where(), expected, found, fix))

    # ---------------------------------------------------------------- entry
    def run(self):
        body = self.config.get("config", {})
        layers = body.get("layers", [])
        self.data_format = next((l.get("config", {}).get("data_format") for l in layers
                                 if l.get("config", {}).get("data_format")), "channels_last")
        if self.config["class_name"] == "Sequential":
            output = self._sequential(layers, body)
        else:
            output = self._functional(layers, body)
        view = self.values[output]
        if view.node == "input":
            raise ConversionError(describe(f"{self.path}, output", "an output computed by layers", "the input"))
        if not view.flat_order_kept:
            raise ConversionError(describe(f"{self.path}, output", "a vector of logits",
                                           f"a channels-last tensor of shape {view.shape}",
                                           "end the model with Flatten/GlobalAveragePooling2D and Dense"))
        info = {"importer": "keras", "file": self.path.name, "keras_version": self.version}
        if self.dropped:
            info["dropped"] = self.dropped
        return self.builder.finish(view.node, {"source": f"Keras model {self.path.name}", "imported_from": info})

    def _start(self, batch_shape, name="input"):
        shape = [d for d in batch_shape[1:]]
        if len(shape) not in (1, 3) or any(not isinstance(d, int) or d < 1 for d in shape):
            raise ConversionError(describe(f"{self.path}, input '{name}'", "a fixed shape (H, W, C) or (F,)",
                                           str(list(batch_shape)), "build the model with a fixed input shape"))
        if len(shape) == 3 and self.data_format == "channels_last":
            h, w, c = shape
            self.builder = GraphBuilder(str(self.path), (c, h, w))
            return View("input", (c, h, w), (1, 2, 0), (h, w, c))
        self.builder = GraphBuilder(str(self.path), tuple(shape))
        return View.of("input", shape)

    def _sequential(self, layers, body):
        batch_shape = body.get("build_input_shape")
        rest = layers
        if layers and layers[0].get("class_name") == "InputLayer":
            cfg = layers[0].get("config", {})
            batch_shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
            rest = layers[1:]
        elif layers and "batch_input_shape" in layers[0].get("config", {}):
            batch_shape = layers[0]["config"]["batch_input_shape"]
        if not batch_shape:
            raise ConversionError(describe(f"{self.path}, Sequential model", "a known input shape",
                                           "none", "add keras.Input(shape) as the first layer"))
        view = self._start(batch_shape)
        for i, layer in enumerate(rest):
            self.layer = layer
            view = self._layer(layer, [view], last=i == len(rest) - 1)
            self.values[layer["name"]] = view
        return rest[-1]["name"] if rest else "input"

    def _functional(self, layers, body):
        ins = body.get("input_layers", [])
        outs = body.get("output_layers", [])
        ins = [ins] if ins and isinstance(ins[0], str) else ins
        outs = [outs] if outs and isinstance(outs[0], str) else outs
        if len(ins) != 1 or len(outs) != 1:
            raise ConversionError(describe(f"{self.path}, model", "one input and one output",
                                           f"{len(ins)} inputs and {len(outs)} outputs"))
        output = str(outs[0][0])
        for layer in layers:
            self.layer = layer
            if layer.get("class_name") == "InputLayer":
                if layer["name"] != ins[0][0]:
                    continue
                cfg = layer.get("config", {})
                self.values[layer["name"]] = self._start(cfg.get("batch_shape") or cfg.get("batch_input_shape"),
                                                         layer["name"])
                continue
            sources = _inbound(layer, self.where(layer))
            missing = [s for s, *_ in sources if s not in self.values]
            if missing:
                raise ConversionError(describe(self.where(layer), "inputs from earlier layers",
                                               f"'{missing[0]}' (not computed before it)"))
            self.values[layer["name"]] = self._layer(layer, [self.values[s] for s, *_ in sources],
                                                     last=layer["name"] == output)
        return output

    # ---------------------------------------------------------------- layers
    def _layer(self, layer, inputs, last=False) -> View:
        kind = layer.get("class_name")
        if kind in self.activations:
            return self._custom(layer, inputs)
        handler = LAYERS.get(kind)
        if handler is None:
            if kind in _MODEL_CLASSES:
                self.refuse("layers, not a nested model", f"a nested {kind}",
                            "build the model flat, or save and import the inner model on its own")
            self.refuse("a layer among " + ", ".join(SUPPORTED_LAYERS), f"layer class '{kind}'",
                        f"replace the custom layer or map it with --activation {kind}=relu or "
                        f"--activation {kind}=qcfs:WEIGHT_NAME,LEVELS")
        if handler not in (_add,) and len(inputs) != 1:
            self.refuse("one input", f"{len(inputs)}")
        cfg = layer.get("config", {})
        self.last = last
        out = handler(self, layer, cfg, inputs if handler is _add else inputs[0])
        if "activation" in cfg and handler in (_conv2d, _dense):
            out = self._activation(cfg["activation"], out)
        return out

    def _name(self, suffix: str = "") -> str:
        return str(self.layer.get("name")) + suffix

    def _role_weights(self, roles) -> dict:
        """The layer's weights by role; legacy .h5 by name, .keras by position among ``roles``."""
        saved = self.weights.get(self.layer["name"], [])
        named = {n: a for n, a in saved if n is not None}
        if len(named) == len(saved) and saved:
            out = {r: named[r] for r in roles if r in named}
        else:
            out = dict(zip(roles, [a for _, a in saved]))
        missing = [r for r in roles if r not in out]
        if missing or len(saved) != len(roles):
            self.refuse(f"weights {', '.join(roles)}", f"{len(saved)} weight(s)" +
                        (f" ({', '.join(n for n, _ in saved if n)})" if named else ""))
        return {r: as_float_array(a, f"{self.where()}, weight '{r}'") for r, a in out.items()}

    def _nhwc(self, view: View) -> bool:
        """True when ``view`` is an unreshaped channels-last image (Keras's normal layout)."""
        return len(view.shape) == 3 and view.perm == (1, 2, 0) and view.shape == tuple(view.base[p] for p in view.perm)

    def _image(self, view: View, cfg) -> View:
        """Check that an image layer gets an image in the layout its data_format says."""
        fmt = cfg.get("data_format") or "channels_last"
        ok = self._nhwc(view) if fmt == "channels_last" else (len(view.shape) == 3 and view.plain)
        if not ok:
            self.refuse(f"an image input ({fmt})", f"a tensor of shape {view.shape}")
        return view

    def _out(self, node: str, like: View | None = None) -> View:
        """A view of a new evsim node in the layout Keras sees (channels last for images)."""
        shape = self.builder.shape(node)
        if len(shape) == 3 and self.data_format == "channels_last":
            c, h, w = shape
            return View(node, shape, (1, 2, 0), (h, w, c))
        return View.of(node, shape)

    def _elementwise(self, view: View, steps, label: str) -> View:
        node = materialize(self.builder, view.node, steps, label, self.where())
        return View(node, view.base, view.perm, view.shape)

    def _channel_const(self, values, view: View, axes=(-1,)) -> np.ndarray:
        """A per-channel constant of a Keras layer (over ``axes``) as a scalar/per-channel evsim array."""
        arr = np.asarray(values, dtype=np.float64)
        if arr.size == 1:
            return arr.reshape(())
        rank = len(view.shape)
        axes = [a % (rank + 1) - 1 for a in axes]  # Keras axes count the batch axis
        shape = [1] * rank
        for a in axes:
            shape[a] = view.shape[a]
        if math.prod(shape) != arr.size:
            self.refuse(f"a constant of {math.prod(shape)} values (axes {axes})", f"{arr.size} values")
        return channel_constant(self.builder, view, arr.reshape(shape), self.where())

    def _activation(self, name, view: View, label: str | None = None) -> View:
        """A layer's activation; a softmax on the model's output is dropped (the output is the logits)."""
        label = label or self._name("_relu")
        name = name if isinstance(name, str) else (name or {}).get("class_name", repr(name))
        name = name.lower() if isinstance(name, str) else name
        if name in ("linear", None):
            return view
        if name == "relu":
            return self._elementwise(view, [("clip", 0.0, np.inf)], label)
        if name == "relu6":
            return self._elementwise(view, [("clip", 0.0, 6.0)], label)
        if name in ("softmax", "log_softmax") and self.last:
            self.dropped.append(f"{self.layer.get('name')}: {name}")
            return view
        self.refuse("activation 'relu', 'relu6' or 'linear' ('softmax' only on the last layer)", repr(name),
                    "train with ReLU/QCFS activations, or map a custom activation layer with --activation")

    def _custom(self, layer, inputs) -> View:
        spec = self.activations[layer["class_name"]]
        if len(inputs) != 1:
            self.refuse("a custom activation with one input", f"{len(inputs)} inputs")
        view = inputs[0]
        if spec.op == "relu":
            return self._elementwise(view, [("clip", 0.0, np.inf)], self._name())
        saved = self.weights.get(layer["name"], [])
        pick = [a for n, a in saved if n == spec.weight]
        if not pick and spec.weight.isdigit() and int(spec.weight) < len(saved):
            pick = [saved[int(spec.weight)][1]]
        if not pick and len(saved) == 1 and saved[0][0] is None:  # .keras files keep no names
            pick = [saved[0][1]]
        if not pick:
            names = [n or str(i) for i, (n, _) in enumerate(saved)]
            self.refuse(f"a weight named '{spec.weight}' (the QCFS threshold)",
                        "weights " + (", ".join(names) or "none"),
                        "name it, or give its position among the layer's weights (e.g. qcfs:0,8)")
        theta = self._channel_const(pick[0], view)
        node = self.builder.add(self._name(), "qcfs", [view.node], {"levels": spec.levels},
                                {"threshold": as_float_array(theta, self.where())}, kind=layer["class_name"])
        return View(node, view.base, view.perm, view.shape)


# --------------------------------------------------------------------------- layer handlers
def _conv2d(g: _KerasGraph, layer, cfg, view: View) -> View:
    view = g._image(view, cfg)
    roles = ["kernel", "bias"] if cfg.get("use_bias", True) else ["kernel"]
    w = g._role_weights(roles)
    kernel = w["kernel"]
    if kernel.ndim != 4:
        g.refuse("a 2-D convolution kernel (kH, kW, C_in/groups, C_out)", f"shape {kernel.shape}")
    strides, dilation = _pair(cfg.get("strides", 1)), _pair(cfg.get("dilation_rate", 1))
    c, h, wd = g.builder.shape(view.node)
    padding = cfg.get("padding", "valid").lower()
    if padding == "same":
        pads = same_pads((h, wd), kernel.shape[:2], strides, dilation)
    elif padding == "valid":
        pads = (0, 0, 0, 0)
    else:
        g.refuse("padding 'valid' or 'same'", repr(padding))
    node = add_conv(g.builder, view.node, kernel.transpose(3, 2, 0, 1), w.get("bias"), strides, pads, dilation,
                    cfg.get("groups", 1), g._name(), layer["class_name"])
    return g._out(node)


def _dense(g: _KerasGraph, layer, cfg, view: View) -> View:
    w = g._role_weights(["kernel", "bias"] if cfg.get("use_bias", True) else ["kernel"])
    if len(view.shape) != 1:
        g.refuse("a vector input (Flatten or GlobalAveragePooling2D first)", f"a tensor of shape {view.shape}")
    node = add_linear(g.builder, view, w["kernel"], w.get("bias"), g._name(), layer["class_name"])
    return View.of(node, g.builder.shape(node))


def _batchnorm(g: _KerasGraph, layer, cfg, view: View) -> View:
    roles = (["gamma"] if cfg.get("scale", True) else []) + (["beta"] if cfg.get("center", True) else []) \
        + ["moving_mean", "moving_variance"]
    w = g._role_weights(roles)
    axis = cfg.get("axis", -1)
    axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
    channels_axis = -1 if g.data_format == "channels_last" or len(view.shape) == 1 else 1
    if not isinstance(axis, int) or (axis % (len(view.shape) + 1)) != (channels_axis % (len(view.shape) + 1)):
        g.refuse("normalisation over the channel axis", f"axis {axis}")
    eps = float(cfg.get("epsilon", 1e-3))
    mean, var = w["moving_mean"], w["moving_variance"]
    gamma = w.get("gamma", np.ones_like(mean))
    beta = w.get("beta", np.zeros_like(mean))
    if g._nhwc(view) or view.plain:
        node = g.builder.add(g._name(), "batchnorm", [view.node], {"eps": eps},
                             {"gamma": gamma, "beta": beta, "mean": mean, "var": var}, kind="BatchNormalization")
        return View(node, view.base, view.perm, view.shape)
    a = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    steps = [("mul", g._channel_const(a, view)), ("add", g._channel_const(beta - mean * a, view))]
    return g._elementwise(view, steps, g._name())


def _relu_layer(g: _KerasGraph, layer, cfg, view: View) -> View:
    if cfg.get("negative_slope") or cfg.get("threshold"):
        g.refuse("ReLU with negative_slope=0 and threshold=0",
                 f"negative_slope={cfg.get('negative_slope')}, threshold={cfg.get('threshold')}",
                 "train with a plain ReLU")
    top = cfg.get("max_value")
    return g._elementwise(view, [("clip", 0.0, np.inf if top is None else float(top))], g._name())


def _activation_layer(g: _KerasGraph, layer, cfg, view: View) -> View:
    return g._activation(cfg.get("activation"), view, g._name())


def _add(g: _KerasGraph, layer, cfg, views) -> View:
    first = views[0]
    if len(views) < 2:
        g.refuse("two or more inputs", f"{len(views)}")
    for v in views[1:]:
        if (v.base, v.perm, v.shape) != (first.base, first.perm, first.shape):
            g.refuse("inputs of the same shape", f"{first.shape} and {v.shape}")
    node = g.builder.add(g._name(), "add", [v.node for v in views], kind="Add")
    return View(node, first.base, first.perm, first.shape)


def _pool(op):
    def handle(g: _KerasGraph, layer, cfg, view: View) -> View:
        view = g._image(view, cfg)
        kernel = _pair(cfg.get("pool_size", 2))
        strides = _pair(cfg.get("strides") or kernel)
        _, h, w = g.builder.shape(view.node)
        padding = cfg.get("padding", "valid").lower()
        pads = same_pads((h, w), kernel, strides) if padding == "same" else (0, 0, 0, 0)
        if op == "avgpool2d" and any(pads):
            g.refuse("AveragePooling2D with padding 'valid' (or a 'same' that pads nothing)",
                     f"padding 'same' that pads {list(pads)}: Keras averages border windows over fewer values",
                     "use padding='valid', or ZeroPadding2D before the pooling")
        node = add_pool(g.builder, view.node, op, kernel, strides, pads, g._name(), layer["class_name"])
        return g._out(node)

    return handle


def _global_pool(g: _KerasGraph, layer, cfg, view: View) -> View:
    view = g._image(view, cfg)
    node = g.builder.add(g._name(), "global_avgpool", [view.node], kind=layer["class_name"])
    c = g.builder.shape(node)[0]
    if cfg.get("keepdims"):
        return View(node, (c,), (0,), (1, 1, c) if g.data_format == "channels_last" else (c, 1, 1))
    return View.of(node, (c,))


def _flatten(g: _KerasGraph, layer, cfg, view: View) -> View:
    return view.reshape((math.prod(view.shape),))


def _zero_padding(g: _KerasGraph, layer, cfg, view: View) -> View:
    view = g._image(view, cfg)
    pad = cfg.get("padding", 1)
    if isinstance(pad, int):
        pads = (pad, pad, pad, pad)
    else:
        rows, cols = pad
        rows = (rows, rows) if isinstance(rows, int) else rows
        cols = (cols, cols) if isinstance(cols, int) else cols
        pads = (rows[0], rows[1], cols[0], cols[1])
    node = g.builder.add(g._name(), "pad2d", [view.node], {"pads": [int(p) for p in pads]}, kind="ZeroPadding2D")
    return g._out(node)


def _rescaling(g: _KerasGraph, layer, cfg, view: View) -> View:
    scale = g._channel_const(cfg.get("scale", 1.0), view)
    offset = g._channel_const(cfg.get("offset", 0.0), view)
    return g._elementwise(view, [("mul", scale), ("add", offset)], g._name())


def _normalization(g: _KerasGraph, layer, cfg, view: View) -> View:
    axis = cfg.get("axis", -1)
    axes = [axis] if isinstance(axis, int) else list(axis or [])
    if cfg.get("mean") is not None:
        mean, var = np.asarray(cfg["mean"], np.float64), np.asarray(cfg["variance"], np.float64)
    else:
        w = g._role_weights(["mean", "variance", "count"])
        mean, var = w["mean"].astype(np.float64), w["variance"].astype(np.float64)
    std = np.maximum(np.sqrt(var), 1e-7)  # keras.backend.epsilon()
    mean, std = g._channel_const(mean, view, axes), g._channel_const(std, view, axes)
    steps = [("mul", std), ("add", mean)] if cfg.get("invert") else [("sub", mean), ("div", std)]
    return g._elementwise(view, steps, g._name())


def _identity(g, layer, cfg, view):
    return view


#: Keras layer class -> handler(importer, layer, config, input view(s)) -> output view
LAYERS = {
    "Conv2D": _conv2d,
    "Convolution2D": _conv2d,
    "Dense": _dense,
    "BatchNormalization": _batchnorm,
    "Activation": _activation_layer,
    "ReLU": _relu_layer,
    "Add": _add,
    "AveragePooling2D": _pool("avgpool2d"),
    "AvgPool2D": _pool("avgpool2d"),
    "MaxPooling2D": _pool("maxpool2d"),
    "MaxPool2D": _pool("maxpool2d"),
    "GlobalAveragePooling2D": _global_pool,
    "GlobalAvgPool2D": _global_pool,
    "Flatten": _flatten,
    "Dropout": _identity,
    "SpatialDropout2D": _identity,
    "ZeroPadding2D": _zero_padding,
    "Rescaling": _rescaling,
    "Normalization": _normalization,
}
#: every layer class the importer reads (besides InputLayer)
SUPPORTED_LAYERS = sorted(LAYERS)
