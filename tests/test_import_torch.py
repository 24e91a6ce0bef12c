"""PyTorch exporter (evsim.converters.torch.export): torch.fx models -> evsim graphs with PyTorch's logits.

Needs torch (the optional extra ``evsim[torch]``); CI installs no deep-learning framework, so the
module is skipped there.  The QCFS modules are the ones the ONNX fixtures were exported from.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import evsim  # noqa: E402
from evsim.ann import forward  # noqa: E402
from evsim.converters.torch import export  # noqa: E402
from evsim.errors import ConversionError  # noqa: E402
from fixtures.make_fixtures import mnist_inputs, randomize_bn, torch_models  # noqa: E402

IF, QCFSMethods, CSQCFS, Net, ReluNet = torch_models()
nn = torch.nn


def torch_logits(net, x):
    import copy

    with torch.no_grad():
        return copy.deepcopy(net).double()(torch.from_numpy(x).double()).numpy()


def assert_logits(found, wanted, rel=1e-5):
    np.testing.assert_allclose(found, wanted, rtol=rel, atol=rel * float(np.abs(wanted).max()))


@pytest.mark.parametrize("act, levels, per_channel", [
    (lambda c: IF(L=4, thresh=1.0), 4, False),            # seeds' public form, attributes thresh and L
    (lambda c: QCFSMethods(L=8, lam=0.9), 8, False),       # methods.md form, attribute threshold
    (lambda c: CSQCFS(c, L=4), 4, True),                   # λ = softplus(p): traced through, chain recognised
])
def test_qcfs_nets(tmp_path, act, levels, per_channel):
    torch.manual_seed(0)
    net = Net(act, bn=True).eval()
    randomize_bn(net, 1)
    x = mnist_inputs()
    graph = export(net, torch.from_numpy(x[:2]), tmp_path / "net.npz")
    assert evsim.load(tmp_path / "net.npz") == graph
    acts = [n for n in graph.nodes if n.op == "qcfs"]
    assert len(acts) == 4 and all(n.attrs["levels"] == levels for n in acts)
    assert all(n.arrays["threshold"].shape == ((n.shape[0],) if per_channel else ()) for n in acts)
    assert graph.input.scale == pytest.approx(1 / 255) and graph.input.std == (float(np.float32(0.3081)),)
    assert_logits(forward(graph, x)[graph.output], torch_logits(net, x))
    assert net.training is False


def test_relu_net_and_training_mode_restored():
    torch.manual_seed(1)
    net = ReluNet()
    randomize_bn(net, 2)
    x = np.random.default_rng(0).integers(0, 256, (6, 3, 16, 16)).astype(np.float32)
    graph = export(net, x[:2])
    assert net.training  # export evaluates in eval() mode and restores the mode
    assert [n.op for n in graph.nodes] == ["conv2d", "batchnorm", "relu", "maxpool2d", "conv2d", "batchnorm",
                                           "relu", "global_avgpool", "linear"]
    assert_logits(forward(graph, x)[graph.output], torch_logits(net.eval(), x))


class SoftplusThreshold(nn.Module):
    """Duck-typed QCFS whose stored ``thresh`` is the softplus parameter (CS-QCFS style)."""

    def __init__(self, c, L=4):
        super().__init__()
        self.thresh = nn.Parameter(torch.linspace(-0.5, 1.0, c))
        self.L = L

    def forward(self, x):
        lam = torch.nn.functional.softplus(self.thresh).view(1, -1, 1, 1)
        return lam * torch.clamp(torch.floor(x * self.L / lam + 0.5) / self.L, 0, 1)


class TinyNet(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding="same")
        self.act = act
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.act(self.conv(x))), 1))


def test_softplus_threshold_found_by_probing():
    torch.manual_seed(2)
    net = TinyNet(SoftplusThreshold(4)).eval()
    x = np.random.default_rng(1).normal(size=(5, 1, 8, 8)).astype(np.float32)
    graph = export(net, x)
    (act,) = [n for n in graph.nodes if n.op == "qcfs"]
    np.testing.assert_allclose(act.arrays["threshold"], np.log1p(np.exp(np.linspace(-0.5, 1.0, 4))), rtol=1e-6)
    assert [n.op for n in graph.nodes] == ["conv2d", "qcfs", "avgpool2d", "linear"]
    assert_logits(forward(graph, x)[graph.output], torch_logits(net, x))


class Hard(nn.Module):
    def __init__(self, top=2.0):
        super().__init__()
        self.top = torch.tensor(top)

    def forward(self, x):
        return torch.clamp(x, 0, self.top)


@pytest.mark.parametrize("spec", ["relu", "qcfs:top,8", lambda m: ("qcfs", m.top, 8)])
def test_activations_hook(spec):
    net = TinyNet(Hard()).eval()
    graph = export(net, torch.zeros(2, 1, 8, 8), activations={Hard: spec})
    act = graph.node("act")
    if spec == "relu":
        assert act.op == "relu"
    else:
        assert act.op == "qcfs" and act.attrs["levels"] == 8 and float(act.arrays["threshold"]) == 2.0


def test_unknown_module_names_its_path():
    net = TinyNet(nn.Sequential(nn.Sigmoid())).eval()
    with pytest.raises(ConversionError) as info:
        export(net, torch.zeros(2, 1, 8, 8))
    message = str(info.value)
    assert "module 'act.0' (Sigmoid)" in message and "activations=" in message and "\n" not in message


def test_unknown_function_and_fake_qcfs_refused():
    class Sig(nn.Module):
        def forward(self, x):
            return torch.sigmoid(x)

    with pytest.raises(ConversionError, match="'sigmoid' on the data"):
        export(TinyNet(Sig()).eval(), torch.zeros(2, 1, 8, 8))

    class NotQCFS(nn.Module):  # has the attributes, computes a ReLU
        def __init__(self):
            super().__init__()
            self.thresh, self.L = nn.Parameter(torch.tensor(1.0)), 4

        def forward(self, x):
            return torch.relu(x)

    with pytest.raises(ConversionError, match="module 'act' \\(NotQCFS\\).*QCFS activation"):
        export(TinyNet(NotQCFS()).eval(), torch.zeros(2, 1, 8, 8))


class ClippedNet(nn.Module):
    """Every ReLU-with-a-maximum spelling PyTorch has (nn.ReLU6, nn.Hardtanh(0, λ), F.relu6, clamp)."""

    def __init__(self):
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(1, 4, 3, padding=1), nn.ReLU6()
        self.c2, self.a2 = nn.Conv2d(4, 4, 3, padding=1), nn.Hardtanh(0.0, 0.75)
        self.c3 = nn.Conv2d(4, 4, 3, padding=1)
        self.c4 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        x = self.a2(self.c2(self.a1(self.c1(x))))
        x = torch.nn.functional.relu6(self.c3(x) * 8)
        x = torch.clamp(self.c4(x), 0, 0.5)
        return self.fc(torch.flatten(x, 1))


def test_relu_with_a_maximum_is_clipped_and_converts_with_its_lambda(tmp_path):
    torch.manual_seed(3)
    net = ClippedNet().eval()
    x = np.random.default_rng(1).normal(size=(5, 1, 6, 6)).astype(np.float32) * 4
    graph = export(net, x[:2], tmp_path / "clipped.h5")
    relus = [n.name for n in graph.nodes if n.op == "relu"]
    assert len(relus) == 4 and sorted(graph.metadata["relu_max"].values()) == [0.5, 0.75, 6.0, 6.0]
    assert evsim.load(tmp_path / "clipped.h5").metadata["relu_max"] == graph.metadata["relu_max"]
    assert_logits(forward(graph, x)[graph.output], torch_logits(net, x))
    snn = evsim.convert(graph)
    assert {n.name: float(n.arrays["threshold"]) for n in snn.nodes if n.op == "neuron"} == \
        {name: graph.metadata["relu_max"][name] for name in relus}
