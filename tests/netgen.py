"""Random small valid networks for property tests.

Structure is drawn from a NumPy generator (hypothesis supplies the seed), values are
random floats, so exact floating-point ties at a threshold are practically impossible
and spike-for-spike comparisons in float64 are meaningful.
"""
from __future__ import annotations

import numpy as np

from evsim.graph import Graph, InputSpec, Node, validate


class _Builder:
    def __init__(self, rng: np.random.Generator, kind: str, channelwise: bool, activation: str):
        self.rng, self.kind, self.channelwise, self.activation = rng, kind, channelwise, activation
        self.nodes: list[Node] = []
        self.count = 0

    def add(self, op, inputs, attrs=None, arrays=None) -> str:
        self.count += 1
        name = f"{op}{self.count}"
        self.nodes.append(Node(name, op, tuple(inputs), dict(attrs or {}), dict(arrays or {})))
        return name

    def act(self, src: str, channels: int) -> str:
        rng = self.rng
        size = channels if self.channelwise else None
        theta = rng.uniform(0.3, 1.5, size=size)
        if self.kind == "snn":
            model = self.activation
            attrs = {"model": model}
            if model == "gn":
                attrs["tau"] = int(rng.integers(1, 5))
            elif model == "lif":  # the plugin of tests/test_neuron_plugins.py
                attrs["beta"] = float(rng.uniform(0.5, 1.0))
            unit = theta / attrs.get("tau", 1)
            v0 = np.asarray(unit / 2)
            return self.add("neuron", [src], attrs, {"threshold": np.asarray(theta), "v0": v0})
        if self.activation == "relu":
            return self.add("relu", [src])
        return self.add("qcfs", [src], {"levels": int(rng.integers(1, 9))}, {"threshold": np.asarray(theta)})


def random_network(seed: int, kind: str = "snn", activation: str = "if", channelwise: bool | None = None,
                   batchnorm: bool = True, maxpool: bool = False, new_ops: bool = False) -> Graph:
    """A random small network: convs (stride, padding, dilation, groups), pooling, residual add, linear.

    ``kind="snn"`` gives neuron nodes of model ``activation`` (if, signed_if, gn);
    ``kind="ann"`` gives ``qcfs`` (activation="qcfs") or ``relu`` activations.
    ``new_ops`` adds a block with the format's later ops (asymmetric ``pad2d``, ``scale``,
    ``sumpool2d``); without it the draws are those of earlier versions.
    """
    rng = np.random.default_rng(seed)
    if channelwise is None:
        channelwise = bool(rng.integers(2))
    b = _Builder(rng, kind, channelwise, activation)
    c, h, w = int(rng.integers(1, 4)), int(rng.integers(5, 10)), int(rng.integers(5, 10))
    spec = InputSpec((c, h, w), scale=float(rng.uniform(0.5, 2)), mean=(0.1,), std=(0.9,))
    cur, shape = "input", (c, h, w)

    def conv(src, shape, c_out, k, stride, pad, dil=1, groups=1, bias=True):
        arrays = {"weight": rng.normal(0, 1.2 / np.sqrt(shape[0] // groups * k * k),
                                       (c_out, shape[0] // groups, k, k))}
        if bias:
            arrays["bias"] = rng.normal(0, 0.2, c_out)
        name = b.add("conv2d", [src], {"stride": [stride, stride], "padding": [pad, pad],
                                       "dilation": [dil, dil], "groups": groups}, arrays)
        ho = (shape[1] + 2 * pad - dil * (k - 1) - 1) // stride + 1
        wo = (shape[2] + 2 * pad - dil * (k - 1) - 1) // stride + 1
        return name, (c_out, ho, wo)

    def bn(src, channels):
        if not batchnorm or rng.random() < 0.5:
            return src
        return b.add("batchnorm", [src], {"eps": 1e-5}, {
            "mean": rng.normal(0, 0.1, channels), "var": rng.uniform(0.5, 1.5, channels),
            "gamma": rng.uniform(0.5, 1.5, channels), "beta": rng.normal(0, 0.1, channels)})

    # first layer: analog input
    c1 = int(rng.integers(2, 5))
    cur, shape = conv(cur, shape, c1, 3, 1, 1)
    cur = b.act(bn(cur, c1), c1)
    for _ in range(int(rng.integers(1, 3))):
        choice = rng.integers(5)
        if choice == 0 and shape[1] >= 3 and shape[2] >= 3:  # strided / grouped / dilated conv
            groups = int(rng.choice([g for g in (1, 2) if shape[0] % g == 0]))
            c_out = groups * int(rng.integers(1, 4))
            dil = int(rng.integers(1, 3)) if min(shape[1:]) >= 5 else 1
            cur, shape = conv(cur, shape, c_out, int(rng.choice([1, 3])), int(rng.integers(1, 3)),
                              int(rng.integers(0, 2)), dil, groups)
            cur = b.act(bn(cur, shape[0]), shape[0])
        elif choice == 1 and shape[1] >= 2 and shape[2] >= 2:  # average pooling, then conv
            k = int(rng.integers(2, 4)) if min(shape[1:]) >= 3 else 2
            s = int(rng.integers(1, k + 1))
            cur = b.add("avgpool2d", [cur], {"kernel": [k, k], "stride": [s, s], "padding": [0, 0]})
            shape = (shape[0], (shape[1] - k) // s + 1, (shape[2] - k) // s + 1)
            cur, shape = conv(cur, shape, int(rng.integers(2, 5)), 3, 1, 1)
            cur = b.act(bn(cur, shape[0]), shape[0])
        elif choice == 2:  # residual block
            mid, mshape = conv(cur, shape, shape[0], 3, 1, 1)
            mid = b.act(mid, shape[0])
            mid, mshape = conv(mid, mshape, shape[0], 3, 1, 1)
            added = b.add("add", [bn(mid, shape[0]), cur])
            cur = b.act(added, shape[0])
        elif choice == 3 and maxpool and shape[1] >= 2 and shape[2] >= 2:
            cur = b.add("maxpool2d", [cur], {"kernel": [2, 2], "stride": [2, 2], "padding": [0, 0]})
            shape = (shape[0], shape[1] // 2, shape[2] // 2)
            cur, shape = conv(cur, shape, int(rng.integers(2, 5)), 3, 1, 1)
            cur = b.act(cur, shape[0])
        else:  # conv with padding 1 and stride 1 (keeps size)
            cur, shape = conv(cur, shape, int(rng.integers(2, 5)), 3, 1, 1)
            cur = b.act(bn(cur, shape[0]), shape[0])
    if new_ops:  # TF-style 'same' (asymmetric) padding, a per-channel scale, a sum pooling
        pads = [int(v) for v in rng.integers(0, 3, 4)]
        cur = b.add("pad2d", [cur], {"pads": pads})
        shape = (shape[0], shape[1] + pads[0] + pads[1], shape[2] + pads[2] + pads[3])
        k = 3 if min(shape[1:]) >= 3 else 1
        cur, shape = conv(cur, shape, int(rng.integers(2, 5)), k, int(rng.integers(1, 3)), 0)
        cur = b.add("scale", [cur], arrays={"scale": rng.uniform(0.5, 1.5, shape[0])})
        cur = b.act(cur, shape[0])
        if shape[1] >= 2 and shape[2] >= 2:
            cur = b.add("sumpool2d", [cur], {"kernel": [2, 2]})
            shape = (shape[0], shape[1] // 2, shape[2] // 2)
            cur = b.add("scale", [cur], arrays={"scale": np.asarray(0.25)})
            cur, shape = conv(cur, shape, int(rng.integers(2, 5)), 3, 1, 1)
            cur = b.act(cur, shape[0])
    # head: global pooling or flatten, hidden linear, output linear
    if rng.random() < 0.4:
        cur = b.add("global_avgpool", [cur])
        features = shape[0]
    else:
        if rng.random() < 0.5 and shape[1] >= 2 and shape[2] >= 2:
            cur = b.add("avgpool2d", [cur], {"kernel": [2, 2], "stride": [2, 2]})
            shape = (shape[0], shape[1] // 2, shape[2] // 2)
        cur = b.add("flatten", [cur])
        features = int(np.prod(shape))
    hidden = int(rng.integers(4, 12))
    cur = b.add("linear", [cur], arrays={"weight": rng.normal(0, 1.5 / np.sqrt(features), (hidden, features)),
                                         "bias": rng.normal(0, 0.1, hidden)})
    cur = b.act(cur, hidden)
    n_out = int(rng.integers(2, 6))
    head = {"weight": rng.normal(0, 1 / np.sqrt(hidden), (n_out, hidden))}
    if rng.random() < 0.5:  # bias is optional
        head["bias"] = rng.normal(0, 0.1, n_out)
    out = b.add("linear", [cur], arrays=head)
    return validate(Graph(spec, b.nodes, out, kind=kind))


def random_inputs(graph: Graph, n: int, seed: int) -> np.ndarray:
    """Raw inputs in [0, 1) for ``graph``."""
    return np.random.default_rng(seed).random((n,) + tuple(graph.input.shape))
