"""Benchmark networks and the dense PyTorch + SpikingJelly reference simulation.

* :func:`vgg16_graph`, :func:`resnet20_graph` build CIFAR-shaped SNN graphs (kind "snn",
  IF neurons, soft reset, v0 = θ/2, one scalar threshold per layer) with seeded random weights.
* :class:`DenseSNN` simulates the *same* graph densely, multi-step, with ``torch`` conv/pool/
  linear layers and SpikingJelly 2.0 ``neuron.IFNode`` (``v_reset=None``: soft reset,
  ``step_mode='m'``, reset value of ``v`` set to θ/2).  Payload θ of a spike is folded into the
  weights of the next conv/linear (threshold balancing), as a tuned SpikingJelly model would do.
  Everything that depends on the analog input only (direct encoding: the first conv) is computed
  once per batch and broadcast over the T steps (as evsim does), so SpikingJelly is not charged for
  T identical first-layer convolutions.
* :func:`calibrate` picks each layer's threshold, in topological order, by bisection on the
  *simulated* firing rate of that layer (exact IF dynamics over T steps on a calibration batch),
  so every layer fires ``rate`` spikes per neuron per step on that batch.

Input preprocessing is CIFAR-10's mean/std; raw inputs are uniform random in [0, 1).
"""
from __future__ import annotations

import math

import numpy as np

from evsim import Graph, InputSpec, Node, validate

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
VGG16_CFG = (64, 64, "A", 128, 128, "A", 256, 256, 256, "A", 512, 512, 512, "A", 512, 512, 512, "A")


def _he(rng, shape, fan_in):
    return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)


def _conv(rng, name, src, c_in, c_out, k=3, stride=1, padding=1):
    w = _he(rng, (c_out, c_in, k, k), c_in * k * k)
    b = (rng.standard_normal(c_out) * 0.05).astype(np.float32)
    return Node(name, "conv2d", (src,), {"stride": [stride, stride], "padding": [padding, padding]},
                {"weight": w, "bias": b})


def _neuron(name, src, theta=1.0):
    th = np.asarray(theta, dtype=np.float64)
    return Node(name, "neuron", (src,), {"model": "if", "reset": "subtract"},
                {"threshold": th, "v0": np.asarray(th / 2)})


def _finish(nodes, output, thresholds, name):
    if thresholds:
        for n in nodes:
            if n.op == "neuron" and n.name in thresholds:
                th = np.asarray(float(thresholds[n.name]), dtype=np.float64)
                n.arrays = {"threshold": th, "v0": np.asarray(th / 2)}
    g = Graph(InputSpec((3, 32, 32), mean=CIFAR_MEAN, std=CIFAR_STD), nodes, output, kind="snn",
              metadata={"source": f"evsim benchmark {name}, random seeded weights"})
    return validate(g)


def vgg16_graph(seed: int = 0, thresholds: dict | None = None) -> Graph:
    """VGG-16 for 3x32x32: 13 conv3x3 + IF, avgpool 2x2 after each block, flatten, linear 512 -> 10."""
    rng = np.random.default_rng(seed)
    nodes, src, c_in, i, j = [], "input", 3, 0, 0
    for v in VGG16_CFG:
        if v == "A":
            j += 1
            nodes.append(Node(f"pool{j}", "avgpool2d", (src,), {"kernel": [2, 2], "stride": [2, 2]}))
            src = f"pool{j}"
            continue
        i += 1
        nodes.append(_conv(rng, f"conv{i}", src, c_in, v))
        nodes.append(_neuron(f"act{i}", f"conv{i}"))
        src, c_in = f"act{i}", v
    nodes.append(Node("flatten", "flatten", (src,)))
    nodes.append(Node("fc", "linear", ("flatten",), {},
                      {"weight": _he(rng, (10, 512), 512), "bias": np.zeros(10, np.float32)}))
    return _finish(nodes, "fc", thresholds, "vgg16")


def resnet20_graph(seed: int = 0, thresholds: dict | None = None) -> Graph:
    """ResNet-20 (He et al., CIFAR): conv3x3 16, 3 stages x 3 basic blocks (16/32/64 channels,
    stride 2 and a 1x1 conv shortcut (option B) at stage starts), add then IF,
    global average pooling, linear 64 -> 10."""
    rng = np.random.default_rng(seed)
    nodes = [_conv(rng, "conv1", "input", 3, 16), _neuron("act1", "conv1")]
    src, c_in = "act1", 16
    for s, c in enumerate((16, 32, 64)):
        for b in range(3):
            stride = 2 if (s > 0 and b == 0) else 1
            p = f"s{s + 1}b{b + 1}"
            nodes.append(_conv(rng, f"{p}_conv_a", src, c_in, c, stride=stride))
            nodes.append(_neuron(f"{p}_act_a", f"{p}_conv_a"))
            nodes.append(_conv(rng, f"{p}_conv_b", f"{p}_act_a", c, c))
            short = src
            if stride != 1 or c_in != c:
                nodes.append(_conv(rng, f"{p}_short", src, c_in, c, k=1, stride=stride, padding=0))
                short = f"{p}_short"
            nodes.append(Node(f"{p}_add", "add", (f"{p}_conv_b", short)))
            nodes.append(_neuron(f"{p}_act_b", f"{p}_add"))
            src, c_in = f"{p}_act_b", c
    nodes.append(Node("gap", "global_avgpool", (src,)))
    nodes.append(Node("fc", "linear", ("gap",), {},
                      {"weight": _he(rng, (10, 64), 64), "bias": np.zeros(10, np.float32)}))
    return _finish(nodes, "fc", thresholds, "resnet20")


NETWORKS = {"vgg16": vgg16_graph, "resnet20": resnet20_graph}


def random_inputs(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 32, 32), dtype=np.float32)


def neuron_names(graph: Graph) -> list[str]:
    return [n.name for n in graph.nodes if n.op == "neuron"]


# --------------------------------------------------------------------------- dense torch simulation
def _torch():
    import torch
    return torch


class DenseSNN:
    """Dense multi-step simulation of an SNN graph: torch layers + SpikingJelly IFNode.

    ``run(x, T)`` returns (logits summed over T steps (B, F), {layer: spikes per step (T,)} if
    ``record``).  Tensors are [T, B, ...]; conv/pool/linear run on the merged T*B batch
    (SpikingJelly's SeqToANNContainer convention).
    """

    def __init__(self, graph: Graph, dtype="float32"):
        torch = _torch()
        import torch.nn as nn
        from spikingjelly.activation_based import neuron

        self.torch = torch
        self.dtype = getattr(torch, dtype)
        self.graph = graph
        self.plan = []  # (name, op, inputs, module/params)
        self.neurons = {}
        factor = {"input": 1.0}  # payload per unit of the value (θ for raw spikes), folded downstream
        const = {"input": True}
        dt = self.dtype
        for node in graph.nodes:
            ins = node.inputs
            f_in = factor[ins[0]]
            a = node.attrs
            if node.op == "conv2d":
                w = node.arrays["weight"]
                m = nn.Conv2d(w.shape[1] * a["groups"], w.shape[0], w.shape[2:], a["stride"], a["padding"],
                              a["dilation"], a["groups"], bias="bias" in node.arrays)
                m.weight.data = torch.tensor(w.astype(np.float64) * f_in, dtype=dt)
                if "bias" in node.arrays:
                    m.bias.data = torch.tensor(node.arrays["bias"].astype(np.float64), dtype=dt)
                m.eval().requires_grad_(False)
                self.plan.append((node.name, "layer", ins, m))
                factor[node.name] = 1.0
            elif node.op == "linear":
                w = node.arrays["weight"]
                m = nn.Linear(w.shape[1], w.shape[0], bias="bias" in node.arrays)
                m.weight.data = torch.tensor(w.astype(np.float64) * f_in, dtype=dt)
                if "bias" in node.arrays:
                    m.bias.data = torch.tensor(node.arrays["bias"].astype(np.float64), dtype=dt)
                m.eval().requires_grad_(False)
                self.plan.append((node.name, "layer", ins, m))
                factor[node.name] = 1.0
            elif node.op == "avgpool2d":
                m = nn.AvgPool2d(a["kernel"], a["stride"], a["padding"])
                self.plan.append((node.name, "layer", ins, m))
                factor[node.name] = f_in
            elif node.op == "global_avgpool":
                self.plan.append((node.name, "gap", ins, None))
                factor[node.name] = f_in
            elif node.op == "flatten":
                self.plan.append((node.name, "flatten", ins, len(graph.shape_of(ins[0]))))
                factor[node.name] = f_in
            elif node.op == "add":
                fs = [factor[s] for s in ins]
                if all(f == fs[0] for f in fs):
                    self.plan.append((node.name, "add", ins, None))
                    factor[node.name] = fs[0]
                else:
                    self.plan.append((node.name, "add", ins, [float(f) for f in fs]))
                    factor[node.name] = 1.0
            elif node.op == "neuron":
                theta = float(node.arrays["threshold"])
                v0 = float(node.arrays["v0"])
                if f_in != 1.0:
                    raise ValueError(f"{node.name}: input with unfolded payload")
                ifn = neuron.IFNode(v_threshold=theta, v_reset=None, step_mode="m")
                ifn.set_reset_value("v", v0)
                self.neurons[node.name] = ifn
                self.plan.append((node.name, "neuron", ins, ifn))
                factor[node.name] = theta
            else:
                raise ValueError(f"op {node.op} not supported by the dense reference")
            const[node.name] = node.op != "neuron" and all(const[s] for s in ins)
        self.const = const
        self.out_factor = factor[graph.output]
        # free every intermediate after its last use (as nn.Sequential would)
        last = {}
        for i, (name, kind, ins, m) in enumerate(self.plan):
            for s in ins:
                last[s] = i
        self.free_after = [[s for s in ins if last[s] == i and s != graph.output]
                           for i, (name, kind, ins, m) in enumerate(self.plan)]

    def run(self, x: np.ndarray, T: int, record: bool = False):
        torch = self.torch
        with torch.inference_mode():
            for ifn in self.neurons.values():
                ifn.reset()
            xin = torch.from_numpy(self.graph.input.preprocess(x, np.float64)).to(self.dtype)
            b = xin.shape[0]
            vals = {"input": xin}
            spikes = {}
            for i, (name, kind, ins, m) in enumerate(self.plan):
                seq = not self.const[name]
                if kind == "layer":
                    v = vals[ins[0]]
                    if seq and not self.const[ins[0]]:
                        y = m(v.flatten(0, 1))
                        y = y.view((T, b) + y.shape[1:])
                    else:
                        y = m(v)
                elif kind == "gap":
                    y = vals[ins[0]].mean(dim=(-2, -1))
                elif kind == "flatten":
                    y = vals[ins[0]].flatten(-m)
                elif kind == "add":
                    if m is None:
                        y = vals[ins[0]]
                        for s in ins[1:]:
                            y = y + vals[s]
                    else:
                        y = vals[ins[0]] * m[0]
                        for s, f in zip(ins[1:], m[1:]):
                            y = y + vals[s] * f
                elif kind == "neuron":
                    z = vals[ins[0]]
                    if self.const[ins[0]]:
                        z = z.unsqueeze(0).expand((T,) + z.shape)
                    y = m(z)
                    if record:
                        spikes[name] = y.sum(dim=tuple(range(1, y.dim()))).to(torch.float64).numpy()
                vals[name] = y
                for s in self.free_after[i]:
                    del vals[s]
            out = vals[self.graph.output]
            if self.const[self.graph.output]:
                out = out * T
            else:
                out = out.sum(0)
            out = (out.to(torch.float64) * self.out_factor).numpy()
        return (out, spikes) if record else out


    def run_ann(self, x: np.ndarray) -> np.ndarray:
        """The same layers as the ANN: one pass, ReLU where the SNN has IF neurons (the moonshot's
        yardstick: torch running the ANN).  Returns the logits (B, F)."""
        torch = self.torch
        with torch.inference_mode():
            vals = {"input": torch.from_numpy(self.graph.input.preprocess(x, np.float64)).to(self.dtype)}
            for i, (name, kind, ins, m) in enumerate(self.plan):
                if kind == "layer":
                    y = m(vals[ins[0]])
                elif kind == "gap":
                    y = vals[ins[0]].mean(dim=(-2, -1))
                elif kind == "flatten":
                    y = vals[ins[0]].flatten(1)
                elif kind == "add":
                    y = vals[ins[0]]
                    for s in ins[1:]:
                        y = y + vals[s]
                else:
                    y = torch.relu(vals[ins[0]])
                vals[name] = y
                for s in self.free_after[i]:
                    del vals[s]
            return vals[self.graph.output].to(torch.float64).numpy()


# --------------------------------------------------------------------------- calibration
def _if_count_impl(z, theta):
    """Total spikes of IF neurons (v0 = θ/2, soft reset) driven by z (T, N), float64."""
    n_steps, n = z.shape
    total = 0
    for i in range(n):
        v = theta / 2
        for t in range(n_steps):
            h = v + z[t, i]
            if h >= theta:
                v = h - theta
                total += 1
            else:
                v = h
    return total


_if_count = None


def _if_rate(z, theta, torch):
    global _if_count
    if _if_count is None:
        import numba
        _if_count = numba.njit(cache=True, nogil=True)(_if_count_impl)
    a = np.ascontiguousarray(z.reshape(z.shape[0], -1).numpy())
    return _if_count(a, theta) / a.size


def calibrate(graph: Graph, x: np.ndarray, T: int, rate: float) -> dict:
    """Per-layer thresholds so that each neuron layer fires ``rate`` spikes/neuron/step on ``x``.

    Layers are done in topological order on the exact float64 IF simulation (payload θ·s),
    each by 40 steps of geometric bisection on its own simulated rate.
    """
    torch = _torch()
    import torch.nn.functional as F
    with torch.inference_mode():
        vals = {"input": torch.from_numpy(graph.input.preprocess(x, np.float64))}
        seq = {"input": False}
        thetas = {}
        b = len(x)
        for node in graph.nodes:
            ins, a = node.inputs, node.attrs
            v = vals[ins[0]]
            s = seq[ins[0]]
            flat = v.flatten(0, 1) if s else v
            if node.op == "conv2d":
                y = F.conv2d(flat, torch.from_numpy(node.arrays["weight"].astype(np.float64)),
                             torch.from_numpy(node.arrays["bias"].astype(np.float64)) if "bias" in node.arrays
                             else None, a["stride"], a["padding"], a["dilation"], a["groups"])
            elif node.op == "linear":
                y = F.linear(flat.flatten(1), torch.from_numpy(node.arrays["weight"].astype(np.float64)),
                             torch.from_numpy(node.arrays["bias"].astype(np.float64)) if "bias" in node.arrays
                             else None)
            elif node.op == "avgpool2d":
                y = F.avg_pool2d(flat, a["kernel"], a["stride"], a["padding"])
            elif node.op == "global_avgpool":
                y = flat.mean(dim=(-2, -1))
            elif node.op == "flatten":
                y = flat.flatten(1)
            elif node.op == "add":
                z = [vals[i] if seq[i] else vals[i].unsqueeze(0) for i in ins]
                y = sum(z[1:], z[0])
                s = any(seq[i] for i in ins)
                vals[node.name], seq[node.name] = y, s
                continue
            elif node.op == "neuron":
                z = v if s else v.unsqueeze(0).expand((T,) + v.shape)
                lo, hi = 1e-6, max(float(z.abs().max()) * 2 * T, 1e-3)
                for _ in range(36):
                    mid = math.sqrt(lo * hi)
                    if _if_rate(z, mid, torch) > rate:
                        lo = mid
                    else:
                        hi = mid
                theta = math.sqrt(lo * hi)
                thetas[node.name] = theta
                vth = torch.full_like(z[0], theta / 2)
                out = []
                for t in range(T):
                    h = vth + z[t]
                    sp = (h >= theta).to(z.dtype)
                    vth = h - sp * theta
                    out.append(sp * theta)
                vals[node.name], seq[node.name] = torch.stack(out), True
                continue
            else:
                raise ValueError(node.op)
            if s:
                y = y.view((T, b) + y.shape[1:])
            vals[node.name], seq[node.name] = y, s
    return thetas
