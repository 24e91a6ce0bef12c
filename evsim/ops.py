"""The op registry: one entry per op, everything evsim knows about it in one place.

Each :class:`~evsim.graph.OpSpec` holds, for one op of the model format (docs/format.md):
its attributes and arrays, shape inference and MACs (validation), the ANN forward
function (:mod:`evsim.ann`), the rule that composes it into SNN projections
(:mod:`evsim.compile`, operators of :mod:`evsim.operators`), and its calibration behaviour
(:mod:`evsim.converters.calibration`).  Adding an op is one entry here (plus a kernel if
the engine needs a new one).

Composition rules take ``(operator so far, node, structural, index)``: ``index`` is the
input through which the path entered the node (every current op treats its inputs alike;
a concatenation would offset by it).  With ``structural`` every weight is one, so the
result's non-zero pattern is the structural connectivity.
"""
from __future__ import annotations

import math

import numpy as np

from . import ann
from .errors import ConversionError, ManifestError, describe
from .graph import Attr, Node, OpSpec, Shape, _fail, _need_chw, _window_out

__all__ = ["OPS", "ACTIVATION_OPS", "register_op"]

OPS: dict[str, OpSpec] = {}


def register_op(spec: OpSpec) -> OpSpec:
    """Add an op to the registry (names are unique)."""
    if spec.name in OPS:
        raise ValueError(f"op {spec.name!r} is already registered")
    OPS[spec.name] = spec
    return spec


def _algebra():
    """The operator algebra (needs SciPy): imported on first composition, not with the registry,
    so that ``import evsim`` and ``evsim --help`` stay light."""
    from . import operators

    return operators


def _channel(param: np.ndarray, ndim: int) -> np.ndarray:
    """Broadcast a scalar or per-channel parameter along axis 1 of a batch of ``ndim`` dims."""
    return param.reshape((1, -1) + (1,) * (ndim - 2)) if param.ndim == 1 else param


def _per_channel(shapes):
    """Shapes allowed for a per-layer or per-channel parameter of an input shape."""
    return [(), (shapes[0][0],)]


def _same_shape(node: Node, shapes: list[Shape], where: str) -> Shape:
    return shapes[0]



_POOL_ATTRS = {
    "kernel": Attr("pair", required=True, minimum=1),
    "stride": Attr("pair", minimum=1),  # default: the kernel, as in PyTorch
    "padding": Attr("pair", default=[0, 0], minimum=0),
}


# --------------------------------------------------------------------------- conv2d
def _infer_conv(node: Node, shapes: list[Shape], where: str) -> Shape:
    c, h, w = _need_chw(node, shapes[0], where)
    weight = node.arrays["weight"]
    groups = node.attrs["groups"]
    if weight.ndim != 4:
        _fail(where, "weight of shape (C_out, C_in/groups, kH, kW)", f"{weight.shape}")
    c_out, c_in_g, kh, kw = weight.shape
    if min(weight.shape) < 1:
        _fail(where, "weight of shape (C_out, C_in/groups, kH, kW) with no zero dimension", f"{weight.shape}")
    if c % groups or c_out % groups:
        _fail(where, f"C_in={c} and C_out={c_out} divisible by groups={groups}", f"groups={groups}")
    if c_in_g * groups != c:
        _fail(where, f"weight of shape ({c_out}, {c // groups}, {kh}, {kw}) for input {shapes[0]}",
              f"{weight.shape}", "weights are OIHW; channels-last frameworks must transpose")
    (sh, sw), (ph, pw), (dh, dw) = node.attrs["stride"], node.attrs["padding"], node.attrs["dilation"]
    return (c_out, _window_out(h, kh, sh, ph, dh, where, "height"),
            _window_out(w, kw, sw, pw, dw, where, "width"))


def _conv_array_shapes(node, shapes):
    c_out = node.arrays["weight"].shape[0]
    return {"bias": [(c_out,)]}


def _conv_macs(node, shapes, out):
    c_out, c_in_g, kh, kw = node.arrays["weight"].shape
    return int(np.prod(out)) * c_in_g * kh * kw


def _conv_forward(node: Node, x):
    a = node.attrs
    return ann.conv2d(x[0], node.arrays["weight"], node.arrays.get("bias"), a["stride"], a["padding"],
                      a["dilation"], a["groups"])


def _conv_compose(op, node, structural, index):
    alg = _algebra()
    a = node.attrs
    w = np.ones_like(node.arrays["weight"]) if structural else node.arrays["weight"]
    return alg.then_conv(op, alg.conv_op(w, a["groups"], a["stride"], a["padding"], a["dilation"], op.out_shape))


register_op(OpSpec(
    "conv2d", _infer_conv, arrays={"weight": True, "bias": False},
    attrs={"stride": Attr("pair", [1, 1], minimum=1), "padding": Attr("pair", [0, 0], minimum=0),
           "dilation": Attr("pair", [1, 1], minimum=1), "groups": Attr("int", 1, minimum=1)},
    array_shapes=_conv_array_shapes, macs=_conv_macs, forward=_conv_forward, compose=_conv_compose,
    bias_role="bias",
))


# --------------------------------------------------------------------------- linear
def _infer_linear(node: Node, shapes: list[Shape], where: str) -> Shape:
    weight = node.arrays["weight"]
    features = int(np.prod(shapes[0]))
    if weight.ndim != 2 or weight.shape[1] != features:
        _fail(where, f"weight of shape (out, {features}) for input {shapes[0]} (flattened C, H, W)",
              f"{weight.shape}", "weights are (out, in); Keras kernels must be transposed")
    return (weight.shape[0],)


def _linear_forward(node: Node, x):
    flat = x[0].reshape(x[0].shape[0], -1)
    out = flat @ node.arrays["weight"].T.astype(flat.dtype, copy=False)
    if "bias" in node.arrays:
        out += node.arrays["bias"].astype(flat.dtype, copy=False)
    return out


def _linear_compose(op, node, structural, index):
    alg = _algebra()
    w = node.arrays["weight"]
    w = np.ones_like(w) if structural else w.astype(np.float64)
    matrix = alg.matmul(alg.as_matrix(op), w.T)
    return alg.MatrixOp(np.asarray(matrix.todense()) if alg.sp.issparse(matrix) else matrix, op.in_shape,
                    (w.shape[0], 1, 1))


register_op(OpSpec(
    "linear", _infer_linear, arrays={"weight": True, "bias": False},
    array_shapes=lambda n, s: {"bias": [(n.arrays["weight"].shape[0],)]},
    macs=lambda n, s, o: int(n.arrays["weight"].size), forward=_linear_forward, compose=_linear_compose,
    bias_role="bias",
))


# --------------------------------------------------------------------------- batchnorm and scale
def _batchnorm_forward(node: Node, x):
    p, v = node.arrays, x[0]
    scale = p["gamma"] / np.sqrt(p["var"].astype(np.float64) + node.attrs["eps"])  # eps may vanish in float32
    shift = p["beta"] - p["mean"] * scale
    return ann.channel_affine(v, scale, shift)  # v * scale + shift per channel, one pass


def _scale_columns(op, scale):
    """``op`` followed by a per-channel (or scalar) multiplication."""
    alg = _algebra()
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), (op.out_shape[0],))
    if isinstance(op, alg.MatrixOp):
        per_column = np.repeat(scale, op.out_shape[1] * op.out_shape[2])
        m = op.matrix.multiply(per_column[None, :]).tocsr() if alg.sp.issparse(op.matrix) else op.matrix * per_column
        return alg.MatrixOp(m, op.in_shape, op.out_shape)
    return alg.then_conv(op, alg.depthwise(scale, (1, 1), (1, 1), (0, 0), op.out_shape))


def _batchnorm_compose(op, node, structural, index):
    p = node.arrays
    scale = np.ones(len(p["gamma"])) if structural else \
        p["gamma"] / np.sqrt(p["var"].astype(np.float64) + node.attrs["eps"])
    return _scale_columns(op, scale)


register_op(OpSpec(
    "batchnorm", _same_shape, arrays={r: True for r in ("mean", "var", "gamma", "beta")},
    attrs={"eps": Attr("float", 1e-5, minimum=0)},
    array_shapes=lambda n, s: {r: [(s[0][0],)] for r in ("mean", "var", "gamma", "beta")},
    forward=_batchnorm_forward, compose=_batchnorm_compose, bias_role="beta",
))


def _scale_forward(node: Node, x):
    v = x[0]
    return v * _channel(node.arrays["scale"].astype(v.dtype), v.ndim)


register_op(OpSpec(
    "scale", _same_shape, arrays={"scale": True}, array_shapes=lambda n, s: {"scale": _per_channel(s)},
    forward=_scale_forward,
    compose=lambda op, node, structural, index: _scale_columns(op, 1.0 if structural else node.arrays["scale"]),
))


# --------------------------------------------------------------------------- activations
register_op(OpSpec("relu", _same_shape, kinds=frozenset({"ann"}), forward=lambda node, x: np.maximum(x[0], 0)))
register_op(OpSpec(
    "qcfs", _same_shape, arrays={"threshold": True},
    attrs={"levels": Attr("int", required=True, minimum=1)},
    array_shapes=lambda n, s: {"threshold": _per_channel(s)}, kinds=frozenset({"ann"}), positive=("threshold",),
    forward=lambda node, x: ann.qcfs(x[0], node.arrays["threshold"], node.attrs["levels"]),
))


# --------------------------------------------------------------------------- pooling and padding
def _infer_pool(node: Node, shapes: list[Shape], where: str) -> Shape:
    c, h, w = _need_chw(node, shapes[0], where)
    (kh, kw), (sh, sw), (ph, pw) = node.attrs["kernel"], node.attrs["stride"], node.attrs["padding"]
    if ph > kh // 2 or pw > kw // 2:
        _fail(where, "padding at most half the kernel", f"padding {node.attrs['padding']} "
              f"for kernel {node.attrs['kernel']}")
    return (c, _window_out(h, kh, sh, ph, 1, where, "height"), _window_out(w, kw, sw, pw, 1, where, "width"))


def _pool_compose(divide: bool):
    def compose(op, node, structural, index):
        alg = _algebra()
        a = node.attrs
        value = 1.0 if structural or not divide else 1.0 / (a["kernel"][0] * a["kernel"][1])
        return alg.then_conv(op, alg.depthwise(np.full(op.out_shape[0], value), a["kernel"], a["stride"], a["padding"],
                                           op.out_shape))
    return compose


def _pool_sum(node: Node, x):
    a = node.attrs
    return ann.pool_sum(x[0], a["kernel"], a["stride"], a["padding"])


def _avgpool_forward(node: Node, x):
    kh, kw = node.attrs["kernel"]
    return _pool_sum(node, x) / (kh * kw)  # divisor kH*kW everywhere: PyTorch's count_include_pad=True


def _maxpool_forward(node: Node, x):
    a = node.attrs
    return ann.windows(x[0], a["kernel"], a["stride"], a["padding"], fill=-np.inf).max(axis=(4, 5))


register_op(OpSpec("avgpool2d", _infer_pool, attrs=_POOL_ATTRS, forward=_avgpool_forward,
                   compose=_pool_compose(True),
                   shift=lambda n: tuple(n.attrs["padding"]) == (0, 0)))  # zero padding would dilute δ at borders
register_op(OpSpec("sumpool2d", _infer_pool, attrs=_POOL_ATTRS, forward=_pool_sum, compose=_pool_compose(False)))
register_op(OpSpec("maxpool2d", _infer_pool, attrs=_POOL_ATTRS, forward=_maxpool_forward, gate=True,
                   shift=lambda n: True))  # max(z + δ) = max(z) + δ (padding is -inf)


def _global_avgpool_compose(op, node, structural, index):
    alg = _algebra()
    _, h, w = op.out_shape
    value = 1.0 if structural else 1.0 / (h * w)
    return alg.then_conv(op, alg.depthwise(np.full(op.out_shape[0], value), (h, w), (h, w), (0, 0), op.out_shape))


register_op(OpSpec("global_avgpool", lambda n, s, w: (_need_chw(n, s[0], w)[0],),
                   forward=lambda node, x: x[0].mean(axis=(2, 3)), compose=_global_avgpool_compose,
                   shift=lambda n: True))


def _infer_pad(node: Node, shapes: list[Shape], where: str) -> Shape:
    c, h, w = _need_chw(node, shapes[0], where)
    top, bottom, left, right = node.attrs["pads"]
    return (c, h + top + bottom, w + left + right)


def _parse_pads(value, where, key):
    if not (isinstance(value, (list, tuple)) and len(value) == 4
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 2**16 for v in value)):
        raise ManifestError(describe(f"{where}, attribute '{key}'", "[top, bottom, left, right]: 4 integers in "
                                     "0..65536", repr(value)[:120]))
    return list(value)


class _PadsAttr(Attr):
    def parse(self, value, where: str, key: str):
        return _parse_pads(value, where, key)


def _pad_forward(node: Node, x):
    top, bottom, left, right = node.attrs["pads"]
    return np.pad(x[0], ((0, 0), (0, 0), (top, bottom), (left, right)))


def _pad_compose(op, node, structural, index):
    """Zero padding as a 1x1 identity convolution whose output is larger (offset = top/left)."""
    alg = _algebra()
    top, bottom, left, right = node.attrs["pads"]
    c, h, w = op.out_shape
    pad = alg.ConvOp(np.ones((c, 1, 1, 1)), c, (1, 1), (top, left), (1, 1), (c, h, w), (h, w),
                 (c, h + top + bottom, w + left + right))
    return alg.then_conv(op, pad)


register_op(OpSpec("pad2d", _infer_pad, attrs={"pads": _PadsAttr("pads", required=True)}, forward=_pad_forward,
                   compose=_pad_compose))


# --------------------------------------------------------------------------- shape and paths
def _flatten_compose(op, node, structural, index):
    alg = _algebra()
    c, h, w = op.out_shape
    if h * w == 1:  # (C, 1, 1) and (C,) share one layout
        return op
    return alg.MatrixOp(alg.as_matrix(op), op.in_shape, (c * h * w, 1, 1))


register_op(OpSpec("flatten", lambda n, s, w: (int(np.prod(s[0])),),
                   forward=lambda node, x: x[0].reshape(x[0].shape[0], -1), compose=_flatten_compose))
def _infer_add(node: Node, shapes: list[Shape], where: str) -> Shape:
    for src, shape in zip(node.inputs[1:], shapes[1:]):
        if shape != shapes[0]:
            _fail(where, f"inputs of equal shape {shapes[0]} (from '{node.inputs[0]}')",
                  f"{shape} from '{src}'")
    return shapes[0]


register_op(OpSpec("add", _infer_add, n_inputs=(2, math.inf), forward=lambda node, x: sum(x[1:], x[0]),
                   compose=lambda op, node, structural, index: op,  # paths into an add are summed
                   shift=lambda n: True))


# --------------------------------------------------------------------------- neurons (SNN files)
def _infer_neuron(node: Node, shapes: list[Shape], where: str) -> Shape:
    return shapes[0]


def _parse_neuron(node: Node, where: str) -> None:
    """Attributes of a neuron node, checked against its model's registry record."""
    from .neurons import get_model

    attrs = dict(node.attrs)
    if "model" not in attrs:
        raise ManifestError(describe(where, "attribute 'model' (the neuron model)", "none"))
    model = get_model(attrs.pop("model"), f"{where}, attribute 'model'")
    parsed = {"model": model.name}
    reset = attrs.pop("reset", None)
    if model.resets:
        if reset is not None and reset not in model.resets:
            raise ManifestError(describe(f"{where}, attribute 'reset'", "one of " + ", ".join(map(repr, model.resets)),
                                         _clip(repr(reset))))
        parsed["reset"] = reset or model.resets[0]
    elif reset is not None and reset != "subtract":  # files before 0.2 wrote "subtract" for every model
        raise ManifestError(describe(f"{where}, attribute 'reset'", f"no reset for neuron model '{model.name}'",
                                     _clip(repr(reset)), "remove it: this model has no reset option"))
    scalars = {k: v for k, v in attrs.items() if k in model.params}
    unknown = sorted(set(attrs) - set(scalars))
    if unknown:
        known = ", ".join(["model"] + (["reset"] if model.resets else []) + list(model.params))
        raise ManifestError(describe(where, f"attributes of a '{model.name}' neuron ({known})",
                                     _clip(", ".join(map(repr, unknown)))))
    try:
        values = model.resolve({k: v for k, v in scalars.items() if k not in node.arrays}, where)
    except ConversionError as exc:
        raise ManifestError(str(exc)) from None
    for name, param in model.params.items():
        if name in node.arrays:
            continue
        if name in scalars or not isinstance(param.default, bool):
            parsed[name] = values[name]
    node.attrs = parsed


def _neuron_arrays(node: Node) -> dict[str, bool]:
    from .neurons import get_model

    model = get_model(node.attrs["model"])
    roles = {"threshold": True, "v0": True}
    roles.update({name: False for name, p in model.params.items() if not isinstance(p.default, bool)})
    return roles


def _neuron_array_shapes(node: Node, shapes):
    from .neurons import get_model

    model = get_model(node.attrs["model"])
    per_neuron = [shapes[0]] if model.payload == "one" else []
    allowed = {"threshold": _per_channel(shapes) + per_neuron, "v0": _per_channel(shapes) + [shapes[0]]}
    allowed.update({name: _per_channel(shapes) + [shapes[0]] for name in model.params})
    return allowed


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


register_op(OpSpec(
    "neuron", _infer_neuron, arrays={"threshold": True, "v0": True},
    array_shapes=_neuron_array_shapes, kinds=frozenset({"snn"}), parse=_parse_neuron,
    array_roles=_neuron_arrays, positive=("threshold",),
))

#: ops that become neuron populations in the SNN
ACTIVATION_OPS = frozenset({"relu", "qcfs", "neuron"})
